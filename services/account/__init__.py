"""
The Account service: accounts, sessions and follows.
"""
