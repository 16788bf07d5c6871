"""
RPC echo over RabbitMQ, three ways, for bench/amqp.py:

  - ours: txplatform's AMQPBus (serve / call);
  - txamqp: client and server written directly on txamqp's API (the
    baseline the bus is held to);
  - pika: pika's Twisted adapter (for reference).

    python bench/amqp_echo.py server --impl ours --url amqp://...
    python bench/amqp_echo.py client --impl ours --url amqp://... --concurrency 16 --duration 5

The client prints one JSON line: calls/s, p50 and p99 in milliseconds.
All three use a queue named bench.echo.<impl> (ours: the service 0fecc0's
queue), direct reply-to, correlation ids, manual acks on the server and a
prefetch of 64.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any
from urllib.parse import urlsplit

from twisted.internet import defer, protocol, reactor
from twisted.internet.task import react

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

ECHO = "bench.echo"
PREFETCH = 64
PAYLOAD = {"post_id": "01aaaaaaaaaaaaaaaaaaaaaaaa", "n": 1}


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


# Ours


def oursServer(url: str) -> defer.Deferred[Any]:
    from txplatform.amqp.bus import AMQPBus
    from txplatform.amqp.url import BrokerURL
    from txplatform.serviceid import ServiceId

    bus = AMQPBus(reactor, BrokerURL.parse(url))
    bus.startService()
    return bus.serve(
        ServiceId.fromHex("0fecc0"), {"echo": lambda payload, context: payload}, prefetch=PREFETCH
    )


@defer.inlineCallbacks
def oursClient(url: str) -> Any:
    from txplatform.amqp.bus import AMQPBus
    from txplatform.amqp.url import BrokerURL
    from txplatform.serviceid import ServiceId

    bus = AMQPBus(reactor, BrokerURL.parse(url))
    bus.startService()
    yield bus.whenConnected()
    service = ServiceId.fromHex("0fecc0")
    return lambda: bus.call(service, "echo", PAYLOAD)


# Bare txamqp


@defer.inlineCallbacks
def txamqpConnect(url: str) -> Any:
    from txamqp.client import TwistedDelegate
    from txamqp.protocol import AMQClient

    from txplatform.amqp.spec import loadSpec

    parts = urlsplit(url)
    vhost = parts.path[1:] or "/"
    client = yield protocol.ClientCreator(
        reactor, AMQClient, delegate=TwistedDelegate(), vhost=vhost, spec=loadSpec()
    ).connectTCP(parts.hostname, parts.port or 5672)
    yield client.authenticate(parts.username or "guest", parts.password or "guest")
    channel = yield client.channel(1)
    yield channel.channel_open()
    return client, channel


@defer.inlineCallbacks
def txamqpServer(url: str) -> Any:
    from txamqp.content import Content

    client, channel = yield txamqpConnect(url)
    yield channel.queue_declare(queue=ECHO + ".txamqp", auto_delete=True)
    yield channel.basic_qos(prefetch_count=PREFETCH)
    yield channel.basic_consume(queue=ECHO + ".txamqp", consumer_tag="server")
    queue = yield client.queue("server")

    @defer.inlineCallbacks
    def loop() -> Any:
        while True:
            message = yield queue.get()
            properties = message.content.properties
            channel.basic_publish(
                exchange="",
                routing_key=properties["reply-to"],
                content=Content(
                    message.content.body,
                    properties={"correlation-id": properties["correlation-id"]},
                ),
            )
            channel.basic_ack(delivery_tag=message.delivery_tag)

    loop().addErrback(_closed)


def _closed(failure: Any) -> None:
    # The connection went at the end of the run.
    from txamqp.queue import Closed

    failure.trap(Closed)


@defer.inlineCallbacks
def txamqpClient(url: str) -> Any:
    from txamqp.content import Content

    client, channel = yield txamqpConnect(url)
    yield channel.basic_consume(queue="amq.rabbitmq.reply-to", consumer_tag="replies", no_ack=True)
    replies = yield client.queue("replies")
    pending: dict[str, defer.Deferred[Any]] = {}
    counter = iter(range(10**12))

    @defer.inlineCallbacks
    def loop() -> Any:
        while True:
            message = yield replies.get()
            d = pending.pop(message.content.properties["correlation-id"], None)
            if d is not None:
                d.callback(json.loads(message.content.body))

    loop().addErrback(_closed)

    def call() -> defer.Deferred[Any]:
        correlation = str(next(counter))
        d: defer.Deferred[Any] = defer.Deferred()
        pending[correlation] = d
        channel.basic_publish(
            exchange="",
            routing_key=ECHO + ".txamqp",
            content=Content(
                json.dumps(PAYLOAD),
                properties={"correlation-id": correlation, "reply-to": "amq.rabbitmq.reply-to"},
            ),
        )
        return d

    return call


# Pika


@defer.inlineCallbacks
def pikaConnect(url: str) -> Any:
    import pika
    from pika.adapters.twisted_connection import TwistedProtocolConnection

    parts = urlsplit(url)
    parameters = pika.ConnectionParameters(
        virtual_host=parts.path[1:] or "/",
        credentials=pika.PlainCredentials(parts.username or "guest", parts.password or "guest"),
    )
    connection = yield protocol.ClientCreator(
        reactor, TwistedProtocolConnection, parameters
    ).connectTCP(parts.hostname, parts.port or 5672)
    yield connection.ready
    channel = yield connection.channel()
    return connection, channel


@defer.inlineCallbacks
def pikaServer(url: str) -> Any:
    import pika

    _, channel = yield pikaConnect(url)
    yield channel.queue_declare(queue=ECHO + ".pika", auto_delete=True)
    yield channel.basic_qos(prefetch_count=PREFETCH)
    queue, _ = yield channel.basic_consume(queue=ECHO + ".pika")

    @defer.inlineCallbacks
    def loop() -> Any:
        while True:
            ch, method, properties, body = yield queue.get()
            ch.basic_publish(
                "",
                properties.reply_to,
                body,
                pika.BasicProperties(correlation_id=properties.correlation_id),
            )
            ch.basic_ack(method.delivery_tag)

    loop()


@defer.inlineCallbacks
def pikaClient(url: str, queueName: str = ECHO + ".pika") -> Any:
    import pika

    _, channel = yield pikaConnect(url)
    replies, _ = yield channel.basic_consume(queue="amq.rabbitmq.reply-to", auto_ack=True)
    pending: dict[str, defer.Deferred[Any]] = {}
    counter = iter(range(10**12))

    @defer.inlineCallbacks
    def loop() -> Any:
        while True:
            _, _, properties, body = yield replies.get()
            d = pending.pop(properties.correlation_id, None)
            if d is not None:
                d.callback(json.loads(body))

    loop()

    def call(payload: Any = PAYLOAD) -> defer.Deferred[Any]:
        correlation = str(next(counter))
        d: defer.Deferred[Any] = defer.Deferred()
        pending[correlation] = d
        channel.basic_publish(
            "",
            queueName,
            json.dumps(payload).encode(),
            pika.BasicProperties(correlation_id=correlation, reply_to="amq.rabbitmq.reply-to"),
        )
        return d

    return call


SERVERS = {"ours": oursServer, "txamqp": txamqpServer, "pika": pikaServer}
CLIENTS = {"ours": oursClient, "txamqp": txamqpClient, "pika": pikaClient}


@defer.inlineCallbacks
def measure(call: Any, concurrency: int, duration: float) -> Any:
    """
    C{concurrency} callers calling in a loop for C{duration} seconds.
    """
    latencies: list[float] = []
    # Warm up.
    yield defer.gatherResults([call() for _ in range(concurrency)])
    end = time.perf_counter() + duration

    @defer.inlineCallbacks
    def caller() -> Any:
        while time.perf_counter() < end:
            started = time.perf_counter()
            yield call()
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    yield defer.gatherResults([caller() for _ in range(concurrency)])
    elapsed = time.perf_counter() - started
    return {
        "calls_per_s": len(latencies) / elapsed,
        "p50_ms": percentile(latencies, 0.5) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "calls": len(latencies),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["server", "client"])
    parser.add_argument("--impl", choices=sorted(SERVERS), required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration", type=float, default=5)
    arguments = parser.parse_args()

    if arguments.role == "server":

        def start() -> None:
            d = defer.maybeDeferred(SERVERS[arguments.impl], arguments.url)
            d.addCallback(lambda _: print("ready", flush=True))

        reactor.callWhenRunning(start)
        reactor.run()
        return

    @defer.inlineCallbacks
    def run(_: Any) -> Any:
        call = yield CLIENTS[arguments.impl](arguments.url)
        result = yield measure(call, arguments.concurrency, arguments.duration)
        print(json.dumps(result), flush=True)

    react(run)


if __name__ == "__main__":
    main()
