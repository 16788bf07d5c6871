# -*- test-case-name: tests.test_sidecar -*-
"""
The sidecar: a process beside each service replica that extends it without
touching its code.

  - Ingress: it listens at the service's address behind the secure
    channel's handshake, and forwards each accepted channel's plaintext to
    the service's local socket, saying first who the peer is
    (L{txplatform.channel.forward}).  The service keeps no channel code on
    its hot path and never sees an unauthenticated byte.
  - Health for orchestrators: C{/healthz} (alive: the sidecar runs and, if
    given, the service's health file is fresh) and C{/readyz} (ready: the
    service accepts connections on its socket).
  - Prometheus metrics at C{/metrics}: handshakes accepted and refused,
    open channels, bytes each way, and calls per method with their
    latency, read from the frames' clear headers as they pass (payloads
    stay sealed: the sidecar holds no bus key).
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred, succeed
from twisted.internet.endpoints import clientFromString, serverFromString
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Site

from .channel.forward import forwardPreamble
from .channel.protocol import ChannelServerFactory, ChannelSettings
from .direct.wire import CallFrame, FrameError, parseFrame
from .probes import MetricsResource

__all__ = ["SidecarMetrics", "FrameObserver", "Ingress", "Sidecar"]

# Enough of a frame to read its header: kind, ids, priority, deadline and
# three short strings.
_HEADER_BYTES = 1 + 3 + 1 + 8 + 3 * 256
# Distinct method labels kept; more are counted as "other".
_MAX_METHODS = 64


class SidecarMetrics:
    """
    The sidecar's metrics, in a registry of their own.
    """

    def __init__(self, service: str) -> None:
        self.registry = CollectorRegistry()
        labels = {"service": service}
        self.handshakes = Counter(
            "txplatform_sidecar_handshakes",
            "Secure channel handshakes ended, by result.",
            ["service", "result"],
            registry=self.registry,
        )
        self.channels = Gauge(
            "txplatform_sidecar_open_channels",
            "Channels forwarded to the service now.",
            ["service"],
            registry=self.registry,
        ).labels(**labels)
        self.bytes = Counter(
            "txplatform_sidecar_bytes",
            "Plaintext bytes forwarded, by direction (in: to the service).",
            ["service", "direction"],
            registry=self.registry,
        )
        self.calls = Counter(
            "txplatform_sidecar_calls",
            "Direct calls forwarded to the service, by method.",
            ["service", "method"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "txplatform_sidecar_call_seconds",
            "Seconds from a call passing in to its reply passing out, by method.",
            ["service", "method"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.malformed = Counter(
            "txplatform_sidecar_malformed_frames",
            "Frames whose header could not be read.",
            ["service"],
            registry=self.registry,
        ).labels(**labels)
        self.serviceUp = Gauge(
            "txplatform_sidecar_service_up",
            "1 when the service accepted a connection at the last readiness check.",
            ["service"],
            registry=self.registry,
        ).labels(**labels)
        self.service = service
        self._methods: set[str] = set()

    def method(self, name: str) -> str:
        if name in self._methods:
            return name
        if len(self._methods) < _MAX_METHODS:
            self._methods.add(name)
            return name
        return "other"


class FrameObserver:
    """
    Read the direct transport's frame headers from a byte stream as it
    passes, without holding more than a header: the length prefixes say
    where each frame ends.
    """

    def __init__(self, onFrame: Any, onMalformed: Any) -> None:
        self._onFrame = onFrame
        self._onMalformed = onMalformed
        self._length = b""
        self._header = b""
        self._remaining = 0  # bytes of the current frame still to pass
        self._wanted = 0  # of which header bytes still to keep

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self._remaining == 0:
                need = 4 - len(self._length)
                self._length += view[:need].tobytes()
                view = view[need:]
                if len(self._length) < 4:
                    return
                self._remaining = int.from_bytes(self._length, "big")
                self._length = b""
                self._header = b""
                self._wanted = min(self._remaining, _HEADER_BYTES)
                if self._remaining == 0:
                    self._frame()
                    continue
            take = min(len(view), self._remaining)
            if self._wanted:
                keep = min(take, self._wanted)
                self._header += view[:keep].tobytes()
                self._wanted -= keep
            self._remaining -= take
            view = view[take:]
            if self._remaining == 0:
                self._frame()

    def _frame(self) -> None:
        try:
            frame = parseFrame(self._header)
        except FrameError:
            self._onMalformed()
            return
        self._onFrame(frame)


class _Outbound(Protocol):
    """
    The sidecar's connection to the service's socket.
    """

    def __init__(self, inbound: _Inbound) -> None:
        self.inbound = inbound

    def connectionMade(self) -> None:
        self.inbound.outboundConnected(self)

    def dataReceived(self, data: bytes) -> None:
        self.inbound.fromService(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.inbound.outboundLost()


class _Inbound(Protocol):
    """
    One accepted channel, forwarded to the service: the application
    protocol of the channel, built once the handshake succeeded.
    """

    log = Logger()

    def __init__(self, ingress: Ingress) -> None:
        self._ingress = ingress
        self._outbound: _Outbound | None = None
        self._pending: list[bytes] = []
        self._sent: dict[str, tuple[str, float]] = {}
        metrics = ingress.metrics
        self._in = FrameObserver(self._call, metrics.malformed.inc)
        self._out = FrameObserver(self._reply, metrics.malformed.inc)
        self._bytesIn = metrics.bytes.labels(metrics.service, "in")
        self._bytesOut = metrics.bytes.labels(metrics.service, "out")

    def connectionMade(self) -> None:
        self._ingress.metrics.channels.inc()
        # Nothing is read from the peer until the service is there to take it.
        self.transport.pauseProducing()
        d = self._ingress.connectToService(self)

        def failed(failure: Failure) -> None:
            self.log.warn(
                "Sidecar of {service}: the service is not reachable: {error}",
                service=self._ingress.metrics.service,
                error=failure.getErrorMessage(),
            )
            self.transport.loseConnection()

        d.addErrback(failed)

    def outboundConnected(self, outbound: _Outbound) -> None:
        self._outbound = outbound
        transport = self.transport
        outbound.transport.write(forwardPreamble(transport.peerServiceId, transport.peerKey))
        for data in self._pending:
            outbound.transport.write(data)
        self._pending = []
        # Flow control both ways: each side's buffer pauses the other.
        outbound.transport.registerProducer(transport, True)
        transport.registerProducer(outbound.transport, True)
        transport.resumeProducing()

    def dataReceived(self, data: bytes) -> None:
        self._bytesIn.inc(len(data))
        self._in.feed(data)
        if self._outbound is None:
            self._pending.append(data)
        else:
            self._outbound.transport.write(data)

    def fromService(self, data: bytes) -> None:
        self._bytesOut.inc(len(data))
        self._out.feed(data)
        self.transport.write(data)

    def _call(self, frame: Any) -> None:
        if not isinstance(frame, CallFrame):
            return
        metrics = self._ingress.metrics
        method = metrics.method(frame.method)
        metrics.calls.labels(metrics.service, method).inc()
        self._sent[frame.messageId] = (method, time.monotonic())

    def _reply(self, frame: Any) -> None:
        sent = self._sent.pop(getattr(frame, "messageId", ""), None)
        if sent is not None:
            metrics = self._ingress.metrics
            method, at = sent
            metrics.latency.labels(metrics.service, method).observe(time.monotonic() - at)

    def outboundLost(self) -> None:
        self._outbound = None
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._ingress.metrics.channels.dec()
        if self._outbound is not None:
            self._outbound.transport.loseConnection()


class Ingress:
    """
    The channel listener's application: forwards each channel to the
    service at C{forward} (an endpoint description, a UNIX socket).
    """

    def __init__(self, reactor: Any, forward: str, metrics: SidecarMetrics) -> None:
        self._reactor = reactor
        self._forward = forward
        self.metrics = metrics

    def factory(self) -> Factory:
        return Factory.forProtocol(lambda: _Inbound(self))

    def connectToService(self, inbound: _Inbound) -> Deferred[Any]:
        endpoint = clientFromString(self._reactor, self._forward)
        return endpoint.connect(Factory.forProtocol(lambda: _Outbound(inbound)))

    def probe(self) -> Deferred[bool]:
        """
        Whether the service accepts a connection on its socket now.
        """
        endpoint = clientFromString(self._reactor, self._forward)
        d = endpoint.connect(Factory.forProtocol(Protocol))

        def connected(protocol: Protocol) -> bool:
            protocol.transport.loseConnection()
            return True

        d.addCallbacks(connected, lambda failure: False)
        d.addCallback(lambda up: (self.metrics.serviceUp.set(1 if up else 0), up)[1])
        return d


class _Probe(Resource):
    isLeaf = True

    def __init__(self, check: Any) -> None:
        super().__init__()
        self._check = check

    def render_GET(self, request: Any) -> Any:
        from twisted.web.server import NOT_DONE_YET

        def answer(result: tuple[bool, str]) -> None:
            ok, detail = result
            request.setResponseCode(200 if ok else 503)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            request.write(f"{'ok' if ok else 'failing'}: {detail}\n".encode())
            request.finish()

        self._check().addCallback(answer)
        return NOT_DONE_YET


class Sidecar(MultiService):
    """
    The sidecar of one replica: the ingress on the service's address, and
    the HTTP endpoints for health and metrics.

    @param healthFile: The service's health file (C{--health-file}): alive
        only while it was written in the last C{healthMaxAge} seconds.
    @param cannotListen: Called with the failure and what could not listen
        when a port cannot be had (the twistd command exits 1 there); by
        default the failure is logged and the reactor stopped.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        service: str,
        settings: ChannelSettings,
        listen: str,
        forward: str,
        http: str,
        healthFile: str | None = None,
        healthMaxAge: float = 15.0,
        cannotListen: Callable[[Failure, str], object] | None = None,
    ) -> None:
        super().__init__()
        self._reactor = reactor
        self.metrics = SidecarMetrics(service)
        self.ingress = Ingress(reactor, forward, self.metrics)
        self._settings = settings
        self._listen = listen
        self._http = http
        self._healthFile = healthFile
        self._healthMaxAge = healthMaxAge
        self._cannotListenHook = cannotListen
        self.ports: dict[str, Any] = {}
        self.channelFactory = _CountingChannelFactory(
            settings, self.ingress.factory(), self.metrics
        )

    def resource(self) -> Resource:
        root = Resource()
        root.putChild(b"healthz", _Probe(self.alive))
        root.putChild(b"readyz", _Probe(self.ready))
        root.putChild(b"metrics", MetricsResource(self.metrics.registry))
        return root

    def alive(self) -> Deferred[tuple[bool, str]]:
        if self._healthFile is None:
            return succeed((True, "sidecar running"))
        try:
            age = time.time() - os.stat(self._healthFile).st_mtime
        except OSError as e:
            return succeed((False, f"no health file {self._healthFile}: {e.strerror}"))
        if age > self._healthMaxAge:
            return succeed((False, f"the service's health file is {age:.0f} s old"))
        return succeed((True, f"the service wrote its health file {age:.0f} s ago"))

    def ready(self) -> Deferred[tuple[bool, str]]:
        return self.ingress.probe().addCallback(
            lambda up: (up, "the service accepts calls" if up else "the service is not listening")
        )

    def startService(self) -> None:
        super().startService()
        listening = []
        for name, description, factory in [
            ("channel", self._listen, self.channelFactory),
            ("http", self._http, Site(self.resource())),
        ]:
            # A description Twisted cannot read fails here too, not in startService.
            d = maybeDeferred(
                lambda description=description, factory=factory: serverFromString(
                    self._reactor, description
                ).listen(factory)
            )
            d.addCallbacks(self._listening(name), self._cannotListen(name, description))
            listening.append(d)
        #: Fires once both ports listen.
        self.listening = gatherResults(listening)

    def _listening(self, name: str) -> Any:
        def listening(port: Any) -> None:
            self.ports[name] = port
            self.log.info(
                "Sidecar {what} listening on {address}",
                what="ingress" if name == "channel" else "HTTP (health, metrics)",
                address=port.getHost(),
            )

        return listening

    def _cannotListen(self, name: str, description: str) -> Any:
        def failed(failure: Failure) -> None:
            if self._cannotListenHook is not None:
                self._cannotListenHook(failure, f"Sidecar {name} listening on {description}")
                return
            self.log.failure(
                "Sidecar cannot listen on {description}", failure, description=description
            )
            if self._reactor.running:
                self._reactor.stop()

        return failed

    def stopService(self) -> Deferred[None]:
        super().stopService()
        ports, self.ports = self.ports, {}
        return gatherResults([port.stopListening() for port in ports.values()]).addCallback(
            lambda _: None
        )


class _CountingChannelFactory(ChannelServerFactory):
    """
    The ingress's channel factory, counting how handshakes end.
    """

    def __init__(self, settings: ChannelSettings, application: Factory, metrics: SidecarMetrics):
        super().__init__(settings, application)
        self._metrics = metrics

    def handshakeEnded(self, channel: Any) -> None:
        accepted = channel is not None and channel.peerServiceId is not None
        self._metrics.handshakes.labels(
            self._metrics.service, "accepted" if accepted else "refused"
        ).inc()
