"""
Tests for L{txplatform.cache}.
"""

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from txplatform.cache import ReadCache


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
