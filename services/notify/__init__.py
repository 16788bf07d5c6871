"""
The Notify service: notifications about mentions and followed authors.
"""
