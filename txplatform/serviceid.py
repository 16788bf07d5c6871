# -*- test-case-name: tests.test_serviceid -*-
"""
Compact service identifiers.

Every service is addressed on the bus by a 3-byte identifier, written as six
hex digits (C{010001}), rather than by its name.  Three bytes are enough for
any realistic fleet, fit a binary frame header and map one-to-one onto an
address range (C{10.x.y.z}) for the direct transport.
"""

from __future__ import annotations

import re
from typing import Iterable, Iterator

from attrs import field, frozen

__all__ = [
    "ServiceId",
    "ServiceRegistry",
    "ServiceIdCollision",
    "UnknownService",
]

_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}\Z")


def _threeBytes(instance: object, attribute: object, value: bytes) -> None:
    if not isinstance(value, bytes) or len(value) != 3:
        raise ValueError(f"a service id is exactly 3 bytes, not {value!r}")


@frozen(order=True)
class ServiceId:
    """
    A 3-byte service identifier.
    """

    raw: bytes = field(validator=_threeBytes)

    @classmethod
    def fromHex(cls, text: str) -> ServiceId:
        """
        Parse the six-hex-digit form, e.g. C{"010001"}.
        """
        if not isinstance(text, str) or not re.fullmatch(r"[0-9a-fA-F]{6}", text):
            raise ValueError(f"a service id is six hex digits, not {text!r}")
        return cls(bytes.fromhex(text))

    @classmethod
    def fromInt(cls, value: int) -> ServiceId:
        if not 0 <= value < 1 << 24:
            raise ValueError(f"a service id is a 24-bit number, not {value!r}")
        return cls(value.to_bytes(3, "big"))

    @property
    def hex(self) -> str:
        return self.raw.hex()

    def __int__(self) -> int:
        return int.from_bytes(self.raw, "big")

    def __bytes__(self) -> bytes:
        return self.raw

    def __str__(self) -> str:
        return self.hex

    def __repr__(self) -> str:
        return f"ServiceId({self.hex!r})"


class ServiceIdCollision(ValueError):
    """
    A name or an identifier is already registered to something else.
    """


class UnknownService(LookupError):
    """
    No service is registered under that name or identifier.
    """


class ServiceRegistry:
    """
    Maps service names to identifiers, both ways, refusing collisions.
    """

    def __init__(self, entries: Iterable[tuple[str, ServiceId]] = ()) -> None:
        self._byName: dict[str, ServiceId] = {}
        self._byId: dict[ServiceId, str] = {}
        for name, serviceId in entries:
            self.register(name, serviceId)

    def register(self, name: str, serviceId: ServiceId) -> None:
        """
        Register C{name} at C{serviceId}.  Registering the same pair twice is
        harmless; reusing either half with a different partner is refused.
        """
        if not _NAME.match(name):
            raise ValueError(
                f"a service name is 1-32 characters of a-z, 0-9, _ and -,"
                f" starting with a letter, not {name!r}"
            )
        if not isinstance(serviceId, ServiceId):
            raise TypeError(f"expected a ServiceId, not {serviceId!r}")
        known = self._byName.get(name)
        if known is not None and known != serviceId:
            raise ServiceIdCollision(
                f"service {name!r} is already registered as {known.hex},"
                f" cannot register it as {serviceId.hex}"
            )
        owner = self._byId.get(serviceId)
        if owner is not None and owner != name:
            raise ServiceIdCollision(
                f"service id {serviceId.hex} already belongs to {owner!r},"
                f" cannot give it to {name!r}"
            )
        self._byName[name] = serviceId
        self._byId[serviceId] = name

    def idFor(self, name: str) -> ServiceId:
        try:
            return self._byName[name]
        except KeyError:
            raise UnknownService(f"no service is named {name!r}") from None

    def nameFor(self, serviceId: ServiceId) -> str:
        try:
            return self._byId[serviceId]
        except KeyError:
            raise UnknownService(f"no service has id {serviceId.hex}") from None

    def describe(self, serviceId: ServiceId) -> str:
        """
        C{name (hex)} when known, else the hex alone: for messages and logs.
        """
        name = self._byId.get(serviceId)
        return f"{name} ({serviceId.hex})" if name else serviceId.hex

    def __contains__(self, item: object) -> bool:
        return item in self._byName or item in self._byId

    def __iter__(self) -> Iterator[tuple[str, ServiceId]]:
        return iter(sorted(self._byName.items(), key=lambda kv: kv[1]))

    def __len__(self) -> int:
        return len(self._byName)
