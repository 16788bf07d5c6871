# -*- test-case-name: tests.services.test_throttle -*-
"""
Login throttling: failed logins counted per account and per client address
in the Account service's database, so that every gateway and every replica
sees the same counts (a brute force spread over duplicated gateways is
throttled as one).

After C{freeFailures} failures in a row, each further failure blocks the
key for twice as long as the one before (from C{baseDelay}, at most
C{maxDelay}); a blocked key's attempts are refused at once with
L{ResourceExhausted} and its retry time, without checking the password.
A success clears the account's count; a client address's count lapses
C{window} seconds after its last failure (a success does not clear it: one
valid account must not reset an address guessing at others).

Keys are blind indexes (HMAC under the service's keyring): neither
usernames nor addresses are stored in clear.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from txplatform.database import Migration
from txplatform.errors import ResourceExhausted
from txplatform.interfaces import IDatabase, IFieldCodec, ITransaction

__all__ = ["LoginThrottle", "MIGRATION"]

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


class LoginThrottle:
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

    def keys(self, username: str, client: str | None) -> list[bytes]:
        """
        The keys an attempt counts against: its account (by the normalised
        username, whether the account exists or not) and its client address.
        """
        keys = [b"u" + self._fields.index(TABLE, "username", username.lower())]
        if client:
            keys.append(b"c" + self._fields.index(TABLE, "client", client))
        return keys

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

    def check(self, keys: list[bytes]) -> Deferred[None]:
        """
        @raise ResourceExhausted: (in the Deferred) A key is blocked.
        """
        marks = ", ".join("?" * len(keys))
        d = self._database.runQuery(
            f"SELECT MAX(blocked_until) FROM {TABLE} WHERE key IN ({marks})", tuple(keys)
        )

        def blocked(rows: list[tuple[Any, ...]]) -> None:
            until = rows[0][0] if rows and rows[0][0] is not None else 0
            wait = (until - self._now()) / 1000
            if wait > 0:
                raise ResourceExhausted(
                    f"too many failed logins: try again in {max(1, round(wait))} s",
                    {"retry_after": wait},
                )

        return d.addCallback(blocked)

    def failed(self, keys: list[bytes]) -> Deferred[None]:
        """
        Count a failure against every key, blocking those past their free
        failures.
        """
        return self._database.runInteraction(self._failed, keys, self._now())

    def _failed(self, transaction: ITransaction, keys: list[bytes], now: int) -> None:
        lapsed = now - int(self.window * 1000)
        for key in keys:
            # One statement per key: concurrent failures from other
            # gateways queue on the row instead of losing a count.
            transaction.execute(
                f"INSERT INTO {TABLE} (key, failures, blocked_until, updated_at)"
                " VALUES (?, 1, 0, ?) ON CONFLICT (key) DO UPDATE SET"
                f" failures = CASE WHEN {TABLE}.updated_at >= ? THEN {TABLE}.failures + 1"
                " ELSE 1 END, updated_at = ?",
                (key, now, lapsed, now),
            )
            transaction.execute(f"SELECT failures FROM {TABLE} WHERE key = ?", (key,))
            (failures,) = transaction.fetchone()
            delay = self.delay(failures)
            if delay:
                transaction.execute(
                    f"UPDATE {TABLE} SET blocked_until = ? WHERE key = ?",
                    (now + int(delay * 1000), key),
                )

    def succeeded(self, accountKey: bytes) -> Deferred[None]:
        """
        Clear the account's count.
        """
        return self._database.runOperation(f"DELETE FROM {TABLE} WHERE key = ?", (accountKey,))

    def sweep(self) -> Deferred[None]:
        """
        Forget counts that lapsed and are not blocking.
        """
        now = self._now()
        return self._database.runOperation(
            f"DELETE FROM {TABLE} WHERE updated_at < ? AND blocked_until < ?",
            (now - int(self.window * 1000), now),
        )
