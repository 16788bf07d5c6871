"""
The likes service of C{examples/likes}, a package outside txplatform that
plugs into it, run as users run it: inside C{twistd txplatform}, and as its
own C{twistd likes} process on RabbitMQ behind a gateway process.
.ci/run installs it (and runs its own tests) before the suite.
"""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SkipTest

from txplatform.catalogue import installedServices

from .amqp.cluster import ClusterTestCase
from .processes import TwistdTestCase
from .support import eventually, inCI


def requireLikes() -> None:
    if "likes" in installedServices():
        return
    reason = "examples/likes is not installed (pip install --no-deps ./examples/likes)"
    if inCI():
        raise AssertionError(reason + ": .ci/run installs it")
    raise SkipTest(reason)


class LikesFlow:
    """
    Two users, a post, a like through the gateway: the author is notified.
    """

    @inlineCallbacks
    def call(self, port: int, method: str, path: str, body: Any = None, token: str = "") -> Any:
        headers = {"Authorization": [f"Bearer {token}"]} if token else {}
        response = yield self.http.request(
            method, f"http://127.0.0.1:{port}{path}", json=body, headers=headers
        )
        content = yield response.content()
        return response.code, (json.loads(content) if content else None)

    @inlineCallbacks
    def likeAndCheck(self, port: int) -> Any:
        self.http = self.client()
        tokens = {}
        for name in ("alice", "bob"):
            login = {"username": name, "password": "correct horse"}
            code, _ = yield self.call(
                port, "POST", "/v1/accounts", {**login, "email": f"{name}@example.com"}
            )
            self.assertEqual(code, 201)
            code, session = yield self.call(port, "POST", "/v1/sessions", login)
            tokens[name] = session["token"]
        code, created = yield self.call(
            port, "POST", "/v1/posts", {"body": "like me"}, tokens["alice"]
        )
        self.assertEqual(code, 201)
        post = created["id"]
        code, _ = yield self.call(port, "PUT", f"/v1/posts/{post}/like", token=tokens["bob"])
        self.assertEqual(code, 204)
        code, likes = yield self.call(port, "GET", f"/v1/posts/{post}/likes")
        self.assertEqual((code, likes["count"], likes["items"][0]["username"]), (200, 1, "bob"))

        @inlineCallbacks
        def notified() -> Any:
            _, page = yield self.call(port, "GET", "/v1/notifications", token=tokens["alice"])
            return [(n["kind"], n["actor"]) for n in page["items"]]

        found = yield eventually(notified, timeout=20)
        self.assertEqual(found, [("liked", "bob")])
        code, document = yield self.call(port, "GET", "/v1/openapi.json")
        self.assertIn("/v1/posts/{post_id}/likes", document["paths"])


class AllInOneTests(LikesFlow, TwistdTestCase):
    @inlineCallbacks
    def test_inTheAllInOne(self) -> Any:
        """
        C{twistd txplatform} runs every installed service: likes too, with
        its routes in the gateway and its key file made on first start.
        """
        requireLikes()
        dataDir = os.path.abspath(self.mktemp())
        process = self.spawn(
            "txplatform", "--listen", "tcp:0:interface=127.0.0.1", "--data-dir", dataDir
        )
        port = yield process.ready
        yield self.likeAndCheck(port)
        self.assertTrue(os.path.exists(os.path.join(dataDir, "keys", "likes.json")))
        self.assertTrue(os.path.exists(os.path.join(dataDir, "likes.sqlite")))


class ProcessesTests(LikesFlow, ClusterTestCase):
    @inlineCallbacks
    def test_ownProcess(self) -> Any:
        """
        C{twistd likes}, made from its declaration, serves on RabbitMQ beside
        the platform's services, and a gateway process serves its routes.
        """
        requireLikes()
        services = [self.service(name) for name in ("account", "post", "notify", "likes")]
        for service in services:
            yield service.ready
        gateway = self.gateway()
        port = yield gateway.ready
        yield self.likeAndCheck(port)


class SizeTests(TwistdTestCase):
    def test_size(self) -> None:
        """
        The example stays as small as the tutorial says (bench/size.py
        counts lines that are not blank, comments or docstrings): the
        service, its storage, routes and declaration at most 150 lines, its
        tests at most 100.
        """
        import importlib.util

        from .processes import CHECKOUT

        spec = importlib.util.spec_from_file_location(
            "size", os.path.join(CHECKOUT, "bench", "size.py")
        )
        size = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(size)
        example = os.path.join(CHECKOUT, "examples", "likes")

        def count(path: str) -> int:
            return sum(
                size.pythonLines(open(f, encoding="utf-8").read()) for f in size.files([path])
            )

        self.assertLessEqual(count(os.path.join(example, "likes")), 150)
        self.assertLessEqual(count(os.path.join(example, "tests")), 100)
