# -*- test-case-name: tests.gateway.test_metrics -*-
"""
The gateway's Prometheus metrics (prometheus-client's default registry,
served by the process's C{--metrics} listener).  Operations are labelled by
their name (the OpenAPI document's operationId), never by a path a client
sent.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from txplatform.metrics import LATENCY_BUCKETS

__all__ = ["REQUESTS", "REQUEST_SECONDS", "SHED", "STREAMS"]

REQUESTS = Counter(
    "txplatform_gateway_requests",
    "Requests answered, by operation, HTTP status (disconnected: the client went away first)"
    " and priority class.",
    ["operation", "status", "priority"],
)
REQUEST_SECONDS = Histogram(
    "txplatform_gateway_request_seconds",
    "Seconds from a request's arrival to its answer, by operation (a stream: until it ends).",
    ["operation"],
    buckets=LATENCY_BUCKETS,
)
SHED = Counter(
    "txplatform_gateway_shed",
    "Requests refused before any work, by reason (admission: 503 overloaded; rate_limit: 429)"
    " and priority class.",
    ["reason", "priority"],
)
STREAMS = Gauge("txplatform_gateway_open_streams", "Event streams open now.")
