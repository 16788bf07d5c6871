"""
RPC echo over the direct transport, for bench/channel.py: the same echo
service (0fecc0) and measurement as bench/amqp_echo.py's "ours", so the two
transports compare on equal terms (JSON payloads, prefetch 64).

    python bench/direct_echo.py server --keys DIR --port N
    python bench/direct_echo.py client --keys DIR --port N --concurrency 16 --duration 5

DIR holds server.identity, client.identity and trust.json (made by the
server on first use).  The client prints one JSON line: calls/s, p50, p99.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.task import react

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from amqp_echo import PAYLOAD, PREFETCH, measure  # noqa: E402

from txplatform.channel.identity import (  # noqa: E402
    Identity,
    Peer,
    TrustStore,
    readIdentity,
    readTrust,
    writeIdentity,
    writeTrust,
)
from txplatform.channel.protocol import ChannelSettings  # noqa: E402
from txplatform.direct.addresses import AddressBook  # noqa: E402
from txplatform.direct.bus import DirectBus  # noqa: E402
from txplatform.serviceid import ServiceId  # noqa: E402

ECHO = ServiceId.fromHex("0fecc0")
CLIENT = ServiceId.fromHex("0fecc1")


def ensureKeys(directory: str) -> None:
    if os.path.exists(os.path.join(directory, "trust.json")):
        return
    os.makedirs(directory, exist_ok=True)
    trust = TrustStore()
    for name, serviceId in [("server", ECHO), ("client", CLIENT)]:
        identity = Identity.generate(serviceId)
        writeIdentity(os.path.join(directory, f"{name}.identity"), identity)
        trust.add(Peer(serviceId, identity.public))
    writeTrust(os.path.join(directory, "trust.json"), trust)


def bus(directory: str, name: str, port: int) -> DirectBus:
    settings = ChannelSettings(
        readIdentity(os.path.join(directory, f"{name}.identity")),
        readTrust(os.path.join(directory, "trust.json")),
        reactor,
    )
    result = DirectBus(reactor, settings, AddressBook("127.0.0.0/8", port), callPrefetch=PREFETCH)
    result.startService()
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["server", "client"])
    parser.add_argument("--keys", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration", type=float, default=5)
    arguments = parser.parse_args()

    if arguments.role == "server":
        ensureKeys(arguments.keys)

        def start() -> None:
            server = bus(arguments.keys, "server", arguments.port)
            d = server.serve(ECHO, {"echo": lambda payload, context: payload}, prefetch=PREFETCH)
            d.addCallback(lambda _: print("ready", flush=True))

        reactor.callWhenRunning(start)
        reactor.run()
        return

    @defer.inlineCallbacks
    def run(_: Any) -> Any:
        client = bus(arguments.keys, "client", arguments.port)
        result = yield measure(
            lambda: client.call(ECHO, "echo", PAYLOAD), arguments.concurrency, arguments.duration
        )
        print(json.dumps(result), flush=True)
        yield client.stopService()

    react(run)


if __name__ == "__main__":
    main()
