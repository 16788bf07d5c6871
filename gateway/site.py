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

from twisted.web.http import HTTPChannel
from twisted.web.server import Request, Site

from txplatform.routes import IExchange

from .accesslog import AccessLog

__all__ = ["BoundedRequest", "GatewayChannel", "GatewaySite"]

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


def _answer(status: int, kind: str, detail: str) -> bytes:
    """
    A whole HTTP/1.1 response with problem details, for the connection to
    end with: written by the channel before any request is dispatched.
    """
    from http import HTTPStatus

    from txplatform.context import newRequestId

    from .problems import Problem

    requestId = newRequestId()
    body = Problem(status, kind, detail, {}, {}).body(requestId) + b"\n"
    return (
        b"HTTP/1.1 %d %s\r\nContent-Type: application/problem+json\r\n"
        b"Content-Length: %d\r\nX-Request-Id: %s\r\nConnection: close\r\n\r\n"
        % (status, HTTPStatus(status).phrase.encode(), len(body), requestId.encode())
    ) + body


class GatewayChannel(HTTPChannel):
    """
    HTTP/1.1 with deadlines: a request's headers must all arrive within
    C{site.headerTimeout} seconds of its first byte (or of the connection),
    and its body within C{site.bodyTimeout} of its headers, however slowly
    the client trickles them; a body declared over C{site.maxBodySize} is
    answered 413 at once, before any of it is read; and a client address
    holds at most C{site.maxConnectionsPerAddress} connections.
    """

    _deadline: Any = None
    # What the deadline is for (what is awaited, and its seconds), if any.
    _awaiting: tuple[str, float] | None = None
    _receiving = True  # a request's headers or body are on their way
    _counted: str | None = None
    _ended = False

    def connectionMade(self) -> None:
        super().connectionMade()
        host = getattr(self.transport.getPeer(), "host", "")
        if not self.site.admitConnection(host):
            self.transport.write(
                _answer(503, "too_many_connections", "too many connections from your address")
            )
            self.transport.loseConnection()
            return
        self._counted = host
        self._expect(self.site.headerTimeout, "headers")

    def connectionLost(self, reason: Any) -> None:
        self._awaiting = None
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None
        if self._counted is not None:
            self.site.connectionGone(self._counted)
            self._counted = None
        super().connectionLost(reason)

    def dataReceived(self, data: bytes) -> None:
        if self._ended:
            return  # answered and closing: the rest is the ended request's
        if not self._receiving and not self._handlingRequest:
            # The next request on a kept-alive connection starts.
            self._receiving = True
            self._expect(self.site.headerTimeout, "headers")
        super().dataReceived(data)

    def allHeadersReceived(self) -> None:
        self._stopDeadline()
        if self.length is not None and self.length > self.site.maxBodySize:
            self._end(
                413,
                "body_too_large",
                f"the body is larger than {self.site.maxBodySize} bytes",
            )
            return
        super().allHeadersReceived()
        if self.length != 0:
            self._expect(self.site.bodyTimeout, "body")

    def allContentReceived(self) -> None:
        self._stopDeadline()
        self._receiving = False
        super().allContentReceived()

    def _expect(self, seconds: float, what: str) -> None:
        if not seconds:
            self._awaiting = None
            return
        self._awaiting = (what, seconds)
        if self._deadline is not None and self._deadline.active():
            # Moved, not cancelled and made again: one timer per
            # connection rather than two a request, for the reactor to
            # sort in and out of its heap.
            self._deadline.reset(seconds)
        else:
            self._deadline = self.callLater(seconds, self._tooSlow)

    def _stopDeadline(self) -> None:
        # Disarmed: the timer stays for the next request's deadline, and
        # does nothing if it goes off first.
        self._awaiting = None

    def _tooSlow(self) -> None:
        self._deadline = None
        if self._awaiting is None:
            return
        what, seconds = self._awaiting
        self._log.info(
            "Request {what} from {peer} took over {seconds} s: closing",
            what=what,
            peer=str(self.transport.getPeer()),
            seconds=seconds,
        )
        self._end(408, "request_timeout", f"the request's {what} took over {seconds:g} s")

    def _end(self, status: int, kind: str, detail: str) -> None:
        self._ended = True
        self.transport.write(_answer(status, kind, detail))
        self.transport.loseConnection()


class GatewaySite(Site):
    """
    @ivar maxBodySize: Largest request body kept, in bytes.
    @ivar headerTimeout: Seconds a request's headers may take to arrive.
    @ivar bodyTimeout: Seconds a request's body may take after its headers.
    @ivar maxConnectionsPerAddress: Connections one client address may hold
        at once (behind a proxy, the proxy's); 0: no limit.
    @ivar accessLog: Where each request answered is noted (an
        L{AccessLog}: batched lines by default).
    """

    protocol = GatewayChannel
    requestFactory = BoundedRequest
    # Tracebacks belong in the log, never in a response.
    displayTracebacks = False

    def __init__(
        self,
        resource: Any,
        maxBodySize: int = 64 * 1024,
        headerTimeout: float = 10.0,
        bodyTimeout: float = 30.0,
        maxConnectionsPerAddress: int = 256,
        accessLog: AccessLog | None = None,
        **kwargs: Any,
    ) -> None:
        # The API takes JSON only: a POST's body is never a form to parse
        # into request.args (Twisted parses its Content-Type through the
        # email package for every POST otherwise, a tenth of the gateway's
        # time on a small one).
        kwargs.setdefault("parsePOSTFormSubmission", False)
        super().__init__(resource, **kwargs)
        self.accessLog = accessLog if accessLog is not None else AccessLog(self.reactor)
        self.maxBodySize = maxBodySize
        self.headerTimeout = headerTimeout
        self.bodyTimeout = bodyTimeout
        self.maxConnectionsPerAddress = maxConnectionsPerAddress
        self._connections: dict[str, int] = {}

    def admitConnection(self, host: str) -> bool:
        """
        Count a new connection from C{host}, unless it has all it may.
        """
        count = self._connections.get(host, 0)
        if self.maxConnectionsPerAddress and count >= self.maxConnectionsPerAddress:
            return False
        self._connections[host] = count + 1
        return True

    def connectionGone(self, host: str) -> None:
        left = self._connections.get(host, 0) - 1
        if left > 0:
            self._connections[host] = left
        else:
            self._connections.pop(host, None)

    def log(self, request: Any) -> None:
        """
        Note the request in the access log, with its request id, instead of
        Twisted's Apache-style line.
        """
        exchange = request.getComponent(IExchange)
        client = request.getClientAddress()
        self.accessLog.request(
            getattr(client, "host", "-"),
            request.method.decode("ascii", "replace"),
            _TICKET.sub(rb"\1-", request.uri).decode("ascii", "replace"),
            request.code,
            request.sentLength,
            exchange.requestId if exchange is not None else "-",
        )

    def stopFactory(self) -> None:
        self.accessLog.flush()
        super().stopFactory()
