"""
High-priority latency under an overload of low-priority reads, on the
embedded platform (twistd -n txplatform), in the same run:

  - unloaded: one client logging in (POST /v1/sessions, high priority)
    for --duration seconds;
  - loaded: the same, while --flood connections read an author's posts
    (GET /v1/accounts/{name}/posts, low priority) as fast as they can.

The figure is the logins' p99 under load against unloaded (target: at most
2x), each round's ratio and their median; the flood's answers are counted (200, or 503
when shed), and the platform must still answer afterwards.

    python bench/priorities.py [--duration 10] [--rounds 5] [--flood 64] [--write docs/benchmarks.md]

Needs wrk (Debian: apt install wrk) and txplatform importable (pip install .).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from embedded import (  # noqa: E402
    PASSWORD,
    finished,
    freePort,
    http,
    luaScript,
    platformCommand,
    startWrk,
    waitForHTTP,
)
from sections import writeSection  # noqa: E402

BEGIN, END = "<!-- priorities:begin -->", "<!-- priorities:end -->"


def answered(log: str) -> Counter[int]:
    """
    The statuses in the gateway's access log.
    """
    statuses: Counter[int] = Counter()
    with open(log) as lines:
        for line in lines:
            match = re.search(r'"(?:GET|POST) [^"]*" (\d{3}) ', line)
            if match:
                statuses[int(match.group(1))] += 1
    return statuses


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--flood", type=int, default=64, help="low-priority connections")
    parser.add_argument("--max-in-flight", type=int, default=32)
    parser.add_argument(
        "--busy-limit", type=float, default=50.0, help="percent (the gateway's default)"
    )
    parser.add_argument("--write", help="replace the priorities section of this markdown file")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("this benchmark needs wrk (Debian: apt install wrk)")

    work = tempfile.mkdtemp(prefix="txplatform-bench-")
    logs = open(os.path.join(work, "server.log"), "w")
    port = freePort()
    server = subprocess.Popen(
        platformCommand(
            port,
            os.path.join(work, "var"),
            "--max-in-flight",
            str(args.max_in_flight),
            "--busy-limit",
            str(args.busy_limit),
        ),
        stdout=logs,
        stderr=logs,
    )
    api = f"http://127.0.0.1:{port}"
    results: dict[str, list[dict[str, Any]]] = {"unloaded": [], "loaded": [], "flood": []}
    try:
        waitForHTTP(api + "/healthz", server)
        status, _ = http(
            "POST",
            api + "/v1/accounts",
            {"username": "author", "email": "author@example.com", "password": PASSWORD},
        )
        assert status == 201, status
        status, session = http(
            "POST", api + "/v1/sessions", {"username": "author", "password": PASSWORD}
        )
        for n in range(20):
            http("POST", api + "/v1/posts", {"body": f"post {n}"}, session["token"])
        login = luaScript(work, "login", "POST", {"username": "author", "password": PASSWORD}, None)
        reads = api + "/v1/accounts/author/posts"
        for round in range(args.rounds):
            results["unloaded"].append(
                finished(startWrk(api + "/v1/sessions", 1, args.duration, login))
            )
            flood = startWrk(reads, args.flood, args.duration + 4, None)
            time.sleep(2)  # the flood at full speed first
            results["loaded"].append(
                finished(startWrk(api + "/v1/sessions", 1, args.duration, login))
            )
            results["flood"].append(finished(flood))
            print(
                f"round {round + 1}: login p99 unloaded {results['unloaded'][-1]['p99']:.1f} ms,"
                f" loaded {results['loaded'][-1]['p99']:.1f} ms; flood"
                f" {results['flood'][-1]['rps']:.0f} req/s,"
                f" {results['flood'][-1]['non2xx']} shed",
                file=sys.stderr,
            )
        status, _ = http("GET", api + "/healthz")
        if status != 200:
            raise SystemExit(f"the platform no longer answers: {status}")
    finally:
        server.terminate()
        server.wait(timeout=30)
        logs.close()
    lost = [r for kind in results for r in results[kind] if r["socketErrors"]]
    lost += [r for r in results["unloaded"] + results["loaded"] if r["non2xx"]]
    if lost:
        raise SystemExit(f"requests failed or went unanswered: {lost}")
    statuses = answered(os.path.join(work, "server.log"))
    if set(statuses) - {200, 201, 503}:
        raise SystemExit(f"unexpected answers (see {work}/server.log): {dict(statuses)}")

    def median(kind: str, key: str) -> float:
        return statistics.median(r[key] for r in results[kind])

    unloaded, loaded = median("unloaded", "p99"), median("loaded", "p99")
    # Each round's loaded p99 against the unloaded one measured just before
    # it: the machine's own noise moves both together.
    pairs = zip(results["unloaded"], results["loaded"], strict=True)
    ratios = [loadedRound["p99"] / alone["p99"] for alone, loadedRound in pairs]
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()}, {os.cpu_count()} cores,"
        f" Python {platform.python_version()}; {args.rounds} rounds of {args.duration:g} s,"
        f" medians; --max-in-flight {args.max_in_flight}, --busy-limit {args.busy_limit:g},"
        f" {args.flood} flooding connections;"
        " wrk and the platform share the machine.",
        "",
        "| | logins/s | login p50 ms | login p99 ms |",
        "|---|---:|---:|---:|",
        f"| unloaded | {median('unloaded', 'rps'):.0f} | {median('unloaded', 'p50'):.1f}"
        f" | {unloaded:.1f} |",
        f"| under the flood | {median('loaded', 'rps'):.0f} | {median('loaded', 'p50'):.1f}"
        f" | {loaded:.1f} |",
        "",
        f"Login p99 under the flood: **{statistics.median(ratios):.2f}x** unloaded, median of"
        f" the rounds' ratios ({', '.join(f'{r:.2f}' for r in ratios)}; ratio of the medians"
        f" above: {loaded / unloaded:.2f}x; target: at most 2)."
        f" The flood: {median('flood', 'rps'):.0f} reads/s answered, of which"
        f" {median('flood', 'non2xx'):.0f} shed with 503 per round (median). Every request"
        f" was answered, with 200, 201 or 503 only ({sum(statuses.values())} in the gateway's"
        " access log), and the platform answered afterwards.",
    ]
    report = "\n".join(lines)
    print(report)
    if args.write:
        writeSection(args.write, BEGIN, END, report)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
