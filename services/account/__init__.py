"""
The Account service: accounts, sessions and follows.
"""

from __future__ import annotations

from typing import Any

from twisted.python.usage import UsageError

from txplatform.catalogue import ServiceDeclaration, ServiceParts
from txplatform.options import checkPositive

from . import api
from .passwords import Argon2Parameters

__all__ = ["declaration"]


def _sessionIdle(options: Any) -> float | None:
    if options["session-idle"] < 0:
        raise UsageError(f"--session-idle must be 0 or more, not {options['session-idle']:g}")
    return options["session-idle"] or None


def _check(options: Any) -> None:
    checkPositive(
        options, "session-lifetime", "argon2-time-cost", "argon2-memory-cost", "argon2-parallelism"
    )
    _sessionIdle(options)


def _build(parts: ServiceParts) -> Any:
    from .passwords import PasswordHasher
    from .service import AccountService

    options = parts.options
    hasher = PasswordHasher(
        parts.reactor,
        Argon2Parameters(
            timeCost=options["argon2-time-cost"],
            memoryCost=options["argon2-memory-cost"],
            parallelism=options["argon2-parallelism"],
        ),
        threadPool=parts.threadPool,
    )
    return AccountService(
        parts.bus,
        parts.database,
        parts.reactor,
        hasher,
        fields=parts.fields,
        sessionLifetime=options["session-lifetime"],
        sessionIdle=_sessionIdle(options),
    )


declaration = ServiceDeclaration(
    name=api.SERVICE_NAME,
    serviceId=api.SERVICE_ID,
    service="txplatform_services.account.service:AccountService",
    routes="txplatform_services.account.routes:AccountRoutes",
    summary="Accounts, login sessions and follows.",
    options=[
        ["session-lifetime", None, 24 * 3600.0, "Seconds a login session lasts.", float],
        [
            "session-idle",
            None,
            8 * 3600.0,
            "Seconds a login session lasts unused (noted at most once a minute); 0: until its"
            " lifetime ends.",
            float,
        ],
        ["argon2-time-cost", None, Argon2Parameters().timeCost, "argon2id passes.", int],
        ["argon2-memory-cost", None, Argon2Parameters().memoryCost, "argon2id memory, KiB.", int],
        ["argon2-parallelism", None, Argon2Parameters().parallelism, "argon2id lanes.", int],
    ],
    check=_check,
    build=_build,
    events=[
        api.ACCOUNT_CREATED,
        api.ACCOUNT_UPDATED,
        api.ACCOUNT_DELETED,
        api.ACCOUNT_FOLLOWED,
        api.ACCOUNT_UNFOLLOWED,
    ],
)
