# -*- test-case-name: tests.plugins.test_options -*-
"""
C{twistd post}: one replica of the Post service: create, read, list and delete posts.
"""

from __future__ import annotations

from typing import Any

from twisted.python import usage

from ._common import BUS, checkBus, checkDatabase, serviceProcess


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = "Run one replica of the Post service: create, read, list and delete posts."
    optParameters = [
        BUS,
        ["db", None, "sqlite:var/post.sqlite", "Database: sqlite:PATH or postgresql://user@host:port/dbname."],
    ]

    def postOptions(self) -> None:
        checkBus(self)
        checkDatabase(self["db"])


def makeService(options: Options, reactor: Any = None) -> Any:
    if reactor is None:
        from twisted.internet import reactor
    from services.post.service import PostService

    return serviceProcess(
        options, reactor, lambda bus, database: PostService(bus, database, reactor)
    )
