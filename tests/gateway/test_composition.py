"""
Tests for the gateway core (L{txplatform_gateway.app}) as a composition of
route classes: it knows no service, and serves whatever routes it is given.
"""

from __future__ import annotations

import json
from typing import Any

from treq.testing import StubTreq
from twisted.internet.defer import succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from txplatform.catalogue import Catalogue
from txplatform.errors import Unauthenticated
from txplatform.messages import message, string
from txplatform.routes import IAuthenticator, IExchange, Principal, route
from txplatform.serviceid import ServiceId
from txplatform_gateway import Gateway, RouteConflict

NOTES = ServiceId.fromHex("020009")


@message
class Note:
    text: str = string(minLength=1, maxLength=10)


class RecordingBus:
    """
    Answers every call with what it was called with.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def call(self, service: ServiceId, method: str, payload: Any, **kwargs: Any) -> Any:
        self.calls.append((service, method, payload, kwargs))
        return succeed({"service": service.hex, "method": method, "payload": payload})


class NoteRoutes:
    @route("POST", "/v1/notes", "Write a note", tag="notes", status=201, body=Note, auth=True)
    def write(self, exchange: IExchange, principal: Principal, body: Note) -> Any:
        exchange.request.setHeader("Location", "/v1/notes/1")
        return exchange.call(NOTES, "write", {"text": body.text, "by": principal.username})

    @route("GET", "/v1/notes/{note_id}", "Read a note", tag="notes", errors=(404,))
    def read(self, exchange: IExchange, note_id: str) -> Any:
        return exchange.call(NOTES, "read", {"note_id": note_id})


@implementer(IAuthenticator)
class Tokens:
    """
    Believes the token C{"good-token-1234567"}.
    """

    def authenticate(self, exchange: IExchange, token: str) -> Any:
        if token == "good-token-1234567":
            return succeed(Principal("a1", "alice", "s1"))
        raise Unauthenticated("no such token")

    def redeem(self, exchange: IExchange, ticket: str) -> Any:
        raise Unauthenticated("no tickets here")


class CompositionTests(SynchronousTestCase):
    def gateway(self, routes: dict[str, object], **kwargs: Any) -> Gateway:
        return Gateway(self.bus, Clock(), catalogue=Catalogue([]), routes=routes, **kwargs)

    def setUp(self) -> None:
        self.bus = RecordingBus()

    def request(self, gateway: Gateway, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        http = StubTreq(gateway.resource())
        response = self.successResultOf(http.request(method, "http://gw" + path, **kwargs))
        body = self.successResultOf(response.content())
        return response.code, json.loads(body) if body else None

    def test_served(self) -> None:
        """
        A route class's operations are served, checked as declared, and
        call services under the request's id; they appear in the OpenAPI
        document beside the gateway's own.
        """
        gateway = self.gateway({"the notes service": NoteRoutes(), "tokens": Tokens()})
        status, body = self.request(gateway, "GET", "/v1/notes/7", headers={"X-Request-Id": "r-1"})
        self.assertEqual(status, 200)
        self.assertEqual(body, {"service": "020009", "method": "read", "payload": {"note_id": "7"}})
        origin = self.bus.calls[0][3]["origin"]
        self.assertEqual(origin.correlationId, "r-1")
        status, body = self.request(
            gateway,
            "POST",
            "/v1/notes",
            json={"text": "hi"},
            headers={"Authorization": "Bearer good-token-1234567"},
        )
        self.assertEqual(status, 201)
        self.assertEqual(body["payload"], {"text": "hi", "by": "alice"})
        status, body = self.request(
            gateway,
            "POST",
            "/v1/notes",
            json={"text": "far too long"},
            headers={"Authorization": "Bearer good-token-1234567"},
        )
        self.assertEqual((status, body["errors"][0]["field"]), (400, "text"))
        status, body = self.request(gateway, "POST", "/v1/notes", json={"text": "hi"})
        self.assertEqual(status, 401)
        status, document = self.request(gateway, "GET", "/v1/openapi.json")
        self.assertEqual(
            sorted(document["paths"]),
            ["/healthz", "/v1/notes", "/v1/notes/{note_id}", "/v1/openapi.json"],
        )

    def test_noAuthenticator(self) -> None:
        """
        Without a route class that authenticates, operations that need a
        principal answer 503 rather than run unauthenticated.
        """
        gateway = self.gateway({"the notes service": NoteRoutes()})
        status, body = self.request(
            gateway,
            "POST",
            "/v1/notes",
            json={"text": "hi"},
            headers={"Authorization": "Bearer good-token-1234567"},
        )
        self.assertEqual(status, 503)
        self.assertIn("authenticates", body["detail"])
        self.assertEqual(self.bus.calls, [])

    def test_shadowRefused(self) -> None:
        """
        A route that would shadow another, or the gateway's own, is refused
        when the gateway is made.
        """

        class Shadow:
            @route("GET", "/v1/notes/{id}", "Mine", tag="x")
            def mine(self, exchange: IExchange, id: str) -> Any:
                pass

        class Health:
            @route("GET", "/healthz", "Mine too", tag="x")
            def mine(self, exchange: IExchange) -> Any:
                pass

        error = self.assertRaises(
            RouteConflict,
            self.gateway,
            {"the notes service": NoteRoutes(), "the shadow service": Shadow()},
        )
        self.assertIn("of the shadow service would shadow GET /v1/notes/{note_id}", str(error))
        error = self.assertRaises(RouteConflict, self.gateway, {"the health service": Health()})
        self.assertIn("of the gateway", str(error))

    def test_twoAuthenticators(self) -> None:
        """
        Only one route class may authenticate requests.
        """
        error = self.assertRaises(RouteConflict, self.gateway, {"a": Tokens(), "b": Tokens()})
        self.assertIn("both authenticate requests", str(error))
