# -*- test-case-name: tests.gateway.test_openapi -*-
"""
Declaring an HTTP operation once: what it takes, who may call it and what
it answers.

L{operation} both documents a route (the OpenAPI document is built from
these declarations) and enforces the declaration: a route declared with
C{auth=True} cannot run without a verified token, one declared with a body
class never sees an unchecked body, and it answers the declared status.
"""

from __future__ import annotations

from functools import wraps
from typing import Any, Callable

from attrs import field, frozen

from txplatform.context import Priority

__all__ = ["Operation", "operation", "operationOf"]

_OPERATION = "__txplatform_operation__"


@frozen
class Operation:
    """
    @ivar status: The success status.
    @ivar response: JSON Schema of the success body (C{None}: no body).
    @ivar body: Message class of the request body, if it takes one.
    @ivar query: Message class of the query parameters, if any.
    @ivar auth: Whether a bearer token is required.
    @ivar errors: Error statuses this operation can answer with, besides
        those every operation can (400 for a bad body, 500, 503...).
    @ivar priority: Priority of the calls it makes to services.
    @ivar streaming: Whether it answers with a stream of Server-Sent Events
        written by the handler, rather than one body: it then holds no
        place among the requests in flight once admitted.
    @ivar rateLimited: Whether it counts against the client address's rate
        limit (not for probes such as the health check).
    @ivar ticket: Whether a stream ticket in the query (C{?ticket=}) may
        stand for the bearer token, for clients that cannot send headers (a
        browser's C{EventSource}).
    @ivar rules: What the operation refuses with a 400 although the schemas
        allow it, because no schema can say it, by the field named in the
        problem's C{errors}: C{{"username": "is your own"}}, given as a
        dict.  The document lists them with the 400 answer (C{x-rules}).
    """

    summary: str
    tag: str
    status: int = 200
    response: dict[str, Any] | None = None
    body: type | None = None
    query: type | None = None
    auth: bool = False
    errors: tuple[int, ...] = ()
    priority: Priority = Priority.NORMAL
    description: str = ""
    streaming: bool = False
    rateLimited: bool = True
    ticket: bool = False
    rules: tuple[tuple[str, str], ...] = field(
        default=(), converter=lambda given: tuple(dict(given).items())
    )


def operation(summary: str, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """
    Declare the decorated gateway method an operation (see L{Operation} for
    the keywords).  The method is called as C{f(self, request, **path)},
    plus C{principal=} when C{auth}, C{body=} when it takes a body and
    C{query=} when it takes query parameters; it returns the response body
    (or a Deferred of it), which is sent with the declared status.
    """
    op = Operation(summary, **kwargs)

    def decorator(f: Callable[..., Any]) -> Callable[..., Any]:
        @wraps(f)
        def run(self: Any, request: Any, **path: Any) -> Any:
            return self.runOperation(op, f, request, path)

        setattr(run, _OPERATION, op)
        return run

    return decorator


def operationOf(function: Callable[..., Any]) -> Operation | None:
    return getattr(function, _OPERATION, None)
