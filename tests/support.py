"""
What several test modules need: databases to run against, and waiting for
eventually-true conditions on the real reactor.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import uuid
from typing import Any, Callable, NoReturn

import jsonschema
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import SkipTest, TestCase

from txplatform.database import PostgresDatabase, SQLiteDatabase

POSTGRES_URL = os.environ.get(
    "TXPLATFORM_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"
)


def _ecmaPattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Any:
    if validator.is_type(instance, "string"):
        if not re.search(re.sub(r"(?<!\\)\$", r"\\Z", pattern), instance):
            yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


_ECMAValidator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator, {"pattern": _ecmaPattern}
)


def ecmaValidator(schema: dict[str, Any]) -> Any:
    """
    A JSON Schema 2020-12 validator of C{schema}, formats asserted, whose
    patterns end as ECMA-262's (JSON Schema's regexes) do: Python's C{$}
    also matches before a final newline.  Our patterns use no other syntax
    the two read differently.
    """
    return _ECMAValidator(schema, format_checker=_ECMAValidator.FORMAT_CHECKER)


def socketDirectory(case: TestCase) -> str:
    """
    A fresh directory for UNIX sockets, removed after the test.

    Not under trial's _trial_temp: a socket path must fit in sun_path (108
    bytes on Linux), and a checkout in a deep directory makes those too long.
    """
    directory = tempfile.mkdtemp(prefix="txp-")
    case.addCleanup(shutil.rmtree, directory, True)
    return directory


def inCI() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def missing(reason: str, inCIToo: str = "") -> NoReturn:
    """
    Stop a test that lacks something it needs: a skip that says C{reason},
    except in CI, where what it needs is part of the job, so its absence
    is a failure (with C{inCIToo} added, where that says more).
    """
    if inCI():
        raise AssertionError(reason + inCIToo)
    raise SkipTest(reason)


_postgresProblem: list[str | None] = []


def postgresProblem() -> str | None:
    """
    Why PostgreSQL cannot be used, or None if it can (checked once).
    """
    if not _postgresProblem:
        try:
            import psycopg

            with psycopg.connect(POSTGRES_URL, connect_timeout=3) as connection:
                connection.execute("SELECT 1")
            _postgresProblem.append(None)
        except Exception as e:  # any reason at all means: no server to test on
            _postgresProblem.append(f"{type(e).__name__}: {e}".strip())
    return _postgresProblem[0]


def requirePostgres() -> None:
    """
    Skip the test when no PostgreSQL server answers, except in CI, where the
    server is part of the job and its absence is a failure.
    """
    problem = postgresProblem()
    if problem is None:
        return
    message = f"PostgreSQL at {POSTGRES_URL} is not reachable ({problem})"
    missing(
        message + "; set TXPLATFORM_TEST_POSTGRES or start the server",
        ", and CI must run the PostgreSQL tests",
    )


def dropSchema(schema: str) -> None:
    import psycopg

    with psycopg.connect(POSTGRES_URL, autocommit=True) as connection:
        connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def newPostgresSchema(testCase: TestCase) -> str:
    """
    A fresh schema name, dropped when C{testCase} ends.
    """
    requirePostgres()
    schema = "t_" + uuid.uuid4().hex[:16]
    testCase.addCleanup(dropSchema, schema)
    return schema


class SQLiteMixin:
    """
    Run a test class's tests on an SQLite file.
    """

    dialect = "sqlite"

    def makeDatabase(self, name: str = "db") -> Any:
        database = SQLiteDatabase(os.path.join(self.mktemp(), f"{name}.sqlite"))
        self.addCleanup(database.close)
        database.start()
        return database


class PostgresMixin:
    """
    Run a test class's tests on PostgreSQL, each test in its own schema.
    """

    dialect = "postgresql"

    def makeDatabase(self, name: str = "db") -> Any:
        schema = newPostgresSchema(self)
        database = PostgresDatabase(POSTGRES_URL, schema=schema, reactor=reactor, poolSize=4)
        # Closed before the schema is dropped: cleanups run last-in first-out.
        self.addCleanup(database.close)
        database.start()
        return database


def recordCalls(case: Any, cls: type, name: str) -> list[Any]:
    """
    Patch C{cls.name} (for the rest of C{case}) to note the first argument
    of every call before making it: the queries psycopg sends
    (C{psycopg.Cursor.execute}: one message, one round trip, each) or binds
    on this side (C{psycopg.ClientCursor.mogrify}).
    """
    seen: list[Any] = []
    original = getattr(cls, name)

    def recorded(self: Any, first: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(first)
        return original(self, first, *args, **kwargs)

    case.patch(cls, name, recorded)
    return seen


def recordMessages(case: Any) -> list[str]:
    """
    The queries sent to PostgreSQL from now on (for the rest of C{case}),
    each one message and one round trip: psycopg's from a thread
    (C{psycopg.Cursor.execute}) and the reactor's batches
    (L{txplatform.pgconnections.ReactorConnection.query}), in the order
    sent.
    """
    import psycopg

    from txplatform.pgconnections import ReactorConnection

    seen = recordCalls(case, psycopg.Cursor, "execute")
    original = ReactorConnection.query

    def query(self: Any, text: str) -> Any:
        seen.append(text)
        return original(self, text)

    case.patch(ReactorConnection, "query", query)
    return seen


@inlineCallbacks
def eventually(check: Callable[[], Any], timeout: float = 5.0, interval: float = 0.02) -> Any:
    """
    Call C{check} (which may return a Deferred) until it returns something
    true, and return that; fail after C{timeout} seconds.  For effects that
    travel through events and are only eventually visible.
    """
    waited = 0.0
    while True:
        result = yield check()
        if result:
            return result
        if waited >= timeout:
            raise AssertionError(f"condition still false after {timeout}s: last result {result!r}")
        yield deferLater(reactor, interval, lambda: None)
        waited += interval


def sleep(seconds: float) -> Deferred[None]:
    return deferLater(reactor, seconds, lambda: None)


BROKER_URL = os.environ.get("TXPLATFORM_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672/")

_brokerProblem: list[str | None] = []


def brokerProblem() -> str | None:
    """
    Why RabbitMQ cannot be used, or None if it can (checked once).
    """
    if not _brokerProblem:
        import socket
        from urllib.parse import urlsplit

        parts = urlsplit(BROKER_URL)
        try:
            with socket.create_connection((parts.hostname, parts.port or 5672), timeout=3):
                pass
            _brokerProblem.append(None)
        except OSError as e:
            _brokerProblem.append(f"{type(e).__name__}: {e}")
    return _brokerProblem[0]


def requireBroker() -> None:
    """
    Skip the test when no broker answers, except in CI, where its absence
    is a failure.
    """
    problem = brokerProblem()
    if problem is None:
        return
    message = f"RabbitMQ at {BROKER_URL} is not reachable ({problem})"
    missing(
        message + "; set TXPLATFORM_TEST_AMQP or start the broker",
        ", and CI must run the broker tests",
    )


def keyFiles(directory: str, period: float = 3600.0) -> dict[str, str]:
    """
    Fresh key files for the bus and every service in C{directory}, as an
    operator makes them with C{txplatform-keys init}: their paths by purpose.
    """
    from txplatform.catalogue import installedServices
    from txplatform.testing import testKeyFiles

    storing = [d.name for d in installedServices() if d.stores()]
    return testKeyFiles(directory, ["bus", *storing], period)


def keyArguments(paths: dict[str, str], command: str) -> list[str]:
    """
    The key options C{twistd COMMAND} needs.
    """
    if command == "txplatform":
        return ["--keys-dir", os.path.dirname(paths["bus"])]
    arguments = ["--bus-keys", paths["bus"]]
    if command in paths:  # a service that stores
        arguments += ["--keys", paths[command]]
    return arguments
