"""
The AMQP bus on a three-node RabbitMQ cluster of the test's own
(L{tests.amqp.rabbitcluster}) when the node it is connected to is killed.

Slow: starting the cluster takes some 45 s, so there is one test; CI runs it
(it fails there rather than skip when no cluster can be started).
"""

from __future__ import annotations

import signal
import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.logger import Logger
from twisted.trial.unittest import TestCase

from txplatform.amqp import _attempts
from txplatform.amqp.bus import AMQPBus
from txplatform.amqp.url import parseBrokerURLs
from txplatform.errors import DeadlineExceeded, Unavailable
from txplatform.serviceid import ServiceId

from ..support import eventually, sleep
from .rabbitcluster import RabbitCluster, requireCluster

log = Logger()


class NodeLossTests(TestCase):
    timeout = 300

    @inlineCallbacks
    def setUp(self) -> Any:
        requireCluster()
        self.cluster = RabbitCluster()
        started = time.monotonic()
        # Stopped last: after the buses (cleanups run last first).
        self.addCleanup(self.cluster.stop)
        yield self.cluster.start()
        self.startSeconds = time.monotonic() - started
        log.info("cluster started in {seconds:.1f} s", seconds=self.startSeconds)

    @inlineCallbacks
    def makeBus(self, first: int) -> Any:
        """
        A bus given every node, connecting first to node C{first}.
        """
        self.patch(_attempts.random, "randrange", lambda n: first)
        urls = parseBrokerURLs(self.cluster.busURL("queue_type=quorum&heartbeat=5"))
        bus = AMQPBus(reactor, urls, retryDelays=(0.05, 0.1))
        bus.startService()
        self.addCleanup(bus.stopService)
        yield bus.whenConnected()
        return bus

    @inlineCallbacks
    def test_killConnectedNode(self) -> Any:
        """
        The cluster runs three nodes.  SIGKILL to the node that a server and
        a client are connected to (which holds the service's call queue and
        the group's quorum queue leader): both reconnect to another node,
        declare their queues again and resume consuming; calls work again
        within seconds (those in flight are sent again; those sent before
        the queue is back fail with a clear error, never by waiting out
        their deadline), and
        every event published before and after (with retries, as the outbox
        does) is handled, none lost (one whose acknowledgement went with
        the node comes again: handlers are idempotent).
        """
        cluster = self.cluster
        running = yield cluster.runningNodes(cluster.nodes[0])
        self.assertEqual(running, sorted(f"{node}@localhost" for node in cluster.nodes))

        service = ServiceId.fromInt(0xF00001)
        event = "test.happened"
        server = yield self.makeBus(0)
        client = yield self.makeBus(0)
        self.assertEqual((server.node.port, client.node.port), (cluster.ports[0],) * 2)
        handled: dict[int, int] = {}

        def handle(payload: Any, context: Any) -> None:
            handled[payload["n"]] = handled.get(payload["n"], 0) + 1

        yield server.serve(service, {"echo": lambda p, c: p}, prefetch=16)
        yield server.subscribe(event, handle, "failover")

        total = 400
        published: set[int] = set()
        outcomes = {"ok": 0, "unavailable": 0, "resent ok": 0}
        unexpected: list[Any] = []
        stop = [False]
        lastOK = [0.0]

        @inlineCallbacks
        def publisher() -> Any:
            for n in range(total):
                while not stop[0]:
                    try:
                        yield client.publish(event, {"n": n}, messageId=f"event-{n}")
                        published.add(n)
                        break
                    except Exception:
                        yield sleep(0.05)
                yield sleep(0.005)

        @inlineCallbacks
        def caller(idempotent: bool) -> Any:
            while not stop[0]:
                try:
                    result = yield client.call(
                        service, "echo", {"x": 1}, timeout=5, idempotent=idempotent
                    )
                    self.assertEqual(result, {"x": 1})
                    outcomes["resent ok" if idempotent else "ok"] += 1
                    lastOK[0] = time.monotonic()
                except Unavailable as e:
                    # A call sent (or, in flight on the lost connection,
                    # sent again) while the service's queue, gone with its
                    # node, was not declared again yet (returned: "no
                    # service"): a clear 503.  Never silence until the
                    # deadline.
                    outcomes["unavailable"] += 1
                    if isinstance(e, DeadlineExceeded):
                        unexpected.append(e)
                    yield sleep(0.05)
                except Exception as e:  # noqa: BLE001 (collected and asserted on)
                    unexpected.append(e)
                    yield sleep(0.05)

        tasks = [publisher(), caller(False), caller(True)]
        try:
            yield eventually(lambda: len(published) > total // 3, timeout=30)
            before = dict(outcomes)
            killed = time.monotonic()
            cluster.kill(cluster.nodes[0], signal.SIGKILL)
            yield eventually(
                lambda: (
                    lastOK[0] > killed
                    and outcomes["ok"] + outcomes["resent ok"]
                    > before["ok"] + before["resent ok"] + 5
                ),
                timeout=60,
                interval=0.05,
            )
            failover = lastOK[0] - killed
            yield tasks[0]
            yield eventually(lambda: set(handled) == set(range(total)), timeout=60)
        finally:
            stop[0] = True
            for task in tasks:
                yield task
        duplicates = sum(count - 1 for count in handled.values())
        log.info(
            "cluster started in {start:.1f} s; calls answered again {failover:.2f} s after"
            " SIGKILL; calls {outcomes}; {duplicates} event(s) handled twice",
            start=self.startSeconds,
            failover=failover,
            outcomes=outcomes,
            duplicates=duplicates,
        )
        self.assertEqual(unexpected, [])
        self.assertLess(failover, 30)
        for bus in (server, client):
            self.assertTrue(bus.connected)
            self.assertNotEqual(bus.node.port, cluster.ports[0])
