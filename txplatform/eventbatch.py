# -*- test-case-name: tests.test_eventbatch -*-
"""
Events that arrive together, handled together.

A handler declared with C{@handles(..., batch=N)} takes a list of events
instead of one: those its bus delivered within one turn of the reactor (or
within C{linger} seconds), at most C{N}.  One transaction for several
events costs little more than one for a single event, so a service under
load spends less per event the more arrive at once, and nothing when they
come one at a time.

Each event is still acknowledged on its own, once the call for its batch
succeeded.  A batch of several that fails is handled again one event at a
time: an event that fails by itself then fails alone, and is retried or
dead-lettered by its bus's rules, while the others go through.
"""

from __future__ import annotations

from typing import Any, Callable, Generic, TypeVar

from attrs import frozen
from twisted.internet.defer import Deferred, maybeDeferred
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
    @param size: The most items in one batch: a batch this big runs at once.
    @param linger: Seconds the first item of a batch waits for others; 0
        runs a batch in the reactor turn after its first item came, with
        whatever came in that turn.
    @param describe: Names the handler in the log line of a failed batch.
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        run: Callable[[list[_Item]], Any],
        size: int,
        linger: float = 0.0,
        describe: str = "a batch handler",
    ) -> None:
        if size < 1:
            raise ValueError(f"a batch holds at least one event, not {size}")
        if linger < 0:
            raise ValueError(f"a batch cannot linger for {linger} seconds")
        self._clock = clock
        self._run = run
        self.size = size
        self.linger = linger
        self._describe = describe
        self._waiting: list[_Waiting[_Item]] = []
        self._timer: IDelayedCall | None = None

    def add(self, item: _Item) -> Deferred[None]:
        """
        Handle C{item} in the next batch.

        @return: A Deferred that fires once C{item} is handled, or fails
            with the failure of handling it alone.
        """
        done: Deferred[None] = Deferred()
        self._waiting.append(_Waiting(item, done))
        if len(self._waiting) >= self.size:
            self._go()
        elif self._timer is None:
            self._timer = self._clock.callLater(self.linger, self._go)
        return done

    def _go(self) -> None:
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None
        taken, self._waiting = self._waiting, []
        if taken:
            self._batch(taken)

    def _batch(self, taken: list[_Waiting[_Item]]) -> None:
        d = maybeDeferred(self._run, [w.item for w in taken])
        if len(taken) == 1:
            d.chainDeferred(taken[0].done)
            return

        def succeeded(_: object) -> None:
            for w in taken:
                w.done.callback(None)

        def failed(failure: Failure) -> None:
            self.log.warn(
                "{handler} failed a batch of {count} events ({error}); handling them one at a time",
                handler=self._describe,
                count=len(taken),
                error=failure.getErrorMessage() or failure.type.__name__,
            )
            for w in taken:
                self._batch([w])

        d.addCallbacks(succeeded, failed)
