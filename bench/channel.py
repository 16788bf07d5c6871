"""
The secure channel and the direct transport against their baselines, on
loopback, in the same run:

  - handshakes per second: the Noise XX channel against TLS 1.3 through
    pyOpenSSL with client certificates (both sides authenticated, as the
    channel does), ECDSA P-256 certificates, X25519 key exchange;
  - throughput (MB/s) of 64 MiB written in 64 KiB writes: the channel
    (AES-256-GCM) against TLS 1.3 (AES-256-GCM) and plain TCP;
  - RPC calls per second at 16 concurrent callers: DirectBus against the
    AMQP bus on the local RabbitMQ (bench/direct_echo.py and
    bench/amqp_echo.py: the same echo service, JSON payloads, servers in
    their own processes).

    .venv/bin/python bench/channel.py --rounds 5 --write docs/benchmarks.md

Client and server of the first two run in this process, on one reactor,
for both contenders alike.  Figures are medians over the rounds, which
interleave the contenders.
"""

# ruff: noqa: E402

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from io import BytesIO
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sections import writeSection  # noqa: E402
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, wrapClientTLS
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import (
    Certificate,
    CertificateOptions,
    PrivateCertificate,
    TLSVersion,
    optionsForClientTLS,
)
from twisted.internet.task import react
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.web.client import FileBodyProducer
from zope.interface import implementer

from txplatform.channel.identity import Identity, Peer, TrustStore
from txplatform.channel.protocol import (
    ChannelClientEndpoint,
    ChannelServerEndpoint,
    ChannelSettings,
)
from txplatform.serviceid import ServiceId

BEGIN, END = "<!-- channel:begin -->", "<!-- channel:end -->"
SERVER_ID = ServiceId.fromHex("0fecc0")
CLIENT_ID = ServiceId.fromHex("0fecc1")
VOLUME = 64 * 1024 * 1024


# Contenders


def certificate(name: str) -> PrivateCertificate:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return PrivateCertificate.loadPEM(pem)


class TLS:
    name = "TLS 1.3 (pyOpenSSL)"

    def __init__(self) -> None:
        self.server = certificate("localhost")
        self.client = certificate("client")

    def listen(self, factory: Factory) -> defer.Deferred[Any]:
        options = CertificateOptions(
            privateKey=self.server.privateKey.original,
            certificate=self.server.original,
            verify=True,
            caCerts=[Certificate(self.client.original).original],
            requireCertificate=True,
            raiseMinimumTo=TLSVersion.TLSv1_3,
        )
        wrapped = TLSMemoryBIOFactory(options, False, factory)
        return TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(wrapped)

    def endpoint(self, port: int) -> Any:
        options = optionsForClientTLS(
            "localhost",
            trustRoot=Certificate(self.server.original),
            clientCertificate=self.client,
            extraCertificateOptions={"raiseMinimumTo": TLSVersion.TLSv1_3},
        )
        return wrapClientTLS(options, TCP4ClientEndpoint(reactor, "127.0.0.1", port))


class Channel:
    name = "Noise XX channel"

    def __init__(self) -> None:
        server, client = Identity.generate(SERVER_ID), Identity.generate(CLIENT_ID)
        trust = TrustStore([Peer(SERVER_ID, server.public), Peer(CLIENT_ID, client.public)])
        self.serverSettings = ChannelSettings(server, trust, reactor)
        self.clientSettings = ChannelSettings(client, trust, reactor)

    def listen(self, factory: Factory) -> defer.Deferred[Any]:
        endpoint = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
        return ChannelServerEndpoint(endpoint, self.serverSettings).listen(factory)

    def endpoint(self, port: int) -> Any:
        return ChannelClientEndpoint(
            TCP4ClientEndpoint(reactor, "127.0.0.1", port), self.clientSettings, SERVER_ID
        )


class Plain:
    name = "plain TCP"

    def listen(self, factory: Factory) -> defer.Deferred[Any]:
        return TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)

    def endpoint(self, port: int) -> Any:
        return TCP4ClientEndpoint(reactor, "127.0.0.1", port)


# Handshakes


@implementer(IHandshakeListener)
class Greeter(Protocol):
    """
    The client's application: done once the handshake is (for TLS, told by
    handshakeCompleted; the channel builds it only after its handshake).
    """

    def __init__(self, tls: bool) -> None:
        self.done: defer.Deferred[None] = defer.Deferred()
        self.lost: defer.Deferred[None] = defer.Deferred()
        self._tls = tls

    def connectionMade(self) -> None:
        if not self._tls:
            self.done.callback(None)

    def handshakeCompleted(self) -> None:
        if not self.done.called:
            self.done.callback(None)

    def connectionLost(self, reason: Any) -> None:
        if not self.done.called:
            self.done.errback(reason)
        self.lost.callback(None)


@defer.inlineCallbacks
def handshakes(contender: Any, duration: float, concurrency: int = 4) -> Any:
    port = yield contender.listen(Factory.forProtocol(Protocol))
    endpoint = contender.endpoint(port.getHost().port)
    tls = isinstance(contender, TLS)
    count = 0
    end = time.perf_counter() + duration

    @defer.inlineCallbacks
    def loop() -> Any:
        nonlocal count
        while time.perf_counter() < end:
            greeter = Greeter(tls)
            protocol = yield endpoint.connect(Factory.forProtocol(lambda g=greeter: g))
            yield greeter.done
            count += 1
            protocol.transport.loseConnection()
            yield greeter.lost

    started = time.perf_counter()
    yield defer.gatherResults([loop() for _ in range(concurrency)])
    elapsed = time.perf_counter() - started
    yield port.stopListening()
    return count / elapsed


# Throughput


class Sink(Protocol):
    def __init__(self, finished: defer.Deferred[float]) -> None:
        self._finished = finished
        self.received = 0

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)
        if self.received >= VOLUME and not self._finished.called:
            self._finished.callback(time.perf_counter())


@defer.inlineCallbacks
def throughput(contender: Any) -> Any:
    finished: defer.Deferred[float] = defer.Deferred()
    port = yield contender.listen(Factory.forProtocol(lambda: Sink(finished)))
    endpoint = contender.endpoint(port.getHost().port)
    greeter = Greeter(isinstance(contender, TLS))
    protocol = yield endpoint.connect(Factory.forProtocol(lambda: greeter))
    yield greeter.done
    producer = FileBodyProducer(BytesIO(bytes(VOLUME)), readSize=64 * 1024)
    transport = protocol.transport
    transport.registerProducer(producer, True)
    started = time.perf_counter()
    yield producer.startProducing(transport)
    ended = yield finished
    transport.unregisterProducer()
    transport.loseConnection()
    yield greeter.lost
    yield port.stopListening()
    return VOLUME / (ended - started) / 1e6


# RPC, in other processes


def rpc(kind: str, keys: str, port: int, url: str, duration: float) -> dict[str, float]:
    if kind == "direct":
        argv = [os.path.join(HERE, "direct_echo.py"), "client", "--keys", keys, "--port", str(port)]
    else:
        argv = [os.path.join(HERE, "amqp_echo.py"), "client", "--impl", "ours", "--url", url]
    result = subprocess.run(
        [sys.executable, *argv, "--concurrency", "16", "--duration", str(duration)],
        capture_output=True,
        text=True,
        check=True,
        timeout=duration + 60,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def startServer(argv: list[str], log: Any) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, *argv], stdout=subprocess.PIPE, stderr=log, text=True
    )
    line = process.stdout.readline() if process.stdout else ""
    if line.strip() != "ready":
        process.terminate()
        raise SystemExit(f"{argv[0]} did not start: {line!r}")
    return process


# The run


@defer.inlineCallbacks
def inProcess(rounds: int, budget: float) -> Any:
    tls, channel, plain = TLS(), Channel(), Plain()
    results: dict[str, list[float]] = {}
    for round in range(rounds):
        for contender in (channel, tls):
            rate = yield handshakes(contender, budget)
            results.setdefault(f"handshakes {contender.name}", []).append(rate)
        for contender in (channel, tls, plain):
            rate = yield throughput(contender)
            results.setdefault(f"throughput {contender.name}", []).append(rate)
        print(
            f"round {round + 1}: " + ", ".join(f"{k} {v[-1]:.0f}" for k, v in results.items()),
            file=sys.stderr,
        )
    return {k: statistics.median(v) for k, v in results.items()}


def rpcRounds(rounds: int, duration: float, url: str) -> dict[str, dict[str, float]]:
    keys = tempfile.mkdtemp(prefix="txplatform-bench-keys-")
    import random

    port = random.randint(30000, 60000)
    log = open(os.path.join(keys, "servers.log"), "w")
    servers = [
        startServer(
            [os.path.join(HERE, "direct_echo.py"), "server", "--keys", keys, "--port", str(port)],
            log,
        ),
        startServer(
            [os.path.join(HERE, "amqp_echo.py"), "server", "--impl", "ours", "--url", url], log
        ),
    ]
    runs: dict[str, list[dict[str, float]]] = {"direct": [], "amqp": []}
    try:
        for round in range(rounds):
            for kind in ("direct", "amqp"):
                runs[kind].append(rpc(kind, keys, port, url, duration))
            print(
                f"rpc round {round + 1}: "
                + ", ".join(f"{k} {v[-1]['calls_per_s']:.0f}/s" for k, v in runs.items()),
                file=sys.stderr,
            )
    finally:
        for process in servers:
            process.terminate()
        for process in servers:
            process.wait(timeout=30)
        log.close()
    return {
        kind: {key: statistics.median(r[key] for r in values) for key in values[0]}
        for kind, values in runs.items()
    }


def table(measured: dict[str, float], calls: dict[str, dict[str, float]], args: Any) -> str:
    channel, tls = "Noise XX channel", "TLS 1.3 (pyOpenSSL)"
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()}, {os.cpu_count()} cores,"
        f" Python {platform.python_version()}; medians of {args.rounds} rounds.",
        "",
        "| loopback, one process | Noise XX channel | TLS 1.3 (pyOpenSSL) | plain TCP"
        " | channel / TLS |",
        "|---|---:|---:|---:|---:|",
        f"| handshakes/s (4 at a time, mutual authentication) |"
        f" {measured['handshakes ' + channel]:.0f} | {measured['handshakes ' + tls]:.0f} | |"
        f" {measured['handshakes ' + channel] / measured['handshakes ' + tls]:.2f} |",
        f"| throughput, MB/s (64 MiB in 64 KiB writes) |"
        f" {measured['throughput ' + channel]:.0f} | {measured['throughput ' + tls]:.0f} |"
        f" {measured['throughput plain TCP']:.0f} |"
        f" {measured['throughput ' + channel] / measured['throughput ' + tls]:.2f} |",
    ]
    if calls:
        direct, amqp = calls["direct"], calls["amqp"]
        lines += [
            "",
            "| RPC, 16 concurrent callers, echo | calls/s | p50 ms | p99 ms |",
            "|---|---:|---:|---:|",
            f"| direct transport (DirectBus, channel) | {direct['calls_per_s']:.0f}"
            f" | {direct['p50_ms']:.2f} | {direct['p99_ms']:.2f} |",
            f"| AMQP bus (RabbitMQ on this machine) | {amqp['calls_per_s']:.0f}"
            f" | {amqp['p50_ms']:.2f} | {amqp['p99_ms']:.2f} |",
            "",
            f"Direct transport: **{direct['calls_per_s'] / amqp['calls_per_s']:.2f}x** the AMQP"
            " bus's calls/s.",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--budget", type=float, default=2.0, help="seconds of handshakes")
    parser.add_argument("--rpc-duration", type=float, default=5.0)
    parser.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/")
    parser.add_argument("--no-rpc", action="store_true", help="skip the RPC comparison")
    parser.add_argument("--write", help="replace the channel section of this markdown file")
    args = parser.parse_args()

    calls = {} if args.no_rpc else rpcRounds(args.rounds, args.rpc_duration, args.url)

    @defer.inlineCallbacks
    def run(_: Any) -> Any:
        measured = yield inProcess(args.rounds, args.budget)
        text = table(measured, calls, args)
        print(text)
        if args.write:
            writeSection(args.write, BEGIN, END, text)

    react(run)


if __name__ == "__main__":
    main()
