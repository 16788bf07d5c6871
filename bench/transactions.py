"""
What sending a transaction's statements together saves (ITransaction.send),
and what preparing them saves beside that, on the PostgreSQL on this
machine, in one run:

  - executed: the shape of creating a post (an advisory lock, a SELECT
    whose row is read, then three INSERTs of a sealed-sized value), every
    statement with t.execute, each its own round trip (the baseline);
  - sent: the same transaction with the lock and the INSERTs sent
    (t.send), as the stores do: two round trips;

both with every statement's values written into its text (the database
URL's ?prepare=off), and

  - prepared: sent, on a database that prepares the statements each
    connection sends again and again (the default): their values go
    with an EXECUTE of the statement PostgreSQL parsed and planned once.

Each way runs --transactions transactions, 8 at once (as the pool's
threads do), in turn, each round begun by the next way.  Reported per transaction: this
process's CPU (the reactor, the pool's threads, psycopg), PostgreSQL's CPU
(every postgres process, from /proc) and the wall time, medians of the
rounds.

    python bench/transactions.py [--transactions 3000] [--rounds 5]
        [--write docs/benchmarks.md]

Needs PostgreSQL (TXPLATFORM_BENCH_POSTGRES, default
postgresql://postgres@127.0.0.1/test).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
import uuid
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sections import writeSection  # noqa: E402
from twisted.internet import defer, reactor  # noqa: E402

from txplatform.database import Migration, databaseFromURL  # noqa: E402

BEGIN, END = "<!-- transactions:begin -->", "<!-- transactions:end -->"
POSTGRES = os.environ.get("TXPLATFORM_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1/test")
CONCURRENT = 8
TABLES = [
    Migration(
        1,
        "rows and tombstones",
        (
            "CREATE TABLE rows (id {id} PRIMARY KEY, value {bytes} NOT NULL, at {bigint})",
            "CREATE TABLE tombstones (id {id} PRIMARY KEY)",
        ),
    )
]


def postgresCPU() -> float:
    """
    The CPU seconds of every postgres process so far.
    """
    ticks = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/comm") as f:
                if f.read().strip() != "postgres":
                    continue
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


#: Each way: its round trips, whether it sends, and whether its database
#: prepares statements.
WAYS = {"executed": (7, False, False), "sent": (2, True, False), "prepared": (2, True, True)}


def create(t: Any, n: int, sent: bool) -> None:
    write = t.send if sent else t.execute
    if sent:
        t.lock(f"author:{n % 4}")
    else:
        # What lock() did before it was sent: a statement of its own.
        t.execute("SELECT pg_advisory_xact_lock(?)", (n % 4,))
    if t.execute("SELECT 1 FROM tombstones WHERE id = ?", (f"author:{n % 4}",)).fetchone():
        raise AssertionError("no tombstones here")
    for part in "abc":
        write("INSERT INTO rows (id, value, at) VALUES (?, ?, ?)", (f"{part}{n}", b"s" * 160, n))


@defer.inlineCallbacks
def measure(database: Any, way: str, count: int, start: int) -> Any:
    semaphore = defer.DeferredSemaphore(CONCURRENT)
    cpu, postgres, wall = time.process_time(), postgresCPU(), time.perf_counter()
    yield defer.gatherResults(
        [
            semaphore.run(database.runInteraction, create, start + n, WAYS[way][1])
            for n in range(count)
        ]
    )
    return {
        "client": (time.process_time() - cpu) / count * 1e6,
        "postgres": (postgresCPU() - postgres) / count * 1e6,
        "wall": (time.perf_counter() - wall) / count * 1e6,
    }


@defer.inlineCallbacks
def run(arguments: argparse.Namespace) -> Any:
    schema = "bench_" + uuid.uuid4().hex[:10]
    url = f"{POSTGRES}?schema={schema}&pool={CONCURRENT}"
    text, prepared = databaseFromURL(url + "&prepare=off", reactor), databaseFromURL(url, reactor)
    for database in (text, prepared):
        database.start()
    results: dict[str, list[dict[str, float]]] = {way: [] for way in WAYS}
    try:
        yield text.migrate("bench", TABLES)
        start = 0
        order = list(WAYS)
        for round in range(arguments.rounds):
            # Each way goes first, in the middle and last in turn.
            turn = order[round % len(order) :] + order[: round % len(order)]
            for way in turn:
                database = prepared if WAYS[way][2] else text
                figures = yield measure(database, way, arguments.transactions, start)
                start += arguments.transactions
                results[way].append(figures)
                print(
                    f"round {round + 1} {way}: client {figures['client']:.0f} us,"
                    f" PostgreSQL {figures['postgres']:.0f} us,"
                    f" wall {figures['wall']:.0f} us per transaction",
                    flush=True,
                )
    finally:
        yield prepared.close()
        yield text.runOperation(f"DROP SCHEMA {schema} CASCADE")
        yield text.close()
    return results


def render(arguments: argparse.Namespace, results: dict[str, list[dict[str, float]]]) -> str:
    def med(way: str, key: str) -> float:
        return statistics.median(r[key] for r in results[way])

    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()}, {os.cpu_count()} cores,"
        f" Python {platform.python_version()}; {arguments.rounds} rounds of"
        f" {arguments.transactions} transactions each way, {CONCURRENT} at once, medians.",
        "",
        "| statements | round trips | this process, us/transaction | PostgreSQL, us/transaction"
        " | both | wall, us/transaction |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for way, (trips, _, _) in WAYS.items():
        client, postgres = med(way, "client"), med(way, "postgres")
        lines.append(
            f"| {way} | {trips} | {client:.0f} | {postgres:.0f} | {client + postgres:.0f}"
            f" | {med(way, 'wall'):.0f} |"
        )
    both = {w: med(w, "client") + med(w, "postgres") for w in results}
    lines += [
        "",
        f"Sent against executed: {both['sent'] / both['executed']:.2f}x the CPU of both"
        f" processes, {med('sent', 'wall') / med('executed', 'wall'):.2f}x the wall time."
        f" Prepared against sent: {both['prepared'] / both['sent']:.2f}x the CPU of both"
        f" (PostgreSQL {med('prepared', 'postgres') / med('sent', 'postgres'):.2f}x, this"
        f" process {med('prepared', 'client') / med('sent', 'client'):.2f}x),"
        f" {med('prepared', 'wall') / med('sent', 'wall'):.2f}x the wall time.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--transactions", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--write", help="replace the transactions section of this markdown file")
    arguments = parser.parse_args()
    outcome: list[Any] = []

    def go() -> None:
        d = run(arguments)
        d.addBoth(outcome.append)
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(go)
    reactor.run()
    [results] = outcome
    if not isinstance(results, dict):
        results.raiseException()
    report = render(arguments, results)
    print(report)
    if arguments.write:
        writeSection(arguments.write, BEGIN, END, report)


if __name__ == "__main__":
    main()
