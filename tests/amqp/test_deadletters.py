"""
Tests for L{txplatform.amqp.deadletters}: the dead-letter command.
"""

from __future__ import annotations

import io
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks

from txplatform.amqp.deadletters import _run

from ..support import eventually
from .harness import BrokerTestCase


class DeadLetterCommandTests(BrokerTestCase):
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
        self.assertEqual(code, 1)
        self.assertIn("no dead letter letter-1", output)
        self.assertEqual(handled, [])

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
        self.assertEqual(code, 2)
        self.assertIn("--bus-keys", shown)
