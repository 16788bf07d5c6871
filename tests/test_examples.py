"""
The likes service of C{examples/likes}, a package outside txplatform that
plugs into it, run as users run it: inside C{twistd txplatform}, and as its
own C{twistd likes} process on RabbitMQ behind a gateway process.
.ci/run installs it (and runs its own tests) before the suite.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks

from txplatform.catalogue import installedServices

from .amqp.cluster import ClusterTestCase
from .processes import SERVING, Twistd, TwistdTestCase, callJSON, runShell
from .support import eventually, missing


def requireLikes() -> None:
    if "likes" in installedServices():
        return
    missing(
        "examples/likes is not installed (pip install --no-deps ./examples/likes)",
        ": .ci/run installs it",
    )


class LikesFlow:
    """
    Two users, a post, a like through the gateway: the author is notified.
    """

    def call(self, port: int, method: str, path: str, body: Any = None, token: str = "") -> Any:
        return callJSON(self.http, port, method, path, body, token)

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


def tutorial() -> str:
    from .processes import CHECKOUT

    with open(os.path.join(CHECKOUT, "docs", "tutorial.md"), encoding="utf-8") as f:
        return f.read()


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", tutorial(), re.S)


class TutorialTests(TwistdTestCase):
    """
    docs/tutorial.md shows the example as it is, and its commands run as
    written.
    """

    def test_filesShown(self) -> None:
        """
        Every file of the example is shown whole, as it is.
        """
        from .processes import CHECKOUT

        shown = blocks("python") + blocks("toml")
        example = os.path.join(CHECKOUT, "examples", "likes")
        for path in [
            "pyproject.toml",
            "likes/__init__.py",
            "likes/api.py",
            "likes/routes.py",
            "likes/service.py",
            "tests/test_likes.py",
        ]:
            with open(os.path.join(example, path), encoding="utf-8") as f:
                self.assertIn(f.read(), [block for block in shown], path)

    def test_installedAsShown(self) -> None:
        """
        .ci/run installs the example with the command the tutorial shows.
        """
        from .processes import CHECKOUT

        [install] = [b.strip() for b in blocks("sh") if "pip install" in b]
        with open(os.path.join(CHECKOUT, ".ci", "run"), encoding="utf-8") as f:
            self.assertIn(install, f.read())

    def test_testsAsShown(self) -> Any:
        """
        The example's tests run with the command shown, from its folder.
        """
        from .processes import CHECKOUT

        requireLikes()
        [command] = [b.strip() for b in blocks("sh") if "twisted.trial" in b]
        self.assertEqual(command, "python -m twisted.trial tests")
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "twisted.trial",
                "--temp-directory",
                os.path.abspath(self.mktemp()),
                "tests",
            ],
            cwd=os.path.join(CHECKOUT, "examples", "likes"),
            capture_output=True,
            text=True,
            timeout=120,
        )
        self.assertEqual(result.returncode, 0, result.stdout[-2000:] + result.stderr)
        self.assertIn("PASSED", result.stdout)

    @inlineCallbacks
    def test_walkThrough(self) -> Any:
        """
        The tutorial's walk-through works against the platform after the
        README's.
        """
        from .test_readme import blockAfter

        requireLikes()
        process = self.allInOne()
        port = yield process.ready
        [walk] = [b for b in blocks("sh") if "API=http://localhost:8080" in b]
        output = ""
        for script in [blockAfter("## Walk-through"), walk]:
            script = script.replace("API=http://localhost:8080", f"API=http://127.0.0.1:{port}")
            result = yield runShell(script)
            self.assertEqual(result.returncode, 0, result.stderr + result.stdout)
            output = result.stdout
        self.assertIn('"count":1', output)
        self.assertIn('"kind":"liked"', output)
        self.assertIn('"actor":"bob"', output)


class TutorialProcessTests(ClusterTestCase):
    @inlineCallbacks
    def test_ownProcess(self) -> Any:
        """
        The tutorial's production commands, run as written (on the test's
        own vhost), make the key file and start a likes replica that serves.
        """
        requireLikes()
        [block] = [b for b in blocks("sh") if "twistd -n" in b]
        where = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(where, "keys"))
        os.symlink(sys.prefix, os.path.join(where, ".venv"))
        shutil.copy(self.keys["bus"], os.path.join(where, "keys", "bus.json"))
        script = block.replace("amqp://guest:guest@127.0.0.1:5672/", self.busURL)
        self.assertNotEqual(script, block)
        # The last command becomes the shell itself, so ending it ends twistd.
        script = script.replace(".venv/bin/twistd", "exec .venv/bin/twistd")
        process = Twistd(SERVING)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        transport = reactor.spawnProcess(
            process, "/bin/bash", ["bash", "-euo", "pipefail", "-c", script], env=env, path=where
        )

        def kill() -> Any:
            if not process.ended.called:
                transport.signalProcess("KILL")
                return process.ended

        self.addCleanup(kill)
        process.transport = transport
        yield process.ready
        self.assertTrue(os.path.exists(os.path.join(where, "keys", "likes.json")))
