# -*- test-case-name: tests.amqp.test_attempts -*-
"""
The bus's attempts to reach its broker, as an operator reads them: one line
per failed attempt, saying why in words (a refused login, a missing virtual
host, nothing listening) and when the next attempt is.

ClientService paces the attempts but only counts them: it does not say why
one failed, and its own line per retry ("Scheduling retry 1 to connect
...") starts its count again with every connection made, so a refused
login is "retry 1" forever.
"""

from __future__ import annotations

import random
from typing import Any, Callable, Sequence

from twisted.application.internet import ClientService
from twisted.internet import error
from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import (
    FilteringLogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogPublisher,
)
from twisted.python.failure import Failure
from zope.interface import implementer

from .protocol import ACCESS_REFUSED, NOT_ALLOWED, BrokerClosed
from .url import BrokerURL

__all__ = ["FailoverEndpoint", "QuietClientService", "ReportingEndpoint", "whyNotConnected"]


def whyNotConnected(url: BrokerURL, reason: Failure, wasReady: bool = False) -> str:
    """
    Why a connection attempt to C{url}'s broker failed (or, if
    C{wasReady}, why a working connection ended), as one sentence.
    """
    broker = f"AMQP broker {url.host}:{url.port}"
    value = reason.value
    message = reason.getErrorMessage() or reason.type.__name__
    if wasReady:
        return f"Lost the connection to {broker} ({message})"
    if isinstance(value, BrokerClosed):
        if value.code == ACCESS_REFUSED:
            return f"{broker} refused access for user {url.username!r} ({value.text})"
        if value.code == NOT_ALLOWED:
            return (
                f"{broker} refused virtual host {url.vhost!r} to user {url.username!r}"
                f" ({value.text})"
            )
        return f"{broker} closed the connection ({value})"
    if isinstance(value, TimeoutError):
        return f"{broker} did not complete the AMQP handshake within {url.connectTimeout:g} s"
    if isinstance(value, error.ConnectError | error.DNSLookupError):
        return f"{broker} is unreachable ({message})"
    if type(value).__module__.split(".")[0] in ("OpenSSL", "service_identity"):
        return f"TLS with {broker} failed ({message})"
    return f"The connection to {broker} failed before it was ready ({message})"


@implementer(IStreamClientEndpoint)
class ReportingEndpoint:
    """
    An endpoint that tells C{onFailure} why each connection attempt failed
    (nothing listens, no route, a name that does not resolve).
    """

    def __init__(
        self, endpoint: IStreamClientEndpoint, onFailure: Callable[[Failure], object]
    ) -> None:
        self._endpoint = endpoint
        self._onFailure = onFailure

    def connect(self, protocolFactory: Any) -> Deferred[Any]:
        def failed(reason: Failure) -> Failure:
            self._onFailure(reason)
            return reason

        # The same Deferred: cancelling it cancels the attempt.
        return self._endpoint.connect(protocolFactory).addErrback(failed)


@implementer(IStreamClientEndpoint)
class FailoverEndpoint:
    """
    The nodes of a cluster, each attempt to the next one in turn: after a
    failed attempt, or a connection lost (its node stopped or went away),
    the next node is tried, ClientService's back-off pacing the attempts.
    The first node is drawn at random, so that the processes spread over
    the nodes.

    @ivar current: The node of the latest attempt: the one connected to,
        once connected.
    """

    def __init__(
        self,
        reactor: Any,
        urls: Sequence[BrokerURL],
        first: int | None = None,
    ) -> None:
        if not urls:
            raise ValueError("no broker URL")
        self.urls = tuple(urls)
        self._endpoints = [url.endpoint(reactor) for url in self.urls]
        self._next = random.randrange(len(self.urls)) if first is None else first
        self.current = self.urls[self._next]

    @property
    def upcoming(self) -> BrokerURL:
        """
        The node the next attempt goes to.
        """
        return self.urls[self._next]

    def connect(self, protocolFactory: Any) -> Deferred[Any]:
        index = self._next
        self._next = (index + 1) % len(self.urls)
        self.current = self.urls[index]
        return self._endpoints[index].connect(protocolFactory)


class QuietClientService(ClientService):
    """
    A L{ClientService} without its informational line per retry: the bus
    logs its own, with the reason.  Its warnings and errors still go out.
    """

    _log = Logger(
        observer=FilteringLogObserver(
            globalLogPublisher, [LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)]
        )
    )
