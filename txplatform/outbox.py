# -*- test-case-name: tests.test_outbox -*-
"""
The transactional outbox: events are written in the same database
transaction as the change they announce, then published by a relay.

A service that committed a change therefore cannot lose its event, whether
the bus is down or the process dies between commit and publish: the relay
publishes what is left on its next pass (on start, after each write, and on
a timer), and deletes a row only once the bus has confirmed the event.
Events keep their message id across republishing, so consumers can tell a
redelivery from a new event.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import (
    Deferred,
    DeferredList,
    FirstError,
    inlineCallbacks,
    succeed,
)
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from .codec import dumps, loads
from .context import Origin, newMessageId
from .database import Migration
from .interfaces import IBus, IDatabase, IFieldCodec, ITransaction
from .serviceid import ServiceId

__all__ = ["Outbox"]


class Outbox:
    """
    The outbox of one service.

    @param component: The service name; the table is C{<component>_outbox}.
    @param source: The publishing service's id, stamped on every event.
    """

    log = Logger()

    def __init__(
        self,
        database: IDatabase,
        bus: IBus,
        fields: IFieldCodec,
        component: str,
        source: ServiceId,
        clock: IReactorTime,
        interval: float = 5.0,
        batchSize: int = 100,
    ) -> None:
        self._database = database
        self._bus = bus
        self._fields = fields
        self.component = component
        self.table = f"{component}_outbox"
        self._source = source
        self._clock = clock
        self._interval = interval
        self._batchSize = batchSize
        self._loop: LoopingCall | None = None
        self._running: Deferred[None] | None = None
        self._again = False
        self._waiters: list[Deferred[None]] = []

    def migrations(self) -> list[Migration]:
        return [
            Migration(
                1,
                "create the outbox",
                (
                    f"""CREATE TABLE {self.table} (
                        seq {{serial}},
                        message_id {{id}} NOT NULL UNIQUE,
                        event TEXT NOT NULL,
                        payload {{bytes}} NOT NULL,
                        correlation_id TEXT NOT NULL,
                        created_at {{bigint}} NOT NULL
                    )""",
                ),
            )
        ]

    def stage(
        self,
        transaction: ITransaction,
        event: str,
        payload: dict[str, Any],
        origin: Origin | None = None,
    ) -> str:
        """
        Record C{event} inside the caller's C{transaction}; it is published
        after the transaction commits (see L{flush}), never if it rolls back.

        @return: The event's message id.
        """
        messageId = newMessageId()
        correlationId = origin.correlationId if origin and origin.correlationId else messageId
        sealed = self._fields.seal(self.table, "payload", messageId, dumps(payload).decode("utf-8"))
        transaction.execute(
            f"INSERT INTO {self.table} (message_id, event, payload, correlation_id, created_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (messageId, event, sealed, correlationId, int(self._clock.seconds() * 1000)),
        )
        return messageId

    def start(self) -> None:
        """
        Publish what an earlier run left, then keep checking on a timer.
        """
        if self._loop is not None:
            return
        self._loop = LoopingCall(self.flush)
        self._loop.clock = self._clock
        self._loop.start(self._interval, now=True)

    def stop(self) -> Deferred[None]:
        """
        Stop the timer; fires when a pass under way has finished.
        """
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        if self._running is None:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._waiters.append(d)
        return d

    def flush(self) -> Deferred[None]:
        """
        Publish every staged event.  Concurrent calls share one pass (which
        runs again if asked during it).  Never fails: errors are logged and
        the rows stay for the next pass.
        """
        d: Deferred[None] = Deferred()
        self._waiters.append(d)
        if self._running is not None:
            self._again = True
        else:
            self._running = self._drain()
        return d

    @inlineCallbacks
    def _drain(self) -> Any:
        try:
            while True:
                self._again = False
                try:
                    yield self._publishAll()
                except Exception as e:
                    # The bus or the database is away: the rows wait for the
                    # next pass.
                    if isinstance(e, FirstError):
                        e = e.subFailure.value
                    self.log.warn(
                        "Outbox of {component} could not publish yet: {error}",
                        component=self.component,
                        error=f"{type(e).__name__}: {e}",
                    )
                    break
                if not self._again:
                    break
        finally:
            self._running = None
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                waiter.callback(None)

    @inlineCallbacks
    def _publishAll(self) -> Any:
        while True:
            rows = yield self._database.runQuery(
                f"SELECT seq, message_id, event, payload, correlation_id FROM {self.table}"
                " ORDER BY seq LIMIT ?",
                (self._batchSize,),
            )
            if not rows:
                return
            published = []
            confirmations = []
            for seq, messageId, event, sealed, correlationId in rows:
                try:
                    payload = loads(
                        self._fields.open(self.table, "payload", messageId, bytes(sealed))
                    )
                except Exception:
                    # Kept for an operator to inspect; the others go on.
                    self.log.failure(
                        "Outbox row {messageId} of {component} cannot be read; left in place",
                        messageId=messageId,
                        component=self.component,
                    )
                    continue
                origin = Origin(self._source, correlationId, None)
                confirmations.append(
                    self._bus.publish(event, payload, origin=origin, messageId=messageId)
                )
                published.append(seq)
            results = yield DeferredList(confirmations, consumeErrors=True)
            confirmed = [seq for seq, (ok, _) in zip(published, results, strict=True) if ok]
            if confirmed:
                marks = ", ".join("?" * len(confirmed))
                yield self._database.runOperation(
                    f"DELETE FROM {self.table} WHERE seq IN ({marks})", confirmed
                )
            failures = [result for ok, result in results if not ok]
            if failures:
                # Kept, to be published again on the next pass.
                failures[0].raiseException()
            if len(rows) < self._batchSize or not published:
                return
