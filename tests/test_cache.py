"""
Tests for L{txplatform.cache}.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from txplatform.cache import ReadCache, SubscribedCache
from txplatform.localbus import LocalBus


class ReadCacheTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.cache: ReadCache[str, str] = ReadCache(self.clock, maxEntries=3, ttl=10)

    def test_fillAndGet(self) -> None:
        """
        A value filled by a read is served until it expires.
        """
        self.assertIsNone(self.cache.get("a"))
        self.cache.fill("a", "A", self.cache.generation)
        self.assertEqual(self.cache.get("a"), "A")
        self.clock.advance(9.9)
        self.assertEqual(self.cache.get("a"), "A")
        self.clock.advance(0.1)
        self.assertIsNone(self.cache.get("a"))
        self.assertEqual((self.cache.hits, self.cache.misses), (2, 2))

    def test_leastRecentlyUsedGoes(self) -> None:
        """
        Past its size, the cache forgets the value used longest ago.
        """
        for key in "abc":
            self.cache.fill(key, key.upper(), self.cache.generation)
        self.cache.get("a")
        self.cache.fill("d", "D", self.cache.generation)
        self.assertEqual(len(self.cache), 3)
        self.assertIsNone(self.cache.get("b"))
        self.assertEqual(self.cache.get("a"), "A")

    def test_invalidate(self) -> None:
        """
        An invalidated value is gone.
        """
        self.cache.fill("a", "A", self.cache.generation)
        self.cache.invalidate("a")
        self.assertIsNone(self.cache.get("a"))

    def test_readAcrossInvalidation(self) -> None:
        """
        A read that started before an invalidation does not fill the cache:
        it may have seen what was just deleted.
        """
        generation = self.cache.generation
        self.cache.invalidate("other")
        self.cache.fill("a", "A", generation)
        self.assertIsNone(self.cache.get("a"))
        self.cache.fill("a", "A", self.cache.generation)
        self.assertEqual(self.cache.get("a"), "A")

    def test_invalidateWhere(self) -> None:
        """
        Values can be forgotten by what they are.
        """
        for key in "abc":
            self.cache.fill(key, key.upper(), self.cache.generation)
        self.cache.invalidateWhere(lambda value: value in "AC")
        self.assertEqual([self.cache.get(k) for k in "abc"], [None, "B", None])

    def test_off(self) -> None:
        """
        A cache of size 0 keeps nothing.
        """
        cache: ReadCache[str, str] = ReadCache(self.clock, maxEntries=0)
        cache.fill("a", "A", cache.generation)
        self.assertIsNone(cache.get("a"))


DELETED = "thing.deleted"
PURGED = "thing.purged"


def _forgetOne(cache: Any, payload: dict[str, Any]) -> None:
    cache.invalidate(payload["id"])


def _forgetAll(cache: Any, payload: dict[str, Any]) -> None:
    cache.clear()


class _FlakyBus(LocalBus):
    """
    A local bus whose subscriptions to C{failing} topics fail, and which
    remembers every subscription's onGap.
    """

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock)
        self.failing: set[str] = set()
        self.subscribed: list[str] = []
        self.gaps: list[Callable[[], object]] = []
        #: When a list, subscriptions wait in it, to be failed by the test.
        self.pending: list[Deferred[Any]] | None = None

    def subscribe(self, pattern: str, handler: Any, group: Any = None, **kwargs: Any) -> Any:
        if self.pending is not None:
            waiting: Deferred[Any] = Deferred()
            self.pending.append(waiting)
            return waiting
        if pattern in self.failing:
            return fail(ConnectionLost("the broker went away"))
        self.subscribed.append(pattern)
        self.gaps.append(kwargs["onGap"])
        return super().subscribe(pattern, handler, group, **kwargs)


class SubscribedCacheTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.bus = _FlakyBus(self.clock)
        self.cache: SubscribedCache[str, dict[str, Any]] = SubscribedCache(
            self.bus, self.clock, {DELETED: _forgetOne, PURGED: _forgetAll}, ttl=1.0
        )
        self.loads: list[str] = []

    def read(self, key: str) -> Any:
        def load() -> dict[str, Any]:
            self.loads.append(key)
            return {"id": key, "read": len(self.loads)}

        return self.successResultOf(self.cache.read(key, load))

    def publish(self, topic: str, payload: dict[str, Any]) -> None:
        self.successResultOf(self.bus.publish(topic, payload))
        self.clock.advance(0)

    def test_keptOnceSubscribed(self) -> None:
        """
        The first read subscribes, and keeps nothing: it started before
        deletions could be heard.  Then a value read is kept and served.
        """
        self.assertEqual(self.read("a"), {"id": "a", "read": 1})
        self.assertEqual(sorted(self.bus.subscribed), [DELETED, PURGED])
        self.assertEqual(self.read("a"), {"id": "a", "read": 2})
        self.assertEqual(self.read("a"), {"id": "a", "read": 2})
        self.assertEqual(self.loads, ["a", "a"])
        self.assertEqual(sorted(self.bus.subscribed), [DELETED, PURGED])

    def test_forgottenOnEvent(self) -> None:
        """
        An event forgets what its handler says: one value, or all.
        """
        self.read("a")
        self.read("a")
        self.read("b")
        self.publish(DELETED, {"id": "a"})
        self.read("a")
        self.read("b")
        self.assertEqual(self.loads, ["a", "a", "b", "a"])
        self.publish(PURGED, {})
        self.read("b")
        self.assertEqual(self.loads, ["a", "a", "b", "a", "b"])

    def test_readAcrossEvent(self) -> None:
        """
        A read under way when an event arrived is not kept: it may have
        seen the value before it went.
        """
        self.read("a")
        loading: Deferred[dict[str, Any]] = Deferred()
        result = self.cache.read("a", lambda: loading)
        self.publish(DELETED, {"id": "other"})
        loading.callback({"id": "a", "stale": True})
        self.assertEqual(self.successResultOf(result), {"id": "a", "stale": True})
        self.assertEqual(self.read("a"), {"id": "a", "read": 2})

    def test_expires(self) -> None:
        """
        A value is served for C{ttl} seconds at most.
        """
        self.read("a")
        self.read("a")
        self.clock.advance(0.9)
        self.read("a")
        self.clock.advance(0.2)
        self.read("a")
        self.assertEqual(self.loads, ["a", "a", "a"])

    def test_failuresNotKept(self) -> None:
        """
        A load that fails fails the read, and keeps nothing.
        """
        self.read("a")
        failure = self.failureResultOf(self.cache.read("a", lambda: fail(KeyError("a"))), KeyError)
        self.assertEqual(failure.value.args, ("a",))
        self.assertEqual(len(self.cache.cache), 0)

    def test_off(self) -> None:
        """
        With no time to keep values, every read loads, and nothing is
        subscribed to.
        """
        cache: SubscribedCache[str, int] = SubscribedCache(
            self.bus, self.clock, {DELETED: _forgetOne}, ttl=0
        )
        for _ in range(3):
            self.assertEqual(self.successResultOf(cache.read("a", lambda: 7)), 7)
        self.assertEqual(self.bus.subscribed, [])
        self.assertEqual(len(cache.cache), 0)

    def test_subscriptionFails(self) -> None:
        """
        While a subscription cannot be made, reads go on, uncached, and the
        failure is logged; a read C{retryDelay} seconds later tries again,
        making only what is still missing (twice as long after that).
        """
        self.bus.failing = {PURGED}
        self.read("a")
        self.clock.advance(self.cache.retryDelay - 0.1)
        self.read("a")
        self.assertEqual(len(self.flushLoggedErrors(ConnectionLost)), 1)
        self.clock.advance(0.1)
        self.read("a")
        self.assertEqual(len(self.flushLoggedErrors(ConnectionLost)), 1)
        self.assertEqual(self.loads, ["a", "a", "a"])
        self.assertEqual(self.bus.subscribed, [DELETED])
        self.bus.failing = set()
        self.read("a")
        # The second failure in a row: twice as long before the next try.
        self.clock.advance(2 * self.cache.retryDelay)
        self.read("a")
        self.read("a")
        self.read("a")
        self.assertEqual(self.loads, ["a", "a", "a", "a", "a", "a"])
        self.assertEqual(sorted(self.bus.subscribed), [DELETED, PURGED])

    def test_retriesBackOff(self) -> None:
        """
        Each failure in a row doubles the wait before the next attempt, up
        to C{maxRetryDelay}; one that succeeds starts the count again.
        """
        self.bus.failing = {DELETED, PURGED}
        attempts = []
        for _ in range(8):
            self.read("a")
            attempts.append(self.clock.seconds())
            self.assertEqual(len(self.flushLoggedErrors(ConnectionLost)), 1)
            waited = self.cache._retryAt - self.clock.seconds()
            # Not a moment sooner: a read just before asks nothing.
            self.clock.advance(waited - 0.1)
            self.read("a")
            self.assertEqual(self.flushLoggedErrors(ConnectionLost), [])
            self.clock.advance(0.1)
        self.assertEqual(
            [round(b - a, 1) for a, b in zip(attempts, attempts[1:], strict=False)],
            [10.0, 20.0, 40.0, 80.0, 160.0, 300.0, 300.0],
        )
        self.bus.failing = set()
        self.read("a")
        self.assertTrue(self.cache._listening)
        self.assertEqual(self.cache._failures, 0)

    def test_oneAttemptAtATime(self) -> None:
        """
        Reads while an attempt to subscribe is under way start no other,
        and its failure is one failure: logged once, and the next attempt
        C{retryDelay} later.
        """
        self.bus.pending = []
        for _ in range(5):
            self.read("a")
        self.assertEqual(len(self.bus.pending), 2)
        for waiting in self.bus.pending:
            waiting.errback(ConnectionLost("the broker went away"))
        self.assertEqual(len(self.flushLoggedErrors(ConnectionLost)), 1)
        self.assertEqual(self.cache._retryAt, self.cache.retryDelay)
        self.bus.pending = None
        self.clock.advance(self.cache.retryDelay)
        self.read("a")
        self.assertEqual(sorted(self.bus.subscribed), [DELETED, PURGED])

    def test_gapForgetsAll(self) -> None:
        """
        When the bus may have missed events, everything kept goes.
        """
        self.read("a")
        self.read("a")
        self.read("b")
        self.bus.gaps[0]()
        self.read("a")
        self.read("b")
        self.assertEqual(self.loads, ["a", "a", "b", "a", "b"])

    def test_unreadableEvent(self) -> None:
        """
        An event its handler cannot read forgets everything, and is logged.
        """
        self.read("a")
        self.read("a")
        self.publish(DELETED, {"name": "a"})
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)
        self.read("a")
        self.assertEqual(self.loads, ["a", "a", "a"])
