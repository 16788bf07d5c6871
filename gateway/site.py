# -*- test-case-name: tests.gateway.test_app -*-
"""
The gateway's HTTP site: Twisted's, with a cap on request bodies.

Twisted buffers a whole request body before a resource sees it.  The
request here stops keeping bytes past the site's C{maxBodySize} (checking
C{Content-Length} up front and counting chunked bodies as they come), and
marks itself, so the application answers 413 without ever holding more than
the limit.
"""

from __future__ import annotations

import re
from typing import Any

from twisted.logger import Logger
from twisted.web.server import Request, Site

from txplatform.routes import IExchange

__all__ = ["BoundedRequest", "GatewaySite"]

# Stream tickets are single-use and short-lived, yet a credential until
# used: they stay out of the logs.
_TICKET = re.compile(rb"([?&]ticket=)[^&]*")


class BoundedRequest(Request):
    """
    A request that keeps at most C{site.maxBodySize} bytes of body.

    @ivar bodyTooLarge: Whether the body went past the limit.
    """

    bodyTooLarge = False

    def _limit(self) -> int:
        return getattr(self.channel.site, "maxBodySize", 64 * 1024)

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > self._limit():
            self.bodyTooLarge = True
            length = 0
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self.bodyTooLarge:
            return
        if self.content.tell() + len(data) > self._limit():
            self.bodyTooLarge = True
            self.content.seek(0)
            self.content.truncate()
            return
        super().handleContentChunk(data)


class GatewaySite(Site):
    """
    @ivar maxBodySize: Largest request body kept, in bytes.
    """

    requestFactory = BoundedRequest
    # Tracebacks belong in the log, never in a response.
    displayTracebacks = False
    _access = Logger()

    def __init__(self, resource: Any, maxBodySize: int = 64 * 1024, **kwargs: Any) -> None:
        super().__init__(resource, **kwargs)
        self.maxBodySize = maxBodySize

    def log(self, request: Any) -> None:
        """
        One structured event per request, with its request id, instead of
        Twisted's Apache-style line: observers that write JSON keep every
        field, and nothing is formatted unless an observer asks.
        """
        exchange = request.getComponent(IExchange)
        client = request.getClientAddress()
        self._access.info(
            '{client} "{method} {uri}" {status} {length} {requestId}',
            client=getattr(client, "host", "-"),
            method=request.method.decode("ascii", "replace"),
            uri=_TICKET.sub(rb"\1-", request.uri).decode("ascii", "replace"),
            status=request.code,
            length=request.sentLength,
            requestId=exchange.requestId if exchange is not None else "-",
        )
