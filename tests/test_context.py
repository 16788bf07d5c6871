"""
Tests for L{txplatform.context}: ids of messages and of requests.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from txplatform.context import newMessageId, newRequestId


class IdTests(SynchronousTestCase):
    def test_requestIdsRandom(self) -> None:
        """
        Request ids, which clients see, are 128 random bits: consecutive
        ones share no prefix and do not count (message ids, which stay
        inside, may).
        """
        ids = [newRequestId() for _ in range(1000)]
        self.assertEqual(len(set(ids)), 1000)
        for first, second in zip(ids, ids[1:], strict=False):
            self.assertEqual(len(first), 32)
            self.assertNotEqual(first[:16], second[:16])
            self.assertNotEqual(int(second, 16) - int(first, 16), 1)
        messages = [newMessageId() for _ in range(2)]
        self.assertEqual(messages[0][:16], messages[1][:16])
