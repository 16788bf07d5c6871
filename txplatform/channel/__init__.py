"""
The secure channel between services: a Noise XX handshake before any
connection is accepted (L{txplatform.channel.noise}), identity keys and the
trust list (L{txplatform.channel.identity}), and the encrypting transport
under any Twisted protocol (L{txplatform.channel.protocol}).
"""
