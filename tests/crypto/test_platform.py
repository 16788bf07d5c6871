"""
Encryption across the running platform: what the databases hold, damaged
records, and keys moving on while requests are in flight.
"""

from __future__ import annotations

import base64
import glob
import os
from typing import Any

import psycopg
from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks

from txplatform.crypto.keyfile import readKeySource, writeKeyFile
from txplatform.crypto.reencrypt import Reencryption, versionCounts
from txplatform.crypto.sealing import Header
from txplatform.fields import CorruptField

from ..gateway.harness import PlatformTestCase
from ..support import POSTGRES_URL, PostgresMixin, SQLiteMixin, eventually, sleep

#: Words of the scenario that must never reach a database in clear.
SECRETS = [
    "zanzibarquux",
    "Wilhelmina Quuxworth",
    "wilhelmina.private@example.org",
    "the treasure lies under the old oak",
    "moonlitjackalope",
]


def forms(text: str) -> list[bytes]:
    """
    The ways a value could sit in a database in clear.
    """
    raw = text.encode("utf-8")
    return [
        raw,
        text.lower().encode(),
        raw.hex().encode(),
        base64.b64encode(raw)[:-4],
        text.encode("utf-16-le"),
    ]


class ScenarioMixin:
    keyPeriod = 3600.0

    @inlineCallbacks
    def scenario(self) -> Any:
        """
        Accounts, a follow, posts with a mention, notifications, sessions.
        """
        yield self.register(
            "zanzibarquux",
            display_name="Wilhelmina Quuxworth",
            email="wilhelmina.private@example.org",
        )
        author = yield self.login("zanzibarquux")
        fan = yield self.user("moonlitjackalope")
        reply = yield self.request("PUT", "/v1/me/following/zanzibarquux", token=fan)
        self.assertIn(reply.status, (200, 201, 204), reply.body)
        reply = yield self.request(
            "POST",
            "/v1/posts",
            json={"body": "the treasure lies under the old oak, @moonlitjackalope"},
            token=author,
        )
        self.assertEqual(reply.status, 201, reply.body)
        yield eventually(lambda: self.notificationsOf(fan).addCallback(bool))
        reply = yield self.request("GET", f"/v1/posts/{reply.json['id']}", token=fan)
        self.assertEqual(
            reply.json["body"], "the treasure lies under the old oak, @moonlitjackalope"
        )


class SQLiteAtRestTests(ScenarioMixin, SQLiteMixin, PlatformTestCase):
    @inlineCallbacks
    def test_noPlaintext(self) -> Any:
        """
        After a scenario through the gateway, no SQLite file (nor its
        journal) holds any of the users' words, in any common encoding.
        """
        yield self.scenario()
        files = []
        for service in (self.accounts, self.posts, self.notify):
            path = service.database.path
            files += [p for p in glob.glob(path + "*") if os.path.isfile(p)]
        self.assertEqual(len([f for f in files if f.endswith(".sqlite")]), 3)
        for path in files:
            with open(path, "rb") as f:
                content = f.read()
            for secret in SECRETS:
                for form in forms(secret):
                    self.assertNotIn(form, content, f"{secret!r} in {os.path.basename(path)}")


class PostgresAtRestTests(ScenarioMixin, PostgresMixin, PlatformTestCase):
    @inlineCallbacks
    def test_noPlaintext(self) -> Any:
        """
        After a scenario, no column of any table of any service's schema
        holds the users' words, in any common encoding.
        """
        yield self.scenario()
        schemas = [s.database.schema for s in (self.accounts, self.posts, self.notify)]
        dumped = yield self.dump(schemas)
        self.assertIn(b"accounts", dumped)  # the dump did read the tables
        for secret in SECRETS:
            for form in forms(secret):
                self.assertNotIn(form, dumped, secret)

    def dump(self, schemas: list[str]) -> Any:
        def run() -> bytes:
            out = []
            with psycopg.connect(POSTGRES_URL) as connection:
                for schema in schemas:
                    tables = connection.execute(
                        "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
                        (schema,),
                    ).fetchall()
                    for (table,) in tables:
                        out.append(table.encode())
                        rows = connection.execute(
                            f'SELECT * FROM "{schema}"."{table}"'  # noqa: S608 - our names
                        ).fetchall()
                        for row in rows:
                            for value in row:
                                out.append(
                                    value if isinstance(value, bytes) else str(value).encode()
                                )
            return b"\n".join(out)

        from twisted.internet import threads

        return threads.deferToThread(run)


class DamagedRecordTests(ScenarioMixin, SQLiteMixin, PlatformTestCase):
    @inlineCallbacks
    def test_tamperedPost(self) -> Any:
        """
        A post whose stored body was altered is refused with an error for
        that post alone; the author's other posts are still served, and
        the listing leaves the damaged one out.
        """
        token = yield self.user("writer")
        ids = []
        for n in range(3):
            reply = yield self.request("POST", "/v1/posts", json={"body": f"post {n}"}, token=token)
            ids.append(reply.json["id"])
        database = self.posts.database
        [(body,)] = yield database.runQuery("SELECT body FROM posts WHERE id = ?", (ids[1],))
        damaged = bytearray(body)
        damaged[-5] ^= 0x20
        yield database.runOperation(
            "UPDATE posts SET body = ? WHERE id = ?", (bytes(damaged), ids[1])
        )
        self.posts.cache.clear()
        error = yield self.assertFailure(self.posts.store.get(ids[1]), CorruptField)
        self.assertIn(f"posts.body of row {ids[1]} cannot be read", error.message)
        reply = yield self.request("GET", f"/v1/posts/{ids[1]}", token=token)
        self.assertProblem(reply, 500)
        for postId in (ids[0], ids[2]):
            reply = yield self.request("GET", f"/v1/posts/{postId}", token=token)
            self.assertEqual(reply.status, 200, reply.body)
        reply = yield self.request("GET", "/v1/accounts/writer/posts", token=token)
        self.assertEqual(reply.status, 200, reply.body)
        self.assertEqual(sorted(p["id"] for p in reply.json["items"]), sorted([ids[0], ids[2]]))
        self.flushLoggedErrors(CorruptField)

    @inlineCallbacks
    def test_movedField(self) -> Any:
        """
        A sealed value copied from one row to another (a valid ciphertext,
        in the wrong place) is refused.
        """
        token = yield self.user("mover")
        a = yield self.request("POST", "/v1/posts", json={"body": "first"}, token=token)
        b = yield self.request("POST", "/v1/posts", json={"body": "second"}, token=token)
        database = self.posts.database
        [(body,)] = yield database.runQuery("SELECT body FROM posts WHERE id = ?", (a.json["id"],))
        yield database.runOperation(
            "UPDATE posts SET body = ? WHERE id = ?", (bytes(body), b.json["id"])
        )
        yield self.assertFailure(self.posts.store.get(b.json["id"]), CorruptField)
        self.flushLoggedErrors(CorruptField)


class RotationTests(SQLiteMixin, PlatformTestCase):
    """
    Keys moving on under load: epochs of one second, then a new master
    version, then re-encryption and retirement.
    """

    keyPeriod = 1.0
    timeout = 60

    @inlineCallbacks
    def test_epochsAndMasterRotation(self) -> Any:
        token = yield self.user("rotator")
        created: list[str] = []
        failures: list[Any] = []
        started = reactor.seconds()

        @inlineCallbacks
        def client(n: int) -> Any:
            # Requests back to back across at least three epoch boundaries.
            i = 0
            while reactor.seconds() - started < 3.5:
                reply = yield self.request(
                    "POST", "/v1/posts", json={"body": f"client {n} post {i}"}, token=token
                )
                if reply.status != 201:
                    failures.append(reply.body)
                else:
                    created.append(reply.json["id"])
                    read = yield self.request("GET", f"/v1/posts/{reply.json['id']}", token=token)
                    if read.status != 200:
                        failures.append(read.body)
                i += 1

        yield gatherResults([client(n) for n in range(4)])
        self.assertEqual(failures, [])
        rows = yield self.posts.database.runQuery("SELECT body FROM posts")
        epochs = {Header.parse(bytes(body)).epoch for (body,) in rows}
        self.assertGreaterEqual(len(epochs), 3, "writes spanned at least three epochs")

        # A new master version, active now: the running service sees the
        # file change, writes under version 2, still reads version 1.
        path = self.keyPaths["post"]
        writeKeyFile(path, readKeySource(path).rotated(activatesAt=0))
        keyring = self.keys["post"].keyring
        yield eventually(lambda: keyring.currentVersion() == 2, timeout=5)
        reply = yield self.request("POST", "/v1/posts", json={"body": "under v2"}, token=token)
        [(body,)] = yield self.posts.database.runQuery(
            "SELECT body FROM posts WHERE id = ?", (reply.json["id"],)
        )
        self.assertEqual(Header.parse(bytes(body)).version, 2)
        old = yield self.request("GET", f"/v1/posts/{created[0]}", token=token)
        self.assertEqual(old.status, 200)

        # Re-encrypt, then retire version 1: everything still reads.
        codec = self.posts.fields
        tables = type(self.posts).sealedTables()
        yield Reencryption(self.posts.database, codec, tables, batchSize=50).run()
        counts = yield versionCounts(self.posts.database, codec, tables)
        self.assertEqual({v for c in counts.values() for v in c}, {2})
        writeKeyFile(path, readKeySource(path).retired(2))
        yield eventually(lambda: keyring.versions == [2], timeout=5)
        self.posts.cache.clear()
        for postId in created[:: max(1, len(created) // 20)]:
            reply = yield self.request("GET", f"/v1/posts/{postId}", token=token)
            self.assertEqual(reply.status, 200, reply.body)
        yield sleep(0)
