"""
Tests for L{txplatform.replylog}.
"""

from typing import Any

import attrs
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from txplatform.context import CallContext, EventContext
from txplatform.crypto.codecs import SealedFieldCodec
from txplatform.crypto.keyring import Keyring, MasterKey
from txplatform.crypto.sealing import Sealer
from txplatform.database import UniqueViolation
from txplatform.errors import IdempotencyKeyReused
from txplatform.fields import PlainFieldCodec
from txplatform.replylog import DAY, ReplyLog, requestDigest
from txplatform.serviceid import ServiceId

from .services.harness import ShiftedClock
from .support import PostgresMixin, SQLiteMixin

CALLER = ServiceId.fromHex("0000c1")


def context(
    messageId: str, key: str | None = None, digest: str | None = None, method: str = "m"
) -> CallContext:
    return CallContext(
        messageId,
        ServiceId.fromHex("0000a4"),
        method,
        CALLER,
        "trace",
        0.0,
        5,
        idempotencyKey=key,
        requestDigest=digest,
    )


class ReplyLogTestsMixin:
    @inlineCallbacks
    def setUp(self) -> Any:
        self.clock = ShiftedClock()
        self.database = self.makeDatabase()
        self.log = ReplyLog(self.database, PlainFieldCodec(), "things", self.clock, retention=60)
        yield self.database.migrate(self.log.table, self.log.migrations())

    @inlineCallbacks
    def test_recordedInTheTransaction(self) -> Any:
        """
        A reply recorded in a committed transaction is found by its message
        id; one recorded in a transaction that rolled back is not.
        """
        record = self.log.recorder(context("m-1"), lambda n: {"n": n})
        yield self.database.runInteraction(lambda t: record(t, 7))
        self.assertEqual((yield self.log.lookup(context("m-1"))), (True, {"n": 7}))

        def abort(t: Any) -> None:
            self.log.recorder(context("m-2"))(t, {"x": 1})
            raise RuntimeError("rolled back")

        yield self.assertFailure(self.database.runInteraction(abort), RuntimeError)
        self.assertEqual((yield self.log.lookup(context("m-2"))), (False, None))

    @inlineCallbacks
    def test_accounted(self) -> Any:
        """
        A call is accounted for once per handling that asked for a
        recorder (two at once: a call sent again while its first copy is
        handled), or that found its reply on record; then no more.
        """
        call = context("m-1")
        self.log.handling(call)
        self.assertFalse(self.log.accounted(call))
        self.log.handling(call)
        self.log.handling(call)
        record = self.log.recorder(call, lambda n: {"n": n})
        self.log.recorder(call)
        self.assertEqual([self.log.accounted(call) for _ in range(3)], [True, True, False])
        yield self.database.runInteraction(lambda t: record(t, 1))
        self.log.handling(call)
        yield self.log.lookup(call)
        self.assertEqual([self.log.accounted(call) for _ in range(2)], [True, False])

    @inlineCallbacks
    def test_notHandled(self) -> Any:
        """
        A recorder asked for outside a call's handling (its method called
        directly) records, but is not counted: no one would ask about it,
        and its count would stay for good.  Nor is a lookup outside a
        handling.
        """
        call = context("m-1")
        record = self.log.recorder(call, lambda n: {"n": n})
        yield self.database.runInteraction(lambda t: record(t, 1))
        self.assertEqual((yield self.log.lookup(call)), (True, {"n": 1}))
        self.assertEqual((self.log._handling, self.log._accounted), ({}, {}))
        self.log.handling(call)
        self.assertFalse(self.log.accounted(call))
        self.assertEqual((self.log._handling, self.log._accounted), ({}, {}))

    def test_notForEvents(self) -> None:
        """
        An event handler asking for a recorder is told, in words, that the
        log records replies to calls.
        """
        event = EventContext("e-1", "notebook.noted", None, "trace", 0.0, attempt=2)
        error = self.assertRaises(TypeError, self.log.recorder, event)
        self.assertIn("records replies to calls, not EventContexts", str(error))

    def test_askedTwiceInOneHandling(self) -> None:
        """
        A handling that asked for two recorders (a method calling another,
        both asking) is accounted for, and nothing is kept after it.
        """
        call = context("m-1")
        self.log.handling(call)
        self.log.recorder(call)
        self.log.recorder(call)
        self.assertTrue(self.log.accounted(call))
        self.assertEqual((self.log._handling, self.log._accounted), ({}, {}))

    @inlineCallbacks
    def test_recordedTwice(self) -> Any:
        """
        Recording a second reply under the same key fails its transaction
        (what it did is rolled back; the first reply stands); remembering
        one after the fact leaves the first in place.
        """
        first = context("m-1", "k", "d1")
        yield self.database.runInteraction(lambda t: self.log.recorder(first)(t, 1))
        again = context("m-2", "k", "d1")
        yield self.assertFailure(
            self.database.runInteraction(lambda t: self.log.recorder(again)(t, 2)),
            UniqueViolation,
        )
        yield self.log.remember(again, 3)
        self.assertEqual((yield self.log.lookup(again)), (True, 1))

    @inlineCallbacks
    def test_idempotencyKey(self) -> Any:
        """
        A call with an idempotency key is recorded under the key, for its
        caller and method (not its message id): another call with that key
        and the same payload finds it, one with another payload is refused,
        and another method's call with the key finds nothing.
        """
        digest = requestDigest({"body": "hello", "n": 1})
        yield self.log.remember(context("m-1", "k", digest), {"id": "p1"})
        self.assertEqual((yield self.log.lookup(context("m-1"))), (False, None))
        sameBody = context("m-2", "k", requestDigest({"n": 1, "body": "hello"}))
        self.assertEqual((yield self.log.lookup(sameBody)), (True, {"id": "p1"}))
        otherBody = context("m-3", "k", requestDigest({"body": "bye", "n": 1}))
        yield self.assertFailure(self.log.lookup(otherBody), IdempotencyKeyReused)
        otherMethod = context("m-4", "k", digest, method="other")
        self.assertEqual((yield self.log.lookup(otherMethod)), (False, None))
        otherCaller = attrs.evolve(sameBody, caller=ServiceId.fromHex("0000c2"))
        self.assertEqual((yield self.log.lookup(otherCaller)), (False, None))

    @inlineCallbacks
    def test_keptADay(self) -> Any:
        """
        By default a reply is kept a day: a client may retry that long.
        """
        log = ReplyLog(self.database, PlainFieldCodec(), "things", self.clock)
        yield log.remember(context("m-1", "k"), 1)
        self.clock.offset = DAY - 60
        self.assertEqual((yield log.sweep()), 0)
        self.clock.offset = DAY + 1
        self.assertEqual((yield log.sweep()), 1)

    @inlineCallbacks
    def test_digestSealed(self) -> Any:
        """
        The digest of the request is stored sealed with the reply, not in
        a column of its own: a digest of a body holding a password is not
        left to guess at.
        """
        ring = Keyring("things", [MasterKey(1, b"a" * 32)], self.clock)
        log = ReplyLog(self.database, SealedFieldCodec(Sealer(ring)), "things", self.clock)
        digest = requestDigest({"password": "hunter22"})
        yield log.remember(context("m-1", "k", digest), {"token": "t0ken"})
        rows = yield self.database.runQuery(f"SELECT * FROM {log.table}")
        stored = b"".join(
            bytes(v) if not isinstance(v, (str, int)) else str(v).encode() for v in rows[0]
        )
        self.assertNotIn(digest.encode(), stored)
        self.assertNotIn(b"t0ken", stored)
        other = context("m-2", "k", requestDigest({"password": "hunter23"}))
        yield self.assertFailure(log.lookup(other), IdempotencyKeyReused)

    def test_noCall(self) -> None:
        """
        Without a call there is nothing to record.
        """
        self.assertIsNone(self.log.recorder(None))

    @inlineCallbacks
    def test_sweep(self) -> Any:
        """
        Replies older than the retention go.
        """
        yield self.database.runInteraction(lambda t: self.log.recorder(context("old"))(t, 1))
        self.clock.offset = 61
        yield self.database.runInteraction(lambda t: self.log.recorder(context("new"))(t, 2))
        self.assertEqual((yield self.log.sweep()), 1)
        self.assertEqual((yield self.log.lookup(context("old"))), (False, None))
        self.assertEqual((yield self.log.lookup(context("new"))), (True, 2))

    @inlineCallbacks
    def test_sweepInPortions(self) -> Any:
        """
        A sweep forgets L{ReplyLog.sweepPortion} replies a transaction, as
        many transactions as it takes, and keeps the newer ones.
        """
        self.log.sweepPortion = 2
        for n in range(5):
            yield self.database.runInteraction(
                lambda t, n=n: self.log.recorder(context(f"old{n}"))(t, n)
            )
        self.clock.offset = 61
        yield self.database.runInteraction(lambda t: self.log.recorder(context("new"))(t, 9))
        transactions: list[Any] = []
        run = self.database.runInteraction

        def counting(interaction: Any, *args: Any) -> Any:
            transactions.append(interaction)
            return run(interaction, *args)

        self.patch(self.database, "runInteraction", counting)
        self.assertEqual((yield self.log.sweep()), 5)
        self.assertEqual(len(transactions), 3)
        for n in range(5):
            self.assertEqual((yield self.log.lookup(context(f"old{n}"))), (False, None))
        self.assertEqual((yield self.log.lookup(context("new"))), (True, 9))


class SQLiteReplyLogTests(SQLiteMixin, ReplyLogTestsMixin, TestCase):
    pass


class PostgresReplyLogTests(PostgresMixin, ReplyLogTestsMixin, TestCase):
    pass
