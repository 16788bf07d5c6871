# -*- test-case-name: tests.crypto.test_reencrypt -*-
"""
Moving stored rows to the current master version, while the service runs.

After a rotation new writes use the new version at once, but rows written
before keep the old one until rewritten.  L{Reencryption} walks every table
of a service in key order, a batch per transaction, and rewrites each
sealed field (and blind index) not under the target version.  Its place is
saved after each batch in the C{key_reencryption} table, so an interrupted
run continues where it stopped.  Updates are optimistic: a row changed by
the service meanwhile is left alone and counted, for another run to take.  Once a run reports nothing left under old versions, the
old version can be retired.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

from attrs import define, field
from twisted.internet.defer import inlineCallbacks
from twisted.logger import Logger

from ..database import Migration
from ..fields import CorruptField, SealedTable
from ..interfaces import IDatabase, ITransaction
from .codecs import SealedFieldCodec

__all__ = ["Reencryption", "TableProgress", "versionCounts"]

PROGRESS_TABLE = "key_reencryption"
MIGRATIONS = [
    Migration(
        1,
        "re-encryption progress",
        (
            f"""CREATE TABLE {PROGRESS_TABLE} (
                table_name TEXT PRIMARY KEY,
                target_version {{bigint}} NOT NULL,
                last_key TEXT NOT NULL,
                complete {{bool}} NOT NULL,
                rewritten {{bigint}} NOT NULL,
                unreadable {{bigint}} NOT NULL
            )""",
        ),
    )
]


@define
class TableProgress:
    table: str
    target: int
    lastKey: str = ""
    complete: bool = False
    rewritten: int = 0
    unreadable: int = 0
    #: Rows the service changed between our read and our write: left for
    #: the next run, which finds them (or finds them already moved).
    changed: int = 0
    #: Rows of the table (at the start of the run), for reporting.
    total: int = 0
    seen: int = 0
    skipped: list[str] = field(factory=list)


class Reencryption:
    """
    One run over a service's tables.

    @param report: Called with a L{TableProgress} after every batch.
    """

    log = Logger()

    def __init__(
        self,
        database: IDatabase,
        codec: SealedFieldCodec,
        tables: Sequence[SealedTable],
        batchSize: int = 200,
        report: Callable[[TableProgress], object] = lambda progress: None,
    ) -> None:
        self.database = database
        self.codec = codec
        self.tables = tables
        self.batchSize = batchSize
        self.report = report

    @inlineCallbacks
    def run(self) -> Any:
        """
        @return: A Deferred firing with the L{TableProgress} of each table.
        """
        yield self.database.migrate(PROGRESS_TABLE, MIGRATIONS)
        target = self.codec.keyring.currentVersion()
        results = []
        for table in self.tables:
            progress = yield self.database.runInteraction(self._resume, table, target)
            while not progress.complete:
                yield self.database.runInteraction(self._batch, table, progress)
                self.report(progress)
            results.append(progress)
        return results

    def _resume(self, t: ITransaction, table: SealedTable, target: int) -> TableProgress:
        [(total,)] = t.execute(f"SELECT count(*) FROM {table.table}").fetchall()
        row = t.execute(
            f"SELECT target_version, last_key, complete, rewritten, unreadable"
            f" FROM {PROGRESS_TABLE} WHERE table_name = ?",
            (table.table,),
        ).fetchone()
        if row is not None and row[0] == target and not row[2]:
            # An interrupted run towards the same version: go on from there.
            return TableProgress(table.table, target, row[1], False, row[3], row[4], total)
        return TableProgress(table.table, target, total=total)

    def _batch(self, t: ITransaction, table: SealedTable, progress: TableProgress) -> None:
        columns = list(table.columns)
        rows = t.execute(
            f"SELECT {table.key}, {', '.join(columns)} FROM {table.table}"
            f" WHERE {table.key} > ? ORDER BY {table.key} LIMIT {self.batchSize}",
            (progress.lastKey,),
        ).fetchall()
        for row in rows:
            rowId, values = row[0], [bytes(v) for v in row[1:]]
            progress.seen += 1
            progress.lastKey = rowId
            self._rewrite(t, table, progress, rowId, columns, values)
        if len(rows) < self.batchSize:
            progress.complete = True
        t.execute(f"DELETE FROM {PROGRESS_TABLE} WHERE table_name = ?", (table.table,))
        t.execute(
            f"INSERT INTO {PROGRESS_TABLE} (table_name, target_version, last_key, complete,"
            " rewritten, unreadable) VALUES (?, ?, ?, ?, ?, ?)",
            (
                table.table,
                progress.target,
                progress.lastKey,
                progress.complete,
                progress.rewritten,
                progress.unreadable,
            ),
        )

    def _rewrite(
        self,
        t: ITransaction,
        table: SealedTable,
        progress: TableProgress,
        rowId: str,
        columns: list[str],
        values: list[bytes],
    ) -> None:
        codec = self.codec
        if all(codec.versionOf(v) == progress.target for v in values):
            return
        assignments: list[str] = []
        params: list[Any] = []
        try:
            for column, value in zip(columns, values, strict=True):
                if codec.versionOf(value) == progress.target:
                    continue
                plaintext = codec.open(table.table, column, rowId, value)
                assignments.append(f"{column} = ?")
                params.append(codec.seal(table.table, column, rowId, plaintext))
                if column in table.indexes:
                    indexColumn, normalise = table.indexes[column]
                    assignments.append(f"{indexColumn} = ?")
                    params.append(codec.index(table.table, column, normalise(plaintext)))
        except CorruptField as e:
            # Left as it is, and said: it needs a human (or a backup).
            self.log.error("Cannot re-encrypt: {error}", error=e.message)
            progress.unreadable += 1
            progress.skipped.append(rowId)
            return
        unchanged = " AND ".join(f"{column} = ?" for column in columns)
        t.execute(
            f"UPDATE {table.table} SET {', '.join(assignments)}"
            f" WHERE {table.key} = ? AND {unchanged}",
            (*params, rowId, *values),
        )
        if t.rowcount:
            progress.rewritten += 1
        else:
            progress.changed += 1


def versionCounts(
    database: IDatabase, codec: SealedFieldCodec, tables: Iterable[SealedTable]
) -> Any:
    """
    How many stored values each master version holds, per table (C{None}
    for values without a readable header): what C{txplatform-keys status}
    shows, and what says whether a version can be retired.

    @return: A Deferred of C{{table: {version: count}}}.
    """

    def count(t: ITransaction) -> dict[str, dict[int | None, int]]:
        counts: dict[str, dict[int | None, int]] = {}
        for table in tables:
            found: dict[int | None, int] = {}
            last = ""
            while True:
                rows = t.execute(
                    f"SELECT {table.key}, {', '.join(table.columns)} FROM {table.table}"
                    f" WHERE {table.key} > ? ORDER BY {table.key} LIMIT 1000",
                    (last,),
                ).fetchall()
                for row in rows:
                    for value in row[1:]:
                        version = codec.versionOf(bytes(value))
                        found[version] = found.get(version, 0) + 1
                if len(rows) < 1000:
                    break
                last = rows[-1][0]
            counts[table.table] = found
        return counts

    return database.runInteraction(count)
