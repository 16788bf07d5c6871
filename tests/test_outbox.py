"""
Tests for L{txplatform.outbox}, on SQLite and PostgreSQL.
"""

from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import fail, gatherResults, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from txplatform.codec import dumps
from txplatform.context import Origin
from txplatform.fields import PlainFieldCodec
from txplatform.localbus import LocalBus
from txplatform.outbox import Outbox
from txplatform.serviceid import ServiceId

from .support import PostgresMixin, SQLiteMixin, eventually, sleep

SOURCE = ServiceId.fromHex("0000a3")
TRACE_PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
TRACE_STATE = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"


class FlakyBus(LocalBus):
    """
    A bus whose publishing can be switched off.
    """

    down = False

    def publish(self, *args: Any, **kwargs: Any) -> Any:
        if self.down:
            return fail(ConnectionError("bus is down"))
        return super().publish(*args, **kwargs)


class OutboxTestsMixin:
    @inlineCallbacks
    def setUp(self) -> Any:
        self.database = self.makeDatabase()
        self.bus = FlakyBus(reactor)
        self.received: list[tuple[Any, Any]] = []
        yield self.bus.subscribe("thing.*", lambda p, c: self.received.append((p, c)), "watcher")
        self.outbox = self.makeOutbox()
        yield self.database.migrate(self.outbox.table, self.outbox.migrations())

    def makeOutbox(self, settleDelay: float = 0.02) -> Outbox:
        outbox = Outbox(
            self.database,
            self.bus,
            PlainFieldCodec(),
            "things",
            SOURCE,
            reactor,
            interval=0.05,
            settleDelay=settleDelay,
        )
        self.addCleanup(outbox.stop)
        return outbox

    def remaining(self) -> Any:
        return self.database.runQuery(f"SELECT message_id FROM {self.outbox.table}")

    def emptied(self) -> Any:
        """
        Fires once the table is empty: the rows of confirmed events go a
        little after their confirmation (L{Outbox.settleDelay}).
        """
        return eventually(lambda: self.remaining().addCallback(lambda rows: rows == []))

    @inlineCallbacks
    def test_publishedAfterCommit(self) -> Any:
        """
        An event staged in a committed transaction is published by the next
        flush, with the service as source, and its row goes.
        """
        messageId = yield self.database.runInteraction(
            lambda t: self.outbox.stage(t, "thing.made", {"n": 1})
        )
        yield self.outbox.flush()
        yield eventually(lambda: self.received)
        [(payload, context)] = self.received
        self.assertEqual(
            (payload, context.messageId, context.source), ({"n": 1}, messageId, SOURCE)
        )
        yield self.emptied()

    @inlineCallbacks
    def test_notPublishedAfterRollback(self) -> Any:
        """
        An event staged in a transaction that rolled back is never published.
        """

        def changeMind(t: Any) -> None:
            self.outbox.stage(t, "thing.made", {"n": 1})
            raise RuntimeError("abort")

        yield self.assertFailure(self.database.runInteraction(changeMind), RuntimeError)
        yield self.outbox.flush()
        yield self.emptied()
        self.assertEqual(self.received, [])

    @inlineCallbacks
    def test_fromMemory(self) -> Any:
        """
        The events of a committed transaction are published from memory:
        the flush that follows reads nothing from the table (it only
        deletes the rows once the bus confirmed).
        """
        yield self.outbox.flush()  # the first pass looks for leftovers
        queries: list[str] = []
        real = self.database.runQuery

        def spy(sql: str, params: Any = ()) -> Any:
            queries.append(sql)
            return real(sql, params)

        self.patch(self.database, "runQuery", spy)
        yield self.database.runInteraction(lambda t: self.outbox.stage(t, "thing.made", {"n": 1}))
        yield self.outbox.flush()
        yield eventually(lambda: len(self.received) == 1)
        self.assertEqual(queries, [])
        yield self.emptied()

    @inlineCallbacks
    def test_othersLeftovers(self) -> Any:
        """
        The timer's passes publish rows nobody has in memory (another
        replica's, whose process died) once they are older than the
        interval; younger ones are left to the replica that staged them.
        """
        self.outbox._interval = 60.0
        yield self.outbox.flush()  # the first pass looks at every row
        other = self.makeOutbox()
        yield self.database.runInteraction(lambda t: other.stage(t, "thing.made", {"n": 1}))
        yield self.outbox._tick()
        self.assertEqual(self.received, [])
        self.outbox._interval = 0.01
        yield deferLater(reactor, 0.05, lambda: None)
        yield self.outbox._tick()
        yield eventually(lambda: len(self.received) == 1)
        yield self.emptied()

    @inlineCallbacks
    def test_scanSkipsWhatIsInMemory(self) -> Any:
        """
        A scan that reads a row whose transaction's commit is already in
        memory (committed while the scan's query ran) leaves it to the
        publication from memory: one event, not two.
        """
        yield self.outbox.flush()
        yield self.database.runInteraction(lambda t: self.outbox.stage(t, "thing.made", {"n": 1}))
        yield self.outbox._publishLeftovers(None)
        yield self.outbox.flush()
        yield deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(len(self.received), 1)
        yield self.emptied()

    @inlineCallbacks
    def test_commitNoticedAfterScan(self) -> Any:
        """
        A commit whose notice reaches the outbox after a scan already
        published its row (the scan's query, on another connection, saw it
        first) is not published again.
        """
        yield self.outbox.flush()
        late: list[Any] = []

        def stage(t: Any) -> Any:
            t.afterCommit = late.append
            return self.outbox.stage(t, "thing.made", {"n": 1})

        yield self.database.runInteraction(stage)
        yield self.outbox._publishLeftovers(None)
        yield eventually(lambda: len(self.received) == 1)
        [notice] = late
        notice()
        yield self.outbox.flush()
        yield deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(len(self.received), 1)
        yield self.emptied()

    @inlineCallbacks
    def test_metrics(self) -> Any:
        """
        The backlog counts what is committed and not yet confirmed; a scan
        counts what it publishes from the table and says the age of the
        oldest row it found (0 once none is left).
        """
        from prometheus_client import REGISTRY

        def sample(name: str) -> float:
            return REGISTRY.get_sample_value(name, {"service": "things"}) or 0.0

        yield self.outbox.flush()
        self.bus.down = True
        yield self.database.runInteraction(lambda t: self.outbox.stage(t, "thing.made", {"n": 1}))
        self.assertEqual(sample("txplatform_outbox_backlog"), 1)
        yield self.outbox.flush()
        self.assertEqual(sample("txplatform_outbox_backlog"), 0)
        leftovers = sample("txplatform_outbox_leftovers_published_total")
        yield deferLater(reactor, 0.1, lambda: None)
        yield self.outbox._tick()  # the bus still down: the row stays
        self.assertGreaterEqual(sample("txplatform_outbox_oldest_seconds"), 0.05)
        self.bus.down = False
        yield self.outbox._tick()
        yield eventually(lambda: len(self.received) == 1)
        self.assertEqual(sample("txplatform_outbox_leftovers_published_total") - leftovers, 1)
        yield self.outbox._tick()
        self.assertEqual(sample("txplatform_outbox_oldest_seconds"), 0)

    @inlineCallbacks
    def test_busDown(self) -> Any:
        """
        While the bus refuses events they stay in the outbox, in order, and
        the next flush publishes them under the same message ids.
        """
        self.bus.down = True
        ids = []
        for n in range(3):
            ids.append(
                (
                    yield self.database.runInteraction(
                        lambda t, n=n: self.outbox.stage(t, "thing.made", {"n": n})
                    )
                )
            )
        yield self.outbox.flush()
        self.assertEqual(len((yield self.remaining())), 3)
        self.bus.down = False
        yield self.outbox.flush()
        yield eventually(lambda: len(self.received) == 3)
        self.assertEqual([c.messageId for _, c in self.received], ids)
        self.assertEqual([p["n"] for p, _ in self.received], [0, 1, 2])

    @inlineCallbacks
    def test_leftoversOnStart(self) -> Any:
        """
        Events an earlier process staged but never published go out when
        the outbox starts, and then on its timer.
        """
        yield self.database.runInteraction(lambda t: self.outbox.stage(t, "thing.made", {"n": 1}))
        outbox = self.makeOutbox()
        outbox.start()
        self.addCleanup(outbox.stop)
        yield eventually(lambda: len(self.received) == 1)
        yield self.database.runInteraction(lambda t: outbox.stage(t, "thing.made", {"n": 2}))
        yield eventually(lambda: len(self.received) == 2)

    @inlineCallbacks
    def test_traceKeptAcrossRestart(self) -> Any:
        """
        An event's W3C C{traceparent} and C{tracestate} (from the origin
        staging it, tracing being off here) are kept in its row, and an
        outbox of a later process publishes the event with both.
        """
        origin = Origin(SOURCE, "c1", traceParent=TRACE_PARENT, traceState=TRACE_STATE)
        yield self.database.runInteraction(
            lambda t: self.outbox.stage(t, "thing.made", {"n": 1}, origin)
        )
        rows = yield self.database.runQuery(
            f"SELECT trace_parent, trace_state FROM {self.outbox.table}"
        )
        self.assertEqual([tuple(r) for r in rows], [(TRACE_PARENT, TRACE_STATE)])
        yield self.makeOutbox().flush()
        yield eventually(lambda: self.received)
        [(_, context)] = self.received
        self.assertEqual((context.traceParent, context.traceState), (TRACE_PARENT, TRACE_STATE))
        yield self.emptied()

    @inlineCallbacks
    def test_rowsWithoutTraceState(self) -> Any:
        """
        Rows staged before the outbox kept trace states (its migration 2)
        are published once it does, with their C{traceparent} and no
        C{tracestate}.
        """
        old = Outbox(self.database, self.bus, PlainFieldCodec(), "olds", SOURCE, reactor)
        self.addCleanup(old.stop)
        yield self.database.migrate(old.table, old.migrations()[:2])
        yield self.database.runOperation(
            f"INSERT INTO {old.table}"
            " (message_id, event, payload, correlation_id, created_at, trace_parent)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            ("m" * 32, "thing.old", dumps({"n": 1}), "c1", 0, TRACE_PARENT),
        )
        applied = yield self.database.migrate(old.table, old.migrations())
        self.assertEqual(applied, [3])
        yield old.flush()
        yield eventually(lambda: self.received)
        [(payload, context)] = self.received
        self.assertEqual(
            (payload, context.traceParent, context.traceState), ({"n": 1}, TRACE_PARENT, None)
        )

    @inlineCallbacks
    def test_batches(self) -> Any:
        """
        More events than a batch holds all go out in one flush; concurrent
        flushes share the work.
        """
        self.outbox._batchSize = 4
        for n in range(10):
            yield self.database.runInteraction(
                lambda t, n=n: self.outbox.stage(t, "thing.made", {"n": n})
            )
        yield gatherResults([self.outbox.flush(), self.outbox.flush(), self.outbox.flush()])
        yield eventually(lambda: len(self.received) == 10)
        self.assertEqual(sorted(p["n"] for p, _ in self.received), list(range(10)))
        yield self.emptied()

    def spyOnTransactions(self) -> list[str]:
        """
        What the database runs from now on: for each call of runBatch,
        runInteraction or runOperation, the method and its interaction's
        name.
        """
        ran: list[str] = []
        for name in ("runBatch", "runInteraction", "runOperation"):
            real = getattr(self.database, name)

            def spy(*args: Any, real: Any = real, name: str = name, **kwargs: Any) -> Any:
                ran.append(f"{name} {getattr(args[0], '__name__', '')}".strip())
                return real(*args, **kwargs)

            self.patch(self.database, name, spy)
        return ran

    @inlineCallbacks
    def test_deletedTogether(self) -> Any:
        """
        The rows of the events confirmed within C{settleDelay} go together,
        in one transaction, and none before then.
        """
        self.outbox = self.makeOutbox(settleDelay=0.3)
        yield self.outbox.flush()  # the first pass looks for leftovers
        ran = self.spyOnTransactions()
        for n in range(3):
            yield self.database.runInteraction(
                lambda t, n=n: self.outbox.stage(t, "thing.made", {"n": n})
            )
            yield self.outbox.flush()
        yield eventually(lambda: len(self.received) == 3)
        self.assertEqual([r.split()[0] for r in ran], ["runInteraction"] * 3)
        self.assertEqual(len((yield self.remaining())), 3)
        del ran[:]
        yield self.emptied()
        self.assertEqual(ran.count("runBatch delete"), 1)

    @inlineCallbacks
    def test_deletedInPortions(self) -> Any:
        """
        Many confirmed at once are deleted in statements of at most
        C{deletePortion} ids each.
        """
        self.outbox.deletePortion = 2
        for n in range(5):
            yield self.database.runInteraction(
                lambda t, n=n: self.outbox.stage(t, "thing.made", {"n": n})
            )
        deletes: list[int] = []
        real = self.database.runBatch

        def counting(interaction: Any, *args: Any, **kwargs: Any) -> Any:
            def counted(t: Any, *a: Any, **kw: Any) -> Any:
                send = t.send

                def sent(sql: str, params: Any = ()) -> Any:
                    if sql.startswith("DELETE"):
                        deletes.append(len(params))
                    return send(sql, params)

                t.send = sent
                return interaction(t, *a, **kw)

            return real(counted, *args, **kwargs)

        self.patch(self.database, "runBatch", counting)
        yield self.outbox.flush()
        yield eventually(lambda: len(self.received) == 5)
        yield self.emptied()
        self.assertEqual(deletes, [2, 2, 1])

    @inlineCallbacks
    def test_scanLeavesConfirmed(self) -> Any:
        """
        A scan leaves be the rows of confirmed events that wait to be
        deleted: each event is published once.
        """
        self.outbox = self.makeOutbox(settleDelay=60.0)
        yield self.outbox.flush()
        yield self.database.runInteraction(lambda t: self.outbox.stage(t, "thing.made", {"n": 1}))
        yield self.outbox.flush()
        yield eventually(lambda: len(self.received) == 1)
        yield self.outbox._publishLeftovers(None)
        yield sleep(0.05)
        self.assertEqual(len(self.received), 1)
        self.assertEqual(len((yield self.remaining())), 1)

    @inlineCallbacks
    def test_deleteRetried(self) -> Any:
        """
        If the database refuses the DELETE, the rows go the next time, and
        nothing is published again meanwhile.
        """
        self.outbox = self.makeOutbox(settleDelay=0.05)
        yield self.outbox.flush()
        real = self.database.runBatch
        refusals = []

        def refuseOnce(*args: Any, **kwargs: Any) -> Any:
            if not refusals:
                refusals.append(True)
                return fail(ConnectionError("database away"))
            return real(*args, **kwargs)

        yield self.database.runInteraction(lambda t: self.outbox.stage(t, "thing.made", {"n": 1}))
        self.patch(self.database, "runBatch", refuseOnce)
        yield self.outbox.flush()
        yield eventually(lambda: refusals)
        self.patch(self.database, "runBatch", real)
        yield self.outbox._publishLeftovers(None)
        yield self.emptied()
        self.assertEqual(len(self.received), 1)

    @inlineCallbacks
    def test_stopDeletes(self) -> Any:
        """
        Stopping deletes the rows of what the bus confirmed: the next run
        does not publish them again.
        """
        self.outbox = self.makeOutbox(settleDelay=60.0)
        yield self.database.runInteraction(lambda t: self.outbox.stage(t, "thing.made", {"n": 1}))
        yield self.outbox.flush()
        yield eventually(lambda: len(self.received) == 1)
        yield self.outbox.stop()
        self.assertEqual((yield self.remaining()), [])

    @inlineCallbacks
    def test_keptUntilHandled(self) -> Any:
        """
        On the in-process bus a row goes only once every group has handled
        its event: one whose handler has not finished when its group loses
        its member stays, and is published again; those handled go.
        """
        from twisted.internet.defer import Deferred

        hold: list[Deferred[None]] = []
        member = yield self.bus.subscribe(
            "thing.slow", lambda p, c: hold.append(Deferred()) or hold[-1], "slowpoke", prefetch=1
        )
        for event in ("thing.made", "thing.slow", "thing.slow"):
            yield self.database.runInteraction(lambda t, e=event: self.outbox.stage(t, e, {"e": e}))
        self.outbox._batchSize = 10
        flushed = self.outbox.flush()
        yield eventually(lambda: len(hold) >= 1)
        hold[0].callback(None)
        stopped = member.stop()  # the second slow one still waits in the group
        yield flushed
        yield stopped
        yield eventually(lambda: self.remaining().addCallback(lambda rows: len(rows) == 1))
        # A member again: the next pass publishes it again, and it goes.
        yield self.bus.subscribe("thing.slow", lambda p, c: None, "slowpoke")
        yield self.outbox.flush()
        yield self.emptied()


class SQLiteOutboxTests(SQLiteMixin, OutboxTestsMixin, TestCase):
    pass


class PostgresOutboxTests(PostgresMixin, OutboxTestsMixin, TestCase):
    pass
