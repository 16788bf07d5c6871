# -*- test-case-name: tests.test_sqliteconnection -*-
"""
One SQLite connection whose transactions run in the reactor's thread, one
after another (L{txplatform.database.SQLiteDatabase}).

SQLite is a library in the process, not a server: a transaction of a few
statements is tens of microseconds of work on pages the OS has cached, and
with WAL and C{synchronous=NORMAL} its commit writes the log without
waiting for the disk.  Handing that work to a thread and its outcome back
cost more than the work: the thread wakes, takes the GIL from the reactor,
gives it back around each statement, and hands the outcome back through
the reactor's waker (the embedded platform spent about a fifth of a
created post's CPU on it; docs/benchmarks.md).  So the reactor runs them,
and an interaction blocks it for as long as it runs: keep interactions
short (the framework's long ones, re-sealing and counting stored values,
run in the key commands' own processes, whose reactors have nothing else
to do).

SQLite's WAL checkpoint (every thousand pages or so, and on close) also
runs in the committing thread: a checkpoint run from another thread beside
a writer that never stops may never finish, and the log would then grow
without end.
"""

from __future__ import annotations

import sqlite3
from collections import deque
from typing import Any, Callable

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

__all__ = ["SQLiteConnection"]


class SQLiteConnection:
    """
    Runs transactions on one SQLite connection, opened when first needed,
    in the caller's thread (the reactor's).

    A transaction asked for while one runs (by code the running one calls,
    or by a caller hearing of one that ran before) waits for its turn, in
    order, and its Deferred fires once it has run: two transactions never
    share the connection.

    @param connect: Opens the connection; what it raises fails the
        transaction that needed it, and the next one tries again.
    @param description: Names the database in messages.
    """

    log = Logger()

    def __init__(self, connect: Callable[[], sqlite3.Connection], description: str) -> None:
        self._connect = connect
        self.description = description
        self._connection: sqlite3.Connection | None = None
        self._running = False
        self._waiting: deque[
            tuple[Deferred[Any], Callable[..., Any], Any, Callable[[Any], Any] | None]
        ] = deque()

    def run(
        self,
        interaction: Callable[..., Any],
        *args: Any,
        afterCommit: Callable[[Any], Any] | None = None,
    ) -> Deferred[Any]:
        """
        Call C{interaction(cursor, *args)} in a transaction, committed when
        it returns and rolled back if it raises.

        @param afterCommit: Called with the result once committed, before
            any transaction asked for meanwhile runs; what it returns (or
            raises) is the outcome.

        @return: A Deferred of the outcome.
        """
        if self._running or self._waiting:
            waiting: Deferred[Any] = Deferred()
            self._waiting.append((waiting, interaction, args, afterCommit))
            return waiting
        outcome = self._transact(interaction, args, afterCommit)
        # What the transaction asked for runs now, each before its caller
        # hears, and before this one's caller hears.
        while self._waiting:
            waiting, interaction, args, afterCommit = self._waiting.popleft()
            self._transact(interaction, args, afterCommit).chainDeferred(waiting)
        return outcome

    def _transact(
        self,
        interaction: Callable[..., Any],
        args: Any,
        afterCommit: Callable[[Any], Any] | None,
    ) -> Deferred[Any]:
        if self._connection is None:
            try:
                self._connection = self._connect()
            except BaseException:
                return fail()
        connection = self._connection
        self._running = True
        cursor = None
        try:
            cursor = connection.cursor()
            result = interaction(cursor, *args)
            # A query whose rows were not all read would otherwise hold
            # its snapshot, and the log, past the commit.
            cursor.close()
            connection.commit()
        except BaseException:
            failure = Failure()
            # The failure's traceback holds the cursor: close it here, or
            # its statement would hold a snapshot until the cycle is freed.
            self._rollback(connection, cursor)
            return fail(failure)
        finally:
            self._running = False
        if afterCommit is not None:
            try:
                result = afterCommit(result)
            except BaseException:
                return fail()
        return succeed(result)

    def _rollback(self, connection: sqlite3.Connection, cursor: sqlite3.Cursor | None) -> None:
        try:
            if cursor is not None:
                cursor.close()
            connection.rollback()
        except sqlite3.Error:
            self.log.failure("Rolling back on {database} failed", database=self.description)

    def close(self) -> None:
        """
        Close the connection, if open (SQLite checkpoints its log then).
        Closing twice is harmless.
        """
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()
