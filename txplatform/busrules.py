# -*- test-case-name: tests.test_localbus,tests.amqp.test_bus -*-
"""
The rules every bus applies the same way: deadlines, priorities, the
envelope of replies, and what happens to an event whose handler failed.
Kept in one place so the in-process and AMQP buses cannot drift apart.
"""

from __future__ import annotations

from typing import Any, Callable

from attrs import frozen
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from . import traces
from .codec import callBinding, eventBinding, traced, untraced
from .context import Origin, Priority, newMessageId
from .errors import (
    DeadlineExceeded,
    InternalError,
    MalformedMessage,
    ServiceError,
    errorFromWire,
    errorToWire,
)
from .interfaces import IPayloadCodec
from .metrics import CALLS_IN_FLIGHT, DEADLINES_EXPIRED
from .serviceid import ServiceId

__all__ = [
    "millis",
    "OutgoingCall",
    "prepareCall",
    "encodeEvent",
    "decodePayload",
    "checkIdempotencyKey",
    "MAX_IDEMPOTENCY_KEY",
    "checkPriority",
    "callDeadline",
    "awaitAnswer",
    "timeoutFailure",
    "replyFor",
    "internalReply",
    "resultOf",
    "retryDelay",
    "failureReason",
]

log = Logger()


def checkPriority(priority: int | None) -> int:
    """
    @raise ValueError: not one of AMQP's priorities, 0 to 9.
    """
    priority = Priority.NORMAL if priority is None else int(priority)
    if not 0 <= priority <= 9:
        raise ValueError(f"priority must be 0 to 9, not {priority}")
    return priority


def millis(seconds: float) -> int:
    """
    Seconds as the whole milliseconds that travel in headers and bindings.
    """
    return int(seconds * 1000)


@frozen
class OutgoingCall:
    """
    A call made ready to send: its checked priority, its deadline, its ids
    and its payload encoded and bound to all of them.
    """

    priority: int
    deadline: float
    messageId: str
    caller: ServiceId | None
    correlationId: str
    data: bytes
    idempotencyKey: str | None = None
    #: Its payload carries a trace (L{txplatform.codec.traced}).
    isTraced: bool = False
    #: The caller's span of this call, if one is recorded: it ends with the
    #: answer (L{awaitAnswer}).
    span: Any = None
    #: What C{data} is bound to (L{txplatform.codec.callBinding}): for a
    #: callee in this process, which would only compute it again.
    binding: bytes = b""

    @property
    def deadlineMillis(self) -> int:
        return millis(self.deadline)


def prepareCall(
    codec: IPayloadCodec,
    now: float,
    defaultTimeout: float,
    service: ServiceId,
    method: str,
    payload: Any,
    timeout: float | None,
    priority: int | None,
    origin: Origin,
    caller: ServiceId | None,
) -> OutgoingCall:
    """
    What every bus does before sending a call: check its priority, take
    its deadline (never past the one it inherited), give it an id (and a
    trace id, the inherited one if any), and encode its payload bound to
    where it goes, who sends it and until when.

    @raise ValueError: A bad priority or idempotency key, or a payload the
        codec refuses.
    @raise TypeError: A payload the codec cannot encode.
    """
    priority = checkPriority(priority)
    key = origin.idempotencyKey
    if key is not None:
        checkIdempotencyKey(key)
    deadline = callDeadline(now, timeout, defaultTimeout, origin)
    messageId = newMessageId()
    correlationId = origin.correlationId or messageId
    traceParent, traceState = origin.traceParent, origin.traceState
    if traceParent is None:
        binding = callBinding(
            service, method, messageId, caller, correlationId, millis(deadline), key
        )
        data = codec.encode(payload, binding)
        return OutgoingCall(
            priority, deadline, messageId, caller, correlationId, data, key, binding=binding
        )
    # In a trace: the callee's span is the child of this call's span, if
    # this process records one, else of the span the caller gave.
    span = None
    if traces.enabled():
        span = traces.startSpan(
            f"{service.hex}/{method}",
            traces.SpanKind.CLIENT,
            traceParent,
            {
                "rpc.system": "txplatform",
                "rpc.service": service.hex,
                "rpc.method": method,
                "txplatform.message_id": messageId,
                "txplatform.correlation_id": correlationId,
            },
            traceState=traceState,
        )
    if span is not None:
        traceParent, traceState = traces.traceParentOf(span), traces.traceStateOf(span)
    try:
        binding = callBinding(
            service, method, messageId, caller, correlationId, millis(deadline), key, True
        )
        data = codec.encode(traced(payload, traceParent, traceState), binding)
    except BaseException:
        if span is not None:
            traces.endSpan(Failure(), span)
        raise
    return OutgoingCall(
        priority, deadline, messageId, caller, correlationId, data, key, True, span, binding
    )


def encodeEvent(
    codec: IPayloadCodec,
    event: str,
    messageId: str,
    source: ServiceId | None,
    correlationId: str,
    payload: Any,
    traceParent: str | None,
    traceState: str | None,
) -> bytes:
    """
    An event's payload encoded, bound to what it is, and carrying
    C{traceParent} and C{traceState} (sealed with it) if it is in a trace.

    @raise ValueError: A payload the codec refuses.
    @raise TypeError: A payload the codec cannot encode.
    """
    if traceParent is None:
        return codec.encode(payload, eventBinding(event, messageId, source, correlationId))
    return codec.encode(
        traced(payload, traceParent, traceState),
        eventBinding(event, messageId, source, correlationId, True),
    )


def decodePayload(
    codec: IPayloadCodec, data: bytes, binding: bytes, isTraced: bool
) -> tuple[Any, str | None, str | None]:
    """
    The payload of a call or event, and its C{traceparent} and
    C{tracestate} if it is traced (C{binding} says so too, or the codec
    refuses it).

    @raise MalformedMessage: The codec refuses it, or a traced payload
        lacks its trace.
    """
    payload = codec.decode(data, binding)
    if not isTraced:
        return payload, None, None
    return untraced(payload)


#: The longest idempotency key a call carries, in bytes (the direct
#: transport's frames give it one length byte).
MAX_IDEMPOTENCY_KEY = 255


def checkIdempotencyKey(key: object) -> str:
    """
    @raise ValueError: C{key} is not a string of 1 to 255 printable ASCII
        characters (every bus carries it as a header).
    """
    if (
        not isinstance(key, str)
        or not 0 < len(key) <= MAX_IDEMPOTENCY_KEY
        or not key.isascii()
        or not key.isprintable()
    ):
        raise ValueError("an idempotency key is 1 to 255 printable ASCII characters")
    return key


def callDeadline(now: float, timeout: float | None, default: float, origin: Origin) -> float:
    """
    When a call's answer stops being useful: its own timeout, never later
    than the deadline it inherited.
    """
    deadline = now + (default if timeout is None else timeout)
    if origin.deadline is not None:
        deadline = min(deadline, origin.deadline)
    return deadline


def awaitAnswer(
    clock: IReactorTime,
    service: ServiceId,
    method: str,
    deadline: float,
    canceller: Callable[[Deferred[Any]], None],
    span: Any = None,
) -> Deferred[Any]:
    """
    What every bus hands the caller of a call: a Deferred for the answer,
    withdrawn by C{canceller} if the caller cancels it, and failing with
    L{DeadlineExceeded} (cancelling it likewise) once C{deadline} passes.
    The call's C{span}, if any, ends with the answer.
    """
    d: Deferred[Any] = Deferred(canceller)
    d.addTimeout(
        max(deadline - clock.seconds(), 0.0), clock, onTimeoutCancel=timeoutFailure(service, method)
    )
    if span is not None:
        d.addBoth(traces.endSpan, span)
    CALLS_IN_FLIGHT.inc()
    return d.addBoth(_answered)


def _answered(result: Any) -> Any:
    CALLS_IN_FLIGHT.dec()
    return result


def timeoutFailure(service: ServiceId, method: str) -> Callable[[Any, float], Failure]:
    """
    For C{Deferred.addTimeout}'s C{onTimeoutCancel}: the L{DeadlineExceeded}
    a caller gets.
    """

    def timedOut(result: Any, timeout: float) -> Failure:
        DEADLINES_EXPIRED.labels(service.hex, method).inc()
        return Failure(
            DeadlineExceeded(
                f"no answer from service {service.hex} to {method} within {timeout:g}s",
                {"service": service.hex, "method": method},
            )
        )

    return timedOut


def replyFor(result: Any, service: ServiceId, method: str) -> dict[str, Any]:
    """
    The reply envelope for a handler's C{result}: C{{"ok": value}} or
    C{{"error": ...}}.  An unexpected failure is logged with its traceback
    and answered with a bare internal error.
    """
    if not isinstance(result, Failure):
        return {"ok": result}
    if result.check(ServiceError):
        return {"error": errorToWire(result.value)}
    log.failure(
        "Unhandled error in {method} of {service}", result, method=method, service=service.hex
    )
    return internalReply(method)


def internalReply(method: str) -> dict[str, Any]:
    return {"error": errorToWire(InternalError(f"internal error in {method}"))}


def resultOf(answer: Any) -> Any:
    """
    The value in a reply envelope.

    @raise ServiceError: the typed error it carries.
    """
    if isinstance(answer, dict):
        if "error" in answer:
            raise errorFromWire(answer["error"])
        if "ok" in answer:
            return answer["ok"]
    raise MalformedMessage("a reply that is neither ok nor error")


def retryDelay(failure: Failure, attempt: int, delays: tuple[float, ...]) -> float | None:
    """
    How long to wait before the next attempt at an event whose handler
    failed at attempt C{attempt}, or C{None} to dead-letter it now (the
    delays are used up, or the error is one no retry can cure).
    """
    permanent = isinstance(failure.value, ServiceError) and failure.value.permanent
    if permanent or attempt > len(delays):
        return None
    return delays[attempt - 1]


def failureReason(failure: Failure) -> str:
    """
    What a dead letter records as its error; unexpected ones are logged
    with their traceback.
    """
    if isinstance(failure.value, ServiceError):
        return f"{failure.value.code}: {failure.value.message}"
    log.failure("Event handler failed", failure)
    return f"{failure.type.__name__}: {failure.getErrorMessage()}"
