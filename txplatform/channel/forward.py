# -*- test-case-name: tests.test_sidecar -*-
"""
Channels ended by a sidecar: the sidecar terminates the handshake and
forwards the plaintext to its service over a local socket, first saying
who the authenticated peer is::

    "TXPF" | version (1) | peer service id (3) | peer static key (32)

The service's side (L{ForwardedFactory}) reads that and gives the
application protocol a transport with the same C{peerServiceId} and
C{peerKey} as a channel's.  Whoever can connect to the socket can claim any
peer: it must be reachable by the sidecar only (a UNIX socket of mode 0600
in a directory the two containers share).
"""

from __future__ import annotations

import struct
from typing import Any

from twisted.internet.interfaces import IProtocolFactory
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ..serviceid import ServiceId
from .protocol import IChannelTransport, TransportPassThrough

__all__ = ["FORWARD_MAGIC", "forwardPreamble", "ForwardedProtocol", "ForwardedFactory"]

FORWARD_MAGIC = b"TXPF"
FORWARD_VERSION = 1
_PREAMBLE = struct.Struct(">4sB3s32s")


def forwardPreamble(peerServiceId: ServiceId, peerKey: bytes) -> bytes:
    """
    What a sidecar writes first on the local connection.
    """
    return _PREAMBLE.pack(FORWARD_MAGIC, FORWARD_VERSION, peerServiceId.raw, peerKey)


@implementer(IChannelTransport)
class ForwardedProtocol(TransportPassThrough, Protocol):
    """
    The service's end of a forwarded connection, and the transport of the
    application protocol once the preamble has been read.
    """

    log = Logger()

    def __init__(self, applicationFactory: IProtocolFactory) -> None:
        self._applicationFactory = applicationFactory
        self._buffer = b""
        self.application: Protocol | None = None
        self.peerServiceId: ServiceId | None = None
        self.peerKey: bytes | None = None
        self.handshakeHash = None

    def dataReceived(self, data: bytes) -> None:
        if self.application is not None:
            self.application.dataReceived(data)
            return
        self._buffer += data
        if len(self._buffer) < _PREAMBLE.size:
            return
        magic, version, serviceId, key = _PREAMBLE.unpack_from(self._buffer)
        rest = self._buffer[_PREAMBLE.size :]
        self._buffer = b""
        if magic != FORWARD_MAGIC or version != FORWARD_VERSION:
            self.log.warn("Refused a forwarded connection: not a sidecar's preamble")
            self.transport.abortConnection()
            return
        self.peerServiceId, self.peerKey = ServiceId(serviceId), key
        application = self._applicationFactory.buildProtocol(self.transport.getPeer())
        if application is None:
            self.transport.loseConnection()
            return
        self.application = application
        application.makeConnection(self)
        if rest:
            application.dataReceived(rest)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        application, self.application = self.application, None
        if application is not None:
            application.connectionLost(reason)

    # The application's transport: everything goes to the socket as it is.

    def write(self, data: bytes) -> None:
        self.transport.write(data)

    def writeSequence(self, data: list[bytes]) -> None:
        self.transport.writeSequence(data)

    def loseConnection(self) -> None:
        self.disconnecting = True
        self.transport.loseConnection()


class ForwardedFactory(Factory):
    """
    Accept connections forwarded by a sidecar for C{applicationFactory}.
    """

    def __init__(self, applicationFactory: IProtocolFactory) -> None:
        self.applicationFactory = applicationFactory

    def buildProtocol(self, addr: Any) -> ForwardedProtocol:
        return ForwardedProtocol(self.applicationFactory)
