"""
Tests for the Notify service's public interface (L{api.Notify}): other
services' notifications, of kinds Notify knows nothing about.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from txplatform.testing import ServiceHarness
from txplatform_services.notify import api
from txplatform_services.notify.store import MIGRATIONS
from txplatform_services.post import api as post

ALICE, BOB, CAROL = ("a" * 26, "b" * 26, "c" * 26)
POST = "p" * 26


def liked(recipient: str = ALICE, actor: str = BOB, topic: str = POST + "/bob") -> api.Notify:
    return api.Notify(
        recipient_id=recipient,
        kind="liked",
        actor_id=actor,
        actor_username="bob",
        post_id=POST,
        topic=topic,
    )


class NotifyInterfaceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.harness = ServiceHarness(self.mktemp())
        self.addCleanup(self.harness.stop)

    def listed(self, who: str = ALICE) -> list[dict]:
        return self.harness.call(api.ListNotifications(account_id=who))["items"]

    def test_notify(self) -> None:
        """
        A notification another service asks for is listed as it was asked,
        announced for live streams, and made once however often asked.
        """
        self.harness.startService("notify")
        self.assertEqual(self.harness.call(liked()), {"notified": True})
        self.assertEqual(self.harness.call(liked()), {"notified": False})
        [item] = self.listed()
        self.assertEqual(
            (item["kind"], item["actor"], item["post_id"], item["read"]),
            ("liked", "bob", POST, False),
        )
        [announced] = self.harness.events.named(api.NOTIFICATION_CREATED)
        self.assertEqual(announced["notifications"][0]["recipient_id"], ALICE)

    def test_severalAboutOnePost(self) -> None:
        """
        Topics tell notifications apart: two likers of one post are two
        notifications.
        """
        self.harness.startService("notify")
        self.harness.call(liked(actor=BOB, topic=POST + "/bob"))
        self.harness.call(liked(actor=CAROL, topic=POST + "/carol"))
        self.assertEqual(len(self.listed()), 2)

    def test_deleted(self) -> None:
        """
        Nothing is made about a post deleted before.
        """
        self.harness.startService("notify")
        self.harness.publish(post.POST_DELETED, {"post_id": POST, "author_id": ALICE})
        self.assertEqual(self.harness.call(liked()), {"notified": False})
        self.assertEqual(self.listed(), [])

    def test_migration(self) -> None:
        """
        Notifications stored before topics existed are kept, each its
        post's topic.
        """
        database = self.harness.database("notify")
        self.harness.run(database.migrate("notify", MIGRATIONS[:1]))
        self.harness.run(
            database.runOperation(
                "INSERT INTO notifications (id, recipient_id, kind, actor_id, actor_username,"
                " post_id, created_at, is_read) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                ("0" * 26, ALICE, "mention", BOB, b"bob", POST, 0, False),
            )
        )
        self.assertEqual(self.harness.run(database.migrate("notify", MIGRATIONS)), [2])
        rows = self.harness.run(database.runQuery("SELECT id, topic FROM notifications"))
        self.assertEqual(rows, [("0" * 26, POST)])
