# -*- test-case-name: tests.test_replylog -*-
"""
Replies to calls that must not run twice.

A broker redelivers a call whose replica died before acknowledging it.
For a read that is harmless; for a write that created something, doing it
again would create it twice (or answer "already taken" to the caller whose
write succeeded).  So a service records the reply of each such call in the
same transaction as the change it made, keyed by the call's message id, and
a redelivered call whose reply is on record gets that reply again instead of
running again.

A call that carries an idempotency key (L{txplatform.context.Origin}: the
gateway makes one from a client's C{Idempotency-Key} header) is recorded
under that key instead, with a digest of its payload: the same key with the
same payload gets the first reply for a day; with another payload it is
refused (L{IdempotencyKeyReused}), since its reply belongs to another
request.  The digest is sealed with the reply: a digest of a payload holding
a password must not be there to guess at.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from typing import Any, Callable

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater

from .codec import dumps, loads
from .context import CallContext
from .database import Migration
from .errors import IdempotencyKeyReused
from .interfaces import IDatabase, IFieldCodec, ITransaction

__all__ = ["ReplyLog", "Recorder", "requestDigest", "DAY"]

Recorder = Callable[[ITransaction, Any], None]

DAY = 24 * 3600.0

# Marks a recorded reply that comes with its request's digest (what older
# versions stored was the reply alone).
_ENVELOPE = "txplatform.reply/2"


def requestDigest(payload: Any) -> str:
    """
    A digest of a call's payload, the same for the same content whatever
    the order of its keys.
    """
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class ReplyLog:
    """
    The reply log of one service (table C{<service>_replies}).

    @param retention: Seconds a reply is kept: longer than a call can wait
        for redelivery, and as long as a client may retry a request with
        its idempotency key (a day).
    """

    def __init__(
        self,
        database: IDatabase,
        fields: IFieldCodec,
        component: str,
        clock: IReactorTime,
        retention: float = DAY,
    ) -> None:
        self._database = database
        self._fields = fields
        self.table = f"{component}_replies"
        self._clock = clock
        self.retention = retention
        # The reply keys of the calls being handled (L{handling}), and of
        # those whose reply was asked to be recorded, or found on record,
        # with how many handlings of each (a call sent again may be handled
        # while its first copy still is): see L{accounted}.  Only a call
        # being handled is counted: a recorder asked for elsewhere (a
        # method called directly, by the service's own code or a test) would
        # never be asked about, and its count never let go.
        self._handling: Counter[str] = Counter()
        self._accounted: Counter[str] = Counter()

    def migrations(self) -> list[Migration]:
        return [
            Migration(
                1,
                "replies of calls that must not run twice",
                (
                    f"""CREATE TABLE {self.table} (
                        message_id TEXT PRIMARY KEY,
                        reply {{bytes}} NOT NULL,
                        created_at {{bigint}} NOT NULL
                    )""",
                    f"CREATE INDEX {self.table}_by_age ON {self.table} (created_at)",
                ),
            )
        ]

    def recorder(
        self, context: CallContext | None, render: Callable[[Any], Any] = lambda reply: reply
    ) -> Recorder | None:
        """
        What a store calls inside its transaction with what it produced:
        C{render} turns that into the reply, which is recorded under the
        call's reply key (L{CallContext.replyKey}).  None without a call to
        record.

        If a reply is on record under that key already (the same call ran
        twice at once: a retry while the first try was still running), the
        transaction fails on it, so that what the second run did is rolled
        back; the service then answers the reply on record.

        @raise TypeError: C{context} is not a call's (an event handler's):
            replies are recorded for calls; an event handler takes an event
            delivered again by being idempotent itself.
        """
        if context is None:
            return None
        if not isinstance(context, CallContext):
            raise TypeError(
                f"the reply log records replies to calls, not {type(context).__name__}s: an"
                " event handler must take an event delivered again (EventContext.attempt > 1)"
                " by being idempotent itself, such as with INSERT ... ON CONFLICT DO NOTHING"
            )
        if not context.messageId:
            return None
        if self._handling[context.replyKey]:
            self._accounted[context.replyKey] += 1

        def record(transaction: ITransaction, produced: Any) -> None:
            self._insert(transaction, context, render(produced), "")

        return record

    def remember(self, context: CallContext, reply: Any) -> Deferred[None]:
        """
        Record C{reply} after the fact, in a transaction of its own, unless
        the handler recorded it already in its own: for calls whose effect
        is harmless to repeat but whose answer a retry with the same
        idempotency key must get again.
        """
        return self._database.runInteraction(
            self._insert, context, reply, " ON CONFLICT DO NOTHING"
        )

    def _insert(self, t: ITransaction, context: CallContext, reply: Any, conflict: str) -> None:
        key = context.replyKey
        text = dumps({"v": _ENVELOPE, "reply": reply, "digest": context.requestDigest})
        sealed = self._fields.seal(self.table, "reply", key, text.decode("utf-8"))
        t.send(
            f"INSERT INTO {self.table} (message_id, reply, created_at) VALUES (?, ?, ?){conflict}",
            (key, sealed, int(self._clock.seconds() * 1000)),
        )

    def lookup(self, context: CallContext) -> Deferred[tuple[bool, Any]]:
        """
        C{(True, reply)} if a reply to C{context}'s call is on record, else
        C{(False, None)}.

        @raise IdempotencyKeyReused: (In the Deferred.) The reply on record
            answered another request: the key was used again with another
            payload.
        """
        key = context.replyKey

        def found(rows: list[Any]) -> tuple[bool, Any]:
            if not rows:
                return False, None
            if self._handling[key] and not self._accounted[key]:
                # (A run that asked for a recorder and failed on the reply
                # another run recorded is counted already.)
                self._accounted[key] = 1
            recorded = loads(self._fields.open(self.table, "reply", key, bytes(rows[0][0])))
            if not (isinstance(recorded, dict) and recorded.get("v") == _ENVELOPE):
                return True, recorded  # recorded by an older version: the reply alone
            digest = recorded.get("digest")
            if digest and context.requestDigest and digest != context.requestDigest:
                raise IdempotencyKeyReused(
                    "this Idempotency-Key was used for a request with another body: use a new"
                    " key for a new request",
                    {"method": context.method},
                )
            return True, recorded["reply"]

        d = self._database.runQuery(f"SELECT reply FROM {self.table} WHERE message_id = ?", (key,))
        return d.addCallback(found)

    def handling(self, context: CallContext) -> None:
        """
        The call of C{context} is about to be handled: until L{accounted}
        is asked about it, count what its handling asks of this log.
        """
        if context.messageId:
            self._handling[context.replyKey] += 1

    def accounted(self, context: CallContext) -> bool:
        """
        Whether the call of C{context}, just handled (see L{handling}),
        asked for a L{recorder} or was answered from the record; asked once
        per handling.
        """
        key = context.replyKey
        if _release(self._handling, key) > 1:
            return _release(self._accounted, key) > 0
        # Its last handling: whatever it asked for is done with, however
        # many recorders it asked for (a method calling another, both
        # asking).
        return self._accounted.pop(key, 0) > 0

    #: The most replies one transaction of a sweep forgets: a day of a busy
    #: service's calls is many, and on SQLite the reactor runs the
    #: transactions.
    sweepPortion = 1000

    @inlineCallbacks
    def sweep(self) -> Any:
        """
        Forget replies older than the retention, L{sweepPortion} at a time,
        with a turn of the reactor between portions.

        @return: A Deferred of how many were forgotten.
        """
        horizon = int((self._clock.seconds() - self.retention) * 1000)
        swept = 0
        while True:
            forgotten = yield self._database.runInteraction(self._forget, horizon)
            swept += forgotten
            if forgotten < self.sweepPortion:
                return swept
            yield deferLater(self._clock, 0, lambda: None)

    def _forget(self, t: ITransaction, horizon: int) -> int:
        return t.execute(
            f"DELETE FROM {self.table} WHERE message_id IN"
            f" (SELECT message_id FROM {self.table} WHERE created_at < ? LIMIT ?)",
            (horizon, self.sweepPortion),
        ).rowcount


def _release(counts: Counter[str], key: str) -> int:
    """
    Take one off C{key}'s count, forgetting it at none; the count before.
    """
    count = counts.pop(key, 0)
    if count > 1:
        counts[key] = count - 1
    return count
