# -*- test-case-name: tests.plugins.test_options -*-
"""
C{twistd post}: one replica of the Post service: create, read, list and
delete posts.
"""

from __future__ import annotations

from typing import Any

from twisted.python import usage

from ._common import (
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
    serviceIdOf,
    serviceProcess,
)

CACHE_SIZE = [
    "post-cache-size",
    None,
    4096,
    "Post views each replica keeps in memory (0: none).",
    int,
]


POST_RATE = [
    "post-rate",
    None,
    0,
    "Posts an author may create per minute, counted in the database across replicas and"
    " gateways (429 with Retry-After beyond), such as 30. Default: 0, no limit.",
    int,
]


def checkCacheSize(options: usage.Options) -> None:
    if options["post-cache-size"] < 0:
        raise usage.UsageError("--post-cache-size cannot be negative")
    if options["post-rate"] < 0:
        raise usage.UsageError("--post-rate cannot be negative")


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = "Run one replica of the Post service: create, read, list and delete posts."
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
            "sqlite:var/post.sqlite",
            "Database: sqlite:PATH or postgresql://user@host:port/dbname.",
        ],
        CACHE_SIZE,
        POST_RATE,
    ]

    def postOptions(self) -> None:
        checkBus(self, serviceIdOf("post"))
        checkKeys(self, "post")
        checkDatabase(self)
        checkCacheSize(self)


def makeService(options: Options, reactor: Any = None) -> Any:
    if reactor is None:
        from twisted.internet import reactor
    from txplatform_services.post.service import PostService

    return serviceProcess(
        options,
        reactor,
        PostService,
        lambda bus, database, fields: PostService(
            bus,
            database,
            reactor,
            fields,
            cacheSize=options["post-cache-size"],
            postRate=options["post-rate"],
        ),
    )
