"""
The AMQP bus when the broker drops every connection mid-traffic.

The test runs in a vhost of its own, so that closing every connection in it
(C{rabbitmqctl close_all_connections --vhost}) touches nothing else.
"""

from __future__ import annotations

import shutil
import subprocess
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from twisted.internet import reactor, threads
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

from txplatform.errors import Unavailable

from ..support import BROKER_URL, eventually, missing
from .harness import BrokerTestCase

VHOST = "txplatform-faults"


def rabbitmqctl(*arguments: str) -> Deferred[subprocess.CompletedProcess]:
    return threads.deferToThreadPool(
        reactor,
        reactor.getThreadPool(),
        subprocess.run,
        ["rabbitmqctl", *arguments],
        capture_output=True,
        text=True,
        timeout=60,
    )


def sleep(seconds: float) -> Deferred[None]:
    return deferLater(reactor, seconds, lambda: None)


class ConnectionLossTests(BrokerTestCase):
    timeout = 120
    brokerURL = urlunsplit(urlsplit(BROKER_URL)._replace(path="/" + VHOST))

    @inlineCallbacks
    def setUp(self) -> Any:
        super().setUp()
        if shutil.which("rabbitmqctl") is None:
            missing("rabbitmqctl is not on the PATH: cannot make the broker drop connections")
        yield rabbitmqctl("add_vhost", VHOST)
        result = yield rabbitmqctl("set_permissions", "-p", VHOST, "guest", ".*", ".*", ".*")
        self.assertEqual(result.returncode, 0, result.stderr)

    @inlineCallbacks
    def test_reconnectAndCarryOn(self) -> Any:
        """
        When the broker closes every connection mid-traffic, both sides
        reconnect and carry on: every event published with retries (as the
        outbox does) arrives, calls in flight are sent again (the
        non-idempotent ones marked as such) and answered, and later calls
        succeed.
        """
        service = self.newServiceId()
        event = self.newEvent()
        group = self.newGroup(event)
        server = yield self.makeBus()
        client = yield self.makeBus()
        received: set[int] = set()
        yield server.serve(service, {"echo": lambda p, c: p}, prefetch=16)
        yield server.subscribe(event, lambda p, c: received.add(p["n"]), group)

        total = 300
        published: set[int] = set()
        outcomes: dict[str, int] = {"ok": 0, "unavailable": 0, "resent ok": 0}
        unexpected: list[Any] = []
        stop = [False]

        @inlineCallbacks
        def publisher() -> Any:
            for n in range(total):
                while True:
                    try:
                        yield client.publish(event, {"n": n}, messageId=f"event-{n}")
                        published.add(n)
                        break
                    except Exception:
                        # The outbox keeps the event and tries again later.
                        yield sleep(0.05)
                yield sleep(0.002)

        @inlineCallbacks
        def caller(idempotent: bool) -> Any:
            while not stop[0]:
                try:
                    result = yield client.call(
                        service, "echo", {"x": 1}, timeout=5, idempotent=idempotent
                    )
                    self.assertEqual(result, {"x": 1})
                    outcomes["resent ok" if idempotent else "ok"] += 1
                except Unavailable:
                    # A call in flight on the lost connection is sent again,
                    # idempotent or not: none should fail.
                    outcomes["unavailable"] += 1
                except Exception as e:  # noqa: BLE001 (collected and asserted on)
                    unexpected.append(e)
                    yield sleep(0.05)

        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        running = [publisher(), caller(False), caller(True), caller(True)]
        yield eventually(lambda: len(published) > total // 3, timeout=20)
        result = yield rabbitmqctl("close_all_connections", "--vhost", VHOST, "fault test")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("Closed", result.stdout)
        yield running[0]
        yield eventually(lambda: received == set(range(total)), timeout=30)
        before = dict(outcomes)
        yield sleep(0.5)
        stop[0] = True
        yield running[1]
        yield running[2]
        yield running[3]
        self.assertEqual(unexpected, [])
        self.assertEqual(outcomes["unavailable"], 0, outcomes)
        self.assertGreater(outcomes["ok"], before["ok"], "calls succeed after reconnecting")
        self.assertGreater(outcomes["resent ok"], 0)
        self.assertTrue(server.connected and client.connected)
        self.assertGreaterEqual(next(client._connections), 3, "the client reconnected")
        # Each bus said why, once: the broker's reason, not only the loss.
        lines = [
            formatEvent(e)
            for e in events
            if e["log_level"] >= LogLevel.warn and "Lost the connection" in formatEvent(e)
        ]
        self.assertEqual(len(lines), 2, lines)
        for line in lines:
            self.assertIn("(320 CONNECTION_FORCED - fault test); retrying in ", line)
