"""
Tests for L{txplatform.direct.liveness}.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import SynchronousTestCase, TestCase

from txplatform.direct.liveness import Liveness, LivenessEndpoint


def _options(handle: Any) -> dict[str, int]:
    found = {"SO_KEEPALIVE": handle.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)}
    for name in ["TCP_USER_TIMEOUT", "TCP_KEEPIDLE", "TCP_KEEPINTVL", "TCP_KEEPCNT"]:
        if hasattr(socket, name):
            found[name] = handle.getsockopt(socket.IPPROTO_TCP, getattr(socket, name))
    return found


class LivenessTests(SynchronousTestCase):
    def test_apply(self) -> None:
        """
        The options are set on the socket: unacknowledged data in
        milliseconds, the keepalive's times in whole seconds.
        """
        with socket.socket() as s:
            Liveness(unacknowledged=2.5, idle=7, interval=3, probes=4).apply(s)
            options = _options(s)
        self.assertEqual(options.pop("SO_KEEPALIVE"), 1)
        expected = {
            "TCP_USER_TIMEOUT": 2500,
            "TCP_KEEPIDLE": 7,
            "TCP_KEEPINTVL": 3,
            "TCP_KEEPCNT": 4,
        }
        self.assertEqual(options, {k: v for k, v in expected.items() if k in options})


class LivenessEndpointTests(TestCase):
    @inlineCallbacks
    def test_connect(self) -> Any:
        """
        A connection made through the endpoint has the options before its
        protocol is handed over.
        """
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Factory.forProtocol(Protocol)
        )
        self.addCleanup(port.stopListening)
        endpoint = LivenessEndpoint(
            TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port),
            Liveness(unacknowledged=1.5),
        )
        protocol = yield endpoint.connect(Factory.forProtocol(Protocol))
        self.addCleanup(protocol.transport.loseConnection)
        options = _options(protocol.transport.getHandle())
        self.assertEqual(options["SO_KEEPALIVE"], 1)
        if "TCP_USER_TIMEOUT" in options:
            self.assertEqual(options["TCP_USER_TIMEOUT"], 1500)
