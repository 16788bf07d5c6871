# -*- test-case-name: tests.test_once -*-
"""
An operation done once, for any number of callers: listening on a port,
subscribing to a topic.
"""

from __future__ import annotations

from typing import Any, Callable, Generic, TypeVar

from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure

__all__ = ["Once"]

_T = TypeVar("_T")


class Once(Generic[_T]):
    """
    Calling it starts C{operation} unless it succeeded already or is
    under way, and gives each caller a Deferred of its own result.  A
    failure goes to everyone waiting, and the next call tries again.
    """

    def __init__(self, operation: Callable[[], Deferred[_T]]) -> None:
        self._operation = operation
        self._running: Deferred[_T] | None = None
        self._waiting: list[Deferred[_T]] = []
        self._succeeded = False
        self._result: Any = None

    def __call__(self) -> Deferred[_T]:
        if self._succeeded:
            return succeed(self._result)
        waiter: Deferred[_T] = Deferred()
        self._waiting.append(waiter)
        if self._running is None:
            self._running = self._operation()
            self._running.addBoth(self._done)
        return waiter

    def _done(self, result: Any) -> None:
        self._running = None
        waiting, self._waiting = self._waiting, []
        if not isinstance(result, Failure):
            self._succeeded, self._result = True, result
        for waiter in waiting:
            waiter.callback(result)  # a Failure goes down the errback chain
        # Consumed here: every waiter has its own copy.
