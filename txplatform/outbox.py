# -*- test-case-name: tests.test_outbox -*-
"""
The transactional outbox: events are written in the same database
transaction as the change they announce, then published by a relay.

A service that committed a change therefore cannot lose its event, whether
the bus is down or the process dies between commit and publish, and the
relay deletes a row only once the bus has confirmed the event.

The rows of confirmed events are deleted together, every
L{Outbox.settleDelay} (0.5 s) while there are some, in one transaction:
not in one after every batch the relay publishes (under load, hundreds a
second, each a COMMIT for the database to write and flush).  A process
that dies in between publishes those events again when it restarts (under
the same message ids), as it would one confirmed just before it died.

The relay publishes a committed transaction's events from memory (the
transaction hands them over once it committed: no query to find them), and
looks in the table for what is left (the events of a process that died
before publishing, or of a publish that failed) when it starts, after a
failure, and on a timer, there only for rows older than the timer's
interval (younger ones are another replica's, in its memory).  Events keep
their message id across republishing, so consumers can tell a redelivery
from a new event.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from twisted.internet.defer import (
    Deferred,
    DeferredList,
    DeferredLock,
    FirstError,
    inlineCallbacks,
)
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from . import traces
from .codec import dumps, loads
from .context import Origin, newMessageId
from .database import Migration
from .interfaces import IBus, IDatabase, IFieldCodec, ITransaction
from .metrics import OUTBOX_BACKLOG, OUTBOX_LEFTOVERS, OUTBOX_OLDEST
from .serviceid import ServiceId

__all__ = ["Outbox"]


def _raiseFirstFailure(results: list[tuple[bool, Any]]) -> None:
    """
    Raise the first failure of a L{DeferredList}'s C{results}, if any.
    """
    for ok, result in results:
        if not ok:
            result.raiseException()


class _Staged(NamedTuple):
    messageId: str
    event: str
    payload: Any
    correlationId: str
    traceParent: str | None
    traceState: str | None


class Outbox:
    """
    The outbox of one service.

    @param component: The service name; the table is C{<component>_outbox}.
    @param source: The publishing service's id, stamped on every event.
    """

    log = Logger()

    #: The most ids one DELETE names (SQLite takes at most 32,766
    #: parameters a statement).
    deletePortion = 500

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
        settleDelay: float = 0.5,
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
        self.settleDelay = settleDelay
        self._loop: LoopingCall | None = None
        self._running: Deferred[None] | None = None
        self._again = False
        self._waiters: list[Deferred[None]] = []
        # Events of committed transactions, to publish from memory.
        self._ready: list[_Staged] = []
        # Message ids in memory (ready, or being published from there): a
        # scan leaves them be.  A scan's query runs on a connection of its
        # own, so it can read a row whose commit the outbox hears of only
        # later (or while the query runs).
        self._inMemory: set[str] = set()
        # Message ids a scan published, with when: a commit heard of after
        # its row was published by a scan is not published again.  Kept
        # for a minute; a commit is heard of within the reactor turns
        # after it.
        self._scanned: dict[str, float] = {}
        self._backlog = OUTBOX_BACKLOG.labels(component)
        # Whether the table may hold rows nobody has in memory (leftovers
        # of an earlier run, or of a failed publish); the timer's scans
        # look only at rows older than the interval.
        self._scanAll = True
        self._scanOld = False
        # Message ids whose events the bus confirmed and whose rows wait
        # to be deleted (until the DELETE has committed, a scan leaves them
        # be), and the timer that deletes them.
        self._confirmed: list[str] = []
        self._undeleted: set[str] = set()
        self._settling: IDelayedCall | None = None
        self._stopped = False
        # Deleting and scanning take turns: a scan's query, on a
        # connection of its own, must not read a row whose DELETE commits
        # (and whose id is forgotten) before its answer comes.
        self._table = DeferredLock()

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
            ),
            Migration(
                2,
                "keep the trace of each event",
                # The span of the transaction that staged it: its
                # publication, later or in another process, joins that trace.
                (f"ALTER TABLE {self.table} ADD COLUMN trace_parent TEXT",),
            ),
            Migration(
                3,
                "keep the trace state of each event",
                # The W3C tracestate beside the traceparent (NULL when
                # empty, and in the rows staged before it was kept).
                (f"ALTER TABLE {self.table} ADD COLUMN trace_state TEXT",),
            ),
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
        Its publication joins the trace of the transaction (or of
        C{origin}), if any, and carries the correlation id of C{origin} or
        else of the call or event whose handler began the transaction (its
        own message id if neither).

        @return: The event's message id.
        """
        messageId = newMessageId()
        correlationId = (
            (origin.correlationId if origin is not None else None)
            or getattr(transaction, "correlationId", None)
            or messageId
        )
        traceParent = getattr(transaction, "traceParent", None)
        traceState = getattr(transaction, "traceState", None)
        if traceParent is None and origin is not None:
            traceParent, traceState = origin.traceParent, origin.traceState
        sealed = self._fields.seal(self.table, "payload", messageId, dumps(payload).decode("utf-8"))
        transaction.send(
            f"INSERT INTO {self.table}"
            " (message_id, event, payload, correlation_id, created_at, trace_parent,"
            " trace_state)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                messageId,
                event,
                sealed,
                correlationId,
                int(self._clock.seconds() * 1000),
                traceParent,
                traceState,
            ),
        )
        staged = _Staged(messageId, event, payload, correlationId, traceParent, traceState)
        transaction.afterCommit(lambda: self._committed(staged))
        return messageId

    def _confirm(self, ids: list[str]) -> None:
        """
        The bus confirmed the events of C{ids}: their rows go with the
        others confirmed within L{settleDelay}.
        """
        if not ids:
            return
        self._confirmed += ids
        self._undeleted.update(ids)
        if self._stopped:
            # Published after the outbox stopped (its service finishing a
            # call): no timer runs any more.
            self._deleteConfirmed()
        elif self._settling is None:
            self._settling = self._clock.callLater(self.settleDelay, self._settleDue)

    def _settleDue(self) -> None:
        self._settling = None
        self._deleteConfirmed()

    def _deleteConfirmed(self) -> Deferred[None]:
        """
        Delete the rows of the events confirmed so far, in one transaction
        (L{deletePortion} ids a statement).  Never fails: if the database
        refuses, they wait for the next time.
        """
        return self._table.run(self._deleteConfirmedNow)

    @inlineCallbacks
    def _deleteConfirmedNow(self) -> Any:
        ids, self._confirmed = self._confirmed, []
        if not ids:
            return

        def delete(t: ITransaction) -> None:
            for start in range(0, len(ids), self.deletePortion):
                portion = ids[start : start + self.deletePortion]
                t.send(
                    f"DELETE FROM {self.table} WHERE message_id IN"
                    f" ({', '.join('?' * len(portion))})",
                    portion,
                )

        try:
            yield self._database.runBatch(delete)
        except Exception as e:
            self._confirmed[:0] = ids
            self.log.warn(
                "Outbox of {component} could not delete what the bus confirmed yet: {error}",
                component=self.component,
                error=f"{type(e).__name__}: {e}",
            )
        else:
            self._undeleted.difference_update(ids)
        if self._confirmed and self._settling is None and not self._stopped:
            self._settling = self._clock.callLater(self.settleDelay, self._settleDue)

    def _committed(self, staged: _Staged) -> None:
        if self._scanned.pop(staged.messageId, None) is not None:
            return  # a scan published it already
        self._inMemory.add(staged.messageId)
        self._backlog.set(len(self._inMemory))
        self._ready.append(staged)

    def start(self) -> None:
        """
        Publish what an earlier run left, then keep checking on a timer.
        """
        if self._loop is not None:
            return
        self._stopped = False
        self._loop = LoopingCall(self._tick)
        self._loop.clock = self._clock
        self._loop.start(self._interval, now=True)

    def _tick(self) -> Deferred[None]:
        self._scanOld = True
        return self.flush()

    @inlineCallbacks
    def stop(self) -> Any:
        """
        Stop the timer; fires when a pass under way has finished and the
        rows of what the bus confirmed are deleted (as far as the database
        lets: what is left is published again by the next run).
        """
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        if self._running is not None:
            d: Deferred[None] = Deferred()
            self._waiters.append(d)
            yield d
        self._stopped = True
        if self._settling is not None:
            self._settling.cancel()
            self._settling = None
        yield self._deleteConfirmed()

    def flush(self) -> Deferred[None]:
        """
        Publish the events of the transactions committed so far (and what
        the table holds that nobody has in memory, when it may hold some).
        Concurrent calls share one pass (which runs again if asked during
        it).  Never fails: errors are logged and the rows stay for the next
        pass.
        """
        d: Deferred[None] = Deferred()
        self._waiters.append(d)
        if self._running is not None:
            self._again = True
        else:
            # A pass may finish before _drain returns (what it publishes
            # from memory can be settled at once): mark it under way first,
            # and keep its Deferred only if it is still running.
            marker: Deferred[None] = Deferred()
            self._running = marker
            running = self._drain()
            if self._running is marker:
                self._running = running
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
                if not self._again and not self._ready:
                    break
        finally:
            self._running = None
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                waiter.callback(None)

    @inlineCallbacks
    def _publishAll(self) -> Any:
        try:
            yield self._publishReady()
            if self._scanAll or self._scanOld:
                horizon = None if self._scanAll else self._clock.seconds() - self._interval
                self._scanAll = self._scanOld = False
                yield self._table.run(self._publishLeftovers, horizon)
        except BaseException:
            # What did not go stays in the table: look for it next time.
            self._scanAll = True
            raise

    @inlineCallbacks
    def _publishReady(self) -> Any:
        while self._ready:
            ready, self._ready = self._ready, []
            try:
                confirmations = [
                    self._publish(
                        s.event,
                        s.payload,
                        s.messageId,
                        s.correlationId,
                        s.traceParent,
                        s.traceState,
                    )
                    for s in ready
                ]
                results = yield DeferredList(confirmations, consumeErrors=True)
                self._confirm(
                    [s.messageId for s, (ok, _) in zip(ready, results, strict=True) if ok]
                )
                _raiseFirstFailure(results)
            finally:
                self._inMemory.difference_update(s.messageId for s in ready)
                self._backlog.set(len(self._inMemory))

    def _publish(
        self,
        event: str,
        payload: Any,
        messageId: str,
        correlationId: str,
        traceParent: str | None,
        traceState: str | None,
    ) -> Deferred[None]:
        """
        Publish one event; in a trace, under a span of its own that lasts
        until the bus confirms it.
        """
        if traceParent is None or not traces.enabled():
            origin = Origin(
                self._source, correlationId, None, traceParent=traceParent, traceState=traceState
            )
            return self._bus.publish(event, payload, origin=origin, messageId=messageId)
        span = traces.startSpan(
            f"publish {event}",
            traces.SpanKind.PRODUCER,
            traceParent,
            {
                "messaging.system": "txplatform",
                "messaging.operation.type": "send",
                "messaging.destination.name": event,
                "messaging.message.id": messageId,
                "txplatform.service": self.component,
                "txplatform.correlation_id": correlationId,
            },
            traceState=traceState,
        )
        assert span is not None
        origin = Origin(
            self._source,
            correlationId,
            None,
            traceParent=traces.traceParentOf(span),
            traceState=traces.traceStateOf(span),
        )
        d = self._bus.publish(event, payload, origin=origin, messageId=messageId)
        return d.addBoth(traces.endSpan, span)

    @inlineCallbacks
    def _settleScanned(self, seqs: list[int], results: list[tuple[bool, Any]]) -> Any:
        """
        Delete the rows a scan published whose events the bus confirmed, at
        once; raise the first failure (the others stay, for a scan).
        """
        confirmed = [seq for seq, (ok, _) in zip(seqs, results, strict=True) if ok]
        if confirmed:
            marks = ", ".join("?" * len(confirmed))
            yield self._database.runOperation(
                f"DELETE FROM {self.table} WHERE seq IN ({marks})", confirmed
            )
        _raiseFirstFailure(results)

    @inlineCallbacks
    def _publishLeftovers(self, horizon: float | None) -> Any:
        """
        Publish the rows nobody has in memory: all of them, or those
        staged before C{horizon}.
        """
        now = self._clock.seconds()
        self._scanned = {m: at for m, at in self._scanned.items() if at > now - 60.0}
        after = -1
        while True:
            sql = (
                "SELECT seq, message_id, event, payload, correlation_id, trace_parent,"
                " trace_state, created_at"
                f" FROM {self.table}"
                " WHERE seq > ?"
            )
            params: list[Any] = [after]
            if horizon is not None:
                sql += " AND created_at < ?"
                params.append(int(horizon * 1000))
            rows = yield self._database.runQuery(
                sql + " ORDER BY seq LIMIT ?", (*params, self._batchSize)
            )
            if after == -1:
                # Ordered by seq, so near enough the oldest: what an
                # operator alerts on (the bus away, or rows unreadable).
                oldest = rows[0][7] / 1000 if rows else now
                OUTBOX_OLDEST.labels(self.component).set(max(now - oldest, 0.0))
            if not rows:
                return
            after = rows[-1][0]
            published = []
            confirmations = []
            for seq, messageId, event, sealed, correlationId, traceParent, traceState, _ in rows:
                if messageId in self._inMemory or messageId in self._undeleted:
                    continue  # on its way from memory, or confirmed
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
                confirmations.append(
                    self._publish(event, payload, messageId, correlationId, traceParent, traceState)
                )
                self._scanned[messageId] = now
                published.append(seq)
            results = yield DeferredList(confirmations, consumeErrors=True)
            OUTBOX_LEFTOVERS.labels(self.component).inc(sum(1 for ok, _ in results if ok))
            yield self._settleScanned(published, results)
            if len(rows) < self._batchSize:
                return
