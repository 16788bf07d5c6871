"""
End-to-end tests of the HTTP API: real HTTP to the gateway on a loopback
port, the services behind it on the in-process bus, on SQLite and on
PostgreSQL.  Every reply is also checked against the OpenAPI document.
"""

from io import BytesIO
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import FileBodyProducer
from twisted.web.iweb import UNKNOWN_LENGTH

from txplatform.errors import NotFound
from txplatform.recordid import newRecordId
from txplatform.routes import Principal
from txplatform_services.parser.service import ParserService

from ..support import PostgresMixin, SQLiteMixin, eventually
from .harness import PASSWORD, PlatformTestCase


class AccountEndpointTests:
    @inlineCallbacks
    def test_register(self) -> Any:
        """
        POST /v1/accounts creates an account: 201, its own view with email,
        and where to find it.
        """
        reply = yield self.request(
            "POST",
            "/v1/accounts",
            json={"username": "alice", "email": "alice@example.com", "password": PASSWORD},
        )
        self.assertEqual(reply.status, 201)
        self.assertEqual(reply.header("location"), "/v1/accounts/alice")
        account = reply.json
        self.assertEqual(
            (account["username"], account["display_name"], account["email"]),
            ("alice", "alice", "alice@example.com"),
        )

    @inlineCallbacks
    def test_registerConflicts(self) -> Any:
        """
        A taken username or email (in any case) is a 409 that says which.
        """
        yield self.register("alice")
        reply = yield self.request(
            "POST",
            "/v1/accounts",
            json={"username": "alice", "email": "other@example.com", "password": PASSWORD},
        )
        self.assertIn("username", self.assertProblem(reply, 409, "conflict")["detail"])
        reply = yield self.request(
            "POST",
            "/v1/accounts",
            json={"username": "alice2", "email": "ALICE@example.com", "password": PASSWORD},
        )
        self.assertIn("email", self.assertProblem(reply, 409, "conflict")["detail"])

    @inlineCallbacks
    def test_registerInvalid(self) -> Any:
        """
        Invalid and unknown fields are a 400 listing each field and why.
        """
        reply = yield self.request(
            "POST",
            "/v1/accounts",
            json={"username": "Al", "email": "nope", "password": "short", "admin": True},
        )
        problem = self.assertProblem(reply, 400, "invalid_argument")
        self.assertEqual(
            sorted(e["field"] for e in problem["errors"]),
            ["admin", "email", "password", "username"],
        )
        self.assertIn("password: must be at least 10 characters", problem["detail"])
        reply = yield self.request("POST", "/v1/accounts", json={"username": "alice"})
        problem = self.assertProblem(reply, 400, "invalid_argument")
        self.assertEqual(sorted(e["field"] for e in problem["errors"]), ["email", "password"])

    @inlineCallbacks
    def test_malformedBodies(self) -> Any:
        """
        Bodies that are not a JSON object get a 400 saying what is wrong.
        """
        cases = [
            (b'{"username": ', "not valid JSON"),
            (b"\xff\xfe", "not UTF-8"),
            (b'{"username": NaN}', "not valid JSON"),
            (b"[1, 2]", "JSON object"),
            (b'"text"', "JSON object"),
            (b"", "not valid JSON"),
        ]
        for body, expected in cases:
            reply = yield self.request(
                "POST", "/v1/accounts", data=body, headers={"Content-Type": "application/json"}
            )
            self.assertIn(expected, self.assertProblem(reply, 400)["detail"], body)

    @inlineCallbacks
    def test_unsupportedMediaType(self) -> Any:
        """
        A body that is not declared JSON is a 415; JSON with a charset or a
        +json type is fine.
        """
        body = b'{"username": "alice", "email": "alice@example.com", "password": "correct horse"}'
        for contentType in [None, "text/plain", "application/x-www-form-urlencoded"]:
            headers = {"Content-Type": contentType} if contentType else {}
            reply = yield self.request("POST", "/v1/accounts", data=body, headers=headers)
            self.assertProblem(reply, 415, "unsupported_media_type")
        reply = yield self.request(
            "POST",
            "/v1/accounts",
            data=body,
            headers={"Content-Type": "application/json; charset=utf-8"},
        )
        self.assertEqual(reply.status, 201)

    @inlineCallbacks
    def test_bodyTooLarge(self) -> Any:
        """
        A body over the limit is a 413, whether its length was declared or
        it came in chunks; the limit itself is accepted.
        """
        filler = "x" * (self.maxBodySize + 10)
        reply = yield self.request("POST", "/v1/accounts", json={"username": filler})
        self.assertProblem(reply, 413, "body_too_large")

        def chunks() -> Any:
            producer = FileBodyProducer(BytesIO(b"{" + b" " * (self.maxBodySize + 10) + b"}"))
            producer.length = UNKNOWN_LENGTH  # so it is sent chunked
            return producer

        reply = yield self.request(
            "POST", "/v1/accounts", data=chunks(), headers={"Content-Type": "application/json"}
        )
        self.assertProblem(reply, 413, "body_too_large")
        exact = b"{" + b" " * (self.maxBodySize - 2) + b"}"
        reply = yield self.request(
            "POST", "/v1/accounts", data=exact, headers={"Content-Type": "application/json"}
        )
        self.assertProblem(reply, 400, "invalid_argument")

    @inlineCallbacks
    def test_profile(self) -> Any:
        """
        Profiles are public, without the email, found in any case.
        """
        account = yield self.register("alice", display_name="Alice A.")
        reply = yield self.request("GET", "/v1/accounts/Alice")
        self.assertEqual(reply.status, 200)
        self.assertEqual(
            reply.json, {k: account[k] for k in ("id", "username", "display_name", "created_at")}
        )
        for path in ["/v1/accounts/nobody", "/v1/accounts/no-such-name", "/v1/accounts/x"]:
            reply = yield self.request("GET", path)
            self.assertProblem(reply, 404, "not_found")

    @inlineCallbacks
    def test_authorPosts(self) -> Any:
        """
        An author's posts are public, newest first, paged with an opaque
        cursor.
        """
        token = yield self.user("alice")
        for n in range(5):
            reply = yield self.request("POST", "/v1/posts", token=token, json={"body": f"post {n}"})
            self.assertEqual(reply.status, 201)
        seen = []
        path = "/v1/accounts/alice/posts?limit=2"
        while path:
            reply = yield self.request("GET", path)
            self.assertEqual(reply.status, 200)
            seen += [p["body"] for p in reply.json["items"]]
            cursor = reply.json["next"]
            path = f"/v1/accounts/alice/posts?limit=2&cursor={cursor}" if cursor else None
        self.assertEqual(seen, [f"post {n}" for n in reversed(range(5))])
        reply = yield self.request("GET", "/v1/accounts/alice/posts")
        self.assertEqual(len(reply.json["items"]), 5)
        reply = yield self.request("GET", "/v1/accounts/nobody/posts")
        self.assertProblem(reply, 404)

    @inlineCallbacks
    def test_pageParameters(self) -> Any:
        """
        C{limit} is 1-100 and C{cursor} must come from the API; anything else
        is a 400 naming the parameter.
        """
        yield self.register("alice")
        for query, field in [
            ("limit=0", "limit"),
            ("limit=101", "limit"),
            ("limit=ten", "limit"),
            ("limit=", "limit"),
            ("cursor=forged", "cursor"),
            ("cursor=0", "cursor"),
        ]:
            reply = yield self.request("GET", f"/v1/accounts/alice/posts?{query}")
            problem = self.assertProblem(reply, 400, "invalid_argument")
            self.assertEqual(problem["errors"][0]["field"], field, query)
        reply = yield self.request("GET", "/v1/accounts/alice/posts?limit=100&utm_source=x")
        self.assertEqual(reply.status, 200)


class MeEndpointTests:
    @inlineCallbacks
    def test_me(self) -> Any:
        """
        GET /v1/me gives the caller's own account, with email, not cached.
        """
        token = yield self.user("alice")
        reply = yield self.request("GET", "/v1/me", token=token)
        self.assertEqual(reply.status, 200)
        self.assertEqual(
            (reply.json["username"], reply.json["email"]), ("alice", "alice@example.com")
        )
        self.assertEqual(reply.header("cache-control"), "no-store")

    @inlineCallbacks
    def test_unauthenticated(self) -> Any:
        """
        Without a valid bearer token, every private route is a 401 with a
        challenge.
        """
        token = yield self.user("alice")
        routes = [
            ("GET", "/v1/me"),
            ("PATCH", "/v1/me"),
            ("DELETE", "/v1/me"),
            ("GET", "/v1/me/following"),
            ("PUT", "/v1/me/following/alice"),
            ("DELETE", "/v1/me/following/alice"),
            ("DELETE", "/v1/sessions/current"),
            ("POST", "/v1/posts"),
            ("DELETE", "/v1/posts/01aaaaaaaaaaaaaaaaaaaaaaaa"),
            ("GET", "/v1/notifications"),
            ("POST", "/v1/notifications/01aaaaaaaaaaaaaaaaaaaaaaaa/read"),
        ]
        badHeaders = [
            {},
            {"Authorization": f"Basic {token}"},
            {"Authorization": "Bearer"},
            {"Authorization": "Bearer " + "A" * 43},
            {"Authorization": "Bearer not/a/token!!"},
        ]
        for method, path in routes:
            for headers in badHeaders:
                reply = yield self.request(method, path, headers=headers, json={})
                self.assertProblem(reply, 401, "unauthenticated")
                self.assertEqual(reply.header("www-authenticate"), 'Bearer realm="txplatform"')

    @inlineCallbacks
    def test_update(self) -> Any:
        """
        PATCH /v1/me changes the email and display name.
        """
        token = yield self.user("alice")
        reply = yield self.request(
            "PATCH", "/v1/me", token=token, json={"email": "new@example.com", "display_name": "Al"}
        )
        self.assertEqual(reply.status, 200)
        self.assertEqual(
            (reply.json["email"], reply.json["display_name"]), ("new@example.com", "Al")
        )
        reply = yield self.request("GET", "/v1/accounts/alice")
        self.assertEqual(reply.json["display_name"], "Al")

    @inlineCallbacks
    def test_updateErrors(self) -> Any:
        """
        An empty or unknown change is a 400, an email taken a 409.
        """
        token = yield self.user("alice")
        yield self.register("bob")
        reply = yield self.request("PATCH", "/v1/me", token=token, json={})
        self.assertProblem(reply, 400)
        reply = yield self.request("PATCH", "/v1/me", token=token, json={"username": "eve"})
        self.assertProblem(reply, 400)
        reply = yield self.request(
            "PATCH", "/v1/me", token=token, json={"email": "bob@example.com"}
        )
        self.assertProblem(reply, 409)

    @inlineCallbacks
    def test_changePassword(self) -> Any:
        """
        Changing the password needs the current one (403 otherwise); the
        session used stays, the others end.
        """
        token = yield self.user("alice")
        other = yield self.login("alice")
        reply = yield self.request(
            "PATCH",
            "/v1/me",
            token=token,
            json={"password": "a new password", "current_password": "not my password"},
        )
        self.assertProblem(reply, 403, "permission_denied")
        reply = yield self.request(
            "PATCH",
            "/v1/me",
            token=token,
            json={"password": "a new password", "current_password": PASSWORD},
        )
        self.assertEqual(reply.status, 200)
        self.assertEqual((yield self.request("GET", "/v1/me", token=token)).status, 200)
        self.assertProblem((yield self.request("GET", "/v1/me", token=other)), 401)
        reply = yield self.request(
            "POST", "/v1/sessions", json={"username": "alice", "password": PASSWORD}
        )
        self.assertProblem(reply, 401)
        yield self.login("alice", "a new password")

    @inlineCallbacks
    def test_delete(self) -> Any:
        """
        DELETE /v1/me needs the password (403 if wrong, 400 if missing);
        then the account, its token, posts and notifications are gone.
        """
        alice = yield self.user("alice")
        bob = yield self.user("bob")
        yield self.request("PUT", "/v1/me/following/alice", token=bob)
        reply = yield self.request("POST", "/v1/posts", token=alice, json={"body": "hello @bob"})
        postId = reply.json["id"]
        yield eventually(lambda: self.notificationsOf(bob))
        reply = yield self.request("DELETE", "/v1/me", token=alice, json={"password": "wrong one"})
        self.assertProblem(reply, 403)
        reply = yield self.request("DELETE", "/v1/me", token=alice)
        self.assertProblem(reply, 415)
        reply = yield self.request("DELETE", "/v1/me", token=alice, json={})
        self.assertProblem(reply, 400)
        reply = yield self.request("DELETE", "/v1/me", token=alice, json={"password": PASSWORD})
        self.assertEqual((reply.status, reply.body), (204, b""))
        self.assertProblem((yield self.request("GET", "/v1/me", token=alice)), 401)
        self.assertProblem((yield self.request("GET", "/v1/accounts/alice")), 404)

        @inlineCallbacks
        def cleanedUp() -> Any:
            postGone = (yield self.request("GET", f"/v1/posts/{postId}")).status == 404
            return postGone and (yield self.notificationsOf(bob)) == []

        yield eventually(cleanedUp)
        reply = yield self.request("GET", "/v1/me/following", token=bob)
        self.assertEqual(reply.json["items"], [])

    @inlineCallbacks
    def test_following(self) -> Any:
        """
        PUT and DELETE /v1/me/following/{username} follow and unfollow (204,
        idempotent); GET /v1/me/following lists, most recent first.
        """
        token = yield self.user("me_")
        for name in ["alice", "bob"]:
            yield self.register(name)
            reply = yield self.request("PUT", f"/v1/me/following/{name}", token=token)
            self.assertEqual((reply.status, reply.body), (204, b""))
        yield self.request("PUT", "/v1/me/following/ALICE", token=token)
        reply = yield self.request("GET", "/v1/me/following", token=token)
        self.assertEqual([a["username"] for a in reply.json["items"]], ["bob", "alice"])
        reply = yield self.request("GET", "/v1/me/following?limit=1", token=token)
        self.assertEqual(len(reply.json["items"]), 1)
        self.assertIsNotNone(reply.json["next"])
        reply = yield self.request("DELETE", "/v1/me/following/bob", token=token)
        self.assertEqual(reply.status, 204)
        reply = yield self.request("DELETE", "/v1/me/following/bob", token=token)
        self.assertEqual(reply.status, 204)
        reply = yield self.request("GET", "/v1/me/following", token=token)
        self.assertEqual([a["username"] for a in reply.json["items"]], ["alice"])

    @inlineCallbacks
    def test_followingErrors(self) -> Any:
        """
        Following nobody is a 404, following oneself a 400.
        """
        token = yield self.user("alice")
        self.assertProblem((yield self.request("PUT", "/v1/me/following/nobody", token=token)), 404)
        self.assertProblem(
            (yield self.request("DELETE", "/v1/me/following/nobody", token=token)), 404
        )
        self.assertProblem((yield self.request("PUT", "/v1/me/following/alice", token=token)), 400)


class SessionEndpointTests:
    @inlineCallbacks
    def test_login(self) -> Any:
        """
        POST /v1/sessions gives a token and its expiry, never cached.
        """
        yield self.register("alice")
        reply = yield self.request(
            "POST", "/v1/sessions", json={"username": "alice", "password": PASSWORD}
        )
        self.assertEqual(reply.status, 201)
        self.assertEqual(sorted(reply.json), ["expires_at", "token"])
        self.assertEqual(reply.header("cache-control"), "no-store")

    @inlineCallbacks
    def test_badLogin(self) -> Any:
        """
        A wrong password or unknown user is a 401; missing fields a 400.
        """
        yield self.register("alice")
        for body in [
            {"username": "alice", "password": "wrong password"},
            {"username": "nobody", "password": PASSWORD},
        ]:
            self.assertProblem((yield self.request("POST", "/v1/sessions", json=body)), 401)
        self.assertProblem(
            (yield self.request("POST", "/v1/sessions", json={"username": "a"})), 400
        )

    @inlineCallbacks
    def test_logout(self) -> Any:
        """
        DELETE /v1/sessions/current revokes the token used, and only it.
        """
        token = yield self.user("alice")
        other = yield self.login("alice")
        reply = yield self.request("DELETE", "/v1/sessions/current", token=token)
        self.assertEqual((reply.status, reply.body), (204, b""))
        self.assertProblem((yield self.request("GET", "/v1/me", token=token)), 401)
        self.assertEqual((yield self.request("GET", "/v1/me", token=other)).status, 200)

    @inlineCallbacks
    def test_principalReused(self) -> Any:
        """
        A verified token is taken at its word for a second on this gateway:
        three requests, one verification; a second later it is asked again.
        A logout through this gateway is seen at once.
        """
        token = yield self.user("alice")
        asked: list[str] = []
        real = self.gateway.authenticator.authenticate

        def counting(exchange: Any, given: str) -> Any:
            asked.append(given)
            return real(exchange, given)

        self.patch(self.gateway.authenticator, "authenticate", counting)
        for _ in range(3):
            self.assertEqual((yield self.request("GET", "/v1/me", token=token)).status, 200)
        self.assertEqual(len(asked), 1)
        self.clock.offset += 1.1
        self.assertEqual((yield self.request("GET", "/v1/me", token=token)).status, 200)
        self.assertEqual(len(asked), 2)
        reply = yield self.request("DELETE", "/v1/sessions/current", token=token)
        self.assertEqual(reply.status, 204)
        self.assertProblem((yield self.request("GET", "/v1/me", token=token)), 401)

    @inlineCallbacks
    def test_expired(self) -> Any:
        """
        An expired token is a 401.
        """
        token = yield self.user("alice")
        self.clock.offset = self.accounts.sessionLifetime + 1
        self.assertProblem((yield self.request("GET", "/v1/me", token=token)), 401)


class PostEndpointTests:
    @inlineCallbacks
    def test_createReadDelete(self) -> Any:
        """
        A post is created (201, Location), read by anyone, and deleted by
        its author (204).
        """
        token = yield self.user("alice")
        reply = yield self.request("POST", "/v1/posts", token=token, json={"body": "hello"})
        self.assertEqual(reply.status, 201)
        created = reply.json
        self.assertEqual(reply.header("location"), f"/v1/posts/{created['id']}")
        self.assertEqual((created["author"], created["body"]), ("alice", "hello"))
        reply = yield self.request("GET", f"/v1/posts/{created['id']}")
        self.assertEqual((reply.status, reply.json), (200, created))
        reply = yield self.request("DELETE", f"/v1/posts/{created['id']}", token=token)
        self.assertEqual((reply.status, reply.body), (204, b""))
        self.assertProblem((yield self.request("GET", f"/v1/posts/{created['id']}")), 404)
        self.assertProblem(
            (yield self.request("DELETE", f"/v1/posts/{created['id']}", token=token)), 404
        )

    @inlineCallbacks
    def test_notYours(self) -> Any:
        """
        Deleting someone else's post is a 403, and the post stays.
        """
        alice = yield self.user("alice")
        bob = yield self.user("bob")
        created = (yield self.request("POST", "/v1/posts", token=alice, json={"body": "mine"})).json
        reply = yield self.request("DELETE", f"/v1/posts/{created['id']}", token=bob)
        self.assertProblem(reply, 403, "permission_denied")
        self.assertEqual((yield self.request("GET", f"/v1/posts/{created['id']}")).status, 200)

    @inlineCallbacks
    def test_invalidPosts(self) -> Any:
        """
        Bodies of 1-5000 characters with more than white space; anything
        else is a 400.
        """
        token = yield self.user("alice")
        for body in [
            {"body": ""},
            {"body": "  "},
            {"body": "x" * 5001},
            {"body": 5},
            {},
            {"body": "x", "to": "y"},
        ]:
            self.assertProblem(
                (yield self.request("POST", "/v1/posts", token=token, json=body)), 400
            )
        reply = yield self.request("POST", "/v1/posts", token=token, json={"body": "é" * 5000})
        self.assertEqual(reply.status, 201)

    @inlineCallbacks
    def test_unknownPosts(self) -> Any:
        """
        Unknown and impossible post ids are 404s.
        """
        for postId in ["01aaaaaaaaaaaaaaaaaaaaaaaa", "nope", "ILOU" * 6 + "xx"]:
            self.assertProblem((yield self.request("GET", f"/v1/posts/{postId}")), 404)


class IdempotencyKeyTests:
    """
    POST and PATCH with an Idempotency-Key header: a retry gets the first
    answer instead of doing the work again.
    """

    @inlineCallbacks
    def test_retriedPost(self) -> Any:
        """
        A post sent again with its key is answered as the first time (201,
        the same post and Location) and made once; the same key with another
        body is a 422 and makes nothing.
        """
        token = yield self.user("alice")
        key = {"Idempotency-Key": "3b1a9a5e-0c6e-4d7e-9a53-2a7d1e0c6b11"}
        first = yield self.request(
            "POST", "/v1/posts", token=token, json={"body": "once"}, headers=key
        )
        again = yield self.request(
            "POST", "/v1/posts", token=token, json={"body": "once"}, headers=key
        )
        self.assertEqual((first.status, again.status), (201, 201))
        self.assertEqual(again.json, first.json)
        self.assertEqual(again.header("location"), first.header("location"))
        other = yield self.request(
            "POST", "/v1/posts", token=token, json={"body": "twice"}, headers=key
        )
        self.assertProblem(other, 422, "idempotency_key_reused")
        self.assertIn("Idempotency-Key", other.json["detail"])
        page = (yield self.request("GET", "/v1/accounts/alice/posts")).json
        self.assertEqual([p["body"] for p in page["items"]], ["once"])
        # Without the key, or with a new one, it is a new post.
        fresh = yield self.request(
            "POST",
            "/v1/posts",
            token=token,
            json={"body": "once"},
            headers={"Idempotency-Key": "2"},
        )
        self.assertNotEqual(fresh.json["id"], first.json["id"])

    @inlineCallbacks
    def test_perClient(self) -> Any:
        """
        The same key from another account is that account's own: its post
        is made, and nobody gets another's answer.
        """
        alice = yield self.user("alice")
        bob = yield self.user("bob")
        key = {"Idempotency-Key": "same"}
        mine = yield self.request("POST", "/v1/posts", token=alice, json={"body": "x"}, headers=key)
        his = yield self.request("POST", "/v1/posts", token=bob, json={"body": "x"}, headers=key)
        self.assertEqual((mine.status, his.status), (201, 201))
        self.assertEqual((mine.json["author"], his.json["author"]), ("alice", "bob"))

    @inlineCallbacks
    def test_retriedRegistration(self) -> Any:
        """
        A registration retried with its key gets 201 and the account, not
        409: the retry of a request whose answer was lost.
        """
        body = {"username": "carol", "email": "carol@example.com", "password": PASSWORD}
        key = {"Idempotency-Key": '"a quoted key"'}
        first = yield self.request("POST", "/v1/accounts", json=body, headers=key)
        again = yield self.request("POST", "/v1/accounts", json=body, headers=key)
        self.assertEqual((first.status, again.status), (201, 201))
        self.assertEqual(again.json, first.json)
        self.assertProblem((yield self.request("POST", "/v1/accounts", json=body)), 409)

    @inlineCallbacks
    def test_retriedLogin(self) -> Any:
        """
        A login retried with its key gets the same session, not a second.
        """
        yield self.user("alice")
        body = {"username": "alice", "password": PASSWORD}
        key = {"Idempotency-Key": "login-1"}
        first = yield self.request("POST", "/v1/sessions", json=body, headers=key)
        again = yield self.request("POST", "/v1/sessions", json=body, headers=key)
        self.assertEqual((first.status, again.status), (201, 201))
        self.assertEqual(again.json["token"], first.json["token"])

    @inlineCallbacks
    def test_badKeys(self) -> Any:
        """
        A key that is empty, too long or not printable ASCII is a 400
        naming the header, and nothing is made.
        """
        token = yield self.user("alice")
        for bad in [b"", b"x" * 256, b"two words", b'"unclosed', b"caf\xc3\xa9"]:
            reply = yield self.request(
                "POST",
                "/v1/posts",
                token=token,
                json={"body": "never"},
                headers={b"Idempotency-Key": bad},
            )
            self.assertEqual(reply.status, 400, bad)
            self.assertProblem(reply, 400, "invalid_argument")
            self.assertEqual(reply.json["errors"][0]["field"], "Idempotency-Key")
        page = (yield self.request("GET", "/v1/accounts/alice/posts")).json
        self.assertEqual(page["items"], [])


class NotificationEndpointTests:
    @inlineCallbacks
    def test_notifications(self) -> Any:
        """
        Mentions and followed authors' posts show up; they can be marked
        read and filtered by state.
        """
        alice = yield self.user("alice")
        bob = yield self.user("bob")
        carol = yield self.user("carol")
        yield self.request("PUT", "/v1/me/following/alice", token=carol)
        first = (
            yield self.request("POST", "/v1/posts", token=alice, json={"body": "hey @Bob"})
        ).json
        yield self.request("POST", "/v1/posts", token=alice, json={"body": "again @bob"})
        items = yield eventually(
            lambda: self.notificationsOf(bob).addCallback(lambda n: len(n) == 2 and n)
        )
        self.assertEqual([n["kind"] for n in items], ["mention", "mention"])
        self.assertEqual({n["actor"] for n in items}, {"alice"})
        carols = yield eventually(
            lambda: self.notificationsOf(carol).addCallback(lambda n: len(n) == 2 and n)
        )
        self.assertEqual({n["kind"] for n in carols}, {"followed_post"})
        target = [n for n in items if n["post_id"] == first["id"]][0]
        reply = yield self.request("POST", f"/v1/notifications/{target['id']}/read", token=bob)
        self.assertEqual((reply.status, reply.body), (204, b""))
        unread = yield self.notificationsOf(bob, "?unread=true")
        read = yield self.notificationsOf(bob, "?unread=false")
        self.assertEqual([n["read"] for n in unread], [False])
        self.assertEqual([n["id"] for n in read], [target["id"]])
        page = yield self.notificationsOf(bob, "?limit=1")
        self.assertEqual(len(page), 1)

    @inlineCallbacks
    def test_notificationErrors(self) -> Any:
        """
        Marking someone else's or an unknown notification is a 404; a bad
        filter a 400.
        """
        alice = yield self.user("alice")
        bob = yield self.user("bob")
        yield self.request("POST", "/v1/posts", token=alice, json={"body": "@bob"})
        [item] = yield eventually(lambda: self.notificationsOf(bob))
        reply = yield self.request("POST", f"/v1/notifications/{item['id']}/read", token=alice)
        self.assertProblem(reply, 404)
        reply = yield self.request("POST", "/v1/notifications/nope/read", token=bob)
        self.assertProblem(reply, 404)
        reply = yield self.request("GET", "/v1/notifications?unread=maybe", token=bob)
        self.assertEqual(self.assertProblem(reply, 400)["errors"][0]["field"], "unread")

    @inlineCallbacks
    def test_postKept(self) -> Any:
        """
        The gateway keeps a post it read, for a moment (--read-cache): it
        serves it again without asking the Post service, until the post is
        deleted, through this gateway (at once) or another (its event).
        """
        alice = yield self.user("alice")
        created = (yield self.request("POST", "/v1/posts", token=alice, json={"body": "hi"})).json
        kept = self.gateway.routeObjects["the post service"].posts.cache
        kept.ttl = 60.0  # nothing expires during the test, however slow the machine
        # Every read the Post service answers looks in its own cache.
        asked = lambda: self.posts.cache.hits + self.posts.cache.misses  # noqa: E731
        before = asked()
        for _ in range(3):
            reply = yield self.request("GET", f"/v1/posts/{created['id']}")
            self.assertEqual((reply.status, reply.json), (200, created))
        # The first read subscribed, the second was kept, the third served.
        self.assertEqual((asked() - before, kept.hits), (2, 1))
        reply = yield self.request("DELETE", f"/v1/posts/{created['id']}", token=alice)
        self.assertEqual(reply.status, 204)
        self.assertProblem((yield self.request("GET", f"/v1/posts/{created['id']}")), 404)

        # Deleted where this gateway did not see it: its event makes it go.
        other = (yield self.request("POST", "/v1/posts", token=alice, json={"body": "yo"})).json
        for _ in range(2):
            yield self.request("GET", f"/v1/posts/{other['id']}")
        self.assertEqual(len(kept), 1)
        me = (yield self.request("GET", "/v1/me", token=alice)).json
        yield self.posts.store.delete(other["id"], me["id"])
        self.posts.outbox.flush()
        yield eventually(lambda: len(kept) == 0)
        self.assertProblem((yield self.request("GET", f"/v1/posts/{other['id']}")), 404)

    @inlineCallbacks
    def test_postDeleted(self) -> Any:
        """
        Deleting a post removes the notifications about it.
        """
        alice = yield self.user("alice")
        bob = yield self.user("bob")
        created = (yield self.request("POST", "/v1/posts", token=alice, json={"body": "@bob"})).json
        yield eventually(lambda: self.notificationsOf(bob))
        yield self.request("DELETE", f"/v1/posts/{created['id']}", token=alice)
        yield eventually(lambda: self.notificationsOf(bob).addCallback(lambda n: n == []))


class PlatformEndpointTests:
    @inlineCallbacks
    def test_health(self) -> Any:
        """
        GET /healthz answers 200.
        """
        reply = yield self.request("GET", "/healthz")
        self.assertEqual((reply.status, reply.json), (200, {"status": "ok"}))

    @inlineCallbacks
    def test_openapi(self) -> Any:
        """
        GET /v1/openapi.json is a valid OpenAPI 3.1 document with every
        route the gateway serves.
        """
        from openapi_spec_validator import validate

        reply = yield self.request("GET", "/v1/openapi.json")
        self.assertEqual(reply.status, 200)
        document = reply.json
        validate(document)
        self.assertEqual(document["openapi"], "3.1.0")
        served = set()
        for rule in self.gateway.app.url_map.iter_rules():
            for method in rule.methods - {"HEAD", "OPTIONS"}:
                path = rule.rule.replace("<", "{").replace(">", "}")
                served.add((method.lower(), path))
        documented = {(m, p) for p, ops in document["paths"].items() for m in ops}
        self.assertEqual(documented, served)

    @inlineCallbacks
    def test_unknownPath(self) -> Any:
        """
        An unknown path is a problem+json 404.
        """
        self.assertProblem((yield self.request("GET", "/v2/nothing")), 404, "not_found")

    @inlineCallbacks
    def test_wrongMethod(self) -> Any:
        """
        A known path with the wrong method is a 405 that lists the allowed ones.
        """
        reply = yield self.request("PATCH", "/v1/posts")
        self.assertProblem(reply, 405, "method_not_allowed")
        self.assertEqual(reply.header("allow"), "POST")

    @inlineCallbacks
    def test_badURLs(self) -> Any:
        """
        Paths that are not UTF-8, or that smuggle a newline after a valid id
        or name, get problem details, not plain text or an undeclared status.
        """
        for path in [
            "/v1/accounts/%FF",
            "/v2/%C3%28",
            "/v1/posts/01aaaaaaaaaaaaaaaaaaaaaaaa%0A",
            "/v1/accounts/alice%0A",
            "/v1/accounts/alice%0A/posts",
        ]:
            self.assertProblem((yield self.request("GET", path)), 404, "not_found")

    @inlineCallbacks
    def test_forgedCursors(self) -> Any:
        """
        Cursors a client made up are a 400, whatever is inside: a lone
        surrogate, a NUL, a huge number, a negative limit spelled oddly.
        """
        token = yield self.user("alice")
        for path in [
            "/v1/accounts/alice/posts?cursor=WyJcdWQ4MDAiXQ",
            "/v1/accounts/alice/posts?cursor=WyJhXHUwMDAwIl0",
            "/v1/notifications?cursor=WyJhXHUwMDAwIl0",
            "/v1/me/following?cursor=WzEwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMCwieCJd",
            "/v1/accounts/alice/posts?limit=--5",
        ]:
            self.assertProblem(
                (yield self.request("GET", path, token=token)), 400, "invalid_argument"
            )

    @inlineCallbacks
    def test_requestId(self) -> Any:
        """
        A client's X-Request-Id is kept; otherwise one is made; problems
        quote it.
        """
        reply = yield self.request("GET", "/healthz", headers={"X-Request-Id": "abc-123"})
        self.assertEqual(reply.header("x-request-id"), "abc-123")
        reply = yield self.request("GET", "/v2/nothing", headers={"X-Request-Id": "bad id!"})
        generated = reply.header("x-request-id")
        self.assertNotEqual(generated, "bad id!")
        self.assertEqual(reply.json["request_id"], generated)


class SQLiteGatewayTests(
    SQLiteMixin,
    AccountEndpointTests,
    MeEndpointTests,
    SessionEndpointTests,
    PostEndpointTests,
    IdempotencyKeyTests,
    NotificationEndpointTests,
    PlatformEndpointTests,
    PlatformTestCase,
):
    pass


class PostgresGatewayTests(
    PostgresMixin,
    AccountEndpointTests,
    MeEndpointTests,
    SessionEndpointTests,
    PostEndpointTests,
    IdempotencyKeyTests,
    NotificationEndpointTests,
    PlatformEndpointTests,
    PlatformTestCase,
):
    pass


class FailureTests(SQLiteMixin, PlatformTestCase):
    """
    What clients see when services misbehave.
    """

    callTimeout = 0.3

    @inlineCallbacks
    def replace(self, service: Any, handlers: dict) -> Any:
        """
        Stop a real service and serve C{handlers} in its place.
        """
        yield service.stopService()
        yield self.bus.serve(service.serviceId, handlers)

    def replacePosts(self, handlers: dict) -> Any:
        return self.replace(self.posts, handlers)

    @inlineCallbacks
    def test_serviceTooSlow(self) -> Any:
        """
        A service that does not answer within the call timeout is a 503 with
        Retry-After, naming the service.
        """
        yield self.replacePosts({"get_post": lambda payload, context: Deferred()})
        reply = yield self.request("GET", "/v1/posts/01aaaaaaaaaaaaaaaaaaaaaaaa")
        problem = self.assertProblem(reply, 503, "deadline_exceeded")
        self.assertIn("post service", problem["detail"])
        self.assertEqual(reply.header("retry-after"), "1")

    @inlineCallbacks
    def test_deadlineCoversTheRequest(self) -> Any:
        """
        The timeout bounds the whole request, across its calls: a slow
        service late in a request still answers within it.
        """
        yield self.register("alice")
        yield self.replacePosts({"list_posts": lambda payload, context: Deferred()})
        started = self.clock.seconds()
        reply = yield self.request("GET", "/v1/accounts/alice/posts")
        self.assertProblem(reply, 503)
        self.assertLess(self.clock.seconds() - started, self.callTimeout + 1)

    @inlineCallbacks
    def test_internalError(self) -> Any:
        """
        A bug in a service is a bare 500 naming the request id; the
        traceback goes to the log, never to the client.
        """

        def broken(payload: Any, context: Any) -> Any:
            raise KeyError("internal secret")

        yield self.replacePosts({"get_post": broken})
        reply = yield self.request("GET", "/v1/posts/01aaaaaaaaaaaaaaaaaaaaaaaa")
        problem = self.assertProblem(reply, 500, "internal")
        self.assertNotIn(b"secret", reply.body)
        self.assertIn(problem["request_id"], problem["detail"])
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)

    @inlineCallbacks
    def test_gatewayBug(self) -> Any:
        """
        A bug in the gateway itself is also a bare 500, logged.
        """
        yield self.replace(self.accounts, {"get_profile": lambda payload, context: {}})
        reply = yield self.request("GET", "/v1/accounts/alice/posts")
        self.assertProblem(reply, 500, "internal")
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)


class Spy:
    def __init__(self, **methods: Any) -> None:
        self.__dict__.update(methods)


class ParserPoolGatewayTests(
    SQLiteMixin,
    AccountEndpointTests,
    MeEndpointTests,
    SessionEndpointTests,
    PostEndpointTests,
    PlatformTestCase,
):
    """
    The endpoints again with every non-empty body handed to a parser
    replica: clients cannot tell who parsed their body.
    """

    parserOver = 0

    @inlineCallbacks
    def test_handedOver(self) -> Any:
        """
        Bodies over the limit go to the parser service, those at or under it
        are parsed by the gateway (counted from the parser's calls).
        """
        seen: list[str] = []
        call = self.bus.call

        def counting(service: Any, method: str, payload: Any, **kwargs: Any) -> Any:
            if service == ParserService.serviceId:
                seen.append(payload["operation"])
            return call(service, method, payload, **kwargs)

        self.gateway.bus = Spy(call=counting)
        self.gateway.parserOver = 60
        body = {"username": "alice", "email": "alice@example.com", "password": PASSWORD}
        reply = yield self.request("POST", "/v1/accounts", json=body)
        self.assertEqual(reply.status, 201)
        self.assertEqual(seen, ["register"])
        reply = yield self.request(
            "POST", "/v1/sessions", json={"username": "alice", "password": PASSWORD}
        )
        self.assertEqual(reply.status, 201)
        self.assertEqual(seen, ["register"])  # 49 bytes: parsed here

    @inlineCallbacks
    def test_thousandsOfFields(self) -> Any:
        """
        A large body of unknown fields gets a short answer (the first
        problems and a count of the rest), from the parser as from the
        gateway.
        """
        body = {f"field{n}": n for n in range(3000)}
        for over in (0, None):
            self.gateway.parserOver = over
            reply = yield self.request("POST", "/v1/accounts", json=body)
            problem = self.assertProblem(reply, 400, "invalid_argument")
            self.assertEqual(len(problem["errors"]), 21)
            self.assertEqual(problem["errors"][-1]["reason"], "and 2983 more problems")
            self.assertLess(len(reply.body), 4096)


class ParserUnavailableTests(SQLiteMixin, PlatformTestCase):
    """
    A gateway that hands bodies to a parser service nobody runs.
    """

    parserOver = 0
    callTimeout = 0.3

    @inlineCallbacks
    def test_noParser(self) -> Any:
        """
        With no parser replica to answer, large bodies get 503 naming the
        parser service, with Retry-After; small ones are still served.
        """
        yield self.parser.stopService()
        self.gateway.parserOver = 100
        reply = yield self.request(
            "POST",
            "/v1/accounts",
            json={"username": "alice", "email": "alice@example.com", "password": "x" * 200},
        )
        problem = self.assertProblem(reply, 503)
        self.assertIn("parser service", problem["detail"])
        self.assertEqual(reply.header("retry-after"), "1")
        reply = yield self.request(
            "POST",
            "/v1/accounts",
            json={"username": "alice", "email": "alice@example.com", "password": PASSWORD},
        )
        self.assertEqual(reply.status, 201)


class _Exchange:
    """
    An exchange whose calls answer at once: what the Post service would.
    """

    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.calls: list[Any] = []

    def call(self, message: Any) -> Deferred[Any]:
        self.calls.append(message)
        return succeed(self.answer)


class PostRoutesCacheTests(SynchronousTestCase):
    """
    The Post service's routes keep the posts they read on the gateway.
    """

    def setUp(self) -> None:
        from txplatform.localbus import LocalBus
        from txplatform.routes import RouteParts
        from txplatform_services.post.routes import PostRoutes

        self.clock = Clock()
        self.routes = PostRoutes(RouteParts(LocalBus(self.clock), self.clock))
        self.postId = newRecordId(self.clock)
        self.exchange = _Exchange({"id": self.postId, "body": "hi"})

    def read(self) -> Any:
        return self.successResultOf(self.routes.readPost(self.exchange, self.postId))

    def test_deletedHereForgottenAtOnce(self) -> None:
        """
        A post deleted through this gateway is read no more here, before
        its event arrives.
        """
        for _ in range(3):
            self.assertEqual(self.read(), {"id": self.postId, "body": "hi"})
        self.assertEqual(len(self.exchange.calls), 2)
        principal = Principal(account_id="a", username="alice", session_id="s")
        self.successResultOf(self.routes.deletePost(self.exchange, principal, self.postId))
        self.read()
        self.assertEqual(len(self.exchange.calls), 4)

    def test_notAPostId(self) -> None:
        """
        A path that cannot be a post's id is a 404, asked of no one.
        """
        self.assertRaises(NotFound, self.routes.readPost, self.exchange, "nope")
        self.assertEqual(self.exchange.calls, [])
