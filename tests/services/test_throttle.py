"""
Tests for L{txplatform_services.account.throttle}: failed logins throttled per account
and per client address, through the Account service, on SQLite and on
PostgreSQL.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import inlineCallbacks

from txplatform.errors import ResourceExhausted, Unauthenticated
from txplatform_services.account import api
from txplatform_services.account.throttle import TABLE

from ..support import PostgresMixin, SQLiteMixin
from .harness import ServiceTestCase

PASSWORD = "correct horse"


class ThrottleTestsMixin:
    # Encrypted fields: the keys are then HMACs, as in production.
    keyPeriod = 3600.0

    @inlineCallbacks
    def setUp(self) -> Any:
        yield super().setUp()
        self.service = yield self.startAccount()
        for name in ("alice", "bob"):
            yield self.bus.call(
                api.SERVICE_ID,
                "register",
                {"username": name, "email": f"{name}@example.com", "password": PASSWORD},
            )

    def login(self, username: str, password: str, client: str | None = "192.0.2.1") -> Any:
        return self.bus.call(
            api.SERVICE_ID,
            "login",
            {"username": username, "password": password, "client": client},
        )

    @inlineCallbacks
    def fail(self, times: int, username: str = "alice", client: str = "192.0.2.1") -> Any:
        for _ in range(times):
            yield self.assertFailure(self.login(username, "wrong", client), Unauthenticated)

    @inlineCallbacks
    def test_blocksAfterFreeFailures(self) -> Any:
        """
        Five failures are free; the sixth blocks the account for a second,
        during which even the right password is refused with the time to
        wait, without its password being checked.
        """
        yield self.fail(5)
        yield self.login("alice", PASSWORD)  # still free: clears alice
        # From six addresses, so that only the account's count blocks.
        for n in range(6):
            yield self.fail(1, "alice", f"198.51.100.{n}")
        verified: list[str] = []
        self.patch(
            self.service.passwords, "verify", lambda *a: verified.append("x")
        )  # must not be reached
        error = yield self.assertFailure(
            self.login("alice", PASSWORD, "203.0.113.1"), ResourceExhausted
        )
        self.assertGreater(error.details["retry_after"], 0)
        self.assertLessEqual(error.details["retry_after"], 1)
        self.assertEqual(verified, [])

    @inlineCallbacks
    def test_backoffDoubles(self) -> Any:
        """
        Each failure past the free ones blocks twice as long as the last.
        """
        yield self.fail(6)
        waits = []
        for _ in range(3):
            error = yield self.assertFailure(self.login("alice", "wrong"), ResourceExhausted)
            waits.append(error.details["retry_after"])
            self.clock.offset += error.details["retry_after"] + 0.01
            yield self.assertFailure(self.login("alice", "wrong"), Unauthenticated)
        self.assertEqual([round(w) for w in waits], [1, 2, 4])

    @inlineCallbacks
    def test_perAccountAndPerClient(self) -> Any:
        """
        A blocked account is blocked from every address, and a blocked
        address for every account; unknown usernames count too.
        """
        yield self.fail(6, "alice", "192.0.2.1")
        yield self.assertFailure(self.login("alice", PASSWORD, "198.51.100.7"), ResourceExhausted)
        self.clock.offset += 2
        yield self.fail(6, "nosuchuser", "198.51.100.9")
        yield self.assertFailure(self.login("bob", PASSWORD, "198.51.100.9"), ResourceExhausted)
        yield self.assertFailure(self.login("nosuchuser", "x", "203.0.113.5"), ResourceExhausted)
        session = yield self.login("bob", PASSWORD, "203.0.113.5")
        self.assertIn("token", session)

    @inlineCallbacks
    def test_successKeepsAddressCount(self) -> Any:
        """
        A success clears its account's count, not its address's: one valid
        account cannot reset an address that guesses at others.
        """
        yield self.fail(5, "alice")
        yield self.login("bob", PASSWORD)
        yield self.fail(1, "nosuchuser")
        yield self.assertFailure(self.login("bob", PASSWORD), ResourceExhausted)

    @inlineCallbacks
    def test_lapses(self) -> Any:
        """
        Counts lapse a window after the last failure, and the sweep forgets
        them; nothing in the table names a user or an address.
        """
        yield self.fail(5)
        self.clock.offset += self.service.throttle.window + 1
        yield self.fail(5)
        yield self.login("alice", PASSWORD)
        rows = yield self.service.database.runQuery(f"SELECT key FROM {TABLE}")
        self.assertTrue(rows)
        for (key,) in rows:
            self.assertNotIn(b"alice", bytes(key))
            self.assertNotIn(b"192.0.2.1", bytes(key))
        self.clock.offset += self.service.throttle.window + 1
        yield self.service.throttle.sweep()
        rows = yield self.service.database.runQuery(f"SELECT key FROM {TABLE}")
        self.assertEqual(rows, [])


class SQLiteThrottleTests(SQLiteMixin, ThrottleTestsMixin, ServiceTestCase):
    pass


class PostgresThrottleTests(PostgresMixin, ThrottleTestsMixin, ServiceTestCase):
    pass
