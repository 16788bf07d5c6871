# -*- test-case-name: tests.test_catalogue -*-
"""
The catalogue of installed services.

A service package declares itself once, with a L{ServiceDeclaration} named
by an entry point of the group C{txplatform.services}::

    [project.entry-points."txplatform.services"]
    likes = "likes:declaration"

Everything that runs or manages services reads the catalogue rather than a
list of names: the all-in-one, one twistd command per service, the gateway
(the routes each service contributes), the key and channel tools.  The
platform's own services are declared exactly so.
"""

from __future__ import annotations

import re
from functools import lru_cache
from importlib import import_module
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from attrs import field, frozen

from .serviceid import ServiceId, ServiceRegistry
from .threads import ownThreadPool

__all__ = [
    "ENTRY_POINT_GROUP",
    "GATEWAY_ID",
    "Catalogue",
    "CatalogueError",
    "ServiceDeclaration",
    "ServiceParts",
    "installedServices",
]

#: The entry-point group installed services are found in.
ENTRY_POINT_GROUP = "txplatform.services"

#: Gateways call services but serve none; they still have an identity, as
#: the origin of their calls.
GATEWAY_ID = ServiceId.fromHex("010100")

# Names taken by the commands and key files that are not services: a
# service of one of these names would shadow them.
_RESERVED = frozenset({"gateway", "txplatform", "sidecar", "bus"})
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}\Z")


class CatalogueError(Exception):
    """
    The installed services cannot run together: one fails to load, two
    claim one name or id, or a declaration is malformed.  The message
    names the distributions concerned.
    """


@frozen
class ServiceParts:
    """
    What a process hands a declaration to build its service from.

    @ivar bus: The bus the service serves and calls on.
    @ivar reactor: The reactor (its clock too).
    @ivar options: The command's parsed options (the service's own among
        them), as a mapping.
    @ivar database: Its database, if the service stores anything.
    @ivar fields: The codec sealing its stored fields, if it stores.
    @ivar threadPool: Makes a pool of threads of the service's own, from a
        name and a size (L{txplatform.threads.ownThreadPool}), for blocking
        work that should not share the reactor's pool with the database;
        the service starts and stops it.  A test harness gives one that
        runs the work when the test says.
    """

    bus: Any
    reactor: Any
    options: Mapping[str, Any]
    database: Any = None
    fields: Any = None
    threadPool: Callable[[str, int], Any] = ownThreadPool


def _name(instance: object, attribute: Any, value: str) -> None:
    if not _NAME.match(value):
        raise ValueError(
            f"a service name is 1-32 characters, a-z, 0-9 and _, starting with a letter: {value!r}"
        )
    if value in _RESERVED:
        raise ValueError(f"{value!r} is taken by txplatform itself: name the service otherwise")


@frozen
class ServiceDeclaration:
    """
    Everything the platform needs to know of one service.

    @ivar name: Its name: its command (C{twistd NAME}), its key file's
        purpose, its consumer group on the bus.
    @ivar serviceId: Its 3-byte identifier: its queue, and its address on
        the direct transport.
    @ivar service: Where its class is, as C{"module:Class"}: a
        L{txplatform.service.BusService}, or a
        L{txplatform.service.DatabaseService} if it stores anything.  Loaded
        only when needed, so listing commands imports no service.
    @ivar summary: One line on what it does.
    @ivar options: Its own command-line parameters, as Twisted's
        C{optParameters} rows (C{[long, short, default, doc, coerce]}),
        added to the common ones of its command and of the all-in-one.
    @ivar flags: Its own C{optFlags} rows.
    @ivar check: Checks its options (C{check(options)}), raising
        L{twisted.python.usage.UsageError} for a mistake.
    @ivar build: Makes the service from L{ServiceParts}; by default its
        class called as C{Class(bus, database, reactor, fields)} if it
        stores, C{Class(bus, reactor)} if not.
    @ivar routes: Where the class of its HTTP operations is (see
        L{txplatform.routes}), as C{"module:Class"}, if it has any.
    @ivar events: The events it publishes.
    """

    name: str = field(validator=_name)
    serviceId: ServiceId
    service: str
    summary: str
    options: Sequence[Sequence[Any]] = ()
    flags: Sequence[Sequence[Any]] = ()
    check: Callable[[Any], None] | None = None
    build: Callable[[ServiceParts], Any] | None = None
    routes: str | None = None
    events: Sequence[str] = ()

    def serviceClass(self) -> type:
        """
        The service's class, imported now.
        """
        return _resolve(self.service)

    def stores(self) -> bool:
        """
        Whether the service keeps data (and so needs a database and a key
        file of its own).
        """
        from .service import DatabaseService

        return issubclass(self.serviceClass(), DatabaseService)

    def routeClass(self) -> type:
        """
        The class of its HTTP operations, imported now; the gateway makes
        one with L{txplatform.routes.RouteParts}.

        @raise LookupError: It has none.
        """
        if self.routes is None:
            raise LookupError(f"the {self.name} service has no HTTP operations")
        return _resolve(self.routes)

    def make(self, parts: ServiceParts) -> Any:
        """
        A new instance of the service.

        @raise CatalogueError: It does not have the declared name and id.
        """
        if self.build is not None:
            service = self.build(parts)
        elif self.stores():
            service = self.serviceClass()(parts.bus, parts.database, parts.reactor, parts.fields)
        else:
            service = self.serviceClass()(parts.bus, parts.reactor)
        made = (getattr(service, "name", None), getattr(service, "serviceId", None))
        if made != (self.name, self.serviceId):
            raise CatalogueError(
                f"the service declared as {self.name!r} ({self.serviceId.hex}) is made as"
                f" {made[0]!r} ({getattr(made[1], 'hex', made[1])})"
            )
        return service


def _resolve(where: str) -> Any:
    module, _, attribute = where.partition(":")
    target: Any = import_module(module)
    for part in attribute.split(".") if attribute else ():
        target = getattr(target, part)
    return target


class Catalogue:
    """
    Service declarations, each name and each id held by one.

    @raise CatalogueError: Two declarations claim one name or one id.
    """

    def __init__(
        self,
        declarations: Iterable[ServiceDeclaration],
        origins: Mapping[str, str] | None = None,
    ) -> None:
        self._origins = dict(origins or {})
        self._byName: dict[str, ServiceDeclaration] = {}
        byId: dict[ServiceId, str] = {}
        for declaration in declarations:
            name, serviceId = declaration.name, declaration.serviceId
            if name in self._byName:
                raise CatalogueError(f"two services are named {name!r}")
            if serviceId == GATEWAY_ID:
                raise CatalogueError(
                    f"service {self._described(name)} claims the id {serviceId.hex},"
                    " which is the gateways'"
                )
            if serviceId in byId:
                raise CatalogueError(
                    f"services {self._described(byId[serviceId])} and {self._described(name)}"
                    f" both claim the id {serviceId.hex}"
                )
            self._byName[name] = declaration
            byId[serviceId] = name

    def _described(self, name: str) -> str:
        where = self._origins.get(name)
        return f"{name!r} (from {where})" if where else repr(name)

    def __iter__(self) -> Iterator[ServiceDeclaration]:
        return iter(self._byName.values())

    def __len__(self) -> int:
        return len(self._byName)

    def __contains__(self, name: object) -> bool:
        return name in self._byName

    def names(self) -> list[str]:
        return list(self._byName)

    def get(self, name: str) -> ServiceDeclaration:
        """
        @raise KeyError: No service has that name; the message lists those
            that do.
        """
        try:
            return self._byName[name]
        except KeyError:
            known = ", ".join(self._byName) or "none"
            raise KeyError(f"no service is named {name!r} (installed: {known})") from None

    def origin(self, name: str) -> str | None:
        """
        The distribution a service was installed by, if known.
        """
        return self._origins.get(name)

    def only(self, names: Iterable[str]) -> Catalogue:
        """
        The catalogue of just these services.

        @raise KeyError: One is not in this catalogue.
        """
        chosen = [self.get(name) for name in names]
        return Catalogue(chosen, {d.name: self._origins.get(d.name, "") for d in chosen})

    def registry(self) -> ServiceRegistry:
        """
        The names and ids of these services and of the gateways.
        """
        entries = [(d.name, d.serviceId) for d in self]
        return ServiceRegistry([*entries, ("gateway", GATEWAY_ID)])

    @classmethod
    def fromEntryPoints(cls, found: Iterable[EntryPoint]) -> Catalogue:
        """
        Load the declarations these entry points name.

        @raise CatalogueError: One fails to load, is not a declaration, is
            named otherwise than its entry point, or clashes with another.
        """
        declarations = []
        origins: dict[str, str] = {}
        for entry in sorted(found, key=lambda e: e.name):
            where = _distribution(entry)
            try:
                declaration = entry.load()
            except Exception as e:
                raise CatalogueError(
                    f"the service {entry.name!r} from {where} cannot be loaded"
                    f" ({entry.value}): {type(e).__name__}: {e}"
                ) from e
            if not isinstance(declaration, ServiceDeclaration):
                raise CatalogueError(
                    f"the entry point {entry.name!r} from {where} names"
                    f" {type(declaration).__name__}, not a ServiceDeclaration"
                )
            if declaration.name != entry.name:
                raise CatalogueError(
                    f"the entry point {entry.name!r} from {where} declares a service named"
                    f" {declaration.name!r}: the two must agree"
                )
            if declaration.name in origins:
                raise CatalogueError(
                    f"two services are named {declaration.name!r}: from"
                    f" {origins[declaration.name]} and from {where}"
                )
            origins[declaration.name] = where
            declarations.append(declaration)
        return cls(declarations, origins)


def _distribution(entry: EntryPoint) -> str:
    dist = getattr(entry, "dist", None)
    if dist is None:
        return "an unknown distribution"
    try:
        return f"{dist.name} {dist.version}"
    except Exception:
        return "an unknown distribution"


@lru_cache(maxsize=1)
def installedServices() -> Catalogue:
    """
    The catalogue of the services installed in this environment (entry
    points of L{ENTRY_POINT_GROUP}), loaded once per process.

    @raise CatalogueError: They cannot run together.
    """
    return Catalogue.fromEntryPoints(entry_points(group=ENTRY_POINT_GROUP))
