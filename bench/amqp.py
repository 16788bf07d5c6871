"""
Benchmark of the AMQP transport, with its baselines measured in the same
run (all processes on this machine, the broker included):

  1. RPC calls/s and p50/p99 at 1, 16 and 64 concurrent calls: the bus
     (client and echo server each a process) against a bare txamqp echo
     (client and server written directly on txamqp) and pika's Twisted
     adapter.
  2. The HTTP path at 16 clients (wrk): the gateway -> RabbitMQ -> Post
     service -> back (GET /v1/posts/{id}) with 1 and 2 Post replicas,
     against a bare Klein app making one pika RPC per request to a pika
     echo server.
  3. Resident memory of idle replicas.

    python bench/amqp.py [--duration 5] [--rounds 3] [--write docs/benchmarks.md]

Needs RabbitMQ (rabbitmqctl on the PATH: the run uses a vhost of its own),
PostgreSQL (TXPLATFORM_BENCH_POSTGRES, default postgresql://postgres@127.0.0.1/test),
wrk, and pika (pip install '.[bench]').
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
CHECKOUT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from embedded import http, parseWrk, rss  # noqa: E402

VHOST = "txplatform-bench"
BROKER = f"amqp://guest:guest@127.0.0.1:5672/{VHOST}"
POSTGRES = os.environ.get("TXPLATFORM_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
BEGIN, END = "<!-- amqp:begin -->", "<!-- amqp:end -->"
IMPLS = ["txamqp", "ours", "pika"]
LABELS = {
    "txamqp": "bare txamqp echo (baseline)",
    "ours": "txplatform AMQP bus",
    "pika": "pika Twisted adapter (reference)",
}


def keyFiles(directory: str) -> dict[str, str]:
    """
    Key files for the bus and each service, as txplatform-keys init makes.
    """
    from txplatform.crypto.keyfile import newKeyFile, writeKeyFile

    paths = {}
    for purpose in ("bus", "account", "post", "notify"):
        paths[purpose] = os.path.join(directory, f"{purpose}.json")
        writeKeyFile(paths[purpose], newKeyFile(purpose))
    return paths


#: Held by the benchmark running on this machine (see L{holdRunLock}).
RUN_LOCK = os.path.join(tempfile.gettempdir(), "txplatform-bench.lock")
_held: list[Any] = []


def holdRunLock(path: str = RUN_LOCK) -> Any:
    """
    Hold C{path}'s lock until this process ends, or exit in one line if
    another benchmark holds it.  Two at once share the vhost's queues (one
    run's calls answered by the other's services, which hold other keys:
    an internal error) and each other's cores.  The lock goes with the
    process, however it ends (Python's files are not inherited: the
    processes it started do not keep it).
    """
    held = open(path, "a+")
    try:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        held.seek(0)
        holder = held.read().strip() or "unknown"
        held.close()
        raise SystemExit(
            f"another benchmark is running on this machine (pid {holder}, {path}): wait for"
            " it; two at once share the broker's vhost and the cores"
        ) from None
    held.seek(0)
    held.truncate()
    held.write(f"{os.getpid()}\n")
    held.flush()
    return held


def ensureVhost() -> None:
    """
    The benchmarks' vhost on the local broker, for guest, this run's alone
    while it runs (L{holdRunLock}).
    """
    if not _held:
        _held.append(holdRunLock())
    subprocess.run(["rabbitmqctl", "add_vhost", VHOST], capture_output=True)
    subprocess.run(
        ["rabbitmqctl", "set_permissions", "-p", VHOST, "guest", ".*", ".*", ".*"],
        check=True,
        capture_output=True,
    )


def freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Processes:
    """
    The processes this run started, ended by their pid at the end.
    """

    def __init__(self, logs: Any) -> None:
        self._logs = logs
        self.started: list[subprocess.Popen] = []

    def start(self, *argv: str, ready: str, timeout: float = 60) -> subprocess.Popen:
        env = dict(os.environ, PYTHONPATH=CHECKOUT, PYTHONUNBUFFERED="1")
        log = open(os.path.join(self._logs, f"{len(self.started)}.log"), "w+")
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        process.log = log  # type: ignore[attr-defined]
        self.started.append(process)
        deadline = time.time() + timeout
        while time.time() < deadline:
            log.seek(0)
            output = log.read()
            if re.search(ready, output):
                return process
            if process.poll() is not None:
                raise SystemExit(f"{argv} exited:\n{output}")
            time.sleep(0.1)
        raise SystemExit(f"{argv} not ready after {timeout}s")

    def twistd(self, *argv: str, ready: str) -> subprocess.Popen:
        return self.start(
            sys.executable,
            "-c",
            "from twisted.scripts.twistd import run; run()",
            "-n",
            "--pidfile=",
            *argv,
            ready=ready,
        )

    def stopAll(self) -> None:
        for process in self.started:
            if process.poll() is None:
                process.terminate()
        for process in self.started:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


def rpcClient(impl: str, concurrency: int, duration: float) -> dict[str, float]:
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(HERE, "amqp_echo.py"),
            "client",
            "--impl",
            impl,
            "--url",
            BROKER,
            "--concurrency",
            str(concurrency),
            "--duration",
            str(duration),
        ],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=CHECKOUT),
        timeout=duration + 60,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise SystemExit(f"{impl} client failed:\n{result.stdout}\n{result.stderr}")
    return json.loads(lines[-1])


def wrk(url: str, duration: float) -> dict[str, float]:
    result = subprocess.run(
        ["wrk", "--latency", "-t2", "-c16", f"-d{duration:g}s", "--timeout", "10s", url],
        capture_output=True,
        text=True,
        check=True,
    )
    measured = parseWrk(result.stdout)
    if measured["non2xx"] or measured["socketErrors"]:
        raise SystemExit(f"errors from {url}: {measured}")
    return measured


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--write", help="replace the amqp section of this markdown file")
    arguments = parser.parse_args()
    for tool in ("wrk", "rabbitmqctl"):
        if shutil.which(tool) is None:
            raise SystemExit(f"this benchmark needs {tool}")
    ensureVhost()
    schema = "bench_" + uuid.uuid4().hex[:10]
    database = f"{POSTGRES}?schema={schema}"
    logs = os.path.join("/tmp", f"txplatform-bench-{schema}")
    os.makedirs(logs)
    processes = Processes(logs)
    rpc: dict[tuple[str, int], list[dict[str, float]]] = {}
    web: dict[str, list[dict[str, float]]] = {}
    memory: dict[str, float] = {}
    try:
        for impl in IMPLS:
            processes.start(
                sys.executable,
                os.path.join(HERE, "amqp_echo.py"),
                "server",
                "--impl",
                impl,
                "--url",
                BROKER,
                ready="ready",
            )
        for round in range(arguments.rounds):
            for impl in IMPLS:
                for concurrency in (1, 16, 64):
                    measured = rpcClient(impl, concurrency, arguments.duration)
                    rpc.setdefault((impl, concurrency), []).append(measured)
                    print(
                        f"round {round + 1} rpc {impl} c={concurrency}: {measured['calls_per_s']:.0f}/s",
                        file=sys.stderr,
                    )

        # The HTTP path
        baselinePort = freePort()
        processes.start(
            sys.executable,
            os.path.join(HERE, "klein_pika.py"),
            str(baselinePort),
            BROKER,
            ready="ready",
        )
        keys = keyFiles(os.path.join(logs, "keys"))
        common = ["--bus", BROKER, "--db", database, "--bus-keys", keys["bus"]]
        account = processes.twistd("account", *common, "--keys", keys["account"], ready="serving")
        posts = [processes.twistd("post", *common, "--keys", keys["post"], ready="serving")]
        processes.twistd("notify", *common, "--keys", keys["notify"], ready="serving")
        gatewayPort = freePort()
        gateway = processes.twistd(
            "gateway",
            "--bus",
            BROKER,
            "--bus-keys",
            keys["bus"],
            "--listen",
            f"tcp:{gatewayPort}:interface=127.0.0.1",
            ready="listening",
        )
        time.sleep(2)
        memory = {
            "gateway": rss(gateway.pid)["VmRSS"],
            "account": rss(account.pid)["VmRSS"],
            "post": rss(posts[0].pid)["VmRSS"],
        }
        api = f"http://127.0.0.1:{gatewayPort}"
        status, _ = http(
            "POST",
            api + "/v1/accounts",
            {"username": "author", "email": "author@example.com", "password": "correct horse"},
        )
        assert status == 201, status
        token = http(
            "POST", api + "/v1/sessions", {"username": "author", "password": "correct horse"}
        )[1]["token"]
        status, created = http("POST", api + "/v1/posts", {"body": "benchmark"}, token)
        assert status == 201, status
        postURL = api + f"/v1/posts/{created['id']}"
        for replicas in (1, 2):
            if replicas == 2:
                posts.append(
                    processes.twistd("post", *common, "--keys", keys["post"], ready="serving")
                )
                time.sleep(1)
            for round in range(arguments.rounds):
                for name, url in [
                    ("Klein + pika (baseline)", f"http://127.0.0.1:{baselinePort}/"),
                    (f"gateway, {replicas} Post replica(s)", postURL),
                ]:
                    measured = wrk(url, arguments.duration)
                    web.setdefault(f"{name}|{replicas}", []).append(measured)
                    print(
                        f"round {round + 1} http {name}: {measured['rps']:.0f} req/s",
                        file=sys.stderr,
                    )
    finally:
        processes.stopAll()
        subprocess.run(
            ["psql", POSTGRES, "-q", "-c", f"DROP SCHEMA IF EXISTS {schema} CASCADE"],
            capture_output=True,
        )

    def med(values: list[dict[str, float]], key: str) -> float:
        return statistics.median(v[key] for v in values)

    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()}, {os.cpu_count()} cores,"
        f" Python {platform.python_version()}, RabbitMQ on the same machine; {arguments.rounds}"
        f" rounds of {arguments.duration:g} s per figure, medians.",
        "",
        "RPC, one client process and one echo server process:",
        "",
        "| implementation | concurrent calls | calls/s | vs txamqp | p50 ms | p99 ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for impl in IMPLS:
        for concurrency in (1, 16, 64):
            values = rpc[(impl, concurrency)]
            ratio = med(values, "calls_per_s") / med(rpc[("txamqp", concurrency)], "calls_per_s")
            lines.append(
                f"| {LABELS[impl]} | {concurrency} | {med(values, 'calls_per_s'):.0f} | {ratio:.2f} |"
                f" {med(values, 'p50_ms'):.2f} | {med(values, 'p99_ms'):.2f} |"
            )
    lines += [
        "",
        "HTTP at 16 clients (wrk), one RPC per request:",
        "",
        "| path | req/s | vs Klein + pika | p50 ms | p99 ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for replicas in (1, 2):
        baseline = web[f"Klein + pika (baseline)|{replicas}"]
        ours = web[f"gateway, {replicas} Post replica(s)|{replicas}"]
        lines.append(
            f"| Klein + pika (baseline, measured beside {replicas} replica(s)) | {med(baseline, 'rps'):.0f} | 1.00 |"
            f" {med(baseline, 'p50'):.2f} | {med(baseline, 'p99'):.2f} |"
        )
        lines.append(
            f"| gateway -> RabbitMQ -> Post ({replicas} replica(s)) | {med(ours, 'rps'):.0f} |"
            f" {med(ours, 'rps') / med(baseline, 'rps'):.2f} | {med(ours, 'p50'):.2f} | {med(ours, 'p99'):.2f} |"
        )
    rpc16 = med(rpc[("ours", 16)], "calls_per_s") / med(rpc[("txamqp", 16)], "calls_per_s")
    web1 = med(web["gateway, 1 Post replica(s)|1"], "rps") / med(
        web["Klein + pika (baseline)|1"], "rps"
    )
    lines += [
        "",
        f"The bus at 16 concurrent calls: **{rpc16:.2f}x** the bare txamqp echo (target: at least"
        f" 0.9). The gateway path with one replica: **{web1:.2f}x** Klein + pika (target: at"
        " least 0.75).",
        "",
        "Idle resident memory: "
        + ", ".join(f"{name} {value:.1f} MiB" for name, value in memory.items())
        + " (target for a service replica: under 80 MiB).",
    ]
    report = "\n".join(lines)
    print(report)
    if arguments.write:
        with open(arguments.write, encoding="utf-8") as f:
            document = f.read()
        start, end = document.index(BEGIN) + len(BEGIN), document.index(END)
        with open(arguments.write, "w", encoding="utf-8") as f:
            f.write(document[:start] + "\n" + report + "\n" + document[end:])


if __name__ == "__main__":
    main()
