"""
The benchmark commands docs/benchmarks.md shows: each names a script in
bench/ that takes the options the command gives it, and the section its
--write replaces is in the document.

(Running them takes minutes and a quiet machine, so they run by hand and
write their results into the document; what is checked here is that they
would run as written, and that the parts that decide what they measure,
such as the wrk scripts, do what the document says.)
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SkipTest, TestCase

from .processes import CHECKOUT


def commands() -> list[list[str]]:
    with open(os.path.join(CHECKOUT, "docs", "benchmarks.md"), encoding="utf-8") as f:
        document = f.read()
    found = []
    for block in re.findall(r"```sh\n(.*?)```", document, re.S):
        for line in block.strip().splitlines():
            found.append(shlex.split(line))
    return found


def benchModule(case: TestCase, name: str) -> Any:
    """
    bench/NAME.py, loaded as its own command loads it (bench/ on the path
    for its sibling modules, for the test's duration).
    """
    import importlib.util

    bench = os.path.join(CHECKOUT, "bench")
    case.patch(sys, "path", [bench, *sys.path])
    spec = importlib.util.spec_from_file_location(
        f"bench_{name}", os.path.join(bench, f"{name}.py")
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BenchmarkCommandTests(TestCase):
    def test_runAsWritten(self) -> None:
        """
        Every command is .venv/bin/python bench/SCRIPT.py with options the
        script's --help lists; its section markers are in the document.
        """
        with open(os.path.join(CHECKOUT, "docs", "benchmarks.md"), encoding="utf-8") as f:
            document = f.read()
        seen = commands()
        self.assertGreaterEqual(len(seen), 7)
        for argv in seen:
            self.assertEqual(argv[0], ".venv/bin/python", argv)
            script = os.path.join(CHECKOUT, argv[1])
            self.assertTrue(re.fullmatch(r"bench/\w+\.py", argv[1]), argv)
            result = subprocess.run(
                [sys.executable, script, "--help"],
                capture_output=True,
                text=True,
                timeout=120,
                cwd=CHECKOUT,
            )
            self.assertEqual(result.returncode, 0, result.stderr)
            for option in (a for a in argv[2:] if a.startswith("--")):
                self.assertIn(option, result.stdout, f"{argv[1]} takes no {option}")
            with open(script, encoding="utf-8") as f:
                source = f.read()
            [name] = re.findall(r'BEGIN, END = "<!-- (\w+):begin -->"', source)
            self.assertIn(f"<!-- {name}:begin -->", document, argv[1])
            self.assertIn(f"<!-- {name}:end -->", document, argv[1])


class CPUMeterTests(TestCase):
    def test_processStartedDuringRun(self) -> None:
        """
        bench/production.py's meter counts a process that started during a
        run from its start (a PostgreSQL backend a pool opened under the
        run's load), and one there at both ends by the difference.
        """
        production = benchModule(self, "production")
        used = production.CPUMeter.between(
            {"PostgreSQL": {10: 1.0}, "gateway": {20: 2.0}},
            {"PostgreSQL": {10: 1.5, 11: 0.25}, "gateway": {20: 2.5}},
        )
        self.assertEqual(used, {"PostgreSQL": 0.75, "gateway": 0.5})


class MeasureTests(TestCase):
    def setUp(self) -> None:
        self.production = benchModule(self, "production")
        self.patch(self.production.time, "sleep", lambda seconds: None)
        self.patch(
            self.production,
            "wrk",
            lambda url, connections, duration, script: {"requests": 100, "rps": 10.0},
        )

    def meter(self) -> Any:
        production = self.production

        class Meter:
            snapshots = iter([{"gateway": {1: 1.0}}, {"gateway": {1: 1.232}}])

            def drained(self) -> None:
                pass

            def snapshot(self) -> Any:
                return next(self.snapshots)

            between = staticmethod(production.CPUMeter.between)

        return Meter()

    def test_dividedByTheRequestsHandled(self) -> None:
        """
        With a count of the requests the server handled, the CPU of a run
        is divided by the requests handled in it (those wrk dropped when it
        stopped included), not by wrk's count of those answered.
        """
        counts = iter([1000.0, 1116.0])
        measured = self.production.measure(
            self.meter(), "http://x/", 16, 10.0, None, lambda: next(counts)
        )
        self.assertEqual(measured["handled"], 116.0)
        self.assertEqual(measured["counted"], 116.0)
        self.assertAlmostEqual(measured["cpu_ms"]["gateway"], 2.0)
        self.assertEqual(measured["requests"], 100)

    def test_wrksCountWithoutOne(self) -> None:
        """
        Without one (a baseline's), wrk's count.
        """
        measured = self.production.measure(self.meter(), "http://x/", 16, 10.0, None)
        self.assertEqual(measured["counted"], 100)
        self.assertAlmostEqual(measured["cpu_ms"]["gateway"], 2.32)

    def test_gatewayRequests(self) -> None:
        """
        The gateways' count is the sum of their requests counters over every
        operation, status (a client gone included) and priority.
        """
        import io

        pages = {
            "http://a/metrics": (
                "# TYPE txplatform_gateway_requests_total counter\n"
                'txplatform_gateway_requests_total{operation="login",status="201",priority="2"}'
                " 40.0\n"
                'txplatform_gateway_requests_total{operation="login",status="disconnected",'
                'priority="2"} 3.0\n'
                'txplatform_gateway_requests_created{operation="login",status="201",priority="2"}'
                " 1.7e9\n"
                'txplatform_gateway_request_seconds_count{operation="login"} 43.0\n'
            ),
            "http://b/metrics": (
                'txplatform_gateway_requests_total{operation="getPost",status="200",priority="5"}'
                " 7.0\n"
            ),
        }
        self.patch(
            self.production.urllib.request,
            "urlopen",
            lambda url, timeout: io.BytesIO(pages[url].encode()),
        )
        self.assertEqual(self.production.gatewayRequests(["http://a", "http://b"]), 50.0)


class RunLockTests(TestCase):
    def test_oneAtATime(self) -> None:
        """
        A benchmark holds the machine's run lock while it runs: a second
        one exits in one line naming the first's pid, and the lock is free
        again once the first lets go.
        """
        amqp = benchModule(self, "amqp")
        path = self.mktemp()
        first = amqp.holdRunLock(path)
        self.addCleanup(first.close)
        with self.assertRaises(SystemExit) as raised:
            amqp.holdRunLock(path)
        said = str(raised.exception)
        self.assertIn(f"another benchmark is running on this machine (pid {os.getpid()},", said)
        self.assertNotIn("\n", said)
        first.close()
        amqp.holdRunLock(path).close()


class ThreadCPUTests(TestCase):
    def test_mainAndOthers(self) -> None:
        """
        bench/login_floor.py reads a process's main thread apart from its
        other threads (the bare service's hashing threads): CPU spent in a
        thread of this process counts in the second.
        """
        import threading
        import time

        floor = benchModule(self, "login_floor")
        main, others = floor.threadCPU(os.getpid())

        stop = threading.Event()

        def spin() -> None:
            while not stop.is_set():
                pass

        spinning = threading.Thread(target=spin)
        spinning.start()
        self.addCleanup(spinning.join)
        self.addCleanup(stop.set)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            time.sleep(0.1)
            after = floor.threadCPU(os.getpid())
            if after[1] - others > 0.1:
                break
        self.assertGreaterEqual(after[0], main)
        self.assertGreater(after[1] - others, 0.1)


class FloorRenderTests(TestCase):
    def test_coresOfTheMachine(self) -> None:
        """
        bench/login_floor.py puts logins against the machine's cores / verify
        time, as bench/production.py's table does, one figure to a row.
        """
        table = self.render(verifyAlone=16.0)
        # 4 cores / 16 ms: 250 logins a second; 40 are 16% of it.
        self.assertIn("| logins against cores / verify time | 16% |\n", table + "\n")
        # Against its hashing threads' 20 ms a login: 200 a second.
        self.assertIn(
            "| logins against cores / its hashing threads' CPU a login | 20% |\n", table + "\n"
        )
        for line in table.splitlines()[2:]:
            self.assertEqual(line.count("|"), 3, line)

    def test_theVerifyAloneSlowerThanUnderLoad(self) -> None:
        """
        A verify alone that took longer than the service's own hashing
        threads' under the load was measured on a slower machine: the
        share against it is marked too high, as bench/production.py does
        not let such a share meet its target.
        """
        table = self.render(verifyAlone=25.0)
        self.assertIn(
            "| argon2id verify alone, one at a time (its wall time: the throughput's measure)"
            " | 25.00 ms |",
            table,
        )
        self.assertIn(
            "| logins against cores / verify time | 25% (too high: the verify alone took longer"
            " than the hashing threads' own under the load) |",
            table,
        )
        self.assertNotIn("too high", self.render(verifyAlone=20.0))

    def render(self, verifyAlone: float) -> str:
        """
        The floor's table of one round on four cores: 40 logins a second,
        20 ms its hashing threads' CPU a login, the verify alone
        C{verifyAlone} ms.
        """
        floor = benchModule(self, "login_floor")
        self.patch(floor.os, "cpu_count", lambda: 4)
        round = {
            "rps": 40.0,
            "cpu_ms": {"klein": 1.0, "service": 26.0, "RabbitMQ": 0.5},
            "hashing_ms": 20.0,
            "main_ms": 0.6,
            "argon2": {"cpu_ms": 25.0, "wall_ms": verifyAlone},
        }
        return floor.render([round], "the command")


class PrepareTests(TestCase):
    def test_accountsAndAuthorsInTurn(self) -> None:
        """
        bench/production.py's logins take turns at its login accounts, and
        its created posts at its authors, each followed by the reader whom
        every post mentions: the load of many accounts, not of one.
        """
        production = benchModule(self, "production")
        calls: list[tuple[str, str, Any, str | None]] = []

        def http(method: str, url: str, body: Any = None, token: str | None = None) -> Any:
            calls.append((method, url, body, token))
            if url.endswith("/v1/sessions"):
                return 201, {"token": f"token-of-{body['username']}"}
            if "/v1/me/following/" in url:
                return 204, None
            return 201, {"id": "a-post"}

        self.patch(production, "http", http)
        directory = self.mktemp()
        os.makedirs(directory)
        prepared = production.prepare("http://api", directory, "shape")

        authors = [f"author{n}" for n in range(production.AUTHORS)]
        self.assertEqual(prepared["authors"], authors)
        followed = [url.rpartition("/")[2] for method, url, _, t in calls if method == "PUT"]
        self.assertEqual(followed, authors)
        self.assertTrue(all(t == "token-of-reader" for m, _, _, t in calls if m == "PUT"))

        with open(prepared["scripts"]["create a post"]) as f:
            create = f.read()
        quoted = ", ".join(f'"token-of-{name}"' for name in authors)
        self.assertIn(f"local tokens = {{{quoted}}}", create)
        self.assertIn('"Bearer " .. tokens[n % #tokens + 1]', create)
        self.assertIn(
            f"wrk.body = {json.dumps(json.dumps({'body': production.POST_BODY}))}", create
        )
        self.assertIn("@reader", production.POST_BODY)

        with open(prepared["scripts"]["login"]) as f:
            login = f.read()
        self.assertIn(f"(n % {production.LOGIN_USERS})", login)
        self.assertIn('"username":"user', login)
        made = {body["username"] for m, url, body, _ in calls if url.endswith("/v1/accounts")}
        self.assertTrue({f"user{n}" for n in range(production.LOGIN_USERS)} <= made)


class ScriptsUnderWrkTests(TestCase):
    """
    The wrk scripts bench/production.py writes, run by wrk against a
    server here that notes what each request said.
    """

    def setUp(self) -> None:
        if shutil.which("wrk") is None:
            if os.environ.get("CI"):
                self.fail("wrk is missing (.ci/run installs it)")
            raise SkipTest("wrk is not installed (apt install wrk): it runs the scripts")
        self.production = benchModule(self, "production")
        self.directory = self.mktemp()
        os.makedirs(self.directory)

    @inlineCallbacks
    def seen(self, script: str) -> Any:
        """
        What wrk sent, running C{script} for a second: the requests'
        Authorization headers and bodies.
        """
        from twisted.internet import reactor
        from twisted.internet.utils import getProcessOutputAndValue
        from twisted.web.resource import Resource
        from twisted.web.server import Site

        said: list[tuple[bytes | None, bytes]] = []

        class Noting(Resource):
            isLeaf = True

            def render_POST(self, request: Any) -> bytes:
                said.append((request.getHeader(b"authorization"), request.content.read()))
                return b"{}"

        port = reactor.listenTCP(0, Site(Noting()), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        url = f"http://127.0.0.1:{port.getHost().port}/"
        out, err, code = yield getProcessOutputAndValue(
            "wrk", ["-t1", "-c1", "-d1s", "-s", script, url], env=os.environ
        )
        self.assertEqual(code, 0, err)
        return said

    @inlineCallbacks
    def test_createTakesTurnsAtTheAuthors(self) -> Any:
        """
        The create script posts its body as each token's holder in turn.
        """
        tokens = [f"token{n}" for n in range(5)]
        script = self.production.createScript(self.directory, "t", tokens, "hello @reader")
        said = yield self.seen(script)
        self.assertGreater(len(said), 10)
        # Each in turn (wrk calls request() once more while it starts, so
        # the first one seen may be any).
        sent = [authorization for authorization, _ in said[:10]]
        first = sent[0].decode().removeprefix("Bearer ")
        self.assertIn(first, tokens)
        start = tokens.index(first)
        self.assertEqual(sent, [f"Bearer {tokens[(start + n) % 5]}".encode() for n in range(10)])
        self.assertEqual({json.loads(body)["body"] for _, body in said}, {"hello @reader"})

    @inlineCallbacks
    def test_loginTakesTurnsAtTheAccounts(self) -> Any:
        """
        The login script logs in as each of its accounts in turn.
        """
        script = self.production.loginScript(self.directory, "t", 3)
        said = yield self.seen(script)
        self.assertGreater(len(said), 6)
        names = [json.loads(body)["username"] for _, body in said[:6]]
        start = int(names[0].removeprefix("user"))
        self.assertEqual(names, [f"user{(start + n) % 3}" for n in range(6)])


def loginRounds(*rounds: tuple[float, float, float]) -> list[dict[str, Any]]:
    """
    Login rounds of bench/production.py, each (logins a second, the verify
    alone's wall milliseconds, the verifications' in the Account process).
    """
    return [
        {"rps": rps, "argon2": {"wall_ms": alone}, "verify_in_process_ms": inProcess}
        for rps, alone, inProcess in rounds
    ]


def floorRounds(*rounds: tuple[float, float]) -> list[dict[str, Any]]:
    """
    The floor's rounds, each (logins a second, its hashing threads' CPU
    milliseconds a login).
    """
    return [{"rps": rps, "hashing_ms": hashing} for rps, hashing in rounds]


class LoginThroughputTests(TestCase):
    def test_eachRoundAgainstWhatWasMeasuredBesideIt(self) -> None:
        """
        bench/production.py holds each login round against the verify and
        the floor measured beside it, and reports the medians: a round on a
        slow stretch of the machine is slow for all three.
        """
        production = benchModule(self, "production")
        logins = loginRounds((80, 20, 20), (60, 25, 20), (85, 20, 25))
        floors = floorRounds((90, 18), (75, 25), (85, 20))
        figures = production.loginThroughput(logins, floors, 2)
        # 2 cores / 20 ms: 100 logins a second; 2 / 25 ms: 80.
        self.assertEqual(figures["platform"], 0.8)  # of 0.80, 0.75, 0.85
        self.assertEqual(figures["floor"], 0.9)  # of 0.90, 0.9375, 0.85
        self.assertAlmostEqual(figures["againstFloor"], 80 / 90)  # of 0.889, 0.8, 1.0

    def test_againstTheVerifyAsItRan(self) -> None:
        """
        Each round's logins are also held against the verify as it ran in
        that round (the platform's verifications in the Account process,
        the floor's hashing threads' CPU a login), not the verify alone
        measured after it.
        """
        production = benchModule(self, "production")
        logins = loginRounds((80, 20, 20), (60, 20, 25), (85, 20, 22))
        floors = floorRounds((90, 18), (70, 25), (88, 20))
        figures = production.loginThroughput(logins, floors, 2)
        # 60 logins against 2 / 25 ms (80 a second) is a round as good as
        # 80 against 2 / 20 ms, though the verify alone said 20 ms.
        self.assertEqual(figures["platformLoaded"], 0.8)  # of 0.80, 0.75, 0.935
        self.assertEqual(figures["floorLoaded"], 0.875)  # of 0.81, 0.875, 0.88
        self.assertEqual(figures["platform"], 0.8)  # of 0.80, 0.60, 0.85

    def test_roundsPaired(self) -> None:
        """
        A floor missing for a round is an error, not a shorter median.
        """
        production = benchModule(self, "production")
        logins = loginRounds((80, 20, 20), (80, 20, 20))
        floors = floorRounds((90, 20))
        self.assertRaises(ValueError, production.loginThroughput, logins, floors, 2)


class RenderTests(TestCase):
    def loginLine(self, wallAlone: float) -> str:
        """
        The login's line of bench/production.py's table, rendered from
        made-up rounds of every request and shape: the Account process 22,
        27.5 and 23.1 ms a login, its verify 20, 25 and 21 ms in the
        process; after each round, the verify alone C{wallAlone} ms, and
        20 ms of CPU each two at once.
        """
        import argparse
        from collections import Counter

        production = benchModule(self, "production")
        self.patch(production.os, "cpu_count", lambda: 2)
        processes = ["gateway", "account", "post", "notify", "RabbitMQ", "PostgreSQL"]

        def round(rps: float, **extra: Any) -> dict[str, Any]:
            return {
                "rps": rps,
                "failed": 0,
                "p50": 1.0,
                "p99": 2.0,
                "cpu_total_ms": 2000 / rps,
                "cpu_ms": {p: 0.1 for p in [*processes, "PostgreSQL background", "all-in-one"]},
                "notifications_per_post": 1.0,
                "hashing_ms": 20.0,
                **extra,
            }

        results: dict[str, list[dict[str, Any]]] = {}
        for shape in production.SHAPES:
            for name in [
                *production.requestsOf(shape),
                "Klein + pika (baseline)",
                "Klein hello world (baseline)",
            ]:
                results[f"{shape}|{name}"] = [round(1000.0)] * 3
        results["production|login"] = [
            round(
                rps,
                cpu_ms={"account": account},
                hashing_ms=hashing,
                verify_in_process_ms=hashing,
                argon2={"cpu_ms": 20.0, "wall_ms": wallAlone},
            )
            for rps, account, hashing in [(80.0, 22.0, 20.0), (64.0, 27.5, 25.0), (77, 23.1, 21)]
        ]
        results[f"production|{production.FLOOR}"] = [
            round(rps, hashing_ms=hashing) for rps, hashing in [(90, 20.0), (72, 25.0), (84, 21)]
        ]
        messages = {
            shape: {name: Counter({"txplatform.rpc": 1}) for name in production.requestsOf(shape)}
            for shape in production.SHAPES
        }
        arguments = argparse.Namespace(rounds=3, duration=10.0, connections=16)
        report = production.render(arguments, results, messages)
        return next(line for line in report.splitlines() if line.startswith("- login:"))

    def test_theLoginTargets(self) -> None:
        """
        The login's figures against the verify alone (the targets' measure)
        and against the verify as each round ran it.
        """
        login = self.loginLine(wallAlone=20.0)
        # Against the verify alone: 1.10x, 1.375x, 1.155x; 80%, 64%, 77%.
        self.assertIn(
            "1.16x (median of the rounds' ratios; target at most 1.1): **not met**", login
        )
        self.assertIn(
            "logins at 77% of cores / verify time (20.0 ms alone; target at least 85%):"
            " **not met**, where",
            login,
        )
        # Against the verify as it ran: 1.10x each; 80%, 80%, 80.85%.
        self.assertIn("the account process was at 1.10x (rounds 1.10x to 1.10x;", login)
        self.assertIn("against the verify alone rounds 1.10x to 1.38x)", login)
        self.assertIn("the logins at 80% of cores / verify time, the floor's at 90%", login)
        # Every round busy: 2 cores / its logins is the CPU a login cost
        # (25, 31.25 and 25.97 ms; the floor's 22.22, 27.78 and 23.81 ms),
        # less its verifies (20, 25 and 21 ms); 85% of 2 / 20 ms leaves
        # 20 / 0.85 - 20 ms.
        self.assertIn("so 85% leaves 3.53 ms of CPU a login", login)
        self.assertIn("the platform spent 5.00 ms on it, the floor 2.78.", login)

    def test_theVerifyAloneSlowerThanUnderLoad(self) -> None:
        """
        A verify alone that took longer than the Account process's own
        verifications under the load (21 ms, the rounds' median) was
        measured on a slower machine than the rounds ran on: the logins'
        share of a capacity the machine did not have then is too high, and
        cannot meet the target; one short of it even so does not.
        """
        login = self.loginLine(wallAlone=24.0)
        # 80, 64 and 77 logins a second against 2 / 24 ms: 96%, 77%, 92%.
        self.assertIn("logins at 92% of cores / verify time (24.0 ms alone;", login)
        self.assertIn(
            "target at least 85%): not judged here: the verify alone, measured after each"
            " round, took longer than the Account process's own verifications under the load,"
            " two at once (21.0 ms)",
            login,
        )
        self.assertNotIn("85%): met", login)
        # Too high, and short of the target even so (86%, 69%, 83%): not
        # met.
        self.assertIn(
            "logins at 83% of cores / verify time (21.5 ms alone; target at least 85%):"
            " **not met**, where",
            self.loginLine(21.5),
        )


class DocumentTablesTests(TestCase):
    def test_rowsAsWideAsTheirHeader(self) -> None:
        """
        Every row of every table in docs/benchmarks.md has as many cells as
        its header: a figure appended to one row too many (a history
        column, say) lands in a table where it does not belong.
        """
        with open(os.path.join(CHECKOUT, "docs", "benchmarks.md"), encoding="utf-8") as f:
            lines = f.read().splitlines()
        tables = 0
        for number, line in enumerate(lines):
            if not re.fullmatch(r"(\|-+)+\|", line.replace(":", "")):
                continue
            tables += 1
            width = lines[number - 1].count("|")
            self.assertEqual(line.count("|"), width, f"line {number + 1}")
            for row in range(number + 1, len(lines)):
                if not lines[row].startswith("|"):
                    break
                self.assertEqual(lines[row].count("|"), width, f"line {row + 1}")
        self.assertGreaterEqual(tables, 10)
