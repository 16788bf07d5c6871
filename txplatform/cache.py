# -*- test-case-name: tests.test_cache -*-
"""
A replica's cache of values read from its database.

Only for values that change by disappearing (a post is never edited, only
deleted): the cache keeps what a read returned, and forgets it when told
the value is gone.  Two rules keep it from serving what was deleted:

  - Invalidation comes after the fact: a replica forgets a value once the
    deletion committed (its own, at once; another replica's, from the event
    published after that commit).
  - A read that was under way when something was invalidated does not fill
    the cache: it may have seen the database before the deletion.

Entries also expire after C{ttl} seconds, which bounds the harm of an
invalidation that never arrived (a replica cut off from the bus).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Generic, Hashable, TypeVar

from twisted.internet.interfaces import IReactorTime

__all__ = ["ReadCache"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class ReadCache(Generic[K, V]):
    """
    A bounded, least-recently-used cache with expiry and invalidation.

    @param maxEntries: Most values kept; 0 turns the cache off.
    @param ttl: Seconds a value may be served after it was read.
    """

    def __init__(self, clock: IReactorTime, maxEntries: int = 4096, ttl: float = 60.0) -> None:
        self._clock = clock
        self.maxEntries = maxEntries
        self.ttl = ttl
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()
        #: Moves on at every invalidation; a read remembers it when it starts.
        self.generation = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: K) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        if entry[0] <= self._clock.seconds():
            del self._entries[key]
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry[1]

    def fill(self, key: K, value: V, generation: int) -> None:
        """
        Keep C{value}, read by a read that started at C{generation}, unless
        something was invalidated since.
        """
        if generation != self.generation or not self.maxEntries:
            return
        self._entries[key] = (self._clock.seconds() + self.ttl, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.maxEntries:
            self._entries.popitem(last=False)

    def invalidate(self, key: K) -> None:
        self.generation += 1
        self._entries.pop(key, None)

    def invalidateWhere(self, predicate: Callable[[V], bool]) -> None:
        """
        Forget every value C{predicate} picks.
        """
        self.generation += 1
        for key in [k for k, (_, v) in self._entries.items() if predicate(v)]:
            del self._entries[key]

    def clear(self) -> None:
        """
        Forget everything (invalidations may have been missed).
        """
        self.generation += 1
        self._entries.clear()
