"""
Tests for the Post service, on SQLite and on PostgreSQL.
"""

from typing import Any

from twisted.internet.defer import DeferredList, gatherResults, inlineCallbacks, maybeDeferred

from txplatform.context import Origin
from txplatform.database import IntegrityError, PostgresDatabase, SQLiteDatabase
from txplatform.errors import InvalidArgument, NotFound, PermissionDenied, ResourceExhausted
from txplatform.recordid import isRecordId, newRecordId
from txplatform_services.account import api as account
from txplatform_services.post import api
from txplatform_services.post.service import PostService
from txplatform_services.post.store import PostRow

from ..support import (
    POSTGRES_URL,
    PostgresMixin,
    SQLiteMixin,
    eventually,
    recordCalls,
    recordMessages,
)
from .harness import ServiceTestCase, deliver

ALICE = "01aaaaaaaaaaaaaaaaaaaaaaaa"
BOB = "01bbbbbbbbbbbbbbbbbbbbbbbb"


class PostTestsMixin:
    @inlineCallbacks
    def setUp(self) -> Any:
        yield super().setUp()
        self.service = yield self.startPost()

    def call(self, method: str, **payload: Any) -> Any:
        return self.bus.call(api.SERVICE_ID, method, payload)

    def create(self, body: str, author: str = ALICE, username: str = "alice") -> Any:
        return self.call("create_post", author_id=author, author_username=username, body=body)

    @inlineCallbacks
    def test_create(self) -> Any:
        """
        A new post is readable, and post.created carries what Notify needs.
        """
        created = yield self.create("hello @bob")
        self.assertTrue(isRecordId(created["id"]))
        self.assertEqual((created["author"], created["body"]), ("alice", "hello @bob"))
        self.assertEqual((yield self.call("get_post", post_id=created["id"])), created)
        [event] = yield self.recorder.waitFor(api.POST_CREATED)
        self.assertEqual(
            {k: event[k] for k in ("post_id", "author_id", "author_username", "body")},
            {
                "post_id": created["id"],
                "author_id": ALICE,
                "author_username": "alice",
                "body": "hello @bob",
            },
        )

    def countCreates(self) -> list[int]:
        """
        The size of every batch of creates from now on, one transaction
        each.
        """
        batches: list[int] = []
        run = self.service.database.runInteraction

        def counting(interaction: Any, *args: Any, **kwargs: Any) -> Any:
            if getattr(interaction, "__name__", "") == "_create":
                batches.append(len(args[0]))
            return run(interaction, *args, **kwargs)

        self.patch(self.service.database, "runInteraction", counting)
        return batches

    @inlineCallbacks
    def test_createdTogether(self) -> Any:
        """
        Posts asked for together are created in one transaction (group
        commit); each is its own post, announced by its own event with its
        call's correlation id.
        """
        batches = self.countCreates()
        authors = [ALICE, BOB, ALICE, ALICE, BOB]
        created = yield gatherResults(
            [
                self.bus.call(
                    api.SERVICE_ID,
                    "create_post",
                    {"author_id": author, "author_username": "someone", "body": f"post {n}"},
                    origin=Origin(correlationId=f"request-{n}"),
                )
                for n, author in enumerate(authors)
            ]
        )
        self.assertEqual(batches, [5])
        self.assertEqual([post["body"] for post in created], [f"post {n}" for n in range(5)])
        self.assertEqual(len({post["id"] for post in created}), 5)
        for post in created:
            self.assertEqual((yield self.call("get_post", post_id=post["id"])), post)
        yield self.recorder.waitFor(api.POST_CREATED, 5)
        announced = {
            payload["post_id"]: (payload["author_id"], context.correlationId)
            for name, payload, context in self.recorder.events
            if name == api.POST_CREATED
        }
        self.assertEqual(
            announced,
            {post["id"]: (authors[n], f"request-{n}") for n, post in enumerate(created)},
        )

    @inlineCallbacks
    def test_refusedAlone(self) -> Any:
        """
        In a batch, the post of a deleted author is refused, and the others
        are created.
        """
        yield self.bus.publish(account.ACCOUNT_DELETED, {"account_id": ALICE, "username": "alice"})
        yield eventually(
            lambda: self.service.database.runQuery(
                "SELECT 1 FROM post_deleted_authors WHERE account_id = ?", (ALICE,)
            )
        )
        batches = self.countCreates()
        results = yield DeferredList(
            [
                self.create("bob's", author=BOB),
                self.create("alice's"),
                self.create("bob again", author=BOB),
            ],
            consumeErrors=True,
        )
        self.assertEqual(batches, [3])
        self.assertEqual([ok for ok, _ in results], [True, False, True])
        results[1][1].trap(NotFound)
        self.assertEqual([results[0][1]["body"], results[2][1]["body"]], ["bob's", "bob again"])

    @inlineCallbacks
    def test_failedBatchRunAlone(self) -> Any:
        """
        A batch whose transaction fails (a post whose id is taken) is
        created again one post at a time: only the post at fault fails.
        """
        first = yield self.create("first")
        batches = self.countCreates()
        clash = PostRow(first["id"], ALICE, "alice", "clash", 0)
        fine = PostRow(newRecordId(self.clock), BOB, "bob", "fine", 0)
        results = yield DeferredList(
            [self.service.store.create(clash), self.service.store.create(fine)],
            consumeErrors=True,
        )
        self.assertEqual(batches, [2, 1, 1])
        self.assertFalse(results[0][0])
        results[0][1].trap(IntegrityError)
        self.assertEqual(results[1], (True, fine))
        self.assertEqual((yield self.call("get_post", post_id=fine.id))["body"], "fine")

    @inlineCallbacks
    def test_body(self) -> Any:
        """
        A body has 1 to 5000 characters, and more than white space.
        """
        yield self.create("x" * 5000)
        yield self.create("line one\nline two")
        for body in ["", "   \n\t", "x" * 5001]:
            error = yield self.assertFailure(self.create(body), InvalidArgument)
            self.assertEqual(error.details["errors"][0]["field"], "body")

    @inlineCallbacks
    def test_missing(self) -> Any:
        """
        Reading a post that does not exist is not found.
        """
        yield self.assertFailure(self.call("get_post", post_id="0" * 26), NotFound)
        yield self.assertFailure(self.call("get_post", post_id="nope"), InvalidArgument)

    @inlineCallbacks
    def test_listNewestFirst(self) -> Any:
        """
        An author's posts come newest first, page by page, each once, and
        only theirs.
        """
        bodies = [f"post {n}" for n in range(7)]
        for body in bodies:
            yield self.create(body)
        yield self.create("by bob", author=BOB, username="bob")
        seen = []
        cursor = None
        while True:
            request = {"author_id": ALICE, "limit": 3}
            if cursor:
                request["cursor"] = cursor
            result = yield self.call("list_posts", **request)
            self.assertLessEqual(len(result["items"]), 3)
            seen += [p["body"] for p in result["items"]]
            cursor = result["next"]
            if cursor is None:
                break
        self.assertEqual(seen, list(reversed(bodies)))
        empty = yield self.call("list_posts", author_id="01cccccccccccccccccccccccc")
        self.assertEqual(empty, {"items": [], "next": None})
        yield self.assertFailure(
            self.call("list_posts", author_id=ALICE, cursor="bad"), InvalidArgument
        )
        yield self.assertFailure(
            self.call("list_posts", author_id=ALICE, limit=101), InvalidArgument
        )

    @inlineCallbacks
    def test_delete(self) -> Any:
        """
        Only the author deletes a post; post.deleted follows.
        """
        created = yield self.create("soon gone")
        yield self.assertFailure(
            self.call("delete_post", post_id=created["id"], account_id=BOB), PermissionDenied
        )
        yield self.call("delete_post", post_id=created["id"], account_id=ALICE)
        yield self.assertFailure(self.call("get_post", post_id=created["id"]), NotFound)
        yield self.assertFailure(
            self.call("delete_post", post_id=created["id"], account_id=ALICE), NotFound
        )
        [event] = yield self.recorder.waitFor(api.POST_DELETED)
        self.assertEqual(event, {"post_id": created["id"], "author_id": ALICE})

    @inlineCallbacks
    def test_authorDeleted(self) -> Any:
        """
        When an account is deleted its posts go, and a post it was still
        creating is refused.
        """
        kept = yield self.create("bob's", author=BOB, username="bob")
        for n in range(3):
            yield self.create(f"alice {n}")
        yield self.bus.publish(account.ACCOUNT_DELETED, {"account_id": ALICE, "username": "alice"})

        def gone() -> Any:
            d = self.call("list_posts", author_id=ALICE)
            return d.addCallback(lambda page: page["items"] == [])

        yield eventually(gone)
        yield self.call("get_post", post_id=kept["id"])
        yield self.assertFailure(self.create("too late"), NotFound)

    @inlineCallbacks
    def test_malformedEvent(self) -> Any:
        """
        A malformed account.deleted is dead-lettered; the service carries on.
        """
        yield self.bus.publish(account.ACCOUNT_DELETED, {"account": ALICE})
        yield eventually(lambda: self.bus.deadLetters("post"))
        yield self.create("still here")

    @inlineCallbacks
    def test_redeliveredCreate(self) -> Any:
        """
        A create_post delivered again (its first replica died after
        committing) answers the recorded reply and creates nothing more.
        """
        payload = {"author_id": ALICE, "author_username": "alice", "body": "once"}
        first = yield deliver(self.service, "create_post", payload, "msg-1", False)
        again = yield deliver(self.service, "create_post", payload, "msg-1", True)
        self.assertEqual(again, first)
        page = yield self.call("list_posts", author_id=ALICE)
        self.assertEqual([p["id"] for p in page["items"]], [first["id"]])
        other = yield deliver(self.service, "create_post", payload, "msg-2", True)
        self.assertNotEqual(other["id"], first["id"])

    @inlineCallbacks
    def test_redeliveredDelete(self) -> Any:
        """
        A delete_post delivered again answers as the first time did, not
        "no such post".
        """
        created = yield self.create("soon gone")
        payload = {"post_id": created["id"], "account_id": ALICE}
        self.assertEqual((yield deliver(self.service, "delete_post", payload, "del-1", False)), {})
        self.assertEqual((yield deliver(self.service, "delete_post", payload, "del-1", True)), {})
        yield self.assertFailure(
            deliver(self.service, "delete_post", payload, "del-2", True), NotFound
        )

    @inlineCallbacks
    def test_purgedAnnounced(self) -> Any:
        """
        Once an author's posts are deleted, post.purged says so.
        """
        yield self.create("soon gone")
        yield self.bus.publish(account.ACCOUNT_DELETED, {"account_id": ALICE, "username": "alice"})
        [event] = yield self.recorder.waitFor(api.POSTS_PURGED)
        self.assertEqual(event, {"author_id": ALICE})


class PostCacheTestsMixin:
    """
    The cache of post views, with two replicas sharing one database.
    """

    @inlineCallbacks
    def setUp(self) -> Any:
        yield super().setUp()
        database = self.makeDatabase("post")
        self.first = yield self.start(PostService(self.bus, database, self.clock))
        self.second = yield self.start(PostService(self.bus, self.reopen(database), self.clock))

    def read(self, replica: PostService, postId: str) -> Any:
        return maybeDeferred(replica.get_post, api.GetPost(post_id=postId), None)

    @inlineCallbacks
    def created(self, body: str = "hello", author: str = ALICE) -> Any:
        view = yield self.bus.call(
            api.SERVICE_ID,
            "create_post",
            {"author_id": author, "author_username": "someone", "body": body},
        )
        return view

    @inlineCallbacks
    def test_servedFromCache(self) -> Any:
        """
        A post read once is served from memory the next time.
        """
        view = yield self.created()
        first = yield self.read(self.first, view["id"])
        queries = self.first.cache.misses
        again = self.read(self.first, view["id"])
        self.assertEqual(self.successResultOf(again), first)
        self.assertEqual(first, view)
        self.assertEqual((self.first.cache.hits, self.first.cache.misses), (1, queries))

    @inlineCallbacks
    def test_deletedOnThisReplica(self) -> Any:
        """
        The replica that deleted a post stops serving it at once.
        """
        view = yield self.created()
        yield self.read(self.first, view["id"])
        yield self.first.delete_post(api.DeletePost(post_id=view["id"], account_id=ALICE), None)
        yield self.assertFailure(self.read(self.first, view["id"]), NotFound)

    @inlineCallbacks
    def test_deletedOnAnotherReplica(self) -> Any:
        """
        The other replicas stop serving a deleted post once post.deleted
        reaches them.
        """
        view = yield self.created()
        yield self.read(self.second, view["id"])
        yield self.first.delete_post(api.DeletePost(post_id=view["id"], account_id=ALICE), None)

        def gone() -> Any:
            d = self.read(self.second, view["id"])
            return d.addCallbacks(lambda _: False, lambda f: f.trap(NotFound) and True)

        yield eventually(gone)

    @inlineCallbacks
    def test_readAcrossDeletion(self) -> Any:
        """
        A read under way while the post is deleted answers, but does not
        leave the post in the cache.
        """
        view = yield self.created()
        reading = self.read(self.second, view["id"])
        self.second.cache.invalidate(view["id"])  # as post.deleted would
        yield reading
        self.assertIsNone(self.second.cache.get(view["id"]))

    @inlineCallbacks
    def test_authorPurged(self) -> Any:
        """
        Every replica forgets the posts of a deleted account once they are
        deleted, and keeps the others.
        """
        gone = yield self.created("alice's")
        kept = yield self.created("bob's", author=BOB)
        for replica in (self.first, self.second):
            yield self.read(replica, gone["id"])
            yield self.read(replica, kept["id"])
        yield self.bus.publish(account.ACCOUNT_DELETED, {"account_id": ALICE, "username": "alice"})

        def forgotten() -> bool:
            return all(
                r.cache.get(gone["id"]) is None and r.cache.get(kept["id"]) is not None
                for r in (self.first, self.second)
            )

        yield eventually(forgotten)
        for replica in (self.first, self.second):
            yield self.assertFailure(self.read(replica, gone["id"]), NotFound)


class SQLitePostTests(SQLiteMixin, PostTestsMixin, ServiceTestCase):
    pass


class PostgresPostTests(PostgresMixin, PostTestsMixin, ServiceTestCase):
    pass


class PostgresSealedPostTests(PostgresMixin, ServiceTestCase):
    # Encrypted fields and payloads, as in production.
    keyPeriod = 3600.0

    @inlineCallbacks
    def test_writtenWithoutEscaping(self) -> Any:
        """
        What a created post sends (the post, its event, its recorded reply)
        is written into the SQL text by L{txplatform.literals}, sealed
        fields included: none of it needs psycopg's escaping, whatever the
        post says.
        """
        import psycopg

        yield self.startPost()
        escaped = recordCalls(self, psycopg.ClientCursor, "mogrify")
        body = "it's a 'quote' \\ and caf\u00e9 -- @bob"
        created = yield self.bus.call(
            api.SERVICE_ID,
            "create_post",
            {"author_id": ALICE, "author_username": "alice", "body": body},
        )
        yield self.recorder.waitFor(api.POST_CREATED)
        self.assertEqual(escaped, [])
        read = yield self.bus.call(api.SERVICE_ID, "get_post", {"post_id": created["id"]})
        self.assertEqual(read["body"], body)


class SQLitePostCacheTests(SQLiteMixin, PostCacheTestsMixin, ServiceTestCase):
    def reopen(self, database: Any) -> Any:
        other = SQLiteDatabase(database.path)
        self.addCleanup(other.close)
        return other


class PostgresPostCacheTests(PostgresMixin, PostCacheTestsMixin, ServiceTestCase):
    def reopen(self, database: Any) -> Any:
        other = PostgresDatabase(POSTGRES_URL, schema=database.schema)
        self.addCleanup(other.close)
        return other


class PostRateTestsMixin:
    """
    The per-author post rate, counted in the database.
    """

    @inlineCallbacks
    def setUp(self) -> Any:
        yield super().setUp()
        self.service = yield self.startPost(postRate=3, postRatePeriod=60.0)

    def create(self, author: str = "01hx" + "a" * 22, body: str = "x") -> Any:
        return self.bus.call(
            api.SERVICE_ID,
            "create_post",
            {"author_id": author, "author_username": "alice", "body": body},
        )

    @inlineCallbacks
    def test_rate(self) -> Any:
        """
        Three posts a minute pass; the fourth is refused with the time to
        wait, another author is not; a minute after the first, it passes.
        """
        for n in range(3):
            yield self.create(body=f"post {n}")
        error = yield self.assertFailure(self.create(), ResourceExhausted)
        self.assertGreater(error.details["retry_after"], 55)
        self.assertLessEqual(error.details["retry_after"], 60)
        yield self.create(author="01hx" + "b" * 22)
        self.clock.offset += 61
        yield self.create()

    @inlineCallbacks
    def test_rateInOneBatch(self) -> Any:
        """
        Posts created together count against the rate in the order they
        came, those before them in their batch included: of five at once,
        with one made before, two pass.
        """
        yield self.create(body="before")
        results = yield DeferredList(
            [self.create(body=f"post {n}") for n in range(5)], consumeErrors=True
        )
        self.assertEqual([ok for ok, _ in results], [True, True, False, False, False])
        for _, failure in results[2:]:
            failure.trap(ResourceExhausted)
        listed = yield self.bus.call(api.SERVICE_ID, "list_posts", {"author_id": "01hx" + "a" * 22})
        self.assertEqual([post["body"] for post in listed["items"]], ["post 1", "post 0", "before"])


class SQLitePostRateTests(SQLiteMixin, PostRateTestsMixin, ServiceTestCase):
    pass


class PostgresPostRateTests(PostgresMixin, PostRateTestsMixin, ServiceTestCase):
    @inlineCallbacks
    def test_roundTrips(self) -> Any:
        """
        With a rate, a post is still two round trips: the tombstone and the
        author's newest posts are asked for in one message, the post and
        its event go with the COMMIT.
        """

        sent = recordMessages(self)
        yield self.create()
        # The relay's own transactions come and go in between.
        mine = [q for q in sent if "post_deleted_authors" in q or "INSERT INTO posts" in q]
        self.assertEqual(len(mine), 2, sent)
        self.assertIn("ORDER BY id DESC LIMIT", mine[0])
        self.assertTrue(mine[1].endswith("COMMIT"), mine[1])
        self.assertEqual([q for q in sent if "ORDER BY id DESC LIMIT" in q], mine[:1])
