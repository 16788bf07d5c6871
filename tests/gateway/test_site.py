"""
Tests for L{txplatform_gateway.site}: what a slow or greedy client gets
before its request reaches the gateway.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource

from txplatform_gateway.site import GatewaySite


class Hello(Resource):
    isLeaf = True

    def render(self, request):
        self.seen = request
        self.body = request.content.read()
        return b"hello"


class SiteTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.site = GatewaySite(
            Hello(),
            maxBodySize=1000,
            headerTimeout=5,
            bodyTimeout=10,
            maxConnectionsPerAddress=3,
            reactor=self.clock,
        )

    def connect(self, host: str = "192.0.2.1") -> tuple[object, StringTransport]:
        peer = IPv4Address("TCP", host, 40000)
        channel = self.site.buildProtocol(peer)
        transport = StringTransport(peerAddress=peer)
        channel.makeConnection(transport)
        return channel, transport

    def answer(self, transport: StringTransport) -> tuple[int, dict]:
        head, _, body = transport.value().partition(b"\r\n\r\n")
        status = int(head.split(b" ")[1])
        return status, json.loads(body) if body.startswith(b"{") else {}

    def test_formsNotParsed(self) -> None:
        """
        A POST body is never parsed as a form into the request's arguments
        (the API takes JSON): it reaches the resource as it came.
        """
        channel, transport = self.connect()
        body = b"a=1&b=2"
        channel.dataReceived(
            b"POST /v1/x?q=1 HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        request = self.site.resource.seen
        self.assertEqual(request.args, {b"q": [b"1"]})
        self.assertEqual(self.site.resource.body, body)

    def test_declaredTooLarge(self) -> None:
        """
        A body declared over the limit is answered 413 at once, before any
        of it comes, and the connection ends.
        """
        channel, transport = self.connect()
        channel.dataReceived(
            b"POST /v1/posts HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000000\r\n\r\n"
        )
        status, problem = self.answer(transport)
        self.assertEqual((status, problem["type"]), (413, "urn:txplatform:problem:body_too_large"))
        self.assertTrue(transport.disconnecting)

    def test_tricklingHeaders(self) -> None:
        """
        Headers that trickle in, a line now and then, get 408 once their
        deadline passes, however recent the last line.
        """
        channel, transport = self.connect()
        channel.dataReceived(b"GET / HTTP/1.1\r\n")
        for n in range(4):
            self.clock.advance(1)
            channel.dataReceived(b"X-Slow-%d: 1\r\n" % n)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(1.1)
        self.assertEqual(self.answer(transport)[0], 408)
        self.assertTrue(transport.disconnecting)

    def test_silent(self) -> None:
        """
        A connection that sends nothing is closed at the header deadline.
        """
        _, transport = self.connect()
        self.clock.advance(5.1)
        self.assertTrue(transport.disconnecting)

    def test_slowBody(self) -> None:
        """
        A body that does not end in time (a chunked one that never ends)
        gets 408.
        """
        channel, transport = self.connect()
        channel.dataReceived(
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n"
        )
        for _ in range(9):
            self.clock.advance(1)
            channel.dataReceived(b"1\r\na\r\n")
        self.assertFalse(transport.disconnecting)
        self.clock.advance(1.1)
        self.assertEqual(self.answer(transport)[0], 408)

    def test_keptAlive(self) -> None:
        """
        Between requests, a kept-alive connection waits on the idle timeout
        alone; the next request's headers get a deadline of their own.
        """
        channel, transport = self.connect()
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertIn(b"hello", transport.value())
        self.clock.advance(20)
        self.assertFalse(transport.disconnecting)
        transport.clear()
        channel.dataReceived(b"GET / HTTP/1.1\r\n")
        self.clock.advance(5.1)
        self.assertEqual(self.answer(transport)[0], 408)

    def test_oneDeadlineTimer(self) -> None:
        """
        A kept-alive connection's requests move one deadline timer rather
        than each making its own: the reactor's heap of timers is not
        churned twice a request.
        """
        made = []
        callLater = self.clock.callLater

        def counting(delay: float, f: Any, *args: Any, **kwargs: Any) -> Any:
            made.append(getattr(f, "__name__", ""))
            return callLater(delay, f, *args, **kwargs)

        self.clock.callLater = counting  # type: ignore[method-assign]
        channel, transport = self.connect()
        for _ in range(5):
            self.clock.advance(1)
            channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(transport.value().count(b"hello"), 5)
        self.assertEqual(made.count("_tooSlow"), 1)
        # Disarmed between requests: going off then closes nothing.
        self.clock.advance(5.1)
        self.assertFalse(transport.disconnecting)
        channel.connectionLost(None)
        self.assertEqual(
            [c for c in self.clock.getDelayedCalls() if c.func.__name__ == "_tooSlow"], []
        )

    def test_connectionsPerAddress(self) -> None:
        """
        One address holds at most so many connections; others are not
        counted with it, and a closed one makes room.
        """
        connections = [self.connect() for _ in range(3)]
        channel, transport = self.connect()
        self.assertEqual(self.answer(transport)[0], 503)
        self.assertTrue(transport.disconnecting)
        channel.connectionLost(None)
        self.assertFalse(self.connect("192.0.2.2")[1].disconnecting)
        first, _ = connections[0]
        first.connectionLost(None)
        self.assertFalse(self.connect()[1].disconnecting)
