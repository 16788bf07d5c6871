"""
A three-node RabbitMQ cluster of the test's own, beside the machine's
RabbitMQ (which it leaves alone), driven by C{deploy/rabbitmq-cluster.sh} as
docs/deployment.md shows it.

Starting one takes about 45 s on two busy cores (the nodes boot in parallel
in some 25 s; joining the second and third to the first takes some 15 s, a
rabbitmqctl run costing one to three seconds), stopping it about 3 s: tests
start one each and are few.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import uuid
from typing import Any

from twisted.internet import reactor, threads
from twisted.internet.defer import Deferred

from ..processes import CHECKOUT
from ..support import missing

SCRIPT = os.path.join(CHECKOUT, "deploy", "rabbitmq-cluster.sh")


def clusterProblem() -> str | None:
    """
    Why no cluster can be started here, if it cannot.
    """
    for tool in ("rabbitmq-server", "rabbitmqctl"):
        if shutil.which(tool) is None:
            return f"{tool} is not on the PATH: cannot start a RabbitMQ cluster"
    if os.geteuid() != 0:
        return "not root: the cluster's nodes run as the rabbitmq user, started by root"
    return None


def requireCluster() -> None:
    """
    Skip the test when no cluster can be started, except in CI, where it
    must run.
    """
    problem = clusterProblem()
    if problem is None:
        return
    missing(problem, "; CI must run the cluster tests")


def _portsFree(ports: list[int]) -> bool:
    for port in ports:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def _freePortBase() -> int:
    """
    A base such that base+1..3 (AMQP) and 20000 more (distribution) are
    free, away from the usual ports.
    """
    import random

    for _ in range(100):
        base = random.randrange(5700, 9900, 10)
        ports = [base + i for i in (1, 2, 3)]
        if _portsFree(ports + [p + 20000 for p in ports]):
            return base
    raise AssertionError("found no free ports for a RabbitMQ cluster")


def _run(argv: list[str], env: dict[str, str], timeout: float) -> Deferred[Any]:
    return threads.deferToThreadPool(
        reactor,
        reactor.getThreadPool(),
        subprocess.run,
        argv,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


class RabbitCluster:
    """
    Three nodes, C{<prefix>-a@localhost} to C{-c}, with their data under
    C{directory}.

    @ivar urls: The nodes' broker URLs, in the nodes' order.
    """

    def __init__(self, directory: str | None = None) -> None:
        if directory is None:
            # Not under the test's own temporary directory: trial makes it
            # 0700, closed to the rabbitmq user the nodes run as.
            import tempfile

            directory = tempfile.mkdtemp(prefix="txp-cluster-")
        self.directory = os.path.abspath(directory)
        self.prefix = f"txp{uuid.uuid4().hex[:6]}"
        self.portBase = _freePortBase()
        self.nodes = [f"{self.prefix}-{letter}" for letter in "abc"]
        self.ports = [self.portBase + i for i in (1, 2, 3)]
        self.urls = [f"amqp://guest:guest@127.0.0.1:{port}/" for port in self.ports]

    def _env(self) -> dict[str, str]:
        return dict(
            os.environ,
            TXP_CLUSTER_PREFIX=self.prefix,
            TXP_CLUSTER_PORT_BASE=str(self.portBase),
        )

    def _script(self, *arguments: str, timeout: float = 240) -> Deferred[None]:
        d = _run([SCRIPT, *arguments], self._env(), timeout)

        def check(result: subprocess.CompletedProcess) -> None:
            if result.returncode != 0:
                raise AssertionError(
                    f"{SCRIPT} {' '.join(arguments)} failed ({result.returncode}):\n"
                    f"{result.stdout}{result.stderr}"
                )

        return d.addCallback(check)

    def busURL(self, query: str = "") -> str:
        """
        The C{--bus} value naming every node (comma-separated URLs, each
        with C{query}).
        """
        suffix = f"?{query}" if query else ""
        return ",".join(url + suffix for url in self.urls)

    def start(self) -> Deferred[None]:
        """
        Start the three nodes and join them into a cluster.
        """
        return self._script("start", self.directory)

    def stop(self) -> Deferred[None]:
        """
        Stop every node still running, by the pid it wrote, and remove
        their data.
        """
        d = self._script("stop", self.directory, timeout=60)
        d.addCallback(lambda _: shutil.rmtree(self.directory, ignore_errors=True))
        return d

    def restart(self, node: str) -> Deferred[None]:
        """
        Start again a node that stopped; it rejoins the cluster.
        """
        return self._script("restart", self.directory, node)

    def pid(self, node: str) -> int:
        with open(os.path.join(self.directory, node, "pid")) as f:
            return int(f.read().strip())

    def kill(self, node: str, signum: int = signal.SIGKILL) -> int:
        """
        Send C{signum} to a node (by its pid); the pid.
        """
        pid = self.pid(node)
        os.kill(pid, signum)
        return pid

    def ctl(self, node: str, *arguments: str) -> Deferred[subprocess.CompletedProcess]:
        """
        rabbitmqctl on one of the nodes.
        """
        return _run(
            ["rabbitmqctl", "-q", "-n", f"{node}@localhost", *arguments],
            dict(os.environ),
            60,
        )

    def runningNodes(self, node: str) -> Deferred[list[str]]:
        """
        The running nodes of the cluster, as C{node} sees them.
        """
        import json

        def parse(result: subprocess.CompletedProcess) -> list[str]:
            if result.returncode != 0:
                raise AssertionError(result.stderr)
            return sorted(json.loads(result.stdout)["running_nodes"])

        return self.ctl(node, "cluster_status", "--formatter", "json").addCallback(parse)
