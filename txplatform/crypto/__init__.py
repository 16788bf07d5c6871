"""Encryption: the streaming AEAD, keyrings and the codecs built on them."""
