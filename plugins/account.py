# -*- test-case-name: tests.plugins.test_options -*-
"""
C{twistd account}: one replica of the Account service.
"""

from __future__ import annotations

from typing import Any

from twisted.python import usage

from ._common import (
    ARGON2,
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
    checkPositive,
    passwordHasher,
    serviceIdOf,
    serviceProcess,
)

SESSION_LIFETIME = ["session-lifetime", None, 24 * 3600.0, "Seconds a login session lasts.", float]
SESSION_IDLE = [
    "session-idle",
    None,
    8 * 3600.0,
    "Seconds a login session lasts unused (noted at most once a minute); 0: until its"
    " lifetime ends.",
    float,
]


def sessionIdle(options: usage.Options) -> float | None:
    if options["session-idle"] < 0:
        raise usage.UsageError(f"--session-idle must be 0 or more, not {options['session-idle']:g}")
    return options["session-idle"] or None


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = "Run one replica of the Account service: accounts, login sessions and follows."
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
            "sqlite:var/account.sqlite",
            "Database: sqlite:PATH or postgresql://user@host:port/dbname.",
        ],
        SESSION_LIFETIME,
        SESSION_IDLE,
        *ARGON2,
    ]

    def postOptions(self) -> None:
        checkBus(self, serviceIdOf("account"))
        checkKeys(self, "account")
        checkDatabase(self)
        checkPositive(
            self, "session-lifetime", "argon2-time-cost", "argon2-memory-cost", "argon2-parallelism"
        )
        sessionIdle(self)


def makeService(options: Options, reactor: Any = None) -> Any:
    if reactor is None:
        from twisted.internet import reactor
    from txplatform_services.account.service import AccountService

    return serviceProcess(
        options,
        reactor,
        AccountService,
        lambda bus, database, fields: AccountService(
            bus,
            database,
            reactor,
            passwordHasher(options, reactor),
            fields=fields,
            sessionLifetime=options["session-lifetime"],
            sessionIdle=sessionIdle(options),
        ),
    )
