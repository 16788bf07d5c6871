# -*- test-case-name: tests.testing.test_harness -*-
"""
Running services in a test, deterministically: on the in-process bus, on a
clock that moves only when the test says, with their database work run in
the test's own thread when the test lets it.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Iterable, Mapping

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from ..catalogue import Catalogue, ServiceParts, installedServices
from ..context import EventContext
from ..database import SQLiteDatabase
from ..localbus import LocalBus
from ..messages import fromPayload, requestTarget
from ..service import callRequest

__all__ = [
    "EventRecorder",
    "HarnessReactor",
    "InlineThreadPool",
    "NeverFired",
    "ServiceHarness",
    "testKeyFiles",
]


class NeverFired(AssertionError):
    """
    What the test waited for never happened, however long it let time run.
    """


class InlineThreadPool:
    """
    A thread pool that runs the work given to it in the reactor's thread,
    in order, when L{runQueued} is called: database transactions and
    password hashes complete where and when a test decides.
    """

    def __init__(self) -> None:
        self.queued: list[tuple[Any, Callable[..., Any], tuple[Any, ...], dict[str, Any]]] = []

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def callInThread(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self.callInThreadWithCallback(None, f, *args, **kwargs)

    def callInThreadWithCallback(
        self, onResult: Any, f: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> None:
        self.queued.append((onResult, f, args, kwargs))

    def runQueued(self) -> bool:
        """
        Run what is queued, and what that queues: whether anything ran.
        """
        ran = False
        while self.queued:
            onResult, f, args, kwargs = self.queued.pop(0)
            ran = True
            try:
                result, ok = f(*args, **kwargs), True
            except BaseException:
                result, ok = Failure(), False
            if onResult is not None:
                onResult(ok, result)
        return ran


class HarnessReactor(MemoryReactorClock):
    """
    A reactor for tests: its time is the wall clock's when it is made, and
    moves only with L{advance}; work for threads waits in an
    L{InlineThreadPool} until L{runPending}.
    """

    def __init__(self) -> None:
        super().__init__()
        # Key files and records carry real times: start from now.
        self.advance(time.time())
        self.threadpool = InlineThreadPool()
        self._fromThreads: list[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]] = []

    def getThreadPool(self) -> InlineThreadPool:
        return self.threadpool

    def callInThread(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self.threadpool.callInThread(f, *args, **kwargs)

    def callFromThread(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self._fromThreads.append((f, args, kwargs))

    def runPending(self) -> bool:
        """
        Run the work queued for threads, what they hand back, and the timed
        calls now due: whether anything ran.
        """
        ran = False
        while True:
            step = self.threadpool.runQueued()
            while self._fromThreads:
                f, args, kwargs = self._fromThreads.pop(0)
                f(*args, **kwargs)
                step = True
            due = [c for c in self.getDelayedCalls() if c.getTime() <= self.seconds()]
            if due:
                self.advance(0)
                step = True
            if not step:
                return ran
            ran = True


class EventRecorder:
    """
    Every event published on a bus that matches a pattern, in a consumer
    group of its own.
    """

    def __init__(self) -> None:
        self.events: list[tuple[str, Any, EventContext]] = []

    def subscribe(self, bus: Any, pattern: str = "#") -> Deferred[Any]:
        return bus.subscribe(pattern, self._record, f"recorder-{id(self)}")

    def _record(self, payload: Any, context: EventContext) -> None:
        self.events.append((context.event, payload, context))

    def named(self, name: str) -> list[Any]:
        """
        The payloads of the events named C{name}, in the order they came.
        """
        return [payload for event, payload, _ in self.events if event == name]


def testKeyFiles(directory: str, purposes: Iterable[str], period: float = 3600.0) -> dict[str, str]:
    """
    Fresh key files in C{directory}, one for each purpose (C{bus}, or a
    service's name), as an operator makes them with C{txplatform-keys
    init}: their paths by purpose.  Files already there are kept.
    """
    from ..crypto.keyfile import newKeyFile, writeKeyFile

    paths = {}
    for purpose in purposes:
        paths[purpose] = os.path.join(directory, f"{purpose}.json")
        if not os.path.exists(paths[purpose]):
            writeKeyFile(paths[purpose], newKeyFile(purpose, period))
    return paths


class ServiceHarness:
    """
    Services on one in-process bus, for a test: time moves and database
    work runs only as the test lets them (L{run}, L{flush}, L{advance}),
    so a test of a service is a L{twisted.trial.unittest.SynchronousTestCase}
    that waits for nothing.

    @ivar reactor: The L{HarnessReactor}: the services' clock and reactor.
    @ivar bus: The L{LocalBus} the services are on.
    @ivar events: An L{EventRecorder} of every event published.

    @param directory: Where the services' SQLite files (and key files)
        go: a test's C{self.mktemp()}.
    @param encrypted: Seal the bus's payloads and the services' stored
        fields as production does, with fresh key files.
    @param catalogue: Where L{startService} finds services by name; by
        default the installed ones.
    """

    def __init__(
        self, directory: str, encrypted: bool = False, catalogue: Catalogue | None = None
    ) -> None:
        self.directory = os.path.abspath(directory)
        os.makedirs(self.directory, exist_ok=True)
        self.reactor = HarnessReactor()
        self.encrypted = encrypted
        self._catalogue = catalogue
        self._keys: dict[str, Any] = {}
        self._services: list[Any] = []
        self._databases: list[Any] = []
        self.bus = LocalBus(self.reactor, codec=self._codec("bus", "payloadCodec"))
        self.bus.startService()
        self.events = EventRecorder()
        self.run(self.events.subscribe(self.bus))

    @property
    def catalogue(self) -> Catalogue:
        return self._catalogue if self._catalogue is not None else installedServices()

    def _codec(self, purpose: str, kind: str) -> Any:
        if not self.encrypted:
            return None
        if purpose not in self._keys:
            from ..crypto.keys import Keys

            [path] = testKeyFiles(os.path.join(self.directory, "keys"), [purpose]).values()
            self._keys[purpose] = Keys(path, self.reactor, purpose)
        return getattr(self._keys[purpose], kind)()

    # Time and work

    def flush(self) -> None:
        """
        Run everything that can run now: deliveries on the bus, database
        work, timed calls that are due.
        """
        self.reactor.runPending()

    def advance(self, seconds: float) -> None:
        """
        Let C{seconds} pass, running what falls due on the way.
        """
        self.flush()
        self.reactor.advance(seconds)
        self.flush()

    def run(self, d: Any, within: float = 60.0) -> Any:
        """
        The result of C{d} (a Deferred, or a value), letting the bus, the
        databases and up to C{within} seconds of time run until it fires.

        @raise NeverFired: It did not fire in that time.
        @raise Exception: What it failed with.
        """
        results: list[Any] = []
        maybeDeferred(lambda: d).addBoth(results.append)
        waited = 0.0
        while True:
            self.flush()
            if results:
                break
            if waited >= within:
                raise NeverFired(f"{d!r} did not fire within {within:g} s")
            # Let the next timed call (a retry, a timeout) happen.
            due = [c.getTime() for c in self.reactor.getDelayedCalls()]
            step = min(due) - self.reactor.seconds() if due else within - waited
            step = min(max(step, 0.001), within - waited)
            self.reactor.advance(step)
            waited += step
        [result] = results
        if isinstance(result, Failure):
            result.raiseException()
        return result

    # Services

    def database(self, name: str) -> SQLiteDatabase:
        """
        A new SQLite database for C{name}; its transactions run when asked
        for, as the reactor runs them.
        """
        path = os.path.join(self.directory, f"{name}.sqlite")
        database = SQLiteDatabase(path)
        database.start()
        self._databases.append(database)
        return database

    def start(self, service: Any) -> Any:
        """
        Start C{service} as a process does (serving, subscribed, then
        publishing), and return it.
        """
        service.startService()
        self._services.append(service)
        self.run(service.whenStarted())
        service.startPublishing()
        self.flush()
        return service

    def startService(self, name: str, **options: Any) -> Any:
        """
        Make and start the catalogue's service C{name} as its command
        would: from its declaration, with its options' defaults but for
        those given (by their option names, C{-} as C{_}), its own
        database, and its sealed fields when encrypted.
        """
        declaration = self.catalogue.get(name)
        given = {key.replace("_", "-"): value for key, value in options.items()}
        values = {}
        for row in declaration.options:
            longName, default = row[0], row[2]
            coerce = row[4] if len(row) > 4 and row[4] is not None else (lambda v: v)
            values[longName] = given.pop(longName, coerce(default) if default is not None else None)
        for row in declaration.flags:
            values[row[0]] = given.pop(row[0], False)
        if given:
            raise TypeError(f"the {name} service has no options {sorted(given)}")
        database = fields = None
        if declaration.stores():
            database = self.database(name)
            fields = self._codec(name, "fieldCodec")
        parts = ServiceParts(
            self.bus,
            self.reactor,
            values,
            database,
            fields,
            threadPool=lambda name, size: self.reactor.threadpool,
        )
        return self.start(declaration.make(parts))

    def fake(self, handlers: Mapping[type, Callable[[Any], Any]]) -> None:
        """
        Stand in for other services: each request class's calls are
        answered by its function, given the request (a checked message),
        returning the reply (or a Deferred of it, or raising a
        L{txplatform.errors.ServiceError}).
        """
        byService: dict[Any, dict[str, Callable[..., Any]]] = {}
        for requestType, handler in handlers.items():
            spec = requestTarget(requestType)

            def answer(payload: Any, context: Any, t: type = requestType, h: Any = handler) -> Any:
                return maybeDeferred(h, fromPayload(t, payload))

            byService.setdefault(spec.service, {})[spec.method] = answer
        for service, methods in byService.items():
            self.run(self.bus.serve(service, methods))

    def call(self, request: Any, **kwargs: Any) -> Any:
        """
        Send a request message as a caller outside the services would, and
        return the reply.

        @raise txplatform.errors.ServiceError: The service's error.
        """
        return self.run(callRequest(self.bus, request, **kwargs))

    def publish(self, event: str, payload: Any) -> None:
        """
        Publish an event as another service would, and let its handlers run.
        """
        self.run(self.bus.publish(event, payload))
        self.flush()

    def stop(self) -> None:
        """
        Stop the services, the bus and the databases.
        """
        for service in reversed(self._services):
            self.run(service.stopService())
        self._services.clear()
        self.run(self.bus.stopService())
        for database in self._databases:
            self.run(database.close())
            # adbapi closes its connections in a thread.
            self.flush()
