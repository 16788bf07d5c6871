"""
Tests for L{txplatform.eventbatch}.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from txplatform.eventbatch import EventBatcher


class EventBatcherTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.batches: list[list[str]] = []
        self.answers: list[Deferred[None]] = []

    def handle(self, items: list[str]) -> Deferred[None]:
        self.batches.append(items)
        d: Deferred[None] = Deferred()
        self.answers.append(d)
        return d

    def batcher(self, size: int = 10, concurrency: int = 1) -> EventBatcher[str]:
        return EventBatcher(self.clock, self.handle, size, concurrency, "test.handler")

    def test_oneTurn(self) -> None:
        """
        What arrives within one turn of the reactor, while no batch is
        under way, is one batch, run in the next turn; each item's Deferred
        fires once the batch is handled.
        """
        batcher = self.batcher()
        done = [batcher.add(item) for item in "abc"]
        self.assertEqual(self.batches, [])
        self.clock.advance(0)
        self.assertEqual(self.batches, [["a", "b", "c"]])
        self.assertNoResult(done[0])
        self.answers[0].callback(None)
        for d in done:
            self.assertIsNone(self.successResultOf(d))
        batcher.add("d")
        self.clock.advance(0)
        self.assertEqual(self.batches[1:], [["d"]])

    def test_gatherWhileBusy(self) -> None:
        """
        Items that arrive while a batch is under way wait for it, however
        many turns go by, and go together in the next as soon as it ends;
        with more than C{size} of them, in batches of C{size} one after
        the other.
        """
        batcher = self.batcher(size=3)
        first = batcher.add("a")
        self.clock.advance(0)
        later = []
        for item in "bcdef":
            later.append(batcher.add(item))
            self.clock.advance(1)
        self.assertEqual(self.batches, [["a"]])
        self.answers[0].callback(None)
        self.assertIsNone(self.successResultOf(first))
        self.assertEqual(self.batches, [["a"], ["b", "c", "d"]])
        self.answers[1].callback(None)
        self.assertEqual(self.batches[2:], [["e", "f"]])
        self.answers[2].callback(None)
        for d in later:
            self.assertIsNone(self.successResultOf(d))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_concurrency(self) -> None:
        """
        With C{concurrency}, that many batches may be under way at once.
        """
        batcher = self.batcher(size=2, concurrency=2)
        for item in "abcde":
            batcher.add(item)
        self.assertEqual(self.batches, [["a", "b"], ["c", "d"]])
        self.clock.advance(0)
        self.assertEqual(len(self.batches), 2)
        self.answers[1].callback(None)
        self.assertEqual(self.batches[2:], [["e"]])

    def test_full(self) -> None:
        """
        A batch that reaches its size runs at once.
        """
        batcher = self.batcher(size=2)
        for item in "ab":
            batcher.add(item)
        self.assertEqual(self.batches, [["a", "b"]])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_failedAlone(self) -> None:
        """
        An item handled alone that fails fails its own Deferred.
        """
        batcher = self.batcher()
        d = batcher.add("a")
        self.clock.advance(0)
        self.answers[0].errback(ValueError("bad a"))
        self.assertEqual(str(self.failureResultOf(d, ValueError).value), "bad a")

    def test_failedBatchSplit(self) -> None:
        """
        A batch of several that fails is handled again one item at a time:
        the item that fails by itself fails alone, the others succeed, and
        the split is logged.
        """
        logged: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        batcher = self.batcher()
        done = [batcher.add(item) for item in "abc"]
        self.clock.advance(0)
        self.answers[0].errback(ValueError("one of them is bad"))
        self.assertEqual(self.batches[1:], [["a"], ["b"], ["c"]])
        self.answers[1].callback(None)
        self.answers[2].errback(ValueError("bad b"))
        self.answers[3].callback(None)
        self.assertIsNone(self.successResultOf(done[0]))
        self.failureResultOf(done[1], ValueError)
        self.assertIsNone(self.successResultOf(done[2]))
        [line] = [e for e in logged if "test.handler" in str(e.get("handler"))]
        self.assertEqual(line["count"], 3)
        self.assertEqual(line["error"], "one of them is bad")

    def test_raises(self) -> None:
        """
        A handler that raises rather than returning a failed Deferred is
        treated the same.
        """

        def run(items: list[str]) -> None:
            raise RuntimeError(f"cannot take {items}")

        batcher = EventBatcher(self.clock, run, 10)
        d = batcher.add("a")
        self.clock.advance(0)
        self.failureResultOf(d, RuntimeError)

    def test_invalid(self) -> None:
        """
        A batch holds at least one item, and at least one batch runs.
        """
        self.assertRaises(ValueError, EventBatcher, self.clock, self.handle, 0)
        self.assertRaises(ValueError, EventBatcher, self.clock, self.handle, 1, 0)
