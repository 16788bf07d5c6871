"""
Benchmark of the embedded platform (twistd -n txplatform: in-process bus,
SQLite) against Klein's hello world, measured in the same run.

For each scenario (hello world, login, create a post, read a post, read
notifications) at 1 and 16 concurrent clients, wrk drives the server for
--duration seconds; the rounds interleave scenarios so that machine noise
spreads over all of them, and the report gives medians over the rounds.
It also reads the platform's resident memory when idle and after the load,
and measures what encryption costs: creating a post, reading one and
reading notifications on the platform as shipped (post cache off) and on
the same platform with plaintext on the bus and in SQLite
(bench/plaintext_platform.py), in the same rounds.

    python bench/embedded.py [--duration 5] [--rounds 3] [--write docs/benchmarks.md]

Needs wrk (Debian: apt install wrk) and txplatform importable (pip install .).
"""

from __future__ import annotations

import argparse
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
import urllib.request
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
CHECKOUT = os.path.dirname(HERE)
PASSWORD = "correct horse"
BEGIN, END = "<!-- embedded:begin -->", "<!-- embedded:end -->"
ENCRYPTED, PLAINTEXT = "encrypted", "plaintext"


#: Longer than the gateway's Admission.reserveFor.
RESERVE_LAPSE = 2.5


def platformCommand(port: int, dataDir: str, *options: str) -> list[str]:
    """
    The command running the embedded platform (twistd -n txplatform) on a
    loopback port.
    """
    return [
        sys.executable,
        "-c",
        "from twisted.scripts.twistd import run; run()",
        "-n",
        "--pidfile=",
        "txplatform",
        "--listen",
        f"tcp:{port}:interface=127.0.0.1",
        "--data-dir",
        dataDir,
        *options,
    ]


def freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def waitForHTTP(url: str, process: subprocess.Popen, seconds: float = 30) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited with {process.returncode} before answering {url}")
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"no answer from {url} after {seconds}s")


def http(method: str, url: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            content = response.read()
            return response.status, json.loads(content) if content else None
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def rss(pid: int) -> dict[str, float]:
    """
    Resident memory now and at its peak, MiB.
    """
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) / 1024
    return fields


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def parseWrk(output: str) -> dict[str, float]:
    def latency(percent: str) -> float:
        match = re.search(rf"^\s+{percent}%\s+([\d.]+)(us|ms|s)\s*$", output, re.M)
        if not match:
            raise ValueError(f"no {percent}% latency in wrk output:\n{output}")
        return float(match.group(1)) * _UNITS[match.group(2)]

    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    socketErrors = re.search(r"Socket errors: (.*)", output)
    return {
        "rps": float(rate.group(1)),
        "p50": latency("50"),
        "p99": latency("99"),
        "non2xx": int(errors.group(1)) if errors else 0,
        "socketErrors": socketErrors.group(1) if socketErrors else "",
    }


def luaScript(directory: str, name: str, method: str, body: Any, token: str | None) -> str:
    lines = [f'wrk.method = "{method}"']
    if body is not None:
        lines.append(f"wrk.body = {json.dumps(json.dumps(body))}")
        lines.append('wrk.headers["Content-Type"] = "application/json"')
    if token:
        lines.append(f'wrk.headers["Authorization"] = "Bearer {token}"')
    path = os.path.join(directory, f"{name}.lua")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def runWrk(url: str, clients: int, duration: float, script: str | None) -> dict[str, float]:
    threads = 1 if clients == 1 else 2
    command = [
        "wrk",
        "--latency",
        f"-t{threads}",
        f"-c{clients}",
        f"-d{duration:g}s",
        "--timeout",
        "10s",
    ]
    if script:
        command += ["-s", script]
    result = subprocess.run(command + [url], capture_output=True, text=True, check=True)
    return parseWrk(result.stdout)


def startWrk(
    url: str, clients: int, duration: float, script: str | None = None
) -> subprocess.Popen:
    """
    wrk running in the background (to overlap with another); see L{finished}.
    """
    command = ["wrk", "--latency", f"-t{min(clients, 2)}", f"-c{clients}", f"-d{duration:g}s"]
    command += ["--timeout", "10s"]
    if script:
        command += ["-s", script]
    return subprocess.Popen(command + [url], stdout=subprocess.PIPE, text=True)


def finished(process: subprocess.Popen) -> dict[str, Any]:
    """
    What a wrk started with L{startWrk} measured, once it ends.
    """
    output, _ = process.communicate(timeout=120)
    return parseWrk(output)


def populate(api: str) -> tuple[dict[str, str], str]:
    """
    An author with 25 posts mentioning a reader, who therefore has
    notifications: the tokens of both, and a post's id.
    """
    for name in ["author", "reader"]:
        status, _ = http(
            "POST",
            api + "/v1/accounts",
            {"username": name, "email": f"{name}@example.com", "password": PASSWORD},
        )
        assert status == 201, status
    tokens = {
        name: http("POST", api + "/v1/sessions", {"username": name, "password": PASSWORD})[1][
            "token"
        ]
        for name in ["author", "reader"]
    }
    postId = ""
    for n in range(25):
        status, created = http(
            "POST", api + "/v1/posts", {"body": f"post {n} for @reader"}, tokens["author"]
        )
        assert status == 201, status
        postId = created["id"]
    for _ in range(100):
        status, page = http("GET", api + "/v1/notifications", token=tokens["reader"])
        if len(page["items"]) == 20:
            return tokens, postId
        time.sleep(0.1)
    raise SystemExit("notifications did not arrive")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="measurements per scenario")
    parser.add_argument("--write", help="replace the embedded section of this markdown file")
    parser.add_argument(
        "--only", action="append", help="run only scenarios whose name contains this (repeatable)"
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("this benchmark needs wrk (Debian: apt install wrk)")

    work = tempfile.mkdtemp(prefix="txplatform-bench-")
    logs = open(os.path.join(work, "servers.log"), "w")
    helloPort = freePort()
    hello = subprocess.Popen(
        [sys.executable, os.path.join(HERE, "klein_hello.py"), str(helloPort)],
        stdout=logs,
        stderr=logs,
    )

    def startPlatform(name: str, *options: str) -> tuple[subprocess.Popen, str]:
        port = freePort()
        process = subprocess.Popen(
            platformCommand(port, os.path.join(work, name), *options), stdout=logs, stderr=logs
        )
        return process, f"http://127.0.0.1:{port}"

    server, api = startPlatform("var")
    uncached, uncachedAPI = startPlatform("var-nocache", "--post-cache-size", "0")
    # The same platform with JSON on the bus and UTF-8 in SQLite, in the
    # clear: the baseline of what encryption costs.
    plainPort = freePort()
    plain = subprocess.Popen(
        [
            sys.executable,
            os.path.join(HERE, "plaintext_platform.py"),
            "--listen",
            f"tcp:{plainPort}:interface=127.0.0.1",
            "--data-dir",
            os.path.join(work, "var-plaintext"),
            "--post-cache-size",
            "0",
        ],
        stdout=logs,
        stderr=logs,
    )
    plainAPI = f"http://127.0.0.1:{plainPort}"
    try:
        helloURL = f"http://127.0.0.1:{helloPort}/"
        waitForHTTP(helloURL, hello)
        waitForHTTP(api + "/healthz", server)
        waitForHTTP(uncachedAPI + "/healthz", uncached)
        waitForHTTP(plainAPI + "/healthz", plain)
        time.sleep(2)
        idle = rss(server.pid)
        tokens, postId = populate(api)
        uncachedTokens, uncachedPostId = populate(uncachedAPI)
        plainTokens, plainPostId = populate(plainAPI)

        scenarios = {
            "Klein hello world (baseline)": (helloURL, None),
            "login (POST /v1/sessions)": (
                api + "/v1/sessions",
                luaScript(
                    work, "login", "POST", {"username": "reader", "password": PASSWORD}, None
                ),
            ),
            "create a post (POST /v1/posts)": (
                api + "/v1/posts",
                luaScript(work, "create", "POST", {"body": "benchmark post"}, tokens["author"]),
            ),
            "read a post (GET /v1/posts/{id})": (api + f"/v1/posts/{postId}", None),
            "read a post, post cache off": (uncachedAPI + f"/v1/posts/{uncachedPostId}", None),
            "read notifications (GET /v1/notifications)": (
                api + "/v1/notifications",
                luaScript(work, "notifications", "GET", None, tokens["reader"]),
            ),
        }
        for label, base, someTokens, somePostId in [
            (ENCRYPTED, uncachedAPI, uncachedTokens, uncachedPostId),
            (PLAINTEXT, plainAPI, plainTokens, plainPostId),
        ]:
            scenarios.update(
                {
                    f"{label}: create a post": (
                        base + "/v1/posts",
                        luaScript(
                            work,
                            f"create-{label}",
                            "POST",
                            {"body": "benchmark post"},
                            someTokens["author"],
                        ),
                    ),
                    f"{label}: read notifications": (
                        base + "/v1/notifications",
                        luaScript(
                            work, f"notifications-{label}", "GET", None, someTokens["reader"]
                        ),
                    ),
                }
            )
            if label == PLAINTEXT:
                scenarios[f"{label}: read a post"] = (base + f"/v1/posts/{somePostId}", None)
        if args.only:
            scenarios = {
                name: spec
                for name, spec in scenarios.items()
                if name.startswith("Klein") or any(word in name for word in args.only)
            }
        results: dict[tuple[str, int], list[dict[str, float]]] = {}
        for round in range(args.rounds):
            for name, (url, script) in scenarios.items():
                # Each scenario is one priority class; the gateway keeps a
                # busy reactor's time for a higher class for two seconds
                # after its last request, so the previous scenario's class
                # would get this one's low reads refused at first.
                time.sleep(RESERVE_LAPSE)
                for clients in (1, 16):
                    measured = runWrk(url, clients, args.duration, script)
                    if measured["non2xx"] or measured["socketErrors"]:
                        raise SystemExit(f"{name} at {clients}: errors {measured}")
                    results.setdefault((name, clients), []).append(measured)
                    print(
                        f"round {round + 1} {name} c={clients}: {measured['rps']:.0f} req/s"
                        f" p50 {measured['p50']:.2f} ms p99 {measured['p99']:.2f} ms",
                        file=sys.stderr,
                    )
        loaded = rss(server.pid)
    finally:
        for process in (hello, server, uncached, plain):
            process.terminate()
        for process in (hello, server, uncached, plain):
            process.wait(timeout=30)
        logs.close()

    def median(name: str, clients: int, key: str) -> float:
        return statistics.median(r[key] for r in results[(name, clients)])

    baseline = "Klein hello world (baseline)"
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()}, {os.cpu_count()} cores,"
        f" Python {platform.python_version()}; {args.rounds} rounds of {args.duration:g} s per"
        " figure, medians; wrk and both servers share the machine.",
        "",
        "| scenario | clients | req/s | vs hello world | p50 ms | p99 ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in scenarios:
        if name.startswith((ENCRYPTED, PLAINTEXT)):
            continue
        for clients in (1, 16):
            rps = median(name, clients, "rps")
            ratio = rps / median(baseline, clients, "rps")
            lines.append(
                f"| {name} | {clients} | {rps:.0f} | {ratio:.2f} |"
                f" {median(name, clients, 'p50'):.2f} | {median(name, clients, 'p99'):.2f} |"
            )
    readPost = "read a post (GET /v1/posts/{id})"
    if (readPost, 16) in results:
        readRatio = median(readPost, 16, "rps") / median(baseline, 16, "rps")
        lines += [
            "",
            f"Reading a post at 16 clients: **{readRatio:.2f}x** the hello world's requests/s"
            " (target: at least 0.5)",
        ]
        if ("read a post, post cache off", 16) in results:
            cold = median("read a post, post cache off", 16, "rps") / median(baseline, 16, "rps")
            lines[-1] += f"; **{cold:.2f}x** with the post cache off (every read goes to SQLite)."
        else:
            lines[-1] += "."
    costs = [
        (what, encrypted, f"{PLAINTEXT}: {what}")
        for what, encrypted in [
            ("create a post", f"{ENCRYPTED}: create a post"),
            ("read a post", "read a post, post cache off"),
            ("read notifications", f"{ENCRYPTED}: read notifications"),
        ]
        if (encrypted, 16) in results and (f"{PLAINTEXT}: {what}", 16) in results
    ]
    if costs:
        lines += [
            "",
            "What encryption costs: the platform as shipped (post cache off) against the same"
            " platform with plaintext on the bus and in SQLite (`bench/plaintext_platform.py`),"
            " same run.",
            "",
            "| scenario | clients | encrypted req/s | plaintext req/s | encrypted / plaintext"
            " | encrypted p50 ms | plaintext p50 ms |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for what, encrypted, plaintext in costs:
            for clients in (1, 16):
                rps = median(encrypted, clients, "rps")
                base = median(plaintext, clients, "rps")
                lines.append(
                    f"| {what} | {clients} | {rps:.0f} | {base:.0f} | {rps / base:.2f}"
                    f" | {median(encrypted, clients, 'p50'):.2f}"
                    f" | {median(plaintext, clients, 'p50'):.2f} |"
                )
    lines += [
        "",
        f"Resident memory of the all-in-one process: **{idle['VmRSS']:.1f} MiB** idle after start"
        f" (target: under 100 MiB); {loaded['VmRSS']:.1f} MiB after the load, peak"
        f" {loaded['VmHWM']:.1f} MiB.",
    ]
    report = "\n".join(lines)
    print(report)
    if args.write:
        with open(args.write, encoding="utf-8") as f:
            document = f.read()
        start, end = document.index(BEGIN) + len(BEGIN), document.index(END)
        with open(args.write, "w", encoding="utf-8") as f:
            f.write(document[:start] + "\n" + report + "\n" + document[end:])
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
