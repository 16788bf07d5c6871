# -*- test-case-name: tests.gateway.test_testing -*-
"""
A client of the gateway for tests, without a port: requests go straight to
the gateway's resource (treq's C{StubTreq}), and the services behind it run
in a L{txplatform.testing.ServiceHarness}, so a test of HTTP routes is
synchronous too.
"""

from __future__ import annotations

import json
from typing import Any

from attrs import frozen
from treq.testing import StubTreq

from txplatform.testing import NeverFired, ServiceHarness

from .app import Gateway

__all__ = ["GatewayClient", "Response"]


@frozen
class Response:
    """
    What the gateway answered.
    """

    status: int
    headers: Any
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body) if self.body else None

    def header(self, name: str) -> str | None:
        values = self.headers.getRawHeaders(name)
        return values[0] if values else None


class GatewayClient:
    """
    Requests to a gateway over the harness's bus, serving the routes of
    the harness's catalogue.

    @ivar gateway: The L{Gateway}.
    @param gatewayOptions: More keywords for L{Gateway}.
    """

    def __init__(self, harness: ServiceHarness, **gatewayOptions: Any) -> None:
        self.harness = harness
        gatewayOptions.setdefault("catalogue", harness.catalogue)
        self.gateway = Gateway(harness.bus, harness.reactor, **gatewayOptions)
        self._http = StubTreq(self.gateway.resource())

    def _wait(self, d: Any) -> Any:
        """
        The result of C{d}, moving bytes between client and gateway, and
        the harness's work and time, until it fires.
        """
        results: list[Any] = []
        d.addBoth(results.append)
        reactor = self.harness.reactor
        waited, within = 0.0, self.gateway.callTimeout + 60.0
        while True:
            self._http.flush()
            self.harness.flush()
            self._http.flush()
            if results:
                break
            due = [c.getTime() for c in reactor.getDelayedCalls()]
            if not due or waited >= within:
                raise NeverFired(f"the gateway did not answer {d!r}")
            step = max(min(due) - reactor.seconds(), 0.001)
            reactor.advance(step)
            waited += step
        [result] = results
        if hasattr(result, "raiseException"):
            result.raiseException()
        return result

    def request(
        self,
        method: str,
        path: str,
        json: Any = None,
        token: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Response:
        """
        Send a request and return the answer, letting the services work.
        """
        sent = dict(headers or {})
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        response = self._wait(
            self._http.request(method, "http://gateway" + path, json=json, headers=sent)
        )
        body = self._wait(response.content())
        return Response(response.code, response.headers, body)

    def get(self, path: str, **kwargs: Any) -> Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, json: Any = None, **kwargs: Any) -> Response:
        return self.request("POST", path, json=json, **kwargs)

    def put(self, path: str, **kwargs: Any) -> Response:
        return self.request("PUT", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> Response:
        return self.request("DELETE", path, **kwargs)
