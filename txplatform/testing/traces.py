# -*- test-case-name: tests.test_traces -*-
"""
Spans recorded in memory for a test: L{recordSpans} turns tracing on
(L{txplatform.traces.enable}) with the OpenTelemetry SDK's in-memory
exporter, and off again when the test ends.
"""

from __future__ import annotations

from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from .. import traces

__all__ = ["recordSpans", "parentOf", "spanNamed"]


def recordSpans(testCase: Any) -> InMemorySpanExporter:
    """
    Record the spans every part of txplatform makes until C{testCase}
    ends; C{get_finished_spans()} on the exporter returned lists them.
    """
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    traces.enable(provider)
    testCase.addCleanup(provider.shutdown)
    testCase.addCleanup(traces.disable)
    return exporter


def spanNamed(spans: Any, name: str) -> ReadableSpan:
    """
    The one span called C{name}.

    @raise AssertionError: There is none, or several.
    """
    found = [s for s in spans if s.name == name]
    if len(found) != 1:
        raise AssertionError(f"{len(found)} spans named {name!r} in {[s.name for s in spans]}")
    return found[0]


def parentOf(spans: Any, span: ReadableSpan) -> ReadableSpan | None:
    """
    The span among C{spans} that is C{span}'s parent, if it is there.
    """
    if span.parent is None:
        return None
    for other in spans:
        if other.context.span_id == span.parent.span_id:
            return other
    return None
