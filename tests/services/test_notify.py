"""
Tests for the Notify service, on SQLite and on PostgreSQL, with the Account
and Post services beside it on the in-process bus.
"""

from typing import Any

from twisted.internet.defer import gatherResults, inlineCallbacks

from txplatform.context import Origin
from txplatform.errors import InvalidArgument, NotFound, Unavailable
from txplatform.recordid import newRecordId
from txplatform_services.account import api as account
from txplatform_services.notify import api
from txplatform_services.notify.store import NotificationRow
from txplatform_services.post import api as post

from ..support import PostgresMixin, SQLiteMixin, eventually, recordMessages
from .harness import ServiceTestCase

PASSWORD = "correct horse"


class NotifyTestsMixin:
    @inlineCallbacks
    def setUp(self) -> Any:
        yield super().setUp()
        self.accounts = yield self.startAccount()
        self.posts = yield self.startPost()
        self.notify = yield self.startNotify()
        self.ids: dict[str, str] = {}
        for name in ["alice", "bob", "carol", "dave"]:
            created = yield self.bus.call(
                account.SERVICE_ID,
                "register",
                {"username": name, "email": f"{name}@example.com", "password": PASSWORD},
            )
            self.ids[name] = created["id"]

    def follow(self, follower: str, followee: str) -> Any:
        return self.bus.call(
            account.SERVICE_ID, "follow", {"account_id": self.ids[follower], "username": followee}
        )

    def post(self, author: str, body: str) -> Any:
        return self.bus.call(
            post.SERVICE_ID,
            "create_post",
            {"author_id": self.ids[author], "author_username": author, "body": body},
        )

    def notifications(self, who: str, **query: Any) -> Any:
        return self.bus.call(
            api.SERVICE_ID, "list_notifications", {"account_id": self.ids[who], **query}
        )

    @inlineCallbacks
    def settle(self) -> Any:
        """
        Wait until every published event was handled.
        """
        yield self.posts.outbox.flush()
        yield self.accounts.outbox.flush()
        yield eventually(
            lambda: (
                all(
                    self.bus.pendingEvents("notify", pattern) == 0
                    for pattern in (post.POST_CREATED, post.POST_DELETED, account.ACCOUNT_DELETED)
                )
                and all(w.inflight == 0 for w in self.notify._subscriptions)
            )
        )

    def countStatements(self, database: Any, statements: list[str]) -> None:
        """
        Record the SQL of every statement C{database}'s transactions execute
        or send from now on.
        """
        run = database.runInteraction

        class Counting:
            def __init__(self, transaction: Any) -> None:
                self._transaction = transaction

            def __getattr__(self, name: str) -> Any:
                return getattr(self._transaction, name)

            def execute(self, sql: str, params: Any = ()) -> Any:
                statements.append(sql)
                self._transaction.execute(sql, params)
                return self

            def send(self, sql: str, params: Any = ()) -> None:
                statements.append(sql)
                self._transaction.send(sql, params)

            def query(self, sql: str, params: Any = ()) -> Any:
                statements.append(sql)
                return self._transaction.query(sql, params)

        def counting(interaction: Any, *args: Any, **kwargs: Any) -> Any:
            return run(lambda t, *a, **kw: interaction(Counting(t), *a, **kw), *args, **kwargs)

        self.patch(database, "runInteraction", counting)

    @inlineCallbacks
    def kinds(self, who: str) -> Any:
        page = yield self.notifications(who)
        return sorted((n["kind"], n["actor"]) for n in page["items"])

    @inlineCallbacks
    def test_mentionsAndFollowers(self) -> Any:
        """
        A post notifies the accounts it mentions (any case) and its author's
        followers; a mention wins over following; unknown names and the
        author's own name notify nobody.
        """
        yield self.follow("bob", "alice")
        yield self.follow("carol", "alice")
        created = yield self.post("alice", "hi @BOB and @dave, @alice and @nobody")
        yield eventually(lambda: self.kinds("carol"))
        yield self.settle()
        self.assertEqual((yield self.kinds("bob")), [("mention", "alice")])
        self.assertEqual((yield self.kinds("carol")), [("followed_post", "alice")])
        self.assertEqual((yield self.kinds("dave")), [("mention", "alice")])
        self.assertEqual((yield self.kinds("alice")), [])
        [notification] = (yield self.notifications("dave"))["items"]
        self.assertEqual(
            {k: notification[k] for k in ("post_id", "read")},
            {"post_id": created["id"], "read": False},
        )

    @inlineCallbacks
    def test_announced(self) -> Any:
        """
        New notifications are announced (notification.created) with their
        recipients and views, once: a redelivered post.created, which adds
        nothing, announces nothing.
        """
        yield self.follow("bob", "alice")
        created = yield self.post("alice", "hi @carol")
        [event] = yield self.recorder.waitFor(api.NOTIFICATION_CREATED)
        announced = sorted(event["notifications"], key=lambda n: n["kind"])
        self.assertEqual(
            [(n["recipient_id"], n["kind"], n["actor"], n["post_id"]) for n in announced],
            [
                (self.ids["bob"], "followed_post", "alice", created["id"]),
                (self.ids["carol"], "mention", "alice", created["id"]),
            ],
        )
        stored = (yield self.notifications("carol"))["items"]
        self.assertEqual([n["id"] for n in stored], [announced[1]["id"]])
        yield self.settle()
        yield self.bus.publish(
            post.POST_CREATED,
            {
                "post_id": created["id"],
                "author_id": self.ids["alice"],
                "author_username": "alice",
                "body": "hi @carol",
                "created_at": 0,
            },
        )
        yield self.settle()
        yield self.notify.outbox.flush()
        self.assertEqual(len(self.recorder.named(api.NOTIFICATION_CREATED)), 1)

    @inlineCallbacks
    def test_inPortions(self) -> Any:
        """
        A post to an audience larger than C{perTransaction} is stored in
        portions of that many notifications, one transaction each, each
        announcing its own: every recipient is notified once, and
        announced once.
        """
        self.notify.store.perTransaction = 2
        for follower in ("bob", "carol", "dave"):
            yield self.follow(follower, "alice")
        portions: list[int] = []
        run = self.notify.database.runInteraction

        def counting(interaction: Any, *args: Any) -> Any:
            if getattr(interaction, "__name__", "") == "_addAll":
                portions.append(sum(len(rows) for rows, _ in args[0]))
            return run(interaction, *args)

        self.patch(self.notify.database, "runInteraction", counting)
        created = yield self.post("alice", "hello")
        yield self.settle()
        yield eventually(lambda: len(self.recorder.named(api.NOTIFICATION_CREATED)) == 2)
        self.assertEqual(portions, [2, 1])
        for follower in ("bob", "carol", "dave"):
            [notification] = (yield self.notifications(follower))["items"]
            self.assertEqual(notification["post_id"], created["id"])
        announced = [
            n["recipient_id"]
            for event in self.recorder.named(api.NOTIFICATION_CREATED)
            for n in event["notifications"]
        ]
        self.assertEqual(sorted(announced), sorted(self.ids[f] for f in ("bob", "carol", "dave")))

    @inlineCallbacks
    def test_correlated(self) -> Any:
        """
        The events a request causes carry its correlation id, hop after
        hop: post.created, staged by the call's handler, and
        notification.created, staged by Notify's handler of post.created.
        """
        yield self.follow("bob", "alice")
        yield self.bus.call(
            post.SERVICE_ID,
            "create_post",
            {"author_id": self.ids["alice"], "author_username": "alice", "body": "hi"},
            origin=Origin(correlationId="request-7"),
        )
        yield self.recorder.waitFor(api.NOTIFICATION_CREATED)
        correlated = {
            event: context.correlationId
            for event, _, context in self.recorder.events
            if event in (post.POST_CREATED, api.NOTIFICATION_CREATED)
        }
        self.assertEqual(
            correlated, {post.POST_CREATED: "request-7", api.NOTIFICATION_CREATED: "request-7"}
        )

    @inlineCallbacks
    def test_together(self) -> Any:
        """
        Posts that arrive together are handled in one batch: one call to
        Account for all their mentions and authors' followers, one
        transaction, and each post's notifications announced by an event
        of its own, carrying that post's correlation id.
        """
        yield self.follow("bob", "alice")
        yield self.follow("carol", "dave")
        yield self.settle()
        asked = []
        audiences = self.accounts.store.audiences

        def counted(*args: Any) -> Any:
            asked.append(args)
            return audiences(*args)

        self.accounts.store.audiences = counted
        statements: list[str] = []
        self.countStatements(self.notify.store._database, statements)
        posts = [
            ("p" * 25 + "1", "alice", "hi @carol"),
            ("p" * 25 + "2", "dave", "hey"),
            ("p" * 25 + "3", "alice", "@dave and @BOB"),
        ]
        yield gatherResults(
            [
                self.bus.publish(
                    post.POST_CREATED,
                    {
                        "post_id": postId,
                        "author_id": self.ids[author],
                        "author_username": author,
                        "body": body,
                        "created_at": 0,
                    },
                    origin=Origin(correlationId=f"request-{postId[-1]}"),
                )
                for postId, author, body in posts
            ]
        )
        yield self.settle()
        self.assertEqual(len(asked), 1)
        # One statement for the tombstones of every post and account, one
        # for the five notifications.
        self.assertEqual(
            [sql.split(" (")[0] for sql in statements if "notify_tombstones" in sql],
            ["SELECT kind, id FROM notify_tombstones WHERE"],
        )
        self.assertEqual(
            len([sql for sql in statements if sql.startswith("INSERT INTO notifications")]), 1
        )
        self.assertEqual(sorted(asked[0][0]), sorted({self.ids["alice"], self.ids["dave"]}))
        self.assertEqual(sorted(asked[0][1]), ["bob", "carol", "dave"])
        self.assertEqual(
            (yield self.kinds("carol")), [("followed_post", "dave"), ("mention", "alice")]
        )
        self.assertEqual(
            (yield self.kinds("bob")), [("followed_post", "alice"), ("mention", "alice")]
        )
        self.assertEqual((yield self.kinds("dave")), [("mention", "alice")])
        self.assertEqual((yield self.kinds("alice")), [])
        yield self.notify.outbox.flush()
        announced = yield eventually(
            lambda: (
                len(self.recorder.named(api.NOTIFICATION_CREATED)) == 3
                and {
                    payload["notifications"][0]["post_id"]: context.correlationId
                    for event, payload, context in self.recorder.events
                    if event == api.NOTIFICATION_CREATED
                }
            )
        )
        self.assertEqual(announced, {postId: f"request-{postId[-1]}" for postId, _, _ in posts})

    @inlineCallbacks
    def test_redelivery(self) -> Any:
        """
        The same post.created handled twice adds nothing the second time.
        """
        created = yield self.post("alice", "hello @bob")
        yield eventually(lambda: self.kinds("bob"))
        yield self.bus.publish(
            post.POST_CREATED,
            {
                "post_id": created["id"],
                "author_id": self.ids["alice"],
                "author_username": "alice",
                "body": "hello @bob",
                "created_at": 0,
            },
        )
        yield self.settle()
        self.assertEqual(len((yield self.notifications("bob"))["items"]), 1)

    @inlineCallbacks
    def test_readAndUnread(self) -> Any:
        """
        Notifications can be marked read, only by their recipient, and
        filtered by state.
        """
        first = yield self.post("alice", "one @bob")
        yield self.post("alice", "two @bob")
        yield eventually(
            lambda: self.notifications("bob").addCallback(lambda p: len(p["items"]) == 2)
        )
        page = yield self.notifications("bob")
        older = [n for n in page["items"] if n["post_id"] == first["id"]][0]
        yield self.assertFailure(
            self.bus.call(
                api.SERVICE_ID,
                "mark_read",
                {"account_id": self.ids["carol"], "notification_id": older["id"]},
            ),
            NotFound,
        )
        yield self.bus.call(
            api.SERVICE_ID,
            "mark_read",
            {"account_id": self.ids["bob"], "notification_id": older["id"]},
        )
        unread = yield self.notifications("bob", unread=True)
        read = yield self.notifications("bob", unread=False)
        self.assertEqual([n["read"] for n in unread["items"]], [False])
        self.assertEqual([n["id"] for n in read["items"]], [older["id"]])
        self.assertTrue(read["items"][0]["read"])

    @inlineCallbacks
    def test_pages(self) -> Any:
        """
        Notifications come newest first, a page at a time.
        """
        yield self.follow("bob", "alice")
        for n in range(5):
            yield self.post("alice", f"post {n}")
        yield eventually(
            lambda: self.notifications("bob").addCallback(lambda p: len(p["items"]) == 5)
        )
        first = yield self.notifications("bob", limit=2)
        second = yield self.notifications("bob", limit=2, cursor=first["next"])
        third = yield self.notifications("bob", limit=2, cursor=second["next"])
        ids = [n["id"] for n in first["items"] + second["items"] + third["items"]]
        self.assertEqual(len(ids), 5)
        self.assertEqual(ids, sorted(ids, reverse=True))
        self.assertIsNone(third["next"])
        yield self.assertFailure(self.notifications("bob", cursor="bad"), InvalidArgument)

    @inlineCallbacks
    def test_postDeleted(self) -> Any:
        """
        Deleting a post removes its notifications, and a post.created
        arriving after its post.deleted leaves nothing behind.
        """
        created = yield self.post("alice", "@bob @carol")
        yield eventually(lambda: self.kinds("carol"))
        yield self.bus.call(
            post.SERVICE_ID,
            "delete_post",
            {"post_id": created["id"], "account_id": self.ids["alice"]},
        )
        yield eventually(lambda: self.kinds("carol").addCallback(lambda k: k == []))
        self.assertEqual((yield self.kinds("bob")), [])
        late = "01zzzzzzzzzzzzzzzzzzzzzzzz"
        yield self.bus.publish(post.POST_DELETED, {"post_id": late, "author_id": self.ids["alice"]})
        yield self.settle()
        yield self.bus.publish(
            post.POST_CREATED,
            {
                "post_id": late,
                "author_id": self.ids["alice"],
                "author_username": "alice",
                "body": "@bob",
                "created_at": 0,
            },
        )
        yield self.settle()
        self.assertEqual((yield self.kinds("bob")), [])

    @inlineCallbacks
    def test_accountDeleted(self) -> Any:
        """
        A deleted account loses its notifications, and every notification
        it caused goes too.
        """
        yield self.post("alice", "hi @bob")
        yield self.post("bob", "hi @alice and @carol")
        yield eventually(lambda: self.kinds("carol"))
        yield eventually(lambda: self.kinds("alice"))
        yield self.bus.call(
            account.SERVICE_ID,
            "delete_account",
            {"account_id": self.ids["bob"], "password": PASSWORD},
        )
        yield eventually(lambda: self.kinds("carol").addCallback(lambda k: k == []))
        self.assertEqual((yield self.kinds("alice")), [])
        rows = yield self.notify.database.runQuery(
            "SELECT id FROM notifications WHERE recipient_id = ?", (self.ids["bob"],)
        )
        self.assertEqual(rows, [])

    @inlineCallbacks
    def test_oneATopic(self) -> Any:
        """
        A recipient gets one notification a topic, in one batch too, and
        only those stored are announced: one that is there already, or
        that an earlier group of the batch stored, is neither stored nor
        announced again.
        """
        store = self.notify.store

        def row(recipient: str, topic: str) -> NotificationRow:
            return NotificationRow(
                id=newRecordId(self.clock),
                recipient_id=self.ids[recipient],
                kind="liked",
                actor_id=self.ids["alice"],
                actor_username="alice",
                post_id="p" * 26,
                created_at=0,
                read=False,
                topic=topic,
            )

        first = row("bob", "liked:1")
        added = yield store.add([first])
        self.assertEqual(added, 1)
        again, carol, carolAgain = (
            row("bob", "liked:1"),
            row("carol", "liked:1"),
            row("carol", "liked:1"),
        )
        added = yield store.addAll([([again, carol], None), ([carolAgain], None)])
        self.assertEqual(added, 1)
        kept = yield store.forRecipient(self.ids["bob"], None, 10, None)
        self.assertEqual([n.id for n in kept], [first.id])
        kept = yield store.forRecipient(self.ids["carol"], None, 10, None)
        self.assertEqual([n.id for n in kept], [carol.id])
        yield self.notify.outbox.flush()
        announced = yield eventually(
            lambda: (
                len(self.recorder.named(api.NOTIFICATION_CREATED)) == 2
                and [
                    [n["id"] for n in payload["notifications"]]
                    for payload in self.recorder.named(api.NOTIFICATION_CREATED)
                ]
            )
        )
        self.assertEqual(announced, [[first.id], [carol.id]])

    @inlineCallbacks
    def test_malformedEvent(self) -> Any:
        """
        A malformed post.created is dead-lettered and the service keeps going.
        """
        yield self.bus.publish(post.POST_CREATED, {"post_id": "x"})
        yield eventually(lambda: self.bus.deadLetters("notify"))
        yield self.post("alice", "hi @bob")
        yield eventually(lambda: self.kinds("bob"))


class SQLiteNotifyTests(SQLiteMixin, NotifyTestsMixin, ServiceTestCase):
    pass


class PostgresNotifyTests(PostgresMixin, NotifyTestsMixin, ServiceTestCase):
    @inlineCallbacks
    def test_writtenIn(self) -> Any:
        """
        Notifying of a post goes to PostgreSQL with every value written
        into the SQL text by L{txplatform.literals}, the INSERT whose
        returned ids say which notifications to announce included: no
        statement is left to psycopg's parameters.
        """
        yield self.follow("bob", "alice")
        yield self.settle()
        sent = recordMessages(self)
        yield self.post("alice", "hi @carol")
        yield self.settle()
        self.assertEqual([kind for kind, _ in (yield self.kinds("carol"))], ["mention"])
        mine = [m for m in sent if "notify_tombstones" in m or "INTO notifications " in m]
        self.assertEqual(len(mine), 2, mine)
        self.assertTrue(mine[0].startswith("BEGIN\n;\nSELECT count(pg_advisory_xact_lock"), mine)
        self.assertTrue(mine[1].startswith("INSERT INTO notifications "), mine)
        self.assertIn("ON CONFLICT DO NOTHING RETURNING id", mine[1])
        self.assertFalse([m for m in mine if "%s" in m or "$1" in m], mine)


class EarlierAccountTests(SQLiteMixin, ServiceTestCase):
    """
    During an upgrade, Notify may find an Account of the release before,
    which knows no account.audiences.
    """

    @inlineCallbacks
    def test_audienceOneByOne(self) -> Any:
        """
        Notify asks such an Account author by author (account.audience),
        the mentions with the first, and notifies the same accounts.
        """
        bob, carol, dave = ("01" + c * 24 for c in "bcd")
        asked = []

        def audience(payload: Any, context: Any) -> Any:
            asked.append(payload)
            mentioned = [{"id": bob, "username": "bob"}] if "bob" in payload["mentioned"] else []
            fans = {"01" + "a" * 24: [carol], "01" + "e" * 24: [dave]}
            return {
                "mentioned": mentioned,
                "followers": fans.get(payload["author_id"], []),
                "next": None,
            }

        yield self.bus.serve(account.SERVICE_ID, {"audience": audience})
        yield self.startNotify()
        yield gatherResults(
            [
                self.bus.publish(
                    post.POST_CREATED,
                    {
                        "post_id": "01" + postId * 24,
                        "author_id": "01" + author * 24,
                        "author_username": name,
                        "body": body,
                        "created_at": 0,
                    },
                )
                for postId, author, name, body in [
                    ("p", "a", "alice", "hi @bob"),
                    ("q", "e", "erin", "hello"),
                ]
            ]
        )

        def kinds(who: str) -> Any:
            d = self.bus.call(api.SERVICE_ID, "list_notifications", {"account_id": who})
            return d.addCallback(lambda page: sorted(n["kind"] for n in page["items"]))

        self.assertEqual((yield eventually(lambda: kinds(bob))), ["mention"])
        self.assertEqual((yield eventually(lambda: kinds(carol))), ["followed_post"])
        self.assertEqual((yield eventually(lambda: kinds(dave))), ["followed_post"])
        self.assertEqual(
            sorted((a["author_id"][-1], a["mentioned"]) for a in asked),
            [("a", ["bob"]), ("e", [])],
        )
        self.assertEqual(self.bus.deadLetters(), [])


class FlakyAccountTests(SQLiteMixin, ServiceTestCase):
    """
    Notify depends on Account; when Account fails, the event is retried,
    not lost.
    """

    @inlineCallbacks
    def test_retried(self) -> Any:
        """
        A post.created whose account lookups fail is handled again later.
        """
        failures = [2]

        def audiences(payload: Any, context: Any) -> Any:
            if failures[0]:
                failures[0] -= 1
                raise Unavailable("account database is restarting")
            bob = {"id": "01bbbbbbbbbbbbbbbbbbbbbbbb", "username": "bob"}
            followers = {author: {"items": [], "next": None} for author in payload["author_ids"]}
            return {"mentioned": [bob], "followers": followers}

        yield self.bus.serve(account.SERVICE_ID, {"audiences": audiences})
        yield self.startNotify()
        yield self.bus.publish(
            post.POST_CREATED,
            {
                "post_id": "01pppppppppppppppppppppppp",
                "author_id": "01aaaaaaaaaaaaaaaaaaaaaaaa",
                "author_username": "alice",
                "body": "@bob",
                "created_at": 0,
            },
        )

        def bobsNotifications() -> Any:
            return self.bus.call(
                api.SERVICE_ID, "list_notifications", {"account_id": "01bbbbbbbbbbbbbbbbbbbbbbbb"}
            ).addCallback(lambda page: page["items"])

        [notification] = yield eventually(bobsNotifications)
        self.assertEqual(notification["kind"], "mention")
        self.assertEqual(failures, [0])
        self.assertEqual(self.bus.deadLetters(), [])
