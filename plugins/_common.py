# -*- test-case-name: tests.plugins.test_options -*-
"""
Options the commands share, and building the pieces they name.
"""

from __future__ import annotations

from typing import Any

from twisted.python import usage

from services.account.passwords import Argon2Parameters, PasswordHasher
from txplatform.buses import busFromURL, checkBusURL
from txplatform.database import databaseFromURL

__all__ = [
    "BUS",
    "DRAIN_TIMEOUT",
    "HEALTH_FILE",
    "fromFile",
    "ARGON2",
    "checkBus",
    "checkDatabase",
    "checkPositive",
    "passwordHasher",
    "makeBus",
    "makeDatabase",
    "serviceProcess",
]

BUS = [
    "bus",
    None,
    "local:",
    "The message bus: local: (in-process) or amqp://user:password@host:5672/vhost"
    " (amqps:// for TLS; ?cafile=PATH to trust a CA, ?heartbeat=SECONDS).",
]
HEALTH_FILE = [
    "health-file",
    None,
    None,
    "Write the time (epoch seconds) to this file every 5 s while the process is"
    " healthy (its bus connected, its services started): for container health checks.",
]
DRAIN_TIMEOUT = [
    "drain-timeout",
    None,
    10.0,
    "On SIGTERM, seconds to finish the work in hand before handing it back to the bus.",
    float,
]

ARGON2 = [
    ["argon2-time-cost", None, Argon2Parameters().timeCost, "argon2id passes.", int],
    ["argon2-memory-cost", None, Argon2Parameters().memoryCost, "argon2id memory, KiB.", int],
    ["argon2-parallelism", None, Argon2Parameters().parallelism, "argon2id lanes.", int],
]


def fromFile(options: usage.Options, name: str) -> None:
    """
    An option given as C{@PATH} takes its value from that file (its first
    line): how secrets such as passwords in URLs come from Docker or
    Kubernetes secret files rather than the command line.
    """
    value = options[name]
    if isinstance(value, str) and value.startswith("@"):
        try:
            with open(value[1:], encoding="utf-8") as f:
                options[name] = f.readline().strip()
        except OSError as e:
            raise usage.UsageError(f"--{name}: cannot read {value[1:]}: {e.strerror}") from None


def checkBus(options: usage.Options) -> None:
    fromFile(options, "bus")
    try:
        checkBusURL(options["bus"])
    except ValueError as e:
        raise usage.UsageError(f"--bus: {e}") from None


def checkDatabase(options: usage.Options, name: str = "db") -> None:
    fromFile(options, name)
    url = options[name]
    if not url.startswith(("sqlite:", "postgresql://", "postgres://")):
        raise usage.UsageError(
            f"--{name}: {url!r} is not sqlite:PATH or postgresql://user@host:port/dbname"
        )


def checkPositive(options: usage.Options, *names: str) -> None:
    for name in names:
        if options[name] <= 0:
            raise usage.UsageError(f"--{name} must be positive, not {options[name]}")


def passwordHasher(options: usage.Options, reactor: Any) -> PasswordHasher:
    checkPositive(options, "argon2-time-cost", "argon2-memory-cost", "argon2-parallelism")
    return PasswordHasher(
        reactor,
        Argon2Parameters(
            timeCost=options["argon2-time-cost"],
            memoryCost=options["argon2-memory-cost"],
            parallelism=options["argon2-parallelism"],
        ),
    )


def makeBus(options: usage.Options, reactor: Any, caller: Any, name: str) -> Any:
    return busFromURL(options["bus"], reactor, caller=caller, name=name)


def makeDatabase(url: str, reactor: Any) -> Any:
    return databaseFromURL(url, reactor=reactor)


def serviceProcess(options: usage.Options, reactor: Any, serviceClass: Any, build: Any) -> Any:
    """
    The services of a process running one service: the bus, the service
    (C{build(bus, database)}, an instance of C{serviceClass}), and a gate
    that ends the process if the service cannot start.
    """
    from twisted.application.service import Service

    from ._lifecycle import ReadinessGate, StopInOrder

    top = StopInOrder()
    bus = makeBus(options, reactor, serviceClass.serviceId, serviceClass.name)
    bus.drainTimeout = options["drain-timeout"]
    bus.setServiceParent(top)
    service = build(bus, makeDatabase(options["db"], reactor))
    service.drainTimeout = options["drain-timeout"]
    service.setServiceParent(top)
    ReadinessGate(reactor, [service], Service()).setServiceParent(top)
    if options["health-file"]:
        from ._lifecycle import HealthFile

        HealthFile(reactor, options["health-file"], bus, [service]).setServiceParent(top)
    return top
