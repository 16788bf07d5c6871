"""
The README's promises: its two commands, and its walk-through, which runs
here against a real twistd process.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import sys
import uuid
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from twisted.internet.defer import inlineCallbacks

from .processes import CHECKOUT, TwistdTestCase, callJSON, runShell
from .support import BROKER_URL, eventually, missing, requireBroker, requirePostgres


def readme() -> str:
    with open(os.path.join(CHECKOUT, "README.md"), encoding="utf-8") as f:
        return f.read()


def blockAfter(heading: str, skip: int = 0) -> str:
    """
    The first shell block after C{heading} (after C{skip} others).
    """
    text = readme()
    section = text[text.index(heading) :]
    return re.findall(r"```sh\n(.*?)```", section, re.S)[skip]


class CommandTests(TwistdTestCase):
    def test_runCommand(self) -> None:
        """
        The run command installs and runs the all-in-one twistd plugin; the
        README says how to serve other machines.
        """
        command = blockAfter("## Run it").strip()
        self.assertIn("pip install .", command)
        self.assertTrue(command.endswith("twistd -n txplatform"), command)
        # It serves this machine only (tests.plugins.test_options checks the
        # default), and the README says how to open it.
        self.assertIn("`--listen tcp:8080` opens the port to every interface", readme())

    def test_ciRunsTheTestCommand(self) -> None:
        """
        .ci/run runs the README's test command, as it is written.
        """
        command = blockAfter("## Test it").strip()
        self.assertIn("twisted.trial tests", command)
        with open(os.path.join(CHECKOUT, ".ci", "run"), encoding="utf-8") as f:
            script = f.read()
        self.assertIn("\n" + command + "\n", script)

    @inlineCallbacks
    def test_walkThrough(self) -> Any:
        """
        Every command of the walk-through works against a fresh platform.
        """
        block = blockAfter("## Walk-through")
        process = self.allInOne()
        port = yield process.ready
        script = block.replace("API=http://localhost:8080", f"API=http://127.0.0.1:{port}")
        self.assertNotEqual(script, block)
        result = yield runShell(script)
        self.assertEqual(result.returncode, 0, result.stderr + result.stdout)
        output = result.stdout
        for expected in [
            '"username":"alice"',
            '"display_name":"Bob"',
            '"body":"Hello @Bob, welcome!"',
            '"kind":"mention"',
            '"status":400',
            '"status":403',
            '"email":"alice@example.com"',
            '"status":401',
            "/v1/notifications/{notification_id}/read",
        ]:
            self.assertIn(expected, output)
        self.assertNotIn("Traceback", output)


#: The production block's commands, one per process.
PROCESSES = ["account", "post", "notify", "gateway"]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class ProductionTests(TwistdTestCase):
    """
    The production block, run as written in a directory of its own (as a
    fresh clone is, after the README's install command made C{.venv}), on
    the RabbitMQ and PostgreSQL the tests use: only its database, vhost and
    port are changed, so that it runs beside other tests.
    """

    timeout = 240

    @inlineCallbacks
    def setUp(self) -> Any:
        requireBroker()
        requirePostgres()
        from .amqp.cluster import rabbitmqctl

        for tool in ["rabbitmqctl", "psql", "createdb"]:
            if shutil.which(tool) is None:
                missing(f"{tool} is not on the PATH: the production block needs it")
        venv = sys.prefix
        if not os.path.exists(os.path.join(venv, "bin", "txplatform-keys")):
            missing(f"txplatform is not installed in {venv} (the README's install command)")
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        os.symlink(venv, os.path.join(self.directory, ".venv"))
        self.database = f"txplatform_t{uuid.uuid4().hex[:12]}"
        self.addCleanup(self.dropDatabase)
        self.vhost = f"txplatform-test-{uuid.uuid4().hex[:12]}"
        result = yield rabbitmqctl("add_vhost", self.vhost)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.addCleanup(rabbitmqctl, "delete_vhost", self.vhost)
        result = yield rabbitmqctl("set_permissions", "-p", self.vhost, "guest", ".*", ".*", ".*")
        self.assertEqual(result.returncode, 0, result.stderr)
        # Cleanups run last first: the processes go before their database.
        self.addCleanup(shutil.rmtree, os.path.join(self.directory, "keys"), True)
        self.addCleanup(self.killLeftovers)

    def pids(self) -> dict[str, int]:
        """
        The processes' pids, from the pid files they wrote.
        """
        found = {}
        for name in PROCESSES:
            try:
                with open(os.path.join(self.directory, f"{name}.pid")) as f:
                    found[name] = int(f.read().strip())
            except (OSError, ValueError):
                pass
        return found

    def killLeftovers(self) -> None:
        for pid in self.pids().values():
            if alive(pid):
                os.kill(pid, signal.SIGKILL)

    def dropDatabase(self) -> None:
        import psycopg

        with psycopg.connect(
            "postgresql://postgres@127.0.0.1/postgres", autocommit=True
        ) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')

    def logs(self) -> str:
        text = ""
        for name in PROCESSES:
            path = os.path.join(self.directory, f"{name}.log")
            if os.path.exists(path):
                with open(path, encoding="utf-8", errors="replace") as f:
                    text += f"--- {name}.log\n" + f.read()[-3000:]
        return text

    @inlineCallbacks
    def test_production(self) -> Any:
        """
        The production block makes the key files and its database, and
        starts the services and a gateway in the background, which serve
        the API together over the broker; run again, it makes nothing anew;
        the stop command ends them all.
        """
        from .direct.test_bus import freePort

        start = blockAfter("In production every service")
        stop = blockAfter("In production every service", skip=1)
        port = freePort("127.0.0.1")
        busURL = urlunsplit(urlsplit(BROKER_URL)._replace(path="/" + self.vhost))
        script = start
        for old, new in [
            ("'txplatform'", f"'{self.database}'"),
            ("-U postgres txplatform\n", f"-U postgres {self.database}\n"),
            ("@127.0.0.1/txplatform", f"@127.0.0.1/{self.database}"),
            ("amqp://guest:guest@127.0.0.1:5672/", busURL),
            ("--listen tcp:8080", f"--listen tcp:{port}:interface=127.0.0.1"),
        ]:
            self.assertEqual(script.count(old), 1, old)
            script = script.replace(old, new)
        result = yield runShell(script, timeout=120, cwd=self.directory)
        self.assertEqual(result.returncode, 0, result.stderr + result.stdout + self.logs())
        self.assertEqual(set(self.pids()), set(PROCESSES), self.logs())
        for name in ["bus", "account", "post", "notify"]:
            path = os.path.join(self.directory, "keys", f"{name}.json")
            self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)

        http = self.client()

        def answered() -> Any:
            # 404 comes from the Account service, over the broker; 503 while
            # it is not there yet.
            d = callJSON(http, port, "GET", "/v1/accounts/nobody")
            d.addCallbacks(lambda answer: answer[0] == 404, lambda _: False)
            return d

        yield eventually(answered, timeout=60, interval=0.2)
        code, account = yield callJSON(
            http,
            port,
            "POST",
            "/v1/accounts",
            {"username": "alice", "email": "alice@example.com", "password": "correct horse"},
        )
        self.assertEqual(code, 201, account)
        code, session = yield callJSON(
            http, port, "POST", "/v1/sessions", {"username": "alice", "password": "correct horse"}
        )
        self.assertEqual(code, 201, session)
        code, post = yield callJSON(
            http, port, "POST", "/v1/posts", {"body": "hello"}, token=session["token"]
        )
        self.assertEqual(code, 201, post)
        code, page = yield callJSON(http, port, "GET", "/v1/accounts/alice/posts")
        self.assertEqual((code, [p["id"] for p in page["items"]]), (200, [post["id"]]))
        code, document = yield callJSON(http, port, "GET", "/v1/openapi.json")
        self.assertIn("/v1/posts", document["paths"])

        # Run again, it refuses to start a second set beside the first
        # (twistd's pid files), and makes no key file or database anew.
        keys = {}
        for name in ["bus", "account"]:
            with open(os.path.join(self.directory, "keys", f"{name}.json")) as f:
                keys[name] = f.read()
        again = yield runShell(script, timeout=60, cwd=self.directory)
        self.assertNotEqual(again.returncode, 0)
        self.assertIn("Another twistd server is running", again.stderr + again.stdout)
        for name, text in keys.items():
            with open(os.path.join(self.directory, "keys", f"{name}.json")) as f:
                self.assertEqual(f.read(), text)

        pids = self.pids()
        result = yield runShell(stop, cwd=self.directory)
        self.assertEqual(result.returncode, 0, result.stderr)
        yield eventually(
            lambda: not any(alive(pid) for pid in pids.values()), timeout=30, interval=0.1
        )
        self.assertEqual(self.pids(), {})  # each removed its pid file
        self.assertNotIn("Traceback", self.logs(), self.logs())
