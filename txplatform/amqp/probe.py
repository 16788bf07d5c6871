# -*- test-case-name: tests.amqp.test_probe -*-
"""
One attempt to log in to the broker, bounded in time, whose failure is
said in one line: connection refused, access refused, no such vhost, no
answer.

An L{txplatform.amqp.bus.AMQPBus} retries for as long as it runs, which a
long-running process wants; a command-line tool wants to hear at once that
it cannot get in, and why.  It probes first, then starts its bus.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import error
from twisted.internet.defer import CancelledError, Deferred, TimeoutError, inlineCallbacks
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure

from .protocol import AMQPConnection, AMQPDelegate
from .spec import loadSpec
from .url import BrokerURL

__all__ = ["BrokerUnreachable", "probe", "explain"]


class BrokerUnreachable(Exception):
    """
    The broker cannot be used: the message says why, in one line.
    """


#: What RabbitMQ needs to say why it refuses a login (a connection.close
#: with ACCESS_REFUSED) instead of just closing the connection.
_CAPABILITIES = {"authentication_failure_close": True}


def probe(
    reactor: Any, url: BrokerURL, timeout: float, clientProperties: dict[str, Any] | None = None
) -> Deferred[None]:
    """
    Connect to the broker, log in, open the vhost, and close again.

    @param timeout: Seconds for all of it.
    @param clientProperties: What the connection says of itself (its name
        in the broker's list): an AMQPBus's C{clientProperties()}.

    @return: A Deferred that fires once the broker let us in, or fails
        with L{BrokerUnreachable}.
    """
    properties = dict(clientProperties or {"product": "txplatform"})
    properties["capabilities"] = {**properties.get("capabilities", {}), **_CAPABILITIES}
    connected: list[AMQPConnection] = []

    def build(addr: Any) -> AMQPConnection:
        # No heartbeats: the connection lasts one handshake.
        protocol = AMQPConnection(AMQPDelegate(properties), url.vhost, loadSpec(), 0, reactor)
        connected.append(protocol)
        return protocol

    factory = Factory()
    factory.buildProtocol = build  # type: ignore[method-assign]

    @inlineCallbacks
    def attempt() -> Any:
        protocol = yield url.endpoint(reactor).connect(factory)
        response = b"\0" + url.username.encode("utf-8") + b"\0" + url.password.encode("utf-8")
        yield protocol.start(response, mechanism="PLAIN", locale="en_US")
        yield protocol.closeCleanly(timeout)

    def failed(failure: Failure) -> None:
        # Whatever went wrong, nothing is left open behind us.
        for protocol in connected:
            if not protocol.lost and protocol.transport is not None:
                protocol.transport.abortConnection()
        raise BrokerUnreachable(f"{url}: {explain(failure, url, timeout, bool(connected))}")

    return attempt().addTimeout(timeout, reactor).addErrback(failed)


def explain(failure: Failure, url: BrokerURL, timeout: float, connected: bool) -> str:
    """
    Why a probe failed, in a few words and the broker's own.

    @param connected: Whether a connection was made (then the broker, or
        whatever listens there, did not let us in).
    """
    from txamqp.client import Closed

    if failure.check(TimeoutError, CancelledError):
        if connected:
            return f"connected, but no AMQP answer within {timeout:g}s (is it a broker?)"
        return f"no connection within {timeout:g}s"
    if failure.check(error.ConnectionRefusedError):
        return "connection refused (no broker listens there)"
    if failure.check(error.DNSLookupError):
        return f"cannot resolve the host name {url.host!r}"
    if failure.check(error.TimeoutError):
        return "the connection timed out"
    if failure.check(Closed):
        reason = failure.value.args[0] if failure.value.args else None
        code = getattr(reason, "reply_code", None) if not isinstance(reason, Failure) else None
        if code is None:
            return "the connection was closed during the AMQP handshake (is it a broker?)"
        text = getattr(reason, "reply_text", "")
        if code == 403:
            return f"access refused (check the user name and password): {text}"
        if code == 530 and "vhost" in text and "not found" in text:
            return f"no such vhost {url.vhost!r}: {text}"
        return f"the broker closed the connection: {code} {text}"
    if failure.check(error.ConnectionDone, error.ConnectionLost):
        return "the connection was closed during the AMQP handshake (is it a broker?)"
    return " ".join(f"{failure.type.__name__}: {failure.getErrorMessage()}".split())
