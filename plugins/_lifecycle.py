# -*- test-case-name: tests.plugins.test_lifecycle -*-
"""
Process lifecycle: listen only once the services are ready, and exit
non-zero when a service cannot start, so a supervisor sees the failure.
"""

from __future__ import annotations

import gc
import os
from typing import Any, Callable

from twisted.application.service import MultiService, Service
from twisted.internet.defer import (
    Deferred,
    FirstError,
    gatherResults,
    inlineCallbacks,
    maybeDeferred,
)
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.python.failure import Failure

__all__ = [
    "StopInOrder",
    "HealthFile",
    "ListeningService",
    "ReadinessGate",
    "exitOnFailure",
    "freezeStartupObjects",
]

log = Logger()


def exitOnFailure(reactor: Any, failure: Failure, what: str) -> None:
    """
    Log why C{what} failed, stop the reactor and make the process exit 1
    (twistd itself would exit 0).
    """
    log.critical("{what} failed, stopping: {why}", what=what, why=failure.getErrorMessage())
    reactor.addSystemEventTrigger("after", "shutdown", os._exit, 1)
    # Services start before the reactor runs: stop it once it does.
    reactor.callWhenRunning(reactor.stop)


def freezeStartupObjects() -> None:
    """
    Move everything alive once the process is up (modules, classes, the
    services) out of the garbage collector's sight: full collections then
    only scan what requests create, instead of pausing every request for
    tens of milliseconds.  Measured in docs/benchmarks.md: p99 at 16
    clients from ~18 ms to ~5 ms.
    """
    gc.collect()
    gc.freeze()


class StopInOrder(MultiService):
    """
    A MultiService that stops its children one at a time, last added first,
    each once the one after it has finished stopping.  Twisted's stops them
    all at once, and a process's services must drain the work they hold
    (answering through the bus) before the bus they answer through closes.
    """

    @inlineCallbacks
    def stopService(self) -> Any:
        Service.stopService(self)
        for service in reversed(list(self)):
            try:
                yield maybeDeferred(service.stopService)
            except Exception:
                log.failure("Stopping {service} failed", service=service)


class ListeningService(Service):
    """
    Listen on an endpoint string, and log the address actually bound (so
    C{tcp:0} is usable: the log says which port).
    """

    log = Logger()

    def __init__(self, reactor: Any, description: str, factory: Any, label: str) -> None:
        self._reactor = reactor
        self.description = description
        self._factory = factory
        self._label = label
        self._port: Any = None
        self._listening: Deferred[Any] | None = None
        self.address: Any = None

    def startService(self) -> None:
        super().startService()
        # A description Twisted cannot read fails as a port that cannot be
        # had does: the process stops, exit status 1, the reason logged.
        self._listening = maybeDeferred(
            lambda: serverFromString(self._reactor, self.description).listen(self._factory)
        )
        self._listening.addCallbacks(self._listened, self._failed)

    def _listened(self, port: Any) -> None:
        self._port = port
        self.address = port.getHost()
        self.log.info(
            "{label} listening on {address}",
            label=self._label,
            address=self.address,
            host=getattr(self.address, "host", None),
            port=getattr(self.address, "port", None),
        )

    def _failed(self, failure: Failure) -> None:
        exitOnFailure(self._reactor, failure, f"{self._label} listening on {self.description}")

    def stopService(self) -> Any:
        super().stopService()
        if self._port is not None:
            port, self._port = self._port, None
            return port.stopListening()
        if self._listening is not None and not self._listening.called:
            self._listening.cancel()
        return None


class Listeners(MultiService):
    """
    Several L{ListeningService}s started and stopped together (a gateway's
    HTTP and HTTPS).
    """

    @property
    def address(self) -> Any:
        """
        The first one's address once all listen; C{None} before.
        """
        addresses = [service.address for service in self if hasattr(service, "address")]
        if not addresses or any(a is None for a in addresses):
            return None
        return addresses[0]


class ReadinessGate(Service):
    """
    Once every service in C{first} reports it started (served and
    subscribed), let them publish (see L{BusService.startPublishing}), then
    start C{then}; exit the process if one cannot start.

    @param whenReady: Called once everything in C{first} started, before
        C{then} starts.
    """

    def __init__(
        self,
        reactor: Any,
        first: list[Any],
        then: Service,
        whenReady: Callable[[], object] = freezeStartupObjects,
    ) -> None:
        self._reactor = reactor
        self._first = first
        self._then = then
        self._whenReady = whenReady

    def startService(self) -> None:
        super().startService()
        ready = gatherResults([s.whenStarted() for s in self._first], consumeErrors=True)
        ready.addCallbacks(self._ready, self._failed)

    def _ready(self, _: Any) -> None:
        if self.running:
            for service in self._first:
                startPublishing = getattr(service, "startPublishing", None)
                if startPublishing is not None:
                    startPublishing()
            self._whenReady()
            self._then.startService()

    def _failed(self, failure: Failure) -> None:
        what = "starting the services"
        if failure.check(FirstError):
            # Which one: a service may leave the reporting to us (see
            # BusService._startFinished).
            name = getattr(self._first[failure.value.index], "name", None)
            what = f"starting {name}" if isinstance(name, str) else what
            failure = failure.value.subFailure
        exitOnFailure(self._reactor, failure, what)

    def stopService(self) -> Any:
        super().stopService()
        if self._then.running:
            return self._then.stopService()
        return None


def readiness(bus: Any, services: list[Any]) -> tuple[bool, str]:
    """
    Whether a process is ready: C{bus} connected and every one of
    C{services} running (started, or listening); and in a few words why
    (not).
    """
    if not getattr(bus, "connected", True):
        return False, "the bus is not connected"
    for service in services:
        name = getattr(service, "name", None) or type(service).__name__
        started = getattr(service, "_started", None)
        if started is not None:
            if not started.called:
                return False, f"{name} is starting"
            if getattr(service, "_startResult", None) is not None:
                return False, f"{name} failed to start"
        elif getattr(service, "address", True) is None:
            return False, f"{name} is not listening"
    return True, f"the bus is connected and {len(services)} serving"


def addProbes(top: Any, options: Any, reactor: Any, bus: Any, services: list[Any]) -> None:
    """
    With C{--metrics ENDPOINT}: serve /healthz, /readyz and /metrics there.
    """
    if not options["metrics"]:
        return
    from twisted.application.strports import service as listening
    from twisted.web.server import Site

    from txplatform.metrics import BusCollector
    from txplatform.probes import probeResource

    site = Site(probeResource(lambda: readiness(bus, services)))
    site.noisy = False
    probes = MultiService()
    listening(options["metrics"], site, reactor=reactor).setServiceParent(probes)
    _WithCollector(BusCollector(bus, busTransport(bus))).setServiceParent(probes)
    probes.setServiceParent(top)


def busTransport(bus: Any) -> str:
    """
    A short name for the kind of C{bus}: amqp, direct or local.
    """
    module = type(bus).__module__
    for name in ("amqp", "direct"):
        if f".{name}." in module:
            return name
    return "local"


class _WithCollector(Service):
    """
    Registers a collector in prometheus-client's registry while running
    (one per process; a test making several processes' services in one
    would clash otherwise).
    """

    def __init__(self, collector: Any) -> None:
        self._collector = collector

    def startService(self) -> None:
        from prometheus_client import REGISTRY

        super().startService()
        REGISTRY.register(self._collector)

    def stopService(self) -> None:
        from prometheus_client import REGISTRY

        super().stopService()
        REGISTRY.unregister(self._collector)


class HealthFile(Service):
    """
    Write the time to C{path} every C{interval} seconds while the process
    is healthy: its bus connected and every service in C{services} running
    (started, or listening).  A container health check compares the time
    in the file with the clock; a process stuck or cut off stops writing.
    """

    def __init__(
        self, reactor: Any, path: str, bus: Any, services: list[Any], interval: float = 5.0
    ) -> None:
        from twisted.internet.task import LoopingCall

        self._reactor = reactor
        self.path = path
        self._bus = bus
        self._services = services
        self._loop = LoopingCall(self.beat)
        self._loop.clock = reactor
        self._interval = interval

    def healthy(self) -> bool:
        return readiness(self._bus, self._services)[0]

    def beat(self) -> None:
        if not self.healthy():
            return
        temporary = self.path + ".tmp"
        with open(temporary, "w") as f:
            f.write(f"{int(self._reactor.seconds())}\n")
        os.replace(temporary, self.path)

    def startService(self) -> None:
        super().startService()
        self._loop.start(self._interval, now=True)

    def stopService(self) -> None:
        super().stopService()
        if self._loop.running:
            self._loop.stop()


def startTracing(options: Any, reactor: Any, serviceName: str) -> Any:
    """
    With C{--otlp URL}: record this process's spans (as C{serviceName}) and
    export them in batches over OTLP/HTTP to C{URL}, the last of them
    before the reactor stops.

    @return: The tracer provider, or C{None} without C{--otlp}.
    """
    url = options.get("otlp")
    if not url:
        return None
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from txplatform import traces

    provider = TracerProvider(resource=Resource.create({"service.name": serviceName}))
    # The exporter posts from the processor's own thread, never the reactor's.
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=url)))
    trace.set_tracer_provider(provider)
    traces.enable(provider)
    # After the services stopped (their last spans ended): send what is left.
    reactor.addSystemEventTrigger("after", "shutdown", provider.shutdown)
    return provider
