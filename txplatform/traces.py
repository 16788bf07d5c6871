# -*- test-case-name: tests.test_traces -*-
"""
Traces: OpenTelemetry spans for the gateway's operations, the calls and
events on the bus, the handlers serving them, database transactions and
the outbox relay.

A trace crosses processes as W3C Trace Context: a C{traceparent} string
(C{00-<trace id>-<span id>-<flags>}) and, when there is one, the
C{tracestate} of the vendors that took part (C{vendor=value,...}), both
carried by the bus inside the sealed payload (see
L{txplatform.codec.traced}), never in a clear header.  In a process they
travel explicitly, in L{Origin.traceParent <txplatform.context.Origin>}
and L{Origin.traceState <txplatform.context.Origin>} and the contexts
handlers get: Deferred callbacks do not carry OpenTelemetry's context
along.  A span started from them has their C{tracestate}, and so have its
children (the SDK passes it on).

Off until a process calls L{enable} (C{--otlp URL}, or a test with the
SDK's in-memory exporter).  While off, every function here returns after
one check of a module global: no span, no string, nothing allocated.  A
process whose tracing is off still passes on the C{traceparent} and
C{tracestate} it was given, so a trace is not cut where a hop does not
record.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator, Mapping

from opentelemetry import context as otelContext
from opentelemetry import trace
from opentelemetry.trace import Span, SpanContext, SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from twisted.python.failure import Failure

__all__ = [
    "SpanKind",
    "StatusCode",
    "enable",
    "disable",
    "enabled",
    "startSpan",
    "startChildOfCurrent",
    "traceParentOf",
    "traceStateOf",
    "parseTraceParent",
    "endSpan",
    "current",
    "runIn",
    "startServerSpan",
]

#: The tracer of the process, or C{None} while tracing is off.
_tracer: trace.Tracer | None = None
_propagator = TraceContextTextMapPropagator()


def enable(provider: trace.TracerProvider | None = None) -> None:
    """
    Record spans with C{provider}'s tracer (the global provider by default:
    one set with L{opentelemetry.trace.set_tracer_provider}).
    """
    global _tracer
    _tracer = trace.get_tracer("txplatform", tracer_provider=provider)


def disable() -> None:
    """
    Record nothing any more (tests turn tracing off again with this).
    """
    global _tracer
    _tracer = None


def enabled() -> bool:
    return _tracer is not None


def parseTraceParent(traceParent: str) -> SpanContext | None:
    """
    The span context a C{traceparent} names, or C{None} if it is not a
    valid one (it is then ignored, as W3C Trace Context says).
    """
    ctx = _propagator.extract({"traceparent": traceParent})
    spanContext = trace.get_current_span(ctx).get_span_context()
    return spanContext if spanContext.is_valid else None


def traceParentOf(span: Span) -> str:
    """
    The C{traceparent} that makes C{span} the parent of what it is given to.
    """
    c = span.get_span_context()
    return f"00-{c.trace_id:032x}-{c.span_id:016x}-{int(c.trace_flags):02x}"


def traceStateOf(span: Span) -> str | None:
    """
    The W3C C{tracestate} that goes with L{traceParentOf}C{(span)}, or
    C{None} when it is empty (nothing to carry).
    """
    return span.get_span_context().trace_state.to_header() or None


def _parentContext(traceParent: str | None, traceState: str | None) -> otelContext.Context:
    # An explicit, otherwise empty context: a span whose parent is not
    # given (or not valid) starts a trace, whatever happens to be current.
    # The propagator reads a tracestate only beside a valid traceparent,
    # and drops one that is not valid.
    if traceParent is None:
        return otelContext.Context()
    carrier = {"traceparent": traceParent}
    if traceState is not None:
        carrier["tracestate"] = traceState
    return _propagator.extract(carrier, otelContext.Context())


def startSpan(
    name: str,
    kind: SpanKind,
    parent: str | None,
    attributes: Mapping[str, Any] | None = None,
    *,
    traceState: str | None = None,
    rootless: bool = True,
) -> Span | None:
    """
    Start a span, the child of C{parent} (a C{traceparent}, with its
    C{traceState}, a C{tracestate}, if any), or the root of a new trace if
    there is none and C{rootless} allows it.

    @return: C{None} when tracing is off (or no trace to join).
    """
    if _tracer is None or (parent is None and not rootless):
        return None
    return _tracer.start_span(
        name, context=_parentContext(parent, traceState), kind=kind, attributes=attributes
    )


def startChildOfCurrent(name: str, attributes: Mapping[str, Any] | None = None) -> Span | None:
    """
    Start an internal span, the child of the span current in this thread's
    OpenTelemetry context, if there is one (L{current} makes a handler's
    span current while its synchronous part runs; inlineCallbacks keeps it
    for the generator's later steps).  Outside any trace: C{None}.
    """
    if _tracer is None:
        return None
    parent = trace.get_current_span()
    if not parent.get_span_context().is_valid:
        return None
    return _tracer.start_span(name, kind=SpanKind.INTERNAL, attributes=attributes)


def endSpan(result: Any, span: Span) -> Any:
    """
    End C{span} with C{result}, a value or a L{Failure} (marking it an
    error); return C{result}, for C{addBoth}.
    """
    if isinstance(result, Failure):
        error = result.value
        span.set_status(StatusCode.ERROR, f"{type(error).__name__}: {result.getErrorMessage()}")
        code = getattr(error, "code", None)
        if isinstance(code, str):
            span.set_attribute("txplatform.error", code)
    span.end()
    return result


@contextmanager
def current(span: Span | None) -> Iterator[None]:
    """
    Make C{span} current while the block runs (in this thread only): what
    it calls synchronously, and the generators of inlineCallbacks it
    starts, see it (L{startChildOfCurrent}).
    """
    if span is None:
        yield
        return
    token = otelContext.attach(trace.set_span_in_context(span))
    try:
        yield
    finally:
        otelContext.detach(token)


def runIn(span: Span | None, f: Callable[..., Any], *args: Any) -> Any:
    """
    C{f(*args)} with C{span} current (see L{current}).
    """
    if span is None:
        return f(*args)
    with current(span):
        return f(*args)


def startServerSpan(
    name: str, traceParent: str | None, traceState: str | None, attributes: Mapping[str, Any]
) -> Span | None:
    """
    The gateway's span of one HTTP request: the child of the client's
    C{traceparent} (with its C{tracestate}) if valid, else a new trace.
    """
    if _tracer is None:
        return None
    return _tracer.start_span(
        name,
        context=_parentContext(traceParent, traceState),
        kind=SpanKind.SERVER,
        attributes=attributes,
    )
