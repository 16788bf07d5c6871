"""
Tests for L{txplatform.crypto.reencrypt}: moving an Account service's stored
rows to a new master version, on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import secrets
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.python.components import proxyForInterface

from txplatform.crypto.codecs import SealedFieldCodec
from txplatform.crypto.keyring import Keyring, MasterKey
from txplatform.crypto.reencrypt import Reencryption, TableProgress, versionCounts
from txplatform.crypto.sealing import Sealer
from txplatform.errors import Conflict
from txplatform.fields import CorruptField, SealedTable
from txplatform.interfaces import IDatabase, ITransaction
from txplatform_services.account import api
from txplatform_services.account.service import AccountService

from ..services.harness import ServiceTestCase
from ..support import PostgresMixin, SQLiteMixin

PASSWORD = "correct horse"
NAMES = ["alice", "bob", "carol", "dave", "erin"]


def newMaster(version: int) -> MasterKey:
    return MasterKey(version, secrets.token_bytes(32), 0.0)


class Interrupted(Exception):
    """
    The run stopped (a crash, a deploy) after a batch was committed.
    """


class _ChangingTransaction(proxyForInterface(ITransaction, "_transaction")):  # type: ignore[misc]
    """
    A transaction in which another writer changes a row's display name just
    before the job's UPDATE of that row: what the job read is stale then.
    """

    def __init__(self, transaction: ITransaction, database: _ChangingDatabase) -> None:
        self._transaction = transaction
        self._database = database

    def execute(self, sql: str, params: Any = ()) -> Any:
        database = self._database
        if not database.changed and sql.startswith("UPDATE accounts") and database.rowId in params:
            self._transaction.execute(
                "UPDATE accounts SET display_name = ? WHERE id = ?",
                (database.newValue, database.rowId),
            )
            database.changed = True
        return self._transaction.execute(sql, params)


class _ChangingDatabase(proxyForInterface(IDatabase, "_database")):  # type: ignore[misc]
    """
    A database whose transactions are L{_ChangingTransaction}s.
    """

    def __init__(self, database: IDatabase, rowId: str, newValue: bytes) -> None:
        self._database = database
        self.rowId = rowId
        self.newValue = newValue
        self.changed = False

    def runInteraction(self, interaction: Any, *args: Any, **kwargs: Any) -> Any:
        return self._database.runInteraction(
            lambda t: interaction(_ChangingTransaction(t, self), *args, **kwargs)
        )


class ReencryptionTestsMixin:
    """
    An Account service whose fields are sealed under a keyring holding
    version 1 at first.
    """

    @inlineCallbacks
    def setUp(self) -> Any:
        yield super().setUp()
        self.masters = [newMaster(1)]
        self.keyring = Keyring("account", self.masters, reactor)
        self.codec = SealedFieldCodec(Sealer(self.keyring))
        self.service = yield self.startAccount(fields=self.codec)
        self.database = self.service.database
        self.store = self.service.store
        self.tables = AccountService.sealedTables()

    # Helpers

    @inlineCallbacks
    def register(self, *usernames: str) -> Any:
        """
        Register accounts through the service; their ids, in key order.
        """
        ids = []
        for username in usernames:
            account = yield self.bus.call(
                api.SERVICE_ID,
                "register",
                {
                    "username": username,
                    "email": f"{username.capitalize()}@Example.com",
                    "password": PASSWORD,
                    "display_name": f"{username.capitalize()} Smith",
                },
            )
            ids.append(account["id"])
        return sorted(ids)

    def rotate(self, version: int = 2) -> None:
        """
        Add a master version, active at once.
        """
        self.masters.append(newMaster(version))
        self.keyring.replace(self.masters, self.keyring.minDecryptVersion)
        self.assertEqual(self.keyring.currentVersion(), version)

    def retireBelow(self, version: int) -> None:
        self.masters = [m for m in self.masters if m.version >= version]
        self.keyring.replace(self.masters, version)

    def reencrypt(self, database: Any = None, **kwargs: Any) -> Any:
        kwargs.setdefault("batchSize", 2)
        return Reencryption(
            database if database is not None else self.database, self.codec, self.tables, **kwargs
        ).run()

    @inlineCallbacks
    def versions(self, table: SealedTable) -> Any:
        """
        The header version of every sealed value of C{table}, by row and
        column, read straight from the table.
        """
        rows = yield self.database.runQuery(
            f"SELECT {table.key}, {', '.join(table.columns)} FROM {table.table}"
        )
        return {
            (row[0], column): self.codec.versionOf(bytes(value))
            for row in rows
            for column, value in zip(table.columns, row[1:], strict=True)
        }

    @inlineCallbacks
    def assertAllUnder(self, version: int) -> Any:
        """
        Every sealed value of every table of the service is under
        C{version}; the accounts and reply log are not empty.
        """
        for table in self.tables:
            versions = yield self.versions(table)
            if table.table in ("accounts", "account_replies"):
                self.assertTrue(versions, f"{table.table} is empty")
            self.assertEqual(
                {where for where, v in versions.items() if v != version}, set(), table.table
            )

    @inlineCallbacks
    def readAll(self, ids: list[str]) -> Any:
        accounts = {}
        for accountId in ids:
            accounts[accountId] = yield self.store.byId(accountId)
        return accounts

    def progressRows(self) -> Any:
        return self.database.runQuery(
            "SELECT table_name, target_version, last_key, complete, rewritten, unreadable"
            " FROM key_reencryption ORDER BY table_name"
        )

    @inlineCallbacks
    def rawValue(self, accountId: str, column: str) -> Any:
        [(value,)] = yield self.database.runQuery(
            f"SELECT {column} FROM accounts WHERE id = ?", (accountId,)
        )
        return bytes(value)

    def setRawValue(self, accountId: str, column: str, value: bytes) -> Any:
        return self.database.runOperation(
            f"UPDATE accounts SET {column} = ? WHERE id = ?", (value, accountId)
        )

    @staticmethod
    def progressOf(results: list[TableProgress], table: str) -> TableProgress:
        [progress] = [p for p in results if p.table == table]
        return progress

    # Tests

    @inlineCallbacks
    def test_rewritesToCurrentVersion(self) -> Any:
        """
        After a rotation, a run rewrites every sealed value of the service's
        tables (accounts and its reply log) under the new version, with the
        same plaintexts; blind indexes are those of the new version, so
        lookups and uniqueness still work once the old version is retired.
        """
        ids = yield self.register(*NAMES)
        before = yield self.readAll(ids)
        self.rotate()

        results = yield self.reencrypt()

        self.assertEqual([p.table for p in results], [t.table for t in self.tables])
        accounts = self.progressOf(results, "accounts")
        self.assertEqual(
            (accounts.target, accounts.seen, accounts.rewritten, accounts.unreadable),
            (2, 5, 5, 0),
        )
        self.assertTrue(accounts.complete)
        self.assertEqual(accounts.lastKey, ids[-1])
        self.assertEqual(self.progressOf(results, "account_replies").rewritten, 5)
        yield self.assertAllUnder(2)
        rows = yield self.database.runQuery("SELECT id, username_index, email_index FROM accounts")
        for accountId, usernameIndex, emailIndex in rows:
            account = before[accountId]
            self.assertEqual(
                bytes(usernameIndex), self.codec.index("accounts", "username", account.username)
            )
            self.assertEqual(
                bytes(emailIndex),
                self.codec.index("accounts", "email", account.email.casefold()),
            )

        self.retireBelow(2)
        self.assertEqual(self.keyring.versions, [2])
        after = yield self.readAll(ids)
        self.assertEqual(after, before)
        found = yield self.store.byUsername("CAROL")
        self.assertEqual(found, before[found.id])
        self.assertEqual(found.username, "carol")
        error = yield self.assertFailure(
            self.bus.call(
                api.SERVICE_ID,
                "register",
                {"username": "alice2", "email": "alice@EXAMPLE.com", "password": PASSWORD},
            ),
            Conflict,
        )
        self.assertEqual(error.details, {"field": "email"})
        error = yield self.assertFailure(
            self.bus.call(
                api.SERVICE_ID,
                "register",
                {"username": "bob", "email": "bob2@example.com", "password": PASSWORD},
            ),
            Conflict,
        )
        self.assertEqual(error.details, {"field": "username"})

    @inlineCallbacks
    def test_runAgain(self) -> Any:
        """
        A run after a finished run reads every row again and rewrites none.
        """
        yield self.register(*NAMES[:3])
        self.rotate()
        yield self.reencrypt()
        results = yield self.reencrypt()
        accounts = self.progressOf(results, "accounts")
        self.assertEqual((accounts.seen, accounts.rewritten), (3, 0))
        self.assertEqual(sum(p.rewritten for p in results), 0)
        yield self.assertAllUnder(2)

    @inlineCallbacks
    def test_resumesAfterInterruption(self) -> Any:
        """
        Each batch saves the job's place; a run stopped after the first
        batch leaves it in C{key_reencryption}, and the next run goes on from
        there, reading only the rows after it, and finishes.
        """
        ids = yield self.register(*NAMES)
        before = yield self.readAll(ids)
        self.rotate()

        def interrupt(progress: TableProgress) -> None:
            raise Interrupted()

        yield self.assertFailure(self.reencrypt(report=interrupt), Interrupted)
        [row] = yield self.progressRows()
        self.assertEqual(row[:3], ("accounts", 2, ids[1]))
        self.assertFalse(row[3])
        self.assertEqual(row[4:], (2, 0))
        versions = yield self.versions(self.tables[0])
        self.assertEqual(
            {accountId for (accountId, _), v in versions.items() if v == 2}, set(ids[:2])
        )

        reports: list[tuple[str, str, int, int]] = []
        results = yield self.reencrypt(
            report=lambda p: reports.append((p.table, p.lastKey, p.seen, p.rewritten))
        )
        accountReports = [r for r in reports if r[0] == "accounts"]
        self.assertEqual(accountReports, [("accounts", ids[3], 2, 4), ("accounts", ids[4], 3, 5)])
        accounts = self.progressOf(results, "accounts")
        self.assertEqual((accounts.seen, accounts.rewritten, accounts.complete), (3, 5, True))
        rows = {row[0]: row for row in (yield self.progressRows())}
        self.assertEqual(set(rows), {t.table for t in self.tables})
        self.assertEqual(rows["accounts"][1:3], (2, ids[4]))
        self.assertTrue(rows["accounts"][3])
        self.assertEqual(rows["accounts"][4:], (5, 0))
        yield self.assertAllUnder(2)
        self.retireBelow(2)
        after = yield self.readAll(ids)
        self.assertEqual(after, before)

    @inlineCallbacks
    def test_newTargetStartsOver(self) -> Any:
        """
        A run interrupted on its way to version 2 is not resumed once
        version 3 is current: the next run starts again from the first row.
        """
        ids = yield self.register(*NAMES)
        self.rotate(2)

        def interrupt(progress: TableProgress) -> None:
            raise Interrupted()

        yield self.assertFailure(self.reencrypt(report=interrupt), Interrupted)
        self.rotate(3)
        results = yield self.reencrypt()
        accounts = self.progressOf(results, "accounts")
        self.assertEqual((accounts.target, accounts.seen, accounts.rewritten), (3, 5, 5))
        yield self.assertAllUnder(3)
        self.retireBelow(3)
        after = yield self.readAll(ids)
        self.assertEqual(sorted(a.username for a in after.values()), NAMES)

    @inlineCallbacks
    def test_corruptRowsSkipped(self) -> Any:
        """
        A row with a value that does not decrypt (a flipped ciphertext byte,
        or a header that cannot be parsed) is counted as unreadable, named,
        and left as it is; the other rows are rewritten and stay readable.
        """
        ids = yield self.register(*NAMES[:4])
        tampered = yield self.rawValue(ids[1], "email")
        tampered = tampered[:-1] + bytes([tampered[-1] ^ 1])
        yield self.setRawValue(ids[1], "email", tampered)
        noHeader = yield self.rawValue(ids[2], "display_name")
        noHeader = bytes([0x99]) + noHeader[1:]
        yield self.setRawValue(ids[2], "display_name", noHeader)
        self.rotate()

        results = yield self.reencrypt()

        accounts = self.progressOf(results, "accounts")
        self.assertEqual(
            (accounts.seen, accounts.rewritten, accounts.unreadable, accounts.skipped),
            (4, 2, 2, [ids[1], ids[2]]),
        )
        self.assertTrue(accounts.complete)
        [row] = [r for r in (yield self.progressRows()) if r[0] == "accounts"]
        self.assertEqual(row[4:], (2, 2))
        self.assertEqual((yield self.rawValue(ids[1], "email")), tampered)
        self.assertEqual((yield self.rawValue(ids[2], "display_name")), noHeader)
        versions = yield self.versions(self.tables[0])
        self.assertEqual(versions[(ids[1], "username")], 1)
        self.assertIsNone(versions[(ids[2], "display_name")])
        self.assertEqual({versions[(ids[0], c)] for c in self.tables[0].columns}, {2})
        self.assertEqual({versions[(ids[3], c)] for c in self.tables[0].columns}, {2})

        self.retireBelow(2)
        good = yield self.readAll([ids[0], ids[3]])
        self.assertEqual(len(good), 2)
        for accountId in ids[1:3]:
            yield self.assertFailure(self.store.byId(accountId), CorruptField)

    @inlineCallbacks
    def test_concurrentChangeLeftAlone(self) -> Any:
        """
        The UPDATE is optimistic: a row the service changed after the job
        read it is not overwritten with what the job read (the service's
        change stays), and is counted as not rewritten; a later run
        rewrites it.
        """
        ids = yield self.register(*NAMES[:3])
        before = yield self.readAll(ids)
        self.rotate()
        changed = self.codec.seal("accounts", "display_name", ids[1], "Changed Meanwhile")
        database = _ChangingDatabase(self.database, ids[1], bytes(changed))

        results = yield self.reencrypt(database)

        self.assertTrue(database.changed)
        accounts = self.progressOf(results, "accounts")
        self.assertEqual((accounts.seen, accounts.rewritten, accounts.unreadable), (3, 2, 0))
        account = yield self.store.byId(ids[1])
        self.assertEqual(account.display_name, "Changed Meanwhile")
        self.assertEqual(account.username, before[ids[1]].username)
        versions = yield self.versions(self.tables[0])
        self.assertEqual(versions[(ids[1], "username")], 1)

        results = yield self.reencrypt()
        self.assertEqual(self.progressOf(results, "accounts").rewritten, 1)
        yield self.assertAllUnder(2)
        self.retireBelow(2)
        account = yield self.store.byId(ids[1])
        self.assertEqual(account.display_name, "Changed Meanwhile")
        self.assertEqual(account.email, before[ids[1]].email)

    @inlineCallbacks
    def test_versionCounts(self) -> Any:
        """
        versionCounts counts the stored values of each table by the version
        of their header, with C{None} for a header that cannot be read.
        """
        ids = yield self.register("alice", "bob")
        self.rotate()
        yield self.register("carol")
        value = yield self.rawValue(ids[0], "email")
        yield self.setRawValue(ids[0], "email", b"\0" + value[1:])

        counts = yield versionCounts(self.database, self.codec, self.tables)

        self.assertEqual(set(counts), {t.table for t in self.tables})
        self.assertEqual(counts["accounts"], {1: 5, 2: 3, None: 1})
        self.assertEqual(counts["account_replies"], {1: 2, 2: 1})
        self.assertLessEqual(set(counts["account_outbox"]), {1, 2})

        yield self.reencrypt()
        counts = yield versionCounts(self.database, self.codec, self.tables)
        # The row with the unreadable email is left as it was.
        self.assertEqual(counts["accounts"], {1: 2, 2: 6, None: 1})
        self.assertEqual(counts["account_replies"], {2: 3})

    @inlineCallbacks
    def test_versionCountsPages(self) -> Any:
        """
        versionCounts reads a table of more than a thousand rows to its
        end, page by page.
        """
        table = SealedTable("sealed_things", "id", ["a", "b"])
        yield self.database.runOperation(
            self.database.ddl(
                "CREATE TABLE sealed_things (id {id} PRIMARY KEY, a {bytes}, b {bytes})"
            )
        )

        def rows(start: int, stop: int) -> list[tuple[str, bytes, bytes]]:
            return [
                (
                    f"{n:05d}",
                    bytes(self.codec.seal("sealed_things", "a", f"{n:05d}", "a")),
                    bytes(self.codec.seal("sealed_things", "b", f"{n:05d}", "b")),
                )
                for n in range(start, stop)
            ]

        old = rows(0, 1200)
        self.rotate()
        new = rows(1200, 1500)
        yield self.database.runInteraction(
            lambda t: t.executemany("INSERT INTO sealed_things VALUES (?, ?, ?)", old + new)
        )

        counts = yield versionCounts(self.database, self.codec, [table])

        self.assertEqual(counts, {"sealed_things": {1: 2400, 2: 600}})


class SQLiteReencryptionTests(SQLiteMixin, ReencryptionTestsMixin, ServiceTestCase):
    pass


class PostgresReencryptionTests(PostgresMixin, ReencryptionTestsMixin, ServiceTestCase):
    pass
