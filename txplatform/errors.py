# -*- test-case-name: tests.test_errors -*-
"""
Errors that cross the bus as data.

A service raises a L{ServiceError} subclass; the bus carries its C{code},
C{message} and C{details} back to the caller, where the same class is
raised again, so callers catch L{NotFound} whether the service runs in the
same process or behind a broker.  Anything else a handler raises becomes an
L{InternalError} whose message says nothing about the cause: the traceback
stays in the service's log.
"""

from __future__ import annotations

from typing import Any, Mapping

__all__ = [
    "ServiceError",
    "InvalidArgument",
    "MalformedJSON",
    "Unauthenticated",
    "PermissionDenied",
    "NotFound",
    "Conflict",
    "IdempotencyKeyReused",
    "ResourceExhausted",
    "Unavailable",
    "DeadlineExceeded",
    "UnknownMethod",
    "MalformedMessage",
    "InternalError",
    "errorFromWire",
    "errorToWire",
]


class ServiceError(Exception):
    """
    An error a service reports to its caller.

    @cvar code: A stable, machine-readable name for the kind of error.
    @ivar message: A sentence for humans, safe to show to a client.
    @ivar details: JSON-compatible extra data (which field was invalid...).
    """

    code = "error"
    #: Retrying the same message cannot succeed (a bus dead-letters it at once).
    permanent = False

    def __init__(self, message: str, details: Mapping[str, Any] | None = None):
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = dict(details or {})

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, ServiceError)
        return (self.code, self.message, self.details) == (
            other.code,
            other.message,
            other.details,
        )

    def __hash__(self) -> int:
        return hash((self.code, self.message))


class InvalidArgument(ServiceError):
    """
    The request is not acceptable as sent.  C{details["errors"]} lists
    C{{"field": ..., "reason": ...}} pairs.
    """

    code = "invalid_argument"
    permanent = True

    #: Problems reported by field at most: a body with thousands of unknown
    #: fields gets a short answer, not one larger than itself.
    MAX_REPORTED = 20

    @classmethod
    def forFields(cls, errors: list[tuple[str, str]]) -> InvalidArgument:
        if len(errors) > cls.MAX_REPORTED:
            more = len(errors) - cls.MAX_REPORTED
            errors = errors[: cls.MAX_REPORTED] + [("", f"and {more} more problems")]
        message = "; ".join(f"{name}: {reason}" if name else reason for name, reason in errors)
        return cls(
            message,
            {"errors": [{"field": name, "reason": reason} for name, reason in errors]},
        )


class MalformedJSON(InvalidArgument):
    """
    A request body that is not JSON text (or not UTF-8): raised where bodies
    are decoded, the gateway or a parser replica, so both answer alike.
    """

    code = "malformed_json"


class Unauthenticated(ServiceError):
    code = "unauthenticated"
    permanent = True


class PermissionDenied(ServiceError):
    code = "permission_denied"
    permanent = True


class NotFound(ServiceError):
    code = "not_found"
    permanent = True


class Conflict(ServiceError):
    code = "conflict"
    permanent = True


class IdempotencyKeyReused(ServiceError):
    """
    A call's idempotency key was used before for another request: its
    recorded reply belongs to that one.
    """

    code = "idempotency_key_reused"
    permanent = True


class ResourceExhausted(ServiceError):
    """
    Too many attempts: try again after C{details["retry_after"]} seconds.
    """

    code = "resource_exhausted"


class Unavailable(ServiceError):
    """
    The callee could not be reached or is not serving.
    """

    code = "unavailable"


class DeadlineExceeded(Unavailable):
    """
    No answer arrived before the call's deadline.
    """

    code = "deadline_exceeded"


class UnknownMethod(ServiceError):
    code = "unknown_method"
    permanent = True


class MalformedMessage(ServiceError):
    """
    A message that cannot be decoded or does not match its schema.  It can
    never succeed, so event consumers dead-letter it at once.
    """

    code = "malformed_message"
    permanent = True


class InternalError(ServiceError):
    code = "internal"


_BY_CODE: dict[str, type[ServiceError]] = {
    cls.code: cls
    for cls in [
        InvalidArgument,
        MalformedJSON,
        Unauthenticated,
        PermissionDenied,
        NotFound,
        Conflict,
        IdempotencyKeyReused,
        ResourceExhausted,
        Unavailable,
        DeadlineExceeded,
        UnknownMethod,
        MalformedMessage,
        InternalError,
    ]
}


def errorToWire(error: ServiceError) -> dict[str, Any]:
    """
    The JSON form of C{error}.
    """
    return {"code": error.code, "message": error.message, "details": error.details}


def errorFromWire(data: object) -> ServiceError:
    """
    Rebuild a typed error from its JSON form.  Unknown codes survive as a
    plain L{ServiceError} with that code, so newer services can add codes.
    """
    if not isinstance(data, dict):
        return MalformedMessage(f"an error reply must be an object, not {type(data).__name__}")
    code = data.get("code")
    message = data.get("message")
    details = data.get("details") or {}
    if not isinstance(code, str) or not isinstance(message, str) or not isinstance(details, dict):
        return MalformedMessage("an error reply needs a string code and message")
    cls = _BY_CODE.get(code)
    if cls is not None:
        return cls(message, details)
    error = ServiceError(message, details)
    error.code = code
    return error
