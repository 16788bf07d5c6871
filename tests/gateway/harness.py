"""
The whole platform on a real port, for end-to-end tests over HTTP.
"""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.web.client import Agent, HTTPConnectionPool

from txplatform_gateway import Gateway
from txplatform_gateway.openapi import openapiDocument
from txplatform_gateway.testing import Response
from txplatform_services.parser.service import ParserService

from ..services.harness import ServiceTestCase

PASSWORD = "correct horse"


#: What the gateway answered (the shipped helper's record).
Reply = Response


class OpenAPIChecker:
    """
    Checks responses against the gateway's own OpenAPI document: the status
    must be one the operation declares, and the body must fit its schema.
    """

    def __init__(self, document: dict[str, Any]) -> None:
        self._document = document
        self._routes = []
        for path, operations in document["paths"].items():
            pattern = re.compile("^" + re.sub(r"\{[a-z_]+\}", "[^/]+", path) + "$")
            self._routes.append((pattern, path, operations))

    def operation(self, method: str, path: str) -> Any:
        path = path.split("?", 1)[0]
        for pattern, template, operations in self._routes:
            if pattern.match(path) and method.lower() in operations:
                return template, operations[method.lower()]
        return None, None

    def check(self, method: str, path: str, reply: Reply) -> None:
        template, operation = self.operation(method, path)
        if operation is None:
            assert reply.status in (404, 405), f"{method} {path} is not documented"
            return
        responses = operation["responses"]
        assert str(reply.status) in responses, (
            f"{method} {template} answered {reply.status}, which its OpenAPI entry"
            f" does not declare ({sorted(responses)}): {reply.body[:300]!r}"
        )
        content = responses[str(reply.status)].get("content")
        if content is None:
            assert reply.body == b"", f"{method} {template} {reply.status} has an undeclared body"
            return
        [(mediaType, entry)] = content.items()
        assert reply.header("content-type") == mediaType, (reply.header("content-type"), mediaType)
        schema = entry["schema"]
        if "$ref" in schema:
            schema = self._document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
        jsonschema.validate(
            reply.json, schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
        )


class PlatformTestCase(ServiceTestCase):
    """
    Account, Post and Notify on the in-process bus, the gateway on an
    ephemeral loopback port, and an HTTP client.
    """

    callTimeout = 5.0
    maxBodySize = 64 * 1024
    corsOrigins: list[str] | None = None
    trustedProxies: list[str] | None = None
    heartbeat = 15.0
    #: Set: bodies over this many bytes go to a parser replica (started too).
    parserOver: int | None = None

    @inlineCallbacks
    def setUp(self) -> Any:
        yield super().setUp()
        self.accounts = yield self.startAccount()
        self.posts = yield self.startPost()
        self.notify = yield self.startNotify()
        if self.parserOver is not None:
            self.parser = yield self.start(ParserService(self.bus, self.clock))
        self.gateway = Gateway(
            self.bus,
            self.clock,
            callTimeout=self.callTimeout,
            maxBodySize=self.maxBodySize,
            corsOrigins=self.corsOrigins,
            trustedProxies=self.trustedProxies,
            heartbeat=self.heartbeat,
            parserOver=self.parserOver,
            parser=ParserService.serviceId if self.parserOver is not None else None,
        )
        self.streams = self.gateway.routeObjects["the notify service"].streams
        self.port = reactor.listenTCP(0, self.gateway.site(), interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        self.http = HTTPClient(Agent(reactor, pool=pool))
        self.openapi = OpenAPIChecker(openapiDocument(self.gateway))

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port.getHost().port}{path}"

    @inlineCallbacks
    def request(
        self,
        method: str,
        path: str,
        json: Any = None,
        token: str | None = None,
        headers: dict[str, str] | None = None,
        data: bytes | None = None,
    ) -> Any:
        """
        Send a request; check the reply against the OpenAPI document and
        that no error leaks a traceback.
        """
        sent = dict(headers or {})
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        if json is not None:
            data = _json.dumps(json).encode("utf-8")
            sent.setdefault("Content-Type", "application/json")
        response = yield self.http.request(
            method,
            self.url(path),
            headers={k: [v] for k, v in sent.items()},
            data=data,
        )
        body = yield response.content()
        reply = Reply(response.code, response.headers, body)
        self.assertNotIn(b"Traceback", body)
        self.openapi.check(method, path, reply)
        return reply

    def assertProblem(self, reply: Reply, status: int, kind: str | None = None) -> Any:
        self.assertEqual(reply.status, status, reply.body)
        self.assertEqual(reply.header("content-type"), "application/problem+json")
        problem = reply.json
        self.assertEqual(problem["status"], status)
        self.assertTrue(problem["detail"])
        if kind is not None:
            self.assertEqual(problem["type"], f"urn:txplatform:problem:{kind}")
        return problem

    @inlineCallbacks
    def register(self, username: str, **extra: Any) -> Any:
        body = {
            "username": username,
            "email": f"{username}@example.com",
            "password": PASSWORD,
            **extra,
        }
        reply = yield self.request("POST", "/v1/accounts", json=body)
        self.assertEqual(reply.status, 201, reply.body)
        return reply.json

    @inlineCallbacks
    def login(self, username: str, password: str = PASSWORD) -> Any:
        reply = yield self.request(
            "POST", "/v1/sessions", json={"username": username, "password": password}
        )
        self.assertEqual(reply.status, 201, reply.body)
        return reply.json["token"]

    @inlineCallbacks
    def notificationsOf(self, token: str, query: str = "") -> Any:
        reply = yield self.request("GET", f"/v1/notifications{query}", token=token)
        self.assertEqual(reply.status, 200, reply.body)
        return reply.json["items"]

    @inlineCallbacks
    def user(self, username: str) -> Any:
        """
        Register C{username} and log in: its token.
        """
        yield self.register(username)
        return (yield self.login(username))


_json = json
