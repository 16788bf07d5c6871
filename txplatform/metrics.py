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

from typing import Any, Iterator

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = [
    "BusCollector",
    "Labelled",
    "Tally",
    "BUS_CONNECTIONS",
    "CALLS",
    "CALLS_IN_FLIGHT",
    "DATABASE_TRANSACTION_SECONDS",
    "DATABASE_WAIT_SECONDS",
    "CALL_SECONDS",
    "DEADLINES_EXPIRED",
    "DEAD_LETTERS",
    "EVENTS",
    "EVENT_SECONDS",
    "LATENCY_BUCKETS",
    "OUTBOX_BACKLOG",
    "OUTBOX_LEFTOVERS",
    "OUTBOX_OLDEST",
]

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


class Labelled:
    """
    The children of a labelled metric, each looked up once: prometheus-
    client's C{labels()} checks and locks on every call (1.6 us, against
    0.15 us for a dict), and the hot paths count every request.
    """

    def __init__(self, metric: Any) -> None:
        self._metric = metric
        self._children: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str) -> Any:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._metric.labels(*values)
        return child


class Tally:
    """
    A gauge counted in a plain integer and read when scraped: for a count
    changed twice on every call, by the reactor's thread only, where
    C{Gauge.inc} would take a lock each time.
    """

    def __init__(self, gauge: Gauge) -> None:
        self.value = 0
        gauge.set_function(lambda: self.value)

    def inc(self) -> None:
        self.value += 1

    def dec(self) -> None:
        self.value -= 1


# The buses (every one: L{txplatform.busrules} is what they share).
CALLS_IN_FLIGHT = Tally(
    Gauge("txplatform_bus_calls_in_flight", "Calls this process made and awaits the answers of.")
)
DEADLINES_EXPIRED = Counter(
    "txplatform_bus_deadlines_expired",
    "Calls this process made that had no answer by their deadline, by the callee's service id"
    " (hex) and method.",
    ["service", "method"],
)
DEAD_LETTERS = Counter(
    "txplatform_bus_dead_letters",
    "Events given up on and set aside for an operator (txplatform-deadletters), by consumer"
    " group: malformed, or failed on every attempt.",
    ["group"],
)
BUS_CONNECTIONS = Counter(
    "txplatform_bus_connections",
    "Connections to the broker made and set up: more than one is a reconnection.",
    ["transport"],
)

# The databases: labelled by the database (its URL or file, no password).
DATABASE_WAIT_SECONDS = Histogram(
    "txplatform_database_wait_seconds",
    "Seconds a transaction waited for a connection of the pool before it began.",
    ["database"],
    buckets=LATENCY_BUCKETS,
)
DATABASE_TRANSACTION_SECONDS = Histogram(
    "txplatform_database_transaction_seconds",
    "Seconds a transaction took in its thread, from its beginning to its commit or rollback.",
    ["database"],
    buckets=LATENCY_BUCKETS,
)

# The outbox.
OUTBOX_BACKLOG = Gauge(
    "txplatform_outbox_backlog",
    "Events committed and not yet confirmed by the bus, held in memory.",
    ["service"],
)
OUTBOX_OLDEST = Gauge(
    "txplatform_outbox_oldest_seconds",
    "Age of the oldest event left in the outbox table past its publication (0: none), as the"
    " last scan found it: grows while the bus is away.",
    ["service"],
)
OUTBOX_LEFTOVERS = Counter(
    "txplatform_outbox_leftovers_published",
    "Events published from the outbox table rather than from memory: a crashed process's, or"
    " one whose first publication failed.",
    ["service"],
)


class BusCollector(Collector):
    """
    What a process's bus says of itself when metrics are read:
    C{txplatform_bus_connected} (1 or 0) and, on a bus with publisher
    confirms, C{txplatform_bus_confirms_pending}.  Read at scrape time, so
    the bus pays nothing for it meanwhile.
    """

    def __init__(self, bus: Any, transport: str) -> None:
        self._bus = bus
        self._transport = transport

    def collect(self) -> Iterator[GaugeMetricFamily]:
        connected = GaugeMetricFamily(
            "txplatform_bus_connected",
            "1 while the process's bus is connected (to its broker, or serving).",
            labels=["transport"],
        )
        connected.add_metric(
            [self._transport], 1.0 if getattr(self._bus, "connected", True) else 0.0
        )
        yield connected
        pending = getattr(self._bus, "confirmsPending", None)
        if pending is not None:
            family = GaugeMetricFamily(
                "txplatform_bus_confirms_pending",
                "Messages published and not yet confirmed by the broker.",
                labels=["transport"],
            )
            family.add_metric([self._transport], float(pending()))
            yield family
