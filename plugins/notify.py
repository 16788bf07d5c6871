# -*- test-case-name: tests.plugins.test_options -*-
"""
C{twistd notify}: one replica of the Notify service: notifications for mentions and followed authors.
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
    KEYS,
    LOG_CALLS,
    checkBus,
    checkDatabase,
    checkKeys,
    serviceIdOf,
    serviceProcess,
)


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Run one replica of the Notify service: notifications for mentions and followed authors."
    )
    optFlags = [LOG_CALLS]
    optParameters = [
        BUS,
        *DIRECT,
        BUS_KEYS,
        KEYS,
        KEY_RELOAD,
        DRAIN_TIMEOUT,
        HEALTH_FILE,
        [
            "db",
            None,
            "sqlite:var/notify.sqlite",
            "Database: sqlite:PATH or postgresql://user@host:port/dbname.",
        ],
    ]

    def postOptions(self) -> None:
        checkBus(self, serviceIdOf("notify"))
        checkKeys(self, "notify")
        checkDatabase(self)


def makeService(options: Options, reactor: Any = None) -> Any:
    if reactor is None:
        from twisted.internet import reactor
    from txplatform_services.notify.service import NotifyService

    return serviceProcess(
        options,
        reactor,
        NotifyService,
        lambda bus, database, fields: NotifyService(bus, database, reactor, fields),
    )
