"""
The platform as deployed (two gateways, two replicas of each service, every
one its own twistd process) on a three-node RabbitMQ cluster of the test's
own, under load, while nodes fail: the one most processes are on killed
(SIGKILL) and later started again, then the busiest of the others stopped
gracefully.  The figures go to the test log (docs/deployment.md has some).

Slow (about three minutes: the cluster alone takes some 45 s to start); CI
runs it.
"""

from __future__ import annotations

import os
import re
import signal
import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.logger import Logger

from ..support import POSTGRES_URL, eventually, keyFiles, newPostgresSchema, requirePostgres, sleep
from .rabbitcluster import RabbitCluster, requireCluster
from .test_cluster import PASSWORD, TwoGatewaysTestCase

log = Logger()


class NodeFaultsUnderLoadTests(TwoGatewaysTestCase):
    timeout = 420

    @inlineCallbacks
    def setUp(self) -> Any:
        # Not ClusterTestCase.setUp: no vhost on the machine's broker.
        requireCluster()
        requirePostgres()
        self.schema = newPostgresSchema(self)
        self.databaseURL = f"{POSTGRES_URL}?schema={self.schema}"
        self.keys = keyFiles(os.path.abspath(self.mktemp()))
        self.cluster = RabbitCluster()
        started = time.monotonic()
        # Cleanups run last first: the processes go before the cluster.
        self.addCleanup(self.cluster.stop)
        yield self.cluster.start()
        self.startSeconds = time.monotonic() - started
        self.busURL = self.cluster.busURL("queue_type=quorum")
        replicas = [self.service(name) for name in ["account", "post", "notify"] for _ in range(2)]
        yield self.startPlatform(replicas)

    @inlineCallbacks
    def test_nodesFailUnderLoad(self) -> Any:
        """
        Posts mentioning a user are sent through both gateways without a
        pause while one node is killed, started again, and then another is
        stopped: every request is answered, 201 or a clear 503 or 504; every
        accepted post is readable, and its mention is notified exactly once.
        """
        cluster = self.cluster
        self.assertEqual(len((yield cluster.runningNodes(cluster.nodes[0]))), 3)
        for name in ("alice", "carol"):
            status, body = yield self.request(
                0,
                "POST",
                "/v1/accounts",
                {"username": name, "email": f"{name}@example.com", "password": PASSWORD},
            )
            self.assertEqual(status, 201, body)
        tokens = {}
        for name in ("alice", "carol"):
            status, session = yield self.request(
                1, "POST", "/v1/sessions", {"username": name, "password": PASSWORD}
            )
            self.assertEqual(status, 201, session)
            tokens[name] = session["token"]

        accepted: list[str] = []
        statuses: dict[int, int] = {}
        unexpected: list[Any] = []
        answered: list[tuple[float, int]] = []
        # Why each refused request was refused (its problem's detail), for
        # the reader of the figures.
        refusals: dict[str, int] = {}
        stop = [False]
        sent = [0]

        @inlineCallbacks
        def poster(worker: int) -> Any:
            n = 0
            while not stop[0]:
                n += 1
                sent[0] += 1
                try:
                    d = self.request(
                        (worker + n) % 2,
                        "POST",
                        "/v1/posts",
                        {"body": f"post {worker}-{n} for @carol"},
                        token=tokens["alice"],
                    )
                    # Every request is answered: none hangs past this.
                    d.addTimeout(30, reactor)
                    status, body = yield d
                except Exception as e:  # noqa: BLE001 (collected and asserted on)
                    unexpected.append(repr(e))
                    yield sleep(0.1)
                    continue
                statuses[status] = statuses.get(status, 0) + 1
                answered.append((time.monotonic(), status))
                if status == 201:
                    accepted.append(body["id"])
                elif status not in (503, 504):
                    unexpected.append((status, body))
                else:
                    detail = (
                        f"{status} {body.get('detail', '?') if isinstance(body, dict) else body}"
                    )
                    refusals[detail] = refusals.get(detail, 0) + 1
                    yield sleep(0.05)

        def recovered(since: float) -> Any:
            # Three posts accepted after the fault: the time of the first.
            after = [t for t, status in answered if t > since and status == 201]
            return after[0] - since if len(after) >= 3 else None

        def longestGap(since: float, until: float) -> float:
            # The longest time without an accepted post around a fault.
            times = [since] + [t for t, status in answered if since < t < until and status == 201]
            return round(max(b - a for a, b in zip(times, times[1:] + [until], strict=True)), 2)

        def failedOver(port: int) -> int:
            # The processes that lost a connection to that node (a ready
            # one, or one refused while declaring its queues).
            lost = f"Lost the connection to AMQP broker 127.0.0.1:{port} ".encode()
            return sum(lost in process.output for process in self.processes)

        def busiest(among: list[int]) -> int:
            # The node (its index) most processes are connected to now.
            counts = dict.fromkeys(among, 0)
            for process in self.processes:
                ports = re.findall(rb"Connected to amqp://[^ ]*:(\d+)", process.output)
                if ports and int(ports[-1]) in cluster.ports:
                    index = cluster.ports.index(int(ports[-1]))
                    if index in counts:
                        counts[index] += 1
            return max(among, key=lambda index: counts[index])

        workers = [poster(worker) for worker in range(4)]
        figures: dict[str, Any] = {"cluster start (s)": round(self.startSeconds, 1)}
        loadStarted = time.monotonic()
        try:
            yield sleep(5)
            before = len(accepted)
            self.assertGreater(before, 0, (statuses, unexpected))

            # The node most processes are on, then the busiest of the others.
            first = busiest([0, 1, 2])
            killed = time.monotonic()
            cluster.kill(cluster.nodes[first], signal.SIGKILL)
            log.info("killed {node}", node=cluster.nodes[first])
            figures["recovery after SIGKILL (s)"] = round(
                (yield eventually(lambda: recovered(killed), timeout=60, interval=0.1)), 2
            )
            yield sleep(3)
            figures["longest without a 201 after SIGKILL (s)"] = longestGap(
                killed, time.monotonic()
            )
            figures["processes that lost a connection to the killed node"] = failedOver(
                cluster.ports[first]
            )

            restarting = time.monotonic()
            yield cluster.restart(cluster.nodes[first])
            figures["node restart (s)"] = round(time.monotonic() - restarting, 1)
            log.info("restarted {node}", node=cluster.nodes[first])
            second = busiest([index for index in (0, 1, 2) if index != first])
            running = yield cluster.runningNodes(cluster.nodes[second])
            self.assertEqual(len(running), 3, running)
            yield sleep(3)

            stopping = time.monotonic()
            pid = cluster.kill(cluster.nodes[second], signal.SIGTERM)
            log.info("stopping {node}", node=cluster.nodes[second])
            figures["recovery after graceful stop (s)"] = round(
                (yield eventually(lambda: recovered(stopping), timeout=60, interval=0.1)), 2
            )
            yield eventually(lambda: not _alive(pid), timeout=60, interval=0.2)
            yield sleep(3)
            figures["longest without a 201 after the stop (s)"] = longestGap(
                stopping, time.monotonic()
            )
            figures["processes that lost a connection to the stopped node"] = failedOver(
                cluster.ports[second]
            )
            figures["load (s)"] = round(time.monotonic() - loadStarted, 1)
            figures["refused, and why"] = refusals
        finally:
            stop[0] = True
            for worker in workers:
                yield worker

        # Each fault hit processes (the busiest node each time).
        self.assertGreater(figures["processes that lost a connection to the killed node"], 0)
        self.assertGreater(figures["processes that lost a connection to the stopped node"], 0)
        figures["requests"] = sent[0]
        figures["answers"] = dict(sorted(statuses.items()))
        self.assertEqual(unexpected, [])
        self.assertEqual(sum(statuses.values()), sent[0])

        # Every accepted post is readable, and notified once.
        for index, post in enumerate(accepted):
            status, body = yield self.request(index % 2, "GET", f"/v1/posts/{post}")
            self.assertEqual(status, 200, body)

        @inlineCallbacks
        def mentions() -> Any:
            found: list[str] = []
            cursor = ""
            while True:
                status, page = yield self.request(
                    0, "GET", f"/v1/notifications?limit=100{cursor}", token=tokens["carol"]
                )
                self.assertEqual(status, 200, page)
                found.extend(item["post_id"] for item in page["items"])
                if not page.get("next"):
                    return found
                cursor = f"&cursor={page['next']}"

        started = time.monotonic()
        notified = yield eventually(
            lambda: mentions().addCallback(
                lambda found: found if set(accepted) <= set(found) else None
            ),
            timeout=60,
            interval=0.5,
        )
        figures["notifications complete after the load (s)"] = round(time.monotonic() - started, 1)
        self.assertEqual(len(notified), len(set(notified)), "a post notified twice")
        figures["accepted posts"] = len(accepted)
        # Posts answered 503 may have been made all the same (the answer
        # was lost, not the post): notified too, once.
        figures["notified posts"] = len(notified)
        # What each process said about its broker connection, for a reader
        # of the test log.
        for process in self.processes:
            for line in process.output.decode(errors="replace").splitlines():
                if any(word in line for word in ("AMQP broker", "Connected to", "cancelled")):
                    log.info("{pid}: {line}", pid=process.pid, line=line)
        log.info("figures: {figures}", figures=figures)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
