# -*- test-case-name: tests.services.test_parser -*-
"""
The Parser service: request bodies in, checked messages (or the client's
errors) out.  It stores nothing and keeps no state, so any number of
replicas share the work: each takes few calls at a time, so a replica busy
with a slow body leaves the next to an idle one.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

from txplatform.bodies import decodeBody
from txplatform.catalogue import Catalogue, installedServices
from txplatform.context import CallContext
from txplatform.errors import UnknownMethod
from txplatform.interfaces import IBus
from txplatform.messages import toPayload
from txplatform.routes import bodyTypes, routesOf
from txplatform.service import BusService, rpc

from . import api

__all__ = ["ParserService", "installedBodyTypes"]


def installedBodyTypes(catalogue: Catalogue) -> dict[str, type]:
    """
    The body class of every operation of the services in C{catalogue}, by
    C{operationId}: what a gateway with the same services hands over.
    """
    found: dict[str, type] = {}
    for declaration in catalogue:
        if declaration.routes is not None:
            found.update(bodyTypes(routesOf(declaration.routeClass())))
    return found


class ParserService(BusService):
    name = api.SERVICE_NAME
    serviceId = api.SERVICE_ID
    # Parsing is all CPU: more calls in hand would only wait here while
    # another replica idles.
    callPrefetch = 2

    def __init__(self, bus: IBus, clock: Any, catalogue: Catalogue | None = None) -> None:
        super().__init__(bus, clock)
        self._catalogue = catalogue

    @cached_property
    def bodyTypes(self) -> dict[str, type]:
        return installedBodyTypes(self._catalogue or installedServices())

    @rpc(api.ParseBody)
    def parse(self, request: api.ParseBody, context: CallContext) -> Any:
        messageType = self.bodyTypes.get(request.operation)
        if messageType is None:
            # The gateway's routes and ours differ: an older parser image.
            raise UnknownMethod(f"no operation {request.operation!r} takes a body here")
        return {"message": toPayload(decodeBody(request.body, messageType))}
