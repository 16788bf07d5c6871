# -*- test-case-name: tests.plugins.test_options -*-
"""
C{twistd gateway}: one replica of the HTTP gateway.
"""

from __future__ import annotations

from typing import Any

from twisted.python import usage

from ._common import (
    BUS,
    BUS_KEYS,
    HEALTH_FILE,
    KEY_RELOAD,
    checkBus,
    checkKeys,
    checkPositive,
    loadKeys,
    makeBus,
)

LISTEN = ["listen", None, "tcp:8080", "Where to serve HTTP: a Twisted endpoint string."]
CALL_TIMEOUT = [
    "call-timeout",
    None,
    5.0,
    "Seconds a request may wait on services before it gets 503.",
    float,
]
MAX_BODY_SIZE = [
    "max-body-size",
    None,
    64 * 1024,
    "Largest request body, in bytes (413 above).",
    int,
]


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = "Run one replica of the HTTP gateway, the platform's only entry point."
    optParameters = [BUS, BUS_KEYS, KEY_RELOAD, LISTEN, CALL_TIMEOUT, MAX_BODY_SIZE, HEALTH_FILE]

    def postOptions(self) -> None:
        checkBus(self)
        checkKeys(self, None)
        checkPositive(self, "call-timeout", "max-body-size")


def gatewayListener(options: usage.Options, reactor: Any, bus: Any) -> Any:
    from gateway import Gateway

    from ._lifecycle import ListeningService

    gateway = Gateway(
        bus, reactor, callTimeout=options["call-timeout"], maxBodySize=options["max-body-size"]
    )
    return ListeningService(reactor, options["listen"], gateway.site(), "Gateway")


def makeService(options: Options, reactor: Any = None) -> Any:
    if reactor is None:
        from twisted.internet import reactor
    from services import GATEWAY_ID

    from ._lifecycle import ReadinessGate, StopInOrder

    top = StopInOrder()
    busKeys = loadKeys(options, "bus-keys", "bus", reactor)
    busKeys.service.setServiceParent(top)
    bus = makeBus(options, reactor, GATEWAY_ID, "gateway", busKeys)
    # On SIGTERM the listener closes first; requests in hand get their
    # answers before the bus goes.
    bus.drainTimeout = options["call-timeout"]
    bus.setServiceParent(top)
    # Listen once the bus is up, so a gateway is only ever reached when it
    # can do something.
    listener = gatewayListener(options, reactor, bus)
    ReadinessGate(reactor, [bus], listener).setServiceParent(top)
    if options["health-file"]:
        from ._lifecycle import HealthFile

        HealthFile(reactor, options["health-file"], bus, [listener]).setServiceParent(top)
    return top
