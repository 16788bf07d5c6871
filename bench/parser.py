"""
Small requests while large bodies are posted, with and without the parser
pool, in the same run.

The platform as deployed, each part its own process on RabbitMQ: Account,
Post and Notify, two parser replicas (twistd parser), and two gateways
over the same services: one parses every body itself, the other hands
bodies over --parser-over bytes (16 KiB) to the pool.  For each gateway in
turn, in every round:

  - unloaded: --small connections read a profile (GET /v1/accounts/author)
    for --duration seconds;
  - loaded: the same while --flood connections post ~60 KiB bodies to
    POST /v1/accounts (valid JSON of 20,000 numbers: malformed as an
    account, so each gets a 400 once parsed: the work is the parsing).

The figures are the small requests' p99 loaded against unloaded, and the
flood's answers per second, medians over the rounds.

    python bench/parser.py [--duration 10] [--rounds 3] [--flood 8] [--small 4] [--write docs/benchmarks.md]

Needs RabbitMQ (rabbitmqctl on the PATH: the run uses a vhost of its own),
wrk, and txplatform importable (pip install .).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from amqp import Processes, freePort, keyFiles  # noqa: E402
from embedded import PASSWORD, finished, http, startWrk  # noqa: E402
from sections import writeSection  # noqa: E402

VHOST = "txplatform-bench-parser"
BROKER = f"amqp://guest:guest@127.0.0.1:5672/{VHOST}"
BEGIN, END = "<!-- parser:begin -->", "<!-- parser:end -->"
PARSER_OVER = 16 * 1024
MODES = {"gateway": "parsed by the gateway", "pool": f"pool (--parser-over {PARSER_OVER})"}


def largeBody() -> bytes:
    """
    About 60 KiB of JSON that takes real work to decode (many small
    values) and is then refused as an account.
    """
    return json.dumps(
        {"username": "flood", "email": "flood@example.com", "password": PASSWORD, "n": [7] * 20000}
    ).encode()


def floodScript(directory: str) -> str:
    path = os.path.join(directory, "flood.lua")
    with open(path, "w") as f:
        f.write('wrk.method = "POST"\n')
        f.write(f"wrk.body = {json.dumps(largeBody().decode())}\n")
        f.write('wrk.headers["Content-Type"] = "application/json"\n')
    return path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--flood", type=int, default=8, help="connections posting large bodies")
    parser.add_argument("--small", type=int, default=4, help="connections of small requests")
    parser.add_argument("--write", help="replace the parser section of this markdown file")
    args = parser.parse_args()
    for tool in ("wrk", "rabbitmqctl"):
        if shutil.which(tool) is None:
            raise SystemExit(f"this benchmark needs {tool}")
    subprocess.run(["rabbitmqctl", "delete_vhost", VHOST], capture_output=True)
    subprocess.run(["rabbitmqctl", "add_vhost", VHOST], capture_output=True, check=True)
    subprocess.run(
        ["rabbitmqctl", "set_permissions", "-p", VHOST, "guest", ".*", ".*", ".*"],
        check=True,
        capture_output=True,
    )
    work = tempfile.mkdtemp(prefix="txplatform-bench-parser-")
    keys = keyFiles(os.path.join(work, "keys"))
    processes = Processes(work)
    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    try:
        bus = ["--bus", BROKER, "--bus-keys", keys["bus"]]
        for name in ("account", "post", "notify"):
            database = f"sqlite:{os.path.join(work, name)}.sqlite"
            processes.twistd(name, *bus, "--keys", keys[name], "--db", database, ready="serving")
        for _ in range(2):
            processes.twistd("parser", *bus, ready="serving")
        urls = {}
        for mode in MODES:
            port = freePort()
            extra = ["--parser-over", str(PARSER_OVER)] if mode == "pool" else []
            # Nothing shed: the point is what parsing does to latency.
            extra += ["--busy-limit", "0", "--max-in-flight", "4096"]
            processes.twistd(
                "gateway",
                *bus,
                "--listen",
                f"tcp:{port}:interface=127.0.0.1",
                *extra,
                ready="listening",
            )
            urls[mode] = f"http://127.0.0.1:{port}"
        status, _ = http(
            "POST",
            urls["gateway"] + "/v1/accounts",
            {"username": "author", "email": "author@example.com", "password": PASSWORD},
        )
        assert status == 201, status
        for url in urls.values():  # the pool answers as the gateway does
            request = subprocess.run(
                ["curl", "-s", "-H", "Content-Type: application/json", "--data-binary", "@-"]
                + [url + "/v1/accounts"],
                input=largeBody(),
                capture_output=True,
            )
            answer = json.loads(request.stdout)
            assert answer["status"] == 400 and answer["errors"][0]["field"] == "n", answer
        script = floodScript(work)
        for round in range(args.rounds):
            for mode, url in urls.items():
                small = url + "/v1/accounts/author"
                unloaded = finished(startWrk(small, args.small, args.duration))
                flood = startWrk(url + "/v1/accounts", args.flood, args.duration + 2, script)
                loaded = finished(startWrk(small, args.small, args.duration))
                flooded = finished(flood)
                for kind, measured in [("unloaded", unloaded), ("loaded", loaded)]:
                    if measured["non2xx"] or measured["socketErrors"]:
                        raise SystemExit(f"small requests failed ({mode}, {kind}): {measured}")
                row = {
                    "unloaded": unloaded,
                    "loaded": loaded,
                    "flood": flooded,
                    "ratio": loaded["p99"] / unloaded["p99"],
                }
                results.setdefault((mode, "run"), []).append(row)
                print(
                    f"round {round + 1} {mode}: p99 {unloaded['p99']:.2f} ->"
                    f" {loaded['p99']:.2f} ms ({row['ratio']:.1f}x),"
                    f" flood {flooded['rps']:.0f}/s",
                    file=sys.stderr,
                )
        for url in urls.values():
            status, _ = http("GET", url + "/v1/accounts/author")
            assert status == 200, f"{url} no longer answers ({status})"
    finally:
        processes.stopAll()
        subprocess.run(["rabbitmqctl", "delete_vhost", VHOST], capture_output=True)

    def median(mode: str, pick: Any) -> float:
        return statistics.median(pick(r) for r in results[(mode, "run")])

    lines = [
        f"`{' '.join(['python', 'bench/parser.py', *sys.argv[1:]])}` —"
        f" {platform.python_implementation()} {platform.python_version()},"
        f" {os.cpu_count()} CPUs; every process (broker, 3 services, 2 parsers, 2 gateways,"
        f" wrk) on this machine. {args.small} connections of small requests"
        f" (GET /v1/accounts/author), {args.flood} connections posting"
        f" {len(largeBody()) // 1024} KiB bodies; {args.duration:g} s per measurement,"
        f" medians of {args.rounds} rounds.",
        "",
        "| bodies | small p99 unloaded | small p99 loaded | ratio | small req/s loaded"
        " | large bodies answered/s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for mode, label in MODES.items():
        lines.append(
            f"| {label} | {median(mode, lambda r: r['unloaded']['p99']):.2f} ms"
            f" | {median(mode, lambda r: r['loaded']['p99']):.2f} ms"
            f" | {median(mode, lambda r: r['ratio']):.1f}x"
            f" | {median(mode, lambda r: r['loaded']['rps']):.0f}"
            f" | {median(mode, lambda r: r['flood']['rps']):.0f} |"
        )
    lines.append("")
    lines.append(
        "Pool against gateway, loaded small-request p99: "
        f"{median('pool', lambda r: r['loaded']['p99']) / median('gateway', lambda r: r['loaded']['p99']):.2f}x."
    )
    text = "\n".join(lines)
    print(text)
    if args.write:
        writeSection(args.write, BEGIN, END, text)


if __name__ == "__main__":
    main()
