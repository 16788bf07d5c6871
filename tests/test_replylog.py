"""
Tests for L{txplatform.replylog}.
"""

from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from txplatform.context import CallContext
from txplatform.fields import PlainFieldCodec
from txplatform.replylog import ReplyLog
from txplatform.serviceid import ServiceId

from .services.harness import ShiftedClock
from .support import PostgresMixin, SQLiteMixin


def context(messageId: str) -> CallContext:
    return CallContext(messageId, ServiceId.fromHex("0000a4"), "m", None, messageId, 0.0, 5)


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
        self.assertEqual((yield self.log.lookup("m-1")), (True, {"n": 7}))

        def abort(t: Any) -> None:
            self.log.recorder(context("m-2"))(t, {"x": 1})
            raise RuntimeError("rolled back")

        yield self.assertFailure(self.database.runInteraction(abort), RuntimeError)
        self.assertEqual((yield self.log.lookup("m-2")), (False, None))

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
        self.assertEqual((yield self.log.lookup("old")), (False, None))
        self.assertEqual((yield self.log.lookup("new")), (True, 2))


class SQLiteReplyLogTests(SQLiteMixin, ReplyLogTestsMixin, TestCase):
    pass


class PostgresReplyLogTests(PostgresMixin, ReplyLogTestsMixin, TestCase):
    pass
