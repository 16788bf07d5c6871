"""
Tests for L{txplatform.direct.bus}: calls between buses over real secure
channels on loopback, each service at the 127.x.y.z address its id gives.
"""

from __future__ import annotations

import socket

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from txplatform.channel.identity import Identity, Peer, TrustStore
from txplatform.channel.protocol import ChannelSettings
from txplatform.context import Origin, Priority
from txplatform.crypto.codecs import SealedPayloadCodec
from txplatform.crypto.keyring import Keyring, MasterKey
from txplatform.crypto.sealing import Sealer
from txplatform.direct.addresses import AddressBook
from txplatform.direct.bus import DirectBus
from txplatform.errors import (
    DeadlineExceeded,
    MalformedMessage,
    NotFound,
    Unavailable,
    UnknownMethod,
)
from txplatform.serviceid import ServiceId

from ..support import sleep

SERVER_ID = ServiceId.fromHex("010002")
CLIENT_ID = ServiceId.fromHex("010100")
BUS_KEY = bytes(range(32))


def freePort(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def sealedCodec() -> SealedPayloadCodec:
    return SealedPayloadCodec(Sealer(Keyring("bus", [MasterKey(1, BUS_KEY)], Clock())))


class DirectBusTests(TestCase):
    def setUp(self) -> None:
        self.serverIdentity = Identity.generate(SERVER_ID)
        self.clientIdentity = Identity.generate(CLIENT_ID)
        self.trust = TrustStore(
            [
                Peer(SERVER_ID, self.serverIdentity.public),
                Peer(CLIENT_ID, self.clientIdentity.public),
            ]
        )
        self.port = freePort("127.1.0.2")
        self.addresses = AddressBook("127.0.0.0/8", self.port)

    def bus(self, identity: Identity, trust: TrustStore | None = None, **kw: object) -> DirectBus:
        settings = ChannelSettings(identity, trust or self.trust, reactor)
        bus = DirectBus(
            reactor,
            settings,
            kw.pop("addresses", self.addresses),  # type: ignore[arg-type]
            codec=kw.pop("codec", sealedCodec()),  # type: ignore[arg-type]
            **kw,  # type: ignore[arg-type]
        )
        bus.startService()
        self.addCleanup(bus.stopService)
        return bus

    @inlineCallbacks
    def serving(self, handlers: dict, **kw: object):  # type: ignore[no-untyped-def]
        server = self.bus(self.serverIdentity, **kw)
        yield server.serve(SERVER_ID, handlers)
        return server

    @inlineCallbacks
    def test_call(self):  # type: ignore[no-untyped-def]
        """
        A call reaches the service at the address its id gives, which knows
        the caller from the channel; the answer comes back.
        """

        def echo(payload: dict, context: object) -> dict:
            return {
                "got": payload,
                "caller": context.caller.hex,  # type: ignore[attr-defined]
                "priority": context.priority,  # type: ignore[attr-defined]
                "trace": context.correlationId,  # type: ignore[attr-defined]
            }

        server = yield self.serving({"echo": echo})
        self.assertEqual(server.port.getHost().host, "127.1.0.2")
        client = self.bus(self.clientIdentity)
        result = yield client.call(
            SERVER_ID,
            "echo",
            {"n": 1},
            priority=Priority.HIGH,
            origin=Origin(correlationId="trace-1"),
        )
        self.assertEqual(
            result,
            {
                "got": {"n": 1},
                "caller": "010100",
                "priority": int(Priority.HIGH),
                "trace": "trace-1",
            },
        )
        # Many at once, on the one channel.
        results = yield Deferred.fromCoroutine(self.many(client, 50))
        self.assertEqual([r["got"]["n"] for r in results], list(range(50)))
        self.assertEqual(len(client._peers), 1)

    async def many(self, client: DirectBus, count: int) -> list:
        from twisted.internet.defer import gatherResults

        return await gatherResults([client.call(SERVER_ID, "echo", {"n": n}) for n in range(count)])

    @inlineCallbacks
    def test_errors(self):  # type: ignore[no-untyped-def]
        """
        A handler's typed error reaches the caller as the same type, and an
        unknown method is said to be one.
        """

        def missing(payload: dict, context: object) -> dict:
            raise NotFound("no such post", {"id": payload["id"]})

        yield self.serving({"get": missing})
        client = self.bus(self.clientIdentity)
        error = yield self.assertFailure(client.call(SERVER_ID, "get", {"id": "p1"}), NotFound)
        self.assertEqual(error.details, {"id": "p1"})
        yield self.assertFailure(client.call(SERVER_ID, "nonesuch", {}), UnknownMethod)

    @inlineCallbacks
    def test_deadline(self):  # type: ignore[no-untyped-def]
        """
        A call not answered by its deadline fails with DeadlineExceeded.
        """
        yield self.serving({"slow": lambda payload, context: self.hang()})
        client = self.bus(self.clientIdentity)
        yield self.assertFailure(client.call(SERVER_ID, "slow", {}, timeout=0.3), DeadlineExceeded)

    @inlineCallbacks
    def test_overloaded(self):  # type: ignore[no-untyped-def]
        """
        Past its limit of waiting calls, a replica refuses new ones at once
        with Unavailable instead of queueing without bound; the calls it
        holds are served once it can.
        """
        hanging: list[Deferred] = []

        def slow(payload: dict, context: object) -> Deferred:
            d: Deferred = Deferred()
            hanging.append(d)
            return d

        server = self.bus(self.serverIdentity, maxWaiting=2)
        yield server.serve(SERVER_ID, {"slow": slow}, prefetch=1)
        client = self.bus(self.clientIdentity)
        calls = [client.call(SERVER_ID, "slow", {"n": 0})]
        while not hanging:
            yield sleep(0.01)
        calls += [client.call(SERVER_ID, "slow", {"n": n}) for n in range(1, 5)]
        # One in the handler, two waiting; the last two refused.
        for call in calls[3:]:
            error = yield self.assertFailure(call, Unavailable)
            self.assertIn("overloaded: 2 calls waiting", str(error))
        while sum(d.called for d in hanging) < 3:
            yield sleep(0.01)
            for d in hanging:
                if not d.called:
                    d.callback({"done": True})
        results = yield Deferred.fromCoroutine(self.gather(calls[:3]))
        self.assertEqual(results, [{"done": True}] * 3)

    async def gather(self, calls: list) -> list:
        from twisted.internet.defer import gatherResults

        return await gatherResults(calls)

    @inlineCallbacks
    def test_unreachable(self):  # type: ignore[no-untyped-def]
        """
        A service nobody serves fails fast with Unavailable, naming where it
        was looked for.
        """
        client = self.bus(self.clientIdentity)
        error = yield self.assertFailure(client.call(SERVER_ID, "echo", {}), Unavailable)
        self.assertIn(f"127.1.0.2:{self.port}", str(error))

    @inlineCallbacks
    def test_untrustedCaller(self):  # type: ignore[no-untyped-def]
        """
        A caller whose key the service does not trust never gets a call in:
        its channel is refused, and it learns the service is unavailable.
        """
        called: list[object] = []
        serverTrust = TrustStore([Peer(SERVER_ID, self.serverIdentity.public)])
        yield self.serving({"echo": lambda p, c: called.append(p)}, trust=serverTrust)
        client = self.bus(self.clientIdentity)
        yield self.assertFailure(client.call(SERVER_ID, "echo", {}), Unavailable)
        self.assertEqual(called, [])

    @inlineCallbacks
    def test_callerBound(self):  # type: ignore[no-untyped-def]
        """
        A payload sealed in another caller's name than the one the channel
        authenticated is refused as malformed, and the handler never runs.
        """
        called: list[object] = []
        yield self.serving({"echo": lambda p, c: called.append(p)})
        client = self.bus(self.clientIdentity)
        client.caller = ServiceId.fromHex("010001")  # lies in its payloads
        yield self.assertFailure(client.call(SERVER_ID, "echo", {}), MalformedMessage)
        self.assertEqual(called, [])

    @inlineCallbacks
    def test_onlyItsOwnService(self):  # type: ignore[no-untyped-def]
        """
        A process serves the service its identity speaks for, no other.
        """
        bus = self.bus(self.clientIdentity)
        yield self.assertFailure(bus.serve(SERVER_ID, {}), ValueError)

    @inlineCallbacks
    def test_replicas(self):  # type: ignore[no-untyped-def]
        """
        With a static table listing two replicas, calls go to each in turn.
        """
        ports = [freePort("127.1.0.2"), freePort("127.1.0.2")]
        table = AddressBook(
            "127.0.0.0/8", self.port, {SERVER_ID: [("127.1.0.2", p) for p in ports]}
        )
        for name, port in zip(["a", "b"], ports, strict=True):
            replica = self.bus(
                self.serverIdentity, addresses=table, listen=f"tcp:{port}:interface=127.1.0.2"
            )
            yield replica.serve(SERVER_ID, {"who": lambda p, c, name=name: name})
        client = self.bus(self.clientIdentity, addresses=table)
        answers = []
        for _ in range(6):
            answers.append((yield client.call(SERVER_ID, "who", {})))
        self.assertEqual(sorted(answers), ["a", "a", "a", "b", "b", "b"])

    @inlineCallbacks
    def test_malformedFrame(self):  # type: ignore[no-untyped-def]
        """
        A frame that cannot be read is dead-lettered, and the service keeps
        serving, on the same channel.
        """
        server = yield self.serving({"echo": lambda p, c: p})
        client = self.bus(self.clientIdentity)
        yield client.call(SERVER_ID, "echo", {})
        [peer] = client._peers.values()
        protocol = yield peer.whenConnected()
        protocol.sendString(b"\x07garbage")
        protocol.sendString(b"\x01short")
        result = yield client.call(SERVER_ID, "echo", {"still": "here"})
        self.assertEqual(result, {"still": "here"})
        self.assertEqual(
            [m.reason for m in server.malformed],
            ["a frame of unknown kind 7", "a call frame shorter than its header"],
        )
        self.assertEqual(server.malformed[0].peer, "010100")

    @inlineCallbacks
    def test_resentAfterBreak(self):  # type: ignore[no-untyped-def]
        """
        A call whose channel breaks before the answer is sent again, on a
        new channel, with the same message id: an idempotent one as it
        was; any other marked as sent again, which the service takes as a
        call that may have run before (C{CallContext.redelivered}).
        """
        seen: list[tuple[str, bool]] = []

        def breakFirst(payload: dict, context: object) -> object:
            seen.append((context.messageId, context.redelivered))  # type: ignore[attr-defined]
            if len(seen) % 2:
                self.breakChannels(server)
                return self.hang()
            return {"ok": True}

        server = yield self.serving({"op": breakFirst, "ping": lambda p, c: {}})
        client = self.bus(self.clientIdentity)
        for idempotent in (False, True):
            # A channel the service has answered on.
            yield client.call(SERVER_ID, "ping", {})
            result = yield client.call(SERVER_ID, "op", {}, idempotent=idempotent)
            self.assertEqual(result, {"ok": True})
        [(first, no), (again, resent), (third, no2), (again2, notMarked)] = seen
        self.assertEqual((again, again2), (first, third))
        self.assertNotEqual(first, third)
        self.assertEqual((no, resent, no2, notMarked), (False, True, False, False))

    @inlineCallbacks
    def test_resentOnce(self):  # type: ignore[no-untyped-def]
        """
        A call is sent again once, and only after a break of a channel the
        service had answered on (one closed before the peer said a word
        may be the peer refusing this process's identity): otherwise it
        fails with Unavailable.
        """
        seen: list[bool] = []

        def breakAlways(payload: dict, context: object) -> object:
            seen.append(context.redelivered)  # type: ignore[attr-defined]
            self.breakChannels(server)
            return self.hang()

        server = yield self.serving({"op": breakAlways, "ping": lambda p, c: {}})
        client = self.bus(self.clientIdentity)
        error = yield self.assertFailure(client.call(SERVER_ID, "op", {}), Unavailable)
        self.assertIn("broke before its answer to op", error.message)
        self.assertEqual(seen, [False])
        yield client.call(SERVER_ID, "ping", {})
        yield self.assertFailure(client.call(SERVER_ID, "op", {}, idempotent=True), Unavailable)
        self.assertEqual(seen, [False, False, False])

    def breakChannels(self, server: DirectBus) -> None:
        for connection in self.serverConnections(server):
            connection.transport.abortConnection()

    def serverConnections(self, server: DirectBus) -> list:
        return list(server.connections)

    def hang(self) -> Deferred:
        """
        A handler's answer that never comes, until the test ends (so that
        no timer outlives it).
        """
        d: Deferred = Deferred()
        self.addCleanup(lambda: d.called or d.callback({}))
        return d
