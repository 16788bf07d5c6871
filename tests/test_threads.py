"""
Tests for L{txplatform.threads}.
"""

from __future__ import annotations

import threading
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.internet.threads import deferToThreadPool
from twisted.trial.unittest import TestCase

from txplatform.threads import ownThreadPool


class OwnThreadPoolTests(TestCase):
    @inlineCallbacks
    def test_sizeAndName(self) -> Any:
        """
        The pool runs its work on exactly its C{size} threads, named after
        it, and they are daemons: they do not hold the process open.
        """
        pool = ownThreadPool("hashing", 2)
        pool.start()
        self.addCleanup(pool.stop)

        def who() -> tuple[str, bool]:
            me = threading.current_thread()
            return me.name, me.daemon

        seen = yield gatherResults([deferToThreadPool(reactor, pool, who) for _ in range(20)])
        self.assertEqual(len({name for name, _ in seen}), 2)
        for name, daemon in seen:
            self.assertIn("hashing", name)
            self.assertTrue(daemon)
