"""
Tests for L{txplatform.batching}.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from txplatform.batching import BatchLoader


class FakeStore:
    """
    A loader whose round trips the test ends by hand.
    """

    def __init__(self, values: dict[str, Any]) -> None:
        self.values = values
        self.trips: list[tuple[list[str], Deferred[dict[str, Any]]]] = []

    def load(self, keys: list[str]) -> Deferred[dict[str, Any]]:
        d: Deferred[dict[str, Any]] = Deferred()
        self.trips.append((keys, d))
        return d

    def answer(self, n: int = 0) -> None:
        keys, d = self.trips[n]
        d.callback({k: self.values[k] for k in keys if k in self.values})


class BatchLoaderTests(SynchronousTestCase):
    def test_aloneGoesAtOnce(self) -> None:
        """
        With no round trip under way, a lookup goes at once, alone; a key
        with no value gives C{None}.
        """
        store = FakeStore({"a": 1})
        loader = BatchLoader(store.load)
        a, missing = loader.get("a"), None
        self.assertEqual([keys for keys, _ in store.trips], [["a"]])
        store.answer()
        self.assertEqual(self.successResultOf(a), 1)
        missing = loader.get("b")
        store.answer(1)
        self.assertIsNone(self.successResultOf(missing))

    def test_waitersGoTogether(self) -> None:
        """
        Lookups made while a round trip is under way wait for it, then go
        together in one (each key once, however many ask for it), never in
        the one already under way.
        """
        store = FakeStore({"a": 1, "b": 2, "c": 3})
        loader = BatchLoader(store.load)
        first = loader.get("a")
        later = [loader.get("b"), loader.get("c"), loader.get("b")]
        self.assertEqual(len(store.trips), 1)
        store.answer(0)
        self.assertEqual(self.successResultOf(first), 1)
        self.assertEqual([keys for keys, _ in store.trips], [["a"], ["b", "c"]])
        store.answer(1)
        self.assertEqual([self.successResultOf(d) for d in later], [2, 3, 2])

    def test_maxBatch(self) -> None:
        """
        A round trip asks for at most C{maxBatch} keys; the rest go next.
        """
        store = FakeStore({k: k for k in "abcde"})
        loader = BatchLoader(store.load, maxBatch=2)
        waiting = [loader.get(k) for k in "abcde"]
        for n in range(3):
            store.answer(n)
        self.assertEqual([keys for keys, _ in store.trips], [["a"], ["b", "c"], ["d", "e"]])
        self.assertEqual([self.successResultOf(d) for d in waiting], list("abcde"))

    def test_failures(self) -> None:
        """
        A round trip that fails fails its callers only; an exception given
        for one key fails that key's callers only.
        """
        store = FakeStore({"b": ValueError("unreadable row"), "c": 3})
        loader = BatchLoader(store.load)
        a = loader.get("a")
        b, c = loader.get("b"), loader.get("c")
        store.trips[0][1].errback(RuntimeError("connection lost"))
        self.failureResultOf(a, RuntimeError)
        store.answer(1)
        self.failureResultOf(b, ValueError)
        self.assertEqual(self.successResultOf(c), 3)

    def test_loaderRaises(self) -> None:
        """
        A loader that raises instead of returning a Deferred fails the
        lookups it was given, and the next ones still go.
        """

        def broken(keys: list[str]) -> Deferred[dict[str, Any]]:
            raise RuntimeError("no connection")

        loader = BatchLoader(broken)
        self.failureResultOf(loader.get("a"), RuntimeError)
        self.failureResultOf(loader.get("b"), RuntimeError)
