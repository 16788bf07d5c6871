"""
Tests for L{txplatform.sqliteconnection}.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from txplatform.sqliteconnection import SQLiteConnection


class SQLiteConnectionTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.path = os.path.abspath(self.mktemp())
        self.opened = 0

        def connect() -> sqlite3.Connection:
            self.opened += 1
            connection = sqlite3.connect(self.path)
            connection.execute("PRAGMA journal_mode=WAL")
            return connection

        self.connection = SQLiteConnection(connect, "sqlite:test")
        self.addCleanup(self.connection.close)
        self.successResultOf(self.connection.run(lambda c: c.execute("CREATE TABLE t (x)")))

    def rows(self) -> list[tuple[Any, ...]]:
        """
        What another connection reads of the table: what has committed.
        """
        with sqlite3.connect(self.path) as reader:
            return reader.execute("SELECT x FROM t ORDER BY x").fetchall()

    def test_commits(self) -> None:
        """
        The interaction runs in the caller's thread, with a cursor; what it
        wrote has committed, and its result is in the Deferred, when C{run}
        returns.
        """
        threads: list[int] = []

        def work(cursor: sqlite3.Cursor, value: int, more: int) -> str:
            threads.append(threading.get_ident())
            cursor.executemany("INSERT INTO t VALUES (?)", [(value,), (more,)])
            return "written"

        d = self.connection.run(work, 1, 2)
        self.assertEqual(self.successResultOf(d), "written")
        self.assertEqual(threads, [threading.get_ident()])
        self.assertEqual(self.rows(), [(1,), (2,)])

    def test_rollsBack(self) -> None:
        """
        An interaction that raises fails the Deferred with what it raised,
        and nothing it wrote stays.
        """

        def work(cursor: sqlite3.Cursor) -> None:
            cursor.execute("INSERT INTO t VALUES (1)")
            raise ValueError("no")

        failure = self.failureResultOf(self.connection.run(work), ValueError)
        self.assertEqual(str(failure.value), "no")
        self.assertEqual(self.rows(), [])
        self.successResultOf(self.connection.run(lambda c: c.execute("INSERT INTO t VALUES (2)")))
        self.assertEqual(self.rows(), [(2,)])

    def test_askedWhileRunning(self) -> None:
        """
        A transaction asked for by the one running waits until that one has
        committed, then runs on the same connection, in order with others
        asked for, each seeing what those before it wrote; all have run when
        the first C{run} returns.
        """
        events: list[Any] = []

        def later(cursor: sqlite3.Cursor, name: str) -> str:
            seen = cursor.execute("SELECT x FROM t ORDER BY x").fetchall()
            cursor.execute("INSERT INTO t VALUES (?)", (len(seen) + 1,))
            events.append((name, seen))
            return name

        def first(cursor: sqlite3.Cursor) -> None:
            cursor.execute("INSERT INTO t VALUES (1)")
            for name in ("second", "third"):
                self.connection.run(later, name).addCallback(events.append)
            events.append("first asked")

        self.successResultOf(self.connection.run(first))
        self.assertEqual(
            events,
            ["first asked", ("second", [(1,)]), "second", ("third", [(1,), (2,)]), "third"],
        )
        self.assertEqual(self.rows(), [(1,), (2,), (3,)])

    def test_askedByACaller(self) -> None:
        """
        A caller hearing of a transaction asked for while others wait asks
        for one that runs after them, not before.
        """
        events: list[str] = []

        def record(cursor: sqlite3.Cursor, name: str) -> None:
            events.append(name)

        def first(cursor: sqlite3.Cursor) -> None:
            self.connection.run(record, "second").addCallback(
                lambda _: self.connection.run(record, "fourth")
            )
            self.connection.run(record, "third")

        self.successResultOf(self.connection.run(first))
        self.assertEqual(events, ["second", "third", "fourth"])

    def test_afterCommit(self) -> None:
        """
        C{afterCommit} is called with the result once committed, in commit
        order: before a transaction the interaction asked for runs.  What it
        returns is the outcome; what it raises fails it.
        """
        events: list[str] = []

        def second(cursor: sqlite3.Cursor) -> str:
            events.append("second runs")
            return "second"

        def first(cursor: sqlite3.Cursor) -> str:
            self.connection.run(second, afterCommit=lambda r: events.append(r)).addCallback(
                lambda _: events.append("second heard")
            )
            return "first"

        def committed(result: str) -> str:
            events.append(result)
            return result + " committed"

        d = self.connection.run(first, afterCommit=committed)
        self.assertEqual(self.successResultOf(d), "first committed")
        self.assertEqual(events, ["first", "second runs", "second", "second heard"])

        def broken(result: object) -> None:
            raise ValueError("after")

        d = self.connection.run(lambda c: None, afterCommit=broken)
        self.assertEqual(str(self.failureResultOf(d, ValueError).value), "after")

    def test_openFails(self) -> None:
        """
        A connection that cannot be opened fails the transaction with what
        opening raised; the next one tries again.
        """
        attempts: list[int] = []

        def connect() -> sqlite3.Connection:
            attempts.append(1)
            if len(attempts) == 1:
                raise OSError("not yet")
            return sqlite3.connect(":memory:")

        connection = SQLiteConnection(connect, "sqlite:flaky")
        self.addCleanup(connection.close)
        failure = self.failureResultOf(connection.run(lambda c: None), OSError)
        self.assertEqual(str(failure.value), "not yet")
        self.assertEqual(self.successResultOf(connection.run(lambda c: 7)), 7)
        self.assertEqual(len(attempts), 2)

    def test_unusable(self) -> None:
        """
        A connection that cannot even give a cursor fails each transaction
        asked of it, and none waits behind one that never ended.
        """

        def connect() -> sqlite3.Connection:
            connection = sqlite3.connect(":memory:")
            connection.close()
            return connection

        connection = SQLiteConnection(connect, "sqlite:closed")
        for _ in range(2):
            self.failureResultOf(connection.run(lambda c: None), sqlite3.ProgrammingError)
        # Its rollbacks failed too, and were logged.
        self.assertEqual(len(self.flushLoggedErrors(sqlite3.ProgrammingError)), 2)

    def test_unreadRowsReleased(self) -> None:
        """
        A query whose rows were not all read holds no snapshot past the
        commit: another connection can checkpoint the whole log.
        """
        self.successResultOf(
            self.connection.run(lambda c: c.executemany("INSERT INTO t VALUES (?)", [(1,), (2,)]))
        )
        kept: list[sqlite3.Cursor] = []

        def readOne(cursor: sqlite3.Cursor) -> Any:
            kept.append(cursor)  # as a reader returned for later might
            return cursor.execute("SELECT x FROM t").fetchone()

        self.assertEqual(self.successResultOf(self.connection.run(readOne)), (1,))
        with sqlite3.connect(self.path, timeout=0) as other:
            busy, _, _ = other.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        self.assertEqual(busy, 0)

    def test_failedReleasesRows(self) -> None:
        """
        A query whose rows were not all read by an interaction that then
        failed holds no snapshot either, though the failure keeps the
        cursor.
        """
        self.successResultOf(
            self.connection.run(lambda c: c.executemany("INSERT INTO t VALUES (?)", [(1,), (2,)]))
        )

        def readOneAndFail(cursor: sqlite3.Cursor) -> None:
            cursor.execute("SELECT x FROM t").fetchone()
            raise ValueError("no")

        failure = self.failureResultOf(self.connection.run(readOneAndFail), ValueError)
        with sqlite3.connect(self.path, timeout=0) as other:
            busy, _, _ = other.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        self.assertEqual(busy, 0)
        del failure

    def test_close(self) -> None:
        """
        C{close} closes the connection; closing twice, or one never opened,
        is harmless.
        """
        opened = self.opened
        self.connection.close()
        self.connection.close()
        self.assertEqual(self.opened, opened)
        SQLiteConnection(lambda: sqlite3.connect(":memory:"), "sqlite:unused").close()
