"""
Tests for L{txplatform.logs} and the request id followed through the logs
of the gateway and the services.
"""

from __future__ import annotations

import io
import json
import sys
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.logger import ILogObserver, Logger, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from txplatform import logs

from .gateway.harness import PlatformTestCase
from .support import SQLiteMixin, eventually


class JSONObserverTests(SynchronousTestCase):
    def test_jsonLines(self) -> None:
        """
        The observer for twistd --logger writes each event as JSON on
        standard output, every field kept.
        """
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        observer = logs.json()
        self.assertTrue(ILogObserver.providedBy(observer))
        Logger(observer=observer).info("{what} happened", what="this", requestId="r-1")
        [line] = [line for line in out.getvalue().split("\x1e") if line.strip()]
        event = json.loads(line)
        self.assertEqual((event["what"], event["requestId"]), ("this", "r-1"))
        self.assertEqual(event["log_format"], "{what} happened")


class TraceTests(SQLiteMixin, PlatformTestCase):
    """
    A request's X-Request-Id appears in the gateway's access log and in
    the events of the services it reached, as their trace.
    """

    @inlineCallbacks
    def test_followed(self) -> Any:
        """
        With C{logCalls} (C{--log-calls}), every call served is logged with
        the request's id as its trace, beside the gateway's access log line.
        """
        self.accounts.logCalls = True
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        reply = yield self.request(
            "POST",
            "/v1/accounts",
            json={"username": "alice", "email": "alice@example.com", "password": "correct horse"},
            headers={"X-Request-Id": "trace-abc-123"},
        )
        self.assertEqual(reply.status, 201)
        self.assertEqual(reply.header("x-request-id"), "trace-abc-123")
        served = [e for e in events if e.get("trace") == "trace-abc-123"]
        self.assertEqual(
            [(e["service"], e["method"], e["caller"], e["outcome"]) for e in served],
            [("account", "register", "010100", "ok")],
        )
        self.assertGreaterEqual(served[0]["duration"], 0)

        def accessLine() -> list[str]:
            batches = [e["requests"] for e in events if "requests" in e]
            return [line for b in batches for line in b.splitlines() if "trace-abc-123" in line]

        [line] = yield eventually(accessLine)
        self.assertIn('"POST /v1/accounts" 201 ', line)

    @inlineCallbacks
    def test_errorsToo(self) -> Any:
        """
        A call that fails is logged with its error code.
        """
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        reply = yield self.request(
            "GET", "/v1/accounts/nobody", headers={"X-Request-Id": "trace-404"}
        )
        self.assertEqual(reply.status, 404)
        [served] = [e for e in events if e.get("trace") == "trace-404"]
        self.assertEqual(served["outcome"], "not_found")

    @inlineCallbacks
    def test_onlyFailures(self) -> Any:
        """
        By default a service logs only the calls that fail.
        """
        self.assertFalse(self.accounts.logCalls)
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        yield self.request(
            "POST",
            "/v1/accounts",
            json={"username": "bob", "email": "bob@example.com", "password": "correct horse"},
            headers={"X-Request-Id": "trace-ok"},
        )
        yield self.request("GET", "/v1/accounts/nobody", headers={"X-Request-Id": "trace-bad"})
        self.assertEqual([e for e in events if e.get("trace") == "trace-ok"], [])
        [failed] = [e for e in events if e.get("trace") == "trace-bad"]
        self.assertEqual(failed["outcome"], "not_found")
