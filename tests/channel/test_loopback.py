"""
The secure channel over real loopback TCP, with the reactor: a line echo,
AMP, and a refused peer.
"""

from __future__ import annotations

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols import amp
from twisted.protocols.basic import LineReceiver
from twisted.trial.unittest import TestCase

from txplatform.channel.identity import Identity, Peer, TrustStore
from txplatform.channel.protocol import (
    ChannelClientEndpoint,
    ChannelServerEndpoint,
    ChannelSettings,
    HandshakeRefused,
)
from txplatform.serviceid import ServiceId

SERVER_ID = ServiceId.fromHex("010002")
CLIENT_ID = ServiceId.fromHex("010100")


class Echo(LineReceiver):
    def lineReceived(self, line: bytes) -> None:
        self.sendLine(b"echo " + line + b" from " + self.transport.peerServiceId.hex.encode())


class Collect(LineReceiver):
    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.waiting: Deferred | None = None

    def lineReceived(self, line: bytes) -> None:
        self.lines.append(line)
        if self.waiting is not None:
            waiting, self.waiting = self.waiting, None
            waiting.callback(line)

    def next(self) -> Deferred:
        self.waiting = Deferred()
        return self.waiting


class Sum(amp.Command):
    arguments = [(b"a", amp.Integer()), (b"b", amp.Integer())]
    response = [(b"total", amp.Integer())]


class Adder(amp.AMP):
    @Sum.responder
    def sum(self, a: int, b: int) -> dict:
        return {"total": a + b}


class LoopbackTests(TestCase):
    def setUp(self) -> None:
        self.server = Identity.generate(SERVER_ID)
        self.client = Identity.generate(CLIENT_ID)
        self.trust = TrustStore(
            [Peer(SERVER_ID, self.server.public), Peer(CLIENT_ID, self.client.public)]
        )

    @inlineCallbacks
    def listen(self, factory: Factory, identity: Identity | None = None):  # type: ignore[no-untyped-def]
        settings = ChannelSettings(identity or self.server, self.trust, reactor)
        endpoint = ChannelServerEndpoint(
            TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"), settings
        )
        port = yield endpoint.listen(factory)
        self.addCleanup(port.stopListening)
        return port.getHost().port

    def connect(self, port: int, factory: Factory, identity: Identity | None = None) -> Deferred:
        settings = ChannelSettings(identity or self.client, self.trust, reactor)
        endpoint = ChannelClientEndpoint(
            TCP4ClientEndpoint(reactor, "127.0.0.1", port), settings, SERVER_ID
        )
        return endpoint.connect(factory)

    def closeWhenDone(self, protocol: Protocol) -> Deferred:
        lost: Deferred = Deferred()
        original = protocol.connectionLost

        def connectionLost(reason: object) -> None:
            original(reason)
            lost.callback(None)

        protocol.connectionLost = connectionLost  # type: ignore[method-assign]
        self.addCleanup(lambda: lost)
        self.addCleanup(protocol.transport.loseConnection)
        return lost

    @inlineCallbacks
    def test_echo(self):  # type: ignore[no-untyped-def]
        """
        Lines go through the channel both ways, and the server knows which
        service called.
        """
        port = yield self.listen(Factory.forProtocol(Echo))
        client = yield self.connect(port, Factory.forProtocol(Collect))
        self.closeWhenDone(client)
        waiting = client.next()
        client.sendLine(b"hello")
        line = yield waiting
        self.assertEqual(line, b"echo hello from 010100")
        self.assertEqual(client.transport.peerServiceId, SERVER_ID)

    @inlineCallbacks
    def test_amp(self):  # type: ignore[no-untyped-def]
        """
        AMP runs over the channel unchanged, large arguments included.
        """
        port = yield self.listen(Factory.forProtocol(Adder))
        client = yield self.connect(port, Factory.forProtocol(amp.AMP))
        self.closeWhenDone(client)
        results = yield Deferred.fromCoroutine(self.sums(client))
        self.assertEqual(results, [i + 2 * i for i in range(50)])

    async def sums(self, client: amp.AMP) -> list[int]:
        totals = []
        for i in range(50):
            result = await client.callRemote(Sum, a=i, b=2 * i)
            totals.append(result["total"])
        return totals

    @inlineCallbacks
    def test_refused(self):  # type: ignore[no-untyped-def]
        """
        A client whose key is not trusted gets no application connection
        on the server: its connection is closed, and nothing was built.
        """
        built: list[object] = []

        class Spy(Factory):
            def buildProtocol(self, addr: object) -> Protocol:
                built.append(addr)
                return Echo()

        port = yield self.listen(Spy())
        stranger = Identity.generate(CLIENT_ID)
        client = yield self.connect(port, Factory.forProtocol(Collect), stranger)
        lost = self.closeWhenDone(client)
        client.sendLine(b"anyone there?")
        yield lost
        self.assertEqual(built, [])
        self.assertEqual(client.lines, [])
        self.flushLoggedErrors()

    @inlineCallbacks
    def test_untrustedServer(self):  # type: ignore[no-untyped-def]
        """
        A server whose key the client does not trust fails the connect.
        """
        port = yield self.listen(Factory.forProtocol(Echo), Identity.generate(SERVER_ID))
        yield self.assertFailure(self.connect(port, Factory.forProtocol(Collect)), HandshakeRefused)
