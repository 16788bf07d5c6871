# -*- test-case-name: tests.test_localbus -*-
"""
What travels with a call or an event besides its payload: who sent it, the
trace it belongs to, its deadline and its priority.
"""

from __future__ import annotations

import enum
import itertools
import os
from contextvars import ContextVar
from typing import Any, Callable

from attrs import frozen

from .serviceid import ServiceId

__all__ = [
    "Priority",
    "Origin",
    "CallContext",
    "EventContext",
    "newMessageId",
    "newRequestId",
    "handling",
    "runHandling",
]


class Priority(enum.IntEnum):
    """
    How urgent a call is.  The values are AMQP message priorities (0-9), so
    a broker's priority queue orders pending work the same way the
    in-process bus does.
    """

    LOW = 1
    NORMAL = 5
    HIGH = 9


# A random 64-bit prefix per process and a counter: unique across processes
# and replicas without a system call per message (os.urandom, or even
# os.getpid, costs more than the rest of making a message).
def _reseed() -> None:
    global _prefix, _counter
    _prefix = os.urandom(8).hex()
    _counter = itertools.count()


_reseed()
# A forked child must not repeat its parent's ids.
os.register_at_fork(after_in_child=_reseed)


def newMessageId() -> str:
    """
    A 32-hex-digit id, unique across processes.
    """
    return f"{_prefix}{next(_counter):016x}"


def newRequestId() -> str:
    """
    A random 32-hex-digit id for a request from outside: clients see it,
    so it must not count requests as message ids do.
    """
    return os.urandom(16).hex()


@frozen
class Origin:
    """
    Where a call or event comes from, passed on to the calls it causes.

    @ivar caller: The calling service, if it is one.
    @ivar correlationId: The trace id shared by every message one outside
        request causes (the gateway uses the HTTP request id).
    @ivar deadline: Absolute time (the bus clock's seconds) after which an
        answer is useless; nested calls never get a later deadline.
    @ivar idempotencyKey: Makes the calls sent with this origin answer
        again, from the callee's reply log, what the first call with the
        same key (to the same method, from the same caller) answered,
        rather than run again.  The gateway derives one from a client's
        C{Idempotency-Key} header.  Not passed on to nested calls: they
        are new work.
    @ivar traceParent: The W3C C{traceparent} of the span the calls and
        events sent with this origin belong under (L{txplatform.traces}):
        the buses carry it inside the sealed payload.  C{None} outside a
        trace (a process whose tracing is off starts none, but passes on
        the one it was given).
    @ivar traceState: The W3C C{tracestate} that goes with C{traceParent}
        (vendors' entries, passed on unchanged), carried with it; C{None}
        when it is empty or there is no C{traceParent}.
    """

    caller: ServiceId | None = None
    correlationId: str | None = None
    deadline: float | None = None
    idempotencyKey: str | None = None
    traceParent: str | None = None
    traceState: str | None = None


@frozen
class CallContext:
    """
    What a service's RPC handler learns about the call it is handling.
    """

    messageId: str
    service: ServiceId
    method: str
    caller: ServiceId | None
    correlationId: str
    deadline: float
    priority: int
    #: This call may have been delivered before: to a replica that did not
    #: finish, or by a connection its caller lost before the answer came.
    redelivered: bool = False
    #: The caller's idempotency key (L{Origin.idempotencyKey}), if any.
    idempotencyKey: str | None = None
    #: A digest of the call's payload, set by the service before a handler
    #: whose reply is recorded runs: a key used again with another payload
    #: is refused rather than answered.
    requestDigest: str | None = None
    #: The W3C C{traceparent} the call came with: the caller's span, until
    #: the service starts the span of this call, and that span's then.
    traceParent: str | None = None
    #: The W3C C{tracestate} that goes with C{traceParent}, if not empty.
    traceState: str | None = None

    @property
    def replyKey(self) -> str:
        """
        Under what this call's reply is recorded: its idempotency key, for
        this caller and method, or else its message id (which a
        redelivered call keeps).
        """
        if self.idempotencyKey is None:
            return self.messageId
        caller = self.caller.hex if self.caller is not None else "-"
        return f"{caller}:{self.method}:{self.idempotencyKey}"

    def origin(self, caller: ServiceId | None) -> Origin:
        """
        The origin for calls made while handling this one: same trace, same
        deadline, with C{caller} as the new caller.
        """
        return Origin(
            caller,
            self.correlationId,
            self.deadline,
            traceParent=self.traceParent,
            traceState=self.traceState,
        )


@frozen
class EventContext:
    """
    What an event handler learns about the event it is handling.

    @ivar attempt: 1 on first delivery, then 2, 3... on redeliveries.
    """

    messageId: str
    event: str
    source: ServiceId | None
    correlationId: str
    publishedAt: float
    attempt: int = 1
    #: The W3C C{traceparent} the event came with (see L{CallContext}).
    traceParent: str | None = None
    #: The W3C C{tracestate} that goes with C{traceParent}, if not empty.
    traceState: str | None = None

    def origin(self, caller: ServiceId | None) -> Origin:
        return Origin(
            caller,
            self.correlationId,
            None,
            traceParent=self.traceParent,
            traceState=self.traceState,
        )


#: The call or event the handler running now handles (see L{handling}).
_handling: ContextVar[CallContext | EventContext | None] = ContextVar(
    "txplatform.handling", default=None
)


def handling() -> CallContext | EventContext | None:
    """
    The context of the call or event whose handler is running: set while
    its synchronous part runs and, since an C{inlineCallbacks} generator
    keeps the context it was started in, in its later steps.  What a
    handler causes without passing its context along (the events its
    store stages in a transaction) takes the correlation id from here.
    """
    return _handling.get()


def runHandling(context: CallContext | EventContext, f: Callable[..., Any], *args: Any) -> Any:
    """
    C{f(*args)}, with C{context} as what is being handled (L{handling}).
    """
    token = _handling.set(context)
    try:
        return f(*args)
    finally:
        _handling.reset(token)
