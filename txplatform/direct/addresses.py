# -*- test-case-name: tests.direct.test_addresses -*-
"""
Where a service is, for the direct transport: an address derived from its
3-byte id inside a static range, so that a call needs no lookup.

In the range C{10.0.0.0/8}, service C{01 00 02} is C{10.1.0.2}; on one host,
C{127.0.0.0/8} (all loopback on Linux) works the same: C{127.1.0.2}.  Every
service listens on the same port at its own address.  A static table can
list other addresses (replicas, or ports on one host) per service::

    {"services": {"010002": ["127.1.0.2:7300", "127.1.0.2:7301"]}}
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any

from ..filewatch import FileWatchService
from ..serviceid import ServiceId

__all__ = [
    "DEFAULT_PORT",
    "AddressBook",
    "AddressError",
    "AddressTableService",
    "parseDirectURL",
    "Table",
    "readTable",
]

DEFAULT_PORT = 7300

#: Where the services a table lists are: their addresses, by service.
Table = dict[ServiceId, list[tuple[str, int]]]


class AddressError(ValueError):
    """
    An address range, table or URL that cannot be used; the message says why.
    """


def _hostPort(text: Any, where: str) -> tuple[str, int]:
    if not isinstance(text, str) or ":" not in text:
        raise AddressError(f"{where}: an address is host:port, not {text!r}")
    host, _, port = text.rpartition(":")
    try:
        ipaddress.ip_address(host)
        number = int(port)
    except ValueError:
        raise AddressError(f"{where}: an address is IP:port, not {text!r}") from None
    if not 0 < number < 65536:
        raise AddressError(f"{where}: port {number} is not in 1-65535")
    return host, number


class AddressBook:
    """
    The addresses of services: derived from their ids in C{network}, or
    listed in a static table.
    """

    def __init__(
        self,
        network: str = "127.0.0.0/8",
        port: int = DEFAULT_PORT,
        table: Table | None = None,
    ) -> None:
        """
        @param network: An IPv4 range of at least 2**24 addresses, so that
            every 3-byte id has one.
        @raise AddressError: A smaller range, or not IPv4.
        """
        try:
            self.network = ipaddress.IPv4Network(network)
        except ValueError as e:
            raise AddressError(f"{network!r} is not an IPv4 range: {e}") from None
        if self.network.prefixlen > 8:
            raise AddressError(
                f"{network} holds {self.network.num_addresses} addresses: a 3-byte id needs"
                " a /8 or wider (such as 10.0.0.0/8, or 127.0.0.0/8 on one host)"
            )
        if not 0 < port < 65536:
            raise AddressError(f"port {port} is not in 1-65535")
        self.port = port
        self.table = dict(table or {})

    def derivedHost(self, serviceId: ServiceId) -> str:
        """
        The address of C{serviceId} in the range: the range's base plus the
        id, as a 24-bit number.

        @raise AddressError: The id would give the range's network or
            broadcast address (00.00.00 or ff.ff.ff in a /8).
        """
        value = int(serviceId)
        if value == 0 or value == 0xFFFFFF:
            raise AddressError(f"service id {serviceId.hex} has no address of its own")
        return str(self.network.network_address + value)

    def addressesOf(self, serviceId: ServiceId) -> list[tuple[str, int]]:
        """
        Where calls to C{serviceId} go: its table entry, else its derived
        address on the common port.
        """
        listed = self.table.get(serviceId)
        if listed:
            return list(listed)
        return [(self.derivedHost(serviceId), self.port)]

    def serviceAt(self, host: str) -> ServiceId | None:
        """
        The service whose derived address is C{host}, if any: the id read
        back from the address, with no lookup.
        """
        try:
            address = ipaddress.IPv4Address(host)
        except ValueError:
            return None
        if address not in self.network:
            return None
        return ServiceId.fromInt(int(address) - int(self.network.network_address))

    def replaceTable(self, table: Table) -> None:
        """
        Send calls by C{table} from now on (calls under way keep their
        addresses).
        """
        self.table = dict(table)

    @classmethod
    def withTableFile(cls, network: str, port: int, path: str | None) -> AddressBook:
        """
        @raise AddressError: The table cannot be read or is malformed.
        """
        return cls(network, port, readTable(path) if path else None)


def readTable(path: str) -> Table:
    """
    The address table in the file at C{path}.

    @raise AddressError: It cannot be read or is malformed.
    """
    try:
        with open(path, encoding="utf-8") as f:
            document = json.load(f)
    except OSError as e:
        raise AddressError(f"cannot read the address table {path}: {e.strerror}") from None
    except ValueError:
        raise AddressError(f"the address table {path} is not JSON") from None
    services = document.get("services") if isinstance(document, dict) else None
    if not isinstance(services, dict):
        raise AddressError(f"{path}: expected {{'services': {{id: [host:port, ...]}}}}")
    table: Table = {}
    for key, addresses in services.items():
        try:
            serviceId = ServiceId.fromHex(key)
        except ValueError:
            raise AddressError(f"{path}: {key!r} is not a service id") from None
        if not isinstance(addresses, list) or not addresses:
            raise AddressError(f"{path}: {key} needs a list of addresses")
        table[serviceId] = [_hostPort(a, f"{path}, {key}") for a in addresses]
    return table


class AddressTableService(FileWatchService[Table]):
    """
    Read the address table again when its file changed, so that replicas
    moved or added (a Kubernetes ConfigMap updated with the pods' new
    addresses) get calls within C{interval} seconds, without restarting
    their callers.  A table that cannot be read is logged, and the one in
    use kept.
    """

    what = "the address table"
    refused = (AddressError,)

    def __init__(self, path: str, book: AddressBook, interval: float = 10.0) -> None:
        super().__init__(path, interval)
        self.book = book

    def read(self) -> Table:
        return readTable(self.path)

    def take(self, fresh: Table) -> str:
        self.book.replaceTable(fresh)
        return f"{len(fresh)} service(s) listed"


def parseDirectURL(url: str) -> tuple[str, int, str | None]:
    """
    Read C{direct:RANGE[?port=N][&table=PATH]}, as given to C{--bus}.

    @return: The range, the port and the table's path.
    @raise AddressError: Not such a URL.
    """
    from urllib.parse import parse_qs

    if not url.startswith("direct:"):
        raise AddressError(f"{url!r} is not a direct: URL")
    rest = url[len("direct:") :].lstrip("/")
    network, _, query = rest.partition("?")
    options = parse_qs(query, strict_parsing=False) if query else {}
    unknown = set(options) - {"port", "table"}
    if unknown:
        raise AddressError(f"{url}: unknown option(s) {', '.join(sorted(unknown))}")
    try:
        port = int(options.get("port", [DEFAULT_PORT])[0])
    except ValueError:
        raise AddressError(f"{url}: the port is a number") from None
    table = options.get("table", [None])[0]
    AddressBook(network or "127.0.0.0/8", port)  # checks both
    return network or "127.0.0.0/8", port, table
