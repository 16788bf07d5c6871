# -*- test-case-name: tests.services.test_throttle -*-
"""
Login throttling, counted in the Account service's database so that every
gateway and every replica sees the same counts (a brute force spread over
duplicated gateways is throttled as one).

Every attempt is reserved as a failure before its password is checked, in
one transaction under a lock on its keys: a burst of concurrent attempts
counts as many failures as it has attempts, and only those a key's count
allows reach the password check.  A success gives the reservation back.

An attempt counts against three keys:

  - the account and the client address together, and the client address
    alone (guessing at many accounts): these block hard.  After
    C{freeFailures} failures in a row, each further failure blocks the key
    for twice as long as the one before (from C{baseDelay}, at most
    C{maxDelay}); a blocked key's attempts are refused at once with
    L{ResourceExhausted} and the time to wait, before any password work;
  - the account alone, from anywhere: this only slows.  Past its free
    failures from other addresses, each attempt waits (at most C{maxSoftDelay} seconds) before
    its password is checked, and at most C{concurrentChecks} checks of one
    account run at once in a replica.  An attacker guessing from many
    addresses is held to that pace, but cannot lock the owner out: the
    owner's right password, from an address that has not failed, is never
    refused by throttling.

A success clears the account's counts; an address's count lapses C{window}
seconds after its last failure (a success gives back only its own
reservation: one valid account must not reset an address guessing at
others).  Keys are blind indexes (HMAC under the service's keyring):
neither usernames nor addresses are stored in clear.
"""

from __future__ import annotations

from typing import Any, Callable

from attrs import frozen
from twisted.internet.defer import Deferred, DeferredSemaphore, inlineCallbacks
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater

from txplatform.database import Migration
from txplatform.errors import ResourceExhausted
from txplatform.interfaces import IDatabase, IFieldCodec, IRows, ITransaction

__all__ = ["LoginThrottle", "MIGRATION", "AttemptKeys"]

TABLE = "account_login_failures"

MIGRATION = Migration(
    2,
    "failed logins per account and per client address",
    (
        f"""CREATE TABLE {TABLE} (
            key {{bytes}} PRIMARY KEY,
            failures INTEGER NOT NULL,
            blocked_until {{bigint}} NOT NULL,
            updated_at {{bigint}} NOT NULL
        )""",
        f"CREATE INDEX {TABLE}_by_time ON {TABLE} (updated_at)",
    ),
)


@frozen
class AttemptKeys:
    """
    What one login attempt counts against.

    @ivar hard: Keys that block (the account with the address, the
        address); without an address, the account.
    @ivar soft: Keys that slow (the account, when there is an address).
    @ivar account: The account's own key, cleared by a success.
    """

    hard: tuple[bytes, ...]
    soft: tuple[bytes, ...]
    account: bytes
    client: bytes | None


def _millis(seconds: float) -> int:
    return int(seconds * 1000)


class LoginThrottle:
    #: The longest an attempt waits on an account's failures from elsewhere.
    maxSoftDelay = 3.0
    #: Password checks of one account running at once in a replica.
    concurrentChecks = 2
    #: Attempts from one address held from reservation to settlement at
    #: once in a replica: enough to keep the password checks busy while
    #: others wait on the database, fewer than freeFailures, so that right
    #: passwords sent together never add up to a block.
    concurrentAttempts = 4

    def __init__(
        self,
        database: IDatabase,
        fields: IFieldCodec,
        clock: IReactorTime,
        freeFailures: int = 5,
        baseDelay: float = 1.0,
        maxDelay: float = 900.0,
        window: float = 900.0,
    ) -> None:
        self._database = database
        self._fields = fields
        self._clock = clock
        self.freeFailures = freeFailures
        self.baseDelay = baseDelay
        self.maxDelay = maxDelay
        self.window = window
        self._checking: dict[bytes, DeferredSemaphore] = {}
        self._attempting: dict[bytes, DeferredSemaphore] = {}
        # L{_countingStatement}'s, by their key counts and the settings.
        self._statements: dict[tuple[Any, ...], str] = {}

    def keys(self, username: str, client: str | None) -> AttemptKeys:
        """
        The keys an attempt counts against, whether the account exists or
        not (the username normalised).
        """
        username = username.lower()
        account = b"u" + self._fields.index(TABLE, "username", username)
        if not client:
            return AttemptKeys((account,), (), account, None)
        address = b"c" + self._fields.index(TABLE, "client", client)
        pair = b"p" + self._fields.index(TABLE, "pair", f"{username}\x00{client}")
        return AttemptKeys((pair, address), (account,), account, address)

    def delay(self, failures: int) -> float:
        """
        How long a key with C{failures} failures in a row stays blocked.
        """
        beyond = failures - self.freeFailures
        if beyond <= 0:
            return 0.0
        return min(self.baseDelay * 2 ** min(beyond - 1, 30), self.maxDelay)

    def _now(self) -> int:
        return int(self._clock.seconds() * 1000)

    def reserve(self, keys: AttemptKeys) -> Deferred[float]:
        """
        Count the attempt as a failure against every key, unless a hard key
        is blocked.

        @return: A Deferred of how many seconds the attempt should wait
            before its password is checked (the account's slowing).
        @raise ResourceExhausted: (in the Deferred) A hard key is blocked;
            nothing was counted.
        """
        d = self._database.runBatch(self._reserve, keys, self._now())
        return d.addCallback(lambda reserved: reserved()[0])

    def _reserve(
        self,
        transaction: ITransaction,
        keys: AttemptKeys,
        now: int,
        lookup: Callable[[ITransaction], Callable[[], Any]] | None = None,
    ) -> Callable[[], tuple[float, Any]]:
        """
        Count the attempt (see L{reserve}), and C{lookup} what its check
        needs in the same transaction.

        Nothing here waits for the database: the block, the counts and the
        lookup go with the COMMIT, as one message (on SQLite they run as
        they come), and are read once the transaction has committed.  The
        database decides alone: a blocked key's attempt counts nothing,
        and a count past the free failures blocks its key.

        @return: What reads the outcome once committed: C{(seconds to wait,
            what C{lookup}'s reader gives)}, or L{ResourceExhausted} raised.
        """
        # Concurrent attempts on one key take their turn here: each sees
        # the counts of those before it.  (A settlement takes the same
        # locks, so the two never take the rows in conflicting orders.)
        transaction.lock(*(key.hex() for key in keys.hard + keys.soft))
        marks = ", ".join("?" * len(keys.hard))
        blocked = transaction.query(
            f"SELECT MAX(blocked_until) FROM {TABLE} WHERE key IN ({marks})", keys.hard
        )
        # The soft keys first: their statement must not see the block that
        # the hard keys' statement may set for this very attempt.
        counted = [
            transaction.query(*self._counting(group, keys.hard, now, hard))
            for group, hard in ((keys.soft, False), (keys.hard, True))
            if group
        ]
        looked = lookup(transaction) if lookup is not None else None
        return lambda: self._reserved(keys, now, blocked, counted, looked)

    def _counting(
        self, counting: tuple[bytes, ...], hard: tuple[bytes, ...], now: int, blocks: bool
    ) -> tuple[str, list[Any]]:
        """
        The upsert that counts a failure against each key of C{counting}
        unless one of the C{hard} keys is blocked, and with C{blocks}, blocks
        each for L{delay} of its new count.  An upsert, not a read and a
        write: concurrent failures from other gateways queue on the rows
        instead of losing a count.
        """
        lapsed = now - int(self.window * 1000)
        first = _millis(self.delay(1)) if blocks else 0
        # A new row's block: none, unless its first failure already blocks.
        params: list[Any] = [(now + first) if first else 0, now, *counting, *hard, now, lapsed, now]
        if blocks:
            params += [lapsed, now, lapsed]
        return self._countingStatement(len(counting), len(hard), blocks), params

    def _countingStatement(self, counting: int, hard: int, blocks: bool) -> str:
        """
        L{_counting}'s statement for C{counting} and C{hard} keys.  The
        backoff's table is written into it as numbers: it changes only with
        the throttle's settings, so the statement, made once for them, is
        the same text at every attempt (prepared once by PostgreSQL, and
        not built again here).
        """
        settings = (counting, hard, blocks, self.freeFailures, self.baseDelay, self.maxDelay)
        sql = self._statements.get(settings)
        if sql is not None:
            return sql
        # The key's count with this failure (SET sees the row before it).
        failures = f"CASE WHEN {TABLE}.updated_at >= ? THEN {TABLE}.failures + 1 ELSE 1 END"
        sql = (
            f"INSERT INTO {TABLE} (key, failures, blocked_until, updated_at)"
            f" SELECT v.column1, 1, ?, ? FROM (VALUES {', '.join('(?)' for _ in range(counting))})"
            f" AS v WHERE NOT EXISTS (SELECT 1 FROM {TABLE} WHERE key IN ({', '.join('?' * hard)})"
            f" AND blocked_until > ?)"
            f" ON CONFLICT (key) DO UPDATE SET failures = {failures}, updated_at = ?"
        )
        if blocks:
            # L{delay} of every count it tells apart, as a table: one
            # definition of the backoff, this side, for both dialects.
            steps = " ".join(f"WHEN {count} THEN {ms}" for count, ms in self._steps())
            sql += (
                f", blocked_until = CASE WHEN {failures} <= {int(self.freeFailures)}"
                f" THEN {TABLE}.blocked_until"
                f" ELSE ? + CASE {failures} {steps} ELSE {_millis(self.maxDelay)} END END"
            )
        sql += " RETURNING key, failures"
        self._statements[settings] = sql
        return sql

    def _steps(self) -> list[tuple[int, int]]:
        """
        C{(count, milliseconds blocked)} for each count past the free
        failures, until the backoff reaches its longest.
        """
        steps = []
        for beyond in range(1, 32):
            steps.append(
                (self.freeFailures + beyond, _millis(self.delay(self.freeFailures + beyond)))
            )
            if steps[-1][1] >= _millis(self.maxDelay):
                break
        return steps

    def _reserved(
        self,
        keys: AttemptKeys,
        now: int,
        blocked: IRows,
        counted: list[IRows],
        looked: Callable[[], Any] | None,
    ) -> tuple[float, Any]:
        row = blocked.fetchone()
        until = row[0] if row and row[0] is not None else 0
        counts = {bytes(key): failures for rows in counted for key, failures in rows.fetchall()}
        if not counts:
            # A hard key was blocked, so neither upsert counted anything.
            wait = max((until - now) / 1000, 0.0)
            raise ResourceExhausted(
                f"too many failed logins: try again in {max(1, round(wait))} s",
                {"retry_after": wait},
            )
        if not keys.soft:
            slowed = 0.0
        else:
            # Slowed for the account's failures from other addresses only:
            # an address's own are what its hard keys are for.
            elsewhere = counts[keys.account] - counts[keys.hard[0]]
            slowed = min(self.delay(max(elsewhere, 0)), self.maxSoftDelay)
        return slowed, looked() if looked is not None else None

    def check(
        self,
        keys: AttemptKeys,
        lookup: Callable[[ITransaction], Callable[[], Any]],
        verify: Callable[[Any], Deferred[Any]],
        matched: Callable[[Any], bool],
        settle: Callable[[ITransaction, Any], Any],
    ) -> Deferred[Any]:
        """
        An attempt, in two transactions around its password check, both
        batches (L{IDatabase.runBatch}): reserve it (and C{lookup} what the
        check needs, in the same transaction: it asks, with
        L{ITransaction.query}, and returns what reads the answer once the
        transaction has committed), wait as long as the account's failures
        say, C{verify} what was looked up (the password check; at most
        C{concurrentChecks} at once per account), and if C{matched} says
        its result is a success, give the reservation back and C{settle}
        (make the session, with L{ITransaction.send}) in one more.

        @return: A Deferred of what C{settle} returned on a success, or of
            what C{verify} did otherwise.

        Attempts from one address (or on one account, without an address)
        take their turn, at most C{concurrentAttempts} from reservation to
        settlement at once in a replica: a burst of right passwords (a
        client's retries, people behind one NAT) waits rather than piling
        up reservations that would block the address, while a burst of
        wrong ones is still counted in full.
        """

        def attempt() -> Deferred[Any]:
            d = self._database.runBatch(self._reserve, keys, self._now(), lookup)
            return d.addCallback(lambda reserved: slowed(reserved()))

        def slowed(reserved: tuple[float, Any]) -> Deferred[Any]:
            delay, looked = reserved
            if delay:
                checked = deferLater(self._clock, delay, lambda: None)
                checked.addCallback(lambda _: checking(looked))
            else:
                checked = checking(looked)
            return checked.addCallback(settled)

        def checking(looked: Any) -> Deferred[Any]:
            return self._limited(
                self._checking, keys.account, self.concurrentChecks, verify, looked
            )

        def settled(result: Any) -> Any:
            if not matched(result):
                return result
            return self._database.runBatch(self._settle, keys, settle, result)

        return self._limited(self._attempting, keys.hard[-1], self.concurrentAttempts, attempt)

    def _settle(
        self,
        transaction: ITransaction,
        keys: AttemptKeys,
        settle: Callable[[ITransaction, Any], Any],
        result: Any,
    ) -> Any:
        self._succeeded(transaction, keys)
        return settle(transaction, result)

    @staticmethod
    def _limited(
        semaphores: dict[bytes, DeferredSemaphore],
        key: bytes,
        limit: int,
        f: Callable[..., Deferred[Any]],
        *args: Any,
    ) -> Deferred[Any]:
        semaphore = semaphores.get(key)
        if semaphore is None:
            semaphore = semaphores[key] = DeferredSemaphore(limit)

        def done(result: Any) -> Any:
            if semaphore.tokens == semaphore.limit and not semaphore.waiting:
                semaphores.pop(key, None)
            return result

        return semaphore.run(f, *args).addBoth(done)

    def succeeded(self, keys: AttemptKeys) -> Deferred[None]:
        """
        Clear the account's counts, and give the address back the failure
        reserved for this attempt.
        """
        return self._database.runBatch(self._succeeded, keys)

    def _succeeded(self, transaction: ITransaction, keys: AttemptKeys) -> None:
        # Under the locks a reservation takes (the same keys, the same
        # order): rows this deletes and updates are not waited on by a
        # reservation that holds others of them, the deadlock PostgreSQL
        # found when the two took the rows in different orders.
        transaction.lock(*(key.hex() for key in keys.hard + keys.soft))
        cleared = [k for k in keys.hard + keys.soft if k != keys.client]
        marks = ", ".join("?" * len(cleared))
        transaction.send(f"DELETE FROM {TABLE} WHERE key IN ({marks})", cleared)
        if keys.client is not None:
            # Any block on the address is this reservation's: one in force
            # before it would have refused the attempt.
            transaction.send(
                f"UPDATE {TABLE} SET failures = failures - 1, blocked_until = 0"
                " WHERE key = ? AND failures > 0",
                (keys.client,),
            )

    #: The most counts one transaction of a sweep forgets: an attack
    #: across many usernames leaves many, and on SQLite the reactor runs
    #: the transactions.
    sweepPortion = 1000

    @inlineCallbacks
    def sweep(self) -> Any:
        """
        Forget counts that lapsed and are not blocking, L{sweepPortion} at
        a time, with a turn of the reactor between portions.

        On PostgreSQL the sweep skips rows an attempt holds: it takes no
        advisory locks, so if it waited on a row, an attempt holding that
        row and waiting for one the sweep had deleted would deadlock with
        it.  Rows skipped go with the next sweep.  (SQLite has one writer
        at a time: nothing to skip.)
        """
        now = self._now()
        skip = " FOR UPDATE SKIP LOCKED" if self._database.dialect == "postgresql" else ""
        statement = (
            f"DELETE FROM {TABLE} WHERE key IN (SELECT key FROM {TABLE}"
            f" WHERE updated_at < ? AND blocked_until < ? LIMIT ?{skip}) RETURNING key"
        )
        lapsed = (now - int(self.window * 1000), now, self.sweepPortion)
        while True:
            forgotten = yield self._database.runBatch(lambda t: t.query(statement, lapsed))
            if len(forgotten.fetchall()) < self.sweepPortion:
                return
            yield deferLater(self._clock, 0, lambda: None)
