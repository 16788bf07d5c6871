"""
Tests for L{txplatform_gateway.accesslog}.
"""

from typing import Any

from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from txplatform_gateway.accesslog import AccessLog


class AccessLogTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.events: list[dict[str, Any]] = []

        def observe(event: dict[str, Any]) -> None:
            if event.get("log_namespace") == "txplatform_gateway.access":
                self.events.append(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)

    def note(self, log: AccessLog, n: int) -> None:
        log.request("192.0.2.1", "GET", f"/v1/posts/{n}", 200, 12, f"r{n}")

    def test_batched(self) -> None:
        """
        Requests answered within a tenth of a second are logged as one
        event, a line each, in the order answered.
        """
        log = AccessLog(self.clock)
        for n in range(3):
            self.note(log, n)
        self.assertEqual(self.events, [])
        self.clock.advance(0.1)
        [event] = self.events
        self.assertEqual(
            event["requests"].splitlines(),
            [f'192.0.2.1 "GET /v1/posts/{n}" 200 12 r{n}' for n in range(3)],
        )
        self.assertEqual(event["count"], 3)
        self.clock.advance(1)
        self.assertEqual(len(self.events), 1)

    def test_full(self) -> None:
        """
        A full batch goes at once; flush sends what is left (at stop).
        """
        log = AccessLog(self.clock, maxLines=2)
        for n in range(3):
            self.note(log, n)
        self.assertEqual([e["count"] for e in self.events], [2])
        log.flush()
        self.assertEqual([e["count"] for e in self.events], [2, 1])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_events(self) -> None:
        """
        Asked for events, each request is one, its fields kept.
        """
        log = AccessLog(self.clock, mode="events")
        self.note(log, 7)
        [event] = self.events
        self.assertEqual(
            {k: event[k] for k in ("client", "method", "uri", "status", "length", "requestId")},
            {
                "client": "192.0.2.1",
                "method": "GET",
                "uri": "/v1/posts/7",
                "status": 200,
                "length": 12,
                "requestId": "r7",
            },
        )

    def test_off(self) -> None:
        log = AccessLog(self.clock, mode="off")
        self.note(log, 1)
        log.flush()
        self.assertEqual(self.events, [])
        self.assertRaises(ValueError, AccessLog, self.clock, mode="loud")
