# -*- test-case-name: tests.test_database -*-
"""
Relational storage: SQLite for the embedded default and single replicas,
its transactions run by the reactor (L{txplatform.sqliteconnection}), and
PostgreSQL (psycopg 3) in production, on L{twisted.enterprise.adbapi}'s
pool of threads.  A PostgreSQL transaction that reads nothing before its
COMMIT (a batch, L{IDatabase.runBatch}) goes from the reactor instead,
through L{txplatform.pgconnections}.

Stores write their SQL once: C{?} placeholders and a few type names in
braces (C{{bytes}}, C{{id}}, C{{bigint}}, C{{bool}}, C{{serial}}) that each
dialect spells its own way.  Unique-key violations surface as
L{UniqueViolation} whatever the driver.
"""

from __future__ import annotations

import hashlib
import os
import re
import sqlite3
import stat
import time
import zlib
from functools import lru_cache, partial
from typing import Any, Callable, Iterable, Sequence
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit
from weakref import WeakKeyDictionary

from attrs import frozen
from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from . import traces
from .context import Origin, handling
from .interfaces import IDatabase, IRows, ITransaction
from .literals import executed, inlined
from .metrics import DATABASE_TRANSACTION_SECONDS, DATABASE_WAIT_SECONDS
from .pgconnections import ReactorConnection, ReactorConnections
from .prepared import PreparedStatements
from .sqliteconnection import SQLiteConnection

__all__ = [
    "Migration",
    "SQLiteDatabase",
    "PostgresDatabase",
    "UniqueViolation",
    "IntegrityError",
    "DatabaseUnavailable",
    "databaseFromURL",
]


class IntegrityError(Exception):
    """
    A constraint of the schema refused a write.
    """


class UniqueViolation(IntegrityError):
    """
    A write would have duplicated a unique key.
    """


class DatabaseUnavailable(Exception):
    """
    No connection to the database could be opened (no such database, no
    server, refused credentials); the message says which database and why,
    in one line.
    """


class _Pool(adbapi.ConnectionPool):
    """
    A connection pool whose failures to connect are L{DatabaseUnavailable}:
    a process that cannot reach its database at start says so in one line
    (the driver's own errors are indistinguishable from a failed query).

    @ivar description: The database, for messages (no password).
    """

    description = ""

    def connect(self) -> Any:
        try:
            return super().connect()
        except self.dbapi.Error as e:
            why = " ".join(str(e).split())  # libpq's messages span lines
            raise DatabaseUnavailable(f"cannot open {self.description}: {why}") from e


@frozen(order=True)
class Migration:
    """
    One step of a component's schema.

    @ivar version: Applied in increasing order, once per database.
    @ivar statements: SQL statements, with the dialect's type names in braces.
    @ivar reindex: Tables whose blind indexes this step computes again
        from their sealed values, after its statements (when how a value
        is normalised before indexing changed): the service does it, with
        its keys (see L{IDatabase.migrate}).
    """

    version: int
    description: str
    statements: tuple[str, ...]
    reindex: tuple[str, ...] = ()


_MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    component TEXT NOT NULL,
    version INTEGER NOT NULL,
    description TEXT NOT NULL,
    applied_at {bigint} NOT NULL,
    PRIMARY KEY (component, version)
)"""


@implementer(IRows)
class _Rows:
    """
    The rows of a query: there when its statement has run, or fetched by
    running every statement waiting to go (C{flush}) on the first read.
    """

    def __init__(
        self,
        rows: list[tuple[Any, ...]] | None = None,
        flush: Callable[[], None] | None = None,
    ) -> None:
        self._rows = rows
        self._flush = flush

    def _arrived(self, rows: list[tuple[Any, ...]]) -> None:
        self._rows = rows
        self._flush = None

    def fetchall(self) -> list[tuple[Any, ...]]:
        if self._rows is None and self._flush is not None:
            self._flush()
        if self._rows is None:
            raise RuntimeError("this query's statement did not run")
        return self._rows

    def fetchone(self) -> tuple[Any, ...] | None:
        rows = self.fetchall()
        return rows[0] if rows else None


class _Caused:
    """
    What every kind of transaction tells about its cause, and keeps to
    call after its commit.
    """

    _cause: Origin
    _committed: list[Callable[[], Any]]

    @property
    def traceParent(self) -> str | None:
        return self._cause.traceParent

    @property
    def traceState(self) -> str | None:
        return self._cause.traceState

    @property
    def correlationId(self) -> str | None:
        return self._cause.correlationId

    def afterCommit(self, f: Callable[[], Any]) -> None:
        self._committed.append(f)


@implementer(ITransaction)
class _Transaction(_Caused):
    """
    The cursor an interaction sees: translates SQL and driver errors.
    """

    def __init__(
        self,
        cursor: Any,
        database: _Database,
        committed: list[Callable[[], Any]],
        cause: Origin | None = None,
    ) -> None:
        self._cursor = cursor
        self._database = database
        self._committed = committed
        self._cause = cause if cause is not None else Origin()

    def execute(self, sql: str, params: Sequence[Any] = ()) -> _Transaction:
        try:
            self._cursor.execute(self._database._translate(sql), tuple(params))
        except self._database._driverIntegrityError as e:
            raise self._database._integrityError(e) from e
        return self

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> _Transaction:
        try:
            self._cursor.executemany(self._database._translate(sql), [tuple(r) for r in rows])
        except self._database._driverIntegrityError as e:
            raise self._database._integrityError(e) from e
        return self

    def send(self, sql: str, params: Sequence[Any] = ()) -> None:
        # SQLite is in the process: nothing to save by waiting.
        self.execute(sql, params)

    def query(self, sql: str, params: Sequence[Any] = ()) -> _Rows:
        return _Rows(self.execute(sql, params).fetchall())

    def finish(self) -> None:
        """
        Called once the interaction has returned, before the commit.
        """

    def lock(self, *names: str) -> None:
        if names:
            self._database._lock(self, sorted(set(names)))

    def fetchone(self) -> tuple[Any, ...] | None:
        return self._cursor.fetchone()

    def fetchall(self) -> list[tuple[Any, ...]]:
        return self._cursor.fetchall()

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount


def _text(
    name: str | None,
    sql: str,
    params: Sequence[Any],
    binder: Callable[[], Any],
    translate: Callable[[str], str],
) -> str:
    """
    C{sql} with C{params}, as a batch's text: the EXECUTE of the statement
    prepared as C{name}, if there is one and the values go into it; else the
    statement with its values written in, by L{txplatform.literals} where
    they need no escaping, by psycopg's C{mogrify} (of C{binder()}) where
    they do.
    """
    if name is not None:
        text = executed(name, params)
        if text is not None:
            return text
    text = inlined(sql, params)
    if text is not None:
        return text
    return binder().mogrify(translate(sql), tuple(params))  # type: ignore[no-any-return]


class _BatchingTransaction(_Transaction):
    """
    A PostgreSQL transaction that sends the statements whose outcome
    nobody reads (L{send}) with the next statement that is waited for, or
    with the COMMIT: one round trip, one message, instead of one each.

    The connection is in autocommit mode and the transaction says BEGIN
    itself, so that the BEGIN, too, goes with the first statement (psycopg
    would send it alone).  A batch is one simple query, its parameters
    written in on this side (L{txplatform.literals} for the values that need
    no escaping, psycopg's C{ClientCursor.mogrify} for the rest), and a
    statement the connection sends again and again goes in it as the
    EXECUTE of the statement it prepared (L{txplatform.prepared}).  A
    statement waited for alone, once the transaction is under way, goes as
    such an EXECUTE if there is one, else with psycopg's server-side
    parameters.
    """

    def __init__(self, cursor: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(cursor, *args, **kwargs)
        self._pending = ["BEGIN"]
        # The queries among them, by their place in the batch.
        self._queries: dict[int, _Rows] = {}
        self._begun = False
        self._binder: Any = None

    def _bound(self, sql: str, params: Sequence[Any]) -> str:
        statements = self._database._preparedOn(self._cursor.connection)
        # Prepared only before the transaction begins: a PREPARE that fails
        # then leaves no transaction aborted, and the statement goes as text.
        name = statements.name(sql, params, None if self._begun else self._prepare)
        return _text(name, sql, params, self._bindsRest, self._database._translate)

    def _bindsRest(self) -> Any:
        if self._binder is None:
            self._binder = self._database._clientCursor(self._cursor.connection)
        return self._binder

    def _prepare(self, statement: str) -> bool:
        try:
            self._cursor.execute(statement)
        except self._database._driverProgrammingErrors:
            return False
        return True

    def send(self, sql: str, params: Sequence[Any] = ()) -> None:
        self._pending.append(self._bound(sql, params))

    def query(self, sql: str, params: Sequence[Any] = ()) -> _Rows:
        rows = _Rows(flush=lambda: self._flush([]))
        self._queries[len(self._pending)] = rows
        self._pending.append(self._bound(sql, params))
        return rows

    def execute(self, sql: str, params: Sequence[Any] = ()) -> _Transaction:
        if not self._pending:
            # Alone, in a transaction under way: as a statement the
            # connection prepared, or with psycopg's server-side parameters.
            name = self._database._preparedOn(self._cursor.connection).name(sql, params, None)
            text = None if name is None else executed(name, params)
            if text is None:
                return super().execute(sql, params)
            self._flush([text])
            return self
        self._flush([self._bound(sql, params)])
        return self

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> _Transaction:
        if self._pending:
            self._flush([])
        return super().executemany(sql, rows)

    def finish(self) -> None:
        if self._begun or len(self._pending) > 1:
            self._flush(["COMMIT"])
        # else: nothing was said, so there is nothing to commit.

    def _flush(self, last: list[str]) -> None:
        statements = self._pending + last
        queries = self._queries
        self._pending = []
        self._queries = {}
        self._begun = True
        try:
            # Each on its own line: a statement ending in a -- comment
            # does not swallow the next.
            self._cursor.execute("\n;\n".join(statements))
        except self._database._driverIntegrityError as e:
            raise self._database._integrityError(e) from e
        # One result per statement, in order: the queries' rows are kept,
        # and the last is the one the caller asked for.
        for index in range(len(statements)):
            if index in queries:
                # A statement that returns no rows (an INSERT without
                # RETURNING) has none to give, as on SQLite.
                described = self._cursor.description is not None
                queries[index]._arrived(self._cursor.fetchall() if described else [])
            if not self._cursor.nextset():
                break


_BATCH_ONLY = (
    "a batch (runBatch) sends and queries only, and reads its rows once it has"
    " committed: use runInteraction to wait for a statement inside a transaction"
)


def _tooEarly() -> None:
    raise TypeError(_BATCH_ONLY)


class _BatchOnly:
    """
    What a batch's transaction refuses (L{IDatabase.runBatch}): everything
    that waits for the server inside the transaction.
    """

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        raise TypeError(_BATCH_ONLY)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> Any:
        raise TypeError(_BATCH_ONLY)

    def fetchone(self) -> Any:
        raise TypeError(_BATCH_ONLY)

    def fetchall(self) -> Any:
        raise TypeError(_BATCH_ONLY)

    @property
    def rowcount(self) -> int:
        raise TypeError(_BATCH_ONLY)


@implementer(ITransaction)
class _HeldTransaction(_Caused, _BatchOnly):
    """
    A transaction run in a thread, held to what a batch may do: its
    queries' rows are read once its interaction has returned.  So that a
    batch that reads too early fails on SQLite as it would on PostgreSQL.
    """

    def __init__(self, transaction: _Transaction) -> None:
        self._transaction = transaction
        self._cause = transaction._cause
        self._committed = transaction._committed
        self._held: list[tuple[_Rows, IRows]] = []

    def send(self, sql: str, params: Sequence[Any] = ()) -> None:
        self._transaction.send(sql, params)

    def query(self, sql: str, params: Sequence[Any] = ()) -> _Rows:
        held = _Rows(flush=_tooEarly)
        self._held.append((held, self._transaction.query(sql, params)))
        return held

    def lock(self, *names: str) -> None:
        self._transaction.lock(*names)

    def release(self) -> None:
        for held, rows in self._held:
            held._arrived(rows.fetchall())


class _Held:
    """
    C{interaction}, run as a batch in a thread's transaction.
    """

    def __init__(self, interaction: Callable[..., Any]) -> None:
        self._interaction = interaction
        self.__name__ = getattr(interaction, "__name__", "?")

    def __call__(self, transaction: _Transaction, *args: Any, **kwargs: Any) -> Any:
        held = _HeldTransaction(transaction)
        result = self._interaction(held, *args, **kwargs)
        held.release()
        return result


@implementer(ITransaction)
class _ReactorTransaction(_Caused, _BatchOnly):
    """
    A batch's transaction on a L{ReactorConnection}: its statements, bound
    as L{_BatchingTransaction} binds them, are gathered into one simple
    query (BEGIN, the statements, COMMIT), sent once the interaction has
    returned; its queries' rows arrive with the answer.

    A statement due to be prepared (L{txplatform.prepared}) is, after the
    batch, alone: a PREPARE that failed inside the batch would fail it.
    """

    def __init__(
        self,
        connection: ReactorConnection,
        database: PostgresDatabase,
        committed: list[Callable[[], Any]],
        cause: Origin | None,
    ) -> None:
        self._connection = connection
        self._database = database
        self._committed = committed
        self._cause = cause if cause is not None else Origin()
        self._statements = ["BEGIN"]
        # The queries among them, by their place in the batch.
        self.queries: dict[int, _Rows] = {}
        # PREPAREs due, run after the batch.
        self.prepares: list[str] = []
        self._prepared = database._preparedOn(connection.connection)

    def _later(self, statement: str) -> None:
        self.prepares.append(statement)

    def _bound(self, sql: str, params: Sequence[Any]) -> str:
        name = self._prepared.name(sql, params, self._later)
        return _text(name, sql, params, self._bindsRest, self._database._translate)

    def _bindsRest(self) -> Any:
        if self._connection.binder is None:
            self._connection.binder = self._database._clientCursor(self._connection.connection)
        return self._connection.binder

    def send(self, sql: str, params: Sequence[Any] = ()) -> None:
        self._statements.append(self._bound(sql, params))

    def query(self, sql: str, params: Sequence[Any] = ()) -> _Rows:
        rows = _Rows(flush=_tooEarly)
        self.queries[len(self._statements)] = rows
        self._statements.append(self._bound(sql, params))
        return rows

    def lock(self, *names: str) -> None:
        if names:
            self._database._lock(self, sorted(set(names)))

    def text(self) -> str | None:
        """
        The batch as one simple query, or None if it says nothing.
        """
        if len(self._statements) == 1:
            return None
        # Each on its own line: a statement ending in a -- comment does not
        # swallow the next.
        return "\n;\n".join([*self._statements, "COMMIT"])


class _Database:
    """
    What both dialects share.
    """

    _transactionType = _Transaction

    log = Logger()
    dialect = ""
    _closed = False
    _types: dict[str, str] = {}
    _driverIntegrityError: type[BaseException] = Exception

    def __init__(self, description: str) -> None:
        self.description = description
        self._waits = DATABASE_WAIT_SECONDS.labels(description)
        self._durations = DATABASE_TRANSACTION_SECONDS.labels(description)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.description}>"

    def start(self) -> None:
        """
        Make ready to run transactions.
        """

    def _translate(self, sql: str) -> str:
        return sql

    def _integrityError(self, error: BaseException) -> IntegrityError:
        raise NotImplementedError

    def ddl(self, statement: str) -> str:
        """
        C{statement} with the dialect's type names filled in.
        """
        return statement.format_map(self._types)

    def runInteraction(
        self, interaction: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> Deferred[Any]:
        cause, span = self._cause(interaction)
        d = self._transact(interaction, args, kwargs, cause)
        if span is not None:
            d.addBoth(traces.endSpan, span)
        return d

    def _transact(
        self, interaction: Callable[..., Any], args: Any, kwargs: Any, cause: Origin | None
    ) -> Deferred[Any]:
        """
        Run C{interaction} in a transaction of a connection of this
        database's (L{_interact}), and what it asked for after its commit
        once committed (L{_afterCommit}).
        """
        raise NotImplementedError

    def runBatch(self, interaction: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred[Any]:
        # As any other interaction, but held to what a batch may do, so
        # that one written against SQLite runs on PostgreSQL.
        return self.runInteraction(_Held(interaction), *args, **kwargs)

    def _cause(self, interaction: Callable[..., Any]) -> tuple[Origin | None, Any]:
        """
        What the handler running now handles, if any (its correlation id
        goes to the events staged in the transaction) and, within its span
        (current while its synchronous part runs), one span for the
        transaction, waiting for a connection included.
        """
        handled = handling()
        cause = None if handled is None else Origin(correlationId=handled.correlationId)
        span = None
        if traces.enabled():
            span = traces.startChildOfCurrent(
                "db.transaction",
                {
                    "db.system.name": self.dialect,
                    "code.function.name": getattr(interaction, "__name__", "?"),
                },
            )
            if span is not None:
                cause = Origin(
                    correlationId=cause.correlationId if cause is not None else None,
                    traceParent=traces.traceParentOf(span),
                    traceState=traces.traceStateOf(span),
                )
        return cause, span

    def _interact(
        self,
        cursor: Any,
        interaction: Callable[..., Any],
        args: Any,
        kw: Any,
        committed: list[Callable[[], Any]],
        queued: float,
        cause: Origin | None = None,
    ) -> Any:
        # Where the connection is: the wait is the time the transaction
        # queued for it.
        started = time.monotonic()
        self._waits.observe(started - queued)
        # A retried interaction (adbapi reconnects once) starts afresh.
        del committed[:]
        transaction = self._transactionType(cursor, self, committed, cause)
        try:
            result = interaction(transaction, *args, **kw)
            transaction.finish()
            return result
        finally:
            self._durations.observe(time.monotonic() - started)

    def _afterCommit(self, result: Any, committed: list[Callable[[], Any]]) -> Any:
        for f in committed:
            try:
                f()
            except Exception:
                self.log.failure("A call after a commit failed")
        return result

    def runQuery(self, sql: str, params: Sequence[Any] = ()) -> Deferred[list[tuple[Any, ...]]]:
        return self.runInteraction(lambda t: t.execute(sql, params).fetchall())

    def runOperation(self, sql: str, params: Sequence[Any] = ()) -> Deferred[None]:
        return self.runInteraction(lambda t: t.send(sql, params))

    def migrate(
        self,
        component: str,
        migrations: Iterable[Migration],
        reindex: Callable[[ITransaction, str], object] | None = None,
    ) -> Deferred[list[int]]:
        ordered = sorted(migrations, key=lambda m: m.version)
        versions = [m.version for m in ordered]
        if len(set(versions)) != len(versions):
            raise ValueError(f"duplicate migration versions for {component}: {versions}")
        if reindex is None and any(m.reindex for m in ordered):
            raise ValueError(f"{component} has migrations that re-index tables: give reindex")
        d = self.runInteraction(self._migrate, component, ordered, reindex)

        def report(applied: list[int]) -> list[int]:
            if applied:
                self.log.info(
                    "Migrated {component} on {database} to version {version}",
                    component=component,
                    database=self.description,
                    version=applied[-1],
                )
            return applied

        return d.addCallback(report)

    def _lockForMigrations(self, transaction: _Transaction) -> None:
        raise NotImplementedError

    def _lock(self, transaction: _Transaction, names: list[str]) -> None:
        raise NotImplementedError

    def _migrate(
        self,
        transaction: _Transaction,
        component: str,
        migrations: list[Migration],
        reindex: Callable[[ITransaction, str], object] | None,
    ) -> list[int]:
        self._lockForMigrations(transaction)
        transaction.execute(self.ddl(_MIGRATIONS_TABLE))
        transaction.execute(
            "SELECT version FROM schema_migrations WHERE component = ?", (component,)
        )
        done = {row[0] for row in transaction.fetchall()}
        unknown = done - {m.version for m in migrations}
        if unknown:
            self.log.warn(
                "{component} schema has versions {versions} this code does not know;"
                " a newer release has run against {database}",
                component=component,
                versions=sorted(unknown),
                database=self.description,
            )
        applied = []
        for migration in migrations:
            if migration.version in done:
                continue
            for statement in migration.statements:
                transaction.execute(self.ddl(statement))
            for table in migration.reindex:
                assert reindex is not None
                reindex(transaction, table)
            transaction.execute(
                "INSERT INTO schema_migrations (component, version, description, applied_at)"
                " VALUES (?, ?, ?, ?)",
                (component, migration.version, migration.description, int(time.time() * 1000)),
            )
            applied.append(migration.version)
        return applied

    def close(self) -> Deferred[None]:
        """
        Close every connection; closing twice is harmless.
        """
        if not self._closed:
            self._closed = True
            self._closeConnections()
        return succeed(None)

    def _closeConnections(self) -> None:
        raise NotImplementedError


@implementer(IDatabase)
class SQLiteDatabase(_Database):
    """
    An SQLite file (or C{:memory:}), with one connection whose transactions
    the reactor runs, one at a time (L{txplatform.sqliteconnection}): SQLite
    has a single writer, and one connection keeps that honest without lock
    waits.
    """

    dialect = "sqlite"
    _types = {
        "bytes": "BLOB",
        "id": "TEXT",
        "bigint": "INTEGER",
        "bool": "INTEGER",
        "serial": "INTEGER PRIMARY KEY AUTOINCREMENT",
    }
    _driverIntegrityError = sqlite3.IntegrityError

    def __init__(self, path: str) -> None:
        super().__init__(f"sqlite:{path}")
        self.path = path
        self._connection = SQLiteConnection(self._connect, self.description)

    def start(self) -> None:
        """
        Create the file's directory (mode 0700) and the file (0600) if need
        be, reporting looser modes of existing ones.  SQLite gives its
        journals the file's mode; the connection opens when first needed.

        @raise DatabaseUnavailable: the directory or the file cannot be
            created.
        """
        if self.path != ":memory:":
            directory = os.path.dirname(os.path.abspath(self.path))
            try:
                os.makedirs(directory, mode=0o700, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
            except OSError as e:
                raise DatabaseUnavailable(f"cannot open {self.description}: {e}") from e
            os.close(fd)
            for where in (directory, self.path):
                mode = stat.S_IMODE(os.stat(where).st_mode)
                if mode & 0o077:
                    self.log.warn(
                        "{where} is open to other users (mode {mode:o}): the data in it is"
                        " sealed, but its size, its rows and their times are not; chmod it"
                        " 0700 (a directory) or 0600 (a file)",
                        where=where,
                        mode=mode,
                    )

    def _connect(self) -> sqlite3.Connection:
        if self._closed:
            # A transaction queued behind the one that closed the database.
            raise DatabaseUnavailable(f"{self.description} is closed")
        try:
            connection = sqlite3.connect(self.path)
        except sqlite3.Error as e:
            raise DatabaseUnavailable(f"cannot open {self.description}: {e}") from e
        try:
            self._configure(connection)
        except sqlite3.Error as e:
            # Not kept, so closed now: the next transaction opens another.
            connection.close()
            raise DatabaseUnavailable(f"cannot open {self.description}: {e}") from e
        return connection

    def _transact(
        self, interaction: Callable[..., Any], args: Any, kwargs: Any, cause: Origin | None
    ) -> Deferred[Any]:
        if self._closed:
            return fail(DatabaseUnavailable(f"{self.description} is closed"))
        committed: list[Callable[[], Any]] = []
        # Called in commit order, before a transaction the interaction
        # asked for runs (the outbox publishes in this order).
        return self._connection.run(
            self._interact,
            interaction,
            args,
            kwargs,
            committed,
            time.monotonic(),
            cause,
            afterCommit=partial(self._afterCommit, committed=committed),
        )

    def _closeConnections(self) -> None:
        self._connection.close()

    @staticmethod
    def _configure(connection: sqlite3.Connection) -> None:
        # WAL lets readers (backups, the sqlite3 shell) work beside the
        # writer; NORMAL sync is durable across process crashes in WAL mode.
        # Switching a new file to WAL needs it to itself: retry while
        # another connection holds it, for five seconds at most (before the
        # busy timeout is set, which each attempt would wait out in full).
        for attempt in range(100):
            try:
                connection.execute("PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or attempt == 99:
                    raise
                time.sleep(0.05)
        # Another process's writer (the sqlite3 shell, a second replica)
        # is waited for, in the reactor's thread: SQLite's own writers hold
        # the lock for as long as one transaction.
        connection.execute("PRAGMA busy_timeout=5000")
        connection.execute("PRAGMA synchronous=NORMAL")
        connection.execute("PRAGMA foreign_keys=ON")

    def _lockForMigrations(self, transaction: _Transaction) -> None:
        # Python's sqlite3 runs DDL outside a transaction unless one is open:
        # open one, and take the write lock now.
        transaction.execute("BEGIN IMMEDIATE")

    def _lock(self, transaction: _Transaction, names: list[str]) -> None:
        # SQLite has one writer at a time: taking the write lock at once
        # serialises this transaction with every other writer.
        try:
            transaction.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as e:
            if "within a transaction" not in str(e):
                raise

    def _integrityError(self, error: BaseException) -> IntegrityError:
        if "UNIQUE constraint failed" in str(error) or "PRIMARY KEY" in str(error):
            return UniqueViolation(str(error))
        return IntegrityError(str(error))


@lru_cache(maxsize=4096)
def _lockKey(name: str) -> int:
    """
    A lock name as the signed 64-bit key PostgreSQL's advisory locks take.
    (Kept: a login locks the same few keys again each time.)
    """
    digest = hashlib.blake2b(name.encode("utf-8"), digest_size=8, person=b"txplatform").digest()
    return int.from_bytes(digest, "big", signed=True)


@lru_cache(maxsize=1024)
def _pyformat(sql: str) -> str:
    return sql.replace("%", "%%").replace("?", "%s")


@implementer(IDatabase)
class PostgresDatabase(_Database):
    """
    A PostgreSQL database through psycopg 3.

    @param conninfo: A libpq connection string or URI.
    @param schema: Use (and create) this schema instead of C{public}; lets
        services share a database, and tests isolate themselves.
    @param prepare: Prepare the statements sent again and again
        (L{txplatform.prepared}); off for a connection pooler that hands a
        transaction any server connection (PgBouncer in transaction mode),
        where a statement prepared on one is unknown on the next.
    """

    dialect = "postgresql"
    _transactionType = _BatchingTransaction
    _types = {
        "bytes": "BYTEA",
        # Ids are compared and ordered bytewise, whatever the locale.
        "id": 'TEXT COLLATE "C"',
        "bigint": "BIGINT",
        "bool": "BOOLEAN",
        "serial": "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
    }

    def __init__(
        self,
        conninfo: str,
        schema: str | None = None,
        reactor: Any = None,
        poolSize: int = 8,
        prepare: bool = True,
    ) -> None:
        import psycopg
        import psycopg.adapt

        self._driverIntegrityError = psycopg.IntegrityError
        self._uniqueViolation = psycopg.errors.UniqueViolation
        self._clientCursor = psycopg.ClientCursor
        # What PostgreSQL answers a statement it cannot prepare; a lost
        # connection is not that, and fails the transaction as ever.
        self._driverProgrammingErrors = (
            psycopg.ProgrammingError,
            psycopg.DataError,
            psycopg.NotSupportedError,
        )
        self._prepared: WeakKeyDictionary[Any, PreparedStatements] = WeakKeyDictionary()
        self._prepare = prepare
        # Transactions say BEGIN themselves (_BatchingTransaction), and
        # prepare their statements themselves (txplatform.prepared): psycopg's
        # own preparing would DEALLOCATE ALL after a ROLLBACK or an ALTER.
        kwargs: dict[str, Any] = {"autocommit": True, "prepare_threshold": None}
        if schema is not None:
            # Lowercase only: PostgreSQL folds unquoted names, and the schema
            # is named both quoted (CREATE SCHEMA) and not (search_path).
            if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", schema):
                raise ValueError(
                    f"a schema name is lowercase letters, digits and _, not {schema!r}"
                )
            kwargs["options"] = f"-c search_path={schema}"
        pool = _Pool(
            "psycopg",
            conninfo,
            cp_min=1,
            cp_max=poolSize,
            cp_reconnect=True,
            cp_reactor=reactor,
            **kwargs,
        )
        super().__init__(_redact(conninfo) + (f" schema {schema}" if schema else ""))
        self._pool = pool
        pool.description = self.description
        self.schema = schema
        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor
        self._transformer = psycopg.adapt.Transformer
        self._fatal = psycopg.pq.ExecStatus.FATAL_ERROR
        # A transaction under way, or aborted by a failed statement.
        self._underway = (
            psycopg.pq.TransactionStatus.INTRANS,
            psycopg.pq.TransactionStatus.INERROR,
        )
        self._errorFromResult = psycopg.errors.error_from_result

        def connect() -> Any:
            try:
                return psycopg.connect(conninfo, **kwargs)
            except psycopg.Error as e:
                why = " ".join(str(e).split())
                raise DatabaseUnavailable(f"cannot open {self.description}: {why}") from e

        self._connections = ReactorConnections(
            reactor,
            connect,
            poolSize,
            lambda f: deferToThreadPool(reactor, pool.threadpool, f),
        )

    def runBatch(self, interaction: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred[Any]:
        """
        Run C{interaction} in the reactor's thread, once a connection of
        L{ReactorConnections} is free, and send what it said as one
        message: no thread to hand over to and back (L{IDatabase.runBatch}).
        """
        committed: list[Callable[[], Any]] = []
        cause, span = self._cause(interaction)
        queued = time.monotonic()
        connection = self._connections.idle()
        if connection is None:
            d = self._connections.acquire()
            d.addCallback(self._batch, interaction, args, kwargs, committed, queued, cause)
        else:
            # A connection free at once (most batches): the batch begins now,
            # without a Deferred of the connection to wait on the answer's.
            try:
                d = self._batch(connection, interaction, args, kwargs, committed, queued, cause)
            except BaseException:
                d = fail()
        if span is not None:
            d.addBoth(traces.endSpan, span)
        return d

    def _batch(
        self,
        connection: ReactorConnection,
        interaction: Callable[..., Any],
        args: Any,
        kwargs: Any,
        committed: list[Callable[[], Any]],
        queued: float,
        cause: Origin | None,
    ) -> Any:
        started = time.monotonic()
        prepares: list[str] = []
        try:
            # Whatever fails from here on, the connection goes back.
            self._waits.observe(started - queued)
            transaction = _ReactorTransaction(connection, self, committed, cause)
            prepares = transaction.prepares
            result = interaction(transaction, *args, **kwargs)
            text = transaction.text()
        except BaseException:
            self._done(connection, prepares, started)
            raise
        if text is None:
            done = self._done(connection, transaction.prepares, started)
            return done.addCallback(lambda _: self._afterCommit(result, committed))

        def answered(results: list[Any]) -> Any:
            try:
                self._read(connection, transaction, results)
            except BaseException:
                # A statement failed (and the rest did not run), or its rows
                # could not be read: whatever of the transaction is left is
                # rolled back before the connection is reused.
                why = Failure()
                d = self._rollback(connection)
                d.addBoth(lambda _: self._done(connection, transaction.prepares, started))
                return d.addCallback(lambda _: why)
            if not transaction.prepares:
                # Most batches: the connection is back at once.
                self._release(connection, started)
                return result
            done = self._done(connection, transaction.prepares, started)
            return done.addCallback(lambda _: result)

        def lost(reason: Failure) -> Any:
            return self._done(connection, (), started).addCallback(lambda _: reason)

        # The connection is given back when its answer has come, whatever
        # the caller does meanwhile: one who cancels gets CancelledError at
        # once, and the batch's outcome goes nowhere.  What it asked for
        # after its commit is called all the same, for the commit was sent
        # (the outbox hands its staged events to the relay so).
        outcome: Deferred[Any] = Deferred()
        answer = connection.query(text).addCallbacks(answered, lost)
        answer.addCallback(self._afterCommit, committed).chainDeferred(outcome)
        return outcome

    def _read(
        self, connection: ReactorConnection, transaction: _ReactorTransaction, results: list[Any]
    ) -> None:
        """
        Hand the batch's queries their rows, or raise the failure of its
        statement that failed.
        """
        for answer in results:
            if answer.status == self._fatal:
                error = self._errorFromResult(answer, encoding=_encoding(connection))
                if isinstance(error, self._driverIntegrityError):
                    raise self._integrityError(error) from error
                raise error
        loader = connection.loader
        if loader is None:
            loader = connection.loader = self._transformer(connection.connection)
        for index, rows in transaction.queries.items():
            answer = results[index]
            loader.set_pgresult(answer)
            rows._arrived(loader.load_rows(0, answer.ntuples, tuple) if answer.ntuples else [])

    def _rollback(self, connection: ReactorConnection) -> Deferred[Any]:
        """
        Roll back the transaction left open on C{connection}, if any.
        """
        if connection.broken or connection.pgconn.transaction_status not in self._underway:
            return succeed(None)
        return connection.query("ROLLBACK")

    def _release(self, connection: ReactorConnection, started: float) -> None:
        """
        The batch on C{connection}, begun at C{started}, is over, and left
        nothing to prepare: give the connection back.
        """
        self._durations.observe(time.monotonic() - started)
        self._connections.release(connection)

    def _done(
        self, connection: ReactorConnection, prepares: Sequence[str], started: float
    ) -> Deferred[None]:
        """
        The batch on C{connection} is over: run the C{prepares} it made due,
        one at a time (a refused one refuses nothing else), then give the
        connection back.  (Its caller hears its outcome after that: one who
        sends batches one after the other finds the connection free.)

        @return: A Deferred that fires once the connection is back.
        """
        if not prepares:
            self._release(connection, started)
            return succeed(None)
        self._durations.observe(time.monotonic() - started)
        waiting = list(prepares)
        statements = self._preparedOn(connection.connection)
        released: Deferred[None] = Deferred()

        def prepareNext(_: Any = None) -> None:
            if not waiting or connection.broken:
                self._connections.release(connection)
                released.callback(None)
                return
            statement = waiting.pop(0)
            name = statement.split(None, 2)[1].split("(", 1)[0]

            def took(results: list[Any]) -> None:
                statements.prepared(name, all(r.status != self._fatal for r in results))

            def failed(reason: Failure) -> None:
                statements.prepared(name, False)

            connection.query(statement).addCallbacks(took, failed).addCallback(prepareNext)

        prepareNext()
        return released

    def _translate(self, sql: str) -> str:
        return _pyformat(sql)

    def start(self) -> None:
        self._pool.start()

    def _transact(
        self, interaction: Callable[..., Any], args: Any, kwargs: Any, cause: Origin | None
    ) -> Deferred[Any]:
        # The caller may cancel, and hear CancelledError at once, while the
        # transaction goes on in its thread: what it asked for after its
        # commit is called once it commits all the same.
        committed: list[Callable[[], Any]] = []
        outcome: Deferred[Any] = Deferred()
        transaction = self._pool.runInteraction(
            self._interact, interaction, args, kwargs, committed, time.monotonic(), cause
        )
        transaction.addCallback(self._afterCommit, committed).chainDeferred(outcome)
        return outcome

    def _closeConnections(self) -> None:
        self._pool.close()
        self._connections.close()

    def runQuery(self, sql: str, params: Sequence[Any] = ()) -> Deferred[list[tuple[Any, ...]]]:
        # One statement needs no thread either: a batch of one.
        d = self.runBatch(lambda t: t.query(sql, params))
        return d.addCallback(lambda rows: rows.fetchall())

    def runOperation(self, sql: str, params: Sequence[Any] = ()) -> Deferred[None]:
        return self.runBatch(lambda t: t.send(sql, params))

    def _preparedOn(self, connection: Any) -> PreparedStatements:
        """
        The statements C{connection} has prepared.  (A connection made
        again after a failure is a new one, with none.)
        """
        statements = self._prepared.get(connection)
        if statements is None:
            statements = self._prepared[connection] = PreparedStatements()
            if not self._prepare:
                statements.limit = 0
        return statements

    def _lockForMigrations(self, transaction: _Transaction) -> None:
        # One advisory lock for every component: replicas started together
        # wait in turn instead of racing to create the same tables.
        transaction.execute(
            "SELECT pg_advisory_xact_lock(?)", (zlib.crc32(b"txplatform.migrations"),)
        )
        if self.schema is not None:
            transaction.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')

    def _lock(self, transaction: _Transaction, names: list[str]) -> None:
        # Transaction-scoped advisory locks, taken in one statement and in
        # key order, so two transactions never wait on each other crosswise.
        keys = sorted(_lockKey(name) for name in names)
        transaction.send(
            "SELECT count(pg_advisory_xact_lock(k))"
            " FROM (SELECT k FROM unnest(?::bigint[]) AS k ORDER BY k) AS keys",
            (keys,),
        )

    def _integrityError(self, error: BaseException) -> IntegrityError:
        if isinstance(error, self._uniqueViolation):
            return UniqueViolation(str(error))
        return IntegrityError(str(error))


def _encoding(connection: ReactorConnection) -> str:
    return connection.connection.info.encoding  # type: ignore[no-any-return]


def _redact(url: str) -> str:
    """
    C{url} without its password, wherever libpq would take it from.
    """
    parts = urlsplit(url)
    if parts.password:
        parts = parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@"))
    query = [(k, "***" if k == "password" else v) for k, v in parse_qsl(parts.query)]
    return urlunsplit(parts._replace(query=urlencode(query, safe="*")))


def databaseFromURL(url: str, reactor: Any = None) -> SQLiteDatabase | PostgresDatabase:
    """
    Open the database named by C{url}:

      - C{sqlite:PATH} (relative or absolute) or C{sqlite::memory:}
      - C{postgresql://user:password@host:port/dbname?schema=NAME&pool=N&prepare=off}
        (also C{postgres://}); C{schema}, C{pool} and C{prepare} (C{on}, the
        default, or C{off}: see L{PostgresDatabase}) are ours, the rest goes
        to libpq.

    @raise ValueError: C{url} names no database we know.
    """
    if url.startswith("sqlite:"):
        path = url[len("sqlite:") :]
        if path.startswith("//"):
            path = path[2:]
        if not path:
            raise ValueError("sqlite: needs a path, as in sqlite:var/account.sqlite")
        return SQLiteDatabase(path)
    if url.startswith(("postgresql://", "postgres://")):
        parts = urlsplit(url)
        query = parse_qsl(parts.query)
        ours = {k: v for k, v in query if k in _OURS}
        rest = [(k, v) for k, v in query if k not in _OURS]
        conninfo = urlunsplit(parts._replace(query=urlencode(rest)))
        try:
            poolSize = int(ours.get("pool", "8"))
        except ValueError:
            raise ValueError(f"pool must be a number in {_redact(url)!r}") from None
        prepare = ours.get("prepare", "on")
        if prepare not in ("on", "off"):
            raise ValueError(f"prepare must be on or off in {_redact(url)!r}")
        return PostgresDatabase(
            conninfo,
            schema=ours.get("schema"),
            reactor=reactor,
            poolSize=poolSize,
            prepare=prepare == "on",
        )
    raise ValueError(
        f"unknown database {_redact(url)!r}: use sqlite:PATH or postgresql://user@host:port/dbname"
    )


# The URL's parameters that are ours, not libpq's.
_OURS = ("schema", "pool", "prepare")
