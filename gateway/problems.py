# -*- test-case-name: tests.gateway.test_app -*-
"""
Errors as RFC 9457 problem details (C{application/problem+json}).

Every error a client sees goes through L{problemFor}: service errors keep
their message, which services write for clients; anything unexpected becomes
a bare 500 that names the request id, while the traceback goes to the log.
"""

from __future__ import annotations

import math
from http import HTTPStatus
from typing import Any

from attrs import field, frozen
from twisted.python.failure import Failure
from werkzeug.exceptions import HTTPException, MethodNotAllowed
from werkzeug.exceptions import NotFound as RouteNotFound

from txplatform.codec import dumps
from txplatform.errors import ServiceError

__all__ = ["Problem", "HTTPProblem", "problemFor", "PROBLEM_TYPE_PREFIX"]

PROBLEM_TYPE_PREFIX = "urn:txplatform:problem:"

_STATUS_FOR_CODE = {
    "invalid_argument": 400,
    "malformed_json": 400,
    "unauthenticated": 401,
    "permission_denied": 403,
    "not_found": 404,
    "conflict": 409,
    "idempotency_key_reused": 422,
    "resource_exhausted": 429,
    "unavailable": 503,
    "deadline_exceeded": 503,
}


@frozen
class Problem:
    """
    One problem-details answer.

    @ivar kind: The last part of the C{type} URN (C{invalid_argument}...).
    @ivar expected: False for failures nobody planned for (bugs): logged
        with their traceback.
    """

    status: int
    kind: str
    detail: str
    extra: dict[str, Any] = field(factory=dict)
    headers: dict[str, str] = field(factory=dict)
    expected: bool = True

    def body(self, requestId: str) -> bytes:
        return dumps(
            {
                "type": PROBLEM_TYPE_PREFIX + self.kind,
                "title": HTTPStatus(self.status).phrase,
                "status": self.status,
                "detail": self.detail,
                **self.extra,
                "request_id": requestId,
            }
        )


class HTTPProblem(Exception):
    """
    Raised by the gateway itself for errors of the HTTP layer.
    """

    def __init__(
        self,
        status: int,
        kind: str,
        detail: str,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.problem = Problem(status, kind, detail, extra or {}, headers or {})


def problemFor(failure: Failure, requestId: str, serviceNames: dict[str, str]) -> Problem:
    """
    The problem to answer for C{failure}.

    @param serviceNames: Maps service ids (hex) to names, to say which
        service did not answer.
    """
    error = failure.value
    if isinstance(error, HTTPProblem):
        return error.problem
    if isinstance(error, ServiceError):
        status = _STATUS_FOR_CODE.get(error.code)
        if status is None:
            return _internal(requestId)
        extra: dict[str, Any] = {}
        headers: dict[str, str] = {}
        detail = error.message
        if status == 400 and error.details.get("errors"):
            extra["errors"] = error.details["errors"]
        if status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="txplatform"'
        if status == 429:
            wait = error.details.get("retry_after")
            seconds = max(1, math.ceil(wait)) if isinstance(wait, (int, float)) else 1
            headers["Retry-After"] = str(seconds)
            extra["retry_after"] = seconds
        if status == 503:
            name = serviceNames.get(error.details.get("service", ""))
            service = f"the {name} service" if name else "a service"
            if error.code == "deadline_exceeded":
                detail = f"{service} did not answer in time; try again shortly"
            else:
                detail = f"{service} is not available; try again shortly"
            headers["Retry-After"] = "1"
        return Problem(status, error.code, detail, extra, headers)
    if isinstance(error, MethodNotAllowed):
        allowed = ", ".join(sorted(error.valid_methods or ()))
        return Problem(
            405,
            "method_not_allowed",
            f"this resource allows {allowed}",
            headers={"Allow": allowed},
        )
    if isinstance(error, RouteNotFound):
        return Problem(404, "not_found", "there is nothing at this path")
    if isinstance(error, HTTPException) and error.code is not None and error.code < 500:
        return Problem(error.code, "http_error", error.description or HTTPStatus(error.code).phrase)
    return _internal(requestId)


def _internal(requestId: str) -> Problem:
    return Problem(
        500,
        "internal",
        f"an internal error occurred; quote request id {requestId} when reporting it",
        expected=False,
    )
