# -*- test-case-name: tests.direct.test_liveness -*-
"""
Telling a vanished peer from a quiet one, on the direct transport's TCP
connections.

A host that vanishes (its cable pulled, its machine off, its network
namespace gone) sends nothing more, not even a reset.  Left alone, a
connection to it stays open until the kernel gives up retransmitting
(about fifteen minutes on Linux), and every call sent over it waits for its
deadline.  So each connection is told, where the platform has the options
(Linux; elsewhere nothing changes):

  - C{TCP_USER_TIMEOUT}: data the peer has not acknowledged after this long
    closes the connection, so the calls on it are resent to another replica
    (idempotent ones) or fail at once;
  - keepalive probes: an idle connection to a vanished peer closes after
    C{idle + count * interval} seconds, before a call is sent into it.

A slow handler is not a vanished peer: its host's kernel acknowledges what
it was sent, so neither closes the connection.
"""

from __future__ import annotations

import socket
from typing import Any

from attrs import frozen
from twisted.internet.interfaces import IStreamClientEndpoint
from zope.interface import implementer

__all__ = ["Liveness", "LivenessEndpoint"]


@frozen
class Liveness:
    """
    How soon a connection to a vanished peer is closed.

    @ivar unacknowledged: Seconds data may stay unacknowledged.
    @ivar idle: Seconds of silence before the first keepalive probe.
    @ivar interval: Seconds between probes.
    @ivar probes: Probes unanswered before the connection is closed.
    """

    unacknowledged: float = 5.0
    idle: float = 10.0
    interval: float = 5.0
    probes: int = 3

    def apply(self, handle: Any) -> None:
        """
        Set these on C{handle}, a connected TCP socket: each option the
        platform lacks is left out.
        """
        handle.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in [
            ("TCP_USER_TIMEOUT", int(self.unacknowledged * 1000)),
            ("TCP_KEEPIDLE", max(1, round(self.idle))),
            ("TCP_KEEPINTVL", max(1, round(self.interval))),
            ("TCP_KEEPCNT", self.probes),
        ]:
            option = getattr(socket, name, None)
            if option is not None:
                handle.setsockopt(socket.IPPROTO_TCP, option, value)


@implementer(IStreamClientEndpoint)
class LivenessEndpoint:
    """
    A TCP client endpoint whose connections are given L{Liveness} options
    as soon as they are made.
    """

    def __init__(self, endpoint: IStreamClientEndpoint, liveness: Liveness) -> None:
        self._endpoint = endpoint
        self._liveness = liveness

    def connect(self, protocolFactory: Any) -> Any:
        def connected(protocol: Any) -> Any:
            self._liveness.apply(protocol.transport.getHandle())
            return protocol

        return self._endpoint.connect(protocolFactory).addCallback(connected)
