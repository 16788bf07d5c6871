"""
The likes service with the platform's own, in one synchronous test each.
"""

from twisted.trial.unittest import SynchronousTestCase

from txplatform.testing import ServiceHarness
from txplatform_gateway.testing import GatewayClient

CHEAP = {"argon2_time_cost": 1, "argon2_memory_cost": 8}


class LikesTests(SynchronousTestCase):
    def setUp(self):
        self.harness = ServiceHarness(self.mktemp(), encrypted=True)
        self.addCleanup(self.harness.stop)
        for name in ("account", "post", "notify", "likes"):
            self.harness.startService(name, **(CHEAP if name == "account" else {}))
        self.http = GatewayClient(self.harness)
        self.alice, self.bob = self.user("alice"), self.user("bob")
        self.post = self.http.post("/v1/posts", {"body": "hello"}, token=self.alice).json["id"]

    def user(self, name):
        login = {"username": name, "password": "correct horse"}
        self.http.post("/v1/accounts", {**login, "email": f"{name}@example.com"})
        return self.http.post("/v1/sessions", login).json["token"]

    def likes(self):
        reply = self.http.get(f"/v1/posts/{self.post}/likes")
        self.assertEqual(reply.status, 200, reply.body)
        return reply.json["count"], [like["username"] for like in reply.json["items"]]

    def notifications(self, token):
        items = self.http.get("/v1/notifications", token=token).json["items"]
        return [(n["kind"], n["actor"], n["post_id"]) for n in items]

    def test_like(self):
        """Liking twice is one like; the author is told once, the liker not."""
        for token in (self.bob, self.bob, self.alice):
            self.assertEqual(self.http.put(f"/v1/posts/{self.post}/like", token=token).status, 204)
        self.assertEqual(self.likes(), (2, ["alice", "bob"]))
        self.assertEqual(self.notifications(self.alice), [("liked", "bob", self.post)])
        self.assertEqual(self.harness.events.named("post.liked")[0]["username"], "bob")

    def test_unlike(self):
        """Unliking takes the like back; unliking again is harmless."""
        self.http.put(f"/v1/posts/{self.post}/like", token=self.bob)
        for _ in range(2):
            self.assertEqual(
                self.http.delete(f"/v1/posts/{self.post}/like", token=self.bob).status, 204
            )
        self.assertEqual(self.likes(), (0, []))

    def test_pages(self):
        """Likers come newest first, a page at a time."""
        for name in ("carol", "dave", "erin"):
            self.http.put(f"/v1/posts/{self.post}/like", token=self.user(name))
        first = self.http.get(f"/v1/posts/{self.post}/likes?limit=2").json
        second = self.http.get(f"/v1/posts/{self.post}/likes?limit=2&cursor={first['next']}").json
        self.assertEqual(
            [i["username"] for i in first["items"] + second["items"]], ["erin", "dave", "carol"]
        )
        self.assertEqual((first["count"], second["next"]), (3, None))

    def test_gone(self):
        """Likes go with their post, and with the account that liked."""
        self.http.put(f"/v1/posts/{self.post}/like", token=self.bob)
        self.http.request("DELETE", "/v1/me", json={"password": "correct horse"}, token=self.bob)
        self.assertEqual(self.likes(), (0, []))
        self.http.put(f"/v1/posts/{self.post}/like", token=self.alice)
        self.http.delete(f"/v1/posts/{self.post}", token=self.alice)
        self.assertEqual(self.likes(), (0, []))

    def test_errors(self):
        """No such post, or no token: problem details."""
        self.assertEqual(
            self.http.put("/v1/posts/" + "0" * 26 + "/like", token=self.bob).status, 404
        )
        self.assertEqual(self.http.put(f"/v1/posts/{self.post}/like").status, 401)

    def test_sealed(self):
        """Who liked is sealed at rest."""
        self.http.put(f"/v1/posts/{self.post}/like", token=self.bob)
        with open(f"{self.harness.directory}/likes.sqlite", "rb") as f:
            self.assertNotIn(b"bob", f.read())
