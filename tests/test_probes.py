"""
Tests for L{txplatform.probes}.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import getChildForRequest
from twisted.web.test.requesthelper import DummyRequest

from txplatform.probes import probeResource


def get(resource: object, path: bytes) -> DummyRequest:
    request = DummyRequest(path.lstrip(b"/").split(b"/"))
    request.method = b"GET"
    child = getChildForRequest(resource, request)
    body = child.render(request)
    if isinstance(body, bytes):
        request.write(body)
    return request


class ProbeTests(SynchronousTestCase):
    def test_ready(self) -> None:
        """
        /readyz answers 200 while the check holds, and 503 with its reason
        when it does not; /healthz answers 200 either way.
        """
        state = [(True, "bus connected, 3 services serving")]
        root = probeResource(lambda: state[0], CollectorRegistry())
        request = get(root, b"/readyz")
        self.assertEqual(request.responseCode, 200)
        self.assertEqual(b"".join(request.written), b"ok: bus connected, 3 services serving\n")
        state[0] = (False, "bus not connected")
        request = get(root, b"/readyz")
        self.assertEqual(request.responseCode, 503)
        self.assertEqual(b"".join(request.written), b"not ready: bus not connected\n")
        self.assertEqual(get(root, b"/healthz").responseCode, 200)

    def test_metrics(self) -> None:
        """
        /metrics serves the registry in Prometheus' text format.
        """
        registry = CollectorRegistry()
        Counter("things", "Things done.", registry=registry).inc(3)
        request = get(probeResource(lambda: (True, ""), registry), b"/metrics")
        self.assertIn(b"things_total 3.0", b"".join(request.written))
