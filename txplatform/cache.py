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

L{SubscribedCache} is the same cache for a process that does not own the
values (a gateway keeping what a service answered): it hears the owner's
events through a subscription of its own, and keeps nothing until that
subscription is up.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Generic, Hashable, Mapping, TypeVar

from twisted.internet.defer import Deferred, FirstError, gatherResults, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from .interfaces import IBus

__all__ = ["ReadCache", "SubscribedCache"]

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


#: What a L{SubscribedCache} does with an event's payload.
Forget = Callable[["ReadCache[Any, Any]", dict[str, Any]], None]


class SubscribedCache(Generic[K, V]):
    """
    A L{ReadCache} of what another process answers, forgetting entries on
    that process's events (published after their commit), each heard by
    this process (a private subscription: every replica hears them all).

    Nothing is kept until the subscriptions are up: a value read before
    then could be deleted unheard.  When the bus says events may have been
    missed (it lost its connection), everything is forgotten.  A value can
    still be older than an event here if the process that answered had not
    heard the event yet itself (its own cache): C{ttl} bounds that too.

    @param forgets: For each event's topic, what to forget when it comes:
        called with the cache and the event's payload.
    @param ttl: Seconds a value may be served after it was read; 0 turns
        the cache off (every read loads).
    @ivar retryDelay: Seconds after a failed subscription before a read
        tries again (the reads meanwhile load, uncached); twice as long
        after each failure in a row, up to C{maxRetryDelay}: a bus that
        cannot carry events at all (the direct transport without an event
        bus) is asked, and logged, seldom.
    """

    log = Logger()
    retryDelay = 10.0
    maxRetryDelay = 300.0

    def __init__(
        self,
        bus: IBus,
        clock: IReactorTime,
        forgets: Mapping[str, Forget],
        maxEntries: int = 4096,
        ttl: float = 1.0,
    ) -> None:
        self.cache: ReadCache[K, V] = ReadCache(clock, maxEntries if ttl > 0 else 0, ttl)
        self._bus = bus
        self._clock = clock
        self._forgets = dict(forgets)
        self._listening = False
        self._retryAt = 0.0
        self._failures = 0
        self._trying = False
        self._subscribed: dict[str, Any] = {}

    def read(self, key: K, load: Callable[[], Deferred[V] | V]) -> Deferred[V]:
        """
        The value of C{key}: kept, or C{load()}ed (and kept if it may be).
        """
        if not self.cache.maxEntries:
            return maybeDeferred(load)
        kept = self.cache.get(key)
        if kept is not None:
            return succeed(kept)
        listening = self._listening
        if not (listening or self._trying) and self._clock.seconds() >= self._retryAt:
            # One attempt at a time: the reads meanwhile do not start
            # another, nor count its failure again.
            self._trying = True
            self._startSubscriptions().addErrback(self._notListening)
        loaded = maybeDeferred(load)
        if listening:
            loaded.addCallback(self._fill, key, self.cache.generation)
        return loaded

    def _fill(self, value: V, key: K, generation: int) -> V:
        self.cache.fill(key, value, generation)
        return value

    def _startSubscriptions(self) -> Deferred[Any]:
        # Only those not made yet: a private subscription made twice would
        # be a second queue, for good.
        d = gatherResults(
            [
                self._subscribeTo(topic, forget)
                for topic, forget in self._forgets.items()
                if topic not in self._subscribed
            ],
            consumeErrors=True,
        )
        return d.addCallback(self._listen)

    def _subscribeTo(self, topic: str, forget: Forget) -> Deferred[Any]:
        def heard(payload: dict[str, Any], context: Any) -> None:
            try:
                forget(self.cache, payload)
            except Exception:
                # An event this cache cannot read: forgetting everything
                # is never wrong.
                self.log.failure("Could not tell what a {topic} event makes go", topic=topic)
                self.cache.clear()

        def made(subscription: Any) -> Any:
            self._subscribed[topic] = subscription
            return subscription

        d = self._bus.subscribe(topic, heard, group=None, onGap=self._gap)
        return d.addCallback(made)

    def _listen(self, subscriptions: Any) -> None:
        self._listening, self._trying = True, False
        self._failures = 0

    def _gap(self) -> None:
        self.cache.clear()

    def _notListening(self, reason: Failure) -> None:
        # Reads go on uncached, and one a little later tries again: not
        # every read (a log line each, while the bus is away).
        self._trying = False
        delay = min(self.retryDelay * 2**self._failures, self.maxRetryDelay)
        self._failures += 1
        self._retryAt = self._clock.seconds() + delay
        if reason.check(FirstError):
            reason = reason.value.subFailure
        self.log.failure("Subscribing to what makes cached values go failed", reason)
