"""
amqps:// against a TLS listener in front of the real broker: the bus
checks the broker's certificate and name (service_identity) before any
AMQP byte, and works over TLS once they check out.

The listener is a TLS-terminating forwarder to RabbitMQ's plain port,
started by the test (RabbitMQ's own TLS listener needs its configuration
changed and a restart; what the client sees is the same: AMQP over TLS
1.2+ from a certificate).
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit

from twisted.internet import reactor
from twisted.internet.defer import CancelledError, inlineCallbacks
from twisted.internet.endpoints import serverFromString
from twisted.internet.task import deferLater
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.protocols.portforward import ProxyFactory, ProxyServer

from txplatform.amqp.bus import AMQPBus
from txplatform.amqp.url import BrokerURL
from txplatform.errors import Unavailable

from ..gateway.test_edge import makeCertificate
from ..support import BROKER_URL
from .harness import BrokerTestCase


class _CountingProxy(ProxyServer):
    """
    Reaches the broker only once the client sent something through TLS: a
    client that refuses the certificate leaves no broker connection open.
    """

    _early = b""
    _connecting = False

    def connectionMade(self) -> None:
        pass

    def dataReceived(self, data: bytes) -> None:
        self.factory.received += len(data)
        if self.peer is None:
            self._early += data
            if not self._connecting:
                self._connecting = True
                super().connectionMade()
            return
        super().dataReceived(data)

    def setPeer(self, peer: Any) -> None:
        super().setPeer(peer)
        early, self._early = self._early, b""
        if early:
            peer.transport.write(early)


class CountingForwarder(ProxyFactory):
    """
    Forwards to the broker and counts the decrypted bytes clients sent.
    """

    protocol = _CountingProxy
    received = 0


class TLSBrokerTests(BrokerTestCase):
    timeout = 60

    @inlineCallbacks
    def listen(self, name: str) -> Any:
        """
        A TLS listener with a certificate for C{name}, forwarding to the
        broker: its port and CA file.
        """
        certPath, keyPath = makeCertificate(os.path.abspath(self.mktemp()), name)
        broker = urlsplit(BROKER_URL)
        self.forwarder = CountingForwarder(broker.hostname, broker.port or 5672)
        endpoint = serverFromString(
            reactor, f"ssl:0:interface=127.0.0.1:privateKey={keyPath}:certKey={certPath}"
        )
        port = yield endpoint.listen(self.forwarder)
        # Last: a refused connection's teardown may still be a turn away
        # once the bus stopped.
        self.addCleanup(deferLater, reactor, 0.2, lambda: None)
        self.addCleanup(port.stopListening)
        return port.getHost().port, certPath

    @inlineCallbacks
    def tlsBus(self, url: str, connected: bool = True) -> Any:
        """
        A started bus on C{url}, stopped after the test (before the
        listener closes); connected, if C{connected}.
        """
        bus = AMQPBus(reactor, BrokerURL.parse(url), retryDelays=(0.05,))
        bus.startService()
        self.addCleanup(bus.stopService)
        if connected:
            yield bus.whenConnected()
        return bus

    def url(self, port: int, cafile: str, host: str = "localhost") -> str:
        broker = urlsplit(BROKER_URL)
        return f"amqps://{broker.username}:{broker.password}@{host}:{port}/?cafile={cafile}"

    @inlineCallbacks
    def test_roundTrip(self) -> Any:
        """
        With the broker's CA and its name, the bus connects over TLS and
        calls go through it.
        """
        port, cafile = yield self.listen("localhost")
        server = yield self.tlsBus(self.url(port, cafile))
        client = yield self.tlsBus(self.url(port, cafile))
        service = self.newServiceId()
        yield server.serve(service, {"echo": lambda payload, context: payload})
        reply = yield client.call(service, "echo", {"over": "tls"})
        self.assertEqual(reply, {"over": "tls"})
        self.assertGreater(self.forwarder.received, 0)

    @inlineCallbacks
    def assertRefused(self, url: str, why: str) -> Any:
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        bus = yield self.tlsBus(url, connected=False)
        connected = bus.whenConnected()
        yield deferLater(reactor, 1.5, lambda: None)
        self.assertFalse(connected.called, "connected to a broker it should not trust")
        connected.cancel()
        self.assertFailure(connected, CancelledError)
        self.assertEqual(self.forwarder.received, 0, "AMQP bytes went to an unchecked broker")
        # Each attempt is one line saying why, without a traceback.
        lines = [formatEvent(e) for e in events if e["log_level"] >= LogLevel.warn]
        self.assertTrue(lines)
        for line in lines:
            self.assertRegex(line, rf"^TLS with AMQP broker localhost:\d+ failed \(.*{why}")
            self.assertNotIn("Traceback", line)

    @inlineCallbacks
    def test_wrongName(self) -> Any:
        """
        A certificate for another name is refused (service_identity) before
        the AMQP handshake: not one byte of it, credentials included.
        """
        port, cafile = yield self.listen("broker.example")
        yield self.assertRefused(self.url(port, cafile), "DNSMismatch")

    @inlineCallbacks
    def test_untrusted(self) -> Any:
        """
        A certificate from a CA the bus was not given is refused.
        """
        port, _ = yield self.listen("localhost")
        otherCA, _ = makeCertificate(os.path.abspath(self.mktemp()), "localhost")
        yield self.assertRefused(self.url(port, otherCA), "certificate verify failed")

    @inlineCallbacks
    def test_plainTextListener(self) -> Any:
        """
        amqps:// to a port that does not speak TLS (the broker's plain one)
        never connects; calls made meanwhile fail as Unavailable when their
        deadline passes.
        """
        broker = urlsplit(BROKER_URL)
        _, cafile = yield self.listen("localhost")
        bus = yield self.tlsBus(self.url(broker.port or 5672, cafile), connected=False)
        yield self.assertFailure(
            bus.call(self.newServiceId(), "echo", {}, timeout=1.0), Unavailable
        )
        self.assertFalse(bus.whenConnected().called)
