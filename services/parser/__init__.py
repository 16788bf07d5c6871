"""
The Parser service: decodes and checks request bodies for the gateway, so
parsing large bodies scales apart from the gateway's event loop.
"""
