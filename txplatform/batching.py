# -*- test-case-name: tests.test_batching -*-
"""
Coalescing concurrent lookups into one database round trip.

A round trip to the database thread costs far more than the lookup itself
(a thread hop each way, and the GIL changing hands), so under load the
lookups that arrive while one round trip is under way wait for it to end
and then go together in the next one: C{SELECT ... WHERE id IN (...)}.  At
low load nothing waits: a lookup with no round trip in flight goes at once.

A lookup never joins a round trip that started before it arrived, so it
sees the database as it was at some moment after it was asked: nothing is
cached, and a value deleted before the lookup was asked is never returned.
"""

from __future__ import annotations

from typing import Any, Callable, Generic, Hashable, TypeVar

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

__all__ = ["BatchLoader"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class BatchLoader(Generic[K, V]):
    """
    @param load: Takes a list of distinct keys and returns a Deferred of a
        dict with the values found (missing keys are absent).
    @param maxBatch: Most keys one round trip asks for.
    @param maxInFlight: Most round trips under way at once (1 suits
        SQLite's single connection; a pool can take a few).
    """

    def __init__(
        self,
        load: Callable[[list[K]], Deferred[dict[K, V]]],
        maxBatch: int = 100,
        maxInFlight: int = 1,
    ) -> None:
        self._load = load
        self._maxBatch = maxBatch
        self._maxInFlight = maxInFlight
        self._inFlight = 0
        self._waiting: dict[K, list[Deferred[V | None]]] = {}

    def get(self, key: K) -> Deferred[V | None]:
        """
        The value for C{key}, or C{None} if there is none.
        """
        d: Deferred[V | None] = Deferred()
        self._waiting.setdefault(key, []).append(d)
        if self._inFlight < self._maxInFlight:
            self._dispatch()
        return d

    def _dispatch(self) -> None:
        keys = []
        waiters: dict[K, list[Deferred[V | None]]] = {}
        for key in self._waiting:
            keys.append(key)
            if len(keys) == self._maxBatch:
                break
        for key in keys:
            waiters[key] = self._waiting.pop(key)
        self._inFlight += 1
        try:
            d = self._load(keys)
        except Exception:
            d = Deferred()
            d.errback(Failure())
        d.addBoth(self._loaded, waiters)

    def _loaded(self, result: Any, waiters: dict[K, list[Deferred[V | None]]]) -> None:
        self._inFlight -= 1
        if self._waiting and self._inFlight < self._maxInFlight:
            self._dispatch()
        for key, deferreds in waiters.items():
            # The loader may give an exception for one key (a row that
            # cannot be read): only that key's callers get it.
            value = result if isinstance(result, Failure) else result.get(key)
            for d in deferreds:
                if isinstance(value, Failure):
                    d.errback(value)
                elif isinstance(value, Exception):
                    d.errback(Failure(value))
                else:
                    d.callback(value)
