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
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from .codec import dumps, loads
from .context import CallContext
from .database import Migration
from .interfaces import IDatabase, IFieldCodec, ITransaction

__all__ = ["ReplyLog", "Recorder"]

Recorder = Callable[[ITransaction, Any], None]


class ReplyLog:
    """
    The reply log of one service (table C{<service>_replies}).

    @param retention: Seconds a reply is kept: longer than a call can wait
        for redelivery.
    """

    def __init__(
        self,
        database: IDatabase,
        fields: IFieldCodec,
        component: str,
        clock: IReactorTime,
        retention: float = 3600.0,
    ) -> None:
        self._database = database
        self._fields = fields
        self.table = f"{component}_replies"
        self._clock = clock
        self.retention = retention

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
        call's message id.  None without a call to record.
        """
        if context is None or not context.messageId:
            return None
        messageId = context.messageId

        def record(transaction: ITransaction, produced: Any) -> None:
            reply = render(produced)
            sealed = self._fields.seal(self.table, "reply", messageId, dumps(reply).decode("utf-8"))
            transaction.execute(
                f"INSERT INTO {self.table} (message_id, reply, created_at) VALUES (?, ?, ?)"
                " ON CONFLICT DO NOTHING",
                (messageId, sealed, int(self._clock.seconds() * 1000)),
            )

        return record

    def lookup(self, messageId: str) -> Deferred[tuple[bool, Any]]:
        """
        C{(True, reply)} if a reply to C{messageId} is on record, else
        C{(False, None)}.
        """

        def found(rows: list[Any]) -> tuple[bool, Any]:
            if not rows:
                return False, None
            text = self._fields.open(self.table, "reply", messageId, bytes(rows[0][0]))
            return True, loads(text)

        d = self._database.runQuery(
            f"SELECT reply FROM {self.table} WHERE message_id = ?", (messageId,)
        )
        return d.addCallback(found)

    def sweep(self) -> Deferred[int]:
        """
        Forget replies older than the retention.
        """
        horizon = int((self._clock.seconds() - self.retention) * 1000)
        return self._database.runInteraction(
            lambda t: (
                t.execute(f"DELETE FROM {self.table} WHERE created_at < ?", (horizon,)).rowcount
            )
        )
