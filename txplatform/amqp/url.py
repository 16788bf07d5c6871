# -*- test-case-name: tests.amqp.test_url -*-
"""
Broker URLs: C{amqp://user:password@host:5672/vhost?heartbeat=30} and
C{amqps://...?cafile=/path/ca.pem} for TLS; the nodes of a cluster as
several such URLs separated by commas (L{parseBrokerURLs}).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from attrs import evolve, frozen
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.ssl import (
    Certificate,
    optionsForClientTLS,
    platformTrust,
    trustRootFromCertificates,
)

__all__ = ["BrokerURL", "parseBrokerURLs"]


@frozen
class BrokerURL:
    """
    Where the broker is and how to talk to it.

    @ivar heartbeat: Seconds between heartbeats (0: none); a broker silent
        for three of them is taken for gone.
    @ivar cafile: For amqps: PEM file of the certificate authorities to
        trust instead of the system's.
    """

    tls: bool
    host: str
    port: int
    username: str
    password: str
    vhost: str
    heartbeat: int = 30
    cafile: str | None = None
    connectTimeout: float = 10.0
    #: The type of the durable event and dead-letter queues: C{classic}, or
    #: C{quorum} on a RabbitMQ cluster (replicated).  RPC queues stay classic:
    #: they need priorities.
    queueType: str = "classic"

    @classmethod
    def parse(cls, url: str) -> BrokerURL:
        """
        @raise ValueError: not an amqp:// or amqps:// URL we can use.
        """
        parts = urlsplit(url)
        if parts.scheme not in ("amqp", "amqps"):
            raise ValueError(f"a broker URL starts with amqp:// or amqps://, not {url!r}")
        if not parts.hostname:
            raise ValueError(f"no broker host in {cls._redact(url)!r}")
        tls = parts.scheme == "amqps"
        vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
        options = dict(parse_qsl(parts.query))
        unknown = set(options) - {"heartbeat", "cafile", "connect_timeout", "queue_type"}
        if unknown:
            raise ValueError(f"unknown broker URL option(s): {', '.join(sorted(unknown))}")
        try:
            heartbeat = int(options.get("heartbeat", "30"))
            timeout = float(options.get("connect_timeout", "10"))
            port = parts.port or (5671 if tls else 5672)
        except ValueError as e:
            raise ValueError(f"in {cls._redact(url)!r}: {e}") from None
        if not 0 <= heartbeat <= 65535:
            raise ValueError(f"heartbeat is 0 to 65535 seconds, not {heartbeat}")
        if not timeout > 0:
            raise ValueError(f"connect_timeout must be positive, not {timeout:g}")
        if "cafile" in options and not tls:
            raise ValueError("cafile is for amqps:// URLs")
        queueType = options.get("queue_type", "classic")
        if queueType not in ("classic", "quorum"):
            raise ValueError(f"queue_type is classic or quorum, not {queueType!r}")
        return cls(
            tls=tls,
            host=parts.hostname,
            port=port,
            username=unquote(parts.username or "guest"),
            password=unquote(parts.password or "guest"),
            vhost=vhost,
            heartbeat=heartbeat,
            cafile=options.get("cafile"),
            connectTimeout=timeout,
            queueType=queueType,
        )

    @staticmethod
    def _redact(url: str) -> str:
        parts = urlsplit(url)
        if parts.password:
            return url.replace(f":{parts.password}@", ":***@")
        return url

    def __str__(self) -> str:
        scheme = "amqps" if self.tls else "amqp"
        vhost = "" if self.vhost == "/" else "/" + self.vhost
        return f"{scheme}://{self.username}@{self.host}:{self.port}{vhost}"

    def endpoint(self, reactor: Any) -> Any:
        """
        The client endpoint to the broker: TCP, or TLS (1.2 or later) with
        the host name checked against the broker's certificate.
        """
        tcp = HostnameEndpoint(reactor, self.host, self.port, timeout=self.connectTimeout)
        if not self.tls:
            return tcp
        from OpenSSL import SSL  # noqa: F401  (pyOpenSSL must be there for TLS)
        from twisted.internet.ssl import TLSVersion

        if self.cafile is not None:
            with open(self.cafile, "rb") as f:
                trust = trustRootFromCertificates(_certificates(f.read()))
        else:
            trust = platformTrust()
        options = optionsForClientTLS(
            self.host,
            trustRoot=trust,
            extraCertificateOptions={"raiseMinimumTo": TLSVersion.TLSv1_2},
        )
        return wrapClientTLS(options, tcp)


def parseBrokerURLs(text: str) -> tuple[BrokerURL, ...]:
    """
    One broker URL, or the nodes of a cluster: complete URLs separated by
    commas (C{amqp://u:p@10.0.0.1:5672/v,amqp://u:p@10.0.0.2:5672/v}), which
    differ in their host and port only (the same scheme, credentials,
    virtual host and options: they are one broker).  A comma inside a
    password is written C{%2C}.

    @raise ValueError: one is not a broker URL we can use, they differ in
        more than host and port, or a node is named twice.
    """
    urls = tuple(BrokerURL.parse(part.strip()) for part in text.split(","))
    first = urls[0]
    seen = set()
    for url in urls:
        if evolve(url, host=first.host, port=first.port) != first:
            raise ValueError(
                f"the URLs of a cluster's nodes differ in host and port only: {url}"
                f" has other settings (credentials, virtual host, options) than {first}"
            )
        if (url.host, url.port) in seen:
            raise ValueError(f"{url.host}:{url.port} is named twice")
        seen.add((url.host, url.port))
    return urls


def _certificates(pem: bytes) -> list[Certificate]:
    """
    Every certificate in a PEM bundle (L{Certificate.loadPEM} reads the
    first only).

    @raise ValueError: there is none.
    """
    marker = b"-----END CERTIFICATE-----"
    blocks = [block + marker for block in pem.split(marker) if b"-----BEGIN" in block]
    if not blocks:
        raise ValueError("no PEM certificate in the CA file")
    return [Certificate.loadPEM(block) for block in blocks]
