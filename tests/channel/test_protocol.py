"""
Tests for L{txplatform.channel.protocol}: the handshake and the records,
between two protocols joined in memory (a wire the tests can tamper with),
on a L{Clock}.
"""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from txplatform.channel import noise
from txplatform.channel.identity import Identity, Peer, TrustStore
from txplatform.channel.noise import AESGCM_SHA256, CipherSuite
from txplatform.channel.protocol import (
    MAX_RECORD_DATA,
    ChannelError,
    ChannelProtocol,
    ChannelServerFactory,
    ChannelSettings,
    ChannelTruncated,
    HandshakeRefused,
    IChannelTransport,
)
from txplatform.serviceid import ServiceId

SERVER_ID = ServiceId.fromHex("010001")
CLIENT_ID = ServiceId.fromHex("010100")
SERVER = Identity.generate(SERVER_ID)
CLIENT = Identity.generate(CLIENT_ID)
STRANGER = Identity.generate(CLIENT_ID)
TRUST = TrustStore([Peer(SERVER_ID, SERVER.public), Peer(CLIENT_ID, CLIENT.public)])


class Recorder(Protocol):
    """
    An application protocol that keeps what happens to it.
    """

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.lost: Failure | None = None
        self.made = False

    def connectionMade(self) -> None:
        self.made = True

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.lost = reason

    @property
    def data(self) -> bytes:
        return b"".join(self.received)


class SpyFactory(Factory):
    """
    Builds L{Recorder}s and keeps them: an empty list means that no
    application protocol ever existed.
    """

    def __init__(self) -> None:
        self.built: list[Recorder] = []

    def buildProtocol(self, addr: object) -> Recorder:
        protocol = Recorder()
        self.built.append(protocol)
        return protocol


class Wire:
    """
    A client and a server channel joined by two L{StringTransport}s; bytes
    move only when pumped, through an optional tamperer.
    """

    def __init__(
        self,
        clock: Clock,
        clientSettings: ChannelSettings,
        serverSettings: ChannelSettings,
        target: ServiceId = SERVER_ID,
        serverFactory: ChannelServerFactory | None = None,
    ) -> None:
        self.clock = clock
        self.clientApp = SpyFactory()
        self.serverApp = SpyFactory()
        self.client = ChannelProtocol(clientSettings, self.clientApp, True, target)
        if serverFactory is None:
            serverFactory = ChannelServerFactory(serverSettings, self.serverApp)
        else:
            serverFactory.applicationFactory = self.serverApp
        self.serverFactory = serverFactory
        server = serverFactory.buildProtocol(IPv4Address("TCP", "127.0.0.2", 5000))
        assert server is not None
        self.server = server
        self.clientTransport = StringTransport(
            hostAddress=IPv4Address("TCP", "127.0.0.2", 5000),
            peerAddress=IPv4Address("TCP", "127.0.0.1", 4000),
        )
        self.serverTransport = StringTransport(
            hostAddress=IPv4Address("TCP", "127.0.0.1", 4000),
            peerAddress=IPv4Address("TCP", "127.0.0.2", 5000),
        )
        self.toServer: list[bytes] = []  # everything the client sent
        self.toClient: list[bytes] = []
        self.ended = False
        self.server.makeConnection(self.serverTransport)
        self.client.makeConnection(self.clientTransport)

    def pump(self, tamperToServer=None, tamperToClient=None) -> None:  # type: ignore[no-untyped-def]
        for _ in range(20):
            moved = False
            for source, target, log, tamper in [
                (self.clientTransport, self.server, self.toServer, tamperToServer),
                (self.serverTransport, self.client, self.toClient, tamperToClient),
            ]:
                data = source.value()
                source.clear()
                if data and not self.ended:
                    log.append(data)
                    if tamper is not None:
                        data = tamper(data)
                    if data:
                        target.dataReceived(data)
                    moved = True
            if self.clientTransport.disconnecting or self.serverTransport.disconnecting:
                self.end()
                return
            if not moved:
                return

    def discard(self) -> None:
        """
        Forget how the client's handshake ended, once the test has looked:
        an unexamined failure would be reported as unhandled.
        """
        self.client.established.addErrback(lambda failure: None)

    def end(self, reason: Failure | None = None) -> None:
        if self.ended:
            return
        self.ended = True
        reason = reason or Failure(ConnectionDone())
        self.client.connectionLost(reason)
        self.server.connectionLost(reason)


def settingsFor(clock: Clock, identity: Identity, **kw: object) -> ChannelSettings:
    return ChannelSettings(identity, kw.pop("trust", TRUST), clock, **kw)  # type: ignore[arg-type]


class HandshakeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.warnings: list[dict] = []
        from twisted.logger import globalLogPublisher

        def observe(event: dict) -> None:
            if "reason" in event or "message" in event:
                self.warnings.append(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)

    def wire(self, client: Identity = CLIENT, server: Identity = SERVER, **kw: object) -> Wire:
        target = kw.pop("target", SERVER_ID)
        serverKw = kw.pop("serverKw", {})
        wire = Wire(
            self.clock,
            settingsFor(self.clock, client, **kw),
            settingsFor(self.clock, server, **serverKw),  # type: ignore[arg-type]
            target,  # type: ignore[arg-type]
        )
        self.addCleanup(wire.discard)
        return wire

    def assertNothingDelivered(self, wire: Wire, initiatorBuilt: bool = False) -> None:
        self.assertEqual(wire.serverApp.built, [])
        if not initiatorBuilt:
            self.assertEqual(wire.clientApp.built, [])
        self.assertTrue(wire.ended)

    def reasons(self) -> list[str]:
        found = []
        for event in self.warnings:
            for key in ("reason", "message"):
                if isinstance(event.get(key), str):
                    found.append(event[key])
        return found

    def test_established(self) -> None:
        """
        A full handshake: both applications are built, learn who the peer
        is, and exchange data both ways.
        """
        wire = self.wire()
        wire.pump()
        self.assertTrue(IChannelTransport.providedBy(wire.client))
        [clientApp], [serverApp] = wire.clientApp.built, wire.serverApp.built
        self.assertIs(self.successResultOf(wire.client.established), clientApp)
        self.assertEqual(wire.server.peerServiceId, CLIENT_ID)
        self.assertEqual(wire.server.peerKey, CLIENT.public)
        self.assertEqual(wire.client.peerServiceId, SERVER_ID)
        self.assertEqual(wire.client.peerKey, SERVER.public)
        self.assertEqual(wire.client.handshakeHash, wire.server.handshakeHash)
        clientApp.transport.write(b"ping")
        wire.pump()
        self.assertEqual(serverApp.data, b"ping")
        serverApp.transport.write(b"pong")
        wire.pump()
        self.assertEqual(clientApp.data, b"pong")
        self.assertNotIn(b"ping", b"".join(wire.toServer))
        self.assertEqual(wire.serverFactory.pending, {})

    def test_untrustedInitiator(self) -> None:
        """
        An initiator whose key is not trusted is refused at the third
        message: the server's application is never built, even though the
        initiator (which trusted the server) sent data right after.
        """
        wire = self.wire(client=STRANGER)
        wire.pump()
        [clientApp] = wire.clientApp.built
        clientApp.transport.write(b"secret")
        wire.pump()
        self.assertNothingDelivered(wire, initiatorBuilt=True)
        self.assertTrue(wire.serverTransport.disconnecting)
        self.assertIn("not trusted for service 010100", " ".join(self.reasons()))
        self.assertEqual(wire.serverFactory.pending, {})

    def test_untrustedResponder(self) -> None:
        """
        An initiator that does not trust the responder's key stops after
        the second message, before sending its own key or any data.
        """
        impostor = Identity.generate(SERVER_ID)
        wire = self.wire(server=impostor)
        wire.pump()
        self.assertNothingDelivered(wire)
        # Preamble and message 1 only: no third message went out.
        self.assertEqual(len(wire.toServer), 1)
        error = self.failureResultOf(wire.client.established, HandshakeRefused)
        self.assertIn("not trusted for service 010001", str(error.value))

    def test_keyForAnotherService(self) -> None:
        """
        A trusted key speaks only for the service it is trusted for: the
        client's key claiming to be the server's service is refused.
        """
        wire = self.wire(client=Identity(SERVER_ID, CLIENT.private))
        wire.pump()
        self.assertNothingDelivered(wire, initiatorBuilt=True)
        self.assertIn("not trusted for service 010001", " ".join(self.reasons()))

    def test_wrongService(self) -> None:
        """
        An initiator asking for another service than this one is refused
        at the preamble.
        """
        wire = self.wire(target=ServiceId.fromHex("010002"))
        wire.pump()
        self.assertNothingDelivered(wire)
        self.assertIn("asks for service 010002, this is 010001", " ".join(self.reasons()))

    def test_wrongVersion(self) -> None:
        """
        Another protocol version is refused with a message that says so.
        """
        wire = self.wire(version=2)
        wire.pump()
        self.assertNothingDelivered(wire)
        self.assertIn("protocol version 2 is not supported", " ".join(self.reasons()))

    def test_versionBoundInHandshake(self) -> None:
        """
        A preamble rewritten in transit to the right version still fails:
        the version is bound in the prologue as well.
        """
        wire = self.wire(version=2)

        def rewrite(data: bytes) -> bytes:
            if data.startswith(b"TXPC\x02"):
                return b"TXPC\x01" + data[5:]
            return data

        wire.pump(tamperToServer=rewrite)
        self.assertNothingDelivered(wire)
        self.failureResultOf(wire.client.established, HandshakeRefused)

    def test_suiteMismatch(self) -> None:
        """
        Sides configured with different AEADs cannot complete a handshake.
        """
        wire = self.wire(suite=noise.CHACHAPOLY_SHA256)
        wire.pump()
        self.assertNothingDelivered(wire)

    def test_garbage(self) -> None:
        """
        Something that is not a channel (an HTTP request) is refused at its
        first bytes.
        """
        wire = self.wire()
        wire.clientTransport.clear()
        wire.server.dataReceived(b"GET / HTTP/1.1\r\n")
        self.assertTrue(wire.serverTransport.disconnecting)
        self.assertEqual(wire.serverTransport.value(), b"")
        self.assertIn("not a txplatform channel", " ".join(self.reasons()))

    def test_lowOrderEphemeral(self) -> None:
        """
        A first handshake message whose ephemeral key is a low-order point
        (all zeros) is refused in one logged line, no traceback, before
        any application byte.
        """
        wire = self.wire()
        hello = wire.clientTransport.value()
        wire.clientTransport.clear()
        server = self.wire()
        server.serverTransport.clear()
        server.server.dataReceived(hello[:-32] + b"\x00" * 32)
        self.assertTrue(server.serverTransport.disconnecting)
        self.assertEqual(server.serverTransport.value(), b"")
        self.assertIn("low-order point", " ".join(self.reasons()))
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_oversizedHandshakeFrame(self) -> None:
        """
        A handshake frame announcing more than a kilobyte is refused before
        it is buffered.
        """
        wire = self.wire()
        wire.clientTransport.clear()
        wire.server.dataReceived(b"TXPC\x01" + SERVER_ID.raw + struct.pack(">H", 5000))
        self.assertTrue(wire.serverTransport.disconnecting)
        self.assertIn("5000 bytes is too large", " ".join(self.reasons()))

    def test_tooSlow(self) -> None:
        """
        A handshake still incomplete after the timeout is aborted, and its
        place among the pending handshakes freed.
        """
        wire = self.wire(serverKw={"handshakeTimeout": 5.0})
        # Only the preamble of the client's first message arrives.
        preamble = wire.clientTransport.value()[:8]
        wire.clientTransport.clear()
        wire.server.dataReceived(preamble)
        self.assertEqual(wire.serverFactory.pending, {"127.0.0.0/24": 1})
        self.clock.advance(4.9)
        self.assertFalse(wire.serverTransport.disconnecting)
        self.clock.advance(0.2)
        self.assertTrue(wire.serverTransport.disconnecting)
        self.assertEqual(wire.serverFactory.pending, {})
        self.assertIn("longer than 5 s", " ".join(self.reasons()))
        self.assertIsNone(wire.server._deadline)
        self.assertEqual([c.func for c in self.clock.getDelayedCalls()], [wire.client._tooSlow])
        wire.end()
        self.assertEqual(wire.serverApp.built, [])

    def test_replay(self) -> None:
        """
        A recorded handshake (messages 1 and 3, and the records after them)
        replayed to a new responder fails at message 3: a new ephemeral key
        answers message 1.
        """
        wire = self.wire()
        wire.pump()
        [clientApp] = wire.clientApp.built
        clientApp.transport.write(b"transfer 100")
        wire.pump()
        recorded = b"".join(wire.toServer)
        replay = self.wire()
        replay.clientTransport.clear()
        replay.server.dataReceived(recorded)
        replay.end()
        self.assertEqual(replay.serverApp.built, [])
        self.assertIn("does not authenticate", " ".join(self.reasons()))

    def test_pendingPerNetwork(self) -> None:
        """
        Pending handshakes are bounded per source network (a /24): the
        addresses of one network share the bound, another network has its
        own; one that ends makes room.
        """
        factory = ChannelServerFactory(
            settingsFor(self.clock, SERVER), SpyFactory(), maxPending=10, maxPendingPerNetwork=2
        )
        a = IPv4Address("TCP", "127.0.0.2", 1)
        b = IPv4Address("TCP", "127.0.0.3", 1)
        first, second = factory.buildProtocol(a), factory.buildProtocol(b)
        self.assertIsNone(factory.buildProtocol(a))
        self.assertIsNone(factory.buildProtocol(IPv4Address("TCP", "127.0.0.200", 1)))
        self.assertIsNotNone(factory.buildProtocol(IPv4Address("TCP", "127.0.1.5", 1)))
        for protocol in (first, second):
            assert protocol is not None
            protocol.makeConnection(StringTransport())
        assert first is not None
        first.connectionLost(Failure(ConnectionDone()))
        self.assertIsNotNone(factory.buildProtocol(a))

    def test_silentMakeRoom(self) -> None:
        """
        When every place is taken, the oldest handshake that has not sent
        its preamble goes to make room; one that has is kept, and when all
        have, the newcomer is refused.
        """
        factory = ChannelServerFactory(
            settingsFor(self.clock, SERVER), SpyFactory(), maxPending=2, maxPendingPerNetwork=10
        )
        transports = []
        for n in range(2):
            protocol = factory.buildProtocol(IPv4Address("TCP", f"10.0.{n}.1", 1))
            transports.append(StringTransport())
            protocol.makeConnection(transports[-1])
        talker = factory.buildProtocol(IPv4Address("TCP", "10.0.9.1", 1))
        self.assertIsNotNone(talker)
        self.assertTrue(transports[0].disconnecting)  # the oldest silent one
        self.assertFalse(transports[1].disconnecting)
        assert talker is not None
        talker.makeConnection(StringTransport())
        talker.dataReceived(b"TXPC\x01" + SERVER_ID.raw)  # its preamble
        newcomer = factory.buildProtocol(IPv4Address("TCP", "10.0.8.1", 1))
        self.assertTrue(transports[1].disconnecting)
        assert newcomer is not None
        newcomer.makeConnection(StringTransport())
        newcomer.dataReceived(b"TXPC\x01" + SERVER_ID.raw)
        self.assertIsNone(factory.buildProtocol(IPv4Address("TCP", "10.0.7.1", 1)))

    def test_silentGoesSoon(self) -> None:
        """
        A connection that sends no preamble is closed after the preamble
        timeout, well before the handshake's.
        """
        factory = ChannelServerFactory(settingsFor(self.clock, SERVER), SpyFactory())
        protocol = factory.buildProtocol(IPv4Address("TCP", "10.0.0.1", 1))
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.clock.advance(2.1)
        self.assertTrue(transport.disconnecting)
        self.assertIn("no preamble within 2 s", " ".join(self.reasons()))
        self.assertEqual(factory.pending, {})

    def test_applicationRefuses(self) -> None:
        """
        An application factory that returns None closes the channel
        cleanly.
        """
        wire = self.wire()
        wire.serverApp.buildProtocol = lambda addr: None  # type: ignore[method-assign]
        wire.pump()
        self.assertTrue(wire.ended)
        # The client's side was established; it sees a clean end.
        clientApp = self.successResultOf(wire.client.established)
        assert clientApp.lost is not None
        clientApp.lost.trap(ConnectionDone)

    @settings(max_examples=150, deadline=None)
    @given(st.integers(0, 2), st.binary(max_size=300))
    def test_randomBytes(self, stage: int, garbage: bytes) -> None:
        """
        Random bytes after any number of valid handshake steps are refused
        without an exception escaping, and no application is built.
        """
        clock = Clock()
        wire = Wire(clock, settingsFor(clock, CLIENT), settingsFor(clock, SERVER))
        # Stage 0: garbage instead of the preamble; 1: after the preamble;
        # 2: after the first message.
        if stage:
            hello = wire.clientTransport.value()
            wire.clientTransport.clear()
            wire.server.dataReceived(hello[:8] if stage == 1 else hello)
        else:
            wire.clientTransport.clear()
        wire.server.dataReceived(garbage)
        self.assertEqual(wire.serverApp.built, [])
        wire.end()
        wire.discard()
        self.assertEqual(wire.serverApp.built, [])
        self.assertEqual(wire.serverFactory.pending, {})

    @settings(max_examples=150, deadline=None)
    @given(st.binary(max_size=300))
    def test_randomBytesToInitiator(self, garbage: bytes) -> None:
        """
        Random bytes in place of the responder's answer are refused by the
        initiator the same way: no exception escapes, no application is
        built, and the connect fails.
        """
        clock = Clock()
        wire = Wire(clock, settingsFor(clock, CLIENT), settingsFor(clock, SERVER))
        wire.clientTransport.clear()
        wire.client.dataReceived(garbage)
        wire.end()
        self.assertEqual(wire.clientApp.built, [])
        self.failureResultOf(wire.client.established, HandshakeRefused)


class RecordTests(SynchronousTestCase):
    """
    The established channel: records, rekeys, the end.
    """

    def setUp(self) -> None:
        self.clock = Clock()

    def established(self, **kw: object) -> tuple[Wire, Recorder, Recorder]:
        wire = Wire(
            self.clock, settingsFor(self.clock, CLIENT, **kw), settingsFor(self.clock, SERVER, **kw)
        )
        wire.pump()
        self.addCleanup(wire.discard)
        [clientApp], [serverApp] = wire.clientApp.built, wire.serverApp.built
        return wire, clientApp, serverApp

    def records(self, data: bytes) -> list[bytes]:
        """
        Cut a run of frames into frames.
        """
        frames = []
        while data:
            (length,) = struct.unpack(">H", data[:2])
            frames.append(data[: 2 + length])
            data = data[2 + length :]
        return frames

    def sendThree(self, tamper) -> tuple[Wire, Recorder]:  # type: ignore[no-untyped-def]
        wire, clientApp, serverApp = self.established()
        for word in (b"one", b"two", b"three"):
            clientApp.transport.write(word)
        data = wire.clientTransport.value()
        wire.clientTransport.clear()
        frames = self.records(data)
        self.assertEqual(len(frames), 3)
        wire.server.dataReceived(b"".join(tamper(frames)))
        wire.pump()
        return wire, serverApp

    def test_large(self) -> None:
        """
        Writes larger than a record are cut into records and arrive whole.
        """
        wire, clientApp, serverApp = self.established()
        payload = bytes(range(256)) * 1000
        clientApp.transport.write(payload)
        wire.pump()
        self.assertEqual(serverApp.data, payload)
        self.assertGreater(len(payload), MAX_RECORD_DATA)

    def test_flippedBit(self) -> None:
        """
        A flipped bit in a record breaks the channel there: the records
        before it are delivered, nothing from it on, and the application
        learns why.
        """

        def flip(frames: list[bytes]) -> list[bytes]:
            second = bytearray(frames[1])
            second[5] ^= 1
            return [frames[0], bytes(second), frames[2]]

        wire, serverApp = self.sendThree(flip)
        self.assertEqual(serverApp.data, b"one")
        assert serverApp.lost is not None
        serverApp.lost.trap(ChannelError)
        self.assertIn("record 1 does not authenticate", str(serverApp.lost.value))

    def test_typeBound(self) -> None:
        """
        A record's type travels in clear but is bound in: changing it (DATA
        into CLOSE) fails authentication.
        """

        def retype(frames: list[bytes]) -> list[bytes]:
            second = bytearray(frames[1])
            second[2] = 2  # CLOSE
            return [frames[0], bytes(second), frames[2]]

        wire, serverApp = self.sendThree(retype)
        self.assertEqual(serverApp.data, b"one")
        assert serverApp.lost is not None
        serverApp.lost.trap(ChannelError)

    def test_shortRecord(self) -> None:
        """
        A record too short to hold a tag is refused.
        """
        wire, serverApp = self.sendThree(lambda f: [f[0], b"\x00\x03\x00ab", f[1]])
        self.assertEqual(serverApp.data, b"one")
        assert serverApp.lost is not None
        self.assertIn("too short", str(serverApp.lost.value))

    def test_oneCallPerWrite(self) -> None:
        """
        A write of several records goes down to the connection in one call,
        so that a producer paused by an overfull buffer is paused once (and
        resumed once): Twisted's transports pause per call.
        """
        wire, clientApp, serverApp = self.established()
        calls: list[int] = []
        original = wire.clientTransport.writeSequence
        wire.clientTransport.writeSequence = lambda data: (  # type: ignore[method-assign]
            calls.append(len(data)),
            original(data),
        )
        clientApp.transport.write(bytes(3 * MAX_RECORD_DATA + 5))
        self.assertEqual(calls, [8])  # four records, a header and a body each
        wire.pump()
        self.assertEqual(len(serverApp.data), 3 * MAX_RECORD_DATA + 5)

    def test_dataWhileDelivering(self) -> None:
        """
        Bytes that arrive while records are being delivered (a transport
        calling back in, further up the stack) are delivered after them, in
        order, none lost.
        """
        wire, clientApp, serverApp = self.established()
        for word in (b"one", b"two", b"three"):
            clientApp.transport.write(word)
        frames = self.records(wire.clientTransport.value())
        wire.clientTransport.clear()
        later = [frames[1], frames[2]]

        def feedMore(data: bytes) -> None:
            Recorder.dataReceived(serverApp, data)
            if later:
                wire.server.dataReceived(later.pop(0))

        serverApp.dataReceived = feedMore  # type: ignore[method-assign]
        wire.server.dataReceived(frames[0])
        self.assertEqual(serverApp.received, [b"one", b"two", b"three"])
        self.assertIsNone(serverApp.lost)

    def test_duplicated(self) -> None:
        """
        A record sent twice is refused the second time.
        """
        wire, serverApp = self.sendThree(lambda f: [f[0], f[0], f[1], f[2]])
        self.assertEqual(serverApp.data, b"one")
        assert serverApp.lost is not None
        serverApp.lost.trap(ChannelError)

    def test_swapped(self) -> None:
        """
        Records out of order are refused.
        """
        wire, serverApp = self.sendThree(lambda f: [f[1], f[0], f[2]])
        self.assertEqual(serverApp.data, b"")
        assert serverApp.lost is not None
        serverApp.lost.trap(ChannelError)

    def test_dropped(self) -> None:
        """
        A record missing is noticed at the next one.
        """
        wire, serverApp = self.sendThree(lambda f: [f[0], f[2]])
        self.assertEqual(serverApp.data, b"one")
        assert serverApp.lost is not None
        serverApp.lost.trap(ChannelError)

    def test_truncated(self) -> None:
        """
        A connection that ends without CLOSE is reported as truncated.
        """
        wire, clientApp, serverApp = self.established()
        clientApp.transport.write(b"partial")
        wire.pump()
        wire.end()
        assert serverApp.lost is not None
        serverApp.lost.trap(ChannelTruncated)

    def test_cleanClose(self) -> None:
        """
        loseConnection sends CLOSE: both applications see a clean end.
        """
        wire, clientApp, serverApp = self.established()
        clientApp.transport.write(b"bye")
        clientApp.transport.loseConnection()
        wire.pump()
        self.assertEqual(serverApp.data, b"bye")
        assert serverApp.lost is not None and clientApp.lost is not None
        serverApp.lost.trap(ConnectionDone)
        clientApp.lost.trap(ConnectionDone)

    def test_dataAfterClose(self) -> None:
        """
        A record after the peer's CLOSE breaks the channel.
        """
        wire, clientApp, serverApp = self.established()
        client = wire.client
        client._sendRecord(2)  # CLOSE, without closing
        client._sendRecord(0, b"late")
        wire.pump()
        self.assertEqual(serverApp.data, b"")
        assert serverApp.lost is not None
        serverApp.lost.trap(ChannelError)

    def test_rekeyByBytes(self) -> None:
        """
        After rekeyBytes the sender rekeys in band; the receiver follows,
        and data keeps flowing.
        """
        wire, clientApp, serverApp = self.established(rekeyBytes=1000)
        key = wire.client._send._key
        for i in range(10):
            clientApp.transport.write(bytes([i]) * 600)
            wire.pump()
        self.assertEqual(serverApp.data, b"".join(bytes([i]) * 600 for i in range(10)))
        self.assertNotEqual(wire.client._send._key, key)
        self.assertEqual(wire.client._send._key, wire.server._receive._key)
        self.assertIsNone(serverApp.lost)

    def test_rekeyByTime(self) -> None:
        """
        Every rekeyInterval each side rekeys what it sends, even when idle.
        """
        wire, clientApp, serverApp = self.established(rekeyInterval=10.0)
        keys = (wire.client._send._key, wire.server._send._key)
        self.clock.advance(10)
        wire.pump()
        self.assertNotEqual((wire.client._send._key, wire.server._send._key), keys)
        self.assertEqual(wire.client._send._key, wire.server._receive._key)
        self.assertEqual(wire.server._send._key, wire.client._receive._key)
        clientApp.transport.write(b"still here")
        serverApp.transport.write(b"me too")
        wire.pump()
        self.assertEqual(serverApp.data, b"still here")
        self.assertEqual(clientApp.data, b"me too")

    def test_peerMustRekey(self) -> None:
        """
        A peer still using one key after twice the interval is dropped.
        """
        wire, clientApp, serverApp = self.established(rekeyInterval=10.0)
        wire.client._rekeyTimer.cancel()  # a peer that never rekeys
        self.clock.advance(21)
        wire.clientTransport.clear()
        wire.serverTransport.clear()
        clientApp.transport.write(b"stale")
        wire.pump()
        self.assertEqual(serverApp.data, b"")
        assert serverApp.lost is not None
        serverApp.lost.trap(ChannelError)

    def test_noNonceReuse(self) -> None:
        """
        Across rekeys by bytes and by time, from both sides at once, no
        (key, nonce) pair is ever used twice for encryption.
        """
        used: list[tuple[bytes, bytes]] = []

        class Recording:
            def __init__(self, key: bytes) -> None:
                self.key = key
                self.aead = AESGCM_SHA256.aead(key)

            def encrypt(self, nonce: bytes, data: bytes, ad: bytes) -> bytes:
                used.append((self.key, nonce))
                return self.aead.encrypt(nonce, data, ad)

            def decrypt(self, nonce: bytes, data: bytes, ad: bytes) -> bytes:
                return self.aead.decrypt(nonce, data, ad)

        suite = CipherSuite("AESGCM", Recording, AESGCM_SHA256.nonceFormat)
        wire, clientApp, serverApp = self.established(
            suite=suite, rekeyBytes=3000, rekeyInterval=5.0
        )
        for _ in range(40):
            clientApp.transport.write(b"c" * 700)
            serverApp.transport.write(b"s" * 900)
            self.clock.advance(1)
            wire.pump()
        self.assertEqual(serverApp.data, b"c" * 700 * 40)
        self.assertEqual(clientApp.data, b"s" * 900 * 40)
        # Rekeying encrypts zeros under the reserved nonce, on both sides
        # (the receiver derives the same next key): no message uses it.
        reserved = AESGCM_SHA256.nonce(noise.MAX_NONCE)
        messages = [pair for pair in used if pair[1] != reserved]
        rekeys = {pair for pair in used if pair[1] == reserved}
        self.assertGreater(len(messages), 100)
        self.assertGreater(len(rekeys), 10)
        self.assertEqual(len(messages), len(set(messages)))

    def test_revoked(self) -> None:
        """
        When the trust changes, a channel whose peer is no longer trusted
        is cut at once; the others go on.
        """
        trust = TrustStore(TRUST.peers)
        wire = Wire(
            self.clock,
            settingsFor(self.clock, CLIENT, trust=trust),
            settingsFor(self.clock, SERVER, trust=trust),
        )
        wire.pump()
        self.addCleanup(wire.discard)
        [serverApp] = wire.serverApp.built
        trust.replace(TRUST.peers + [Peer(CLIENT_ID, STRANGER.public)])
        wire.pump()
        self.assertFalse(wire.ended)
        trust.replace([Peer(SERVER_ID, SERVER.public)])
        wire.pump()
        self.assertTrue(wire.ended)
        assert serverApp.lost is not None
        self.assertIn("no longer trusted for 010100", str(serverApp.lost.value))

    def test_pauseHoldsRecords(self) -> None:
        """
        An application that pauses its transport gets no more data, even
        records already received, until it resumes.
        """
        wire, clientApp, serverApp = self.established()

        def pauseAfterFirst(data: bytes) -> None:
            Recorder.dataReceived(serverApp, data)
            if len(serverApp.received) == 1:
                serverApp.transport.pauseProducing()

        serverApp.dataReceived = pauseAfterFirst  # type: ignore[method-assign]
        clientApp.transport.write(b"one")
        clientApp.transport.write(b"two")
        wire.pump()
        self.assertEqual(serverApp.received, [b"one"])
        self.assertEqual(wire.serverTransport.producerState, "paused")
        serverApp.transport.resumeProducing()
        self.assertEqual(serverApp.received, [b"one", b"two"])

    def test_producerPassesThrough(self) -> None:
        """
        A producer registered with the channel is registered with the
        connection below it, whose buffer decides when to pause it.
        """
        wire, clientApp, serverApp = self.established()
        producer = object()
        clientApp.transport.registerProducer(producer, True)
        self.assertIs(wire.clientTransport.producer, producer)
        clientApp.transport.unregisterProducer()
        self.assertIsNone(wire.clientTransport.producer)
