# -*- test-case-name: tests.plugins.test_commands -*-
"""
The twistd commands, as the dropin (C{twisted/plugins/txplatform_dropin.py})
hands them to Twisted: the all-in-one, the gateway, the sidecar, and one per
installed service.  Light to import: C{twistd --help} loads this for every
twistd command there is; what a command needs is loaded when it runs.
"""

from __future__ import annotations

import os
import time
from importlib.metadata import entry_points
from typing import Any, Callable

from twisted.application.service import IServiceMaker, ServiceMaker
from twisted.logger import Logger
from twisted.plugin import IPlugin
from zope.interface import implementer

from txplatform.catalogue import ENTRY_POINT_GROUP, Catalogue, installedServices

__all__ = ["ServiceCommand", "commands", "keepPluginCacheFresh"]

log = Logger()


@implementer(IPlugin, IServiceMaker)
class ServiceCommand:
    """
    C{twistd NAME} for one installed service.  Its declaration is loaded
    only when the command is described or used, so one service that fails
    to load does not hide the others.
    """

    def __init__(self, name: str, catalogue: Callable[[], Catalogue] = installedServices) -> None:
        self.tapname = name
        self._catalogue = catalogue

    def __repr__(self) -> str:
        return f"<ServiceCommand {self.tapname}>"

    @property
    def description(self) -> str:
        try:
            return self._catalogue().get(self.tapname).summary
        except Exception as e:
            return f"(cannot be loaded: {e})"

    @property
    def options(self) -> Any:
        from txplatform.catalogue import CatalogueError

        from ._common import catalogueRefusal
        from .service import optionsFor

        try:
            return optionsFor(self._catalogue().get(self.tapname))
        except (CatalogueError, KeyError) as e:
            why = e.args[0] if isinstance(e, KeyError) else str(e)
            raise catalogueRefusal(self.tapname, why) from None

    def makeService(self, options: Any) -> Any:
        from .service import makeService

        return makeService(options)


def commands() -> dict[str, Any]:
    """
    Every command, by the name the dropin gives it.
    """
    found = {
        "txplatform": ServiceMaker(
            "txplatform",
            "txplatform_plugins.allinone",
            "The whole platform (gateway and every installed service) in one process.",
            "txplatform",
        ),
        "gateway": ServiceMaker(
            "txplatform gateway",
            "txplatform_plugins.gateway",
            "The HTTP gateway of txplatform.",
            "gateway",
        ),
        "sidecar": ServiceMaker(
            "txplatform sidecar",
            "txplatform_plugins.sidecar",
            "Beside a service replica: secure-channel ingress, health and Prometheus metrics.",
            "sidecar",
        ),
    }
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        # Names the catalogue would refuse fail when the command runs, with
        # the reason; here they only must not replace the commands above.
        found.setdefault(entry.name, ServiceCommand(entry.name))
    return found


#: 2100-01-01: always newer than Twisted's plugin cache.
_FUTURE = 4102444800


def keepPluginCacheFresh(dropin: str) -> None:
    """
    Twisted caches the names each dropin defines (C{dropin.cache} beside
    it) and reads the dropin again only when the file is newer than the
    cache.  Ours defines one command per installed service, which changes
    when a service package is installed, not when the dropin does: dated in
    the future, the dropin is always newer, so twistd never lists a stale
    set of commands.  Where the file cannot be touched (a read-only
    install), build the cache after installing services instead
    (C{twistd --help} does).
    """
    try:
        if os.stat(dropin).st_mtime < _FUTURE:
            os.utime(dropin, (time.time(), _FUTURE))
    except OSError as e:
        log.debug("Cannot keep the plugin cache fresh: {error}", error=e)
