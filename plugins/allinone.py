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
from .account import SESSION_IDLE, SESSION_LIFETIME, sessionIdle
from .gateway import (
    ACCOUNT_RATE_LIMIT,
    BUSY_LIMIT,
    CALL_TIMEOUT,
    HTTPS,
    LISTEN,
    MAX_BODY_SIZE,
    MAX_IN_FLIGHT,
    RATE_LIMIT,
    checkEdge,
    gatewayListener,
)
from .post import CACHE_SIZE, POST_RATE, checkCacheSize

SERVICES = ("account", "post", "notify")
PURPOSES = ("bus", *SERVICES)


class Options(usage.Options):
    synopsis = "[options]"
    optFlags = [
        [
            "log-calls",
            None,
            "Log every call each service serves, with its request id (by default only the"
            " gateway's request and the calls that fail are logged).",
        ]
    ]
    longdesc = (
        "Run the gateway and the Account, Post and Notify services in one process,"
        " on the in-process bus, with SQLite files in --data-dir (or PostgreSQL with"
        " --db, one schema per service)."
    )
    optParameters = [
        LISTEN,
        *HTTPS,
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
        MAX_IN_FLIGHT,
        BUSY_LIMIT,
        RATE_LIMIT,
        ACCOUNT_RATE_LIMIT,
        SESSION_LIFETIME,
        SESSION_IDLE,
        CACHE_SIZE,
        POST_RATE,
        *ARGON2,
    ]

    def postOptions(self) -> None:
        checkCacheSize(self)
        checkEdge(self)
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
            "max-in-flight",
            "session-lifetime",
            "argon2-time-cost",
            "argon2-memory-cost",
            "argon2-parallelism",
        )
        sessionIdle(self)
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
    from txplatform.crypto.keys import Keys

    from ._lifecycle import StopInOrder

    top = StopInOrder()
    keys = {}
    for purpose in PURPOSES:
        keys[purpose] = Keys(options.keyFile(purpose), reactor, purpose, options["key-reload"])
        keys[purpose].service.setServiceParent(top)
    assemble(
        top,
        options,
        reactor,
        keys["bus"].payloadCodec(),
        {service: keys[service].fieldCodec() for service in SERVICES},
    )
    return top


def assemble(
    top: Any, options: Options, reactor: Any, payloadCodec: Any, fieldCodecs: dict[str, Any]
) -> None:
    """
    Add the bus, the services and the gateway to C{top}, with these codecs:
    the keys' encrypting ones (L{makeService}), or plain ones for the
    benchmark that measures what encryption costs (bench/embedded.py).
    """
    from txplatform_services.account.service import AccountService
    from txplatform_services.notify.service import NotifyService
    from txplatform_services.post.service import PostService
    from txplatform.localbus import LocalBus

    from ._lifecycle import ReadinessGate

    bus = LocalBus(reactor, codec=payloadCodec)
    bus.setServiceParent(top)
    services = [
        AccountService(
            bus,
            makeDatabase(options.databaseURL("account"), reactor),
            reactor,
            passwordHasher(options, reactor),
            fields=fieldCodecs["account"],
            sessionLifetime=options["session-lifetime"],
            sessionIdle=sessionIdle(options),
        ),
        PostService(
            bus,
            makeDatabase(options.databaseURL("post"), reactor),
            reactor,
            fieldCodecs["post"],
            cacheSize=options["post-cache-size"],
            postRate=options["post-rate"],
        ),
        NotifyService(
            bus,
            makeDatabase(options.databaseURL("notify"), reactor),
            reactor,
            fieldCodecs["notify"],
        ),
    ]
    for service in services:
        service.logCalls = options["log-calls"]
        service.setServiceParent(top)
    listener = gatewayListener(options, reactor, bus)
    ReadinessGate(reactor, services, listener).setServiceParent(top)
