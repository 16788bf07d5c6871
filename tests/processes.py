"""
Running C{twistd} processes from this checkout, as users and operators do.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from typing import Any, Sequence

from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool

CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: A gateway is ready once it listens: the port it bound.
LISTENING = re.compile(rb"Gateway listening on .*port=(\d+)")
#: A service is ready once it serves.
SERVING = re.compile(rb"\(([0-9a-f]{6})\) serving \d+ method")


class Twistd(ProcessProtocol):
    """
    A twistd process: its output, when it is ready, how it ended.

    @ivar ready: Fires with the first group of C{readyPattern} (the port of
        a gateway) once it appears in the output; fails if the process ends
        first.
    """

    def __init__(self, readyPattern: re.Pattern[bytes] = LISTENING) -> None:
        self.output = b""
        self._readyPattern = readyPattern
        self.ready: Deferred[Any] = Deferred()
        self.ended: Deferred[int | None] = Deferred()
        self.signal: int | None = None

    def outReceived(self, data: bytes) -> None:
        self.output += data
        if not self.ready.called:
            match = self._readyPattern.search(self.output)
            if match:
                group = match.group(1)
                self.ready.callback(int(group) if group.isdigit() else group.decode())

    errReceived = outReceived

    def processEnded(self, reason: Any) -> None:
        code = reason.value.exitCode
        self.signal = reason.value.signal
        if not self.ready.called:
            self.ready.errback(
                AssertionError(
                    f"twistd exited ({code}) before it was ready:\n{self.output.decode()}"
                )
            )
        self.ended.callback(code)

    @property
    def pid(self) -> int:
        return self.transport.pid


def callJSON(
    http: HTTPClient, port: int, method: str, path: str, body: Any = None, token: str = ""
) -> Deferred[tuple[int, Any]]:
    """
    An HTTP request to a local port, as a client of the API sends it: its
    status and its JSON body (C{None} if empty).
    """
    import json

    headers = {"Authorization": [f"Bearer {token}"]} if token else {}
    d = http.request(method, f"http://127.0.0.1:{port}{path}", json=body, headers=headers)

    def read(response: Any) -> Any:
        return response.content().addCallback(
            lambda content: (response.code, json.loads(content) if content else None)
        )

    return d.addCallback(read)


def runShell(script: str, timeout: float = 60, cwd: str | None = None) -> Deferred[Any]:
    """
    Run a documented shell block with bash (stopping at the first error),
    in a thread (in directory C{cwd}): its C{subprocess.CompletedProcess}.
    """
    import subprocess

    from twisted.internet import threads

    return threads.deferToThreadPool(
        reactor,
        reactor.getThreadPool(),
        subprocess.run,
        ["bash", "-euo", "pipefail", "-c", script],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
    )


class TwistdTestCase(TestCase):
    timeout = 120

    def spawn(
        self,
        *arguments: str,
        cwd: str | None = None,
        ready: re.Pattern[bytes] = LISTENING,
        within: Sequence[str] = (),
        program: Sequence[str] | None = None,
    ) -> Twistd:
        """
        Start C{twistd -n ARGUMENTS} from this checkout; it is killed (by its
        pid) at the end of the test if it is still running.

        @param within: A command that runs its arguments in another setting
            and becomes them (C{exec}s them, so the pid is twistd's), such
            as C{["ip", "netns", "exec", NAME]}.
        @param program: Run this, with C{ARGUMENTS}, instead of twistd.
        """
        process = Twistd(ready)
        env = dict(os.environ, PYTHONPATH=CHECKOUT, PYTHONUNBUFFERED="1")
        if program is None:
            program = [
                sys.executable,
                "-c",
                "from twisted.scripts.twistd import run; run()",
                "-n",
                "--pidfile=",
            ]
        argv = [*within, *program, *arguments]
        executable = shutil.which(argv[0]) or argv[0]
        transport = reactor.spawnProcess(process, executable, argv, env=env, path=cwd)

        def kill() -> Any:
            if process.ended.called:
                return None
            transport.signalProcess("KILL")
            return process.ended

        self.addCleanup(kill)
        process.transport = transport
        return process

    def allInOne(self, *options: str) -> Twistd:
        """
        Start C{twistd -n txplatform} on an ephemeral loopback port, with
        a data directory of its own; C{ready} gives the port.
        """
        return self.spawn(
            "txplatform",
            "--listen",
            "tcp:0:interface=127.0.0.1",
            "--data-dir",
            os.path.abspath(self.mktemp()),
            *options,
        )

    def client(self) -> HTTPClient:
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        return HTTPClient(Agent(reactor, pool=pool))
