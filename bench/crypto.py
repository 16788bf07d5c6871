"""
Encryption throughput: txplatform's sealed records and streams against raw
AES-256-GCM from cryptography, on the same data in the same run.

    .venv/bin/python bench/crypto.py --rounds 5 --write docs/benchmarks.md

For each size (1 KiB, 64 KiB, 16 MiB) and direction, each round times a
loop of the operation; the figure is the median over rounds.  The baseline
is what a program using AES-GCM directly does per record: a fresh random
96-bit nonce and one encrypt (or decrypt) call.  Sealing adds the 37-byte
header, the per-session key, the nonce layout and the policy checks.
Streams are fed in 64 KiB writes through SegmentEncrypter/Decrypter.
"""

# The timed closures run within the iteration that made them.
# ruff: noqa: B023

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402
from twisted.internet.task import Clock  # noqa: E402

from txplatform.crypto.keyring import Keyring, MasterKey  # noqa: E402
from txplatform.crypto.sealing import HEADER_SIZE, Sealer  # noqa: E402

BEGIN, END = "<!-- crypto:begin -->", "<!-- crypto:end -->"
SIZES = [("1 KiB", 1024), ("64 KiB", 64 * 1024), ("16 MiB", 16 * 1024 * 1024)]
CONTEXT = b"field\0posts\0body\0" + b"01hx" * 6


def timed(operation: Callable[[], Any], size: int, budget: float) -> float:
    """
    MB/s of C{operation} on C{size} bytes, looping for about C{budget} s.
    """
    operation()
    loops = 0
    started = time.perf_counter()
    while True:
        operation()
        loops += 1
        elapsed = time.perf_counter() - started
        if elapsed >= budget:
            return loops * size / elapsed / 1e6


def measure(rounds: int, budget: float) -> list[dict[str, Any]]:
    key = os.urandom(32)
    raw = AESGCM(key)
    sealer = Sealer(Keyring("bench", [MasterKey(1, key)], Clock()))
    results = []
    for label, size in SIZES:
        data = os.urandom(size)
        nonce = os.urandom(12)
        rawSealed = raw.encrypt(nonce, data, CONTEXT)
        sealed = sealer.seal(data, CONTEXT)
        chunk = 64 * 1024

        def stream() -> None:
            header, encrypter = sealer.encrypter(CONTEXT)
            for i in range(0, size, chunk):
                encrypter.update(data[i : i + chunk])
            encrypter.finalize()

        def unstream() -> None:
            decrypter = sealer.decrypter(sealed[:HEADER_SIZE], CONTEXT)
            view = memoryview(sealed)
            for i in range(HEADER_SIZE, len(sealed), chunk):
                decrypter.update(view[i : i + chunk])
            decrypter.finalize()

        operations = {
            "raw encrypt": lambda: raw.encrypt(os.urandom(12), data, CONTEXT),
            "raw decrypt": lambda: raw.decrypt(nonce, rawSealed, CONTEXT),
            "seal": lambda: sealer.seal(data, CONTEXT),
            "open": lambda: sealer.open(sealed, CONTEXT),
            "stream encrypt": stream,
            "stream decrypt": unstream,
        }
        runs: dict[str, list[float]] = {name: [] for name in operations}
        for round in range(rounds):
            for name, operation in operations.items():
                runs[name].append(timed(operation, size, budget))
            print(
                f"round {round + 1} {label}: "
                + ", ".join(f"{n} {r[-1]:.0f}" for n, r in runs.items()),
                file=sys.stderr,
            )
        medians = {name: statistics.median(r) for name, r in runs.items()}
        results.append({"label": label, "size": size, **medians})
    return results


def table(results: list[dict[str, Any]], rounds: int, budget: float) -> str:
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()},"
        f" {os.cpu_count()} cores, Python {platform.python_version()}; medians of {rounds}"
        f" rounds of {budget:g} s per figure, MB/s (10^6 bytes/s).",
        "",
        "| size | raw AES-GCM encrypt | seal | seal / raw | stream encrypt | stream / raw"
        " | raw decrypt | open | open / raw | stream decrypt | stream / raw |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        enc, dec = r["raw encrypt"], r["raw decrypt"]
        lines.append(
            f"| {r['label']} | {enc:.0f} | {r['seal']:.0f} | {r['seal'] / enc:.2f}"
            f" | {r['stream encrypt']:.0f} | {r['stream encrypt'] / enc:.2f}"
            f" | {dec:.0f} | {r['open']:.0f} | {r['open'] / dec:.2f}"
            f" | {r['stream decrypt']:.0f} | {r['stream decrypt'] / dec:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--budget", type=float, default=0.3, help="seconds per figure per round")
    parser.add_argument("--write", help="replace the crypto section of this markdown file")
    arguments = parser.parse_args()
    text = table(measure(arguments.rounds, arguments.budget), arguments.rounds, arguments.budget)
    print(text)
    if arguments.write:
        with open(arguments.write, encoding="utf-8") as f:
            document = f.read()
        before, rest = document.split(BEGIN, 1)
        _, after = rest.split(END, 1)
        with open(arguments.write, "w", encoding="utf-8") as f:
            f.write(f"{before}{BEGIN}\n{text}\n{END}{after}")


if __name__ == "__main__":
    main()
