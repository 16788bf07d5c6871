"""
Tests for L{tests.support}: the rule every test that needs a server or a
tool follows, and the recording of a driver's calls.
"""

import os

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from .support import missing, recordCalls


class MissingTests(SynchronousTestCase):
    def test_skipsOutsideCI(self) -> None:
        """
        Outside CI, a test that lacks what it needs is skipped, saying why.
        """
        self.patch(os, "environ", {**os.environ, "CI": ""})
        error = self.assertRaises(SkipTest, missing, "no broker", "; CI must run it")
        self.assertEqual(str(error), "no broker")

    def test_failsInCI(self) -> None:
        """
        In CI, what a test needs is part of the job: its absence fails the
        test, with the CI-only words added.
        """
        self.patch(os, "environ", {**os.environ, "CI": "true"})
        error = self.assertRaises(AssertionError, missing, "no broker", "; CI must run it")
        self.assertEqual(str(error), "no broker; CI must run it")


class Driver:
    def execute(self, query: str, params: tuple = ()) -> str:
        return f"{query} {params}"


class RecordCallsTests(SynchronousTestCase):
    def test_recorded(self) -> None:
        """
        Every call's first argument is noted, and the call still made.
        """
        seen = recordCalls(self, Driver, "execute")
        self.assertEqual(Driver().execute("SELECT ?", (1,)), "SELECT ? (1,)")
        self.assertEqual(Driver().execute("COMMIT"), "COMMIT ()")
        self.assertEqual(seen, ["SELECT ?", "COMMIT"])
