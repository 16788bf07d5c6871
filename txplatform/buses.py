# -*- test-case-name: tests.amqp.test_url -*-
"""
Choosing a bus from a URL, as the C{--bus} option of every process does.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from .interfaces import IBus, IPayloadCodec
from .localbus import LocalBus
from .serviceid import ServiceId

__all__ = ["busFromURL", "checkBusURL"]


def checkBusURL(url: str) -> None:
    """
    @raise ValueError: C{url} names no bus we know, or is malformed.
    """
    if url in ("local", "local:"):
        return
    if url.startswith(("amqp://", "amqps://")):
        from .amqp.url import parseBrokerURLs

        parseBrokerURLs(url)
        return
    if url.startswith("direct:"):
        from .direct.addresses import parseDirectURL

        parseDirectURL(url)
        return
    raise ValueError(
        f"unknown bus {url!r}: use local: (in-process), amqp://user:password@host:5672/vhost"
        " or direct:RANGE"
    )


def busFromURL(
    url: str,
    reactor: Any,
    caller: ServiceId | None = None,
    name: str = "txplatform",
    codec: IPayloadCodec | None = None,
) -> IBus:
    """
    The bus C{url} names:

      - C{local:}: the in-process bus, for everything in one process;
      - C{amqp://user:password@host:port/vhost} (or C{amqps://} for TLS):
        RabbitMQ; the nodes of a cluster as several URLs separated by
        commas.

    @param caller: The service this process runs, stamped on its messages.
    @param name: Shown in the broker's list of connections.
    @param codec: Turns payloads into bytes (the bus keys' encrypting codec
        in every process; JSON when not given).
    @raise ValueError: an unknown kind of bus.
    """
    checkBusURL(url)
    if url.startswith("direct:"):
        raise ValueError("a direct: bus needs the secure channel's settings: see DirectBus")
    if url in ("local", "local:"):
        return LocalBus(reactor, codec=codec)
    from .amqp.bus import AMQPBus
    from .amqp.url import parseBrokerURLs

    return AMQPBus(
        reactor,
        parseBrokerURLs(url),
        caller=caller,
        codec=codec,
        connectionName=f"{name} on {socket.gethostname()} pid {os.getpid()}",
    )
