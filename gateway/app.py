# -*- test-case-name: tests.gateway.test_app -*-
"""
The gateway: the only door clients use.

The gateway is the request pipeline, and knows no service: each installed
service contributes its HTTP operations (L{txplatform.routes}), which the
gateway serves.  For every request it assigns a request id, admits or sheds
it by priority, applies the rate limits, authenticates bearer tokens (with
the L{IAuthenticator} a service provides), decodes and checks the body and
the query, calls the operation's handler with an L{IExchange} through which
it calls services under the request's deadline and priority, and turns
every outcome into JSON or problem details.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import random
import re
from typing import Any, Mapping
from urllib.parse import unquote_to_bytes

import attrs
from klein import Klein
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from zope.interface import implementer

import txplatform
from txplatform import traces
from txplatform.bodies import decodeBody
from txplatform.cache import ReadCache
from txplatform.catalogue import GATEWAY_ID, Catalogue, installedServices
from txplatform.codec import dumps
from txplatform.context import Origin, Priority, newRequestId
from txplatform.errors import (
    InvalidArgument,
    MalformedJSON,
    NotFound,
    ResourceExhausted,
    ServiceError,
    Unauthenticated,
)
from txplatform.interfaces import IBus
from txplatform.messages import fromPayload, fromQuery, requestTarget, toPayload
from txplatform.metrics import Labelled
from txplatform.routes import (
    IAuthenticator,
    IExchange,
    Principal,
    Route,
    RouteConflict,
    RouteParts,
    checkRoutes,
    route,
    routesOf,
)
from txplatform.serviceid import ServiceId

from . import schemas
from .admission import Admission
from .metrics import REQUEST_SECONDS, REQUESTS, SHED, STREAMS
from .problems import HTTPProblem, problemFor
from .ratelimit import AccountRateLimit, AddressRateLimit
from .site import GatewaySite
from .webclient import WebClient, staticFiles

__all__ = ["Gateway", "Exchange", "RouteConflict"]

_JSON_TYPE = re.compile(r"^application/([a-z0-9.+-]+\+)?json\s*(;.*)?\Z", re.IGNORECASE)
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}\Z")
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{16,256}\Z")
_VARIABLE = re.compile(r"\{([a-z_][a-z0-9_]*)\}")
# Printable ASCII, optionally as a structured-field string ("..."), as the
# IETF's Idempotency-Key header draft writes it.
_IDEMPOTENCY_KEY = re.compile(r'^(?:"([\x20\x21\x23-\x7e]{1,255})"|([\x21\x23-\x7e]{1,255}))\Z')
#: The methods whose requests may carry an Idempotency-Key.
IDEMPOTENCY_KEY_METHODS = (b"POST", b"PATCH")

#: The OpenAPI document's C{info} unless the gateway is told otherwise.
DEFAULT_INFO = {
    "title": "txplatform",
    "version": txplatform.__version__,
    "description": "Errors are RFC 9457 problem details; pages take `limit` (1-100, default"
    " 20) and an opaque `cursor`, and give `next` (null on the last page). A request whose"
    " headers or body arrive too slowly gets 408, a body declared over the size limit 413"
    " before it is read, a client address past its connection limit 503; a JSON body with a"
    " key twice is malformed (400). POST and PATCH take an `Idempotency-Key` to make"
    " retries safe (422 when the key was used with another body).",
}


_OVERLOADED = HTTPProblem(
    503,
    "overloaded",
    "the gateway is busy with more urgent work: try again shortly",
    headers={"Retry-After": "1"},
)


def _tooMany(whose: str, wait: float) -> ResourceExhausted:
    seconds = max(1, math.ceil(wait))
    return ResourceExhausted(
        f"too many requests from your {whose}: try again in {seconds} s",
        {"retry_after": seconds},
    )


@implementer(IExchange)
class Exchange:
    """
    What the gateway keeps about one HTTP request, as a component of it
    (C{IExchange(request)}), and what its handler calls services through.
    (A plain slotted class: one is made per request.)
    """

    __slots__ = ("request", "requestId", "deadline", "priority", "origin", "_gateway")

    def __init__(
        self,
        gateway: Gateway,
        request: IRequest,
        requestId: str,
        deadline: float,
        priority: Priority,
    ) -> None:
        self._gateway = gateway
        self.request = request
        self.requestId = requestId
        self.deadline = deadline
        self.priority = priority
        self.origin = Origin(GATEWAY_ID, requestId, deadline)

    def clientAddress(self) -> str:
        return self._gateway.clientAddress(self.request)

    def call(
        self,
        service: Any,
        method: str | None = None,
        payload: Any = None,
        idempotent: bool | None = None,
    ) -> Any:
        if method is None:
            spec = requestTarget(service)
            service, method, payload = spec.service, spec.method, service
        if not isinstance(payload, dict):
            payload = toPayload(payload)
        if idempotent is None:
            idempotent = self.request.method in (b"GET", b"HEAD")
        remaining = self.deadline - self._gateway.clock.seconds()
        return self._gateway.bus.call(
            service,
            method,
            payload,
            timeout=max(remaining, 0.0),
            priority=self.priority,
            origin=self.origin,
            idempotent=idempotent,
        )


_REQUESTS = Labelled(REQUESTS)
_REQUEST_SECONDS = Labelled(REQUEST_SECONDS)


def _streamEnded(result: Any) -> None:
    STREAMS.dec()


def _kleinPath(path: str) -> str:
    """
    An OpenAPI path (C{/v1/posts/{post_id}}) as a werkzeug rule
    (C{/v1/posts/<post_id>}).
    """
    return _VARIABLE.sub(r"<\1>", path)


class _URLGuard(Resource):
    """
    Answers a URL whose path is not UTF-8 with problem details, before
    Klein (which answers such URLs with plain text) sees it: such a path
    names nothing we serve, so it is a 404 like any other unknown path.
    """

    isLeaf = True

    def __init__(self, gateway: Gateway, wrapped: Resource) -> None:
        super().__init__()
        self._gateway = gateway
        self._wrapped = wrapped

    def render(self, request: IRequest) -> Any:
        try:
            unquote_to_bytes(request.path).decode("utf-8")
        except UnicodeDecodeError:
            problem = HTTPProblem(
                404, "not_found", "there is nothing at this path (it is not valid UTF-8)"
            )
            return self._gateway.problem(request, Failure(problem))
        return self._wrapped.render(request)


class _CORS(Resource):
    """
    Cross-origin access for browser scripts from the configured origins:
    answers preflights itself (Klein would say 405 to OPTIONS), and adds
    the CORS headers to the answers of allowed origins.
    """

    isLeaf = True
    _methods = b"GET, POST, PUT, PATCH, DELETE"
    _headers = b"Authorization, Content-Type, X-Request-Id, Last-Event-ID, Idempotency-Key"
    _exposed = b"X-Request-Id, Location, Retry-After"

    def __init__(self, gateway: Gateway, wrapped: Resource, origins: list[str]) -> None:
        super().__init__()
        self._gateway = gateway
        self._wrapped = wrapped
        self._any = "*" in origins
        self._origins = {o.rstrip("/").encode("ascii") for o in origins if o != "*"}

    def _allowed(self, origin: bytes) -> bool:
        return self._any or origin in self._origins

    def render(self, request: IRequest) -> Any:
        origin = request.getHeader(b"origin")
        if origin is None:
            return self._wrapped.render(request)
        request.setHeader(b"Vary", b"Origin")
        allowed = self._allowed(origin)
        preflight = request.method == b"OPTIONS" and request.getHeader(
            b"access-control-request-method"
        )
        if preflight:
            if not allowed:
                problem = HTTPProblem(
                    403, "permission_denied", "this origin may not call the API from a browser"
                )
                return self._gateway.problem(request, Failure(problem))
            request.setResponseCode(204)
            request.setHeader(b"Access-Control-Allow-Origin", origin)
            request.setHeader(b"Access-Control-Allow-Methods", self._methods)
            request.setHeader(b"Access-Control-Allow-Headers", self._headers)
            request.setHeader(b"Access-Control-Max-Age", b"600")
            return b""
        if allowed:
            request.setHeader(b"Access-Control-Allow-Origin", origin)
            request.setHeader(b"Access-Control-Expose-Headers", self._exposed)
        return self._wrapped.render(request)


class Gateway:
    """
    The HTTP API, served from L{resource} or L{site}: the routes of every
    service in the catalogue, and the gateway's own (its OpenAPI document
    and its health check).

    @param callTimeout: Seconds one HTTP request may spend waiting on
        services, across all the calls it makes.
    @param maxBodySize: Largest request body accepted, in bytes.
    @param corsOrigins: Origins (C{scheme://host[:port]}, or C{*}) whose
        browser scripts may call the API.
    @param trustedProxies: Address ranges whose C{X-Forwarded-For} is
        believed (see L{clientAddress}).
    @param maxInFlight: Requests this replica works on at once, the high
        class's limit; lower classes stop being admitted earlier
        (L{txplatform_gateway.admission}).
    @param heartbeat: Seconds between keep-alive comments on open streams.
    @param shedDelay: Seconds a refused request waits at least for its 503
        (its Retry-After).
    @param parserOver: Bodies larger than this many bytes are decoded and
        checked by the replicas of the service C{parser} rather than here;
        C{None}: all here.
    @param parser: The id of the service that parses bodies (it serves
        C{parse}, see L{txplatform_services.parser}), with C{parserOver}.
    @param rateLimit: Limits requests per client address (shared with the
        other replicas); C{None}: no limit.
    @param accountRateLimit: Limits authenticated requests per account,
        likewise.
    @param catalogue: The services whose routes to serve, and whose names
        to give in errors; by default those installed.
    @param routes: The route objects to serve, by who contributed them,
        instead of those the catalogue's services declare.
    @param info: The OpenAPI document's C{info} (C{title}, C{version},
        C{description}), over L{DEFAULT_INFO}.
    @param principalCache: Seconds this gateway reuses what verifying a
        token told it (0: every request asks again).  A session ended
        through another gateway still passes here for at most that long;
        one ended through this one (an operation that C{endsSessions}) is
        forgotten at once, with every principal of its account.
    @param readCache: Seconds the routes' caches of what services answered
        (L{RouteParts.cache}) may serve a value: a post deleted through
        any gateway may still be read here that much longer than where its
        service's own replicas have heard of it. 0: no such caches.
    @param webClient: Whether to serve the web client's files at C{/}
        (L{txplatform_gateway.webclient}) beside the API.

    @raise RouteConflict: Two routes would shadow each other, or two route
        objects authenticate.
    """

    log = Logger()

    def __init__(
        self,
        bus: IBus,
        clock: IReactorTime,
        callTimeout: float = 5.0,
        maxBodySize: int = 64 * 1024,
        corsOrigins: list[str] | None = None,
        trustedProxies: list[str] | None = None,
        maxInFlight: int = 512,
        heartbeat: float = 15.0,
        shedDelay: float = 1.0,
        parserOver: int | None = None,
        parser: ServiceId | None = None,
        rateLimit: AddressRateLimit | None = None,
        accountRateLimit: AccountRateLimit | None = None,
        catalogue: Catalogue | None = None,
        routes: Mapping[str, object] | None = None,
        info: Mapping[str, str] | None = None,
        principalCache: float = 1.0,
        readCache: float = 1.0,
        webClient: bool = False,
    ) -> None:
        self.bus = bus
        # Keyed by the token's SHA-256: no token is kept in memory longer
        # than its request.
        self.principals: ReadCache[bytes, Principal] = ReadCache(
            clock, maxEntries=10000 if principalCache > 0 else 0, ttl=principalCache
        )
        self.clock = clock
        self.parserOver = parserOver
        self.parser = parser
        if parserOver is not None and parser is None:
            raise ValueError("parserOver needs the parser service's id")
        self.rateLimit = rateLimit
        self.accountRateLimit = accountRateLimit
        self.shedDelay = shedDelay
        self._random = random.Random()
        self.admission = Admission(maxInFlight)
        self.corsOrigins = list(corsOrigins or [])
        self.trustedProxies = [ipaddress.ip_network(n, strict=False) for n in trustedProxies or []]
        self.callTimeout = callTimeout
        self.maxBodySize = maxBodySize
        self.info = {**DEFAULT_INFO, **(info or {})}
        if catalogue is None:
            catalogue = installedServices()
        self._serviceNames = {sid.hex: name for name, sid in catalogue.registry()}
        if routes is None:
            parts = RouteParts(bus, clock, heartbeat, readCache)
            routes = {f"the {d.name} service": d.routeClass()(parts) for d in catalogue if d.routes}
        self.routeObjects = dict(routes)
        self.authenticator = self._findAuthenticator()
        self.routes: list[Route] = []
        self.app = Klein()
        self.app.handle_errors(Exception)(self.problem)
        owned = [(owner, r) for owner, obj in self.routeObjects.items() for r in routesOf(obj)]
        owned += [("the gateway", r) for r in routesOf(self)]
        checkRoutes(owned)
        for _, one in owned:
            self._add(one)
        self._openapi: bytes | None = None
        self.webFiles = staticFiles() if webClient else None

    def _findAuthenticator(self) -> IAuthenticator | None:
        found = [
            (owner, obj)
            for owner, obj in self.routeObjects.items()
            if IAuthenticator.providedBy(obj)
        ]
        if len(found) > 1:
            raise RouteConflict(
                f"{found[0][0]} and {found[1][0]} both authenticate requests: one may"
            )
        return found[0][1] if found else None

    def _add(self, one: Route) -> None:
        patterns = {
            name: re.compile(schema["pattern"])
            for name, schema in one.operation.parameters.items()
            if "pattern" in schema
        }

        def handle(request: IRequest, **path: Any) -> Any:
            for name, pattern in patterns.items():
                if not pattern.search(path[name]):
                    # Outside its declared schema, it names nothing here.
                    self.exchange(request, one.operation.priority)
                    return self.problem(request, Failure(NotFound(f"there is no such {name}")))
            return self.runOperation(one, request, path)

        self.routes.append(one)
        self.app.route(_kleinPath(one.path), methods=[one.method], endpoint=one.name)(handle)

    def resource(self) -> Any:
        resource: Resource = self.app.resource()
        if self.corsOrigins:
            resource = _CORS(self, resource, self.corsOrigins)
        if self.webFiles is not None:
            resource = WebClient(resource, self.webFiles)
        return _URLGuard(self, resource)

    def site(self, **kwargs: Any) -> GatewaySite:
        return GatewaySite(self.resource(), maxBodySize=self.maxBodySize, **kwargs)

    # The machinery every operation goes through

    def _trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.strip())
        except ValueError:
            return False
        return any(ip in network for network in self.trustedProxies)

    def clientAddress(self, request: IRequest) -> str:
        """
        The client's address: the peer's, unless the peer is a trusted
        proxy (a load balancer), in which case the nearest address in
        C{X-Forwarded-For} that is not a trusted proxy.  Anything else in
        that header could have been written by the client.
        """
        peer = getattr(request.getClientAddress(), "host", "") or ""
        if not self.trustedProxies or not self._trusted(peer):
            return peer
        forwarded = b",".join(request.requestHeaders.getRawHeaders(b"x-forwarded-for", []))
        hops = [h.strip() for h in forwarded.decode("latin-1").split(",") if h.strip()]
        for hop in reversed(hops):
            if not self._trusted(hop):
                try:
                    return str(ipaddress.ip_address(hop))
                except ValueError:
                    return peer  # not an address: ignore the header
        return peer

    def exchange(self, request: IRequest, priority: Priority = Priority.NORMAL) -> Exchange:
        """
        The exchange of C{request}, made with C{priority} on first use.
        """
        exchange = request.getComponent(IExchange)
        if exchange is None:
            given = request.getHeader("x-request-id")
            requestId = given if given and _REQUEST_ID.match(given) else newRequestId()
            exchange = Exchange(
                self, request, requestId, self.clock.seconds() + self.callTimeout, priority
            )
            request.setComponent(IExchange, exchange)
            request.setHeader("X-Request-Id", requestId)
        return exchange

    def runOperation(self, one: Route, request: IRequest, path: dict[str, Any]) -> Any:
        """
        Answer C{request} with route C{one}: authenticate, parse, call,
        render.  (Plain callbacks rather than inlineCallbacks: this runs
        for every request.)
        """
        op = one.operation
        exchange = self.exchange(request, op.priority)
        finished = request.notifyFinish()
        priority = op.priority.name.lower()
        if traces.enabled():
            self._traced(one, exchange, finished)
        # Last of those that look at how it ended: it swallows the failure
        # of a client gone away (nothing else needs it).
        finished.addBoth(self._counted, request, one.name, priority, self.clock.seconds())
        if self.rateLimit is not None and op.rateLimited:
            wait = self.rateLimit.check(self.clientAddress(request))
            if wait is not None:
                SHED.labels("rate_limit", priority).inc()
                return self.problem(request, Failure(_tooMany("address", wait)))
        if not self.admission.admit(op.priority):
            SHED.labels("admission", priority).inc()
            return self._shed(request)
        if op.streaming:
            # Admitted as any request, but a stream lasts: it does not keep
            # its place among the requests in flight.
            self.admission.release()
            STREAMS.inc()
            finished.addBoth(_streamEnded)
        else:
            finished.addBoth(self._released)
        if op.auth:
            request.setHeader("Cache-Control", "no-store")
            d = self._authenticate(exchange, op.ticket)
            return d.addCallback(self._proceed, one, exchange, path)
        return self._proceed(None, one, exchange, path)

    @staticmethod
    def _traced(one: Route, exchange: Exchange, finished: Deferred[None]) -> None:
        """
        The span of an operation: the child of the client's W3C
        C{traceparent} (with its C{tracestate}), if it sent a valid one,
        else a new trace; every call the request makes is its child, and
        carries the client's C{tracestate} on.  It ends with the response.
        """
        request = exchange.request
        span = traces.startServerSpan(
            f"{one.method} {one.path}",
            request.getHeader("traceparent"),
            request.getHeader("tracestate"),
            {
                "http.request.method": one.method,
                "http.route": one.path,
                "txplatform.operation": one.name,
                "txplatform.request_id": exchange.requestId,
            },
        )
        assert span is not None
        exchange.origin = attrs.evolve(
            exchange.origin,
            traceParent=traces.traceParentOf(span),
            traceState=traces.traceStateOf(span),
        )

        def ended(result: Any) -> Any:
            # A Failure: the client went away before its answer.
            span.set_attribute("http.response.status_code", request.code)
            if request.code >= 500:
                span.set_status(traces.StatusCode.ERROR)
            return traces.endSpan(result, span)

        finished.addBoth(ended)

    def _proceed(
        self, principal: Principal | None, one: Route, exchange: Exchange, path: dict[str, Any]
    ) -> Any:
        op = one.operation
        request = exchange.request
        kwargs = dict(path)
        if principal is not None:
            kwargs["principal"] = principal
            if self.accountRateLimit is not None and op.rateLimited:
                wait = self.accountRateLimit.check(principal.account_id)
                if wait is not None:
                    SHED.labels("rate_limit", op.priority.name.lower()).inc()
                    raise _tooMany("account", wait)
        if request.method in IDEMPOTENCY_KEY_METHODS:
            key = request.getHeader("idempotency-key")
            if key is not None:
                exchange.origin = attrs.evolve(
                    exchange.origin, idempotencyKey=self._idempotencyKey(key, principal, request)
                )
        if op.query is not None:
            kwargs["query"] = fromQuery(op.query, self._queryArguments(request))
        if op.endsSessions and principal is not None:
            request.notifyFinish().addBoth(self._endedSessions, principal)
        if op.body is None:
            return self._handle(kwargs, one, exchange)
        raw = self._rawBody(request)
        if self.parserOver is not None and len(raw) > self.parserOver:
            d = self._parseElsewhere(exchange, one.name, op.body, raw)
            return d.addCallback(self._withBody, kwargs, one, exchange)
        kwargs["body"] = decodeBody(raw, op.body)
        return self._handle(kwargs, one, exchange)

    def _withBody(self, body: Any, kwargs: dict[str, Any], one: Route, exchange: Exchange) -> Any:
        kwargs["body"] = body
        return self._handle(kwargs, one, exchange)

    def _handle(self, kwargs: dict[str, Any], one: Route, exchange: Exchange) -> Any:
        result = one.handler(exchange, **kwargs)
        if one.operation.streaming:
            return result  # the handler writes the response itself
        if isinstance(result, Deferred):
            return result.addCallback(self._render, exchange.request, one.operation.status)
        return self._render(result, exchange.request, one.operation.status)

    def _parseElsewhere(
        self, exchange: Exchange, operationId: str, messageType: type, raw: bytes
    ) -> Deferred[Any]:
        """
        Have a parser replica decode and check a large body: the JSON work
        (and a flood of it) happens in its process, not on this reactor.
        Its answer is checked again here, which costs little: what comes
        back is a message within its schema's limits.
        """
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            return fail(MalformedJSON(f"the body is not UTF-8 (byte {e.start})"))
        d = exchange.call(
            self.parser, "parse", {"operation": operationId, "body": text}, idempotent=True
        )
        return d.addCallback(lambda reply: fromPayload(messageType, reply["message"]))

    @staticmethod
    def _idempotencyKey(given: str, principal: Principal | None, request: IRequest) -> str:
        """
        What the calls of a request with C{Idempotency-Key: given} carry:
        the key for this client (its account, if it authenticated) and this
        method and path, so that no one else's request, nor another
        operation, can share it.

        @raise InvalidArgument: The header is not 1 to 255 printable ASCII
            characters.
        """
        match = _IDEMPOTENCY_KEY.match(given)
        if match is None:
            raise InvalidArgument.forFields(
                [
                    (
                        "Idempotency-Key",
                        "must be 1 to 255 printable ASCII characters (a UUID, say),"
                        " without spaces unless quoted",
                    )
                ]
            )
        key = match.group(1) or match.group(2)
        account = principal.account_id if principal is not None else ""
        scope = "\n".join(
            [
                account,
                request.method.decode("ascii"),
                request.path.decode("latin-1"),
                key,
            ]
        )
        return hashlib.sha256(scope.encode("utf-8")).hexdigest()

    @staticmethod
    def _render(result: Any, request: IRequest, status: int) -> bytes:
        request.setResponseCode(status)
        if status == 204:
            return b""
        request.setHeader("Content-Type", "application/json")
        # A final newline costs a byte and makes curl output readable.
        return result if isinstance(result, bytes) else dumps(result) + b"\n"

    @staticmethod
    def _bearer(request: IRequest) -> str | None:
        """
        The bearer token of C{request}, if its Authorization header has one.
        """
        scheme, _, token = (request.getHeader("authorization") or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not _TOKEN.match(token):
            return None
        return token

    def _authenticate(self, exchange: Exchange, ticketAllowed: bool = False) -> Any:
        request = exchange.request
        if self.authenticator is None:
            return fail(
                HTTPProblem(503, "unavailable", "no service installed here authenticates requests")
            )
        if not request.getHeader("authorization"):
            tickets = (request.args or {}).get(b"ticket")
            if ticketAllowed and tickets:
                ticket = tickets[0].decode("ascii", "replace")
                if not _TOKEN.match(ticket):
                    return fail(
                        Unauthenticated("the stream ticket is invalid, expired or already used")
                    )
                return self.authenticator.redeem(exchange, ticket)
            return fail(Unauthenticated("this needs a token: send Authorization: Bearer <token>"))
        token = self._bearer(request)
        if token is None:
            return fail(Unauthenticated("the Authorization header must be Bearer <token>"))
        key = hashlib.sha256(token.encode("ascii")).digest()
        known = self.principals.get(key)
        if known is not None:
            return succeed(known)
        generation = self.principals.generation
        d = self.authenticator.authenticate(exchange, token)
        return d.addCallback(self._verified, key, generation)

    def _verified(self, principal: Principal, key: bytes, generation: int) -> Principal:
        self.principals.fill(key, principal, generation)
        return principal

    def _endedSessions(self, result: Any, principal: Principal) -> Any:
        """
        An operation that may have ended sessions of C{principal}'s account
        answered: forget what was verified for the account here.
        """
        self.principals.invalidateWhere(lambda p: p.account_id == principal.account_id)
        return result

    def _rawBody(self, request: IRequest) -> bytes:
        if getattr(request, "bodyTooLarge", False):
            raise HTTPProblem(
                413, "body_too_large", f"the body is larger than {self.maxBodySize} bytes"
            )
        contentType = request.getHeader("content-type")
        if contentType is None or not _JSON_TYPE.match(contentType):
            raise HTTPProblem(
                415,
                "unsupported_media_type",
                "send the body as JSON, with Content-Type: application/json",
            )
        return request.content.read()

    @staticmethod
    def _queryArguments(request: IRequest) -> dict[str, str]:
        arguments = {}
        for name, values in (request.args or {}).items():
            try:
                arguments[name.decode("utf-8")] = values[0].decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidArgument.forFields(
                    [(name.decode("utf-8", "replace"), "must be UTF-8")]
                ) from None
        return arguments

    def _shed(self, request: IRequest) -> Any:
        """
        Refuse C{request} for now: 503 with Retry-After, sent only after the
        time it says.  The connection reads nothing meanwhile (HTTP/1.1
        answers in order), so a client that does not wait as told is slowed
        to one request a second per connection instead of taking the turns
        of the reactor that more urgent requests need.  The wait is drawn
        between one and one and a half times C{shedDelay}: refused together,
        a flood's connections would otherwise come back together, and their
        burst would hold the reactor for a whole turn at a time.
        """
        body = self.problem(request, Failure(_OVERLOADED))
        if not self.shedDelay:
            return body
        delay = self.shedDelay * self._random.uniform(1.0, 1.5)
        d = deferLater(self.clock, delay, lambda: body)
        request.notifyFinish().addErrback(lambda _: d.cancel())
        return d

    def _released(self, result: Any) -> None:
        # Finished or lost (the client went away): either way, it is done.
        self.admission.release()

    def _counted(
        self, result: Any, request: IRequest, operation: str, priority: str, started: float
    ) -> Any:
        status = "disconnected" if isinstance(result, Failure) else str(request.code)
        _REQUESTS(operation, status, priority).inc()
        _REQUEST_SECONDS(operation).observe(self.clock.seconds() - started)

    def problem(self, request: IRequest, failure: Failure) -> bytes:
        """
        Answer C{request} with the problem details of C{failure}.
        """
        exchange = self.exchange(request)
        problem = problemFor(failure, exchange.requestId, self._serviceNames)
        if not problem.expected:
            where = dict(
                requestId=exchange.requestId,
                method=request.method.decode("ascii", "replace"),
                path=request.path.decode("ascii", "replace"),
            )
            if isinstance(failure.value, ServiceError):
                # The service logged its traceback; ours would say nothing.
                self.log.error(
                    "Request {requestId} {method} {path} failed in a service: {code}: {message}",
                    code=failure.value.code,
                    message=failure.value.message,
                    **where,
                )
            else:
                self.log.failure("Request {requestId} {method} {path} failed", failure, **where)
        request.setResponseCode(problem.status)
        request.setHeader("Content-Type", "application/problem+json")
        for name, value in problem.headers.items():
            request.setHeader(name, value)
        return problem.body(exchange.requestId) + b"\n"

    # The gateway's own routes

    @route(
        "GET",
        "/v1/openapi.json",
        "This API's OpenAPI 3.1 document",
        tag="platform",
        response={"type": "object"},
        rateLimited=False,
    )
    def openapi(self, exchange: IExchange) -> bytes:
        if self._openapi is None:
            from .openapi import openapiDocument

            self._openapi = dumps(openapiDocument(self)) + b"\n"
        return self._openapi

    @route(
        "GET",
        "/healthz",
        "Liveness: the gateway is serving",
        tag="platform",
        response=schemas.HEALTH,
        rateLimited=False,
    )
    def health(self, exchange: IExchange) -> Any:
        return {"status": "ok"}
