# -*- test-case-name: tests.test_routes -*-
"""
HTTP operations a service package contributes to the gateway.

A service declares its routes as methods of a class (named by its
L{ServiceDeclaration.routes<txplatform.catalogue.ServiceDeclaration>}),
each decorated with L{route}.  The declaration both documents the route
(the gateway's OpenAPI document is built from these) and is enforced by the
gateway: a route declared with C{auth=True} never runs without a verified
principal, one with a body class never sees an unchecked body, and it
answers the declared status.  Nothing here needs Klein: the gateway turns
declarations into routes, and the parser pool reads the body classes.

A handler is called as C{handler(exchange, **path)}, plus C{principal=}
when it needs authentication, C{body=} when it takes a body and C{query=}
when it takes query parameters; it returns the response body (or a
Deferred of it), sent with the declared status::

    class LikeRoutes:
        def __init__(self, parts: RouteParts) -> None:
            pass

        @route("PUT", "/v1/posts/{post_id}/like", "Like a post", tag="likes",
               auth=True, status=204)
        def like(self, exchange, principal, post_id):
            return exchange.call(api.Like(post_id=post_id, account_id=principal.account_id))
"""

from __future__ import annotations

import re
from typing import Any, Callable, Iterable, Mapping

from attrs import field, frozen
from zope.interface import Attribute, Interface

from .cache import Forget, SubscribedCache
from .context import Priority
from .errors import NotFound
from .messages import RECORD_ID

__all__ = [
    "CURSOR_RULE",
    "IAuthenticator",
    "IExchange",
    "Operation",
    "Principal",
    "Route",
    "RouteConflict",
    "RouteParts",
    "bodyTypes",
    "checkRoutes",
    "pathRecordId",
    "route",
    "routesOf",
]

_ROUTE = "__txplatform_route__"
_PATH = re.compile(r"^(/[A-Za-z0-9._~-]*|/\{[a-z_][a-z0-9_]*\})+\Z")
_VARIABLE = re.compile(r"\{([a-z_][a-z0-9_]*)\}")
_RECORD_ID = re.compile(f"^{RECORD_ID}\\Z")


def _errors(value: Iterable[int] | Mapping[int, str]) -> Mapping[int, str]:
    if isinstance(value, Mapping):
        return dict(value)
    return {status: "" for status in value}


@frozen
class Operation:
    """
    What one HTTP operation takes, who may call it and what it answers.

    @ivar summary: One line for the OpenAPI document.
    @ivar tag: The group it is listed under.
    @ivar status: The success status.
    @ivar response: JSON Schema of the success body (C{None}: no body).
    @ivar body: Message class of the request body, if it takes one.
    @ivar query: Message class of the query parameters, if any.
    @ivar auth: Whether a bearer token is required.
    @ivar errors: Error statuses this operation can answer with, besides
        those every operation can (400 for a bad body, 500, 503...), each
        with what it means here (C{""}: the generic meaning); a tuple of
        statuses gives them all the generic meaning.
    @ivar priority: Priority of the calls it makes to services.
    @ivar description: More than the summary, in Markdown.
    @ivar streaming: Whether it answers with a stream of Server-Sent Events
        written by the handler, rather than one body: it then holds no
        place among the requests in flight once admitted.
    @ivar rateLimited: Whether it counts against the rate limits (not for
        probes such as the health check).
    @ivar ticket: Whether a stream ticket in the query (C{?ticket=}) may
        stand for the bearer token, for clients that cannot send headers (a
        browser's C{EventSource}).
    @ivar rules: What the operation refuses with a 400 although the schemas
        allow it, because no schema can say it, by the field named in the
        problem's C{errors}: C{{"username": "is your own"}}.  The document
        lists them with the 400 answer (C{x-rules}).
    @ivar parameters: JSON Schemas of the path's variables, by name: the
        gateway answers 404 for a value outside its C{pattern} (it names
        nothing, as an unknown path does) and publishes them; a variable
        without one is any string.
    @ivar endsSessions: Whether it may end sessions of the caller's
        account (a logout, a password change, deleting the account): once
        it answered, the gateway forgets the principals it verified for
        that account (see the gateway's C{principalCache}).
    """

    summary: str
    tag: str
    status: int = 200
    response: dict[str, Any] | None = None
    body: type | None = None
    query: type | None = None
    auth: bool = False
    errors: Mapping[int, str] = field(default=(), converter=_errors)
    priority: Priority = Priority.NORMAL
    description: str = ""
    streaming: bool = False
    rateLimited: bool = True
    ticket: bool = False
    rules: Mapping[str, str] = field(factory=dict, converter=dict)
    parameters: Mapping[str, dict[str, Any]] = field(factory=dict, converter=dict)
    endsSessions: bool = False


#: What a listing refuses although its cursor has the form its schema gives.
CURSOR_RULE = {
    "cursor": "is not the `next` of a page of this listing (edited, made up, or from"
    " another listing)"
}


@frozen
class Route:
    """
    One operation as a gateway serves it.

    @ivar method: The HTTP method.
    @ivar path: The path, OpenAPI style: C{/v1/posts/{post_id}}.
    @ivar name: Its C{operationId}: unique among every gateway route.
    @ivar operation: What it takes and answers.
    @ivar handler: What answers it.
    """

    method: str
    path: str
    name: str
    operation: Operation
    handler: Callable[..., Any]

    @property
    def variables(self) -> list[str]:
        """
        The names of the path's variables, in order.
        """
        return _VARIABLE.findall(self.path)

    def shape(self) -> tuple[str, str]:
        """
        What the route answers regardless of its variables' names: two
        routes of one shape would shadow each other.
        """
        return self.method, _VARIABLE.sub("{}", self.path)


@frozen
class _RouteSpec:
    method: str
    path: str
    operation: Operation


def route(
    method: str, path: str, summary: str, **kwargs: Any
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """
    Declare the decorated method an HTTP operation on C{method} C{path}
    (see L{Operation} for the keywords).  The method itself is unchanged.
    """
    method = method.upper()
    if method not in ("GET", "POST", "PUT", "PATCH", "DELETE"):
        raise ValueError(f"{method} is not a method a route can have")
    if not _PATH.match(path):
        raise ValueError(f"{path!r} is not a path such as /v1/things/{{thing_id}}")
    spec = _RouteSpec(method, path, Operation(summary, **kwargs))

    def decorator(function: Callable[..., Any]) -> Callable[..., Any]:
        setattr(function, _ROUTE, spec)
        return function

    return decorator


def routesOf(routes: object) -> list[Route]:
    """
    The routes an object declares with L{route}, bound to it, in the order
    of their names; given a class, the routes its instances will have (for
    their declarations: their handlers are not bound).
    """
    cls = routes if isinstance(routes, type) else type(routes)
    found = []
    for name in sorted(dir(cls)):
        spec = getattr(getattr(cls, name), _ROUTE, None)
        if spec is not None:
            found.append(Route(spec.method, spec.path, name, spec.operation, getattr(routes, name)))
    return found


class RouteConflict(ValueError):
    """
    Two routes would shadow each other, or share an C{operationId}.
    """


def checkRoutes(owned: Iterable[tuple[str, Route]]) -> None:
    """
    Refuse routes that shadow each other or share an C{operationId}.

    @param owned: Each route with who contributed it (for the message).
    @raise RouteConflict: Naming both.
    """
    shapes: dict[tuple[str, str], tuple[str, Route]] = {}
    names: dict[str, tuple[str, Route]] = {}
    for owner, one in owned:
        other = shapes.get(one.shape())
        if other is not None:
            raise RouteConflict(
                f"{one.method} {one.path} of {owner} would shadow {other[1].method}"
                f" {other[1].path} of {other[0]}"
            )
        other = names.get(one.name)
        if other is not None:
            raise RouteConflict(f"{owner} and {other[0]} both have an operation named {one.name!r}")
        shapes[one.shape()] = names[one.name] = (owner, one)


def pathRecordId(value: str, what: str) -> str:
    """
    A record id from a URL path.

    @param what: What it is the id of, for the error.
    @raise NotFound: It cannot be the id of anything.
    """
    if not _RECORD_ID.match(value):
        raise NotFound(f"no such {what}")
    return value


def bodyTypes(routes: Iterable[Route]) -> dict[str, type]:
    """
    The message class of each operation that takes a body, by its
    C{operationId}: what the parser pool decodes bodies against.
    """
    return {r.name: r.operation.body for r in routes if r.operation.body is not None}


@frozen
class RouteParts:
    """
    What a gateway hands a service's route class when it makes one.

    @ivar bus: The bus the gateway calls on (for subscriptions; calls for a
        request go through its L{IExchange}).
    @ivar clock: The gateway's clock.
    @ivar heartbeat: Seconds between keep-alive comments on open streams.
    @ivar readCache: Seconds a L{cache} may serve what it kept (0: off).
    """

    bus: Any
    clock: Any
    heartbeat: float = 15.0
    readCache: float = 1.0

    def cache(
        self, forgets: Mapping[str, Forget], maxEntries: int = 4096
    ) -> SubscribedCache[Any, Any]:
        """
        A cache of what a service answers the routes, kept on this gateway
        for at most L{readCache} seconds, and forgetting what the service's
        C{forgets} events say is gone (L{SubscribedCache}): for answers
        that only ever change by going, and are the same for every client.
        """
        return SubscribedCache(self.bus, self.clock, forgets, maxEntries, self.readCache)


@frozen
class Principal:
    """
    Whoever a verified token belongs to.
    """

    account_id: str
    username: str
    session_id: str


class IExchange(Interface):
    """
    One HTTP request as a route's handler sees it: the gateway keeps it as
    a component of the request (C{IExchange(request)}).
    """

    requestId = Attribute("The request's id: the client's X-Request-Id, or a new one.")
    request = Attribute("The HTTP request (L{twisted.web.iweb.IRequest}).")

    def clientAddress() -> str:
        """
        The client's address (behind trusted proxies, the one they name).
        """

    def call(
        request: Any,
        method: str | None = None,
        payload: Any = None,
        idempotent: bool | None = None,
    ) -> Any:
        """
        Call a service for this request: under its deadline, with its
        priority and its id as the trace id.  Calls made for GET requests
        are reads, which the bus may send again after a broken connection.

        @param request: A request message (L{txplatform.messages.request}),
            sent to the method it is for; or, with C{method} and
            C{payload}, the id of the service to call.

        @return: A Deferred of the reply.
        """


class IAuthenticator(Interface):
    """
    Turns a request's credentials into a L{Principal}.  One route class of
    the installed services provides it (the Account service's); the
    gateway uses it for every operation declared with C{auth=True}.
    """

    def authenticate(exchange: IExchange, token: str) -> Any:
        """
        The principal a bearer token stands for.

        @return: A Deferred of the L{Principal}; it fails with
            L{txplatform.errors.Unauthenticated} for a token that is not
            (or no longer) valid.
        """

    def redeem(exchange: IExchange, ticket: str) -> Any:
        """
        The principal a single-use stream ticket stands for; the ticket is
        used up.
        """
