# -*- test-case-name: tests.test_probes -*-
"""
What an orchestrator and a monitoring system ask a process, on a listener of
its own (C{--metrics}): C{/healthz} (alive: the reactor answers),
C{/readyz} (ready: its bus connected and its services serving; 503 and why
otherwise) and C{/metrics} (Prometheus' text format).
"""

from __future__ import annotations

from typing import Any, Callable

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from twisted.web.resource import Resource

__all__ = ["MetricsResource", "probeResource"]


class _Probe(Resource):
    isLeaf = True

    def __init__(self, check: Callable[[], tuple[bool, str]]) -> None:
        super().__init__()
        self._check = check

    def render_GET(self, request: Any) -> bytes:
        ok, detail = self._check()
        request.setResponseCode(200 if ok else 503)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        return f"{'ok' if ok else 'not ready'}: {detail}\n".encode()


class MetricsResource(Resource):
    """
    C{/metrics}: a Prometheus registry in its text format.

    Rendered in the reactor's thread: prometheus-client's own Twisted
    resource goes through WSGI and the reactor's thread pool, which the
    database shares, for what takes a fraction of a millisecond; and
    Twisted's WSGI cannot serve a listener on a UNIX socket (it wants the
    client's host).
    """

    isLeaf = True

    def __init__(self, registry: Any) -> None:
        super().__init__()
        self._registry = registry

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
        return generate_latest(self._registry)


def probeResource(ready: Callable[[], tuple[bool, str]], registry: Any = REGISTRY) -> Resource:
    """
    The probes' resource tree: C{ready} says whether the process is ready,
    and in a few words why (not).
    """
    root = Resource()
    root.putChild(b"healthz", _Probe(lambda: (True, "serving")))
    root.putChild(b"readyz", _Probe(ready))
    root.putChild(b"metrics", MetricsResource(registry))
    return root
