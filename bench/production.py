"""
What a request costs across every process, on the production shape and on
the embedded all-in-one, with the baselines measured in the same run:

  - production: one gateway, one replica each of Account, Post and Notify
    (twistd processes), RabbitMQ and PostgreSQL, all on this machine;
  - direct: the same processes calling one another over the direct
    transport (each at the 127.x.y.z address its service id gives, with
    identities made by txplatform-channel keygen), events still through
    RabbitMQ: what the broker costs the calls;
  - embedded: twistd -n txplatform (SQLite, the in-process bus);
  - baselines: Klein's hello world, a bare Klein app making one pika RPC
    per request, one argon2id verify at the Account service's parameters
    (in this process), and beside each production login round the login's
    floor (bench/login_floor.py: the same logins through a bare Klein app
    and pika to a service that only verifies).

Each of login (POST /v1/sessions, as 32 accounts in turn), create a post
(POST /v1/posts, as 32 authors in turn, a body mentioning a reader who
follows every author: one notification each, the mention, which wins over
the followed post), read a post (GET /v1/posts/{id}) and read one's
notifications (GET /v1/notifications) runs under wrk at --connections,
--rounds times; the figures are medians.  CPU is read from /proc for every
process involved, RabbitMQ's and PostgreSQL's included, from the start of a
run until the work it caused has drained (notifications are made after the
201), and divided by the requests handled: the platform's gateways count
them (with the one each connection still has in flight when wrk stops,
which wrk drops from its count but whose work is done), the baselines'
requests are wrk's count (thousands a run: the difference is nothing),
the login's floor counts its own.  PostgreSQL's CPU is in two
columns: the backends serving the platform's connections (with the
postmaster), and its background processes (checkpointer, background
writer, WAL writer, autovacuum), whose work for one run's writes falls
into whichever later run it meets.  Posts and notifications are
counted in the databases around each create run: every post made must have
its notification.  The messages each request puts through the broker are counted in a
separate, sequential pass with RabbitMQ's firehose (the firehose costs the
broker, so it is off while timing).

    python bench/production.py [--duration 10] [--rounds 3] [--connections 16]
        [--write docs/benchmarks.md | [--only REQUEST] [--shapes production,direct]]

Needs RabbitMQ (rabbitmqctl on the PATH: the run uses a vhost of its own),
PostgreSQL (TXPLATFORM_BENCH_POSTGRES, default
postgresql://postgres@127.0.0.1/test; psql on the PATH), wrk, and pika
(pip install '.[bench]').
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from typing import Any, Callable

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from amqp import BROKER, POSTGRES, VHOST, Processes, ensureVhost, freePort, keyFiles  # noqa: E402
from embedded import PASSWORD, http, luaScript, platformCommand, waitForHTTP  # noqa: E402
from sections import writeSection  # noqa: E402

from txplatform_gateway.admission import Admission  # noqa: E402

BEGIN, END = "<!-- production:begin -->", "<!-- production:end -->"
#: What each created post says: it mentions the reader, who follows its
#: author too (one notification: the mention wins over the followed post).
POST_BODY = "hello @reader"
#: The accounts the login runs take turns at.
LOGIN_USERS = 32
#: The authors the create runs take turns at, each followed by the reader
#: (a platform's posts come from many authors: Notify asks for the
#: audiences of all the authors of the posts it takes together).
AUTHORS = 32
REQUESTS = ["login", "create a post", "read a post", "read notifications"]
#: The read of a post through a gateway that keeps nothing (--read-cache 0):
#: the path through RabbitMQ to the Post service, measured in the
#: production shape beside the read as shipped.
UNCACHED = "read a post, gateway cache off"
#: The least a Python service on RabbitMQ spends on a login beside its
#: verify (bench/login_floor.py), measured beside each production login
#: round: what the logins' throughput is held against moves with the
#: machine, and the floor moves with it.
FLOOR = "login floor (baseline)"
#: The deployments measured: services on RabbitMQ; the same services
#: calling one another over the direct transport (events still on
#: RabbitMQ); the embedded all-in-one.
SHAPES = ["production", "direct", "embedded"]
#: Each platform process's service id, for its address on the direct
#: transport (127.x.y.z, from the id) and its identity.
SERVICE_IDS = {"account": "010001", "post": "010002", "notify": "010003", "gateway": "010100"}
_TICK = os.sysconf("SC_CLK_TCK")
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


# CPU, from /proc


def _cpu(pid: int) -> float | None:
    """
    Seconds of CPU C{pid} has used (all its threads), or None if it is gone.
    """
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / _TICK


#: What PostgreSQL's own processes call themselves (their process titles):
#: work done for earlier writes (checkpoints, autovacuum) whenever it comes.
_BACKGROUND = ("checkpointer", "background writer", "walwriter", "autovacuum", "logical repl")


def _postgres(background: bool) -> list[int]:
    """
    PostgreSQL's processes: the postmaster and the backends serving
    connections, or (C{background}) those working on their own schedule.
    """
    found = []
    for pid in _pidsNamed("postgres"):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                title = f.read().decode("utf-8", "replace")
        except OSError:
            continue
        if any(f": {marker}" in title for marker in _BACKGROUND) == background:
            found.append(pid)
    return found


def _pidsNamed(name: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as f:
                    if f.read().strip() == name:
                        found.append(int(entry))
            except OSError:
                pass
    return found


class CPUMeter:
    """
    CPU seconds of named groups of processes: a fixed pid each, or every
    process of a name (RabbitMQ's beam.smp, PostgreSQL's postgres).  A
    process that started during a measure counts from its start: a
    service's pool opening connections under the first load of a run
    starts PostgreSQL backends, whose work is that run's.  (One that ended
    during a measure cannot be read at its end, and is not counted.)
    """

    def __init__(self, groups: dict[str, Callable[[], list[int]]]) -> None:
        self.groups = groups

    def snapshot(self) -> dict[str, dict[int, float]]:
        taken = {}
        for name, pids in self.groups.items():
            taken[name] = {pid: cpu for pid in pids() if (cpu := _cpu(pid)) is not None}
        return taken

    @staticmethod
    def between(
        before: dict[str, dict[int, float]], after: dict[str, dict[int, float]]
    ) -> dict[str, float]:
        used = {}
        for name, pids in after.items():
            used[name] = sum(cpu - before[name].get(pid, 0.0) for pid, cpu in pids.items())
        return used

    def drained(self, idle: float = 0.01, interval: float = 0.5, limit: float = 60.0) -> None:
        """
        Wait until the processes go quiet: less than C{idle} s of CPU in an
        C{interval}, together (the work a run left queued is done).
        """
        deadline = time.time() + limit
        last = self.snapshot()
        while time.time() < deadline:
            time.sleep(interval)
            now = self.snapshot()
            if sum(self.between(last, now).values()) < idle:
                return
            last = now


# wrk


def wrk(url: str, connections: int, duration: float, script: str | None) -> dict[str, float]:
    command = [
        "wrk",
        "--latency",
        "-t2",
        f"-c{connections}",
        f"-d{duration:g}s",
        "--timeout",
        "10s",
    ]
    if script:
        command += ["-s", script]
    output = subprocess.run(command + [url], capture_output=True, text=True, check=True).stdout

    def latency(percent: str) -> float:
        match = re.search(rf"^\s+{percent}%\s+([\d.]+)(us|ms|s)\s*$", output, re.M)
        assert match, output
        return float(match.group(1)) * _UNITS[match.group(2)]

    total = int(re.search(r"(\d+) requests in", output).group(1))
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)),
        "p50": latency("50"),
        "p99": latency("99"),
        "requests": total,
        "failed": int(errors.group(1)) if errors else 0,
    }


def measure(
    meter: CPUMeter,
    url: str,
    connections: int,
    duration: float,
    script: str | None,
    handled: Callable[[], float] | None = None,
) -> dict[str, Any]:
    """
    One wrk run at C{url}, and the CPU of C{meter}'s processes from its
    start until the work it caused drained, per request.

    wrk counts the requests answered within its duration, and drops the
    one each connection still has in flight when it stops; the processes
    go on to do their work, which the CPU counted until drained includes.
    With C{handled} (what reads the number of requests the server has
    handled so far, those whose client went away included), the CPU is
    divided by the requests handled in the run instead: wrk's count would
    put the work of up to C{connections} more requests on those it
    counted (2% of a 10 s login run at 16 connections).
    """
    meter.drained()
    # Each request type is measured alone: the gateway's admission keeps a
    # busy reactor for a higher class it saw in the last reserveFor
    # seconds (the previous run's logins or writes), which would refuse
    # the first reads of a run that began at once.
    time.sleep(Admission.reserveFor + 0.5)
    # Read outside the CPU's window: reading it is a request too.
    handledBefore = handled() if handled is not None else 0.0
    before = meter.snapshot()
    result = wrk(url, connections, duration, script)
    meter.drained()
    used = meter.between(before, meter.snapshot())
    if handled is not None:
        result["handled"] = handled() - handledBefore
    # What the CPU is divided by.
    counted = result["counted"] = max(result.get("handled", result["requests"]), 1)
    result["cpu_ms"] = {name: seconds * 1000 / counted for name, seconds in used.items()}
    result["cpu_total_ms"] = sum(result["cpu_ms"].values())
    return result


def hashingCPU(metricsURL: str) -> tuple[float, float]:
    """
    The argon2id verifications a process has done and the CPU seconds its
    hashing threads spent on them, from its /metrics.
    """
    with urllib.request.urlopen(f"{metricsURL}/metrics", timeout=10) as response:
        text = response.read().decode("utf-8")
    found = {}
    for name in ("account_password_hashings_total", "account_password_hashing_cpu_seconds_total"):
        match = re.search(rf'^{name}{{operation="verify"}} (\S+)$', text, re.M)
        found[name] = float(match.group(1)) if match else 0.0
    return (
        found["account_password_hashings_total"],
        found["account_password_hashing_cpu_seconds_total"],
    )


def gatewayRequests(metricsURLs: list[str]) -> float:
    """
    The requests the gateways at C{metricsURLs} have handled (answered, or
    their client went away first), from their /metrics.
    """
    total = 0.0
    for url in metricsURLs:
        with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
            text = response.read().decode("utf-8")
        total += sum(
            float(value)
            for value in re.findall(
                r"^txplatform_gateway_requests_total\{[^}]*\} (\S+)$", text, re.M
            )
        )
    return total


# The platform's requests


def requestsOf(shape: str) -> list[str]:
    """
    The requests measured in C{shape}: the uncached read in production
    only (its second gateway would need an address of its own on the
    direct transport, and the all-in-one has one gateway).
    """
    return [*REQUESTS, UNCACHED] if shape == "production" else REQUESTS


def prepare(api: str, directory: str, tag: str, uncached: str | None = None) -> dict[str, Any]:
    """
    L{AUTHORS} authors, each followed by a reader, and L{LOGIN_USERS}
    accounts to log in as: the tokens of the authors and the reader, a
    post to read, and the wrk scripts of the four requests (and of the
    read through the gateway at C{uncached}, if given).
    """
    authors = [f"author{n}" for n in range(AUTHORS)]
    for name in [*authors, "reader", *(f"user{n}" for n in range(LOGIN_USERS))]:
        body = {"username": name, "email": f"{name}@example.com", "password": PASSWORD}
        status, _ = http("POST", api + "/v1/accounts", body)
        assert status == 201, (status, _)
    tokens = {
        name: http("POST", api + "/v1/sessions", {"username": name, "password": PASSWORD})[1][
            "token"
        ]
        for name in [*authors, "reader"]
    }
    for name in authors:
        status, _ = http("PUT", api + f"/v1/me/following/{name}", token=tokens["reader"])
        assert status == 204, status
    status, created = http("POST", api + "/v1/posts", {"body": POST_BODY}, tokens[authors[0]])
    assert status == 201, status
    extra = {UNCACHED: uncached + f"/v1/posts/{created['id']}"} if uncached else {}
    return {
        "tokens": tokens,
        "authors": authors,
        "urls": {
            "login": api + "/v1/sessions",
            "create a post": api + "/v1/posts",
            "read a post": api + f"/v1/posts/{created['id']}",
            "read notifications": api + "/v1/notifications",
            **extra,
        },
        "scripts": {
            "login": loginScript(directory, tag, LOGIN_USERS),
            "create a post": createScript(
                directory, tag, [tokens[name] for name in authors], POST_BODY
            ),
            "read a post": None,
            UNCACHED: None,
            "read notifications": luaScript(
                directory, f"{tag}-notifications", "GET", None, tokens["reader"]
            ),
        },
    }


def startPlatform(
    processes: Processes, shape: str, keys: dict[str, str], database: str, logs: str
) -> tuple[dict[str, subprocess.Popen], str, str | None, int]:
    """
    One gateway and one replica of each service, as twistd processes: on
    RabbitMQ (C{shape} production), or calling one another over the direct
    transport (C{shape} direct), as docs/deployment.md deploys it on one
    host, each at the 127.x.y.z address its id gives, events on RabbitMQ.
    In production, a second gateway too, which keeps nothing it read
    (C{--read-cache 0}).  The processes, the gateways' addresses (the
    second's None), the Account process's metrics port and the gateways'
    metrics addresses.
    """
    if shape == "direct":
        identities, trust = os.path.join(logs, "identities"), os.path.join(logs, "trust.json")
        os.makedirs(identities, exist_ok=True)
        for name in SERVICE_IDS:
            subprocess.run(
                [
                    os.path.join(os.path.dirname(sys.executable), "txplatform-channel"),
                    "keygen",
                    os.path.join(identities, name),
                    "--service",
                    name,
                    "--trust",
                    trust,
                ],
                check=True,
                capture_output=True,
            )
        port = _directPort()

        def bus(name: str) -> list[str]:
            return [
                "--bus",
                f"direct:127.0.0.0/8?port={port}",
                "--event-bus",
                BROKER,
                "--identity",
                os.path.join(identities, name),
                "--trust",
                trust,
            ]
    else:

        def bus(name: str) -> list[str]:
            return ["--bus", BROKER]

    accountMetrics = freePort()
    started = {
        name: processes.twistd(
            name,
            *bus(name),
            "--db",
            database,
            "--bus-keys",
            keys["bus"],
            "--keys",
            keys[name],
            *(
                ["--metrics", f"tcp:{accountMetrics}:interface=127.0.0.1"]
                if name == "account"
                else []
            ),
            ready="serving",
        )
        for name in ("account", "post", "notify")
    }

    gatewayMetrics: list[str] = []

    def gateway(name: str, *options: str) -> str:
        port, metrics = freePort(), freePort()
        started[name] = processes.twistd(
            "gateway",
            *bus("gateway"),
            "--bus-keys",
            keys["bus"],
            *options,
            "--listen",
            f"tcp:{port}:interface=127.0.0.1",
            "--metrics",
            f"tcp:{metrics}:interface=127.0.0.1",
            ready="listening",
        )
        gatewayMetrics.append(f"http://127.0.0.1:{metrics}")
        return f"http://127.0.0.1:{port}"

    api = gateway("gateway")
    uncached = (
        gateway("gateway, cache off", "--read-cache", "0")
        if UNCACHED in requestsOf(shape)
        else None
    )
    return started, api, uncached, accountMetrics, gatewayMetrics


def _directPort() -> int:
    """
    A port free on every platform process's direct-transport address (each
    listens on the address its id gives, all on one port).
    """
    from txplatform.direct.addresses import AddressBook
    from txplatform.serviceid import ServiceId

    book = AddressBook("127.0.0.0/8")
    first, *others = [book.derivedHost(ServiceId.fromHex(i)) for i in SERVICE_IDS.values()]
    for _ in range(100):
        # One the kernel gives the first address, if the others have it too.
        with socket.socket() as s:
            s.bind((first, 0))
            port = s.getsockname()[1]
        if all(_bindable(host, port) for host in others):
            return port
    raise RuntimeError("no port is free on every direct-transport address")


def _bindable(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def accountHasher() -> Any:
    """
    argon2-cffi's hasher at the Account service's default parameters.
    """
    from argon2 import PasswordHasher

    from txplatform_services.account.passwords import Argon2Parameters

    parameters = Argon2Parameters()
    return PasswordHasher(
        time_cost=parameters.timeCost,
        memory_cost=parameters.memoryCost,
        parallelism=parameters.parallelism,
    )


def argon2Baseline() -> dict[str, float]:
    """
    argon2id verifies at the Account service's default parameters: the
    wall time of one alone, and the CPU of one while another runs beside
    it, as the Account service runs them (two checks at once on two cores,
    each contending for the memory the other uses); medians.
    """
    import threading

    argon2 = accountHasher()
    hashed = argon2.hash(PASSWORD)
    wall = []
    for _ in range(20):
        w = time.perf_counter()
        argon2.verify(hashed, PASSWORD)
        wall.append((time.perf_counter() - w) * 1000)
    cpu = []
    for _ in range(5):
        started = time.process_time()
        threads = [
            threading.Thread(target=lambda: [argon2.verify(hashed, PASSWORD) for _ in range(10)])
            for _ in range(2)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        cpu.append((time.process_time() - started) * 1000 / 20)
    return {"cpu_ms": statistics.median(cpu), "wall_ms": statistics.median(wall)}


def loginScript(directory: str, tag: str, users: int) -> str:
    """
    A wrk script logging in as user0 ... user<users - 1> in turn: many
    accounts, as a platform's logins are (one account's checks are held
    to two at a time by its throttle).
    """
    path = os.path.join(directory, f"{tag}-login.lua")
    with open(path, "w") as f:
        f.write(
            'wrk.method = "POST"\n'
            'wrk.headers["Content-Type"] = "application/json"\n'
            "local n = 0\n"
            "request = function()\n"
            "  n = n + 1\n"
            f'  local body = \'{{"username":"user\' .. (n % {users}) .. \'",'
            f'"password":"{PASSWORD}"}}\'\n'
            "  return wrk.format(nil, nil, nil, body)\n"
            "end\n"
        )
    return path


def createScript(directory: str, tag: str, tokens: list[str], body: str) -> str:
    """
    A wrk script creating posts saying C{body} as the holders of C{tokens}
    in turn.
    """
    path = os.path.join(directory, f"{tag}-create.lua")
    quoted = ", ".join(f'"{token}"' for token in tokens)
    with open(path, "w") as f:
        f.write(
            'wrk.method = "POST"\n'
            'wrk.headers["Content-Type"] = "application/json"\n'
            f"wrk.body = {json.dumps(json.dumps({'body': body}))}\n"
            f"local tokens = {{{quoted}}}\n"
            "local n = 0\n"
            "request = function()\n"
            "  n = n + 1\n"
            '  wrk.headers["Authorization"] = "Bearer " .. tokens[n % #tokens + 1]\n'
            "  return wrk.format()\n"
            "end\n"
        )
    return path


def countMessages(api: str, prepared: dict[str, Any], each: int = 20) -> dict[str, Counter[str]]:
    """
    The messages each request puts through the broker, by exchange, per
    request: RabbitMQ's firehose on, C{each} requests one after another.
    """
    import pika

    subprocess.run(["rabbitmqctl", "trace_on", "-p", VHOST], check=True, capture_output=True)
    connection = pika.BlockingConnection(pika.URLParameters(BROKER))
    channel = connection.channel()
    queue = channel.queue_declare("", exclusive=True).method.queue
    channel.queue_bind(queue, "amq.rabbitmq.trace", "publish.#")
    counts: dict[str, Counter[str]] = {}
    try:
        for name in prepared["urls"]:
            channel.queue_purge(queue)
            url = prepared["urls"][name]
            tokens = prepared["tokens"]
            for n in range(each):
                if name == "login":
                    # As the runs take turns at the accounts.
                    username = f"user{n % LOGIN_USERS}"
                    status, _ = http("POST", url, {"username": username, "password": PASSWORD})
                elif name == "create a post":
                    # One author: each of these few posts by another would
                    # be the first request of its token, checked with
                    # Account (the token's check, counted apart), where
                    # under the runs' load each token is checked once a
                    # second for hundreds of posts.
                    author = prepared["authors"][0]
                    status, _ = http("POST", url, {"body": POST_BODY}, tokens[author])
                elif name in ("read a post", UNCACHED):
                    status, _ = http("GET", url)
                else:
                    status, _ = http("GET", url, token=tokens["reader"])
                assert status in (200, 201), (name, status)
            time.sleep(2)  # the events and notifications that follow
            seen: Counter[str] = Counter()
            while True:
                method, _, _ = channel.basic_get(queue, auto_ack=True)
                if method is None:
                    break
                exchange = method.routing_key.removeprefix("publish.") or "(default: replies)"
                seen[exchange] += 1
            counts[name] = Counter({k: v / each for k, v in seen.items()})
    finally:
        connection.close()
        subprocess.run(["rabbitmqctl", "trace_off", "-p", VHOST], capture_output=True)
    return counts


def _said(sent: Counter[str]) -> str:
    """
    The messages of a request, in all and by exchange.
    """
    if not sent:
        return "0"
    said = ", ".join(f"{k} {v:g}" for k, v in sorted(sent.items()))
    return f"{sum(sent.values()):g} ({said})"


def countInPostgres(schema: str) -> tuple[int, int]:
    """
    Posts and notifications, in the production shape's database.
    """
    query = f"SELECT (SELECT count(*) FROM {schema}.posts), (SELECT count(*) FROM {schema}.notifications)"
    result = subprocess.run(
        ["psql", POSTGRES, "-tAc", query], capture_output=True, text=True, check=True
    )
    posts, notifications = result.stdout.strip().split("|")
    return int(posts), int(notifications)


def countInSQLite(dataDir: str) -> tuple[int, int]:
    counts = []
    for name, table in [("post", "posts"), ("notify", "notifications")]:
        with sqlite3.connect(f"file:{dataDir}/{name}.sqlite?mode=ro", uri=True) as db:
            counts.append(db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    return counts[0], counts[1]


def runShape(
    meter: CPUMeter,
    prepared: dict[str, Any],
    arguments: argparse.Namespace,
    results: dict[str, list[dict[str, Any]]],
    label: str,
    counts: Callable[[], tuple[int, int]],
    baselines: dict[str, tuple[str, CPUMeter]],
    metricsURL: str,
    handled: Callable[[], float],
    floor: tuple[Any, CPUMeter] | None = None,
) -> None:
    """
    The rounds of C{label}'s requests, each beside C{baselines} (and the
    login beside C{floor}); C{handled} reads how many requests the
    platform has handled (L{measure}).
    """
    perPost = None
    for round in range(arguments.rounds):
        wanted = [arguments.only] if arguments.only else requestsOf(label)
        for name in [n for n in wanted if n in requestsOf(label)]:
            before = counts() if name == "create a post" else (0, 0)
            hashedBefore = hashingCPU(metricsURL) if name == "login" else (0.0, 0.0)
            measured = measure(
                meter,
                prepared["urls"][name],
                arguments.connections,
                arguments.duration,
                prepared["scripts"][name],
                handled,
            )
            if name == "login":
                # What the verifications cost inside the Account process,
                # under this load: the rest of its CPU is the rest of a
                # login.
                hashed = hashingCPU(metricsURL)
                measured["verify_in_process_ms"] = (
                    (hashed[1] - hashedBefore[1]) * 1000 / max(hashed[0] - hashedBefore[0], 1)
                )
                measured["hashing_ms"] = (hashed[1] - hashedBefore[1]) * 1000 / measured["counted"]
                # Beside each login run, as the machine's speed drifts.
                measured["argon2"] = argon2Baseline()
            if name == "create a post":
                after = counts()
                posts, notified = after[0] - before[0], after[1] - before[1]
                measured["notifications_per_post"] = notified / max(posts, 1)
                perPost = measured["notifications_per_post"]
            results.setdefault(f"{label}|{name}", []).append(measured)
            print(
                f"round {round + 1} {label} {name}: {measured['rps']:.0f} req/s,"
                f" {measured['cpu_total_ms']:.2f} ms CPU/request, {measured['failed']} not 2xx,"
                f" {measured['counted']:.0f} handled ({measured['requests']} in wrk's count)"
                + (f", {perPost:.2f} notifications/post" if name == "create a post" else "")
                + " ("
                + ", ".join(f"{process} {ms:.2f}" for process, ms in measured["cpu_ms"].items())
                + ")"
                + (
                    f"; argon2id in the process {measured['verify_in_process_ms']:.2f} ms a verify,"
                    f" alone {measured['argon2']['cpu_ms']:.2f}"
                    if name == "login"
                    else ""
                ),
                file=sys.stderr,
            )
            if name == "login" and floor is not None:
                # Beside each login run too, after the verify alone.
                floored = floor[0].round(floor[1], arguments.connections, arguments.duration)
                results.setdefault(f"{label}|{FLOOR}", []).append(floored)
                print(
                    f"round {round + 1} {label} {FLOOR}: {floored['rps']:.0f} req/s,"
                    f" {floored['cpu_total_ms']:.2f} ms CPU/request (service main thread"
                    f" {floored['main_ms']:.2f}, hashing {floored['hashing_ms']:.2f})",
                    file=sys.stderr,
                )
        for baseline, (url, own) in baselines.items():
            # Its own processes counted, as the platform's are.
            measured = measure(own, url, arguments.connections, arguments.duration, None)
            results.setdefault(f"{label}|{baseline}", []).append(measured)
            print(
                f"round {round + 1} {label} {baseline}: {measured['rps']:.0f} req/s,"
                f" {measured['cpu_total_ms']:.2f} ms CPU/request",
                file=sys.stderr,
            )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--write", help="replace the production section of this markdown file")
    parser.add_argument(
        "--only",
        choices=[*REQUESTS, UNCACHED],
        help="measure only this request (beside the baselines), print each round and stop: to"
        " compare two checkouts of the code in one sitting",
    )
    parser.add_argument(
        "--shapes",
        default=",".join(SHAPES),
        help="which deployments to measure, of " + ", ".join(SHAPES) + " (default: all)",
    )
    arguments = parser.parse_args()
    arguments.shapes = arguments.shapes.split(",")
    unknown = sorted(set(arguments.shapes) - set(SHAPES))
    if unknown:
        parser.error(f"no shape {', '.join(unknown)}; the shapes are {', '.join(SHAPES)}")
    if arguments.only and arguments.write:
        parser.error("--only measures part of the table: it cannot --write it")
    if arguments.write and set(arguments.shapes) != set(SHAPES):
        parser.error("--shapes measures part of the table: it cannot --write it")
    for tool in ("wrk", "rabbitmqctl", "psql"):
        if shutil.which(tool) is None:
            raise SystemExit(f"this benchmark needs {tool}")
    ensureVhost()
    run = uuid.uuid4().hex[:10]
    schemas = {shape: f"bench_{run}_{shape}" for shape in ("production", "direct")}
    logs = tempfile.mkdtemp(prefix="txplatform-production-")
    processes = Processes(logs)
    results: dict[str, list[dict[str, Any]]] = {}
    messages: dict[str, dict[str, Counter[str]]] = {}
    rabbit = lambda: _pidsNamed("beam.smp")  # noqa: E731
    postgres = lambda: _postgres(background=False)  # noqa: E731
    postgresBackground = lambda: _postgres(background=True)  # noqa: E731
    try:
        # The baselines, each its own process.
        helloPort, pikaPort = freePort(), freePort()
        hello = processes.start(
            sys.executable,
            os.path.join(HERE, "klein_hello.py"),
            str(helloPort),
            ready="Site starting",
        )
        echo = processes.start(
            sys.executable,
            os.path.join(HERE, "amqp_echo.py"),
            "server",
            "--impl",
            "pika",
            "--url",
            BROKER,
            ready="ready",
        )
        bare = processes.start(
            sys.executable,
            os.path.join(HERE, "klein_pika.py"),
            str(pikaPort),
            BROKER,
            ready="ready",
        )

        floor = None
        if "production" in arguments.shapes and arguments.only in (None, "login"):
            from login_floor import Floor

            bareLogin = Floor(processes, logs)
            floor = (
                bareLogin,
                CPUMeter(
                    {
                        "gateway": lambda: [bareLogin.web.pid],
                        "account": lambda: [bareLogin.service.pid],
                        "RabbitMQ": rabbit,
                    }
                ),
            )

        # Production, then the same with calls over the direct transport.
        keys = keyFiles(os.path.join(logs, "keys"))
        for shape in ("production", "direct"):
            if shape not in arguments.shapes:
                continue
            started, api, uncached, accountMetrics, gatewayMetrics = startPlatform(
                processes, shape, keys, f"{POSTGRES}?schema={schemas[shape]}", logs
            )
            prepared = prepare(api, logs, shape, uncached)
            if not arguments.only:
                messages[shape] = countMessages(api, prepared)
                for name, sent in messages[shape].items():
                    print(f"{shape} {name}: {_said(sent)} broker messages/request", file=sys.stderr)
            pids: dict[str, list[int]] = {}
            for name, process in started.items():
                # Both gateways' CPU is the gateway's: the one idle counts.
                pids.setdefault(name.split(",")[0], []).append(process.pid)
            groups: dict[str, Callable[[], list[int]]] = {
                name: (lambda own=own: own) for name, own in pids.items()
            }
            groups.update(
                {
                    "RabbitMQ": rabbit,
                    "PostgreSQL": postgres,
                    "PostgreSQL background": postgresBackground,
                }
            )
            runShape(
                CPUMeter(groups),
                prepared,
                arguments,
                results,
                shape,
                lambda schema=schemas[shape]: countInPostgres(schema),
                {
                    # The bare app stands where the gateway does, the echo
                    # server where the service does; measured beside each
                    # shape's rounds, as the machine drifts.
                    "Klein + pika (baseline)": (
                        f"http://127.0.0.1:{pikaPort}/",
                        CPUMeter(
                            {
                                "gateway": lambda pid=bare.pid: [pid],
                                "post": lambda pid=echo.pid: [pid],
                                "RabbitMQ": rabbit,
                            }
                        ),
                    )
                },
                f"http://127.0.0.1:{accountMetrics}",
                lambda urls=gatewayMetrics: gatewayRequests(urls),
                floor if shape == "production" else None,
            )
            for process in started.values():
                process.terminate()
                process.wait(timeout=30)

        if "embedded" in arguments.shapes:
            # Embedded
            dataDir = os.path.join(logs, "embedded")
            port, embeddedMetrics = freePort(), freePort()
            embedded = processes.start(
                *platformCommand(
                    port, dataDir, "--metrics", f"tcp:{embeddedMetrics}:interface=127.0.0.1"
                ),
                ready="listening|Site starting",
            )
            waitForHTTP(f"http://127.0.0.1:{port}/healthz", embedded)
            prepared = prepare(f"http://127.0.0.1:{port}", logs, "embedded")
            runShape(
                CPUMeter({"all-in-one": lambda: [embedded.pid]}),
                prepared,
                arguments,
                results,
                "embedded",
                lambda: countInSQLite(dataDir),
                {
                    "Klein hello world (baseline)": (
                        f"http://127.0.0.1:{helloPort}/",
                        CPUMeter({"all-in-one": lambda pid=hello.pid: [pid]}),
                    )
                },
                f"http://127.0.0.1:{embeddedMetrics}",
                lambda: gatewayRequests([f"http://127.0.0.1:{embeddedMetrics}"]),
            )
    finally:
        processes.stopAll()
        for schema in schemas.values():
            subprocess.run(
                ["psql", POSTGRES, "-q", "-c", f"DROP SCHEMA IF EXISTS {schema} CASCADE"],
                capture_output=True,
            )
        shutil.rmtree(logs, ignore_errors=True)

    if arguments.only or set(arguments.shapes) != set(SHAPES):
        return  # the rounds are printed; the table needs every request and shape
    report = render(arguments, results, messages)
    print(report)
    if arguments.write:
        writeSection(arguments.write, BEGIN, END, report)


def loginShare(rps: float, verifyMs: float, cores: int) -> float:
    """
    C{rps} logins a second as a share of what C{cores} could verify, one
    argon2id verify taking C{verifyMs}: with the verify alone's wall time,
    the throughput target's measure.
    """
    return rps / (cores / (verifyMs / 1000))


def loginThroughput(
    logins: list[dict[str, Any]], floors: list[dict[str, Any]], cores: int
) -> dict[str, float]:
    """
    The platform's logins a second against cores / verify time (the verify
    alone measured beside each round, L{loginShare}), the floor's against
    the same, and the platform's against the floor's: each round against
    what was measured beside it, then the median of the rounds.

    Also both against the verify as each ran it, under its load: the CPU
    its own hashing threads spent on a verify in that round
    (C{platformLoaded}, C{floorLoaded}).  The verify alone is measured
    after a round, for a second: when the machine's speed changes during
    the round (other tenants), the two disagree, while a round's own
    verifications slowed with the rest of it.
    """
    paired = list(zip(logins, floors, strict=True))
    return {
        "platform": statistics.median(
            loginShare(r["rps"], r["argon2"]["wall_ms"], cores) for r in logins
        ),
        "floor": statistics.median(
            loginShare(f["rps"], r["argon2"]["wall_ms"], cores) for r, f in paired
        ),
        "againstFloor": statistics.median(r["rps"] / f["rps"] for r, f in paired),
        # The floor verifies once a login, and answers every one.
        "platformLoaded": statistics.median(
            loginShare(r["rps"], r["verify_in_process_ms"], cores) for r in logins
        ),
        "floorLoaded": statistics.median(
            loginShare(f["rps"], f["hashing_ms"], cores) for _, f in paired
        ),
    }


def render(
    arguments: argparse.Namespace,
    results: dict[str, list[dict[str, Any]]],
    messages: dict[str, dict[str, Counter[str]]],
) -> str:
    def med(key: str, field: str) -> float:
        return statistics.median(r[field] for r in results[key])

    def cpu(key: str, process: str) -> float:
        return statistics.median(r["cpu_ms"][process] for r in results[key])

    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()}, {os.cpu_count()} cores,"
        f" Python {platform.python_version()}; {arguments.rounds} rounds of {arguments.duration:g} s"
        f" at {arguments.connections} connections, medians; wrk, RabbitMQ and PostgreSQL share the"
        " machine. CPU per request is each process's CPU from the start of a run until the work"
        " it caused drained, divided by the requests handled (the platform's: its gateways'"
        " count, with those in flight when wrk stopped).",
        "",
    ]
    production = [
        "gateway",
        "account",
        "post",
        "notify",
        "RabbitMQ",
        "PostgreSQL",
        "PostgreSQL background",
    ]
    lines += [
        "Production shape (one gateway, one replica of each service, RabbitMQ, PostgreSQL):",
        "",
        "| request | req/s | not 2xx | p50 ms | p99 ms | CPU ms/request: all | "
        + " | ".join(production)
        + " | broker messages/request |",
        "|---|---:|---:|---:|---:|---:|" + "---:|" * len(production) + "---|",
    ]

    def row(name: str, key: str, last: str) -> str:
        # A platform request's or a baseline's row (a baseline's processes
        # stand in some of the columns only).
        counted = results[key][0]["cpu_ms"]
        return (
            f"| {name} | {med(key, 'rps'):.0f} | {med(key, 'failed'):.0f} | {med(key, 'p50'):.1f} |"
            f" {med(key, 'p99'):.1f} | **{med(key, 'cpu_total_ms'):.2f}** | "
            + " | ".join(f"{cpu(key, p):.2f}" if p in counted else "" for p in production)
            + f" | {last} |"
        )

    for name in requestsOf("production"):
        lines.append(row(name, f"production|{name}", _said(messages["production"][name])))
    baseline = "production|Klein + pika (baseline)"
    directBaseline = "direct|Klein + pika (baseline)"
    lines += [
        row("Klein + pika (baseline)", baseline, "2 (a call and its reply)"),
        row(FLOOR, f"production|{FLOOR}", "2 (a call and its reply)"),
        "",
        "The same, calls over the direct transport (each process at the 127.x.y.z address its"
        " id gives, Noise XX channels between them; events and their confirms still through"
        " RabbitMQ):",
        "",
        "| request | req/s | not 2xx | p50 ms | p99 ms | CPU ms/request: all | "
        + " | ".join(production)
        + " | broker messages/request | against the calls through RabbitMQ |",
        "|---|---:|---:|---:|---:|---:|" + "---:|" * len(production) + "---|---:|",
    ]

    def inBaselines(key: str, against: str) -> float:
        # A request's CPU in Klein + pika requests measured beside it: the
        # two shapes run one after the other, and the machine's speed
        # drifts between them.
        return statistics.median(
            ours["cpu_total_ms"] / theirs["cpu_total_ms"]
            for ours, theirs in zip(results[key], results[against], strict=True)
        )

    for name in REQUESTS:
        against = inBaselines(f"direct|{name}", directBaseline) / inBaselines(
            f"production|{name}", baseline
        )
        sent = _said(messages["direct"][name])
        lines.append(row(name, f"direct|{name}", f"{sent} | {against:.2f}x"))
    lines += [
        row("Klein + pika (baseline)", directBaseline, "2 (a call and its reply) | "),
        "",
        "Embedded all-in-one (twistd -n txplatform, SQLite):",
        "",
        "| request | req/s | not 2xx | p50 ms | p99 ms | CPU ms/request |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in [*REQUESTS, "Klein hello world (baseline)"]:
        key = f"embedded|{name}"
        total = f"{med(key, 'cpu_total_ms'):.2f}"
        lines.append(
            f"| {name} | {med(key, 'rps'):.0f} | {med(key, 'failed'):.0f} | {med(key, 'p50'):.1f} |"
            f" {med(key, 'p99'):.1f} | {total} |"
        )
    perPost = {
        shape: statistics.median(
            r["notifications_per_post"] for r in results[f"{shape}|create a post"]
        )
        for shape in SHAPES
    }

    def ratio(key: str, against: str) -> float:
        # Each round against the baseline measured beside it, then the
        # median: the machine's speed drifts between rounds.
        return statistics.median(
            ours["rps"] / theirs["rps"]
            for ours, theirs in zip(results[key], results[against], strict=True)
        )

    readRatio = ratio(f"production|{UNCACHED}", baseline)
    keptRatio = ratio("production|read a post", baseline)
    uncachedRead = med(f"production|{UNCACHED}", "cpu_total_ms")
    directRatio = ratio("direct|read a post", directBaseline)
    directRead = med("direct|read a post", "cpu_total_ms")
    directCreate = med("direct|create a post", "cpu_total_ms")
    helloRatio = ratio("embedded|read a post", "embedded|Klein hello world (baseline)")
    logins = results["production|login"]
    loginCPU = cpu("production|login", "account")
    verifyCPU = statistics.median(r["argon2"]["cpu_ms"] for r in logins)
    verifyWall = statistics.median(r["argon2"]["wall_ms"] for r in logins)
    cores = os.cpu_count() or 1
    # Each round against the argon2id measured beside it.
    overAloneRounds = [r["cpu_ms"]["account"] / r["argon2"]["cpu_ms"] for r in logins]
    loginOverCPU = statistics.median(overAloneRounds)
    throughput = loginThroughput(logins, results[f"production|{FLOOR}"], cores)
    # The verifications as the Account process ran them, under the load.
    verifyLoaded = statistics.median(r["verify_in_process_ms"] for r in logins)
    beyondHashing = statistics.median(r["cpu_ms"]["account"] - r["hashing_ms"] for r in logins)
    overLoadedRounds = [r["cpu_ms"]["account"] / r["hashing_ms"] for r in logins]
    overLoaded = statistics.median(overLoadedRounds)
    # The machine is busy through a login run: logins a second are cores /
    # the CPU a login costs in every process.  85% of cores / verify time
    # leaves this much of it for everything but the verify itself.
    budget = statistics.median(
        r["argon2"]["wall_ms"] / 0.85 - r["argon2"]["cpu_ms"] for r in logins
    )
    platformRest = statistics.median(r["cpu_total_ms"] - r["hashing_ms"] for r in logins)
    floorRest = statistics.median(
        f["cpu_total_ms"] - f["hashing_ms"] for f in results[f"production|{FLOOR}"]
    )

    def spread(values: list[float], unit: str) -> str:
        return f"rounds {min(values):.2f}{unit} to {max(values):.2f}{unit}"

    embeddedBeyond = statistics.median(
        r["cpu_ms"]["all-in-one"] - r["hashing_ms"] for r in results["embedded|login"]
    )

    def verdict(ok: bool) -> str:
        return "met" if ok else "**not met**"

    if verifyWall > verifyLoaded and throughput["platform"] >= 0.85:
        # One verify alone cannot take longer than one of two at once
        # under the load: the machine was slower when it was measured (a
        # second after each round) than through the rounds, and the share
        # is of a capacity the machine did not have while they ran: too
        # high, so a "met" cannot stand (a share too low even so is not).
        throughputVerdict = (
            "not judged here: the verify alone, measured after each round, took longer than the"
            f" Account process's own verifications under the load, two at once ({verifyLoaded:.1f}"
            " ms), which it cannot on a machine that kept its speed: the machine slowed between"
            " them, and the share against it is too high"
        )
    else:
        throughputVerdict = verdict(throughput["platform"] >= 0.85)
    create = med("production|create a post", "cpu_total_ms")
    read = med("production|read a post", "cpu_total_ms")
    embeddedCreate = med("embedded|create a post", "cpu_total_ms")
    lines += [
        "",
        f"Notifications made per post made (one: the reader is mentioned, and follows): production"
        f" {perPost['production']:.2f}, direct {perPost['direct']:.2f}, embedded"
        f" {perPost['embedded']:.2f}.",
        "",
        "Against the targets:",
        "",
        f"- create a post, production: {create:.2f} ms of CPU per request (target at most 3.0):"
        f" {verdict(create <= 3.0)};",
        f"- read a post, production: {read:.2f} ms (target at most 0.6): {verdict(read <= 0.6)},"
        f" the gateway serving the post it keeps ({keptRatio:.2f}x Klein + pika's requests/s);"
        f" through a gateway that keeps nothing, {uncachedRead:.2f} ms, the gateway path to"
        f" the Post service at {readRatio:.2f}x Klein + pika (median of the rounds' ratios;"
        " target at least 0.75):"
        f" {verdict(readRatio >= 0.75)};",
        f"- login: the account process {loginCPU:.1f} ms of CPU per login against"
        f" {verifyCPU:.1f} ms for an argon2id verify at its parameters (two at once, as it runs"
        f" them, measured beside each round), {loginOverCPU:.2f}x (median of the rounds' ratios;"
        f" target at most 1.1): {verdict(loginOverCPU <= 1.1)}; logins at"
        f" {throughput['platform']:.0%} of cores / verify time ({verifyWall:.1f} ms alone;"
        f" target at least 85%): {throughputVerdict}, where the floor"
        " beside each round (bench/login_floor.py: a bare Klein app, pika, and a service that"
        f" only verifies) reached {throughput['floor']:.0%}, and the platform"
        f" {throughput['againstFloor']:.0%} of the floor's logins a second. Under this load"
        " logins a second are cores / the CPU a login costs in every process, so 85% leaves"
        f" {budget:.2f} ms of CPU a login, all processes together, for everything but the"
        " verify (the verify alone / 0.85, less a verify's CPU two at once); the platform"
        f" spent {platformRest:.2f} ms on it, the floor {floorRest:.2f}. Inside the Account"
        f" process, under this load, a verification took {verifyLoaded:.1f} ms of CPU (its"
        " hashing threads' CPU time, `account_password_hashing_cpu_seconds_total`), and everything else of a login"
        f" {beyondHashing:.2f} ms of the Account process's CPU (embedded: {embeddedBeyond:.2f} ms"
        " for the whole request, gateway included). Against that verify, which slowed and sped"
        " with its round (the verify alone is measured after the round, for a second), the"
        f" account process was at {overLoaded:.2f}x ({spread(overLoadedRounds, 'x')}; against"
        f" the verify alone {spread(overAloneRounds, 'x')}), and the logins at"
        f" {throughput['platformLoaded']:.0%} of cores / verify time, the floor's at"
        f" {throughput['floorLoaded']:.0%} against its own hashing threads;",
        f"- over the direct transport (not the production shape of the targets, which"
        f" puts calls through RabbitMQ; for comparison): a created post {directCreate:.2f} ms,"
        f" a read {directRead:.2f} ms, the read at {directRatio:.2f}x Klein + pika (which"
        " still goes through RabbitMQ);",
        f"- embedded, create a post: {embeddedCreate:.2f} ms (target at most 1.2):"
        f" {verdict(embeddedCreate <= 1.2)}; read a post at {helloRatio:.2f}x Klein's hello world"
        f" (target at least 0.6): {verdict(helloRatio >= 0.6)}.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
