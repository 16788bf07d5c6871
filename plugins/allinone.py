# -*- test-case-name: tests.plugins.test_allinone -*-
"""
C{twistd txplatform}: the whole platform in one process, on the in-process
bus, with an SQLite file per service in a data directory, and key files
created there on first start.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from twisted.python import usage

from ._common import (
    ARGON2,
    KEY_RELOAD,
    checkDatabase,
    checkPositive,
    makeDatabase,
    passwordHasher,
)
from .account import SESSION_LIFETIME
from .gateway import CALL_TIMEOUT, LISTEN, MAX_BODY_SIZE, gatewayListener
from .post import CACHE_SIZE, checkCacheSize

SERVICES = ("account", "post", "notify")
PURPOSES = ("bus", *SERVICES)


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
        [
            "keys-dir",
            None,
            None,
            "Directory of the key files (bus.json and one per service), created with"
            " fresh keys, readable by their owner only, if missing. Default: DATA-DIR/keys.",
        ],
        [
            "key-period",
            None,
            3600.0,
            "Seconds each working key is used (its epoch), for key files created now.",
            float,
        ],
        KEY_RELOAD,
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
            "key-period",
            "key-reload",
            "call-timeout",
            "max-body-size",
            "session-lifetime",
            "argon2-time-cost",
            "argon2-memory-cost",
            "argon2-parallelism",
        )
        self.ensureKeys()

    def ensureKeys(self) -> None:
        """
        The embedded mode makes its key files on first start.
        """
        from txplatform.crypto.keyfile import KeyFileError, ensureKeyFile

        for purpose in PURPOSES:
            path = self.keyFile(purpose)
            try:
                ensureKeyFile(path, purpose, self["key-period"])
            except OSError as e:
                raise usage.UsageError(f"cannot create the key file {path}: {e}") from None
            except KeyFileError as e:
                raise usage.UsageError(str(e)) from None

    def keyFile(self, purpose: str) -> str:
        directory = self["keys-dir"] or os.path.join(self["data-dir"], "keys")
        return os.path.join(directory, f"{purpose}.json")

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
    from txplatform.crypto.keys import Keys
    from txplatform.localbus import LocalBus

    from ._lifecycle import ReadinessGate, StopInOrder

    top = StopInOrder()
    keys = {}
    for purpose in PURPOSES:
        keys[purpose] = Keys(options.keyFile(purpose), reactor, purpose, options["key-reload"])
        keys[purpose].service.setServiceParent(top)
    bus = LocalBus(reactor, codec=keys["bus"].payloadCodec())
    bus.setServiceParent(top)
    services = [
        AccountService(
            bus,
            makeDatabase(options.databaseURL("account"), reactor),
            reactor,
            passwordHasher(options, reactor),
            fields=keys["account"].fieldCodec(),
            sessionLifetime=options["session-lifetime"],
        ),
        PostService(
            bus,
            makeDatabase(options.databaseURL("post"), reactor),
            reactor,
            keys["post"].fieldCodec(),
            cacheSize=options["post-cache-size"],
        ),
        NotifyService(
            bus,
            makeDatabase(options.databaseURL("notify"), reactor),
            reactor,
            keys["notify"].fieldCodec(),
        ),
    ]
    for service in services:
        service.setServiceParent(top)
    listener = gatewayListener(options, reactor, bus)
    ReadinessGate(reactor, services, listener).setServiceParent(top)
    return top
