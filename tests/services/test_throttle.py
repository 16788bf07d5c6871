"""
Tests for L{txplatform_services.account.throttle}: failed logins throttled per account
and per client address, through the Account service, on SQLite and on
PostgreSQL.
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks

from txplatform.errors import ResourceExhausted, Unauthenticated
from txplatform_services.account import api
from txplatform_services.account.throttle import TABLE

from ..support import PostgresMixin, SQLiteMixin, eventually, recordMessages, sleep
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
    def failLogins(self, times: int, username: str = "alice", client: str = "192.0.2.1") -> Any:
        for _ in range(times):
            yield self.assertFailure(self.login(username, "wrong", client), Unauthenticated)

    @inlineCallbacks
    def test_blocksAfterFreeFailures(self) -> Any:
        """
        Five failures from one address are free; the sixth blocks the
        account from that address for a second, during which even the
        right password is refused with the time to wait, without its
        password being checked.
        """
        yield self.failLogins(5)
        yield self.login("alice", PASSWORD)  # still free: clears alice
        yield self.failLogins(6, "alice", "198.51.100.1")
        verified: list[str] = []
        self.patch(
            self.service.passwords, "verify", lambda *a: verified.append("x")
        )  # must not be reached
        error = yield self.assertFailure(
            self.login("alice", PASSWORD, "198.51.100.1"), ResourceExhausted
        )
        self.assertGreater(error.details["retry_after"], 0)
        self.assertLessEqual(error.details["retry_after"], 1)
        self.assertEqual(verified, [])

    @inlineCallbacks
    def test_blockedNotCounted(self) -> Any:
        """
        An attempt refused for a block counts nothing: its upserts, sent
        with the block's read, count only where no hard key is blocked.
        """
        client = "198.51.100.1"
        yield self.failLogins(6, "alice", client)
        keys = self.service.throttle.keys("alice", client)

        def counts() -> Any:
            return self.service.database.runQuery(
                f"SELECT key, failures, blocked_until FROM {TABLE} ORDER BY key"
            )

        before = yield counts()
        for _ in range(3):
            yield self.assertFailure(self.login("alice", PASSWORD, client), ResourceExhausted)
        self.assertEqual((yield counts()), before)
        self.assertEqual({bytes(key): failures for key, failures, _ in before}[keys.hard[0]], 6)

    @inlineCallbacks
    def test_caseInsensitive(self) -> Any:
        """
        Usernames match without regard to case, and so do their counts:
        guesses as ALICE are guesses at alice.
        """
        yield self.failLogins(3, "ALICE")
        yield self.failLogins(3, "Alice")
        yield self.assertFailure(self.login("alice", PASSWORD), ResourceExhausted)

    @inlineCallbacks
    def test_burstCounted(self) -> Any:
        """
        A burst of concurrent wrong guesses counts every guess it checks
        before checking it: of 40 at once from one address, only the free
        ones and the one that blocks reach the password check.
        """
        verified: list[str] = []
        real = self.service.passwords.verify

        def verify(*args: Any) -> Any:
            verified.append("x")
            return real(*args)

        self.patch(self.service.passwords, "verify", verify)
        results = yield gatherResults(
            [self.login("alice", "wrong").addErrback(lambda f: f.value) for _ in range(40)]
        )
        kinds = [type(r).__name__ for r in results]
        self.assertEqual(len(verified), 6)
        self.assertEqual(kinds.count("Unauthenticated"), 6)
        self.assertEqual(kinds.count("ResourceExhausted"), 34)

    @inlineCallbacks
    def test_burstOfRightPasswords(self) -> Any:
        """
        A burst of logins with the right password from one address (a
        client's retries, people behind one NAT) all get in: the attempts
        of one address take their turn from reservation to settlement, so
        their reservations never add up to a block.
        """
        real = self.service.passwords.verify

        def slowly(*args: Any) -> Any:
            # Checks that take a while, as argon2id's do: the burst's
            # attempts are all reserved before the first check is done.
            return sleep(0.1).addCallback(lambda _: real(*args))

        self.patch(self.service.passwords, "verify", slowly)
        results = yield gatherResults(
            [self.login("alice", PASSWORD).addErrback(lambda f: f.value) for _ in range(16)]
            + [self.login("bob", PASSWORD).addErrback(lambda f: f.value) for _ in range(8)]
        )
        self.assertEqual([r for r in results if not isinstance(r, dict)], [])
        yield self.login("alice", PASSWORD)

    @inlineCallbacks
    def test_concurrentLoginsSettle(self) -> Any:
        """
        Logins of the same accounts from one address, as fast as the
        database takes them, all get in: one attempt's settlement (clearing
        the account's counts, giving the address its reservation back)
        never deadlocks with the next attempt's reservation of the same
        rows.
        """
        for _ in range(4):
            results = yield gatherResults(
                [
                    self.login(name, PASSWORD).addErrback(lambda f: f.value)
                    for _ in range(12)
                    for name in ("alice", "bob")
                ]
            )
            self.assertEqual([r for r in results if not isinstance(r, dict)], [])

    @inlineCallbacks
    def test_ownerNotLockedOut(self) -> Any:
        """
        Guesses at an account from many addresses cannot lock its owner
        out: the right password from an address that has not failed gets
        in, only slowed, by at most maxSoftDelay.
        """
        self.service.throttle.maxSoftDelay = 0.05
        for n in range(20):
            yield self.failLogins(1, "alice", f"198.51.100.{n}")
        keys = self.service.throttle.keys("alice", "203.0.113.9")
        delay = yield self.service.throttle.reserve(keys)
        self.assertEqual(delay, 0.05)  # 20 from elsewhere: past the free five
        yield self.service.throttle.succeeded(keys)
        for n in range(20):
            yield self.failLogins(1, "alice", f"198.51.101.{n}")
        session = yield self.login("alice", PASSWORD, "203.0.113.9")
        self.assertIn("token", session)

    @inlineCallbacks
    def test_concurrentChecksCapped(self) -> Any:
        """
        At most concurrentChecks password checks of one account run at once
        in a replica, whatever the addresses they come from.
        """
        running: list[Deferred[bool]] = []
        peak = []

        def verify(*args: Any) -> Any:
            d: Deferred[bool] = Deferred()
            running.append(d)
            peak.append(len([r for r in running if not r.called]))
            return d

        self.patch(self.service.passwords, "verify", verify)
        logins = [
            self.login("alice", "wrong", f"198.51.100.{n}").addErrback(lambda f: None)
            for n in range(8)
        ]
        yield eventually(lambda: len(running) == 2)
        while len(running) < 8 or not all(r.called for r in running):
            for r in running:
                if not r.called:
                    r.callback(False)
            yield sleep(0.01)
        yield gatherResults(logins)
        self.assertEqual(max(peak), 2)

    @inlineCallbacks
    def test_backoffDoubles(self) -> Any:
        """
        Each failure past the free ones blocks twice as long as the last.
        """
        yield self.failLogins(6)
        waits = []
        for _ in range(3):
            error = yield self.assertFailure(self.login("alice", "wrong"), ResourceExhausted)
            waits.append(error.details["retry_after"])
            self.clock.offset += error.details["retry_after"] + 0.01
            yield self.assertFailure(self.login("alice", "wrong"), Unauthenticated)
        self.assertEqual([round(w) for w in waits], [1, 2, 4])

    @inlineCallbacks
    def test_blocksAsDelaySays(self) -> Any:
        """
        The database blocks each hard key for L{LoginThrottle.delay} of its
        count, up to C{maxDelay} and past it; with no free failures, from
        the first.
        """
        throttle = self.service.throttle
        throttle.maxDelay = 8.0
        keys = throttle.keys("alice", "192.0.2.1")

        @inlineCallbacks
        def blocks() -> Any:
            rows = yield self.service.database.runQuery(
                f"SELECT key, failures, blocked_until, updated_at FROM {TABLE}"
            )
            return {
                bytes(key): (failures, until and until - updated)
                for key, failures, until, updated in rows
            }

        free = throttle.freeFailures
        seen = []
        for _ in range(free + 7):
            yield self.failLogins(1)
            failures, blocked = (yield blocks())[keys.hard[0]]
            seen.append((failures, blocked / 1000))
            self.clock.offset += blocked / 1000 + 0.01
        self.assertEqual(seen, [(n, throttle.delay(n)) for n in range(1, free + 8)])
        self.assertEqual([blocked for _, blocked in seen], [0] * free + [1, 2, 4, 8, 8, 8, 8])
        throttle.freeFailures = 0
        yield self.failLogins(1, "bob")
        bob = throttle.keys("bob", "192.0.2.1")
        self.assertEqual((yield blocks())[bob.hard[0]], (1, 1000))

    @inlineCallbacks
    def test_perClient(self) -> Any:
        """
        An address guessing at many accounts (unknown ones count too) is
        blocked for every account; other addresses are not.
        """
        for n in range(6):
            yield self.failLogins(1, f"nosuchuser{n}", "198.51.100.9")
        yield self.assertFailure(self.login("bob", PASSWORD, "198.51.100.9"), ResourceExhausted)
        session = yield self.login("bob", PASSWORD, "203.0.113.5")
        self.assertIn("token", session)

    @inlineCallbacks
    def test_successKeepsAddressCount(self) -> Any:
        """
        A success clears its account's count, not its address's: one valid
        account cannot reset an address that guesses at others.
        """
        yield self.failLogins(5, "alice")
        yield self.login("bob", PASSWORD)
        yield self.failLogins(1, "nosuchuser")
        yield self.assertFailure(self.login("bob", PASSWORD), ResourceExhausted)

    @inlineCallbacks
    def test_lapses(self) -> Any:
        """
        Counts lapse a window after the last failure, and the sweep forgets
        them; nothing in the table names a user or an address.
        """
        yield self.failLogins(5)
        self.clock.offset += self.service.throttle.window + 1
        yield self.failLogins(5)
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

    @inlineCallbacks
    def test_sweepInPortions(self) -> Any:
        """
        A sweep forgets L{LoginThrottle.sweepPortion} counts a transaction,
        as many transactions as it takes.
        """
        self.service.throttle.sweepPortion = 2
        for n in range(3):
            yield self.failLogins(1, f"user{n}", f"192.0.2.{n + 1}")
        rows = yield self.service.database.runQuery(f"SELECT key FROM {TABLE}")
        self.assertGreater(len(rows), 2)  # more than one portion to forget
        self.clock.offset += self.service.throttle.window + 1
        batches: list[Any] = []
        run = self.service.database.runBatch

        def counting(interaction: Any, *args: Any) -> Any:
            batches.append(interaction)
            return run(interaction, *args)

        self.patch(self.service.database, "runBatch", counting)
        yield self.service.throttle.sweep()
        self.assertEqual(len(batches), len(rows) // 2 + 1)
        left = yield self.service.database.runQuery(f"SELECT key FROM {TABLE}")
        self.assertEqual(left, [])


class SQLiteThrottleTests(SQLiteMixin, ThrottleTestsMixin, ServiceTestCase):
    pass


class PostgresThrottleTests(PostgresMixin, ThrottleTestsMixin, ServiceTestCase):
    @inlineCallbacks
    def test_roundTrips(self) -> Any:
        """
        A login is two round trips to PostgreSQL: the reservation's block,
        counts and account lookup with its COMMIT, as one message (the
        counts must be seen by other attempts while the password is
        checked), and the settlement with the new session and its COMMIT
        as one more.  A wrong password is the first.
        """

        from txplatform.prepared import PreparedStatements

        # Statements as text, to read them (txplatform.prepared).
        self.patch(PreparedStatements, "threshold", 1000)
        messages = recordMessages(self)

        def mine() -> list[str]:
            # Not the relay's deletions of the registrations' events.
            return [query for query in messages if "_outbox" not in query]

        yield self.login("alice", PASSWORD)
        sent = mine()
        self.assertEqual(len(sent), 2, sent)
        self.assertIn("MAX(blocked_until)", sent[0])
        self.assertIn("ON CONFLICT", sent[0])
        self.assertIn("FROM accounts", sent[0])
        self.assertTrue(sent[0].endswith("COMMIT"), sent[0])
        self.assertIn("INSERT INTO account_sessions", sent[1])
        self.assertTrue(sent[1].endswith("COMMIT"), sent[1])
        del messages[:]
        yield self.failLogins(1)
        self.assertEqual(len(mine()), 1, mine())

    @inlineCallbacks
    def test_preparedRoundTrips(self) -> Any:
        """
        Once a connection has prepared a login's statements, a login is
        still two messages, of EXECUTEs; the PREPAREs were messages of
        their own, once each.
        """

        self.patch(self.service.throttle, "concurrentAttempts", 1)
        messages = recordMessages(self)
        prepares = []
        for _ in range(12):
            del messages[:]
            yield self.login("alice", PASSWORD)
            sent = [query for query in messages if "_outbox" not in query]
            prepares += [query for query in sent if query.startswith("PREPARE")]
        self.assertEqual(len(sent), 2, sent)
        self.assertIn("EXECUTE txp_", sent[0])
        self.assertIn("EXECUTE txp_", sent[1])
        self.assertNotIn("blocked_until", sent[0] + sent[1])
        self.assertTrue(sent[1].endswith("COMMIT"), sent[1])
        # Each statement once on each connection of the pool (of four).
        statements = Counter(re.sub(r"txp_\d+", "txp", query) for query in prepares)
        self.assertTrue(statements)
        self.assertLessEqual(max(statements.values()), 4, statements)

    @inlineCallbacks
    def test_sweepSkipsHeldRows(self) -> Any:
        """
        The sweep does not wait for a row an attempt holds (it could be
        waiting for one the sweep deleted: a deadlock): it forgets the
        other lapsed counts, and the held one with a later sweep.
        """
        yield self.failLogins(1, "alice", "192.0.2.1")
        yield self.failLogins(1, "bob", "192.0.2.2")
        self.clock.offset += self.service.throttle.window + 1
        held = self.service.throttle.keys("alice", "192.0.2.1").hard[0]
        holding, release = threading.Event(), threading.Event()
        order: list[str] = []

        def hold(t: Any) -> None:
            t.execute(f"SELECT key FROM {TABLE} WHERE key = ? FOR UPDATE", (held,))
            holding.set()
            release.wait(10)

        holder = self.service.database.runInteraction(hold)
        yield eventually(holding.is_set)

        def released() -> None:
            order.append("released")
            release.set()

        later = reactor.callLater(3, released)
        yield self.service.throttle.sweep()
        order.append("swept")
        if later.active():
            later.cancel()
            released()
        yield holder
        self.assertEqual(order, ["swept", "released"])
        rows = yield self.service.database.runQuery(f"SELECT key FROM {TABLE}")
        self.assertEqual([bytes(key) for (key,) in rows], [held])
        yield self.service.throttle.sweep()
        rows = yield self.service.database.runQuery(f"SELECT key FROM {TABLE}")
        self.assertEqual(rows, [])
