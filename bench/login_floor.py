"""
A floor for the login's targets: the least a Python service on RabbitMQ
spends on a login beside its argon2id verify, on this machine, in the same
run.

The login targets of bench/production.py hold the Account process to 1.1x
a bare argon2id verify's CPU, and logins to 85% of cores / verify time.
Here the same load (wrk, POST, 16 connections) goes through a bare Klein
app making one pika RPC per request (as bench/klein_pika.py) to a bare pika
service that does nothing but verify the password, in a pool of two
threads (as the Account service hashes), and answer: no database, no
throttle, no session, no encryption.  What it spends beyond its verify is
what any Python service on RabbitMQ spends on a call and a thread's
hand-over; what the platform spends beyond that is its own.

For each round, read from /proc: the CPU per login of the Klein app, the
service and RabbitMQ (per login the Klein app took, those in flight when
wrk stopped included, as bench/production.py counts the platform's); the
service's main thread and its hashing threads apart; and argon2Baseline()
beside it (the verify alone, as bench/production.py measures it).  The
logins against cores / verify time, both the verify alone's and the
hashing threads' own CPU a login in the round.  Medians of --rounds.

    python bench/login_floor.py [--duration 10] [--rounds 3] [--write docs/benchmarks.md]
    python bench/login_floor.py service URL     (the bare service)
    python bench/login_floor.py web PORT URL    (the bare Klein app)

Needs RabbitMQ (rabbitmqctl on the PATH), wrk and pika (pip install '.[bench]').
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

BEGIN, END = "<!-- login_floor:begin -->", "<!-- login_floor:end -->"
QUEUE = "bench.login-floor"


def service(url: str) -> None:
    """
    Verify each call's password against one argon2id hash at the Account
    service's parameters, in two threads of its own; answer; acknowledge.
    """
    import pika
    from amqp_echo import PREFETCH, pikaConnect
    from embedded import PASSWORD
    from production import accountHasher
    from twisted.internet import defer, reactor
    from twisted.internet.threads import deferToThreadPool
    from twisted.python.threadpool import ThreadPool

    hasher = accountHasher()
    hashed = hasher.hash(PASSWORD)
    pool = ThreadPool(2, 2, "argon2id")
    pool.start()

    def verify(password: str) -> bool:
        try:
            return hasher.verify(hashed, password)
        except Exception:
            return False

    @defer.inlineCallbacks
    def serve() -> Any:
        _, channel = yield pikaConnect(url)
        yield channel.queue_declare(queue=QUEUE, auto_delete=True)
        yield channel.basic_qos(prefetch_count=PREFETCH)
        queue, _ = yield channel.basic_consume(queue=QUEUE)
        print("ready", flush=True)
        while True:
            ch, method, properties, body = yield queue.get()
            checked = deferToThreadPool(reactor, pool, verify, json.loads(body)["password"])

            def answer(ok: bool, ch: Any = ch, method: Any = method, properties: Any = properties):
                ch.basic_publish(
                    "",
                    properties.reply_to,
                    json.dumps({"ok": ok}).encode(),
                    pika.BasicProperties(correlation_id=properties.correlation_id),
                )
                ch.basic_ack(method.delivery_tag)

            checked.addCallback(answer)

    reactor.callWhenRunning(serve)
    reactor.run()


def web(port: int, url: str) -> None:
    """
    POST / with a JSON body: one call to the service, with the password.
    """
    from amqp_echo import pikaClient
    from klein import Klein
    from twisted.internet import defer, reactor

    app = Klein()
    calls: list[Any] = []
    handled = [0]

    @app.route("/handled")
    def count(request: Any) -> bytes:
        # As the platform's gateways count theirs: with those whose client
        # went away (wrk's last, in flight when it stopped).
        return str(handled[0]).encode()

    @app.route("/", methods=["POST"])
    def login(request: Any) -> Any:
        handled[0] += 1
        body = json.loads(request.content.read())

        def answered(reply: Any) -> bytes:
            request.setHeader("Content-Type", "application/json")
            if not reply["ok"]:
                request.setResponseCode(401)
            return json.dumps(reply).encode()

        return calls[0]({"password": body["password"]}).addCallback(answered)

    @defer.inlineCallbacks
    def start() -> Any:
        calls.append((yield pikaClient(url, QUEUE)))
        print("ready", flush=True)

    reactor.callWhenRunning(start)
    app.run("127.0.0.1", port)


def threadCPU(pid: int) -> tuple[float, float]:
    """
    CPU seconds of C{pid}'s main thread, and of its other threads together.
    """
    tick = os.sysconf("SC_CLK_TCK")
    main = others = 0.0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # a thread that ended: the pool's are not
        used = (int(fields[11]) + int(fields[12])) / tick
        if int(tid) == pid:
            main += used
        else:
            others += used
    return main, others


class Floor:
    """
    The bare service and its Klein app, each a process of C{processes}:
    rounds of the login load through them, measured one at a time (here,
    and by bench/production.py beside each of the platform's login rounds).
    """

    def __init__(self, processes: Any, logs: str) -> None:
        from amqp import BROKER, freePort
        from embedded import PASSWORD, luaScript

        self.service = processes.start(sys.executable, __file__, "service", BROKER, ready="ready")
        port = freePort()
        self.web = processes.start(
            sys.executable, __file__, "web", str(port), BROKER, ready="ready"
        )
        self.url = f"http://127.0.0.1:{port}/"
        self.script = luaScript(
            logs, "login-floor", "POST", {"username": "u", "password": PASSWORD}, None
        )

    def handled(self) -> float:
        """
        The logins the Klein app has taken, as the platform's gateways
        count theirs.
        """
        import urllib.request

        with urllib.request.urlopen(self.url + "handled", timeout=10) as response:
            return float(response.read())

    def round(self, meter: Any, connections: int, duration: float) -> dict[str, Any]:
        """
        One run of wrk, as C{meter} counts it (the caller's names for the
        processes), with the service's main thread and hashing threads
        apart: C{main_ms} and C{hashing_ms} a login.
        """
        from production import measure

        before = threadCPU(self.service.pid)
        measured = measure(meter, self.url, connections, duration, self.script, self.handled)
        after = threadCPU(self.service.pid)
        measured["main_ms"] = (after[0] - before[0]) * 1000 / measured["counted"]
        measured["hashing_ms"] = (after[1] - before[1]) * 1000 / measured["counted"]
        return measured


def render(rounds: list[dict[str, Any]], command: str) -> str:
    from production import loginShare

    def median(f: Any) -> float:
        return statistics.median(f(r) for r in rounds)

    # As bench/production.py counts them: the machine's, not two.
    cores = os.cpu_count() or 1
    alone = median(lambda r: r["argon2"]["wall_ms"])
    # As bench/production.py judges its logins: a verify alone slower than
    # one of two at once under the load was measured on a slower machine.
    suspect = (
        " (too high: the verify alone took longer than the hashing threads' own under the load)"
        if alone > median(lambda r: r["hashing_ms"])
        else ""
    )
    lines = [
        f"Measured with `{command}`: medians of {len(rounds)} rounds (wrk, 16 connections).",
        "",
        "| figure | the bare service |",
        "|---|---:|",
        f"| logins/s | {median(lambda r: r['rps']):.0f} |",
        f"| CPU a login, Klein app | {median(lambda r: r['cpu_ms']['klein']):.2f} ms |",
        f"| CPU a login, service | {median(lambda r: r['cpu_ms']['service']):.2f} ms |",
        f"| CPU a login, RabbitMQ | {median(lambda r: r['cpu_ms']['RabbitMQ']):.2f} ms |",
        f"| the service's hashing threads, a login | {median(lambda r: r['hashing_ms']):.2f} ms |",
        f"| the service's main thread, a login | {median(lambda r: r['main_ms']):.2f} ms |",
        "| argon2id verify alone, two at once beside each round (its CPU: the 1.1x target's"
        f" measure) | {median(lambda r: r['argon2']['cpu_ms']):.2f} ms |",
        "| service against its own hashing threads | "
        f"{median(lambda r: r['cpu_ms']['service'] / r['hashing_ms']):.3f}x |",
        "| service against the verify alone (the target's measure) | "
        f"{median(lambda r: r['cpu_ms']['service'] / r['argon2']['cpu_ms']):.2f}x"
        f" (rounds {min(r['cpu_ms']['service'] / r['argon2']['cpu_ms'] for r in rounds):.2f}x"
        f" to {max(r['cpu_ms']['service'] / r['argon2']['cpu_ms'] for r in rounds):.2f}x) |",
        "| argon2id verify alone, one at a time (its wall time: the throughput's measure) | "
        f"{alone:.2f} ms |",
        "| logins against cores / verify time | "
        f"{100 * median(lambda r: loginShare(r['rps'], r['argon2']['wall_ms'], cores)):.0f}%"
        f"{suspect} |",
        "| logins against cores / its hashing threads' CPU a login | "
        f"{100 * median(lambda r: loginShare(r['rps'], r['hashing_ms'], cores)):.0f}% |",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--write", help="replace the login_floor section of this markdown file")
    if sys.argv[1:2] == ["service"]:
        service(sys.argv[2])
        return
    if sys.argv[1:2] == ["web"]:
        web(int(sys.argv[2]), sys.argv[3])
        return
    arguments = parser.parse_args()

    from amqp import Processes, ensureVhost
    from production import CPUMeter, _pidsNamed, argon2Baseline
    from sections import writeSection

    ensureVhost()
    logs = tempfile.mkdtemp(prefix="login-floor-")
    processes = Processes(logs)
    rounds = []
    try:
        floor = Floor(processes, logs)
        meter = CPUMeter(
            {
                "klein": lambda: [floor.web.pid],
                "service": lambda: [floor.service.pid],
                "RabbitMQ": lambda: _pidsNamed("beam.smp"),
            }
        )
        for round in range(arguments.rounds):
            measured = floor.round(meter, 16, arguments.duration)
            measured["argon2"] = argon2Baseline()
            rounds.append(measured)
            print(
                f"round {round + 1}: {measured['rps']:.0f} logins/s, {measured['failed']} not"
                f" 2xx; service {measured['cpu_ms']['service']:.2f} ms a login (main thread"
                f" {measured['main_ms']:.2f}, hashing {measured['hashing_ms']:.2f}), Klein"
                f" {measured['cpu_ms']['klein']:.2f}, RabbitMQ {measured['cpu_ms']['RabbitMQ']:.2f};"
                f" argon2id alone {measured['argon2']['cpu_ms']:.2f} ms",
                file=sys.stderr,
            )
    finally:
        processes.stopAll()
    command = ".venv/bin/python bench/login_floor.py " + " ".join(sys.argv[1:])
    text = render(rounds, command)
    print(text)
    if arguments.write:
        writeSection(arguments.write, BEGIN, END, text)


if __name__ == "__main__":
    main()
