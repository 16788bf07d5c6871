# -*- test-case-name: tests.test_metrics -*-
"""
The framework's Prometheus metrics, in prometheus-client's default registry:
one process serves them all at C{/metrics} (L{txplatform.probes}), each
labelled with the service it concerns, so an all-in-one process's services
stay apart.

Labels are bounded: service and method names come from the declarations
and event names from the handlers' declarations, never from a message.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

__all__ = ["CALLS", "CALL_SECONDS", "EVENTS", "EVENT_SECONDS", "LATENCY_BUCKETS"]

#: Seconds, from a cached read (sub-millisecond) to a call's default
#: deadline (10 s).
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

CALLS = Counter(
    "txplatform_calls",
    "Calls served, by service, method and outcome: ok, or the error's code"
    " (not_found, invalid_argument, ...; internal for an unexpected failure).",
    ["service", "method", "outcome"],
)
CALL_SECONDS = Histogram(
    "txplatform_call_seconds",
    "Seconds a service took to answer a call, from its arrival to its reply.",
    ["service", "method"],
    buckets=LATENCY_BUCKETS,
)
EVENTS = Counter(
    "txplatform_events_handled",
    "Events handed to a service's handlers, by the pattern handled and outcome: ok, failed (the bus retries"
    " it, then dead-letters it) or malformed (dead-lettered at once).",
    ["service", "pattern", "outcome"],
)
EVENT_SECONDS = Histogram(
    "txplatform_event_seconds",
    "Seconds a service's handler took over one event.",
    ["service", "pattern"],
    buckets=LATENCY_BUCKETS,
)
