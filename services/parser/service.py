# -*- test-case-name: tests.services.test_parser -*-
"""
The Parser service: request bodies in, checked messages (or the client's
errors) out.  It stores nothing and keeps no state, so any number of
replicas share the work: each takes few calls at a time, so a replica busy
with a slow body leaves the next to an idle one.
"""

from __future__ import annotations

from typing import Any

from txplatform_gateway.bodies import bodyMessages, decodeBody
from txplatform.context import CallContext
from txplatform.errors import UnknownMethod
from txplatform.messages import toPayload
from txplatform.service import BusService, rpc

from . import api

__all__ = ["ParserService"]


class ParserService(BusService):
    name = api.SERVICE_NAME
    serviceId = api.SERVICE_ID
    # Parsing is all CPU: more calls in hand would only wait here while
    # another replica idles.
    callPrefetch = 2

    @rpc(api.ParseBody)
    def parse(self, request: api.ParseBody, context: CallContext) -> Any:
        messageType = bodyMessages().get(request.operation)
        if messageType is None:
            # The gateway's routes and ours differ: an older parser image.
            raise UnknownMethod(f"no operation {request.operation!r} takes a body here")
        return {"message": toPayload(decodeBody(request.body, messageType))}
