"""
Requests made from the OpenAPI document alone, sent to the gateway with the
real services behind it: what the document allows, the gateway must not
refuse as invalid.

Each operation's path parameters, query and body are generated from the
schemas the document publishes (hypothesis-jsonschema), mixed with values
that name real things (the accounts, a post, a notification, cursors the
listings gave) so that answers go past "not found".  A 400 fails the test
unless every field it names has a rule the operation's 400 answer declares
beyond the schemas (C{x-rules}: following yourself, a cursor no listing
gave); a 415, a 422 or any 5xx always does.

The services run on the real reactor (their databases and password hashing
use threads), so this is a L{TestCase}; the gateway is driven in memory
through L{StubTreq}, without a port.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import quote, urlencode

import jsonschema
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema
from treq.testing import StubTreq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import deferLater

from txplatform.catalogue import installedServices
from txplatform_gateway import Gateway
from txplatform_services.account import api as account

from ..services.harness import ServiceTestCase
from ..support import SQLiteMixin, ecmaValidator, eventually
from .harness import PASSWORD, OpenAPIChecker, Reply

#: Requests generated per operation.
EXAMPLES = 30

#: Answers that say the request itself was wrong.
_REFUSED = {400, 415, 422}

_ABSENT = object()


def examples(strategy: st.SearchStrategy[Any], count: int) -> list[Any]:
    """
    C{count} values drawn from C{strategy}, the same ones on every run.

    Hypothesis cannot wait for the reactor, so the requests are drawn
    first and sent afterwards (without shrinking: a failure prints the
    request as it was sent).
    """
    drawn: list[Any] = []

    @settings(
        max_examples=count,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def draw(value: Any) -> None:
        drawn.append(value)

    draw()
    return drawn


def allowed(schema: dict[str, Any], value: Any) -> bool:
    """
    Whether the document allows C{value} where it gives C{schema}: JSON
    Schema 2020-12, formats asserted, patterns as ECMA-262 reads them.
    """
    return ecmaValidator(schema).is_valid(value)


def _draft7(schema: Any) -> Any:
    """
    C{schema} in the draft hypothesis-jsonschema reads (draft 7): only
    C{dependentRequired} is spelled differently there.  What it cannot
    read, it may ignore, so every value is checked with L{allowed} too.
    """
    if isinstance(schema, list):
        return [_draft7(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    translated = {k: _draft7(v) for k, v in schema.items() if k != "dependentRequired"}
    if "dependentRequired" in schema:
        translated["dependencies"] = schema["dependentRequired"]
    return translated


def values(schema: dict[str, Any], known: list[Any]) -> st.SearchStrategy[Any]:
    """
    Values the document allows for C{schema}: generated from it, or among
    C{known} (values that name something real) when it allows them.
    """
    generated = from_schema(_draft7(schema)).filter(lambda v: allowed(schema, v))
    real = [v for v in known if allowed(schema, v)]
    return st.sampled_from(real) | generated if real else generated


def _maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.just(_ABSENT) | strategy


def requests(entry: dict[str, Any], known: dict[str, list[Any]]) -> st.SearchStrategy[Any]:
    """
    Requests for the operation C{entry} of the document: C{{"path": {...},
    "query": {...}, "body": ...}}, optional query parameters left out at
    times.
    """
    path: dict[str, Any] = {}
    query: dict[str, Any] = {}
    headers: dict[str, Any] = {}
    for parameter in entry.get("parameters", []):
        strategy = values(parameter["schema"], known.get(parameter["name"], []))
        if parameter["in"] == "path":
            path[parameter["name"]] = strategy
        elif parameter["in"] == "query":
            query[parameter["name"]] = strategy if parameter["required"] else _maybe(strategy)
        elif parameter["in"] == "header":
            headers[parameter["name"]] = strategy if parameter["required"] else _maybe(strategy)
        else:
            raise AssertionError(f"parameters in {parameter['in']} are not generated yet")
    body: st.SearchStrategy[Any] = st.just(_ABSENT)
    if "requestBody" in entry:
        body = values(entry["requestBody"]["content"]["application/json"]["schema"], [])
    return st.fixed_dictionaries(
        {
            "path": st.fixed_dictionaries(path),
            "query": st.fixed_dictionaries(query).map(
                lambda q: {k: v for k, v in q.items() if v is not _ABSENT}
            ),
            "headers": st.fixed_dictionaries(headers).map(
                lambda h: {k: v for k, v in h.items() if v is not _ABSENT}
            ),
            "body": body,
        }
    )


def _queryText(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def url(template: str, request: dict[str, Any]) -> str:
    path = re.sub(r"\{([a-z_]+)\}", lambda m: quote(request["path"][m.group(1)], safe=""), template)
    query = {name: _queryText(value) for name, value in request["query"].items()}
    return path + ("?" + urlencode(query) if query else "")


class DocumentFuzzTests(SQLiteMixin, ServiceTestCase):
    """
    Alice, Bob and Carol, with posts, follows and notifications; then
    every operation of the document with the requests it allows.
    """

    @inlineCallbacks
    def setUp(self) -> Any:
        yield super().setUp()
        yield self.startAccount()
        yield self.startPost()
        yield self.startNotify()
        # The platform's services, whatever else is installed (examples/likes
        # in CI): the document of the services running.
        running = installedServices().only(["account", "post", "notify"])
        self.gateway = Gateway(self.bus, self.clock, catalogue=running)
        self.http = StubTreq(self.gateway.resource())
        reply = yield self.send("GET", "/v1/openapi.json")
        self.document = reply.json
        self.checker = OpenAPIChecker(self.document)
        for name in ("alice", "bob", "carol"):
            reply = yield self.send(
                "POST",
                "/v1/accounts",
                {"username": name, "email": f"{name}@example.com", "password": PASSWORD},
            )
            self.assertEqual(reply.status, 201, reply.body)
        alice = yield self.token("alice")
        bob = yield self.token("bob")
        posts = []
        for n in range(2):
            reply = yield self.send("POST", "/v1/posts", {"body": f"hi @alice {n}"}, bob)
            self.assertEqual(reply.status, 201, reply.body)
            posts.append(reply.json["id"])
        for name in ("bob", "carol"):
            reply = yield self.send("PUT", f"/v1/me/following/{name}", token=alice)
            self.assertEqual(reply.status, 204, reply.body)

        @inlineCallbacks
        def notified() -> Any:
            reply = yield self.send("GET", "/v1/notifications", token=alice)
            return len(reply.json["items"]) == 2 and reply.json["items"]

        notifications = yield eventually(notified)
        cursors = []
        for path in (
            "/v1/accounts/bob/posts?limit=1",
            "/v1/me/following?limit=1",
            "/v1/notifications?limit=1",
        ):
            reply = yield self.send("GET", path, token=alice)
            self.assertIsNotNone(reply.json["next"], path)
            cursors.append(reply.json["next"])
        self.known = {
            "username": ["alice", "bob", "Carol"],
            "post_id": posts,
            "notification_id": [n["id"] for n in notifications],
            "last_event_id": [n["id"] for n in notifications],
            "cursor": cursors,
        }

    @inlineCallbacks
    def token(self, username: str) -> Any:
        """
        A new session of C{username}'s, opened on the bus: logins through
        the gateway are throttled by address, and the generated ones fail.
        """
        session = yield self.bus.call(
            account.SERVICE_ID,
            "login",
            {"username": username, "password": PASSWORD, "client": "fuzz-setup"},
        )
        return session["token"]

    @inlineCallbacks
    def settle(self, d: Deferred[Any], timeout: float = 10.0) -> Any:
        """
        The result of C{d}, moving the in-memory connections along while
        the services work on the reactor.
        """
        deadline = reactor.seconds() + timeout
        done: list[bool] = []

        def finished(result: Any) -> Any:
            done.append(True)
            return result

        d.addBoth(finished)
        while not done:
            self.http.flush()
            if done:
                break
            if reactor.seconds() > deadline:
                d.cancel()
                raise AssertionError(f"no answer within {timeout} s")
            yield deferLater(reactor, 0.001, lambda: None)
        return (yield d)

    @inlineCallbacks
    def send(
        self,
        method: str,
        target: str,
        body: Any = _ABSENT,
        token: str | None = None,
        extra: dict[str, str] | None = None,
    ) -> Any:
        """
        Send a request to the gateway and read the whole answer, except a
        stream's, whose connection is closed once it answered.
        """
        headers = {name.encode("ascii"): [v.encode("ascii")] for name, v in (extra or {}).items()}
        data = None
        if token is not None:
            headers[b"Authorization"] = [f"Bearer {token}".encode("ascii")]
        if body is not _ABSENT:
            data = json.dumps(body).encode("utf-8")
            headers[b"Content-Type"] = [b"application/json"]
        if target.startswith("/"):
            target = "http://gateway.test" + target
        response = yield self.settle(
            self.http.request(
                method, target, headers=headers, data=data, unbuffered=True, allow_redirects=False
            )
        )
        contentType = (response.headers.getRawHeaders(b"content-type") or [b""])[0]
        if contentType.startswith(b"text/event-stream"):
            response.original._transport.loseConnection()  # the client goes away
            self.http.flush()
            yield eventually(
                lambda: len(self.gateway.routeObjects["the notify service"].streams) == 0
            )
            return Reply(response.code, response.headers, b"")
        content = yield self.settle(self.http.content(response))
        return Reply(response.code, response.headers, content)

    def verdict(self, method: str, target: str, entry: dict[str, Any], reply: Reply) -> Any:
        """
        What is wrong with C{reply} to a request the document allows: a
        short description (for grouping) and the whole story, or C{None}.
        """
        if reply.status >= 500 or reply.status in _REFUSED:
            try:
                problem = reply.json
            except ValueError:
                problem = {}
            fields = {e.get("field") for e in problem.get("errors", [])}
            declared = entry["responses"].get("400", {}).get("x-rules", {})
            if reply.status == 400 and fields and fields <= set(declared):
                return None  # a rule the operation declares beyond its schemas
            return (
                f"{reply.status} {problem.get('detail', '')}",
                f"{reply.status} {reply.body.decode('utf-8', 'replace').strip()}",
            )
        try:
            if "text/event-stream" in entry["responses"].get(str(reply.status), {}).get(
                "content", {}
            ):
                return None  # declared; its events are checked by test_streams
            self.checker.check(method, target, reply)
        except (AssertionError, jsonschema.ValidationError) as e:
            return f"{reply.status} undocumented", f"{reply.status}: {e}"
        return None

    @inlineCallbacks
    def test_allowedRequestsAccepted(self) -> Any:
        """
        No request the document allows is refused as invalid (400, 415,
        422) unless the operation declares the rule it breaks, nor fails
        (5xx); every answer is one the document gives for the operation,
        with a body that fits.
        """
        failures: dict[tuple[str, str], list[str]] = {}
        tried = {}
        # An idempotency key used again with another body is refused (422,
        # declared): each request here is a first use.
        usedKeys: set[str] = set()
        for template, entries in sorted(self.document["paths"].items()):
            for method, entry in sorted(entries.items()):
                operation = f"{method.upper()} {template}"
                tried[operation] = 0
                for request in examples(requests(entry, self.known), EXAMPLES):
                    token = (yield self.token("alice")) if "security" in entry else None
                    target = url(template, request)
                    headers = dict(request["headers"])
                    key = headers.get("Idempotency-Key")
                    if key is not None:
                        # "k" and k are one key, quoted or not.
                        key = key[1:-1] if key.startswith('"') else key
                        if key in usedKeys:
                            del headers["Idempotency-Key"]
                        usedKeys.add(key)
                    reply = yield self.send(method.upper(), target, request["body"], token, headers)
                    tried[operation] += 1
                    wrong = self.verdict(method.upper(), target, entry, reply)
                    if wrong is not None:
                        sent = f"{method.upper()} {target} {headers}"
                        if request["body"] is not _ABSENT:
                            sent += " " + json.dumps(request["body"])
                        failures.setdefault((operation, wrong[0]), []).append(
                            f"    {sent}\n    -> {wrong[1]}"
                        )
        self.assertEqual([op for op, count in tried.items() if not count], [])
        if failures:
            report = [
                f"{sum(map(len, failures.values()))} requests the OpenAPI document allows"
                " were answered wrongly (the first of each kind shown):"
            ]
            for (operation, summary), cases in sorted(failures.items()):
                report.append(f"  {operation}: {summary} ({len(cases)}x)\n{cases[0]}")
            self.fail("\n".join(report))
