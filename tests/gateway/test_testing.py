"""
Tests for L{txplatform_gateway.testing}: the gateway in a test, without a
port, over services in a harness.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from txplatform.testing import ServiceHarness
from txplatform_gateway.testing import GatewayClient


class GatewayClientTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.harness = ServiceHarness(self.mktemp())
        self.addCleanup(self.harness.stop)
        for name in ("account", "post", "notify"):
            options = {"argon2_time_cost": 1, "argon2_memory_cost": 8} if name == "account" else {}
            self.harness.startService(name, **options)
        self.client = GatewayClient(self.harness)

    def test_walkThrough(self) -> None:
        """
        Register, log in, post mentioning someone: the notification is made,
        all in one synchronous test.
        """
        for name in ("alice", "bob"):
            reply = self.client.post(
                "/v1/accounts",
                {"username": name, "email": f"{name}@example.com", "password": "correct horse"},
            )
            self.assertEqual(reply.status, 201, reply.body)
        tokens = {
            name: self.client.post(
                "/v1/sessions", {"username": name, "password": "correct horse"}
            ).json["token"]
            for name in ("alice", "bob")
        }
        reply = self.client.post("/v1/posts", {"body": "hi @bob"}, token=tokens["alice"])
        self.assertEqual(reply.status, 201)
        self.assertEqual(reply.header("location"), f"/v1/posts/{reply.json['id']}")
        items = self.client.get("/v1/notifications", token=tokens["bob"]).json["items"]
        self.assertEqual([i["kind"] for i in items], ["mention"])

    def test_problems(self) -> None:
        """
        Errors come back as the client sees them: problem details.
        """
        reply = self.client.get("/v1/accounts/nobody")
        self.assertEqual(reply.status, 404)
        self.assertEqual(reply.header("content-type"), "application/problem+json")
        self.assertEqual(self.client.get("/v1/me").status, 401)

    def test_serviceAway(self) -> None:
        """
        Routes of a service that is not running answer 503, naming it.
        """
        harness = ServiceHarness(self.mktemp())
        self.addCleanup(harness.stop)
        harness.startService("account", argon2_time_cost=1, argon2_memory_cost=8)
        client = GatewayClient(harness, callTimeout=2.0)
        client.post(
            "/v1/accounts",
            {"username": "alice", "email": "alice@example.com", "password": "correct horse"},
        )
        token = client.post(
            "/v1/sessions", {"username": "alice", "password": "correct horse"}
        ).json["token"]
        reply = client.get("/v1/notifications", token=token)
        self.assertEqual(reply.status, 503)
        self.assertIn("the notify service", reply.json["detail"])
