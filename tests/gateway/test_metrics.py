"""
Tests for L{txplatform_gateway.metrics}: what the gateway counts of the
requests it answers and refuses.
"""

from __future__ import annotations

from prometheus_client import REGISTRY
from twisted.trial.unittest import SynchronousTestCase

from txplatform.errors import NotFound
from txplatform.testing import ServiceHarness
from txplatform_gateway.ratelimit import AddressRateLimit
from txplatform_gateway.testing import GatewayClient


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class GatewayMetricsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.harness = ServiceHarness(self.mktemp())
        self.addCleanup(self.harness.stop)
        self.harness.startService("account", argon2_time_cost=1, argon2_memory_cost=8)

    def test_requests(self) -> None:
        """
        Each request is counted by operation, status and priority class, and
        timed by operation.
        """
        client = GatewayClient(self.harness)
        operation = "profile"
        found = dict(operation=operation, priority="low")
        before = {
            status: sample("txplatform_gateway_requests_total", status=status, **found)
            for status in ("200", "404")
        }
        timed = sample("txplatform_gateway_request_seconds_count", operation=operation)
        client.post(
            "/v1/accounts",
            {"username": "alice", "email": "alice@example.com", "password": "correct horse"},
        )
        self.assertEqual(client.get("/v1/accounts/alice").status, 200)
        self.assertEqual(client.get("/v1/accounts/nobody").status, 404)
        self.assertEqual(client.get("/v1/accounts/nobody").status, 404)
        self.assertEqual(
            {
                status: sample("txplatform_gateway_requests_total", status=status, **found) - n
                for status, n in before.items()
            },
            {"200": 1, "404": 2},
        )
        self.assertEqual(
            sample("txplatform_gateway_request_seconds_count", operation=operation) - timed, 3
        )

    def test_shed(self) -> None:
        """
        Requests refused by the rate limit (429) and by admission (503) are
        counted by reason, and as requests with their status.
        """
        limit = AddressRateLimit(self.harness.bus, self.harness.reactor, limit=1)
        client = GatewayClient(self.harness, rateLimit=limit, shedDelay=0)
        shed = {
            reason: sample("txplatform_gateway_shed_total", reason=reason, priority="low")
            for reason in ("rate_limit", "admission")
        }
        refused = sample(
            "txplatform_gateway_requests_total",
            operation="profile",
            status="429",
            priority="low",
        )
        client.get("/v1/accounts/nobody")
        self.assertEqual(client.get("/v1/accounts/nobody").status, 429)
        client.gateway.rateLimit = None
        self.patch(client.gateway.admission, "admit", lambda priority: False)
        self.assertEqual(client.get("/v1/accounts/nobody").status, 503)
        self.assertEqual(
            {
                reason: sample("txplatform_gateway_shed_total", reason=reason, priority="low") - n
                for reason, n in shed.items()
            },
            {"rate_limit": 1, "admission": 1},
        )
        self.assertEqual(
            sample(
                "txplatform_gateway_requests_total",
                operation="profile",
                status="429",
                priority="low",
            )
            - refused,
            1,
        )

    def test_disconnected(self) -> None:
        """
        A client gone before its answer is counted as disconnected, its
        span (when tracing) ends as an error, and its going away is
        swallowed: no unhandled failure is left behind.
        """
        from opentelemetry.trace import StatusCode

        from txplatform.testing.traces import recordSpans, spanNamed

        exporter = recordSpans(self)
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure
        from twisted.web.server import Request
        from twisted.web.test.requesthelper import DummyChannel

        client = GatewayClient(self.harness)
        labels = dict(operation="profile", status="disconnected", priority="low")
        before = sample("txplatform_gateway_requests_total", **labels)
        request = Request(DummyChannel())
        request.method, request.uri = b"GET", b"/v1/accounts/alice"
        request.path = request.uri
        route = next(r for r in client.gateway.routes if r.name == "profile")
        answered = client.gateway.runOperation(route, request, {"username": "alice"})
        request.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(sample("txplatform_gateway_requests_total", **labels) - before, 1)
        span = spanNamed(exporter.get_finished_spans(), "GET /v1/accounts/{username}")
        self.assertEqual(span.status.status_code, StatusCode.ERROR)
        # The call it made still ends (for nobody).
        self.harness.flush()
        self.failureResultOf(answered, NotFound)
