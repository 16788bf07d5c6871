# -*- test-case-name: tests.plugins.test_options, tests.plugins.test_twistd -*-
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

from txplatform.catalogue import Catalogue, CatalogueError, ServiceParts, installedServices

from ._common import (
    KEY_RELOAD,
    METRICS,
    OTLP,
    OneLineUsage,
    catalogueRefusal,
    checkDatabase,
    checkOTLP,
    checkPositive,
    makeDatabase,
    makeDeclared,
)
from .gateway import (
    ACCESS_LOG,
    ACCOUNT_RATE_LIMIT,
    API_INFO,
    BUSY_LIMIT,
    CALL_TIMEOUT,
    CONNECTION_LIMITS,
    HTTPS,
    MAX_BODY_SIZE,
    MAX_IN_FLIGHT,
    NO_WEB,
    PRINCIPAL_CACHE,
    RATE_LIMIT,
    READ_CACHE,
    checkEdge,
    gatewayListener,
)

# Options (see __getattr__) is made from the installed services when first used.
__all__ = ["BaseOptions", "optionsFor", "makeService", "assemble"]


#: The embedded default serves this machine only: --listen tcp:8080 opens it.
LOCAL_LISTEN = "tcp:8080:interface=127.0.0.1"
LISTEN = [
    "listen",
    None,
    None,
    f"Where to serve HTTP: a Twisted endpoint string. Default: {LOCAL_LISTEN} (this"
    " machine only; tcp:8080 for every interface), unless --https is given (then HTTPS only).",
]


class BaseOptions(OneLineUsage, usage.Options):
    """
    The all-in-one's own options; L{optionsFor} adds every service's.
    """

    command = "txplatform"

    synopsis = "[options]"
    optFlags = [
        [
            "log-calls",
            None,
            "Log every call each service serves, with its request id (by default only the"
            " gateway's request and the calls that fail are logged).",
        ],
        NO_WEB,
    ]
    longdesc = (
        "Run the gateway and every installed service (or those --services names) in one"
        " process, on the in-process bus, with SQLite files in --data-dir (or PostgreSQL"
        " with --db, one schema per service)."
    )
    catalogue: Catalogue
    optParameters = [
        LISTEN,
        *HTTPS,
        ["data-dir", None, "var", "Directory of the SQLite files."],
        ["db", None, None, "Use this PostgreSQL database instead: postgresql://user@host/db."],
        [
            "services",
            None,
            None,
            "The services to run, by name, separated by commas. Default: every installed one.",
        ],
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
        *CONNECTION_LIMITS,
        ACCESS_LOG,
        PRINCIPAL_CACHE,
        READ_CACHE,
        *API_INFO,
        METRICS,
        OTLP,
    ]

    def postOptions(self) -> None:
        if self["services"] is not None:
            names = [n.strip() for n in self["services"].split(",") if n.strip()]
            try:
                self.catalogue = self.catalogue.only(names)
            except KeyError as e:
                raise catalogueRefusal("txplatform", f"--services: {e.args[0]}") from None
        checkEdge(self, LOCAL_LISTEN)
        checkOTLP(self)
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
        )
        for declaration in self.catalogue:
            if declaration.check is not None:
                declaration.check(self)
        self.ensureKeys()

    def purposes(self) -> list[str]:
        """
        The key files this process needs: the bus's, and one for each
        service that stores anything.
        """
        return ["bus", *(d.name for d in self.catalogue if d.stores())]

    def ensureKeys(self) -> None:
        """
        The embedded mode makes its key files on first start.
        """
        from txplatform.crypto.keyfile import KeyFileError, ensureKeyFile

        if self["db"] is None:
            # Made here first, else as the key directory's parent: with the
            # default mode, open to other users.
            try:
                os.makedirs(self["data-dir"], mode=0o700, exist_ok=True)
            except OSError as e:
                raise usage.UsageError(f"cannot create --data-dir {self['data-dir']}: {e}")
        for purpose in self.purposes():
            path = self.keyFile(purpose)
            stored = None if purpose == "bus" else self.databaseURL(purpose)
            if (
                not os.path.exists(path)
                and stored is not None
                and stored.startswith("sqlite:")
                and os.path.exists(stored[len("sqlite:") :])
            ):
                # New keys would serve with the old data unreadable, and
                # make accounts that already exist anew.
                raise usage.UsageError(
                    f"the key file {path} is missing, but {stored[len('sqlite:') :]} holds"
                    f" {purpose}'s data sealed with it: restore the key file (to start"
                    " afresh, move the data away first)"
                )
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


def optionsFor(catalogue: Catalogue) -> type[BaseOptions]:
    """
    The all-in-one's options with those of every service in C{catalogue}.

    @raise CatalogueError: Two services declare one option, or one of the
        all-in-one's own.
    """
    declaredBy = {
        row[0]: "txplatform" for row in [*BaseOptions.optParameters, *BaseOptions.optFlags]
    }
    parameters, flags = [], []
    for declaration in catalogue:
        for rows, into in [(declaration.options, parameters), (declaration.flags, flags)]:
            for row in rows:
                if row[0] in declaredBy:
                    raise CatalogueError(
                        f"{declaredBy[row[0]]!r} and {declaration.name!r} both declare the"
                        f" option --{row[0]}"
                    )
                declaredBy[row[0]] = declaration.name
                into.append(list(row))
    return type(
        "Options",
        (BaseOptions,),
        {"optParameters": parameters, "optFlags": flags, "catalogue": catalogue},
    )


def __getattr__(name: str) -> Any:
    # Options depend on the services installed: made when first asked for.
    if name == "Options":
        try:
            return optionsFor(installedServices())
        except CatalogueError as e:
            raise catalogueRefusal("txplatform", str(e)) from None
    raise AttributeError(name)


def makeService(options: BaseOptions, reactor: Any = None) -> Any:
    if reactor is None:
        from twisted.internet import reactor
    from txplatform.crypto.keys import Keys

    from ._lifecycle import StopInOrder, startTracing

    startTracing(options, reactor, "txplatform")
    top = StopInOrder()
    keys = {}
    for purpose in options.purposes():
        keys[purpose] = Keys(options.keyFile(purpose), reactor, purpose, options["key-reload"])
        keys[purpose].service.setServiceParent(top)
    assemble(
        top,
        options,
        reactor,
        keys["bus"].payloadCodec(),
        {name: key.fieldCodec() for name, key in keys.items() if name != "bus"},
    )
    return top


def assemble(
    top: Any, options: BaseOptions, reactor: Any, payloadCodec: Any, fieldCodecs: dict[str, Any]
) -> None:
    """
    Add the bus, the services and the gateway to C{top}, with these codecs:
    the keys' encrypting ones (L{makeService}), or plain ones for the
    benchmark that measures what encryption costs (bench/embedded.py).
    """
    from txplatform.localbus import LocalBus

    from ._lifecycle import ReadinessGate, addProbes

    bus = LocalBus(reactor, codec=payloadCodec)
    bus.setServiceParent(top)
    services = []
    for declaration in options.catalogue:
        database = None
        if declaration.stores():
            database = makeDatabase(options.databaseURL(declaration.name), reactor)
        parts = ServiceParts(bus, reactor, options, database, fieldCodecs.get(declaration.name))
        service = makeDeclared(declaration, parts)
        service.logCalls = options["log-calls"]
        service.setServiceParent(top)
        services.append(service)
    listener = gatewayListener(options, reactor, bus)
    ReadinessGate(reactor, services, listener).setServiceParent(top)
    addProbes(top, options, reactor, bus, [*services, listener])
