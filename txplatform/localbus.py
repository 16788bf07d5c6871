# -*- test-case-name: tests.test_localbus -*-
"""
The in-process bus: the embedded default, and the bus of most tests.

It keeps the semantics the AMQP bus has (see L{IBus}): a priority queue per
service shared by its replicas, a queue per (group, pattern) for events,
deadlines, typed errors, acknowledgement after success, bounded retries and
dead letters.  Payloads pass through the codec both ways, so handlers never
share objects with their callers and the bus holds only encoded bytes.
Deliveries happen on a later reactor turn, never inside the caller's stack.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from typing import Any, Callable, Mapping

from attrs import define, evolve, field, frozen
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, fail, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from .busrules import (
    awaitAnswer,
    encodeEvent,
    failureReason,
    internalReply,
    millis,
    prepareCall,
    replyFor,
    resultOf,
    retryDelay,
)
from .codec import JSONCodec, callBinding, eventBinding, replyBinding, untraced
from .context import CallContext, EventContext, Origin, newMessageId
from .errors import (
    ServiceError,
    Unavailable,
    UnknownMethod,
)
from .interfaces import IBus, IPayloadCodec, ISubscription
from .metrics import DEAD_LETTERS
from .serviceid import ServiceId
from .topics import checkEventName, checkPattern, topicMatches

__all__ = ["LocalBus", "DeadLetter"]


@frozen
class DeadLetter:
    """
    An event a group gave up on, with the reason.
    """

    messageId: str
    event: str
    group: str
    pattern: str
    reason: str
    attempts: int
    at: float
    _delivery: _Delivery = field(repr=False)


@define(eq=False)
class _PendingCall:
    messageId: str
    service: ServiceId
    method: str
    data: bytes
    deadline: float
    priority: int
    caller: ServiceId | None
    correlationId: str
    deferred: Deferred = field(repr=False)
    idempotencyKey: str | None = None
    abandoned: bool = False
    # It may have run before: given back by a stopping replica, or sent
    # again by a caller whose channel broke (the direct transport).
    redelivered: bool = False
    # A call that came from elsewhere (the direct transport): its deadline
    # as bound in its payload, and its answer wanted encoded.
    deadlineMillis: int | None = None
    encodedReply: bool = False
    isTraced: bool = False
    # What its payload is bound to, when its caller is in this process and
    # has it already; otherwise the worker computes it from the above.
    binding: bytes | None = None


class _Settlement:
    """
    Whether every consumer group an event went to is done with it (handled
    it, or gave it up as a dead letter): what its publisher's Deferred
    waits for.  It fails when a group holding it has no consumer left, or
    the bus stops: the event is then only in this process's memory, and its
    publisher (an outbox) must keep it to publish again.
    """

    def __init__(self, bus: LocalBus, groups: set[str]) -> None:
        self._bus = bus
        self._groups = groups
        self.done: Deferred[None] = Deferred()
        bus._unsettled.add(self)

    def settle(self, group: str) -> None:
        self._groups.discard(group)
        if not self._groups and not self.done.called:
            self._bus._unsettled.discard(self)
            self.done.callback(None)

    def fail(self, why: str) -> None:
        if not self.done.called:
            self._bus._unsettled.discard(self)
            self.done.errback(Unavailable(why))


class _Settlements:
    """
    Several publishers of one event waiting on one delivery (an outbox
    published it again while it waited in a group).
    """

    def __init__(self, settlements: list[Any]) -> None:
        self._settlements = settlements

    def settle(self, group: str) -> None:
        for settlement in self._settlements:
            settlement.settle(group)

    def fail(self, why: str) -> None:
        for settlement in self._settlements:
            settlement.fail(why)


@frozen
class _Delivery:
    messageId: str
    event: str
    data: bytes
    source: ServiceId | None
    correlationId: str
    publishedAt: float
    attempt: int = 1
    isTraced: bool = False
    settlement: _Settlement | _Settlements | None = field(default=None, eq=False, repr=False)


@implementer(ISubscription)
class _Worker:
    """
    One consumer: a replica serving a service, or one member of a group.
    """

    def __init__(self, queue: _Queue, prefetch: int) -> None:
        self._queue = queue
        self.prefetch = prefetch
        self.inflight = 0
        self.stopping = False
        self._drained: list[Deferred[None]] = []

    def hasCapacity(self) -> bool:
        return not self.stopping and self.inflight < self.prefetch

    def started(self) -> None:
        self.inflight += 1

    def finished(self) -> None:
        self.inflight -= 1
        if self.stopping and not self.inflight:
            drained, self._drained = self._drained, []
            for d in drained:
                d.callback(None)
        self._queue.wake()

    #: Called once the worker stops taking work (private queues go then).
    onStop: Callable[[], object] | None = None

    def stop(self) -> Deferred[None]:
        if not self.stopping:
            self.stopping = True
            self._queue.removeWorker(self)
            if self.onStop is not None:
                self.onStop()
        if not self.inflight:
            return succeed(None)
        # Cancelled when the service gives up waiting (its drain deadline).
        d: Deferred[None] = Deferred(self._drained.remove)
        self._drained.append(d)
        return d


class _Queue:
    """
    Pending messages and the workers competing for them.
    """

    def __init__(self, bus: LocalBus) -> None:
        self._bus = bus
        self._workers: list[_Worker] = []
        self._next = 0

    def addWorker(self, worker: _Worker) -> None:
        self._workers.append(worker)
        self.wake()

    def removeWorker(self, worker: _Worker) -> None:
        self._workers.remove(worker)

    def hasWorkers(self) -> bool:
        return bool(self._workers)

    def wake(self) -> None:
        self._bus._schedule(self)

    def freeWorker(self) -> _Worker | None:
        """
        The next worker with spare capacity, round robin.
        """
        count = len(self._workers)
        for offset in range(count):
            worker = self._workers[(self._next + offset) % count]
            if worker.hasCapacity():
                self._next = (self._next + offset + 1) % count
                return worker
        return None

    def dispatch(self) -> None:
        raise NotImplementedError


class _CallQueue(_Queue):
    def __init__(self, bus: LocalBus, service: ServiceId) -> None:
        super().__init__(bus)
        self.service = service
        self._heap: list[tuple[int, int, _PendingCall]] = []
        self._order = itertools.count()

    def put(self, call: _PendingCall) -> None:
        heapq.heappush(self._heap, (-call.priority, next(self._order), call))
        self.wake()

    def __len__(self) -> int:
        return len(self._heap)

    def dispatch(self) -> None:
        now = self._bus._clock.seconds()
        while self._heap:
            worker = self.freeWorker()
            if worker is None:
                return
            call = heapq.heappop(self._heap)[2]
            if call.abandoned or call.deadline <= now:
                # The caller has given up: doing the work now would be waste
                # at best and a surprise at worst.
                self._bus.log.debug(
                    "Dropped call {method} to {service} past its deadline",
                    method=call.method,
                    service=self.service.hex,
                )
                continue
            assert isinstance(worker, _CallWorker)
            worker.run(call)


class _CallWorker(_Worker):
    def __init__(
        self, queue: _CallQueue, handlers: Mapping[str, Callable[..., Any]], prefetch: int
    ) -> None:
        super().__init__(queue, prefetch)
        self._handlers = dict(handlers)
        self._bus = queue._bus

    def run(self, call: _PendingCall) -> None:
        self.started()
        context = CallContext(
            messageId=call.messageId,
            service=call.service,
            method=call.method,
            caller=call.caller,
            correlationId=call.correlationId,
            deadline=call.deadline,
            priority=call.priority,
            redelivered=call.redelivered,
            idempotencyKey=call.idempotencyKey,
        )
        try:
            result = self._invoke(call, context)
        except BaseException:
            self._answer(Failure(), call)
            return
        if isinstance(result, Deferred):
            result.addBoth(self._answer, call)
        else:
            self._answer(result, call)

    def _invoke(self, call: _PendingCall, context: CallContext) -> Any:
        handler = self._handlers.get(call.method)
        if handler is None:
            raise UnknownMethod(
                f"service {call.service.hex} has no method {call.method!r}",
                {"method": call.method},
            )
        binding = call.binding
        if binding is None:
            deadlineMillis = call.deadlineMillis
            binding = callBinding(
                call.service,
                call.method,
                call.messageId,
                call.caller,
                call.correlationId,
                millis(call.deadline) if deadlineMillis is None else deadlineMillis,
                call.idempotencyKey,
                call.isTraced,
            )
        payload = self._bus._codec.decode(call.data, binding)
        # Unpacked only when traced: the untraced path allocates nothing more.
        if call.isTraced:
            payload, traceParent, traceState = untraced(payload)
            context = evolve(context, traceParent=traceParent, traceState=traceState)
        return handler(payload, context)

    def _answer(self, result: Any, call: _PendingCall) -> None:
        if self.stopping and isinstance(result, Failure) and result.check(CancelledError):
            # Work this stopping replica gave up on: not a failure to answer
            # but a call for another replica, as the broker would give it
            # back.  With none left here (the direct transport's process
            # stopping), the caller hears so and may try another.
            if self._queue.hasWorkers():
                # Its handler may have done its work (a transaction
                # committed) before it was cancelled.
                call.redelivered = True
                self._queue.put(call)
                self.finished()
                return
            result = Failure(
                Unavailable(
                    f"service {call.service.hex} stopped before doing {call.method}",
                    {"service": call.service.hex},
                )
            )
        self._bus._reply(call, replyFor(result, call.service, call.method))
        self.finished()


class _EventQueue(_Queue):
    def __init__(self, bus: LocalBus, group: str, pattern: str) -> None:
        super().__init__(bus)
        self.group = group
        self.pattern = pattern
        #: A replica's own subscription (group C{None} when subscribing).
        self.private = group.startswith("~")
        self._pending: deque[_Delivery] = deque()
        # The publishers waiting on each pending event, by message id.
        self._waiting: dict[str, list[Any]] = {}

    def put(self, delivery: _Delivery) -> None:
        waiting = self._waiting.get(delivery.messageId)
        if waiting is None:
            # Published again (an outbox's next pass) while it waits here,
            # it waits once, for both publishers.
            self._pending.append(delivery)
            waiting = self._waiting[delivery.messageId] = []
        if delivery.settlement is not None:
            waiting.append(delivery.settlement)
            if not self._workers:
                delivery.settlement.fail(f"group {self.group} has no consumer now")
        self.wake()

    def take(self) -> _Delivery:
        delivery = self._pending.popleft()
        waiting = self._waiting.pop(delivery.messageId, [])
        if len(waiting) > 1:
            return evolve(delivery, settlement=_Settlements(waiting))
        return delivery

    def removeWorker(self, worker: _Worker) -> None:
        super().removeWorker(worker)
        if not self._workers:
            for waiting in self._waiting.values():
                for settlement in waiting:
                    settlement.fail(f"group {self.group} has no consumer now")

    def __len__(self) -> int:
        return len(self._pending)

    def dispatch(self) -> None:
        while self._pending:
            worker = self.freeWorker()
            if worker is None:
                return
            assert isinstance(worker, _EventWorker)
            worker.run(self.take())


class _EventWorker(_Worker):
    def __init__(
        self, queue: _EventQueue, handler: Callable[[Any, EventContext], Any], prefetch: int
    ) -> None:
        super().__init__(queue, prefetch)
        self._eventQueue = queue
        self._handler = handler
        self._bus = queue._bus

    def run(self, delivery: _Delivery) -> None:
        self.started()
        d = maybeDeferred(self._invoke, delivery)
        d.addCallbacks(self._handled, self._failed, (delivery,), None, (delivery,))
        d.addBoth(lambda _: self.finished())

    def _handled(self, result: Any, delivery: _Delivery) -> None:
        if delivery.settlement is not None:
            delivery.settlement.settle(self._eventQueue.group)

    def _invoke(self, delivery: _Delivery) -> Any:
        payload = self._bus._codec.decode(
            delivery.data,
            eventBinding(
                delivery.event,
                delivery.messageId,
                delivery.source,
                delivery.correlationId,
                delivery.isTraced,
            ),
        )
        traceParent = traceState = None
        if delivery.isTraced:
            payload, traceParent, traceState = untraced(payload)
        context = EventContext(
            messageId=delivery.messageId,
            event=delivery.event,
            source=delivery.source,
            correlationId=delivery.correlationId,
            publishedAt=delivery.publishedAt,
            attempt=delivery.attempt,
            traceParent=traceParent,
            traceState=traceState,
        )
        return self._handler(payload, context)

    def _failed(self, failure: Failure, delivery: _Delivery) -> None:
        self._bus._retryOrDeadLetter(self._eventQueue, delivery, failure)


@implementer(IBus)
class LocalBus(Service):
    """
    An in-process L{IBus}.

    @param clock: Schedules deliveries, deadlines and retries.
    @param codec: Encodes payloads (JSON by default).
    @param defaultTimeout: Seconds a call waits when the caller gives none.
    @param retryDelays: Delays before each redelivery of a failed event; once
        they are used up the event is dead-lettered.
    @ivar maxDeadLetters: Dead letters kept at most; past it, the oldest
        are forgotten (logged).
    """

    log = Logger()
    name = "bus"
    maxDeadLetters = 10_000

    def __init__(
        self,
        clock: IReactorTime,
        codec: IPayloadCodec | None = None,
        defaultTimeout: float = 10.0,
        retryDelays: tuple[float, ...] = (0.5, 2.0, 10.0),
        callPrefetch: int = 64,
        eventPrefetch: int = 16,
    ) -> None:
        self._clock = clock
        self._codec = codec if codec is not None else JSONCodec()
        self.defaultTimeout = defaultTimeout
        self.retryDelays = retryDelays
        self._callPrefetch = callPrefetch
        self._eventPrefetch = eventPrefetch
        self._calls: dict[ServiceId, _CallQueue] = {}
        self._events: dict[tuple[str, str], _EventQueue] = {}
        self._deadLetters: dict[str, DeadLetter] = {}
        self._dirty: set[_Queue] = set()
        self._pump: IDelayedCall | None = None
        self._retries: set[IDelayedCall] = set()
        self._unsettled: set[_Settlement] = set()

    # Scheduling

    def _schedule(self, queue: _Queue) -> None:
        self._dirty.add(queue)
        if self._pump is None:
            self._pump = self._clock.callLater(0, self._dispatch)

    def _dispatch(self) -> None:
        self._pump = None
        while self._dirty:
            self._dirty.pop().dispatch()

    # Calls

    def call(
        self,
        service: ServiceId,
        method: str,
        payload: Any,
        timeout: float | None = None,
        priority: int | None = None,
        origin: Origin | None = None,
        idempotent: bool = False,
    ) -> Deferred[Any]:
        queue = self._calls.get(service)
        if queue is None:
            return fail(
                Unavailable(f"no service {service.hex} on this bus", {"service": service.hex})
            )
        origin = origin if origin is not None else Origin()
        now = self._clock.seconds()
        try:
            call = prepareCall(
                self._codec,
                now,
                self.defaultTimeout,
                service,
                method,
                payload,
                timeout,
                priority,
                origin,
                origin.caller,
            )
        except (TypeError, ValueError):
            return fail()

        def abandon(d: Deferred[Any]) -> None:
            pending.abandoned = True

        d = awaitAnswer(self._clock, service, method, call.deadline, abandon, call.span)
        pending = _PendingCall(
            messageId=call.messageId,
            service=service,
            method=method,
            data=call.data,
            deadline=call.deadline,
            priority=call.priority,
            caller=call.caller,
            correlationId=call.correlationId,
            idempotencyKey=call.idempotencyKey,
            deferred=d,
            isTraced=call.isTraced,
            binding=call.binding,
        )
        queue.put(pending)
        return d

    def _reply(self, call: _PendingCall, reply: dict[str, Any]) -> None:
        if call.deferred.called:
            return  # timed out or cancelled; nobody is listening
        binding = replyBinding(call.service, call.method, call.messageId)
        try:
            data = self._codec.encode(reply, binding)
        except (TypeError, ValueError):
            self.log.failure(
                "Unencodable result from {method} of {service}",
                method=call.method,
                service=call.service.hex,
            )
            data = self._codec.encode(internalReply(call.method), binding)
        if call.encodedReply:
            call.deferred.callback(data)
            return
        try:
            result = resultOf(self._codec.decode(data, binding))
        except ServiceError as e:
            call.deferred.errback(e)
            return
        call.deferred.callback(result)

    def accept(
        self,
        service: ServiceId,
        method: str,
        data: bytes,
        messageId: str,
        caller: ServiceId | None,
        correlationId: str,
        deadlineMillis: int,
        priority: int,
        idempotencyKey: str | None = None,
        isTraced: bool = False,
        redelivered: bool = False,
    ) -> Deferred[bytes]:
        """
        Queue a call that arrived encoded from another process (the direct
        transport), to be served as any other: in priority order, dropped
        past its deadline, its payload decoded and checked against its
        binding by the worker.

        @param redelivered: It may have run before (its caller sent it
            again after the channel it first went on broke).
        @return: A Deferred of the encoded reply, for the caller to decode;
            it fails with L{Unavailable} when nobody serves C{service} here,
            and with L{DeadlineExceeded} when the deadline passes first.
        """
        queue = self._calls.get(service)
        if queue is None:
            return fail(Unavailable(f"no service {service.hex} here", {"service": service.hex}))
        deadline = deadlineMillis / 1000
        d = awaitAnswer(
            self._clock, service, method, deadline, lambda d: setattr(pending, "abandoned", True)
        )
        pending = _PendingCall(
            messageId=messageId,
            service=service,
            method=method,
            data=data,
            deadline=deadline,
            priority=priority,
            caller=caller,
            correlationId=correlationId,
            deferred=d,
            idempotencyKey=idempotencyKey,
            deadlineMillis=deadlineMillis,
            encodedReply=True,
            isTraced=isTraced,
            redelivered=redelivered,
        )
        queue.put(pending)
        return d

    def serve(
        self,
        service: ServiceId,
        handlers: Mapping[str, Callable[..., Any]],
        prefetch: int | None = None,
    ) -> Deferred[ISubscription]:
        queue = self._calls.get(service)
        if queue is None:
            queue = self._calls[service] = _CallQueue(self, service)
        worker = _CallWorker(queue, handlers, prefetch or self._callPrefetch)
        queue.addWorker(worker)
        return succeed(worker)

    def whenStarted(self) -> Deferred[None]:
        """
        The in-process bus is ready as soon as it exists.
        """
        return succeed(None)

    #: Always: there is no connection to lose.
    connected = True

    def pendingCalls(self, service: ServiceId) -> int:
        """
        How many calls to C{service} wait for a free replica.
        """
        queue = self._calls.get(service)
        return len(queue) if queue is not None else 0

    # Events

    def publish(
        self,
        event: str,
        payload: Any,
        origin: Origin | None = None,
        messageId: str | None = None,
    ) -> Deferred[None]:
        try:
            checkEventName(event)
            messageId = messageId or newMessageId()
            origin = origin if origin is not None else Origin()
            data = encodeEvent(
                self._codec,
                event,
                messageId,
                origin.caller,
                origin.correlationId or messageId,
                payload,
                origin.traceParent,
                origin.traceState,
            )
        except (TypeError, ValueError):
            return fail()
        delivery = _Delivery(
            messageId=messageId,
            event=event,
            data=data,
            source=origin.caller,
            correlationId=origin.correlationId or messageId,
            publishedAt=self._clock.seconds(),
            isTraced=origin.traceParent is not None,
        )
        queues = [q for q in self._events.values() if topicMatches(q.pattern, event)]
        # Private subscriptions (replicas' caches) are not waited for: they
        # go with the process anyway.
        groups = {q.group for q in queues if not q.private}
        if not groups:
            for queue in queues:
                queue.put(delivery)
            return succeed(None)
        settlement = _Settlement(self, groups)
        for queue in queues:
            queue.put(delivery if queue.private else evolve(delivery, settlement=settlement))
        return settlement.done

    def subscribe(
        self,
        pattern: str,
        handler: Callable[[Any, EventContext], Any],
        group: str | None = None,
        prefetch: int | None = None,
        onGap: Callable[[], object] | None = None,
    ) -> Deferred[ISubscription]:
        # In process nothing is ever missed: onGap is never called.
        try:
            checkPattern(pattern)
        except ValueError:
            return fail()
        private = group is None
        if private:
            group = f"~{newMessageId()}"
        key = (group, pattern)
        queue = self._events.get(key)
        if queue is None:
            queue = self._events[key] = _EventQueue(self, group, pattern)
        worker = _EventWorker(queue, handler, prefetch or self._eventPrefetch)
        if private:
            worker.onStop = lambda: self._events.pop(key, None)
        queue.addWorker(worker)
        return succeed(worker)

    def pendingEvents(self, group: str, pattern: str) -> int:
        queue = self._events.get((group, pattern))
        return len(queue) if queue is not None else 0

    def _retryOrDeadLetter(self, queue: _EventQueue, delivery: _Delivery, failure: Failure) -> None:
        delay = retryDelay(failure, delivery.attempt, self.retryDelays)
        if delay is not None:
            self.log.warn(
                "Event {event} ({messageId}) failed in group {group}, attempt {attempt};"
                " retrying in {delay}s: {error}",
                event=delivery.event,
                messageId=delivery.messageId,
                group=queue.group,
                attempt=delivery.attempt,
                delay=delay,
                error=failure.getErrorMessage(),
            )

            def redeliver() -> None:
                self._retries.discard(call)
                queue.put(evolve(delivery, attempt=delivery.attempt + 1))

            call = self._clock.callLater(delay, redeliver)
            self._retries.add(call)
            return
        reason = failureReason(failure)
        if delivery.settlement is not None:
            # Given up: done with, as far as its publisher is concerned.
            delivery.settlement.settle(queue.group)
        self.log.error(
            "Dead-lettered event {event} ({messageId}) of group {group} after"
            " {attempts} attempt(s): {reason}",
            event=delivery.event,
            messageId=delivery.messageId,
            group=queue.group,
            attempts=delivery.attempt,
            reason=reason,
        )
        DEAD_LETTERS.labels(queue.group).inc()
        self._deadLetters[f"{queue.group}/{delivery.messageId}"] = DeadLetter(
            messageId=delivery.messageId,
            event=delivery.event,
            group=queue.group,
            pattern=queue.pattern,
            reason=reason,
            attempts=delivery.attempt,
            at=self._clock.seconds(),
            delivery=delivery,
        )
        if len(self._deadLetters) > self.maxDeadLetters:
            # Oldest first (dicts keep insertion order): a handler failing
            # on every event must not grow the process without bound.
            oldest = next(iter(self._deadLetters))
            del self._deadLetters[oldest]
            self.log.warn(
                "More than {limit} dead letters: forgot the oldest, {key}",
                limit=self.maxDeadLetters,
                key=oldest,
            )

    def deadLetters(self, group: str | None = None) -> list[DeadLetter]:
        """
        The dead letters, oldest first, of one group or all.
        """
        return sorted(
            (d for d in self._deadLetters.values() if group is None or d.group == group),
            key=lambda d: d.at,
        )

    def replay(self, deadLetter: DeadLetter) -> None:
        """
        Give a dead letter back to its group as a fresh delivery.
        """
        key = f"{deadLetter.group}/{deadLetter.messageId}"
        if self._deadLetters.pop(key, None) is None:
            raise KeyError(f"no dead letter {key}")
        queue = self._events[(deadLetter.group, deadLetter.pattern)]
        queue.put(evolve(deadLetter._delivery, attempt=1))

    # Lifecycle

    def stopService(self) -> None:
        """
        Cancel pending redeliveries.  Events not yet handled go with the
        process, but their publishers were never told they were done with
        (L{publish} fires once every group is): an outbox keeps them and
        publishes them again when the process starts anew.
        """
        super().stopService()
        for call in list(self._retries):
            if call.active():
                call.cancel()
        self._retries.clear()
        for settlement in list(self._unsettled):
            settlement.fail("the bus stopped")
