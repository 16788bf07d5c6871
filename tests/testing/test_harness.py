"""
Tests for L{txplatform.testing.harness}: the platform's own services run
deterministically, as a user's would.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from txplatform.errors import NotFound
from txplatform.testing import NeverFired, ServiceHarness
from txplatform_services.account import api as account
from txplatform_services.notify import api as notify
from txplatform_services.post import api as post


class HarnessTests(SynchronousTestCase):
    def harness(self, **kwargs) -> ServiceHarness:
        harness = ServiceHarness(self.mktemp(), **kwargs)
        self.addCleanup(harness.stop)
        return harness

    def test_serviceWithDatabase(self) -> None:
        """
        A service from the catalogue runs on its own SQLite database, its
        calls answered synchronously, its events recorded.
        """
        harness = self.harness()
        harness.startService("account", argon2_time_cost=1, argon2_memory_cost=8)
        created = harness.call(
            account.Register(username="alice", email="a@example.com", password="correct horse")
        )
        self.assertEqual(created["username"], "alice")
        self.assertEqual(
            [e["username"] for e in harness.events.named(account.ACCOUNT_CREATED)], ["alice"]
        )
        error = self.assertRaises(NotFound, harness.call, account.GetProfile(username="bob"))
        self.assertIn("bob", error.message)

    def test_encrypted(self) -> None:
        """
        Encrypted as production is, the services work the same, and what
        they store is sealed.
        """
        harness = self.harness(encrypted=True)
        harness.startService("account", argon2_time_cost=1, argon2_memory_cost=8)
        harness.call(
            account.Register(username="alice", email="a@example.com", password="correct horse")
        )
        self.assertEqual(harness.call(account.GetProfile(username="alice"))["username"], "alice")
        with open(f"{harness.directory}/account.sqlite", "rb") as f:
            self.assertNotIn(b"a@example.com", f.read())

    def test_fakes(self) -> None:
        """
        A service's calls to another are answered by the test's fakes: Notify
        learns from the fake Account who is mentioned and who follows.
        """
        harness = self.harness()
        alice, bob, carol = (c * 26 for c in "abc")

        def audiences(request: account.Audiences) -> dict:
            return {
                "mentioned": [{"id": bob, "username": n} for n in request.mentioned],
                "followers": {
                    author: {"items": [carol] if author == alice else [], "next": None}
                    for author in request.author_ids
                },
            }

        harness.fake({account.Audiences: audiences})
        harness.startService("notify")
        harness.publish(
            post.POST_CREATED,
            {
                "post_id": "p" * 26,
                "author_id": alice,
                "author_username": "alice",
                "body": "hi @bob",
                "created_at": 0,
            },
        )
        kinds = {
            who: [
                n["kind"] for n in harness.call(notify.ListNotifications(account_id=who))["items"]
            ]
            for who in (bob, carol)
        }
        self.assertEqual(kinds, {bob: ["mention"], carol: ["followed_post"]})
        self.assertEqual(harness.bus.deadLetters(), [])

    def test_malformedEvent(self) -> None:
        """
        An event its handler cannot take is dead-lettered, where the test
        can see it, and the service carries on.
        """
        harness = self.harness()
        harness.startService("notify")
        harness.publish(post.POST_CREATED, {"post_id": "nonsense"})
        [letter] = harness.bus.deadLetters()
        self.assertIn("post_id", letter.reason)

    def test_time(self) -> None:
        """
        Time moves only when the test says; a call nobody serves times out
        on the harness's clock, not the wall's.
        """
        harness = self.harness()
        before = harness.reactor.seconds()
        harness.advance(3600)
        self.assertEqual(harness.reactor.seconds(), before + 3600)
        from txplatform.errors import ServiceError

        self.assertRaises(ServiceError, harness.call, account.GetProfile(username="x"))
        from twisted.internet.defer import Deferred

        self.assertRaises(NeverFired, harness.run, Deferred(), within=5)


class FollowersPagesTests(SynchronousTestCase):
    def test_everyPage(self) -> None:
        """
        Notify goes through every page of an author's followers, not just
        the first (500 a page).
        """
        harness = ServiceHarness(self.mktemp())
        self.addCleanup(harness.stop)
        author = "a" * 26
        followers = [f"{n:026d}" for n in range(1200)]

        def page(request: account.ListFollowers) -> dict:
            start = int(request.cursor or 0)
            items = followers[start : start + request.limit]
            more = start + request.limit < len(followers)
            return {"items": items, "next": str(start + request.limit) if more else None}

        def audiences(request: account.Audiences) -> dict:
            return {
                "mentioned": [],
                "followers": {
                    author: page(account.ListFollowers(account_id=author, limit=request.limit))
                    for author in request.author_ids
                },
            }

        harness.fake({account.ListFollowers: page, account.Audiences: audiences})
        harness.startService("notify")
        harness.publish(
            post.POST_CREATED,
            {
                "post_id": "p" * 26,
                "author_id": author,
                "author_username": "alice",
                "body": "news",
                "created_at": 0,
            },
        )
        for who in (followers[0], followers[700], followers[-1]):
            items = harness.call(notify.ListNotifications(account_id=who))["items"]
            self.assertEqual([n["kind"] for n in items], ["followed_post"], who)
