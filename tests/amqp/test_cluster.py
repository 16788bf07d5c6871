"""
The platform as it is deployed: two gateways and two replicas of each
service, every one its own twistd process, on RabbitMQ and PostgreSQL; the
HTTP contract driven through both gateways in turn.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.internet.task import deferLater

from ..processes import SERVING
from ..support import eventually, keyArguments
from .cluster import ClusterTestCase

PASSWORD = "correct horse"


class TwoGatewaysTestCase(ClusterTestCase):
    """
    Service replicas and two gateways, each its own process; requests go
    through either.
    """

    timeout = 240

    @inlineCallbacks
    def startPlatform(self, replicas: list[Any], *gatewayOptions: str) -> Any:
        gateways = [self.gateway(*gatewayOptions), self.gateway(*gatewayOptions)]
        self.processes = replicas + gateways
        yield gatherResults([p.ready for p in replicas])
        self.ports = yield gatherResults([g.ready for g in gateways])
        self.http = self.client()
        self.requests = [0, 0]
        self.addCleanup(self.noTracebacks)

    def gatewayURL(self, gateway: int) -> str:
        """
        Where gateway 0 or 1 takes requests.
        """
        return f"http://127.0.0.1:{self.ports[gateway]}"

    def noTracebacks(self) -> None:
        for process in self.processes:
            self.assertNotIn(b"Traceback", process.output, process.output.decode()[-3000:])

    @inlineCallbacks
    def request(
        self,
        gateway: int,
        method: str,
        path: str,
        body: Any = None,
        token: str | None = None,
        **headers: str,
    ) -> Any:
        """
        One HTTP request through gateway 0 or 1: its status and JSON body.
        """
        sent = {k.replace("_", "-"): [v] for k, v in headers.items()}
        if token:
            sent["Authorization"] = [f"Bearer {token}"]
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            sent.setdefault("Content-Type", ["application/json"])
        response = yield self.http.request(
            method, self.gatewayURL(gateway) + path, headers=sent, data=data
        )
        content = yield response.content()
        self.requests[gateway] += 1
        if response.code >= 400:
            self.assertEqual(
                response.headers.getRawHeaders("content-type"), ["application/problem+json"]
            )
        return response.code, (json.loads(content) if content else None)


class ClusterTests(TwoGatewaysTestCase):
    @inlineCallbacks
    def setUp(self) -> Any:
        yield super().setUp()
        replicas = [self.service(name) for name in ["account", "post", "notify"] for _ in range(2)]
        yield self.startPlatform(replicas)

    @inlineCallbacks
    def test_contractThroughBothGateways(self) -> Any:
        """
        Every route works whichever gateway (and replica) a request meets.
        """
        # Accounts
        for gateway, name in [(0, "alice"), (1, "bob"), (0, "carol")]:
            status, body = yield self.request(
                gateway,
                "POST",
                "/v1/accounts",
                {"username": name, "email": f"{name}@example.com", "password": PASSWORD},
            )
            self.assertEqual(status, 201, body)
        status, _ = yield self.request(
            1,
            "POST",
            "/v1/accounts",
            {"username": "alice", "email": "x@example.com", "password": PASSWORD},
        )
        self.assertEqual(status, 409)
        status, problem = yield self.request(0, "POST", "/v1/accounts", {"username": "A"})
        self.assertEqual(status, 400)
        self.assertTrue(problem["errors"])
        status, profile = yield self.request(1, "GET", "/v1/accounts/ALICE")
        self.assertEqual((status, profile["username"]), (200, "alice"))
        self.assertEqual((yield self.request(0, "GET", "/v1/accounts/nobody"))[0], 404)

        # Sessions: made through one gateway, used through the other
        tokens = {}
        for gateway, name in [(1, "alice"), (0, "bob"), (1, "carol")]:
            status, session = yield self.request(
                gateway, "POST", "/v1/sessions", {"username": name, "password": PASSWORD}
            )
            self.assertEqual(status, 201)
            tokens[name] = session["token"]
        status, _ = yield self.request(
            0, "POST", "/v1/sessions", {"username": "alice", "password": "wrong one"}
        )
        self.assertEqual(status, 401)
        status, me = yield self.request(0, "GET", "/v1/me", token=tokens["alice"])
        self.assertEqual((status, me["email"]), (200, "alice@example.com"))
        status, me = yield self.request(
            1, "PATCH", "/v1/me", {"display_name": "Alice A."}, token=tokens["alice"]
        )
        self.assertEqual((status, me["display_name"]), (200, "Alice A."))
        status, profile = yield self.request(0, "GET", "/v1/accounts/alice")
        self.assertEqual(profile["display_name"], "Alice A.")

        # Follows
        status, _ = yield self.request(0, "PUT", "/v1/me/following/alice", token=tokens["bob"])
        self.assertEqual(status, 204)
        status, following = yield self.request(1, "GET", "/v1/me/following", token=tokens["bob"])
        self.assertEqual([a["username"] for a in following["items"]], ["alice"])

        # Posts
        status, post = yield self.request(
            0, "POST", "/v1/posts", {"body": "hello @Carol"}, token=tokens["alice"]
        )
        self.assertEqual(status, 201)
        for gateway in (0, 1, 0, 1, 0, 1):  # and each gateway keeps it (--read-cache)
            status, read = yield self.request(gateway, "GET", f"/v1/posts/{post['id']}")
            self.assertEqual((status, read), (200, post))
        status, page = yield self.request(1, "GET", "/v1/accounts/alice/posts?limit=5")
        self.assertEqual([p["id"] for p in page["items"]], [post["id"]])

        # Notifications: a mention for carol, the followed author's post for bob
        @inlineCallbacks
        def notifications(gateway: int, name: str, query: str = "") -> Any:
            status, page = yield self.request(
                gateway, "GET", f"/v1/notifications{query}", token=tokens[name]
            )
            self.assertEqual(status, 200)
            return page["items"]

        [mention] = yield eventually(lambda: notifications(1, "carol"), timeout=15)
        self.assertEqual(
            (mention["kind"], mention["actor"], mention["post_id"]),
            ("mention", "alice", post["id"]),
        )
        [followed] = yield eventually(lambda: notifications(0, "bob"), timeout=15)
        self.assertEqual(followed["kind"], "followed_post")
        status, _ = yield self.request(
            0, "POST", f"/v1/notifications/{mention['id']}/read", token=tokens["carol"]
        )
        self.assertEqual(status, 204)
        self.assertEqual((yield notifications(1, "carol", "?unread=true")), [])
        status, _ = yield self.request(
            1, "POST", f"/v1/notifications/{mention['id']}/read", token=tokens["bob"]
        )
        self.assertEqual(status, 404)

        # Deleting a post: not someone else's; then gone everywhere
        status, _ = yield self.request(1, "DELETE", f"/v1/posts/{post['id']}", token=tokens["bob"])
        self.assertEqual(status, 403)
        status, _ = yield self.request(
            0, "DELETE", f"/v1/posts/{post['id']}", token=tokens["alice"]
        )
        self.assertEqual(status, 204)
        deleted = reactor.seconds()

        @inlineCallbacks
        def goneEverywhere() -> Any:
            statuses = []
            for _ in range(4):  # enough to meet both post replicas
                for gateway in (0, 1):
                    statuses.append(
                        (yield self.request(gateway, "GET", f"/v1/posts/{post['id']}"))[0]
                    )
            return set(statuses) == {404}

        @inlineCallbacks
        def goneFromBothGateways() -> Any:
            statuses = []
            for gateway in (0, 1):
                statuses.append((yield self.request(gateway, "GET", f"/v1/posts/{post['id']}"))[0])
            return set(statuses) == {404}

        # Both gateways kept it, and heard of its deletion from its event
        # at once (within --read-cache's second in any case).
        yield eventually(goneFromBothGateways, timeout=5)
        self.assertLess(reactor.seconds() - deleted, 1.5)
        yield eventually(goneEverywhere, timeout=15)
        yield eventually(
            lambda: notifications(0, "carol").addCallback(lambda items: items == []), timeout=15
        )

        # Unfollow, logout, delete an account
        status, _ = yield self.request(1, "DELETE", "/v1/me/following/alice", token=tokens["bob"])
        self.assertEqual(status, 204)
        status, _ = yield self.request(0, "DELETE", "/v1/sessions/current", token=tokens["bob"])
        self.assertEqual(status, 204)
        loggedOut = reactor.seconds()
        self.assertEqual((yield self.request(0, "GET", "/v1/me", token=tokens["bob"]))[0], 401)
        # The other gateway verified bob's token just before (the unfollow)
        # and may take it at its word for a second (--principal-cache): the
        # logout reaches it within that.
        yield eventually(
            lambda: self.request(1, "GET", "/v1/me", token=tokens["bob"]).addCallback(
                lambda answer: answer[0] == 401
            ),
            timeout=3,
        )
        self.assertLess(reactor.seconds() - loggedOut, 1.5)
        status, _ = yield self.request(
            1, "DELETE", "/v1/me", {"password": "wrong one"}, token=tokens["carol"]
        )
        self.assertEqual(status, 403)
        status, _ = yield self.request(
            1, "DELETE", "/v1/me", {"password": PASSWORD}, token=tokens["carol"]
        )
        self.assertEqual(status, 204)
        self.assertEqual((yield self.request(0, "GET", "/v1/accounts/carol"))[0], 404)

        # The HTTP layer itself, on each gateway
        for gateway in (0, 1):
            self.assertEqual(
                (yield self.request(gateway, "GET", "/healthz")), (200, {"status": "ok"})
            )
            status, document = yield self.request(gateway, "GET", "/v1/openapi.json")
            self.assertEqual((status, document["openapi"]), (200, "3.1.0"))
            status, _ = yield self.request(gateway, "PATCH", "/v1/posts")
            self.assertEqual(status, 405)
        self.assertTrue(all(self.requests), self.requests)

    @inlineCallbacks
    def test_loginThrottleAcrossGateways(self) -> Any:
        """
        A brute force spread over both gateways is counted as one: after
        six failures, three through each, the right password gets 429.
        """
        status, _ = yield self.request(
            0,
            "POST",
            "/v1/accounts",
            {"username": "target", "email": "target@example.com", "password": PASSWORD},
        )
        self.assertEqual(status, 201)
        for attempt in range(6):
            status, body = yield self.request(
                attempt % 2, "POST", "/v1/sessions", {"username": "target", "password": "guess"}
            )
            self.assertEqual(status, 401, body)
        status, body = yield self.request(
            1, "POST", "/v1/sessions", {"username": "target", "password": PASSWORD}
        )
        self.assertEqual(status, 429, body)
        self.assertEqual(body["retry_after"], 1)
        self.assertEqual(self.requests, [4, 4])

    @inlineCallbacks
    def test_streamAcrossGateways(self) -> Any:
        """
        A notification made through one gateway reaches a stream open on
        the other: every gateway hears every notification.created.  The
        stream is opened as a browser would, with a ticket asked for
        through the other gateway.
        """
        import treq

        from ..gateway.test_streams import EventStream

        for name in ("alice", "bob"):
            status, _ = yield self.request(
                0,
                "POST",
                "/v1/accounts",
                {"username": name, "email": f"{name}@example.com", "password": PASSWORD},
            )
            self.assertEqual(status, 201)
        tokens = {}
        for gateway, name in [(0, "alice"), (1, "bob")]:
            status, session = yield self.request(
                gateway, "POST", "/v1/sessions", {"username": name, "password": PASSWORD}
            )
            tokens[name] = session["token"]
        status, issued = yield self.request(
            1, "POST", "/v1/notifications/stream/tickets", token=tokens["bob"]
        )
        self.assertEqual(status, 201, issued)
        response = yield treq.get(
            f"http://127.0.0.1:{self.ports[0]}/v1/notifications/stream?ticket={issued['ticket']}",
            unbuffered=True,
            persistent=False,
        )
        self.assertEqual(response.code, 200)
        stream = EventStream()
        ended = treq.collect(response, stream.feed)
        self.addCleanup(lambda: ended.addErrback(lambda f: None))
        self.addCleanup(response.original._transport.loseConnection)
        yield eventually(lambda: stream.retry == 3000)
        status, created = yield self.request(
            1, "POST", "/v1/posts", {"body": "across @bob"}, token=tokens["alice"]
        )
        self.assertEqual(status, 201)
        yield eventually(lambda: stream.events, timeout=20)
        self.assertEqual(stream.events[0]["data"]["post_id"], created["id"])


class ParserPoolTests(TwoGatewaysTestCase):
    """
    Two gateways handing every body to a pool of two parser replicas.
    """

    @inlineCallbacks
    def setUp(self) -> Any:
        yield super().setUp()
        self.parsers = [self.parser(), self.parser()]
        replicas = [self.service(name) for name in ["account", "post", "notify"]]
        yield self.startPlatform(replicas + self.parsers, "--parser-over", "0")

    def parser(self) -> Any:
        # Logging every call: the test counts the survivor's parses.
        return self.spawn(
            "parser",
            "--bus",
            self.busURL,
            "--log-calls",
            *keyArguments(self.keys, "parser"),
            ready=SERVING,
        )

    @inlineCallbacks
    def test_bodiesThroughThePool(self) -> Any:
        """
        Through either gateway, bodies are parsed by the pool: valid ones
        do their work, malformed and invalid ones get the same problems as
        ever; with one parser killed, the other carries on.
        """
        for gateway, name in [(0, "alice"), (1, "bob")]:
            status, body = yield self.request(
                gateway,
                "POST",
                "/v1/accounts",
                {"username": name, "email": f"{name}@example.com", "password": PASSWORD},
            )
            self.assertEqual(status, 201, body)
        status, session = yield self.request(
            1, "POST", "/v1/sessions", {"username": "alice", "password": PASSWORD}
        )
        self.assertEqual(status, 201, session)
        status, problem = yield self.request(
            0, "POST", "/v1/posts", {"body": "hi @bob", "extra": 1}, token=session["token"]
        )
        self.assertEqual((status, problem["errors"][0]["field"]), (400, "extra"))
        response = yield self.http.post(
            f"http://127.0.0.1:{self.ports[1]}/v1/posts",
            data=b'{"body": "unfinished',
            headers={
                "Content-Type": ["application/json"],
                "Authorization": [f"Bearer {session['token']}"],
            },
        )
        problem = yield response.json()
        self.assertEqual(
            (response.code, problem["type"]), (400, "urn:txplatform:problem:malformed_json")
        )
        before = self.parsers[1].output.count(b"parser parse from 010100")
        self.parsers[0].transport.signalProcess("KILL")
        yield self.parsers[0].ended
        for gateway in (0, 1, 0, 1):
            status, body = yield self.request(
                gateway, "POST", "/v1/posts", {"body": "hello @bob"}, token=session["token"]
            )
            self.assertEqual(status, 201, body)
        # The survivor logged the four parses the posts needed.
        yield eventually(
            lambda: self.parsers[1].output.count(b"parser parse from 010100") >= before + 4
        )


class RateLimitAcrossGatewaysTests(TwoGatewaysTestCase):
    """
    Two gateways limiting requests per client address to 10 a minute,
    sharing their counts over RabbitMQ.
    """

    @inlineCallbacks
    def setUp(self) -> Any:
        yield super().setUp()
        yield self.startPlatform(
            [self.service("account")],
            "--rate-limit",
            "10/60",
            "--trusted-proxies",
            "127.0.0.1",
        )

    @inlineCallbacks
    def test_sharedLimit(self) -> Any:
        """
        A client spreading its requests over both gateways gets ten in all,
        then 429 from either; another client is not affected.
        """
        client = {"X_Forwarded_For": "198.51.100.7"}
        # The limit counts in 60 s windows (the wall clock's minutes), the
        # last one's count weighed by how much of it the sliding window
        # still covers: requests that straddle a minute would count less
        # than ten.  Start in a minute with time enough for all of them.
        left = 60 - reactor.seconds() % 60
        if left < 20:
            yield deferLater(reactor, left + 0.1, lambda: None)
        for _ in range(6):
            status, _ = yield self.request(0, "GET", "/v1/accounts/nobody", **client)
            self.assertEqual(status, 404)
        yield deferLater(reactor, 1.5, lambda: None)  # shared every 0.5 s
        for _ in range(4):
            status, _ = yield self.request(1, "GET", "/v1/accounts/nobody", **client)
            self.assertEqual(status, 404)
        status, problem = yield self.request(1, "GET", "/v1/accounts/nobody", **client)
        self.assertEqual(status, 429, problem)
        self.assertGreaterEqual(problem["retry_after"], 1)
        yield deferLater(reactor, 1.5, lambda: None)
        status, problem = yield self.request(0, "GET", "/v1/accounts/nobody", **client)
        self.assertEqual(status, 429, problem)
        status, _ = yield self.request(
            0, "GET", "/v1/accounts/nobody", X_Forwarded_For="198.51.100.8"
        )
        self.assertEqual(status, 404)
