# -*- test-case-name: tests.test_service -*-
"""
The service model.

A service is a class whose RPC methods and event handlers are declared with
L{rpc} and L{handles}.  The declarations only record metadata: the methods
stay plain and can be called directly in tests.  The class is a Twisted
L{IService}, so twistd runs it; when it starts it prepares its storage and
then serves its methods and subscribes its handlers on the bus it was given,
whichever that bus is.

    class Greeter(BusService):
        name = "greeter"
        serviceId = ServiceId.fromHex("0000aa")

        @rpc(Hello)
        def hello(self, request, context):
            return {"greeting": f"hello {request.name}"}

        @handles("account.created", AccountCreated)
        def welcome(self, event, context):
            ...
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar

import attrs
from attrs import frozen
from twisted.application.service import Service
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    fail,
    gatherResults,
    inlineCallbacks,
    maybeDeferred,
    succeed,
)
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from . import traces
from .context import CallContext, EventContext, Origin, runHandling
from .database import DatabaseUnavailable, Migration
from .errors import InvalidArgument, MalformedMessage, ServiceError
from .eventbatch import EventBatcher
from .fields import PlainFieldCodec, SealedTable, reindexRows
from .interfaces import IBus, IDatabase, IFieldCodec, ISubscription, ITransaction
from .keychecks import KeyChecks, KeyMismatch
from .messages import fromPayload, requestOf, requestTarget, toPayload
from .metrics import CALL_SECONDS, CALLS, EVENT_SECONDS, EVENTS, Labelled
from .outbox import Outbox
from .replylog import ReplyLog, requestDigest
from .serviceid import ServiceId
from .topics import checkPattern

__all__ = ["rpc", "handles", "BusService", "DatabaseService"]

#: Failures to start that need no traceback: their message is the reason.
_EXPLAINED = (DatabaseUnavailable, KeyMismatch)

_RPC = "__txplatform_rpc__"
_HANDLER = "__txplatform_handler__"
# What a service says when a method declared idempotent=False succeeded
# without recording its reply (BusService._checkRecorded).
_UNRECORDED = (
    "{service} {method} is declared idempotent=False but recorded no reply"
    " (self.replies.recorder): a call delivered or sent again will run again"
)


_CALLS = Labelled(CALLS)
_CALL_SECONDS = Labelled(CALL_SECONDS)
_EVENTS = Labelled(EVENTS)
_EVENT_SECONDS = Labelled(EVENT_SECONDS)


@frozen
class _RpcSpec:
    name: str
    requestType: type
    function: Callable[..., Any]
    idempotent: bool = True


@frozen
class _HandlerSpec:
    pattern: str
    eventType: type
    group: str | None
    function: Callable[..., Any]
    private: bool = False
    batch: int | None = None


def rpc(
    requestType: type, *, name: str | None = None, idempotent: bool = True
) -> Callable[[Callable], Callable]:
    """
    Declare an RPC method taking a C{requestType} message (parsed and
    checked before the method runs) and a L{CallContext}.  It returns a
    JSON-compatible value or a message, or a Deferred of one.

    @param name: The method's name on the bus: by default the one
        C{requestType} declares (L{txplatform.messages.request}), or the
        function's.
    @param idempotent: C{False} for a method whose effect must not happen
        twice: it records its reply with L{DatabaseService.replies} in the
        transaction of its change, and a redelivered call gets the recorded
        reply instead of running again.
    """

    declared = requestOf(requestType)
    if declared is not None and name is not None and name != declared.method:
        raise ValueError(
            f"{requestType.__name__} is the request of {declared.method!r}, not {name!r}"
        )

    def decorator(function: Callable) -> Callable:
        method = name or (declared.method if declared is not None else function.__name__)
        spec = _RpcSpec(method, requestType, function, idempotent)
        setattr(function, _RPC, spec)
        return function

    return decorator


def handles(
    pattern: str,
    eventType: type,
    *,
    group: str | None = None,
    private: bool = False,
    batch: int | None = None,
) -> Callable[[Callable], Callable]:
    """
    Declare a handler of events matching C{pattern}, each parsed as an
    C{eventType} message, called with it and an L{EventContext}.

    @param group: The consumer group; by default the service's name, so the
        replicas of a service share its events.
    @param private: Every replica gets every event, through a subscription
        of its own that lasts as long as the replica (for state each replica
        keeps, such as a cache).
    @param batch: Handle the events that arrive together in one call, at
        most this many (and no more than the service's C{eventPrefetch}):
        the handler is called with a list of C{(event, context)} pairs
        instead (L{txplatform.eventbatch}).  One batch runs at a time: the
        events that arrive while it does go together in the next, as soon
        as it ends.  Each event is acknowledged once its batch is handled;
        a batch that fails is handled again one event at a time, so that
        one bad event fails alone.  A batch of several runs outside any one
        event's trace and handling context: what it causes on behalf of
        each event, it passes that event's context for
        (C{context.origin(...)} to L{Outbox.stage}).  It must not wait for
        events it handles itself.
    """
    checkPattern(pattern)
    if private and group is not None:
        raise ValueError("a private handler has no group")
    if batch is not None and batch < 1:
        raise ValueError(f"a batch holds at least one event, not {batch}")

    def decorator(function: Callable) -> Callable:
        spec = _HandlerSpec(pattern, eventType, group, function, private, batch)
        setattr(function, _HANDLER, spec)
        return function

    return decorator


class BusService(Service):
    """
    A service on the bus.  Subclasses set C{name} and C{serviceId}, declare
    methods with L{rpc} and L{handles}, and may override L{prepare} and
    L{cleanup}.
    """

    log = Logger()
    name: str
    serviceId: ClassVar[ServiceId]
    #: Calls (and events) one replica works on at once.
    callPrefetch: ClassVar[int | None] = None
    eventPrefetch: ClassVar[int | None] = None
    #: Seconds a stopping replica waits for its work in hand.
    drainTimeout: float = 10.0
    #: Log every call served (with its trace id); when false (the default),
    #: only those that fail.  The gateway logs every request with the same
    #: id, and a log line per call costs a service a quarter of its
    #: throughput (bench/amqp.py).
    logCalls = False
    _stoppedEarly = False

    def __init__(self, bus: IBus, clock: IReactorTime) -> None:
        self.bus = bus
        self.clock = clock
        self._subscriptions: list[ISubscription] = []
        self._started: Deferred[None] | None = None
        self._startResult: Any = None
        self._startWaiters: list[Deferred[None]] = []
        # The methods said to record no reply (L{_checkRecorded}).
        self._unrecorded: set[str] = set()

    @classmethod
    def rpcMethods(cls) -> dict[str, _RpcSpec]:
        specs = (getattr(v, _RPC, None) for k in dir(cls) for v in [getattr(cls, k, None)])
        return {s.name: s for s in specs if s is not None}

    @classmethod
    def eventHandlers(cls) -> list[_HandlerSpec]:
        specs = (getattr(v, _HANDLER, None) for k in dir(cls) for v in [getattr(cls, k, None)])
        return [s for s in specs if s is not None]

    def prepare(self) -> Deferred[None] | None:
        """
        Get ready to serve (open storage, migrate).  Runs before the first
        message is taken.
        """
        return None

    def cleanup(self) -> Deferred[None] | None:
        """
        Release what L{prepare} took, after the last message was handled.
        """
        return None

    def eventsMissed(self) -> None:
        """
        Private subscriptions may have missed events (the bus reconnected):
        forget what was kept from them.
        """

    def startPublishing(self) -> None:
        """
        Start publishing what earlier runs left unpublished.  A process calls
        it once every service it runs has subscribed: on the in-process bus,
        an event published before its consumers' groups exist reaches
        nobody.
        """

    def startService(self) -> None:
        super().startService()
        self._started = self._start()
        self._started.addBoth(self._startFinished)

    @inlineCallbacks
    def _start(self) -> Any:
        yield self.prepare()
        handlers = {name: self._callHandler(spec) for name, spec in self.rpcMethods().items()}
        if handlers:
            self._subscriptions.append(
                (yield self.bus.serve(self.serviceId, handlers, prefetch=self.callPrefetch))
            )
        for spec in self.eventHandlers():
            self._subscriptions.append(
                (
                    yield self.bus.subscribe(
                        spec.pattern,
                        self._eventHandler(spec),
                        None if spec.private else spec.group or self.name,
                        prefetch=self.eventPrefetch,
                        onGap=self.eventsMissed if spec.private else None,
                    )
                )
            )
        self.log.info(
            "{service} ({serviceId}) serving {methods} method(s), {handlers} event handler(s)",
            service=self.name,
            serviceId=self.serviceId.hex,
            methods=len(handlers),
            handlers=len(self.eventHandlers()),
        )

    def _startFinished(self, result: Any) -> None:
        if isinstance(result, Failure) and not (
            # Stopped while starting is no failure worth a traceback; nor
            # is one whose message says it all (no database, the wrong
            # keys): whoever waits on whenStarted reports it in one line
            # (a process's ReadinessGate, naming the service).
            (self._stoppedEarly and result.check(CancelledError)) or result.check(*_EXPLAINED)
        ):
            self.log.failure("{service} failed to start", result, service=self.name)
        self._startResult = result
        waiters, self._startWaiters = self._startWaiters, []
        for waiter in waiters:
            self._fire(waiter)

    def _fire(self, waiter: Deferred[None]) -> None:
        if isinstance(self._startResult, Failure):
            waiter.errback(self._startResult)
        else:
            waiter.callback(None)

    def whenStarted(self) -> Deferred[None]:
        """
        Fires once the service serves, or fails with why it could not start.
        """
        d: Deferred[None] = Deferred()
        if self._started is not None and self._started.called:
            self._fire(d)
        else:
            self._startWaiters.append(d)
        return d

    def stopService(self) -> Deferred[None]:
        """
        Stop taking work, let the work in hand finish (for at most
        C{drainTimeout} seconds: then it is handed back to the bus, which
        gives it to another replica), then clean up.
        """
        super().stopService()
        if self._started is None:
            return succeed(None)
        if not self._started.called:
            # Still waiting for the bus or the database: give up starting.
            self._stoppedEarly = True
            self._started.cancel()
        d = self.whenStarted()
        d.addErrback(lambda _: None)
        d.addCallback(lambda _: self._drain())
        d.addCallback(lambda _: self.cleanup())
        return d

    def _drain(self) -> Deferred[None]:
        subscriptions, self._subscriptions = self._subscriptions, []
        drained = gatherResults([s.stop() for s in subscriptions], consumeErrors=True)
        tooSlow = object()
        drained.addTimeout(self.drainTimeout, self.clock, onTimeoutCancel=lambda *_: tooSlow)

        def report(result: object) -> None:
            if result is tooSlow:
                self.log.warn(
                    "{service} stopped before its work in hand finished ({seconds}s);"
                    " the bus hands it to another replica",
                    service=self.name,
                    seconds=self.drainTimeout,
                )

        return drained.addCallback(report)

    def _callHandler(self, spec: _RpcSpec) -> Callable[[Any, CallContext], Any]:
        spanName = f"{self.name}/{spec.name}"

        def handle(payload: Any, context: CallContext) -> Any:
            started = self.clock.seconds()
            span = None
            if traces.enabled():
                span = traces.startSpan(
                    spanName,
                    traces.SpanKind.SERVER,
                    context.traceParent,
                    {
                        "rpc.system": "txplatform",
                        "rpc.service": self.name,
                        "rpc.method": spec.name,
                        "txplatform.message_id": context.messageId,
                        "txplatform.correlation_id": context.correlationId,
                    },
                    traceState=context.traceState,
                )
                # Calls made while handling this one are its children.
                context = attrs.evolve(
                    context,
                    traceParent=traces.traceParentOf(span),
                    traceState=traces.traceStateOf(span),
                )
            # Balanced by _checkRecorded, whatever becomes of the call.
            self._replyExpected(context)
            d = maybeDeferred(parse, payload, context, span)
            d.addBoth(self._checkRecorded, spec, context)
            d.addBoth(self._logCall, spec.name, context, started)
            if span is not None:
                d.addBoth(traces.endSpan, span)
            return d

        def parse(payload: Any, context: CallContext, span: Any) -> Any:
            request = fromPayload(spec.requestType, payload)
            if context.idempotencyKey is not None or (context.redelivered and not spec.idempotent):
                context = attrs.evolve(context, requestDigest=requestDigest(payload))
                return self.replay(context).addCallback(once, request, context, span)
            if not spec.idempotent and context.messageId:
                # Its copy (sent again by a caller that lost its connection,
                # or redelivered) may be running too, and may commit first:
                # this run then fails on the reply on record, which answers.
                return maybeDeferred(run, request, context, span).addErrback(lost, context)
            return run(request, context, span)

        def lost(failure: Failure, context: CallContext) -> Any:
            """
            The same call, run at the same time (a copy of it, delivered or
            sent again while this run was under way), may have won: its
            reply stands, and this run was rolled back (or failed on what
            the other made).  If that cannot be looked up, this run's own
            failure is the answer.
            """
            return self.replay(context).addCallbacks(
                lambda again: again[1] if again[0] else failure, lambda _: failure
            )

        def run(request: Any, context: CallContext, span: Any) -> Any:
            # The span is current while the handler's synchronous part runs
            # (and in its inlineCallbacks generator): the database
            # transactions it starts are its children.
            result = runHandling(context, traces.runIn, span, spec.function, self, request, context)
            if isinstance(result, Deferred):
                return result.addCallback(_asPayload)
            return _asPayload(result)

        def once(found: tuple[bool, Any], request: Any, context: CallContext, span: Any) -> Any:
            """
            A call that may have run before (redelivered, or sent with an
            idempotency key): the reply on record if it did, else run it and
            record its reply.
            """
            if found[0]:
                return found[1]

            def ran(reply: Any) -> Any:
                if context.idempotencyKey is None:
                    return reply  # the handler recorded what needs recording

                def unrecorded(why: Failure) -> None:
                    # The work is done: answer it; only a retry would run again.
                    self.log.failure(
                        "Could not record the reply to {method} for its idempotency key",
                        why,
                        method=context.method,
                    )

                d = self.remember(context, reply).addErrback(unrecorded)
                return d.addCallback(lambda _: reply)

            return maybeDeferred(run, request, context, span).addCallbacks(
                ran, lost, errbackArgs=(context,)
            )

        return handle

    def _logCall(self, result: Any, method: str, context: CallContext, started: float) -> Any:
        """
        One structured event per call served, with the trace id the gateway
        gave the request (its X-Request-Id): a request can be followed
        through every service it touched.
        """
        duration = self.clock.seconds() - started
        if isinstance(result, Failure):
            error = result.value
            outcome = error.code if isinstance(error, ServiceError) else "internal"
        else:
            outcome = "ok"
        _CALLS(self.name, method, outcome).inc()
        _CALL_SECONDS(self.name, method).observe(duration)
        if outcome == "ok" and not self.logCalls:
            return result
        self.log.info(
            "{service} {method} from {caller} [trace {trace}]: {outcome} in {duration:.1f} ms",
            service=self.name,
            method=method,
            caller=context.caller.hex if context.caller is not None else "-",
            trace=context.correlationId,
            outcome=outcome,
            duration=duration * 1000,
        )
        return result

    def _checkRecorded(self, result: Any, spec: _RpcSpec, context: CallContext) -> Any:
        """
        Say so, once per method, when a method declared C{idempotent=False}
        succeeded without recording its reply: a call delivered or sent
        again would then run again, which the declaration says must not
        happen (a developer's mistake the tests of a service may not catch).
        """
        accounted = self._replyAccounted(context)
        if (
            not spec.idempotent
            and not accounted
            and context.messageId
            and not isinstance(result, Failure)
            and spec.name not in self._unrecorded
        ):
            self._unrecorded.add(spec.name)
            self.log.warn(_UNRECORDED, service=self.name, method=spec.name)
        return result

    def _replyExpected(self, context: CallContext) -> None:
        """
        The call of C{context} is about to be handled, and
        L{_replyAccounted} will be asked about it.  Without a database
        nothing is recorded.
        """

    def _replyAccounted(self, context: CallContext) -> bool:
        """
        Whether the call of C{context}, just handled, recorded its reply or
        was answered from the record.  Without a database nothing can be,
        and nothing is asked.
        """
        return True

    def replay(self, context: CallContext) -> Deferred[tuple[bool, Any]]:
        """
        The recorded reply to a call that may have run before (redelivered,
        or sent with an idempotency key), if there is one: C{(True, reply)},
        else C{(False, None)}.  Nothing is recorded without a database.
        """
        return succeed((False, None))

    def remember(self, context: CallContext, reply: Any) -> Deferred[None]:
        """
        Record C{reply} to a call with an idempotency key, if its handler
        did not record it in its own transaction.
        """
        return succeed(None)

    def _eventHandler(self, spec: _HandlerSpec) -> Callable[[Any, EventContext], Any]:
        batcher: EventBatcher[tuple[Any, EventContext, Any]] | None = None
        if spec.batch is not None:

            def runBatch(items: list[tuple[Any, EventContext, Any]]) -> Any:
                pairs = [(event, context) for event, context, _ in items]
                if len(items) > 1:
                    return spec.function(self, pairs)
                [(_, context, span)] = items
                if span is None:
                    return runHandling(context, spec.function, self, pairs)
                return runHandling(context, traces.runIn, span, spec.function, self, pairs)

            batcher = EventBatcher(
                self.clock, runBatch, spec.batch, describe=f"{self.name}.{spec.function.__name__}"
            )

        def run(event: Any, context: EventContext, span: Any) -> Deferred[Any]:
            if batcher is not None:
                return batcher.add((event, context, span))
            if span is None:
                return maybeDeferred(runHandling, context, spec.function, self, event, context)
            return maybeDeferred(
                runHandling, context, traces.runIn, span, spec.function, self, event, context
            )

        def handle(payload: Any, context: EventContext) -> Any:
            try:
                event = fromPayload(spec.eventType, payload)
            except InvalidArgument as e:
                _EVENTS(self.name, spec.pattern, "malformed").inc()
                return fail(MalformedMessage(f"{context.event} event: {e.message}", e.details))
            started = self.clock.seconds()
            if not traces.enabled():
                return run(event, context, None).addBoth(handled, started)
            span = traces.startSpan(
                f"{self.name} process {context.event}",
                traces.SpanKind.CONSUMER,
                context.traceParent,
                {
                    "messaging.system": "txplatform",
                    "messaging.operation.type": "process",
                    "messaging.destination.name": context.event,
                    "messaging.consumer.group.name": (
                        "(private)" if spec.private else spec.group or self.name
                    ),
                    "messaging.message.id": context.messageId,
                    "txplatform.service": self.name,
                    "txplatform.correlation_id": context.correlationId,
                    "txplatform.attempt": context.attempt,
                },
                traceState=context.traceState,
            )
            context = attrs.evolve(
                context,
                traceParent=traces.traceParentOf(span),
                traceState=traces.traceStateOf(span),
            )
            return run(event, context, span).addBoth(handled, started).addBoth(traces.endSpan, span)

        def handled(result: Any, started: float) -> Any:
            outcome = "failed" if isinstance(result, Failure) else "ok"
            _EVENTS(self.name, spec.pattern, outcome).inc()
            _EVENT_SECONDS(self.name, spec.pattern).observe(self.clock.seconds() - started)
            return result

        return handle

    def call(
        self,
        request: Any,
        context: CallContext | EventContext | None = None,
        timeout: float | None = None,
        priority: int | None = None,
        idempotent: bool = False,
    ) -> Deferred[Any]:
        """
        Send C{request}, a request message (L{txplatform.messages.request}),
        to the method it is for, on behalf of the message in C{context}
        (see L{callService}).
        """
        spec = requestTarget(request)
        return self.callService(
            spec.service, spec.method, request, context, timeout, priority, idempotent
        )

    def callService(
        self,
        service: ServiceId,
        method: str,
        payload: Any,
        context: CallContext | EventContext | None = None,
        timeout: float | None = None,
        priority: int | None = None,
        idempotent: bool = False,
    ) -> Deferred[Any]:
        """
        Call another service on behalf of the message in C{context}: same
        trace, and never past its deadline.
        """
        if attrs.has(type(payload)):
            payload = toPayload(payload)
        origin = context.origin(self.serviceId) if context is not None else Origin(self.serviceId)
        if priority is None and isinstance(context, CallContext):
            priority = context.priority
        return self.bus.call(
            service,
            method,
            payload,
            timeout=timeout,
            priority=priority,
            origin=origin,
            idempotent=idempotent,
        )


def callRequest(bus: IBus, request: Any, **kwargs: Any) -> Deferred[Any]:
    """
    Send C{request}, a request message (L{txplatform.messages.request}), on
    C{bus} to the method it is for; C{kwargs} go to L{IBus.call}.

    @raise TypeError: It is not a request message.
    """
    spec = requestTarget(request)
    return bus.call(spec.service, spec.method, toPayload(request), **kwargs)


def _asPayload(result: Any) -> Any:
    if result is not None and attrs.has(type(result)):
        return toPayload(result)
    return result


class DatabaseService(BusService):
    """
    A service that owns a database: it migrates it at start, publishes its
    events through a transactional L{Outbox}, and closes it at stop.

    @cvar migrations: The service's schema.
    """

    migrations: ClassVar[list[Migration]] = []
    #: Where the service's own tables keep sealed fields.
    sealed: ClassVar[list[SealedTable]] = []

    @classmethod
    def sealedTables(cls) -> list[SealedTable]:
        """
        Every table of the service holding sealed fields, its outbox and
        reply log included.
        """
        return [
            *cls.sealed,
            SealedTable(f"{cls.name}_outbox", "message_id", ["payload"]),
            SealedTable(f"{cls.name}_replies", "message_id", ["reply"]),
        ]

    def __init__(
        self,
        bus: IBus,
        database: IDatabase,
        clock: IReactorTime,
        fields: IFieldCodec | None = None,
    ) -> None:
        super().__init__(bus, clock)
        self.database = database
        self.fields = fields if fields is not None else PlainFieldCodec()
        self.outbox = Outbox(database, bus, self.fields, self.name, self.serviceId, clock)
        self.replies = ReplyLog(database, self.fields, self.name, clock)
        self.keyChecks = KeyChecks(database, self.name, clock)
        self._replySweeper = LoopingCall(self._sweepReplies)
        self._replySweeper.clock = clock

    @inlineCallbacks
    def prepare(self) -> Any:
        self.database.start()
        yield self.database.migrate(self.name, self.migrations, self._reindex)
        yield self.database.migrate(self.outbox.table, self.outbox.migrations())
        yield self.database.migrate(self.replies.table, self.replies.migrations())
        yield self.database.migrate(self.keyChecks.table, self.keyChecks.migrations())
        checkValues = getattr(self.fields, "checkValues", None)
        if checkValues is not None:
            # Refused before anything is read or written with wrong keys.
            yield self.keyChecks.verify(checkValues())
        self._replySweeper.start(600, now=False)

    def _reindex(self, transaction: ITransaction, tableName: str) -> int:
        """
        A migration's re-index step (L{Migration.reindex}), with this
        service's keys.
        """
        for table in self.sealedTables():
            if table.table == tableName and table.indexes:
                return reindexRows(transaction, self.fields, table)
        raise ValueError(f"{self.name} declares no blind indexes in {tableName!r} (sealed)")

    def _sweepReplies(self) -> Any:
        d = self.replies.sweep()
        return d.addErrback(lambda f: self.log.failure("Could not sweep old replies", f))

    def replay(self, context: CallContext) -> Deferred[tuple[bool, Any]]:
        return self.replies.lookup(context)

    def _replyExpected(self, context: CallContext) -> None:
        self.replies.handling(context)

    def _replyAccounted(self, context: CallContext) -> bool:
        return self.replies.accounted(context)

    def remember(self, context: CallContext, reply: Any) -> Deferred[None]:
        return self.replies.remember(context, reply)

    def startPublishing(self) -> None:
        """
        Start the outbox relay: leftovers now, then on its timer.
        """
        self.outbox.start()

    @inlineCallbacks
    def cleanup(self) -> Any:
        if self._replySweeper.running:
            self._replySweeper.stop()
        yield self.outbox.stop()
        yield self.database.close()
