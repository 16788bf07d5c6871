# -*- test-case-name: tests.plugins.test_options -*-
"""
C{twistd SERVICE}: one replica of an installed service, for every service
in the catalogue (L{txplatform.catalogue}).  Each command's options are the
ones every service process takes, plus its database and key file if it
stores anything, plus those its declaration adds.
"""

from __future__ import annotations

from typing import Any, ClassVar

from twisted.python import usage

from txplatform.catalogue import ServiceDeclaration

from ._common import (
    BUS,
    BUS_KEYS,
    DIRECT,
    DRAIN_TIMEOUT,
    HEALTH_FILE,
    KEY_RELOAD,
    KEYS,
    LOG_CALLS,
    METRICS,
    OTLP,
    OneLineUsage,
    checkBus,
    checkDatabase,
    checkEndpoints,
    checkKeys,
    checkOTLP,
    serviceProcess,
)

__all__ = ["ServiceOptions", "optionsFor", "makeService"]


class ServiceOptions(OneLineUsage, usage.Options):
    """
    What every service process takes; L{optionsFor} makes a subclass per
    service.
    """

    synopsis = "[options]"
    optFlags = [LOG_CALLS]
    optParameters = [
        BUS,
        *DIRECT,
        BUS_KEYS,
        KEY_RELOAD,
        DRAIN_TIMEOUT,
        HEALTH_FILE,
        METRICS,
        OTLP,
    ]
    declaration: ClassVar[ServiceDeclaration]
    stores: ClassVar[bool]

    def postOptions(self) -> None:
        declaration = self.declaration
        checkBus(self, declaration.serviceId)
        checkKeys(self, declaration.name if self.stores else None)
        checkEndpoints(self, "metrics")
        checkOTLP(self)
        if self.stores:
            checkDatabase(self)
        if declaration.check is not None:
            declaration.check(self)


def optionsFor(declaration: ServiceDeclaration) -> type[ServiceOptions]:
    """
    The options class of C{twistd NAME} for the service declared so.
    """
    stores = declaration.stores()
    own: list[Any] = []
    if stores:
        own += [
            KEYS,
            [
                "db",
                None,
                f"sqlite:var/{declaration.name}.sqlite",
                "Database: sqlite:PATH or postgresql://user@host:port/dbname.",
            ],
        ]
    own += [list(row) for row in declaration.options]
    return type(
        f"{declaration.name.title().replace('_', '')}Options",
        (ServiceOptions,),
        {
            "declaration": declaration,
            "command": declaration.name,
            "stores": stores,
            "optParameters": own,
            "optFlags": [list(row) for row in declaration.flags],
            "longdesc": f"Run one replica of the {declaration.name} service: {declaration.summary}",
        },
    )


def makeService(options: ServiceOptions, reactor: Any = None) -> Any:
    if reactor is None:
        from twisted.internet import reactor
    return serviceProcess(options, reactor, options.declaration, options.stores)
