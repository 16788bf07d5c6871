# -*- test-case-name: tests.plugins.test_options -*-
"""
C{twistd parser}: one replica of the Parser service, which decodes and checks
request bodies the gateway hands over (its --parser-over).
"""

from __future__ import annotations

from typing import Any

from twisted.python import usage

from ._common import (
    BUS,
    BUS_KEYS,
    DIRECT,
    DRAIN_TIMEOUT,
    HEALTH_FILE,
    KEY_RELOAD,
    LOG_CALLS,
    checkBus,
    checkKeys,
    serviceIdOf,
    serviceProcess,
)


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Run one replica of the Parser service: it decodes and checks the request bodies"
        " gateways hand over (gateway --parser-over), against the schemas the OpenAPI"
        " document publishes. It stores nothing: run as many as parsing needs."
    )
    optFlags = [LOG_CALLS]
    optParameters = [BUS, *DIRECT, BUS_KEYS, KEY_RELOAD, DRAIN_TIMEOUT, HEALTH_FILE]

    def postOptions(self) -> None:
        checkBus(self, serviceIdOf("parser"))
        checkKeys(self, None)


def makeService(options: Options, reactor: Any = None) -> Any:
    if reactor is None:
        from twisted.internet import reactor
    from txplatform_services.parser.service import ParserService

    return serviceProcess(options, reactor, ParserService, lambda bus: ParserService(bus, reactor))
