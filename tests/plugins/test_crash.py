"""
The embedded platform loses nothing a client was told was done: killed
(SIGKILL) at random moments while posts are made, and started again, every
post answered 201 gets its notification, once.
"""

from __future__ import annotations

import os
import random
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import DeferredList, inlineCallbacks
from twisted.internet.task import deferLater

from ..processes import TwistdTestCase, callJSON
from ..support import eventually

PASSWORD = "correct horse"


class CrashTests(TwistdTestCase):
    timeout = 240

    def call(self, port: int, method: str, path: str, body: Any = None, token: str = "") -> Any:
        return callJSON(self.http, port, method, path, body, token)

    @inlineCallbacks
    def login(self, port: int, name: str) -> Any:
        _, session = yield self.call(
            port, "POST", "/v1/sessions", {"username": name, "password": PASSWORD}
        )
        return session["token"]

    @inlineCallbacks
    def poster(self, port: int, token: str, posted: set[str]) -> Any:
        """
        Post mentioning Bob until the process dies.
        """
        n = 0
        while True:
            n += 1
            try:
                code, body = yield self.call(
                    port, "POST", "/v1/posts", {"body": f"hi @bob {n}"}, token
                )
            except Exception:
                return  # killed: the answer never came
            if code == 201:
                posted.add(body["id"])

    @inlineCallbacks
    def notified(self, port: int, token: str) -> Any:
        """
        The post ids of every notification of Bob's (all pages).
        """
        ids: list[str] = []
        cursor = ""
        while True:
            _, page = yield self.call(
                port, "GET", f"/v1/notifications?limit=100{cursor}", token=token
            )
            ids += [n["post_id"] for n in page["items"]]
            if page["next"] is None:
                return ids
            cursor = f"&cursor={page['next']}"

    @inlineCallbacks
    def test_killedUnderLoad(self) -> Any:
        """
        Three SIGKILLs at random moments under a load of posts mentioning
        Bob (four clients at once); after each, the platform starts again
        from its data directory. In the end, every post that was answered
        201 is readable, and Bob has one notification for each, none twice.
        """
        dataDir = os.path.abspath(self.mktemp())
        arguments = ["txplatform", "--listen", "tcp:0:interface=127.0.0.1", "--data-dir", dataDir]
        chance = random.Random(os.environ.get("TXPLATFORM_CRASH_SEED", "crash"))
        self.http = self.client()
        posted: set[str] = set()
        for kill in range(3):
            process = self.spawn(*arguments)
            port = yield process.ready
            if kill == 0:
                for name in ("alice", "bob"):
                    body = {"username": name, "email": f"{name}@example.com", "password": PASSWORD}
                    code, _ = yield self.call(port, "POST", "/v1/accounts", body)
                    self.assertEqual(code, 201)
            token = yield self.login(port, "alice")
            posters = DeferredList([self.poster(port, token, posted) for _ in range(4)])
            yield deferLater(reactor, chance.uniform(0.5, 2.5), lambda: None)
            process.transport.signalProcess("KILL")
            yield process.ended
            yield posters
        self.assertGreater(len(posted), 20)
        process = self.spawn(*arguments)
        port = yield process.ready
        token = yield self.login(port, "bob")

        @inlineCallbacks
        def complete() -> Any:
            ids = yield self.notified(port, token)
            return posted <= set(ids) and ids

        ids = yield eventually(complete, timeout=60, interval=0.5)
        self.assertEqual(len(ids), len(set(ids)), "a post notified twice")
        for postId in sorted(posted):
            code, post = yield self.call(port, "GET", f"/v1/posts/{postId}")
            self.assertEqual((code, post["id"]), (200, postId))
