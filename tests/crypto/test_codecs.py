"""
Tests for L{txplatform.crypto.codecs}: sealed fields and bus payloads.
"""

from __future__ import annotations

import hmac
import os
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from txplatform.amqp import frames
from txplatform.amqp.bus import EVENTS_EXCHANGE
from txplatform.codec import callBinding, eventBinding
from txplatform.crypto.keyfile import newKeyFile, writeKeyFile
from txplatform.crypto.keyring import Keyring, MasterKey
from txplatform.crypto.keys import Keys
from txplatform.crypto.sealing import Header, Sealer
from txplatform.errors import MalformedMessage
from txplatform.fields import CorruptField
from txplatform.localbus import LocalBus
from txplatform.serviceid import ServiceId

from ..amqp.harness import BrokerTestCase
from ..support import eventually

SERVICE = ServiceId.fromHex("0a0b0c")
CALLER = ServiceId.fromHex("010203")


def keys(test: SynchronousTestCase, name: str = "bus", clock: Any = None) -> Keys:
    directory = test.mktemp()
    os.makedirs(directory)
    path = os.path.join(directory, f"{name}.json")
    writeKeyFile(path, newKeyFile(name))
    return Keys(path, clock or Clock(), name)


class FieldCodecTests(SynchronousTestCase):
    def test_roundTrip(self) -> None:
        codec = keys(self, "account").fieldCodec()
        sealed = codec.seal("accounts", "email", "row1", "ada@example.com")
        self.assertNotIn(b"ada", sealed)
        self.assertEqual(codec.open("accounts", "email", "row1", sealed), "ada@example.com")

    def test_wrongPlace(self) -> None:
        """
        A value read as another row's, or another column's, is refused with
        an error naming where.
        """
        codec = keys(self, "account").fieldCodec()
        sealed = codec.seal("accounts", "email", "row1", "ada@example.com")
        error = self.assertRaises(CorruptField, codec.open, "accounts", "email", "row2", sealed)
        self.assertIn("accounts.email of row row2 cannot be read", error.message)
        self.assertRaises(CorruptField, codec.open, "accounts", "username", "row1", sealed)

    def test_truncated(self) -> None:
        codec = keys(self, "account").fieldCodec()
        sealed = codec.seal("posts", "body", "p", "hello")
        error = self.assertRaises(CorruptField, codec.open, "posts", "body", "p", sealed[:-1])
        self.assertIn("posts.body of row p", error.message)

    def test_blindIndex(self) -> None:
        """
        The index is keyed (not a bare hash), differs per column, and covers
        every readable version.
        """
        clock = Clock()
        ring = Keyring("account", [MasterKey(1, b"a" * 32), MasterKey(2, b"b" * 32, 10.0)], clock)
        from txplatform.crypto.codecs import SealedFieldCodec

        codec = SealedFieldCodec(Sealer(ring))
        index = codec.index("accounts", "email", "ada@example.com")
        # HMAC-SHA256 under the column's key: what indexes already stored hold.
        key = ring.indexKey(ring.currentVersion(), "accounts", "email")
        self.assertEqual(index, hmac.digest(key, b"ada@example.com", "sha256"))
        self.assertEqual(
            codec.index("accounts", "email", "bob@example.com"),
            hmac.digest(key, b"bob@example.com", "sha256"),
        )
        self.assertEqual(index, codec.index("accounts", "email", "ada@example.com"))
        self.assertNotEqual(index, codec.index("accounts", "username", "ada@example.com"))
        self.assertEqual(len(index), 32)
        self.assertEqual(codec.indexes("accounts", "email", "ada@example.com")[-1], index)
        self.assertEqual(len(codec.indexes("accounts", "email", "ada@example.com")), 2)
        clock.advance(10)
        self.assertNotEqual(codec.index("accounts", "email", "ada@example.com"), index)
        other = SealedFieldCodec(Sealer(Keyring("account", [MasterKey(1, b"c" * 32)], clock)))
        self.assertNotEqual(other.index("accounts", "email", "ada@example.com"), index)

    def test_reloadOnUnknownVersion(self) -> None:
        """
        A value under a version this replica does not hold yet (another
        replica read the rotated key file first) makes it read the file
        again, and then it reads the value.
        """
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, "post.json")
        keyFile = newKeyFile("post")
        writeKeyFile(path, keyFile)
        behind = Keys(path, Clock(), "post")
        writeKeyFile(path, keyFile.rotated(0))
        ahead = Keys(path, Clock(), "post")
        sealed = ahead.fieldCodec().seal("posts", "body", "p1", "new")
        self.assertEqual(Header.parse(sealed).version, 2)
        self.assertEqual(behind.fieldCodec().open("posts", "body", "p1", sealed), "new")


class PayloadCodecTests(SynchronousTestCase):
    def test_movedPayload(self) -> None:
        """
        A payload sealed for one message does not open as another's: other
        method, message id, caller, trace, deadline or idempotency key (one
        added, removed or changed).
        """
        codec = keys(self).payloadCodec()
        binding = callBinding(SERVICE, "get", "m1", CALLER, "t1", 1000)
        data = codec.encode({"secret": 1}, binding)
        self.assertEqual(codec.decode(data, binding), {"secret": 1})
        for other in [
            callBinding(SERVICE, "delete", "m1", CALLER, "t1", 1000),
            callBinding(SERVICE, "get", "m2", CALLER, "t1", 1000),
            callBinding(SERVICE, "get", "m1", None, "t1", 1000),
            callBinding(SERVICE, "get", "m1", CALLER, "t2", 1000),
            callBinding(SERVICE, "get", "m1", CALLER, "t1", 999999),
            callBinding(SERVICE, "get", "m1", CALLER, "t1", 1000, "key"),
            eventBinding("get", "m1"),
        ]:
            error = self.assertRaises(MalformedMessage, codec.decode, data, other)
            self.assertIn("payload refused", error.message)
        keyed = callBinding(SERVICE, "get", "m1", CALLER, "t1", 1000, "key")
        data = codec.encode({"secret": 1}, keyed)
        for other in [binding, callBinding(SERVICE, "get", "m1", CALLER, "t1", 1000, "kex")]:
            self.assertRaises(MalformedMessage, codec.decode, data, other)

    def test_tooOld(self) -> None:
        """
        With a maximum age (the bus's), a message from long ago is refused,
        saying so.
        """
        clock = Clock()
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, "bus.json")
        writeKeyFile(path, newKeyFile("bus", period=10, maxAge=60))
        codec = Keys(path, clock, "bus").payloadCodec()
        data = codec.encode([1], b"b")
        clock.advance(1000)
        error = self.assertRaises(MalformedMessage, codec.decode, data, b"b")
        self.assertIn("too old", error.message)

    def test_otherCluster(self) -> None:
        data = keys(self).payloadCodec().encode([1], b"b")
        self.assertRaises(MalformedMessage, keys(self).payloadCodec().decode, data, b"b")


class LocalBusTests(TestCase):
    @inlineCallbacks
    def test_sealedOnTheBus(self) -> Any:
        """
        On the in-process bus every payload is held sealed; calls and events
        work as before.
        """
        codec = keys(self, clock=reactor).payloadCodec()
        held = []
        real = codec.encode

        def spy(payload: Any, binding: bytes) -> bytes:
            data = real(payload, binding)
            held.append(bytes(data))
            return data

        codec.encode = spy  # type: ignore[method-assign]
        bus = LocalBus(reactor, codec=codec)
        bus.startService()
        self.addCleanup(bus.stopService)
        yield bus.serve(SERVICE, {"echo": lambda p, c: {"back": p["word"]}})
        got = []
        yield bus.subscribe("thing.happened", lambda p, c: got.append(p), "g")
        result = yield bus.call(SERVICE, "echo", {"word": "xyzzy-secret"})
        self.assertEqual(result, {"back": "xyzzy-secret"})
        yield bus.publish("thing.happened", {"word": "plugh-secret"})
        yield eventually(lambda: got == [{"word": "plugh-secret"}])
        self.assertEqual(len(held), 3)
        for data in held:
            self.assertNotIn(b"secret", data)


class AMQPTests(BrokerTestCase):
    @inlineCallbacks
    def test_movedPayloadDeadLettered(self) -> Any:
        """
        An event whose sealed payload was made for another message (replayed
        under a new id by someone with access to the broker) is refused,
        dead-lettered with the reason, and the subscriber goes on.
        """
        codec = keys(self, clock=reactor).payloadCodec()
        event = self.newEvent()
        group = self.newGroup(event)
        bus = yield self.makeBus(codec=codec)
        got = []
        yield bus.subscribe(event, lambda p, c: got.append(p), group)
        stolen = codec.encode({"n": 1}, eventBinding(event, "original-id"))
        bus._protocol.publish(
            1,
            EVENTS_EXCHANGE,
            event,
            frames.Properties(message_id="replayed-id", delivery_mode=2, headers={}),
            bytes(stolen),
        )
        yield bus.publish(event, {"n": 2})
        yield eventually(lambda: got == [{"n": 2}])
        [dead] = yield eventually(lambda: self.deadLetters(bus, group))
        self.assertEqual(dead.properties.message_id, "replayed-id")
        self.assertIn("payload refused", dead.properties.headers["x-error"])
        self.assertNotIn(b'"n"', dead.body)
