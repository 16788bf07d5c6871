# -*- test-case-name: tests.gateway.test_app -*-
"""
The gateway: the only door clients use.

It parses and checks HTTP requests, authenticates bearer tokens with the
Account service, calls the services over the bus with a deadline and a
priority, and turns every outcome into JSON or problem details.
"""

from __future__ import annotations

import ipaddress
import math
import random
import re
from typing import Any, Callable
from urllib.parse import unquote_to_bytes

from attrs import frozen
from klein import Klein
from twisted.internet.defer import Deferred, fail, inlineCallbacks
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource

from services import GATEWAY_ID, platformRegistry
from services.account import api as account
from services.notify import api as notify
from services.parser import api as parser
from services.post import api as post
from txplatform.codec import dumps
from txplatform.context import Origin, Priority, newMessageId
from txplatform.errors import (
    InvalidArgument,
    MalformedJSON,
    NotFound,
    ResourceExhausted,
    ServiceError,
    Unauthenticated,
)
from txplatform.interfaces import IBus
from txplatform.messages import fromPayload, fromQuery, toPayload
from txplatform.serviceid import ServiceId

from . import schemas
from .admission import Admission
from .bodies import decodeBody
from .operations import Operation, operation
from .problems import HTTPProblem, problemFor
from .ratelimit import AccountRateLimit, AddressRateLimit
from .site import GatewaySite
from .streams import NotificationStreams

__all__ = ["Gateway", "Principal"]

_JSON_TYPE = re.compile(r"^application/([a-z0-9.+-]+\+)?json\s*(;.*)?\Z", re.IGNORECASE)
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}\Z")
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{16,256}\Z")
_USERNAME = re.compile(r"^[a-z0-9_]{3,32}\Z")
_RECORD_ID = re.compile(r"^[0-9a-hjkmnp-tv-z]{26}\Z")


#: What a listing refuses although the cursor has the form its schema gives.
_CURSOR_RULE = {
    "cursor": "is not the `next` of a page of this listing (edited, made up, or from"
    " another listing)"
}

_OVERLOADED = HTTPProblem(
    503,
    "overloaded",
    "the gateway is busy with more urgent work: try again shortly",
    headers={"Retry-After": "1"},
)


@frozen
class Principal:
    """
    Whoever a verified token belongs to.
    """

    account_id: str
    username: str
    session_id: str


def _tooMany(whose: str, wait: float) -> ResourceExhausted:
    seconds = max(1, math.ceil(wait))
    return ResourceExhausted(
        f"too many requests from your {whose}: try again in {seconds} s",
        {"retry_after": seconds},
    )


def _principal(session: dict[str, Any]) -> Principal:
    return Principal(session["account_id"], session["username"], session["session_id"])


class _Exchange:
    """
    What the gateway keeps about one HTTP request (a plain slotted class:
    one is made per request).
    """

    __slots__ = ("requestId", "deadline", "priority", "origin")

    def __init__(self, requestId: str, deadline: float, priority: Priority) -> None:
        self.requestId = requestId
        self.deadline = deadline
        self.priority = priority
        self.origin = Origin(GATEWAY_ID, requestId, deadline)


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
            return self._gateway._problem(request, Failure(problem))
        return self._wrapped.render(request)


class _CORS(Resource):
    """
    Cross-origin access for browser scripts from the configured origins:
    answers preflights itself (Klein would say 405 to OPTIONS), and adds
    the CORS headers to the answers of allowed origins.
    """

    isLeaf = True
    _methods = b"GET, POST, PUT, PATCH, DELETE"
    _headers = b"Authorization, Content-Type, X-Request-Id, Last-Event-ID"
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
                return self._gateway._problem(request, Failure(problem))
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
    The HTTP API, served from L{resource} or L{site}.

    @param callTimeout: Seconds one HTTP request may spend waiting on
        services, across all the calls it makes.
    @param maxBodySize: Largest request body accepted, in bytes.
    @param corsOrigins: Origins (C{scheme://host[:port]}, or C{*}) whose
        browser scripts may call the API.
    @param trustedProxies: Address ranges whose C{X-Forwarded-For} is
        believed (see L{clientAddress}).
    @param maxInFlight: Requests this replica works on at once, the high
        class's limit; lower classes stop being admitted earlier
        (L{gateway.admission}).
    @param shedDelay: Seconds a refused request waits at least for its 503
        (its Retry-After).
    @param parserOver: Bodies larger than this many bytes are decoded and
        checked by the parser service's replicas rather than here; C{None}:
        all here.
    @param rateLimit: Limits requests per client address (shared with the
        other replicas); C{None}: no limit.
    @param accountRateLimit: Limits authenticated requests per account,
        likewise.
    """

    app = Klein()
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
        rateLimit: AddressRateLimit | None = None,
        accountRateLimit: AccountRateLimit | None = None,
    ) -> None:
        self.bus = bus
        self.parserOver = parserOver
        self.rateLimit = rateLimit
        self.accountRateLimit = accountRateLimit
        self.shedDelay = shedDelay
        self._random = random.Random()
        self.admission = Admission(maxInFlight)
        self.streams = NotificationStreams(bus, clock, heartbeat)
        self.corsOrigins = list(corsOrigins or [])
        self.trustedProxies = [ipaddress.ip_network(n, strict=False) for n in trustedProxies or []]
        self.clock = clock
        self.callTimeout = callTimeout
        self.maxBodySize = maxBodySize
        self._serviceNames = {sid.hex: name for name, sid in platformRegistry()}
        self._openapi: bytes | None = None

    def resource(self) -> Any:
        resource: Resource = self.app.resource()
        if self.corsOrigins:
            resource = _CORS(self, resource, self.corsOrigins)
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

    def _exchange(self, request: IRequest, priority: Priority = Priority.NORMAL) -> _Exchange:
        exchange = getattr(request, "_txplatformExchange", None)
        if exchange is None:
            given = request.getHeader("x-request-id")
            requestId = given if given and _REQUEST_ID.match(given) else newMessageId()
            exchange = _Exchange(requestId, self.clock.seconds() + self.callTimeout, priority)
            request._txplatformExchange = exchange  # type: ignore[attr-defined]
            request.setHeader("X-Request-Id", requestId)
        return exchange

    def runOperation(
        self, op: Operation, f: Callable[..., Any], request: IRequest, path: dict[str, Any]
    ) -> Any:
        """
        Run operation C{op}'s handler C{f} for C{request}: authenticate,
        parse, call, render.  (Plain callbacks rather than inlineCallbacks:
        this runs for every request.)
        """
        self._exchange(request, op.priority)
        if self.rateLimit is not None and op.rateLimited:
            wait = self.rateLimit.check(self.clientAddress(request))
            if wait is not None:
                return self._problem(request, Failure(_tooMany("address", wait)))
        if not self.admission.admit(op.priority):
            return self._shed(request)
        if op.streaming:
            # Admitted as any request, but a stream lasts: it does not keep
            # its place among the requests in flight.
            self.admission.release()
        else:
            request.notifyFinish().addBoth(self._released)
        if op.auth:
            request.setHeader("Cache-Control", "no-store")
            d = self._authenticate(request, op.ticket)
            return d.addCallback(self._proceed, op, f, request, path)
        return self._proceed(None, op, f, request, path)

    def _proceed(
        self,
        principal: Principal | None,
        op: Operation,
        f: Callable[..., Any],
        request: IRequest,
        path: dict[str, Any],
    ) -> Any:
        kwargs = dict(path)
        if principal is not None:
            kwargs["principal"] = principal
            if self.accountRateLimit is not None and op.rateLimited:
                wait = self.accountRateLimit.check(principal.account_id)
                if wait is not None:
                    raise _tooMany("account", wait)
        if op.query is not None:
            kwargs["query"] = fromQuery(op.query, self._queryArguments(request))
        if op.body is None:
            return self._handle(kwargs, op, f, request)
        raw = self._rawBody(request)
        if self.parserOver is not None and len(raw) > self.parserOver:
            d = self._parseElsewhere(request, f.__name__, op.body, raw)
            return d.addCallback(self._withBody, kwargs, op, f, request)
        kwargs["body"] = decodeBody(raw, op.body)
        return self._handle(kwargs, op, f, request)

    def _withBody(
        self, body: Any, kwargs: dict[str, Any], op: Operation, f: Callable[..., Any], request: Any
    ) -> Any:
        kwargs["body"] = body
        return self._handle(kwargs, op, f, request)

    def _handle(
        self, kwargs: dict[str, Any], op: Operation, f: Callable[..., Any], request: IRequest
    ) -> Any:
        result = f(self, request, **kwargs)
        if op.streaming:
            return result  # the handler writes the response itself
        if isinstance(result, Deferred):
            return result.addCallback(self._render, request, op)
        return self._render(result, request, op)

    def _parseElsewhere(
        self, request: IRequest, operationId: str, messageType: type, raw: bytes
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
        d = self.call(
            request,
            parser.SERVICE_ID,
            "parse",
            {"operation": operationId, "body": text},
            idempotent=True,
        )
        return d.addCallback(lambda reply: fromPayload(messageType, reply["message"]))

    @staticmethod
    def _render(result: Any, request: IRequest, op: Operation) -> bytes:
        request.setResponseCode(op.status)
        if op.status == 204:
            return b""
        request.setHeader("Content-Type", "application/json")
        # A final newline costs a byte and makes curl output readable.
        return result if isinstance(result, bytes) else dumps(result) + b"\n"

    def call(
        self,
        request: IRequest,
        service: ServiceId,
        method: str,
        payload: Any,
        idempotent: bool | None = None,
    ) -> Any:
        """
        Call a service for C{request}: under its deadline, with its priority
        and its request id as the trace id.  Calls made for GET requests
        are reads, which the bus may send again after a broken connection.
        """
        exchange = self._exchange(request)
        if not isinstance(payload, dict):
            payload = toPayload(payload)
        if idempotent is None:
            idempotent = request.method in (b"GET", b"HEAD")
        remaining = exchange.deadline - self.clock.seconds()
        return self.bus.call(
            service,
            method,
            payload,
            timeout=max(remaining, 0.0),
            priority=exchange.priority,
            origin=exchange.origin,
            idempotent=idempotent,
        )

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

    def _authenticate(self, request: IRequest, ticketAllowed: bool = False) -> Deferred[Principal]:
        if not request.getHeader("authorization"):
            tickets = (request.args or {}).get(b"ticket")
            if ticketAllowed and tickets:
                return self._redeem(request, tickets[0])
            return fail(Unauthenticated("this needs a token: send Authorization: Bearer <token>"))
        token = self._bearer(request)
        if token is None:
            return fail(Unauthenticated("the Authorization header must be Bearer <token>"))
        d = self.call(
            request, account.SERVICE_ID, "verify_token", {"token": token}, idempotent=True
        )
        return d.addCallback(_principal)

    def _redeem(self, request: IRequest, ticket: bytes) -> Deferred[Principal]:
        """
        The session a stream ticket stands for; the ticket is used up.
        """
        text = ticket.decode("ascii", "replace")
        if not _TOKEN.match(text):
            return fail(Unauthenticated("the stream ticket is invalid, expired or already used"))
        # Not idempotent: sent again after a lost reply, the ticket would be
        # refused as used; the client asks for another.
        d = self.call(
            request, account.SERVICE_ID, "redeem_ticket", {"ticket": text}, idempotent=False
        )
        return d.addCallback(_principal)

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
        body = self._problem(request, Failure(_OVERLOADED))
        if not self.shedDelay:
            return body
        delay = self.shedDelay * self._random.uniform(1.0, 1.5)
        d = deferLater(self.clock, delay, lambda: body)
        request.notifyFinish().addErrback(lambda _: d.cancel())
        return d

    def _released(self, result: Any) -> None:
        # Finished or lost (the client went away): either way, it is done.
        self.admission.release()

    @app.handle_errors(Exception)
    def _problem(self, request: IRequest, failure: Failure) -> bytes:
        exchange = self._exchange(request)
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

    # Accounts

    @app.route("/v1/accounts", methods=["POST"])
    @operation(
        "Register an account",
        tag="accounts",
        status=201,
        body=account.Register,
        response=schemas.OWN_ACCOUNT,
        errors=(409,),
    )
    @inlineCallbacks
    def register(self, request: IRequest, body: account.Register) -> Any:
        created = yield self.call(request, account.SERVICE_ID, "register", body)
        request.setHeader("Location", f"/v1/accounts/{created['username']}")
        return created

    @staticmethod
    def _username(username: str) -> str:
        """
        Usernames in paths match case-insensitively; one that cannot exist
        is simply not found.
        """
        username = username.lower()
        if not _USERNAME.match(username):
            raise NotFound(f"no account is named {username!r}")
        return username

    @app.route("/v1/accounts/<username>", methods=["GET"])
    @operation(
        "Read a public profile",
        tag="accounts",
        response=schemas.ACCOUNT,
        errors=(404,),
        priority=Priority.LOW,
    )
    def profile(self, request: IRequest, username: str) -> Any:
        return self.call(
            request, account.SERVICE_ID, "get_profile", {"username": self._username(username)}
        )

    @app.route("/v1/accounts/<username>/posts", methods=["GET"])
    @operation(
        "List an author's posts, newest first",
        tag="posts",
        query=schemas.PageQuery,
        response=schemas.pageOf(schemas.POST),
        errors=(404,),
        rules=_CURSOR_RULE,
        priority=Priority.LOW,
    )
    @inlineCallbacks
    def authorPosts(self, request: IRequest, username: str, query: schemas.PageQuery) -> Any:
        author = yield self.call(
            request, account.SERVICE_ID, "get_profile", {"username": self._username(username)}
        )
        return (
            yield self.call(
                request,
                post.SERVICE_ID,
                "list_posts",
                post.ListPosts(author_id=author["id"], limit=query.limit, cursor=query.cursor),
            )
        )

    # The caller's own account

    @app.route("/v1/me", methods=["GET"])
    @operation(
        "Read your account", tag="me", auth=True, response=schemas.OWN_ACCOUNT, errors=(404,)
    )
    def me(self, request: IRequest, principal: Principal) -> Any:
        return self.call(
            request, account.SERVICE_ID, "get_account", {"account_id": principal.account_id}
        )

    @app.route("/v1/me", methods=["PATCH"])
    @operation(
        "Change your email, display name or password",
        tag="me",
        auth=True,
        body=schemas.UpdateMe,
        response=schemas.OWN_ACCOUNT,
        errors=(403, 404, 409),
        description="Changing the password needs `current_password` (403 if wrong) and"
        " ends every other session.",
    )
    def updateMe(self, request: IRequest, principal: Principal, body: schemas.UpdateMe) -> Any:
        return self.call(
            request,
            account.SERVICE_ID,
            "update_account",
            account.UpdateAccount(
                account_id=principal.account_id,
                session_id=principal.session_id,
                email=body.email,
                display_name=body.display_name,
                password=body.password,
                current_password=body.current_password,
            ),
        )

    @app.route("/v1/me", methods=["DELETE"])
    @operation(
        "Delete your account, its posts and notifications",
        tag="me",
        auth=True,
        status=204,
        body=schemas.DeleteMe,
        errors=(403, 404),
    )
    def deleteMe(self, request: IRequest, principal: Principal, body: schemas.DeleteMe) -> Any:
        return self.call(
            request,
            account.SERVICE_ID,
            "delete_account",
            {"account_id": principal.account_id, "password": body.password},
        )

    @app.route("/v1/me/following", methods=["GET"])
    @operation(
        "List the accounts you follow, most recent first",
        tag="me",
        auth=True,
        query=schemas.PageQuery,
        response=schemas.pageOf(schemas.ACCOUNT),
        rules=_CURSOR_RULE,
        priority=Priority.LOW,
    )
    def following(self, request: IRequest, principal: Principal, query: schemas.PageQuery) -> Any:
        return self.call(
            request,
            account.SERVICE_ID,
            "list_following",
            account.ListFollowing(
                account_id=principal.account_id, limit=query.limit, cursor=query.cursor
            ),
        )

    @app.route("/v1/me/following/<username>", methods=["PUT"])
    @operation(
        "Follow an account",
        tag="me",
        auth=True,
        status=204,
        errors=(404,),
        rules={"username": "is your own (you cannot follow yourself)"},
        description="Following twice is harmless; following yourself is a 400.",
    )
    def follow(self, request: IRequest, principal: Principal, username: str) -> Any:
        return self.call(
            request,
            account.SERVICE_ID,
            "follow",
            {"account_id": principal.account_id, "username": self._username(username)},
        )

    @app.route("/v1/me/following/<username>", methods=["DELETE"])
    @operation("Stop following an account", tag="me", auth=True, status=204, errors=(404,))
    def unfollow(self, request: IRequest, principal: Principal, username: str) -> Any:
        return self.call(
            request,
            account.SERVICE_ID,
            "unfollow",
            {"account_id": principal.account_id, "username": self._username(username)},
        )

    # Sessions

    @app.route("/v1/sessions", methods=["POST"])
    @operation(
        "Log in: trade a username and password for a token",
        tag="sessions",
        status=201,
        body=account.Login,
        response=schemas.SESSION,
        priority=Priority.HIGH,
        errors=(401, 429),
    )
    @inlineCallbacks
    def login(self, request: IRequest, body: account.Login) -> Any:
        request.setHeader("Cache-Control", "no-store")
        attempt = account.LoginAttempt(
            username=body.username, password=body.password, client=self.clientAddress(request)
        )
        session = yield self.call(request, account.SERVICE_ID, "login", attempt)
        return {"token": session["token"], "expires_at": session["expires_at"]}

    @app.route("/v1/sessions/current", methods=["DELETE"])
    @operation(
        "Log out: revoke the token used",
        tag="sessions",
        auth=True,
        status=204,
        priority=Priority.HIGH,
    )
    def logout(self, request: IRequest, principal: Principal) -> Any:
        return self.call(
            request, account.SERVICE_ID, "logout", {"session_id": principal.session_id}
        )

    # Posts

    @app.route("/v1/posts", methods=["POST"])
    @operation(
        "Publish a post",
        tag="posts",
        auth=True,
        status=201,
        body=schemas.NewPost,
        response=schemas.POST,
        errors=(404, 429),
    )
    @inlineCallbacks
    def createPost(self, request: IRequest, principal: Principal, body: schemas.NewPost) -> Any:
        created = yield self.call(
            request,
            post.SERVICE_ID,
            "create_post",
            post.CreatePost(
                author_id=principal.account_id,
                author_username=principal.username,
                body=body.body,
            ),
        )
        request.setHeader("Location", f"/v1/posts/{created['id']}")
        return created

    @staticmethod
    def _recordId(value: str, what: str) -> str:
        if not _RECORD_ID.match(value):
            raise NotFound(f"no such {what}")
        return value

    @app.route("/v1/posts/<post_id>", methods=["GET"])
    @operation(
        "Read a post", tag="posts", response=schemas.POST, errors=(404,), priority=Priority.LOW
    )
    def readPost(self, request: IRequest, post_id: str) -> Any:
        return self.call(
            request, post.SERVICE_ID, "get_post", {"post_id": self._recordId(post_id, "post")}
        )

    @app.route("/v1/posts/<post_id>", methods=["DELETE"])
    @operation("Delete your post", tag="posts", auth=True, status=204, errors=(403, 404))
    def deletePost(self, request: IRequest, principal: Principal, post_id: str) -> Any:
        return self.call(
            request,
            post.SERVICE_ID,
            "delete_post",
            {"post_id": self._recordId(post_id, "post"), "account_id": principal.account_id},
        )

    # Notifications

    @app.route("/v1/notifications/stream", methods=["GET"])
    @operation(
        "Receive your new notifications as they arrive",
        tag="notifications",
        auth=True,
        ticket=True,
        query=schemas.StreamQuery,
        response=schemas.NOTIFICATION,
        priority=Priority.LOW,
        streaming=True,
        rules={"Last-Event-ID": "(the header) is not a notification id"},
        description="Server-Sent Events: each new notification is an event"
        " `notification` whose `id` is the notification's id and whose `data` is the"
        " notification (JSON). Reconnect with `Last-Event-ID` to get what was missed"
        " first. A comment every 15 seconds keeps the stream alive; the stream ends"
        " when the session does. A browser's `EventSource`, which cannot send a token,"
        " passes a ticket instead: `?ticket=` from `POST /v1/notifications/stream/tickets`."
        " A ticket opens one stream: to resume after an error, open a new `EventSource` with"
        " a new ticket and `&last_event_id=` (the last `id` received), which stands for the"
        " header.",
    )
    def notificationStream(
        self, request: IRequest, principal: Principal, query: schemas.StreamQuery
    ) -> Any:
        last = request.getHeader("last-event-id")
        if last is None:
            # A new EventSource (as after a ticket was used up) cannot send
            # the header: it may say where it was in the query instead.
            last = query.last_event_id
        elif not _RECORD_ID.match(last):
            raise InvalidArgument.forFields([("Last-Event-ID", "is not a notification id")])
        return self.streams.open(
            request,
            principal.account_id,
            principal.session_id,
            self._exchange(request).requestId,
            last,
        )

    @app.route("/v1/notifications/stream/tickets", methods=["POST"])
    @operation(
        "Get a ticket to open your notification stream with",
        tag="notifications",
        auth=True,
        status=201,
        response=schemas.STREAM_TICKET,
        description="For clients that cannot send the Authorization header, such as a"
        " browser's `EventSource`: open `/v1/notifications/stream?ticket=<ticket>` within a"
        " minute. A ticket opens one stream, once, and stands for the session that asked"
        " for it: the stream ends when that session does. Each reconnection needs a new"
        " ticket.",
    )
    def streamTicket(self, request: IRequest, principal: Principal) -> Any:
        return self.call(
            request,
            account.SERVICE_ID,
            "issue_ticket",
            {"session_id": principal.session_id},
            idempotent=False,
        )

    @app.route("/v1/notifications", methods=["GET"])
    @operation(
        "List your notifications, newest first",
        tag="notifications",
        auth=True,
        query=schemas.NotificationQuery,
        response=schemas.pageOf(schemas.NOTIFICATION),
        rules=_CURSOR_RULE,
        priority=Priority.LOW,
    )
    def notifications(
        self, request: IRequest, principal: Principal, query: schemas.NotificationQuery
    ) -> Any:
        return self.call(
            request,
            notify.SERVICE_ID,
            "list_notifications",
            notify.ListNotifications(
                account_id=principal.account_id,
                unread=query.unread,
                limit=query.limit,
                cursor=query.cursor,
            ),
        )

    @app.route("/v1/notifications/<notification_id>/read", methods=["POST"])
    @operation(
        "Mark a notification read", tag="notifications", auth=True, status=204, errors=(404,)
    )
    def markRead(self, request: IRequest, principal: Principal, notification_id: str) -> Any:
        return self.call(
            request,
            notify.SERVICE_ID,
            "mark_read",
            {
                "account_id": principal.account_id,
                "notification_id": self._recordId(notification_id, "notification"),
            },
        )

    # The platform itself

    @app.route("/v1/openapi.json", methods=["GET"])
    @operation(
        "This API's OpenAPI 3.1 document",
        tag="platform",
        response={"type": "object"},
        rateLimited=False,
    )
    def openapi(self, request: IRequest) -> bytes:
        if self._openapi is None:
            from .openapi import openapiDocument

            self._openapi = dumps(openapiDocument(self)) + b"\n"
        return self._openapi

    @app.route("/healthz", methods=["GET"])
    @operation(
        "Liveness: the gateway is serving",
        tag="platform",
        response=schemas.HEALTH,
        rateLimited=False,
    )
    def health(self, request: IRequest) -> Any:
        return {"status": "ok"}
