"""
Tests for L{txplatform.database}, run on SQLite and on PostgreSQL.
"""

import os
import sqlite3
import threading
import time
import uuid
from typing import Any, Callable
from urllib.parse import urlsplit, urlunsplit

import psycopg
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, gatherResults, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from txplatform.database import (
    DatabaseUnavailable,
    IntegrityError,
    Migration,
    PostgresDatabase,
    SQLiteDatabase,
    UniqueViolation,
    databaseFromURL,
)
from txplatform.interfaces import IDatabase
from txplatform.pgconnections import ConnectionClosed

from .support import POSTGRES_URL, PostgresMixin, SQLiteMixin, recordMessages, requirePostgres

THINGS = [
    Migration(
        1,
        "things",
        (
            """CREATE TABLE things (
                id {id} PRIMARY KEY,
                name TEXT NOT NULL UNIQUE,
                data {bytes},
                big {bigint},
                flag {bool}
            )""",
        ),
    ),
    Migration(2, "things by name", ("CREATE INDEX things_by_name ON things (name)",)),
]


# A thing with every kind of value, and how a connection prepares it.
INSERT = "INSERT INTO things (id, name, data, big, flag) VALUES (?, ?, ?, ?, ?)"
PREPARED_INSERT = (
    "PREPARE txp_0(unknown, unknown, bytea, bigint, boolean) AS"
    " INSERT INTO things (id, name, data, big, flag) VALUES ($1, $2, $3, $4, $5)"
)


def noting(events: list[str], name: str) -> Callable[[Any], None]:
    """
    An interaction that notes in C{events} that it runs, and asks to note
    its commit there.
    """

    def interaction(t: Any) -> None:
        events.append(f"{name} runs")
        t.afterCommit(lambda: events.append(f"{name} committed"))

    return interaction


class DatabaseTestsMixin:
    """
    Behaviour both dialects share.
    """

    @inlineCallbacks
    def migrated(self) -> Any:
        database = self.makeDatabase()
        applied = yield database.migrate("things", THINGS)
        self.assertEqual(applied, [1, 2])
        return database

    def test_interface(self) -> None:
        """
        The database provides L{IDatabase}.
        """
        verifyObject(IDatabase, self.makeDatabase())

    @inlineCallbacks
    def test_migrateOnce(self) -> Any:
        """
        Migrations are applied once, in order, and recorded.
        """
        database = yield self.migrated()
        again = yield database.migrate("things", THINGS)
        self.assertEqual(again, [])
        more = yield database.migrate(
            "things", THINGS + [Migration(3, "more", ("ALTER TABLE things ADD COLUMN extra TEXT",))]
        )
        self.assertEqual(more, [3])
        rows = yield database.runQuery(
            "SELECT version, description FROM schema_migrations WHERE component = ? ORDER BY version",
            ("things",),
        )
        self.assertEqual(
            [tuple(r) for r in rows], [(1, "things"), (2, "things by name"), (3, "more")]
        )

    @inlineCallbacks
    def test_reindexStep(self) -> Any:
        """
        A migration that re-indexes a table calls the migration's caller
        back for it, inside the migration's transaction, once; without a
        callback it is refused; a failing re-index undoes the migration.
        """
        database = yield self.migrated()
        step = Migration(3, "re-index", (), reindex=("things",))
        self.assertRaises(ValueError, database.migrate, "things", THINGS + [step])
        calls: list[str] = []

        def broken(t: Any, table: str) -> None:
            t.execute("INSERT INTO things (id, name) VALUES ('x', 'made by the re-index')")
            raise RuntimeError("no keys")

        yield self.assertFailure(database.migrate("things", THINGS + [step], broken), RuntimeError)
        self.assertEqual((yield database.runQuery("SELECT id FROM things WHERE id = 'x'")), [])

        def reindex(t: Any, table: str) -> None:
            calls.append(table)
            t.execute("INSERT INTO things (id, name) VALUES ('x', 'made by the re-index')")

        self.assertEqual((yield database.migrate("things", THINGS + [step], reindex)), [3])
        self.assertEqual((yield database.migrate("things", THINGS + [step], reindex)), [])
        self.assertEqual(calls, ["things"])
        self.assertEqual(len((yield database.runQuery("SELECT id FROM things WHERE id = 'x'"))), 1)

    @inlineCallbacks
    def test_failedMigrationRollsBack(self) -> Any:
        """
        A migration that fails leaves nothing behind: neither its tables nor
        its record.
        """
        database = self.makeDatabase()
        broken = [
            Migration(1, "good", ("CREATE TABLE good (id INTEGER)",)),
            Migration(2, "bad", ("CREATE TABLE bad (id INTEGER",)),
        ]
        yield self.assertFailure(database.migrate("broken", broken), Exception)
        applied = yield database.migrate("broken", broken[:1])
        self.assertEqual(applied, [1])

    @inlineCallbacks
    def test_concurrentMigrations(self) -> Any:
        """
        Replicas migrating the same database at once apply each migration
        once and all succeed.
        """
        first = self.makeDatabase()
        others = [self.reopen(first) for _ in range(3)]
        results = yield gatherResults(
            [db.migrate("things", THINGS) for db in [first, *others]], consumeErrors=True
        )
        self.assertEqual(sorted(results), [[], [], [], [1, 2]])

    @inlineCallbacks
    def test_values(self) -> Any:
        """
        Text, bytes, big integers and booleans round-trip; C{?} placeholders
        work and a literal C{%} is just a character.
        """
        database = yield self.migrated()
        yield database.runOperation(
            "INSERT INTO things (id, name, data, big, flag) VALUES (?, ?, ?, ?, ?)",
            ("a", "100% é", b"\x00\xffbytes", 2**62, True),
        )
        [row] = yield database.runQuery(
            "SELECT name, data, big, flag FROM things WHERE name LIKE '100%'"
        )
        self.assertEqual(
            (row[0], bytes(row[1]), row[2], bool(row[3])), ("100% é", b"\x00\xffbytes", 2**62, True)
        )
        self.assertIsInstance(row[1], bytes)

    @inlineCallbacks
    def test_uniqueViolation(self) -> Any:
        """
        A duplicate key raises L{UniqueViolation}, whichever the driver.
        """
        database = yield self.migrated()
        insert = "INSERT INTO things (id, name) VALUES (?, ?)"
        yield database.runOperation(insert, ("a", "one"))
        yield self.assertFailure(database.runOperation(insert, ("b", "one")), UniqueViolation)
        yield self.assertFailure(database.runOperation(insert, ("a", "two")), UniqueViolation)
        self.assertTrue(issubclass(UniqueViolation, IntegrityError))

    @inlineCallbacks
    def test_metrics(self) -> Any:
        """
        Each transaction's wait for a connection and its time in its thread
        are observed, labelled with the database.
        """
        from prometheus_client import REGISTRY

        database = self.makeDatabase()
        labels = {"database": database.description}

        def count(name: str) -> float:
            return REGISTRY.get_sample_value(name, labels) or 0.0

        waits = count("txplatform_database_wait_seconds_count")
        took = count("txplatform_database_transaction_seconds_sum")
        yield database.runInteraction(lambda t: time.sleep(0.05))
        yield database.runQuery("SELECT 1")
        self.assertEqual(count("txplatform_database_wait_seconds_count") - waits, 2)
        self.assertGreaterEqual(count("txplatform_database_transaction_seconds_sum") - took, 0.05)

    @inlineCallbacks
    def test_rollback(self) -> Any:
        """
        An interaction that raises leaves no trace.
        """
        database = yield self.migrated()

        def halfway(t: Any) -> None:
            t.execute("INSERT INTO things (id, name) VALUES (?, ?)", ("a", "one"))
            raise RuntimeError("changed my mind")

        yield self.assertFailure(database.runInteraction(halfway), RuntimeError)
        rows = yield database.runQuery("SELECT * FROM things")
        self.assertEqual(rows, [])

    @inlineCallbacks
    def test_idOrder(self) -> Any:
        """
        Ids order bytewise, whatever the database's locale.
        """
        database = yield self.migrated()
        ids = ["0b", "0a", "a0", "B0", "_a", "z"]
        for n, recordId in enumerate(ids):
            yield database.runOperation(
                "INSERT INTO things (id, name) VALUES (?, ?)", (recordId, str(n))
            )
        rows = yield database.runQuery("SELECT id FROM things ORDER BY id")
        self.assertEqual([r[0] for r in rows], sorted(ids))

    @inlineCallbacks
    def test_lock(self) -> Any:
        """
        Transactions locking a common name run one after the other, even on
        separate connections.
        """
        database = yield self.migrated()
        other = self.reopen(database)
        events: list[str] = []
        locked, release = threading.Event(), threading.Event()

        def first(t: Any) -> None:
            t.lock("thing:a", "thing:b")
            # Taken by the time the next statement has run.
            t.execute("SELECT 1")
            events.append("first locked")
            locked.set()
            release.wait(10)
            t.execute("INSERT INTO things (id, name) VALUES (?, ?)", ("a", "first"))
            events.append("first done")

        def second(t: Any) -> None:
            locked.wait(10)
            t.lock("thing:b")
            t.execute("SELECT 1")
            events.append("second locked")
            t.execute("INSERT INTO things (id, name) VALUES (?, ?)", ("b", "second"))

        done = gatherResults([database.runInteraction(first), other.runInteraction(second)])
        yield deferLater(reactor, 0.3, lambda: None)
        self.assertEqual(events, ["first locked"])
        release.set()
        yield done
        self.assertEqual(events, ["first locked", "first done", "second locked"])

    @inlineCallbacks
    def test_rowcountAndExecutemany(self) -> Any:
        """
        C{rowcount} counts changed rows; C{executemany} runs one statement
        for many rows.
        """
        database = yield self.migrated()

        def work(t: Any) -> int:
            t.executemany("INSERT INTO things (id, name) VALUES (?, ?)", [("a", "1"), ("b", "2")])
            return t.execute("UPDATE things SET flag = ?", (False,)).rowcount

        changed = yield database.runInteraction(work)
        self.assertEqual(changed, 2)

    @inlineCallbacks
    def test_send(self) -> Any:
        """
        Sent statements run in order, in the transaction, before the next
        statement executed; those after the last execute, with the commit.
        """
        database = yield self.migrated()
        insert = "INSERT INTO things (id, name) VALUES (?, ?)"

        def work(t: Any) -> Any:
            t.send(insert, ("a", "one"))
            t.send("UPDATE things SET name = ? WHERE id = ?", ("uno", "a"))
            seen = t.execute("SELECT name FROM things").fetchall()
            t.send(insert, ("b", "-- not a comment; nor this"))
            return seen

        seen = yield database.runInteraction(work)
        self.assertEqual(seen, [("uno",)])
        rows = yield database.runQuery("SELECT id, name FROM things ORDER BY id")
        self.assertEqual(rows, [("a", "uno"), ("b", "-- not a comment; nor this")])

    @inlineCallbacks
    def test_sentValues(self) -> Any:
        """
        Values sent arrive as they were, whatever they hold: quotes,
        backslashes, dollar quotes, statement separators, every byte.
        """
        database = yield self.migrated()
        name = "it's \\ a $$ 'test'; DROP TABLE things; --\n/* x"
        data = bytes(range(256))

        def work(t: Any) -> None:
            t.send(
                "INSERT INTO things (id, name, data, big, flag) VALUES (?, ?, ?, ?, ?)",
                ("a", name, data, -(2**62), True),
            )

        yield database.runInteraction(work)
        rows = yield database.runQuery("SELECT name, data, big, flag FROM things")
        self.assertEqual(
            [(r[0], bytes(r[1]), r[2], bool(r[3])) for r in rows], [(name, data, -(2**62), True)]
        )

    @inlineCallbacks
    def test_sendFailsNextExecute(self) -> Any:
        """
        A sent statement's failure is raised by the next statement executed,
        translated as that statement's would be, and the transaction leaves
        nothing behind.
        """
        database = yield self.migrated()
        insert = "INSERT INTO things (id, name) VALUES (?, ?)"
        yield database.runOperation(insert, ("a", "one"))
        after = []

        def work(t: Any) -> None:
            t.send(insert, ("b", "two"))
            t.send(insert, ("c", "one"))
            t.execute("SELECT 1")
            after.append("executed")

        yield self.assertFailure(database.runInteraction(work), UniqueViolation)
        self.assertEqual(after, [])
        rows = yield database.runQuery("SELECT id FROM things")
        self.assertEqual(rows, [("a",)])

    @inlineCallbacks
    def test_sendFailsCommit(self) -> Any:
        """
        A sent statement that no execute follows fails the commit, with the
        same translated error.
        """
        database = yield self.migrated()
        insert = "INSERT INTO things (id, name) VALUES (?, ?)"
        yield database.runOperation(insert, ("a", "one"))

        def work(t: Any) -> None:
            t.send(insert, ("b", "two"))
            t.send(insert, ("a", "three"))

        yield self.assertFailure(database.runInteraction(work), UniqueViolation)
        rows = yield database.runQuery("SELECT id FROM things")
        self.assertEqual(rows, [("a",)])

    @inlineCallbacks
    def test_sentRolledBack(self) -> Any:
        """
        Sent statements of an interaction that raises are never committed,
        whether or not a statement executed after them.
        """
        database = yield self.migrated()
        insert = "INSERT INTO things (id, name) VALUES (?, ?)"

        def sentOnly(t: Any) -> None:
            t.send(insert, ("a", "one"))
            raise RuntimeError("changed my mind")

        def sentAndExecuted(t: Any) -> None:
            t.send(insert, ("b", "two"))
            t.execute("SELECT 1")
            raise RuntimeError("changed my mind")

        yield self.assertFailure(database.runInteraction(sentOnly), RuntimeError)
        yield self.assertFailure(database.runInteraction(sentAndExecuted), RuntimeError)
        rows = yield database.runQuery("SELECT * FROM things")
        self.assertEqual(rows, [])

    @inlineCallbacks
    def test_query(self) -> Any:
        """
        A query's rows are those its statement gives where it stands among
        the others: after what was sent and executed before it, before what
        comes after, whenever they are read.
        """
        database = yield self.migrated()
        insert = "INSERT INTO things (id, name, data) VALUES (?, ?, ?)"

        def work(t: Any) -> Any:
            t.send(insert, ("a", "one", b"\x00\xff"))
            first = t.query("SELECT id, name, data FROM things ORDER BY id")
            inserted = t.query(
                "INSERT INTO things (id, name) VALUES (?, ?) RETURNING name", ("b", "two")
            )
            none = t.query("SELECT id FROM things WHERE id = ?", ("z",))
            t.send("UPDATE things SET name = ? WHERE id = ?", ("uno", "a"))
            counted = t.execute("SELECT count(*) FROM things").fetchone()
            last = t.query("SELECT name FROM things ORDER BY id")
            return (
                [(i, n, bytes(d)) for i, n, d in first.fetchall()],
                inserted.fetchone(),
                none.fetchone(),
                none.fetchall(),
                counted,
                last.fetchall(),
                t.execute("SELECT name FROM things WHERE id = ?", ("a",)).fetchall(),
            )

        seen = yield database.runInteraction(work)
        self.assertEqual(
            seen,
            (
                [("a", "one", b"\x00\xff")],
                ("two",),
                None,
                [],
                (2,),
                [("uno",), ("two",)],
                [("uno",)],
            ),
        )

    @inlineCallbacks
    def test_queryNeverRead(self) -> Any:
        """
        A query whose rows nobody reads still runs, with the commit; one
        whose statement returns no rows gives none.
        """
        database = yield self.migrated()

        def work(t: Any) -> Any:
            t.query("INSERT INTO things (id, name) VALUES (?, ?) RETURNING id", ("a", "one"))
            # No rows to give: none.
            return t.query("INSERT INTO things (id, name) VALUES (?, ?)", ("b", "two")).fetchall()

        self.assertEqual((yield database.runInteraction(work)), [])
        rows = yield database.runQuery("SELECT id FROM things ORDER BY id")
        self.assertEqual(rows, [("a",), ("b",)])

    @inlineCallbacks
    def test_queryFails(self) -> Any:
        """
        A query's failure is raised where its statement goes to the
        database (at the latest, by the read of its rows), translated as an
        execute's, and the transaction leaves nothing behind.
        """
        database = yield self.migrated()
        insert = "INSERT INTO things (id, name) VALUES (?, ?) RETURNING id"
        yield database.runOperation("INSERT INTO things (id, name) VALUES (?, ?)", ("a", "one"))
        reached = []

        def work(t: Any) -> None:
            t.query(insert, ("b", "two"))
            again = t.query(insert, ("c", "one"))
            again.fetchall()
            reached.append("read")

        yield self.assertFailure(database.runInteraction(work), UniqueViolation)
        self.assertEqual(reached, [])
        rows = yield database.runQuery("SELECT id FROM things")
        self.assertEqual(rows, [("a",)])

    @inlineCallbacks
    def test_batch(self) -> Any:
        """
        A batch's statements run in one transaction, its queries' rows are
        there once it has committed (with what it sent before them), its
        calls after the commit are made before its result comes, and its
        result is what it returned.
        """
        database = yield self.migrated()
        order: list[str] = []

        def create(t: Any, name: str) -> Any:
            t.lock("things")
            t.send(
                "INSERT INTO things (id, name, data, big, flag) VALUES (?, ?, ?, ?, ?)",
                ("a", name, b"\x00'\\", 2**40, True),
            )
            rows = t.query("SELECT id, name, data, big, flag FROM things")
            count = t.query("SELECT count(*) FROM things")
            t.afterCommit(lambda: order.append("committed"))
            return lambda: (rows.fetchall(), count.fetchone())

        reader = yield database.runBatch(create, "it's")
        order.append("result")
        rows, count = reader()
        self.assertEqual(
            [(r[0], r[1], bytes(r[2]), r[3], bool(r[4])) for r in rows],
            [("a", "it's", b"\x00'\\", 2**40, True)],
        )
        self.assertEqual(count, (1,))
        self.assertEqual(order, ["committed", "result"])

    @inlineCallbacks
    def test_batchWaitsForNothing(self) -> Any:
        """
        Whatever would wait for the database inside a batch's transaction
        (reading a query's rows before it has returned, executing, fetching,
        a row count) raises C{TypeError}, on every database, and the
        transaction leaves nothing behind.
        """
        database = yield self.migrated()
        insert = "INSERT INTO things (id, name) VALUES (?, ?)"

        def early(t: Any) -> None:
            t.send(insert, ("a", "one"))
            t.query("SELECT id FROM things").fetchall()

        def executes(t: Any) -> None:
            t.send(insert, ("a", "one"))
            t.execute("SELECT id FROM things")

        def many(t: Any) -> None:
            t.executemany(insert, [("a", "one")])

        for interaction in (early, executes, many):
            yield self.assertFailure(database.runBatch(interaction), TypeError)
        yield self.assertFailure(database.runBatch(lambda t: t.fetchone()), TypeError)
        yield self.assertFailure(database.runBatch(lambda t: t.fetchall()), TypeError)
        yield self.assertFailure(database.runBatch(lambda t: t.rowcount), TypeError)
        rows = yield database.runQuery("SELECT id FROM things")
        self.assertEqual(rows, [])

    @inlineCallbacks
    def test_batchFails(self) -> Any:
        """
        A batch whose statement fails fails as a transaction would (a
        unique key's violation as L{UniqueViolation}), leaves nothing
        behind, and the database goes on.
        """
        database = yield self.migrated()
        insert = "INSERT INTO things (id, name) VALUES (?, ?)"
        yield database.runOperation(insert, ("a", "one"))
        committed: list[str] = []

        def create(t: Any) -> None:
            t.send(insert, ("b", "two"))
            t.send(insert, ("c", "one"))
            t.afterCommit(lambda: committed.append("c"))

        yield self.assertFailure(database.runBatch(create), UniqueViolation)
        self.assertEqual(committed, [])
        yield self.assertFailure(database.runOperation(insert, ("a", "again")), UniqueViolation)
        rows = yield database.runQuery("SELECT id FROM things")
        self.assertEqual(rows, [("a",)])

    @inlineCallbacks
    def test_batchesTogether(self) -> Any:
        """
        More batches at once than the database has connections all run,
        each in its own transaction.
        """
        database = yield self.migrated()

        def create(t: Any, n: int) -> Any:
            t.lock("things")
            count = t.query("SELECT count(*) FROM things")
            t.send("INSERT INTO things (id, name) VALUES (?, ?)", (f"id{n}", f"n{n}"))
            return lambda: count.fetchone()[0]

        counts = yield gatherResults(
            [database.runBatch(create, n).addCallback(lambda read: read()) for n in range(20)]
        )
        # Under the lock, each saw those committed before it: 0 to 19.
        self.assertEqual(sorted(counts), list(range(20)))


class SQLiteDatabaseTests(SQLiteMixin, DatabaseTestsMixin, TestCase):
    def reopen(self, database: SQLiteDatabase) -> SQLiteDatabase:
        other = SQLiteDatabase(database.path)
        self.addCleanup(other.close)
        other.start()
        return other

    @inlineCallbacks
    def test_lock(self) -> Any:
        """
        A transaction that locks waits for another connection's writer (a
        second process, the sqlite3 shell) to commit: SQLite's lock is its
        one write lock.  The reactor runs the transaction, so it waits in
        the reactor's thread.
        """
        database = yield self.migrated()
        other = sqlite3.connect(database.path, check_same_thread=False)
        self.addCleanup(other.close)
        other.execute("BEGIN IMMEDIATE")
        other.execute("INSERT INTO things (id, name) VALUES ('a', 'other')")
        events: list[str] = []

        def commitSoon() -> None:
            time.sleep(0.3)
            events.append("other committed")
            other.commit()

        writer = threading.Thread(target=commitSoon)
        writer.start()
        self.addCleanup(writer.join)

        def work(t: Any) -> None:
            t.lock("thing:b")
            events.append("locked")
            t.execute("INSERT INTO things (id, name) VALUES (?, ?)", ("b", "this"))

        yield database.runInteraction(work)
        self.assertEqual(events, ["other committed", "locked"])
        rows = yield database.runQuery("SELECT id, name FROM things ORDER BY id")
        self.assertEqual(rows, [("a", "other"), ("b", "this")])

    def test_inTheReactorsThread(self) -> None:
        """
        A transaction runs in the thread that asks for it (the reactor's),
        and has committed when C{runInteraction} returns: no thread is
        handed it.
        """
        database = self.makeDatabase()
        seen: list[int] = []

        def work(t: Any) -> str:
            seen.append(threading.get_ident())
            t.execute("CREATE TABLE t (x)")
            t.execute("INSERT INTO t VALUES (1)")
            return "done"

        self.assertEqual(self.successResultOf(database.runInteraction(work)), "done")
        self.assertEqual(seen, [threading.get_ident()])
        with sqlite3.connect(database.path) as reader:
            self.assertEqual(reader.execute("SELECT x FROM t").fetchall(), [(1,)])

    def test_afterCommitInCommitOrder(self) -> None:
        """
        What a transaction asked to be called after its commit is called
        before a transaction it asked for runs (the outbox publishes in
        this order).
        """
        database = self.makeDatabase()
        events: list[str] = []

        def first(t: Any) -> None:
            t.afterCommit(lambda: events.append("first committed"))
            database.runInteraction(noting(events, "second"))

        self.successResultOf(database.runInteraction(first))
        self.assertEqual(events, ["first committed", "second runs", "second committed"])

    def test_afterCommitWhenCancelled(self) -> None:
        """
        A transaction whose caller cancels it while it waits its turn still
        runs and commits, and what it asked to be called after its commit
        is called.
        """
        database = self.makeDatabase()
        events: list[str] = []

        def first(t: Any) -> None:
            waiting = database.runInteraction(noting(events, "second"))
            waiting.cancel()
            self.failureResultOf(waiting, CancelledError)

        self.successResultOf(database.runInteraction(first))
        self.assertEqual(events, ["second runs", "second committed"])

    def test_closedWhileQueued(self) -> None:
        """
        A transaction waiting behind the one whose caller closes the
        database fails, and opens no connection again.
        """
        database = self.makeDatabase()
        outcomes: list[Any] = []

        def first(t: Any) -> None:
            database.runInteraction(lambda t: "second").addCallback(lambda _: database.close())
            database.runInteraction(lambda t: "third").addBoth(outcomes.append)

        self.successResultOf(database.runInteraction(first))
        [failure] = outcomes
        self.assertIsInstance(failure.value, DatabaseUnavailable)
        self.assertIsNone(database._connection._connection)

    def test_closed(self) -> None:
        """
        A transaction asked for after C{close} fails, naming the database.
        """
        database = self.makeDatabase()
        database.close()
        failure = self.failureResultOf(database.runQuery("SELECT 1"), DatabaseUnavailable)
        self.assertEqual(str(failure.value), f"{database.description} is closed")


class PostgresTestsMixin(PostgresMixin):
    """
    What the PostgreSQL tests below share.
    """

    @inlineCallbacks
    def oneConnection(self) -> Any:
        """
        A migrated database of one connection: every transaction on it.
        """
        migrated = self.makeDatabase()
        yield migrated.migrate("things", THINGS)
        database = PostgresDatabase(POSTGRES_URL, schema=migrated.schema, poolSize=1)
        self.addCleanup(database.close)
        database.start()
        return database

    def countMessages(self) -> list[str]:
        """
        The queries sent to PostgreSQL from now on, each one message and
        one round trip.
        """
        return recordMessages(self)


class PostgresDatabaseTests(PostgresTestsMixin, DatabaseTestsMixin, TestCase):
    def reopen(self, database: PostgresDatabase) -> PostgresDatabase:
        other = PostgresDatabase(POSTGRES_URL, schema=database.schema)
        self.addCleanup(other.close)
        other.start()
        return other

    @inlineCallbacks
    def test_queriesShareRoundTrip(self) -> Any:
        """
        Queries go with the statement that next waits for the server: with
        the BEGIN and the locks before them, as one message; the first read
        of a query's rows, when nothing has sent it yet, sends it with the
        queries before it.
        """
        database = yield self.migrated()
        yield database.runOperation("INSERT INTO things (id, name) VALUES (?, ?)", ("a", "one"))
        sent = self.countMessages()

        def work(t: Any) -> Any:
            t.lock("thing:a")
            first = t.query("SELECT name FROM things WHERE id = ?", ("a",))
            count = t.query("SELECT count(*) FROM things")
            found = t.execute("SELECT id FROM things").fetchall()
            later = t.query("SELECT data FROM things WHERE id = ?", ("a",))
            also = t.query("SELECT 2")
            return first.fetchall(), count.fetchone(), found, also.fetchone(), later.fetchall()

        seen = yield database.runInteraction(work)
        self.assertEqual(seen, ([("one",)], (1,), [("a",)], (2,), [(None,)]))
        self.assertEqual(len(sent), 3, sent)
        self.assertTrue(sent[0].startswith("BEGIN\n;\nSELECT count(pg_advisory_xact_lock"), sent[0])
        self.assertTrue(sent[0].endswith("\n;\nSELECT id FROM things"), sent[0])
        self.assertTrue(sent[1].startswith("SELECT data FROM things"), sent[1])
        self.assertTrue(sent[1].endswith("\n;\nSELECT 2"), sent[1])
        self.assertEqual(sent[2], "COMMIT")

    @inlineCallbacks
    def test_roundTrips(self) -> Any:
        """
        The BEGIN, the locks and the statements sent go with the next
        statement executed; what is sent after it goes with the COMMIT. A
        statement executed with nothing before it keeps psycopg's
        server-side parameters.  An interaction that says nothing sends
        nothing.
        """
        database = yield self.migrated()
        insert = "INSERT INTO things (id, name) VALUES (?, ?)"
        sent = self.countMessages()

        def create(t: Any) -> None:
            t.lock("thing:a")
            if t.execute("SELECT 1 FROM things WHERE id = ?", ("a",)).fetchone():
                raise AssertionError("a was there")
            t.execute("SELECT count(*) FROM things")
            t.send(insert, ("a", "one"))
            t.send(insert, ("b", "two"))

        yield database.runInteraction(create)
        self.assertEqual(len(sent), 3, sent)
        self.assertTrue(sent[0].startswith("BEGIN\n;\nSELECT count(pg_advisory_xact_lock"), sent[0])
        self.assertEqual(sent[1], "SELECT count(*) FROM things")
        self.assertTrue(sent[2].endswith("\n;\nCOMMIT"), sent[2])
        del sent[:]
        yield database.runOperation("DELETE FROM things WHERE id = ?", ("b",))
        self.assertEqual(len(sent), 1, sent)
        del sent[:]
        yield database.runInteraction(lambda t: None)
        self.assertEqual(sent, [])
        rows = yield database.runQuery("SELECT id FROM things")
        self.assertEqual(rows, [("a",)])

    @inlineCallbacks
    def test_batchOneMessage(self) -> Any:
        """
        A batch is one message, BEGIN to COMMIT; one that says nothing sends
        nothing.  Its transaction is sent and answered in the reactor's
        thread: no thread of the pool runs for it.
        """
        database = yield self.migrated()
        sent = self.countMessages()
        threads: list[str] = []
        self.patch(database._pool, "runInteraction", lambda *a, **k: threads.append("used"))

        def work(t: Any) -> Any:
            t.lock("thing:a")
            t.send("INSERT INTO things (id, name) VALUES (?, ?)", ("a", "one"))
            return t.query("SELECT name FROM things")

        rows = yield database.runBatch(work)
        self.assertEqual(rows.fetchall(), [("one",)])
        self.assertEqual(len(sent), 1, sent)
        self.assertTrue(sent[0].startswith("BEGIN\n;\nSELECT count(pg_advisory_xact_lock"), sent)
        self.assertTrue(sent[0].endswith("\n;\nSELECT name FROM things\n;\nCOMMIT"), sent)
        del sent[:]
        nothing = yield database.runBatch(lambda t: "nothing said")
        self.assertEqual(nothing, "nothing said")
        self.assertEqual(sent, [])
        self.assertEqual(threads, [])

    @inlineCallbacks
    def test_batchConnectionLost(self) -> Any:
        """
        A batch whose connection is lost while it waits fails (it may or may
        not have committed); a connection the server ends while idle is
        dropped when it does; the next batches go on new connections.
        """
        database = yield self.migrated()
        pid = yield database.runBatch(lambda t: t.query("SELECT pg_backend_pid()"))
        pid = pid.fetchone()[0]
        other = self.reopen(database)
        yield other.runInteraction(lambda t: t.execute("SELECT pg_terminate_backend(?)", (pid,)))
        for _ in range(100):
            if len(database._connections) == 0:
                break
            yield deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(len(database._connections), 0)
        waiting = database.runBatch(lambda t: t.query("SELECT pg_backend_pid(), pg_sleep(30)"))
        for _ in range(500):
            rows = yield other.runQuery(
                "SELECT pid FROM pg_stat_activity WHERE state = 'active'"
                " AND query LIKE 'BEGIN%pg_sleep(30)%' AND pid <> pg_backend_pid()"
            )
            if rows:
                break
            yield deferLater(reactor, 0.01, lambda: None)
        yield other.runQuery("SELECT pg_terminate_backend(?)", (rows[0][0],))
        yield self.assertFailure(waiting, ConnectionClosed, psycopg.OperationalError)
        rows = yield database.runQuery("SELECT 1")
        self.assertEqual(rows, [(1,)])

    @inlineCallbacks
    def test_batchRaisesAtOnce(self) -> Any:
        """
        A batch whose interaction raises, on a connection that was free at
        once, fails with what it raised, sends nothing, and gives the
        connection back: the next batch runs on it.
        """
        database = yield self.oneConnection()
        yield database.runQuery("SELECT 1")  # the one connection, open and idle
        sent = self.countMessages()

        def broken(t: Any) -> None:
            t.send("DELETE FROM things")
            raise ZeroDivisionError()

        yield self.assertFailure(database.runBatch(broken), ZeroDivisionError)
        self.assertEqual(sent, [])
        rows = yield database.runQuery("SELECT 2")
        self.assertEqual(rows, [(2,)])

    @inlineCallbacks
    def test_batchFailsBeforeItsInteraction(self) -> Any:
        """
        A batch that fails before its interaction runs (here, finding the
        connection's prepared statements) fails with why, and gives its
        connection back: the next batch runs on it.
        """
        database = yield self.oneConnection()
        yield database.runQuery("SELECT 1")  # the one connection, open and idle
        real = database._preparedOn

        def broken(connection: Any) -> Any:
            self.patch(database, "_preparedOn", real)
            raise ZeroDivisionError()

        self.patch(database, "_preparedOn", broken)
        yield self.assertFailure(database.runQuery("SELECT 2"), ZeroDivisionError)
        rows = yield database.runQuery("SELECT 3")
        self.assertEqual(rows, [(3,)])

    @inlineCallbacks
    def test_batchUnreadable(self) -> Any:
        """
        A batch whose rows cannot be read (a value psycopg cannot load)
        fails with why, and its connection goes back to be used again.
        """
        database = yield self.oneConnection()
        yield self.assertFailure(database.runQuery("SELECT 'infinity'::date"), psycopg.DataError)
        rows = yield database.runQuery("SELECT 2")
        self.assertEqual(rows, [(2,)])

    @inlineCallbacks
    def test_batchCancelled(self) -> Any:
        """
        A batch cancelled while it waits for its answer, or for a
        connection, fails at once with C{CancelledError}; its connection is
        given back only when the answer has come, to the batch that waits
        next, which runs.
        """
        database = yield self.oneConnection()
        yield database.runQuery("SELECT 1")  # the one connection, open and idle
        slow = database.runBatch(lambda t: t.query("SELECT pg_sleep(0.3)"))
        waiting = database.runBatch(lambda t: t.query("SELECT 2"))
        gaveUp = database.runBatch(lambda t: t.query("SELECT 3"))
        for d in (gaveUp, slow):
            d.cancel()
            self.failureResultOf(d, CancelledError)
        rows = yield waiting
        self.assertEqual(rows.fetchall(), [(2,)])
        self.assertEqual(len(database._connections), 1)
        rows = yield database.runQuery("SELECT 4")
        self.assertEqual(rows, [(4,)])

    @inlineCallbacks
    def test_afterCommitWhenCancelled(self) -> Any:
        """
        A transaction whose caller cancels it while it runs (in a thread,
        or as a batch waiting for its answer) commits, and what it asked to
        be called after its commit is called.
        """
        database = yield self.migrated()
        # A batch connection open and idle: the batch is sent at once, and
        # is under way (not waiting for a connection) when cancelled.
        yield database.runQuery("SELECT 1")
        called: list[str] = []

        def threaded(t: Any) -> None:
            t.execute("SELECT pg_sleep(0.2)")
            t.execute(INSERT, ("1", "threaded", None, None, None))
            t.afterCommit(lambda: called.append("threaded"))

        def batch(t: Any) -> None:
            t.query("SELECT pg_sleep(0.2)")
            t.send(INSERT, ("2", "batch", None, None, None))
            t.afterCommit(lambda: called.append("batch"))

        running = [database.runInteraction(threaded), database.runBatch(batch)]
        yield deferLater(reactor, 0.05, lambda: None)
        for d in running:
            d.cancel()
            self.failureResultOf(d, CancelledError)
        for _ in range(200):
            if len(called) == 2:
                break
            yield deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(sorted(called), ["batch", "threaded"])
        rows = yield database.runQuery("SELECT name FROM things ORDER BY name")
        self.assertEqual(rows, [("batch",), ("threaded",)])

    @inlineCallbacks
    def test_closeFailsWaiting(self) -> Any:
        """
        Closing the database fails the batches waiting for a connection.
        """
        database = yield self.oneConnection()
        yield database.runQuery("SELECT 1")  # the one connection, open and idle
        first = database.runBatch(lambda t: t.query("SELECT pg_sleep(0.2)"))
        second = database.runBatch(lambda t: t.query("SELECT 1"))
        yield database.close()
        yield self.assertFailure(second, ConnectionClosed)
        yield self.assertFailure(first, ConnectionClosed)


class PostgresPreparedTests(PostgresTestsMixin, TestCase):
    """
    The statements a connection sends again go as EXECUTEs of statements
    it prepared (L{txplatform.prepared}).
    """

    @inlineCallbacks
    def assertInserted(self, database: PostgresDatabase, count: int) -> Any:
        """
        The things C{count} inserts of the tests below made are there, as
        they were inserted.
        """
        rows = yield database.runQuery("SELECT id, name, data, big, flag FROM things ORDER BY id")
        self.assertEqual(
            [(r[0], r[1], bytes(r[2]), r[3], r[4]) for r in rows],
            [(f"id{n}", f"n{n}", b"\x00'", -n, n == 1) for n in range(count)],
        )

    @inlineCallbacks
    def test_preparedOnSecondUse(self) -> Any:
        """
        A statement's second use in a thread's transaction prepares it, in
        a message of its own before the transaction's, and goes in the
        transaction's one message as its EXECUTE, as does every use after.
        """
        database = yield self.oneConnection()
        sent = self.countMessages()
        for n in range(3):
            values = (f"id{n}", f"n{n}", b"\x00'", -n, n == 1)
            yield database.runInteraction(lambda t, values=values: t.send(INSERT, values))
        self.assertEqual(len(sent), 4, sent)
        self.assertIn("VALUES ('id0', 'n0'", sent[0])
        self.assertEqual(sent[1], PREPARED_INSERT)
        self.assertEqual(
            sent[2],
            "BEGIN\n;\nEXECUTE txp_0('id1', 'n1', decode('0027','hex'), (-1), true)\n;\nCOMMIT",
        )
        self.assertIn("EXECUTE txp_0('id2'", sent[3])
        yield self.assertInserted(database, 3)

    @inlineCallbacks
    def test_preparedAfterBatch(self) -> Any:
        """
        A statement's second use in a batch prepares it after the batch, in
        a message of its own (a PREPARE refused inside the batch would fail
        it): from its third use it goes as its EXECUTE.
        """
        database = yield self.oneConnection()
        sent = self.countMessages()
        for n in range(4):
            yield database.runOperation(INSERT, (f"id{n}", f"n{n}", b"\x00'", -n, n == 1))
        self.assertEqual(len(sent), 5, sent)
        self.assertIn("VALUES ('id0', 'n0'", sent[0])
        self.assertIn("VALUES ('id1', 'n1'", sent[1])
        self.assertEqual(sent[2], PREPARED_INSERT)
        self.assertEqual(
            sent[3],
            "BEGIN\n;\nEXECUTE txp_0('id2', 'n2', decode('0027','hex'), (-2), false)\n;\nCOMMIT",
        )
        self.assertIn("EXECUTE txp_0('id3'", sent[4])
        yield self.assertInserted(database, 4)

    @inlineCallbacks
    def test_off(self) -> Any:
        """
        With C{prepare=False}, statements go as text however often they are
        sent.
        """
        migrated = self.makeDatabase()
        yield migrated.migrate("things", THINGS)
        database = PostgresDatabase(POSTGRES_URL, schema=migrated.schema, poolSize=1, prepare=False)
        self.addCleanup(database.close)
        database.start()
        sent = self.countMessages()
        for n in range(4):
            yield database.runOperation("INSERT INTO things (id, name) VALUES (?, ?)", (n, n))
        self.assertEqual(len(sent), 4, sent)
        self.assertFalse([m for m in sent if "PREPARE" in m or "EXECUTE" in m], sent)

    @inlineCallbacks
    def test_survivesRollback(self) -> Any:
        """
        A transaction that fails and is rolled back leaves the statements
        prepared (PostgreSQL's PREPARE is not transactional, and psycopg is
        not let to DEALLOCATE ALL after a ROLLBACK): the next uses them.
        """
        database = yield self.oneConnection()
        insert = "INSERT INTO things (id, name) VALUES (?, ?)"
        for n in range(2):
            yield database.runOperation(insert, (f"id{n}", f"n{n}"))
        sent = self.countMessages()
        yield self.assertFailure(database.runOperation(insert, ("id0", "again")), UniqueViolation)
        yield database.runOperation(insert, ("id2", "n2"))
        self.assertIn("EXECUTE txp_0('id0', 'again')", sent[0])
        self.assertIn("EXECUTE txp_0('id2', 'n2')", sent[-1])
        rows = yield database.runQuery("SELECT count(*) FROM things")
        self.assertEqual(rows, [(3,)])

    @inlineCallbacks
    def test_refusedGoesAsText(self) -> Any:
        """
        A statement PostgreSQL will not prepare (here, a parameter nothing
        types, which as a quoted literal would be text) goes as text, in the
        same transaction as ever, and is not offered again.
        """
        database = yield self.oneConnection()
        sent = self.countMessages()
        for n in range(3):
            rows = yield database.runQuery("SELECT ? IS NULL", (f"v{n}",))
            self.assertEqual(rows, [(False,)])
        prepares = [m for m in sent if m.startswith("PREPARE")]
        self.assertEqual(prepares, ["PREPARE txp_0(unknown) AS SELECT $1 IS NULL"])
        self.assertEqual(sent[-1], "BEGIN\n;\nSELECT 'v2' IS NULL\n;\nCOMMIT")

    @inlineCallbacks
    def test_escapedValuesAsText(self) -> Any:
        """
        Values that need escaping are not written into an EXECUTE: the
        statement goes as text, escaped by psycopg, prepared or not.
        """
        database = yield self.oneConnection()
        select = "SELECT id FROM things WHERE name = ?"
        yield database.runQuery(select, ("a",))
        yield database.runQuery(select, ("b",))
        sent = self.countMessages()
        rows = yield database.runQuery(select, ("it's",))
        self.assertEqual(rows, [])
        self.assertIn("name = 'it''s'", sent[0])

    @inlineCallbacks
    def test_aloneUnderway(self) -> Any:
        """
        A statement executed alone once the transaction is under way goes as
        the EXECUTE of its prepared statement when there is one, and with
        psycopg's server-side parameters when there is none: it is not
        prepared inside a transaction.
        """
        database = yield self.oneConnection()
        select = "SELECT count(*) FROM things WHERE id = ?"
        other = "SELECT count(*) FROM things WHERE name = ?"
        for _ in range(2):
            yield database.runInteraction(lambda t: t.send(select, ("a",)))
        sent = self.countMessages()

        def work(t: Any) -> Any:
            t.execute("SELECT 1")
            return t.execute(select, ("a",)).fetchall(), t.execute(other, ("n",)).fetchall()

        for _ in range(2):
            seen = yield database.runInteraction(work)
            self.assertEqual(seen, ([(0,)], [(0,)]))
        self.assertEqual(sent[1], "EXECUTE txp_0('a')")
        self.assertEqual(sent[2], "SELECT count(*) FROM things WHERE name = %s")
        self.assertFalse([m for m in sent if "name =" in m and "%s" not in m], sent)


class Connection:
    """
    Stands for a psycopg connection where only its identity counts.
    """


class DatabaseFromURLTests(SynchronousTestCase):
    def test_sqlite(self) -> None:
        """
        C{sqlite:PATH} opens that file; C{sqlite::memory:} a memory database.
        """
        path = self.mktemp()
        database = databaseFromURL(f"sqlite:{path}/a.sqlite")
        self.addCleanup(database.close)
        self.assertIsInstance(database, SQLiteDatabase)
        self.assertEqual(database.path, f"{path}/a.sqlite")
        memory = databaseFromURL("sqlite::memory:")
        self.addCleanup(memory.close)
        self.assertEqual(memory.path, ":memory:")

    def test_postgres(self) -> None:
        """
        PostgreSQL URLs keep libpq's parameters and take our own C{schema}
        and C{pool}; the description hides the password.
        """
        database = databaseFromURL(
            "postgresql://u:secret@db.example:5433/app?schema=account&pool=3&sslmode=require"
        )
        self.addCleanup(database.close)
        self.assertIsInstance(database, PostgresDatabase)
        self.assertEqual(database.schema, "account")
        self.assertNotIn("secret", database.description)
        self.assertIn("sslmode=require", database._pool.connargs[0])
        self.assertNotIn("schema", database._pool.connargs[0])
        self.assertEqual(database._pool.max, 3)

    def test_unknown(self) -> None:
        """
        Other URLs are refused with the forms we take.
        """
        error = self.assertRaises(ValueError, databaseFromURL, "mysql://x")
        self.assertIn("sqlite:PATH", str(error))
        self.assertRaises(ValueError, databaseFromURL, "sqlite:")
        self.assertRaises(ValueError, databaseFromURL, "postgresql://x/y?pool=many")
        self.assertRaises(ValueError, databaseFromURL, "postgresql://x/y?schema=a;drop")
        self.assertRaises(ValueError, databaseFromURL, "postgresql://x/y?schema=Posts")
        self.assertRaises(ValueError, databaseFromURL, "postgresql://x/y?prepare=no")

    def test_refusalHidesPassword(self) -> None:
        """
        A URL refused is quoted in the error without its password.
        """
        for url in (
            "postgresql://u:secret@x/y?pool=many",
            "postgresql://u:secret@x/y?prepare=maybe",
            "mysql://u:secret@x/y",
        ):
            error = self.assertRaises(ValueError, databaseFromURL, url)
            self.assertNotIn("secret", str(error))
            self.assertIn("u:***@x", str(error))

    def test_prepareOption(self) -> None:
        """
        C{prepare=off} is ours, not libpq's: it turns the preparing of
        statements off (L{txplatform.prepared}).
        """
        database = databaseFromURL("postgresql://x/y?prepare=off")
        self.addCleanup(database.close)
        self.assertNotIn("prepare", database._pool.connargs[0])
        self.assertEqual(database._preparedOn(Connection()).limit, 0)
        default = databaseFromURL("postgresql://x/y")
        self.addCleanup(default.close)
        self.assertGreater(default._preparedOn(Connection()).limit, 0)

    def test_passwordHidden(self) -> None:
        """
        A password given as a URL parameter is hidden too.
        """
        database = databaseFromURL("postgresql://u@h/d?password=secret&sslmode=require")
        self.addCleanup(database.close)
        self.assertNotIn("secret", database.description)
        self.assertIn("sslmode=require", database.description)


class SQLiteFileModeTests(SynchronousTestCase):
    """
    Only the process's user reads an SQLite database.
    """

    def test_private(self) -> None:
        """
        A new database's directory is 0700, its file and its journals 0600.
        """
        import stat

        directory = os.path.join(os.path.abspath(self.mktemp()), "data")
        path = os.path.join(directory, "db.sqlite")
        database = SQLiteDatabase(path)
        database.start()
        self.addCleanup(database.close)
        connection = sqlite3.connect(path)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("CREATE TABLE t (x)")
        connection.execute("INSERT INTO t VALUES (1)")
        connection.commit()
        self.addCleanup(connection.close)
        self.assertEqual(stat.S_IMODE(os.stat(directory).st_mode), 0o700)
        for name in os.listdir(directory):
            mode = stat.S_IMODE(os.stat(os.path.join(directory, name)).st_mode)
            self.assertEqual(mode, 0o600, name)
        self.assertIn("db.sqlite-wal", os.listdir(directory))

    def test_looseReported(self) -> None:
        """
        An existing directory or file that others may read is reported.
        """
        from twisted.logger import capturedLogs

        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory, mode=0o755)
        os.chmod(directory, 0o755)
        database = SQLiteDatabase(os.path.join(directory, "db.sqlite"))
        with capturedLogs() as events:
            database.start()
        self.addCleanup(database.close)
        [warning] = [e for e in events if "open to other users" in e["log_format"]]
        self.assertEqual(warning["where"], directory)


class UnavailableTests(TestCase):
    """
    A database that cannot be opened fails with L{DatabaseUnavailable}, in
    one line naming it, whatever the driver says.
    """

    def test_sqliteDirectory(self) -> None:
        """
        An SQLite file whose directory cannot be made (a file is in the
        way).
        """
        blocker = os.path.abspath(self.mktemp())
        with open(blocker, "w") as f:
            f.write("a file, not a directory")
        database = SQLiteDatabase(os.path.join(blocker, "db.sqlite"))
        error = self.assertRaises(DatabaseUnavailable, database.start)
        self.assertIn(f"cannot open sqlite:{blocker}/db.sqlite:", str(error))

    @inlineCallbacks
    def test_sqliteNotADatabase(self) -> Any:
        """
        A file that is not an SQLite database.
        """
        path = os.path.abspath(self.mktemp())
        with open(path, "wb") as f:
            f.write(b"not a database " * 100)
        database = SQLiteDatabase(path)
        database.start()
        self.addCleanup(database.close)
        error = yield self.assertFailure(database.migrate("things", THINGS), DatabaseUnavailable)
        self.assertEqual(str(error), f"cannot open sqlite:{path}: file is not a database")

    def test_sqliteConfigureFails(self) -> None:
        """
        A connection that opened but could not be configured is closed,
        not left behind, and the transaction fails naming the database.
        """
        import txplatform.database as module

        opened: list[Any] = []
        real = sqlite3.connect

        def connect(path: str) -> Any:
            opened.append(real(path))
            return opened[-1]

        def configure(connection: Any) -> None:
            raise sqlite3.OperationalError("disk I/O error")

        self.patch(module.sqlite3, "connect", connect)
        database = SQLiteDatabase(os.path.abspath(self.mktemp()))
        self.patch(database, "_configure", configure)
        database.start()
        self.addCleanup(database.close)
        failure = self.failureResultOf(database.runQuery("SELECT 1"), DatabaseUnavailable)
        self.assertIn("disk I/O error", str(failure.value))
        [connection] = opened
        self.assertRaises(sqlite3.ProgrammingError, connection.execute, "SELECT 1")

    @inlineCallbacks
    def test_postgresMissing(self) -> Any:
        """
        A PostgreSQL database that does not exist: libpq's message, on one
        line.
        """
        requirePostgres()
        name = f"txplatform_missing_{uuid.uuid4().hex[:12]}"
        url = urlunsplit(urlsplit(POSTGRES_URL)._replace(path=f"/{name}", query=""))
        database = databaseFromURL(url, reactor)
        database.start()
        self.addCleanup(database.close)
        error = yield self.assertFailure(database.migrate("things", THINGS), DatabaseUnavailable)
        self.assertIn(f"cannot open {url}: ", str(error))
        self.assertIn(f'database "{name}" does not exist', str(error))
        self.assertNotIn("\n", str(error))
