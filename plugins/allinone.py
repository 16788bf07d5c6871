# -*- test-case-name: tests.plugins.test_allinone -*-
"""
C{twistd txplatform}: the whole platform in one process, on the in-process
bus, with an SQLite file per service in a data directory.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from twisted.python import usage

from ._common import ARGON2, checkDatabase, checkPositive, makeDatabase, passwordHasher
from .account import SESSION_LIFETIME
from .gateway import CALL_TIMEOUT, LISTEN, MAX_BODY_SIZE, gatewayListener
from .post import CACHE_SIZE, checkCacheSize

SERVICES = ("account", "post", "notify")


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Run the gateway and the Account, Post and Notify services in one process,"
        " on the in-process bus, with SQLite files in --data-dir (or PostgreSQL with"
        " --db, one schema per service)."
    )
    optParameters = [
        LISTEN,
        ["data-dir", None, "var", "Directory of the SQLite files."],
        ["db", None, None, "Use this PostgreSQL database instead: postgresql://user@host/db."],
        CALL_TIMEOUT,
        MAX_BODY_SIZE,
        SESSION_LIFETIME,
        CACHE_SIZE,
        *ARGON2,
    ]

    def postOptions(self) -> None:
        checkCacheSize(self)
        if self["db"] is not None:
            checkDatabase(self)
            if self["db"].startswith("sqlite:"):
                raise usage.UsageError("--db is for PostgreSQL; SQLite files go in --data-dir")
        checkPositive(
            self,
            "call-timeout",
            "max-body-size",
            "session-lifetime",
            "argon2-time-cost",
            "argon2-memory-cost",
            "argon2-parallelism",
        )

    def databaseURL(self, service: str) -> str:
        """
        Where C{service} keeps its data: its own SQLite file, or its own
        schema of the PostgreSQL database.
        """
        if self["db"] is None:
            return "sqlite:" + os.path.join(self["data-dir"], f"{service}.sqlite")
        parts = urlsplit(self["db"])
        query = f"{parts.query}&schema={service}" if parts.query else f"schema={service}"
        return urlunsplit(parts._replace(query=query))


def makeService(options: Options, reactor: Any = None) -> Any:
    if reactor is None:
        from twisted.internet import reactor
    from services.account.service import AccountService
    from services.notify.service import NotifyService
    from services.post.service import PostService
    from txplatform.localbus import LocalBus

    from ._lifecycle import ReadinessGate, StopInOrder

    top = StopInOrder()
    bus = LocalBus(reactor)
    bus.setServiceParent(top)
    services = [
        AccountService(
            bus,
            makeDatabase(options.databaseURL("account"), reactor),
            reactor,
            passwordHasher(options, reactor),
            sessionLifetime=options["session-lifetime"],
        ),
        PostService(
            bus,
            makeDatabase(options.databaseURL("post"), reactor),
            reactor,
            cacheSize=options["post-cache-size"],
        ),
        NotifyService(bus, makeDatabase(options.databaseURL("notify"), reactor), reactor),
    ]
    for service in services:
        service.setServiceParent(top)
    listener = gatewayListener(options, reactor, bus)
    ReadinessGate(reactor, services, listener).setServiceParent(top)
    return top
