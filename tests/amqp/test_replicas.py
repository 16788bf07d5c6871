"""
Replicas as real processes: killed mid-load, or stopped with SIGTERM, no
call goes unanswered and nothing is done twice.
"""

from __future__ import annotations

import signal
from typing import Any

from twisted.internet.defer import DeferredSemaphore, gatherResults, inlineCallbacks

from txplatform_services.account import api as account
from txplatform_services.post import api as post

from ..support import eventually
from .cluster import ClusterTestCase


class ReplicaTests(ClusterTestCase):
    @inlineCallbacks
    def load(self, bus: Any, service: Any, method: str, payloads: list, concurrency: int) -> Any:
        """
        Make every call, C{concurrency} at a time: the outcomes, in order.
        """
        limit = DeferredSemaphore(concurrency)
        outcomes: list[Any] = [None] * len(payloads)

        def one(index: int) -> Any:
            d = bus.call(service, method, payloads[index], timeout=30)

            def settle(result: Any) -> None:
                outcomes[index] = result.value if hasattr(result, "value") else result

            return d.addBoth(settle)

        yield gatherResults([limit.run(one, n) for n in range(len(payloads))])
        return outcomes

    @inlineCallbacks
    def test_killedMidLoad(self) -> Any:
        """
        A replica killed with SIGKILL while it holds calls: the broker gives
        them to the other replica, every call is answered, and no post is
        created twice.
        """
        first = self.service("post")
        second = self.service("post")
        yield gatherResults([first.ready, second.ready])
        bus = yield self.bus()
        payloads = [
            {
                "author_id": "01aaaaaaaaaaaaaaaaaaaaaaaa",
                "author_username": "alice",
                "body": f"post {n}",
            }
            for n in range(400)
        ]
        loading = self.load(bus, post.SERVICE_ID, "create_post", payloads, 32)

        def progress() -> Any:
            return self.query("SELECT count(*) FROM posts").addCallback(
                lambda rows: rows[0][0] > 80
            )

        yield eventually(progress, timeout=30)
        first.transport.signalProcess("KILL")
        outcomes = yield loading
        yield first.ended
        self.assertEqual(first.signal, signal.SIGKILL)
        errors = [o for o in outcomes if isinstance(o, Exception)]
        self.assertEqual(errors, [], "every call is answered, with success")
        self.assertEqual(sorted(o["body"] for o in outcomes), sorted(p["body"] for p in payloads))
        [(count, distinct)] = yield self.query("SELECT count(*), count(DISTINCT body) FROM posts")
        self.assertEqual((count, distinct), (400, 400))
        self.assertEqual(len({o["id"] for o in outcomes}), 400)
        # The killed replica held calls, which the other one got again.
        self.assertIn(b"delivered again", second.output)

    @inlineCallbacks
    def test_sigtermDrains(self) -> Any:
        """
        A replica sent SIGTERM finishes the calls it holds, answers them and
        shuts down cleanly.
        """
        replica = self.service("account")
        yield replica.ready
        bus = yield self.bus()
        payloads = [
            {"username": f"user{n}", "email": f"user{n}@example.com", "password": "correct horse"}
            for n in range(40)
        ]
        loading = self.load(bus, account.SERVICE_ID, "register", payloads, 40)

        def started() -> Any:
            return self.query("SELECT count(*) FROM accounts").addCallback(
                lambda rows: rows[0][0] >= 3
            )

        yield eventually(started, timeout=30)
        replica.transport.signalProcess("TERM")
        yield replica.ended
        self.assertIn(b"Server Shut Down.", replica.output)
        self.assertNotIn(b"Traceback", replica.output)
        # What it did not hold waits in the queue for the next replica.
        later = self.service("account")
        yield later.ready
        outcomes = yield loading
        self.assertEqual([o for o in outcomes if isinstance(o, Exception)], [])
        [(count,)] = yield self.query("SELECT count(*) FROM accounts")
        self.assertEqual(count, 40)

    @inlineCallbacks
    def test_sigtermHandsBack(self) -> Any:
        """
        Work a stopping replica cannot finish within its drain deadline goes
        back to the broker; another replica does it, once, and every call is
        answered.
        """
        replica = self.service("account", "--drain-timeout", "0.2")
        yield replica.ready
        bus = yield self.bus()
        payloads = [
            {"username": f"user{n}", "email": f"user{n}@example.com", "password": "correct horse"}
            for n in range(60)
        ]
        loading = self.load(bus, account.SERVICE_ID, "register", payloads, 60)

        def started() -> Any:
            return self.query("SELECT count(*) FROM accounts").addCallback(
                lambda rows: rows[0][0] >= 1
            )

        yield eventually(started, timeout=30)
        replica.transport.signalProcess("TERM")
        yield replica.ended
        self.assertIn(b"the bus hands it to another replica", replica.output)
        [(before,)] = yield self.query("SELECT count(*) FROM accounts")
        self.assertLess(before, 60, "some work was handed back")
        later = self.service("account")
        yield later.ready
        outcomes = yield loading
        failures = [o for o in outcomes if isinstance(o, Exception)]
        self.assertEqual(failures, [])
        self.assertTrue(
            all(o["username"] == p["username"] for o, p in zip(outcomes, payloads, strict=True))
        )
        [(count,)] = yield self.query("SELECT count(*) FROM accounts")
        self.assertEqual(count, 60)
        self.assertIn(b"delivered again", later.output)
