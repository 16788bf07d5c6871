"""
Tests for L{txplatform.once}.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from txplatform.once import Once


class OnceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.runs: list[Deferred] = []

    def operation(self) -> Deferred:
        """
        An operation that waits for the test, counting its runs.
        """
        self.runs.append(Deferred())
        return self.runs[-1]

    def test_sharedResult(self) -> None:
        """
        Callers while the operation runs each get its result; later callers
        get it at once, without a second run.
        """
        runs = self.runs
        once = Once(self.operation)
        first, second = once(), once()
        self.assertNoResult(first)
        runs[0].callback("port")
        self.assertEqual([self.successResultOf(d) for d in (first, second)], ["port", "port"])
        self.assertEqual(self.successResultOf(once()), "port")
        self.assertEqual(len(runs), 1)
        # The operation's own Deferred keeps nothing unhandled.
        self.assertIsNone(self.successResultOf(runs[0]))

    def test_failureRetried(self) -> None:
        """
        A failure reaches every waiter, and the next call runs the
        operation again.
        """
        runs = self.runs
        once = Once(self.operation)
        first, second = once(), once()
        runs[0].errback(ValueError("port taken"))
        for d in (first, second):
            self.failureResultOf(d, ValueError)
        third = once()
        self.assertEqual(len(runs), 2)
        runs[1].callback("port")
        self.assertEqual(self.successResultOf(third), "port")
