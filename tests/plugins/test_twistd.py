"""
Tests that run C{twistd} as a separate process, as users do.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from treq.client import HTTPClient
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SkipTest, TestCase

from txplatform.catalogue import installedServices

from ..processes import SERVING, TwistdTestCase
from ..support import (
    BROKER_URL,
    POSTGRES_URL,
    eventually,
    inCI,
    keyArguments,
    keyFiles,
    requirePostgres,
)


class AllInOneProcessTests(TwistdTestCase):
    @inlineCallbacks
    def call(
        self,
        http: HTTPClient,
        port: int,
        method: str,
        path: str,
        body: Any = None,
        token: str | None = None,
    ) -> Any:
        headers = {}
        if token:
            headers["Authorization"] = [f"Bearer {token}"]
        response = yield http.request(
            method, f"http://127.0.0.1:{port}{path}", json=body, headers=headers
        )
        content = yield response.content()
        return response.code, (json.loads(content) if content else None)

    @inlineCallbacks
    def test_serves(self) -> Any:
        """
        C{twistd -n txplatform} serves the API over HTTP from its data
        directory, stops cleanly on SIGTERM, and finds its data again when
        started anew.
        """
        dataDir = os.path.abspath(self.mktemp())
        arguments = ["txplatform", "--listen", "tcp:0:interface=127.0.0.1", "--data-dir", dataDir]
        process = self.spawn(*arguments)
        port = yield process.ready
        http = self.client()
        code, health = yield self.call(http, port, "GET", "/healthz")
        self.assertEqual((code, health), (200, {"status": "ok"}))
        for name in ["alice", "bob"]:
            code, _ = yield self.call(
                http,
                port,
                "POST",
                "/v1/accounts",
                {"username": name, "email": f"{name}@example.com", "password": "correct horse"},
            )
            self.assertEqual(code, 201)
        tokens = {}
        for name in ["alice", "bob"]:
            code, session = yield self.call(
                http, port, "POST", "/v1/sessions", {"username": name, "password": "correct horse"}
            )
            self.assertEqual(code, 201)
            tokens[name] = session["token"]
        code, _ = yield self.call(http, port, "PUT", "/v1/me/following/alice", token=tokens["bob"])
        self.assertEqual(code, 204)
        code, post = yield self.call(
            http, port, "POST", "/v1/posts", {"body": "hello @bob"}, token=tokens["alice"]
        )
        self.assertEqual(code, 201)

        @inlineCallbacks
        def notified() -> Any:
            code, page = yield self.call(
                http, port, "GET", "/v1/notifications", token=tokens["bob"]
            )
            return page["items"]

        [notification] = yield eventually(notified, timeout=10)
        self.assertEqual((notification["kind"], notification["post_id"]), ("mention", post["id"]))

        process.transport.signalProcess("TERM")
        yield process.ended
        # twistd shuts down cleanly, then ends itself with the signal it got
        # so that its exit status tells a supervisor why it stopped.
        self.assertEqual(process.signal, signal.SIGTERM, process.output.decode())
        self.assertIn(b"Server Shut Down.", process.output)
        self.assertNotIn(b"Traceback", process.output)
        self.assertLessEqual(
            {"account.sqlite", "notify.sqlite", "post.sqlite"},
            {f for f in os.listdir(dataDir) if f.endswith(".sqlite")},
        )

        again = self.spawn(*arguments)
        port = yield again.ready
        code, body = yield self.call(http, port, "GET", f"/v1/posts/{post['id']}")
        self.assertEqual((code, body), (200, post))
        code, _ = yield self.call(http, port, "GET", "/v1/me", token=tokens["alice"])
        self.assertEqual(code, 200)

    @inlineCallbacks
    def test_metrics(self) -> Any:
        """
        With C{--metrics}, the process serves /healthz, /readyz and
        Prometheus metrics on a listener of its own: the gateway's requests
        and the services' calls, by operation, method and outcome.
        """
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        metricsPort = probe.getsockname()[1]
        probe.close()
        process = self.spawn(
            "txplatform",
            "--listen",
            "tcp:0:interface=127.0.0.1",
            "--metrics",
            f"tcp:{metricsPort}:interface=127.0.0.1",
            "--data-dir",
            os.path.abspath(self.mktemp()),
        )
        port = yield process.ready
        http = self.client()
        code, _ = yield self.call(http, port, "GET", "/v1/accounts/nobody")
        self.assertEqual(code, 404)

        @inlineCallbacks
        def get(path: str) -> Any:
            response = yield http.get(f"http://127.0.0.1:{metricsPort}{path}")
            return response.code, (yield response.text())

        code, text = yield eventually(lambda: get("/readyz"), timeout=10)
        self.assertEqual(code, 200, text)
        self.assertTrue(text.startswith("ok: the bus is connected and"), text)
        self.assertEqual((yield get("/healthz"))[0], 200)
        code, text = yield get("/metrics")
        self.assertEqual(code, 200)
        self.assertIn(
            'txplatform_gateway_requests_total{operation="profile",priority="low",status="404"}'
            " 1.0",
            text,
        )
        self.assertIn(
            'txplatform_calls_total{method="get_profile",outcome="not_found",service="account"}'
            " 1.0",
            text,
        )
        self.assertIn('txplatform_bus_connected{transport="local"} 1.0', text)

    @inlineCallbacks
    def test_cannotStart(self) -> Any:
        """
        A data directory that cannot be created stops the process with exit
        status 1 and a clear reason.
        """
        blocker = os.path.abspath(self.mktemp())
        with open(blocker, "w") as f:
            f.write("a file, not a directory")
        process = self.spawn(
            "txplatform", "--listen", "tcp:0", "--data-dir", os.path.join(blocker, "var")
        )
        self.assertFailure(process.ready, AssertionError)
        code = yield process.ended
        self.assertEqual(code, 1)
        self.assertIn(b"Not a directory", process.output)

    @inlineCallbacks
    def test_portTaken(self) -> Any:
        """
        A port already in use stops the process with exit status 1.
        """
        taken = socket.socket()
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        self.addCleanup(taken.close)
        port = taken.getsockname()[1]
        process = self.spawn(
            "txplatform",
            "--listen",
            f"tcp:{port}:interface=127.0.0.1",
            "--data-dir",
            os.path.abspath(self.mktemp()),
        )
        self.assertFailure(process.ready, AssertionError)
        code = yield process.ended
        self.assertEqual(code, 1)
        self.assertIn(b"Address already in use", process.output)


class RefusedOptionsTests(TwistdTestCase):
    # Each process should end at once; one left running is killed when the
    # test times out.
    timeout = 60

    @inlineCallbacks
    def test_unreadableListen(self) -> Any:
        """
        An endpoint Twisted cannot read stops every command that takes one
        at once, with exit status 1 and the reason in one line.
        """
        from .test_options import identityFiles

        keys = keyFiles(os.path.abspath(self.mktemp()))
        paths = identityFiles(os.path.abspath(self.mktemp()))
        sidecar = ["--for", "post", "--identity", paths["post"], "--trust", paths["trust"]]
        for arguments in [
            ["txplatform", "--listen", "bogus:endpoint", "--data-dir", self.mktemp()],
            [
                "gateway",
                "--bus",
                BROKER_URL,
                *keyArguments(keys, "gateway"),
                "--listen",
                "bogus:endpoint",
            ],
            ["sidecar", *sidecar, "--forward", "unix:/run/post.sock", "--listen", "bogus:endpoint"],
        ]:
            process = self.spawn(*arguments)
            self.assertFailure(process.ready, AssertionError)
            code = yield process.ended
            self.assertEqual(code, 1, process.output.decode())
            [line] = process.output.decode().strip().splitlines()
            self.assertIn("--listen: 'bogus:endpoint' is not an endpoint", line)
            self.assertIn("Unknown endpoint type: 'bogus'", line)
            self.assertTrue(line.startswith(f"twistd {arguments[0]}: "), line)

    @inlineCallbacks
    def test_busRequired(self) -> Any:
        """
        The gateway and a service, started without --bus, exit 1 at once,
        the reason on the last line, instead of running on an in-process
        bus that reaches no other process (a gateway answering every call
        with 503).
        """
        keys = keyFiles(os.path.abspath(self.mktemp()))
        for command in ["gateway", "account"]:
            process = self.spawn(command, *keyArguments(keys, command))
            self.assertFailure(process.ready, AssertionError)
            code = yield process.ended
            self.assertEqual(code, 1, process.output.decode())
            [line] = process.output.decode().strip().splitlines()
            self.assertIn("--bus is required: this process works with the others", line)

    @inlineCallbacks
    def test_oneLine(self) -> Any:
        """
        An option a command does not know, or one without its value, ends
        twistd with exit status 1 and one line: the command, the reason and
        where the options are listed, not twistd's whole usage text.
        """
        for arguments, reason in [
            (["gateway", "--bogus"], "twistd gateway: option --bogus not recognized"),
            (["txplatform", "--listen"], "twistd txplatform: option --listen requires argument"),
            (["post", "--db"], "twistd post: option --db requires argument"),
            (["sidecar", "--bogus"], "twistd sidecar: option --bogus not recognized"),
        ]:
            process = self.spawn(*arguments)
            self.assertFailure(process.ready, AssertionError)
            code = yield process.ended
            self.assertEqual(code, 1, process.output.decode())
            self.assertEqual(
                process.output.decode().strip().splitlines(),
                [f"{reason} (twistd {arguments[0]} --help lists the options)"],
            )


class MissingDatabaseTests(TwistdTestCase):
    """
    A PostgreSQL database that does not exist stops a process at start with
    one line saying so, no traceback, and exit status 1.
    """

    def missingDatabase(self) -> tuple[str, str]:
        requirePostgres()
        parts = urlsplit(POSTGRES_URL)
        name = f"txplatform_missing_{uuid.uuid4().hex[:12]}"
        return urlunsplit(parts._replace(path=f"/{name}", query="")), name

    @inlineCallbacks
    def stoppedInOneLine(self, process: Any, name: str) -> Any:
        """
        Wait for C{process} to end; check that it did, with status 1 and one
        critical line of the database C{name} missing, without a
        traceback: the service that line names.
        """
        self.assertFailure(process.ready, AssertionError)
        code = yield process.ended
        output = process.output.decode()
        self.assertEqual(code, 1, output)
        self.assertNotIn("Traceback", output)
        [line] = [line for line in output.splitlines() if "#critical]" in line]
        self.assertIn(f'FATAL: database "{name}" does not exist', line)
        stopped = re.search(r"starting (\w+) failed, stopping: cannot open postgresql://", line)
        self.assertIsNotNone(stopped, line)
        return stopped.group(1)

    @inlineCallbacks
    def test_service(self) -> Any:
        """
        C{twistd SERVICE --db} of a missing database.
        """
        url, name = self.missingDatabase()
        keys = keyFiles(os.path.abspath(self.mktemp()))
        process = self.spawn(
            "account", "--bus", "local:", *keyArguments(keys, "account"), "--db", url,
            ready=SERVING,
        )  # fmt: skip
        service = yield self.stoppedInOneLine(process, name)
        self.assertEqual(service, "account")

    @inlineCallbacks
    def test_allInOne(self) -> Any:
        """
        C{twistd txplatform --db} of a missing database: the first service
        to find out stops the process.
        """
        url, name = self.missingDatabase()
        process = self.spawn(
            "txplatform", "--listen", "tcp:0:interface=127.0.0.1",
            "--data-dir", os.path.abspath(self.mktemp()), "--db", url,
        )  # fmt: skip
        service = yield self.stoppedInOneLine(process, name)
        self.assertIn(service, [d.name for d in installedServices() if d.stores()])


class InstalledCommandsTests(TestCase):
    """
    After C{pip install .}, the commands are twistd's.
    """

    timeout = 60

    def test_help(self) -> None:
        """
        The installed twistd lists every command, and each has --help.
        """
        twistd = shutil.which("twistd", path=os.path.dirname(sys.executable))
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        elsewhere = os.path.abspath(self.mktemp())
        os.makedirs(elsewhere)
        installed = subprocess.run(
            [
                sys.executable,
                "-c",
                "import txplatform, txplatform_plugins, txplatform_services, txplatform_gateway",
            ],
            cwd=elsewhere,
            env=env,
            capture_output=True,
        )
        if twistd is None or installed.returncode != 0:
            reason = "txplatform is not installed here (pip install . first)"
            if inCI():
                raise AssertionError(reason)
            raise SkipTest(reason)
        spec = subprocess.run(
            [
                sys.executable,
                "-c",
                "from txplatform.amqp.spec import loadSpec; print(loadSpec().classes.byname['confirm'].id)",
            ],
            cwd=elsewhere,
            env=env,
            capture_output=True,
            text=True,
        )
        self.assertEqual(
            spec.stdout.strip(), "85", "the AMQP spec ships with the package: " + spec.stderr
        )
        deadletters = shutil.which("txplatform-deadletters", path=os.path.dirname(sys.executable))
        self.assertIsNotNone(deadletters)
        helped = subprocess.run(
            [deadletters, "--help"], cwd=elsewhere, env=env, capture_output=True, text=True
        )
        self.assertIn("replay", helped.stdout)
        listing = subprocess.run(
            [twistd, "--help"], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=60
        )
        self.assertEqual(listing.returncode, 0, listing.stderr)
        if not re.search(r"\n\s+txplatform\s", listing.stdout):
            # A dropin that fails to import is only reported on stderr (and
            # its commands are missing); one not found at all, nowhere:
            # show where twistd looked and what importing the dropin says.
            looked = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    "import twisted.plugins as p, os; print([(d, sorted(os.listdir(d)))"
                    " for d in p.__path__ if os.path.isdir(d)]);"
                    " import twisted.plugins.txplatform_dropin as d; print(d.__file__)",
                ],
                cwd=elsewhere,
                env=env,
                capture_output=True,
                text=True,
            )
            self.fail(
                f"twistd --help lists no txplatform command\nstderr: {listing.stderr}\n"
                f"plugin paths: {looked.stdout}{looked.stderr}"
            )
        for command in ["txplatform", "gateway", "account", "post", "notify", "parser"]:
            self.assertRegex(listing.stdout, rf"\n\s+{command}\s", listing.stderr)
            helped = subprocess.run(
                [twistd, command, "--help"],
                cwd=elsewhere,
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            self.assertEqual(helped.returncode, 0, helped.stderr)
            self.assertIn("--", helped.stdout)


#: The import names the distribution may claim: its own, and the dropin in
#: Twisted's plugin package.
OWN_NAMES = {"txplatform", "txplatform_services", "txplatform_gateway", "txplatform_plugins"}


class PackagingTests(TestCase):
    """
    What installing txplatform puts on a machine.
    """

    timeout = 300

    def test_topLevelNames(self) -> None:
        """
        The installed files claim no generic top-level import name (such as
        C{services} or C{gateway}, which other distributions use): every
        file is under one of txplatform's names, Twisted's plugin package,
        or the distribution's metadata.
        """
        from importlib.metadata import PackageNotFoundError, distribution

        try:
            files = distribution("txplatform").files or []
        except PackageNotFoundError:
            if inCI():
                raise
            raise SkipTest("txplatform is not installed here (pip install . first)")
        tops = {f.parts[0] for f in files if not f.parts[0].endswith(".dist-info")}
        tops = {t for t in tops if not t.startswith("__editable__") and t != "__pycache__"}
        self.assertLessEqual(tops - {"twisted", "bin", ".."}, OWN_NAMES)
        editable = any(f.name.startswith("__editable__") for f in files)
        if not editable:  # an editable install holds a path, not files
            plugins = {f.name for f in files if f.parts[:2] == ("twisted", "plugins")}
            self.assertEqual({n for n in plugins if n.endswith(".py")}, {"txplatform_dropin.py"})

    def test_editable(self) -> None:
        """
        C{pip install -e .} in a new virtual environment gives working
        twistd commands, run from another directory: the code is the
        checkout's.
        """
        if shutil.which("pip", path=os.path.dirname(sys.executable)) is None and not inCI():
            raise SkipTest("pip is not available here")
        checkout = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        # Nothing of this environment's may leak in (trial -j sets
        # PYTHONPATH): pip would find Twisted installed and skip it.
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        venv = os.path.abspath(self.mktemp())
        subprocess.run([sys.executable, "-m", "venv", venv], check=True, timeout=120, env=env)
        python = os.path.join(venv, "bin", "python")
        pip = subprocess.run(
            [python, "-m", "pip", "install", "-q", "-e", checkout],
            capture_output=True,
            text=True,
            timeout=240,
            env=env,
        )
        self.assertEqual(pip.returncode, 0, pip.stderr)
        elsewhere = os.path.abspath(self.mktemp())
        os.makedirs(elsewhere)
        where = subprocess.run(
            [python, "-c", "import txplatform_services; print(txplatform_services.__file__)"],
            cwd=elsewhere,
            env=env,
            capture_output=True,
            text=True,
        )
        self.assertTrue(where.stdout.startswith(checkout), where.stdout + where.stderr)
        twistd = os.path.join(venv, "bin", "twistd")
        listing = subprocess.run(
            [twistd, "--help"], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=60
        )
        self.assertEqual(listing.returncode, 0, listing.stderr)
        for command in ["txplatform", "gateway", "account", "post", "notify"]:
            self.assertRegex(listing.stdout, rf"\n\s+{command}\s", listing.stderr)
        helped = subprocess.run(
            [twistd, "account", "--help"], cwd=elsewhere, env=env, capture_output=True, text=True
        )
        self.assertEqual(helped.returncode, 0, helped.stderr)
        self.assertIn("--argon2-time-cost", helped.stdout)
