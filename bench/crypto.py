"""
Encryption throughput: txplatform's sealed records and streams against raw
AES-256-GCM from cryptography, on the same data in the same run.

    .venv/bin/python bench/crypto.py --rounds 5 --write docs/benchmarks.md

For each size (1 KiB, 64 KiB, 16 MiB) and direction, each round times a
loop of the operation; the figure is the median over rounds.  The baseline
is what a program using AES-GCM directly does per record: a fresh random
96-bit nonce and one encrypt (or decrypt) call.  Sealing adds the 37-byte
header, the per-session key, the nonce layout and the policy checks.
Streams are fed in 64 KiB writes of bytes (as a producer delivers them)
through EncryptingConsumer/DecryptingConsumer into a consumer that keeps
the pieces, as a transport's buffer does.
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
sys.path.insert(0, HERE)

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes  # noqa: E402
from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402
from sections import writeSection  # noqa: E402
from twisted.internet.task import Clock  # noqa: E402

from txplatform.crypto.keyring import Keyring, MasterKey  # noqa: E402
from txplatform.crypto.sealing import HEADER_SIZE, Sealer  # noqa: E402
from txplatform.crypto.stream import DecryptingConsumer, EncryptingConsumer  # noqa: E402

BEGIN, END = "<!-- crypto:begin -->", "<!-- crypto:end -->"
SIZES = [("1 KiB", 1024), ("64 KiB", 64 * 1024), ("16 MiB", 16 * 1024 * 1024)]
CONTEXT = b"field\0posts\0body\0" + b"01hx" * 6


class Sink:
    """
    A consumer keeping what it is written, as a transport's buffer does.
    """

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.write = self.written.append


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
        # What a producer delivers (FileBodyProducer, a transport): bytes.
        writes = [data[i : i + chunk] for i in range(0, size, chunk)]
        body = bytes(sealed[HEADER_SIZE:])
        reads = [body[i : i + chunk] for i in range(0, len(body), chunk)]

        def stream() -> None:
            header, encrypter = sealer.encrypter(CONTEXT)
            consumer = EncryptingConsumer(Sink(), encrypter, header)
            for piece in writes:
                consumer.write(piece)
            consumer.finish()

        def unstream() -> None:
            decrypter = sealer.decrypter(sealed[:HEADER_SIZE], CONTEXT)
            consumer = DecryptingConsumer(Sink(), decrypter)
            for piece in reads:
                consumer.write(piece)
            consumer.finish()

        rawBody, rawTag = rawSealed[:-16], rawSealed[-16:]
        rawReads = [rawBody[i : i + chunk] for i in range(0, len(rawBody), chunk)]

        def rawStream() -> None:
            encryptor = Cipher(algorithms.AES(key), modes.GCM(os.urandom(12))).encryptor()
            encryptor.authenticate_additional_data(CONTEXT)
            sink = Sink()
            for piece in writes:
                sink.write(encryptor.update(piece))
            encryptor.finalize()
            sink.write(encryptor.tag)

        def rawUnstream() -> None:
            decryptor = Cipher(algorithms.AES(key), modes.GCM(nonce)).decryptor()
            decryptor.authenticate_additional_data(CONTEXT)
            sink = Sink()
            for piece in rawReads:
                sink.write(decryptor.update(piece))
            decryptor.finalize_with_tag(rawTag)

        operations = {
            "raw encrypt": lambda: raw.encrypt(os.urandom(12), data, CONTEXT),
            "raw decrypt": lambda: raw.decrypt(nonce, rawSealed, CONTEXT),
            "raw incremental encrypt": rawStream,
            "raw incremental decrypt": rawUnstream,
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
        "Records: `Sealer.seal`/`open` against one raw AES-GCM call on the whole input.",
        "",
        "| size | raw encrypt | seal | seal / raw | raw decrypt | open | open / raw |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        enc, dec = r["raw encrypt"], r["raw decrypt"]
        lines.append(
            f"| {r['label']} | {enc:.0f} | {r['seal']:.0f} | {r['seal'] / enc:.2f}"
            f" | {dec:.0f} | {r['open']:.0f} | {r['open'] / dec:.2f} |"
        )
    lines += [
        "",
        "Streams fed in 64 KiB writes: the consumers against the raw call on the whole",
        "input (above) and against cryptography's incremental AES-GCM fed the same",
        "writes (one GCM over the whole stream: no segments, and a decryption that",
        "hands out plaintext before anything is verified).",
        "",
        "| size | raw incremental encrypt | stream encrypt | / raw | / raw incremental"
        " | raw incremental decrypt | stream decrypt | / raw | / raw incremental |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        enc, dec = r["raw encrypt"], r["raw decrypt"]
        ienc, idec = r["raw incremental encrypt"], r["raw incremental decrypt"]
        senc, sdec = r["stream encrypt"], r["stream decrypt"]
        lines.append(
            f"| {r['label']} | {ienc:.0f} | {senc:.0f} | {senc / enc:.2f} | {senc / ienc:.2f}"
            f" | {idec:.0f} | {sdec:.0f} | {sdec / dec:.2f} | {sdec / idec:.2f} |"
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
        writeSection(arguments.write, BEGIN, END, text)


if __name__ == "__main__":
    main()
