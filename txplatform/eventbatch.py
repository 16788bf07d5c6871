# -*- test-case-name: tests.test_eventbatch -*-
"""
Events that arrive together, handled together.

A handler declared with C{@handles(..., batch=N)} takes a list of events
instead of one.  While no batch of it is under way, the events its bus
delivered within one turn of the reactor go at once; while one is, those
that arrive gather for the next, which starts as soon as it ends (at most
C{N} in a batch, as in group commit).  One transaction for several events
costs little more than one for a single event, so a service under load
spends less per event the more arrive at once, and a quiet one waits for
nothing.

Each event is still acknowledged on its own, once the call for its batch
succeeded.  A batch of several that fails is handled again one event at a
time: an event that fails by itself then fails alone, and is retried or
dead-lettered by its bus's rules, while the others go through.

The next batch starts only once this one ends: a batch must never wait for
an item that only a later batch of the same batcher would handle (an event
of its own pattern it published, waited for until handled).

L{EventBatcher} gathers any kind of item this way, not only events: a
store can give it the writes that arrive together, to commit them in one
transaction (the Post service's creates).
"""

from __future__ import annotations

from typing import Any, Callable, Generic, TypeVar

from attrs import frozen
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

__all__ = ["EventBatcher"]

_Item = TypeVar("_Item")


@frozen
class _Waiting(Generic[_Item]):
    item: _Item
    done: Deferred[None]


class EventBatcher(Generic[_Item]):
    """
    Gathers items and runs them in batches.

    @param run: Called with a list of items (never empty); returns a
        Deferred (or a value) that fires when all of them are handled.
    @param size: The most items in one batch.
    @param concurrency: The most batches under way at once; items that
        arrive while there are that many wait for one to end, and go
        together in the next.
    @param describe: Names the handler in the log line of a failed batch.
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        run: Callable[[list[_Item]], Any],
        size: int,
        concurrency: int = 1,
        describe: str = "a batch handler",
    ) -> None:
        if size < 1:
            raise ValueError(f"a batch holds at least one event, not {size}")
        if concurrency < 1:
            raise ValueError(f"at least one batch runs at a time, not {concurrency}")
        self._clock = clock
        self._run = run
        self.size = size
        self.concurrency = concurrency
        self._describe = describe
        self._waiting: list[_Waiting[_Item]] = []
        self._timer: IDelayedCall | None = None
        self._running = 0

    def add(self, item: _Item) -> Deferred[None]:
        """
        Handle C{item} in the next batch.

        @return: A Deferred that fires once C{item} is handled, or fails
            with the failure of handling it alone.
        """
        done: Deferred[None] = Deferred()
        self._waiting.append(_Waiting(item, done))
        if self._running >= self.concurrency:
            return done  # taken when a batch under way ends
        if len(self._waiting) >= self.size:
            self._go()
        elif self._timer is None:
            # What else this turn of the reactor brings joins it.
            self._timer = self._clock.callLater(0, self._go)
        return done

    def _go(self) -> None:
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None
        while self._waiting and self._running < self.concurrency:
            taken, self._waiting = self._waiting[: self.size], self._waiting[self.size :]
            self._running += 1
            self._batch(taken).addBoth(self._ended)

    def _ended(self, _: object) -> None:
        self._running -= 1
        self._go()

    def _batch(self, taken: list[_Waiting[_Item]]) -> Deferred[Any]:
        """
        Run C{taken}; the Deferred returned fires (and never fails) once
        every item of it is settled.
        """
        d = maybeDeferred(self._run, [w.item for w in taken])
        if len(taken) == 1:

            def settle(result: object) -> None:
                taken[0].done.callback(result)

            return d.addBoth(settle)

        def succeeded(_: object) -> None:
            for w in taken:
                w.done.callback(None)

        def failed(failure: Failure) -> Deferred[Any]:
            self.log.warn(
                "{handler} failed a batch of {count} ({error}); handling them one at a time",
                handler=self._describe,
                count=len(taken),
                error=failure.getErrorMessage() or failure.type.__name__,
            )
            return DeferredList([self._batch([w]) for w in taken])

        return d.addCallbacks(succeeded, failed)
