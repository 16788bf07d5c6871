# -*- test-case-name: tests.test_keychecks -*-
"""
Which keys a database was written with: a check value per key version
(L{txplatform.crypto.keyring.Keyring.checkValue}), kept beside the data.

A service checks its keys against them when it starts, and refuses to run
with a key file that does not hold the keys its data was written with (a
version whose secret changed, a key file made anew): it would write rows
nobody could read together with the old ones, and its blind indexes would
stop finding, and keeping unique, what is there.
"""

from __future__ import annotations

from typing import Any, Mapping

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from .database import Migration
from .interfaces import IDatabase, ITransaction

__all__ = ["KeyChecks", "KeyMismatch"]


class KeyMismatch(Exception):
    """
    The keys given are not those the database was written with.
    """


class KeyChecks:
    """
    The check values of one service's database (table
    C{<service>_key_checks}).
    """

    def __init__(self, database: IDatabase, component: str, clock: IReactorTime) -> None:
        self._database = database
        self.component = component
        self.table = f"{component}_key_checks"
        self._clock = clock

    def migrations(self) -> list[Migration]:
        return [
            Migration(
                1,
                "a check value per key version the data was written with",
                (
                    f"""CREATE TABLE {self.table} (
                        version {{bigint}} PRIMARY KEY,
                        check_value {{bytes}} NOT NULL,
                        recorded_at {{bigint}} NOT NULL
                    )""",
                ),
            )
        ]

    def verify(self, values: Mapping[int, bytes]) -> Deferred[list[int]]:
        """
        Compare C{values} (by version) with those recorded, and record the
        versions not seen yet.

        @return: A Deferred of the versions recorded now.
        @raise KeyMismatch: (in the Deferred) A version's value differs.
        """
        return self._database.runInteraction(
            self._verify, dict(values), int(self._clock.seconds() * 1000)
        )

    def _verify(self, t: ITransaction, values: dict[int, bytes], now: int) -> Any:
        t.lock(self.table)
        t.execute(f"SELECT version, check_value FROM {self.table}")
        recorded = {version: bytes(value) for version, value in t.fetchall()}
        differ = sorted(v for v, value in values.items() if v in recorded and recorded[v] != value)
        if differ:
            raise KeyMismatch(
                f"the keys of {self.component} are not those its data was written with"
                f" (version {', '.join(map(str, differ))} differs): give it the key file the"
                " data was written with; a version's secret never changes"
            )
        added = sorted(v for v in values if v not in recorded)
        for version in added:
            t.execute(
                f"INSERT INTO {self.table} (version, check_value, recorded_at) VALUES (?, ?, ?)",
                (version, values[version], now),
            )
        return added
