"""
Tests for L{txplatform.amqp.deadletters}: the dead-letter command.
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
import uuid
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import SynchronousTestCase, TestCase

from txplatform.amqp.deadletters import _run

from ..support import BROKER_URL, eventually, requireBroker
from .harness import BrokerTestCase


class DeadLetterCommandTests(BrokerTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.stderr = io.StringIO()
        self.patch(sys, "stderr", self.stderr)

    @inlineCallbacks
    def command(self, *argv: str) -> Any:
        out = io.StringIO()
        code = yield _run(reactor, ["--bus", self.brokerURL, *argv], out)
        return code, out.getvalue()

    @inlineCallbacks
    def deadLetter(self, codec: Any = None) -> Any:
        """
        A group whose handler fails until fixed, and one event that it
        dead-lettered (through a bus with C{codec}, if given): C{(group,
        handled, fix)}.
        """
        event = self.newEvent()
        group = self.newGroup(event)
        handled: list[Any] = []
        broken = [True]

        def handler(payload: Any, context: Any) -> None:
            if broken[0]:
                raise RuntimeError("the disk is full")
            handled.append(payload)

        bus = yield self.makeBus(codec=codec)
        yield bus.subscribe(event, handler, group)
        yield bus.publish(event, {"n": 1}, messageId="letter-1")
        yield eventually(
            lambda: self.command("--group", group, "list").addCallback(lambda r: "letter-1" in r[1])
        )
        self.flushLoggedErrors(RuntimeError)
        return group, handled, lambda: broken.__setitem__(0, False)

    @inlineCallbacks
    def test_listAndShow(self) -> Any:
        """
        list names each dead letter with its error and attempts; show adds
        headers and payload; neither consumes it.
        """
        group, _, _ = yield self.deadLetter()
        code, listing = yield self.command("--group", group, "list")
        self.assertEqual(code, 0)
        self.assertIn("letter-1", listing)
        self.assertIn("the disk is full", listing)
        self.assertIn("attempts=3", listing)
        self.assertIn("1 dead letter(s)", listing)
        code, shown = yield self.command("--group", group, "show", "letter-1")
        self.assertEqual(code, 0)
        self.assertIn('"n": 1', shown)
        self.assertIn("x-original-queue", shown)
        code, listing = yield self.command("--group", group, "list")
        self.assertIn("1 dead letter(s)", listing)

    @inlineCallbacks
    def test_replay(self) -> Any:
        """
        replay sends a dead letter back to its group, which handles it once
        fixed; it leaves the dead letters.
        """
        group, handled, fix = yield self.deadLetter()
        fix()
        code, output = yield self.command("--group", group, "replay", "letter-1")
        self.assertEqual((code, output.strip()), (0, "replayed 1 dead letter(s)"))
        yield eventually(lambda: handled == [{"n": 1}])
        code, listing = yield self.command("--group", group, "list")
        self.assertIn("0 dead letter(s)", listing)

    @inlineCallbacks
    def test_dropAndMissing(self) -> Any:
        """
        drop deletes a dead letter; naming one that is not there says so,
        with exit status 1.
        """
        group, handled, _ = yield self.deadLetter()
        code, output = yield self.command("--group", group, "drop", "letter-1")
        self.assertEqual((code, output.strip()), (0, "dropped 1 dead letter(s)"))
        code, output = yield self.command("--group", group, "show", "letter-1")
        self.assertEqual((code, output), (1, ""))
        self.assertEqual(
            self.stderr.getvalue(), "txplatform-deadletters: no dead letter letter-1\n"
        )
        self.assertEqual(handled, [])

    @inlineCallbacks
    def test_unknownGroup(self) -> Any:
        """
        A --group with no dead-letter queue on the broker (a typo) is
        refused in one line, exit status 1, and no queue is made for it: a
        second try is refused the same way.  Real groups named with it are
        not the matter.
        """
        group, _, _ = yield self.deadLetter()
        typo = self.newGroup("no.such.event")
        for _ in range(2):
            self.stderr.truncate(0)
            self.stderr.seek(0)
            code, output = yield self.command("--group", group, "--group", typo, "list")
            self.assertEqual((code, output), (1, ""))
            self.assertEqual(
                self.stderr.getvalue(),
                f"txplatform-deadletters: --group {typo}: no such consumer group on this broker"
                " (none of its consumers ever ran here)\n",
            )
        code, listing = yield self.command("--group", group, "list")
        self.assertEqual(code, 0)
        self.assertIn("1 dead letter(s)", listing)

    @inlineCallbacks
    def test_showSealed(self) -> Any:
        """
        A payload sealed under the bus keys shows only given them
        (--bus-keys); other keys do not open it; a bad key file is refused.
        """
        from txplatform.crypto.keys import loadKeys

        from ..support import keyFiles

        keys = keyFiles(self.mktemp())
        others = keyFiles(self.mktemp())
        codec = loadKeys(keys["bus"], reactor, "bus").payloadCodec()
        group, _, _ = yield self.deadLetter(codec)
        code, shown = yield self.command("--group", group, "show", "letter-1")
        self.assertEqual(code, 0)
        self.assertIn("not JSON; give --bus-keys", shown)
        self.assertNotIn('"n": 1', shown)
        code, shown = yield self.command(
            "--bus-keys", keys["bus"], "--group", group, "show", "letter-1"
        )
        self.assertEqual(code, 0)
        self.assertIn('"n": 1', shown)
        code, shown = yield self.command(
            "--bus-keys", others["bus"], "--group", group, "show", "letter-1"
        )
        self.assertIn("the bus keys do not open it", shown)
        code, shown = yield self.command(
            "--bus-keys", self.mktemp(), "--group", group, "show", "letter-1"
        )
        self.assertEqual((code, shown), (2, ""))
        [error] = self.stderr.getvalue().splitlines()
        self.assertIn("txplatform-deadletters: --bus-keys: cannot read the key file", error)


def closedPort() -> int:
    """
    A port on loopback where nothing listens: bound, then closed.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class UnusableBrokerTests(TestCase):
    """
    A broker that cannot be reached or refuses us: one line on stderr
    saying why, exit status 1, well within --timeout; nothing is created
    on the broker.
    """

    timeout = 30

    def setUp(self) -> None:
        self.stderr = io.StringIO()
        self.patch(sys, "stderr", self.stderr)

    @inlineCallbacks
    def refused(self, url: str, timeout: float = 10.0) -> Any:
        """
        Run list against C{url}: its one line on stderr, checked to come
        with exit status 1, no output and within C{timeout}.
        """
        out = io.StringIO()
        started = time.monotonic()
        argv = ["--bus", url, "--timeout", str(timeout), "--group", "test-unused", "list"]
        code = yield _run(reactor, argv, out)
        self.assertLess(time.monotonic() - started, timeout + 2)
        self.assertEqual((code, out.getvalue()), (1, ""))
        [line] = self.stderr.getvalue().splitlines()
        return line

    def brokerWith(self, **changes: str) -> str:
        requireBroker()
        parts = urlsplit(BROKER_URL)
        user = changes.get("user", parts.username or "guest")
        password = changes.get("password", parts.password or "guest")
        netloc = f"{user}:{password}@{parts.hostname}:{parts.port or 5672}"
        return urlunsplit(parts._replace(netloc=netloc, path=changes.get("path", parts.path)))

    @inlineCallbacks
    def test_closedPort(self) -> Any:
        """
        Nothing listens on the port: connection refused.
        """
        port = closedPort()
        line = yield self.refused(f"amqp://guest:guest@127.0.0.1:{port}/")
        self.assertEqual(
            line,
            f"txplatform-deadletters: cannot use the broker at amqp://guest@127.0.0.1:{port}:"
            " connection refused (no broker listens there)",
        )

    @inlineCallbacks
    def test_wrongPassword(self) -> Any:
        """
        The broker refuses the password: access refused (the password unsaid).
        """
        line = yield self.refused(self.brokerWith(password=f"wrong-{uuid.uuid4().hex}"))
        self.assertIn("access refused (check the user name and password): ACCESS_REFUSED", line)
        self.assertNotIn("wrong-", line)

    @inlineCallbacks
    def test_missingVhost(self) -> Any:
        """
        The vhost does not exist on the broker: no such vhost.
        """
        vhost = f"txplatform-test-missing-{uuid.uuid4().hex[:12]}"
        line = yield self.refused(self.brokerWith(path=f"/{vhost}"))
        self.assertIn(f"/{vhost}: no such vhost {vhost!r}: NOT_ALLOWED", line)

    @inlineCallbacks
    def test_silent(self) -> Any:
        """
        Something that takes the connection but never speaks AMQP: given up
        after --timeout.
        """
        port = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        line = yield self.refused(f"amqp://guest:guest@127.0.0.1:{port.getHost().port}/", 0.5)
        self.assertIn("connected, but no AMQP answer within 0.5s", line)

    @inlineCallbacks
    def test_usage(self) -> Any:
        """
        A --bus that is not a broker URL, or a --timeout that is not
        positive: exit status 2, one line.
        """
        for argv in (["--bus", "notaurl", "list"], ["--bus", BROKER_URL, "--timeout", "0", "list"]):
            code = yield _run(reactor, argv, io.StringIO())
            self.assertEqual(code, 2)
        self.assertEqual(
            self.stderr.getvalue().splitlines(),
            [
                "txplatform-deadletters: --bus: a broker URL starts with amqp:// or amqps://,"
                " not 'notaurl'",
                "txplatform-deadletters: argument --timeout: a positive number of seconds, not '0'"
                " (see txplatform-deadletters --help)",
            ],
        )


class BusFromFileTests(BrokerTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.stderr = io.StringIO()
        self.patch(sys, "stderr", self.stderr)

    @inlineCallbacks
    def test_busFromFile(self) -> Any:
        """
        --bus @PATH takes the broker URL from the first line of that file
        (a secret, as docs/deployment.md shows); a file that cannot be read
        is a usage error in one line.
        """
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write(self.brokerURL + "\n")
        event = self.newEvent()
        group = self.newGroup(event)
        # A consumer of the group ran: its dead-letter queue is there.
        bus = yield self.makeBus()
        yield bus.subscribe(event, lambda payload, context: None, group)
        out = io.StringIO()
        code = yield _run(reactor, ["--bus", f"@{path}", "--group", group, "list"], out)
        self.assertEqual(
            (code, out.getvalue(), self.stderr.getvalue()), (0, "0 dead letter(s)\n", "")
        )
        missing = os.path.abspath(self.mktemp())
        code = yield _run(reactor, ["--bus", f"@{missing}", "list"], out)
        self.assertEqual(code, 2)
        self.assertEqual(
            self.stderr.getvalue(),
            f"txplatform-deadletters: --bus: cannot read {missing}: No such file or directory\n",
        )


class MainTests(SynchronousTestCase):
    """
    C{txplatform-deadletters} run as a process: its exit status.
    """

    def deadletters(self, *argv: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "txplatform.amqp.deadletters", *argv],
            capture_output=True,
            text=True,
            timeout=60,
        )

    def test_statuses(self) -> None:
        """
        Exit status 2 for a wrong command line, 1 for a broker that cannot be
        used, with one line on stderr.
        """
        for argv, status, expected in [
            (["--bus", "notaurl", "list"], 2, "--bus: a broker URL starts with amqp://"),
            (
                ["--bus", f"amqp://127.0.0.1:{closedPort()}/", "--timeout", "5", "list"],
                1,
                "connection refused",
            ),
        ]:
            result = self.deadletters(*argv)
            self.assertEqual((result.returncode, result.stdout), (status, ""), result.stderr)
            [line] = result.stderr.splitlines()
            self.assertIn(expected, line)
