# -*- test-case-name: tests.amqp.test_bus -*-
"""
The AMQP bus: L{IBus} over RabbitMQ.

Topology (all durable, declared again on every connection):

  - C{txplatform.rpc} (direct exchange) -> C{txplatform.rpc.<id>}: one
    priority queue per service, bound by its six-hex-digit id, shared by
    its replicas.  Requests carry their deadline as the message's
    expiration (the broker drops them unread past it) and in the
    C{x-deadline} header (a replica drops them unhandled past it).  Replies
    come back through RabbitMQ's direct reply-to.
  - C{txplatform.events} (topic exchange) -> C{txplatform.events.<group>.
    <pattern>}: one queue per consumer group and binding; messages are
    persistent and confirmed by the broker before C{publish} fires.
  - C{txplatform.dead} (direct exchange) -> C{txplatform.dead.<group>}: the
    group's dead letters, with the error, the attempts and the queue they
    came from in their headers.
  - Private subscriptions get a server-named, exclusive queue that goes
    with the connection.

Every message carries its message id, the caller's service id
(C{x-caller}), the trace id (C{x-trace}) and the schema version
(C{x-schema}).
"""

from __future__ import annotations

import itertools
import os
import socket
from typing import Any, Callable, Mapping

from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, inlineCallbacks, succeed
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ..busrules import (
    callDeadline,
    checkPriority,
    failureReason,
    internalReply,
    replyFor,
    resultOf,
    retryDelay,
    timeoutFailure,
)
from ..codec import JSONCodec, callBinding, eventBinding, replyBinding
from ..context import CallContext, EventContext, Origin, Priority, newMessageId
from ..errors import (
    ServiceError,
    Unavailable,
    UnknownMethod,
)
from ..interfaces import IBus, IPayloadCodec, ISubscription
from ..serviceid import ServiceId
from ..topics import checkEventName, checkPattern
from .frames import Delivery, Properties
from .protocol import AMQPConnection, AMQPDelegate
from .spec import loadSpec
from .url import BrokerURL

__all__ = [
    "AMQPBus",
    "RPC_EXCHANGE",
    "EVENTS_EXCHANGE",
    "DEAD_EXCHANGE",
    "rpcQueue",
    "eventQueue",
    "deadQueue",
]

RPC_EXCHANGE = "txplatform.rpc"
EVENTS_EXCHANGE = "txplatform.events"
DEAD_EXCHANGE = "txplatform.dead"
REPLY_TO = "amq.rabbitmq.reply-to"
SCHEMA_VERSION = 1
CHANNEL = 1


def rpcQueue(service: ServiceId) -> str:
    return f"txplatform.rpc.{service.hex}"


def eventQueue(group: str, pattern: str) -> str:
    return f"txplatform.events.{group}.{pattern}"


def deadQueue(group: str) -> str:
    return f"txplatform.dead.{group}"


def _millis(seconds: float) -> int:
    return int(seconds * 1000)


class _Factory(Factory):
    def __init__(self, bus: AMQPBus) -> None:
        self._bus = bus

    def buildProtocol(self, addr: Any) -> AMQPConnection:
        bus = self._bus
        delegate = AMQPDelegate(bus.clientProperties())
        protocol = AMQPConnection(
            delegate, bus.url.vhost, loadSpec(), bus.url.heartbeat, bus._clock
        )
        protocol.factory = self
        return protocol


class _PendingCall:
    __slots__ = (
        "messageId",
        "service",
        "method",
        "data",
        "properties",
        "deadline",
        "idempotent",
        "deferred",
        "sentOn",
    )

    def __init__(self, **kwargs: Any) -> None:
        for name, value in kwargs.items():
            setattr(self, name, value)


@implementer(ISubscription)
class _Consumer:
    """
    One consumer of ours: a served service, or an event subscription.
    Survives reconnections: L{start} runs again on every new connection.
    """

    log = Logger()

    def __init__(self, bus: AMQPBus, prefetch: int) -> None:
        self._bus = bus
        self.prefetch = prefetch
        self.inflight = 0
        self.stopping = False
        self.tag = f"{type(self).__name__.strip('_').lower()}-{newMessageId()}"
        self._drained: list[Deferred[None]] = []

    def queueName(self) -> str:
        raise NotImplementedError

    def declare(self, channel: Any) -> Deferred[Any]:
        raise NotImplementedError

    def delivered(self, protocol: AMQPConnection, delivery: Delivery) -> None:
        raise NotImplementedError

    #: The connection this consumer last started on.
    startedOn: AMQPConnection | None = None

    @inlineCallbacks
    def start(self, protocol: AMQPConnection, channel: Any) -> Any:
        if self.startedOn is protocol:
            return
        self.startedOn = protocol
        yield self.declare(channel)
        if self.stopping:
            return
        protocol.onDeliver[self.tag] = lambda delivery: self._deliver(protocol, delivery)
        yield channel.basic_qos(prefetch_count=self.prefetch, global_=False)
        yield channel.basic_consume(queue=self.queueName(), consumer_tag=self.tag, no_ack=False)

    def _deliver(self, protocol: AMQPConnection, delivery: Delivery) -> None:
        self.inflight += 1
        try:
            self.delivered(protocol, delivery)
        except Exception:
            self.log.failure("Delivery to {tag} failed", tag=self.tag)
            self.finished()

    def finished(self) -> None:
        self.inflight -= 1
        if self.stopping and not self.inflight:
            drained, self._drained = self._drained, []
            for d in drained:
                d.callback(None)

    def stop(self) -> Deferred[None]:
        """
        Cancel the consumer (the broker stops delivering); fire once the
        messages in hand are handled and acknowledged.
        """
        if not self.stopping:
            self.stopping = True
            self._bus._forget(self)
        if not self.inflight:
            return succeed(None)
        # Cancelled when the service gives up waiting (its drain deadline).
        d: Deferred[None] = Deferred(self._drained.remove)
        self._drained.append(d)
        return d


class _Server(_Consumer):
    """
    The replicas of one service take calls from its queue.
    """

    def __init__(
        self,
        bus: AMQPBus,
        service: ServiceId,
        handlers: Mapping[str, Callable[..., Any]],
        prefetch: int,
    ) -> None:
        super().__init__(bus, prefetch)
        self.service = service
        self._handlers = dict(handlers)

    def queueName(self) -> str:
        return rpcQueue(self.service)

    @inlineCallbacks
    def declare(self, channel: Any) -> Any:
        yield self._bus._declareRPCQueue(channel, self.service)

    def delivered(self, protocol: AMQPConnection, delivery: Delivery) -> None:
        bus = self._bus
        properties = delivery.properties
        headers = properties.headers or {}
        now = bus._clock.seconds()
        deadline = headers.get("x-deadline")
        method = properties.type or ""
        if isinstance(deadline, int) and deadline / 1000 <= now:
            # The caller has given up: doing the work now would be waste at
            # best, and a surprise at worst.
            self.log.debug(
                "Dropped call {method} to {service} past its deadline",
                method=method,
                service=self.service.hex,
            )
            self._settle(protocol, delivery)
            return
        if delivery.redelivered:
            self.log.info(
                "Call {method} ({messageId}) to {service} delivered again: a replica stopped"
                " before answering it",
                method=method,
                messageId=properties.message_id,
                service=self.service.hex,
            )
        caller = headers.get("x-caller")
        context = CallContext(
            messageId=properties.message_id or "",
            service=self.service,
            method=method,
            caller=ServiceId.fromHex(caller)
            if isinstance(caller, str) and len(caller) == 6
            else None,
            correlationId=headers.get("x-trace") or properties.message_id or "",
            deadline=deadline / 1000 if isinstance(deadline, int) else now + bus.defaultTimeout,
            priority=properties.priority if properties.priority is not None else Priority.NORMAL,
            redelivered=delivery.redelivered,
        )
        try:
            handler = self._handlers.get(method)
            if handler is None:
                raise UnknownMethod(
                    f"service {self.service.hex} has no method {method!r}", {"method": method}
                )
            payload = bus._codec.decode(
                delivery.body, callBinding(self.service, method, context.messageId)
            )
            result = handler(payload, context)
        except BaseException:
            self._answer(Failure(), protocol, delivery, context)
            return
        if isinstance(result, Deferred):
            result.addBoth(self._answer, protocol, delivery, context)
        else:
            self._answer(result, protocol, delivery, context)

    def _answer(
        self, result: Any, protocol: AMQPConnection, delivery: Delivery, context: CallContext
    ) -> None:
        bus = self._bus
        reply = replyFor(result, self.service, context.method)
        replyTo = delivery.properties.reply_to
        if replyTo:
            binding = replyBinding(self.service, context.method, context.messageId)
            try:
                data = bus._codec.encode(reply, binding)
            except (TypeError, ValueError):
                self.log.failure("Unencodable result from {method}", method=context.method)
                data = bus._codec.encode(internalReply(context.method), binding)
            bus._publishReply(replyTo, delivery.properties.correlation_id, data)
        self._settle(protocol, delivery)

    def _settle(self, protocol: AMQPConnection, delivery: Delivery) -> None:
        # Acknowledged only now that the work is done; on a connection that
        # has since gone, the broker already gave the message back.
        protocol.ack(delivery.channel, delivery.deliveryTag)
        self.finished()


class _Subscription(_Consumer):
    """
    A member of an event group, or a private subscription.
    """

    def __init__(
        self,
        bus: AMQPBus,
        pattern: str,
        handler: Callable[[Any, EventContext], Any],
        group: str | None,
        prefetch: int,
        onGap: Callable[[], object] | None = None,
    ) -> None:
        super().__init__(bus, prefetch)
        self.pattern = pattern
        self.group = group
        self._handler = handler
        self._privateQueue: str | None = None
        self._onGap = onGap

    def queueName(self) -> str:
        if self.group is None:
            assert self._privateQueue is not None
            return self._privateQueue
        return eventQueue(self.group, self.pattern)

    @inlineCallbacks
    def declare(self, channel: Any) -> Any:
        if self.group is None:
            if self._privateQueue is not None and self._onGap is not None:
                # The last queue went with the last connection, and with it
                # whatever was published in between.
                self._onGap()
            ok = yield channel.queue_declare(queue="", exclusive=True, auto_delete=True)
            self._privateQueue = ok.queue
            yield channel.queue_bind(
                queue=self._privateQueue, exchange=EVENTS_EXCHANGE, routing_key=self.pattern
            )
        else:
            yield self._bus._declareGroup(channel, self.group, self.pattern)

    def delivered(self, protocol: AMQPConnection, delivery: Delivery) -> None:
        headers = delivery.properties.headers or {}
        attempt = headers.get("x-attempt", 1) if isinstance(headers.get("x-attempt"), int) else 1
        self._attempt(protocol, delivery, attempt)

    def _attempt(self, protocol: AMQPConnection, delivery: Delivery, attempt: int) -> None:
        bus = self._bus
        properties = delivery.properties
        headers = properties.headers or {}
        source = headers.get("x-caller")
        messageId = properties.message_id or ""
        try:
            payload = bus._codec.decode(delivery.body, eventBinding(delivery.routingKey, messageId))
            context = EventContext(
                messageId=messageId,
                event=delivery.routingKey,
                source=ServiceId.fromHex(source)
                if isinstance(source, str) and len(source) == 6
                else None,
                correlationId=headers.get("x-trace") or messageId,
                publishedAt=(properties.timestamp or 0) * 1.0,
                attempt=attempt,
            )
            result = self._handler(payload, context)
        except BaseException:
            self._failed(Failure(), protocol, delivery, attempt)
            return
        if isinstance(result, Deferred):
            result.addCallbacks(
                self._succeeded,
                self._failed,
                (protocol, delivery),
                None,
                (protocol, delivery, attempt),
            )
        else:
            self._succeeded(result, protocol, delivery)

    def _succeeded(self, result: Any, protocol: AMQPConnection, delivery: Delivery) -> None:
        protocol.ack(delivery.channel, delivery.deliveryTag)
        self.finished()

    def _failed(
        self, failure: Failure, protocol: AMQPConnection, delivery: Delivery, attempt: int
    ) -> None:
        bus = self._bus
        if protocol.lost:
            # The broker gives the message to another consumer (or to us,
            # anew): nothing to retry here.
            self.finished()
            return
        delay = retryDelay(failure, attempt, bus.retryDelays)
        if delay is not None:
            self.log.warn(
                "Event {event} ({messageId}) failed in {group}, attempt {attempt}; retrying in"
                " {delay}s: {error}",
                event=delivery.routingKey,
                messageId=delivery.properties.message_id,
                group=self.group or "(private)",
                attempt=attempt,
                delay=delay,
                error=failure.getErrorMessage(),
            )
            # Kept unacknowledged meanwhile: if this replica dies, the broker
            # redelivers it elsewhere.
            bus._later(delay, self._attempt, protocol, delivery, attempt + 1)
            return
        reason = failureReason(failure)
        self.log.error(
            "Dead-lettering event {event} ({messageId}) of {group} after {attempts} attempt(s):"
            " {reason}",
            event=delivery.routingKey,
            messageId=delivery.properties.message_id,
            group=self.group or "(private)",
            attempts=attempt,
            reason=reason,
        )
        if self.group is None:
            protocol.ack(delivery.channel, delivery.deliveryTag)
            self.finished()
            return
        d = bus._deadLetter(delivery, self.group, self.queueName(), reason, attempt)

        def settled(result: Any) -> None:
            if isinstance(result, Failure):
                # Not stored: give it back, it comes again later.
                protocol.reject(delivery.channel, delivery.deliveryTag, requeue=True)
            else:
                protocol.ack(delivery.channel, delivery.deliveryTag)
            self.finished()

        d.addBoth(settled)


@implementer(IBus)
class AMQPBus(Service):
    """
    An L{IBus} on RabbitMQ.

    @param url: Where the broker is.
    @param caller: The id of the service this process is, stamped on what
        it sends.
    @param retryDelays: Delays before each new attempt of a failed event;
        once used up the event goes to its group's dead-letter queue.
    """

    log = Logger()
    name = "bus"

    def __init__(
        self,
        reactor: Any,
        url: BrokerURL,
        codec: IPayloadCodec | None = None,
        caller: ServiceId | None = None,
        defaultTimeout: float = 10.0,
        retryDelays: tuple[float, ...] = (0.5, 2.0, 10.0),
        callPrefetch: int = 64,
        eventPrefetch: int = 16,
        connectionName: str | None = None,
    ) -> None:
        self._clock = reactor
        self.url = url
        self._codec = codec if codec is not None else JSONCodec()
        self.caller = caller
        self.defaultTimeout = defaultTimeout
        self.retryDelays = retryDelays
        self._callPrefetch = callPrefetch
        self._eventPrefetch = eventPrefetch
        self.connectionName = (
            connectionName or f"txplatform {socket.gethostname()} pid {os.getpid()}"
        )
        self._protocol: AMQPConnection | None = None
        self._channel: Any = None
        self._consumers: list[_Consumer] = []
        self._calls: dict[str, _PendingCall] = {}
        self._waiting: list[_PendingCall] = []
        self._retries: set[Any] = set()
        self._declared: set[tuple[str, str]] = set()
        self._connections = itertools.count(1)
        self._connected: list[Deferred[None]] = []
        self._stopping: Deferred[None] | None = None
        self._service = ClientService(
            url.endpoint(reactor),
            _Factory(self),
            retryPolicy=backoffPolicy(initialDelay=0.2, factor=2.0, maxDelay=10.0),
            clock=reactor,
            prepareConnection=self._prepare,
        )

    def clientProperties(self) -> dict[str, Any]:
        return {
            "product": "txplatform",
            "connection_name": self.connectionName,
            "capabilities": {
                "publisher_confirms": True,
                "basic.nack": True,
                "consumer_cancel_notify": True,
                "authentication_failure_close": True,
            },
        }

    # Lifecycle

    def startService(self) -> None:
        super().startService()
        self._stopping = None
        self._service.startService()

    def stopService(self) -> Deferred[None]:
        """
        Cancel the retries, close the connection cleanly and stop
        reconnecting.  Consumers are stopped by their services first.
        Stopping twice is harmless.
        """
        if self._stopping is None:
            self._stopping = self._stop()
        d: Deferred[None] = Deferred()
        self._stopping.addBoth(lambda result: (d.callback(None), result)[1])
        return d

    @inlineCallbacks
    def _stop(self) -> Any:
        super().stopService()
        for call in list(self._retries):
            if call.active():
                call.cancel()
        self._retries.clear()
        protocol = self._protocol
        if protocol is not None and not protocol.lost:
            try:
                yield protocol.close(within=2)
            except Exception:
                pass
        yield self._service.stopService()
        self._failWaiting(Unavailable("the bus is stopping"))

    def whenStarted(self) -> Deferred[None]:
        """
        Fires once connected: a process waits for it before it listens.
        """
        return self.whenConnected()

    def _later(self, delay: float, f: Callable[..., Any], *args: Any) -> None:
        """
        Call C{f} later, unless the bus stops first.
        """

        def run() -> None:
            self._retries.discard(call)
            f(*args)

        call = self._clock.callLater(delay, run)
        self._retries.add(call)

    def whenConnected(self) -> Deferred[None]:
        """
        Fires once connected, the topology declared and consumers running.
        """
        if self._protocol is not None and not self._protocol.lost:
            return succeed(None)
        d: Deferred[None] = Deferred(lambda d: self._connected.remove(d))
        self._connected.append(d)
        return d

    @property
    def connected(self) -> bool:
        return self._protocol is not None and not self._protocol.lost

    @inlineCallbacks
    def _prepare(self, proxy: AMQPConnection) -> Any:
        url = self.url
        protocol = proxy.attach(self._returned, lambda reason: self._lost(protocol, reason))
        response = b"\0" + url.username.encode("utf-8") + b"\0" + url.password.encode("utf-8")
        yield protocol.start(response, mechanism="PLAIN", locale="en_US")
        channel = yield protocol.channel(CHANNEL)
        yield channel.channel_open()
        yield channel.exchange_declare(exchange=RPC_EXCHANGE, type="direct", durable=True)
        yield channel.exchange_declare(exchange=EVENTS_EXCHANGE, type="topic", durable=True)
        yield channel.exchange_declare(exchange=DEAD_EXCHANGE, type="direct", durable=True)
        yield channel.confirm_select()
        protocol.startConfirming(CHANNEL)
        protocol.onDeliver["replies"] = self._replied
        yield channel.basic_consume(queue=REPLY_TO, consumer_tag="replies", no_ack=True)
        # Usable from here on: messages delivered to the consumers started
        # below are answered at once, on this connection.
        self._protocol, self._channel = protocol, channel
        self._declared = set()
        # Consumers added while this runs are started too.
        started: set[_Consumer] = set()
        while True:
            pending = [c for c in self._consumers if c not in started]
            if not pending:
                break
            for consumer in pending:
                started.add(consumer)
                yield consumer.start(protocol, channel)
        generation = next(self._connections)
        self.log.info(
            "Connected to {broker} ({consumers} consumer(s), connection {n})",
            broker=str(url),
            consumers=len(self._consumers),
            n=generation,
        )
        waiting, self._waiting = self._waiting, []
        for call in waiting:
            self._send(call)
        connected, self._connected = self._connected, []
        for d in connected:
            d.callback(None)

    def _lost(self, protocol: AMQPConnection, reason: Failure) -> None:
        if self._protocol is not protocol:
            return
        self._protocol = self._channel = None
        if self.running:
            self.log.warn(
                "Lost the broker connection ({why}); reconnecting", why=reason.getErrorMessage()
            )
        # Replies to calls sent on that connection cannot come back on the
        # next one: fail them now, or send them again if that is harmless.
        for call in list(self._calls.values()):
            if call.sentOn is not protocol:
                continue
            if call.idempotent and self.running:
                call.sentOn = None
                self._waiting.append(call)
            else:
                self._calls.pop(call.messageId, None)
                call.deferred.errback(
                    Unavailable(
                        f"the connection to the broker was lost before service {call.service.hex}"
                        f" answered {call.method}",
                        {"service": call.service.hex, "method": call.method},
                    )
                )

    def _failWaiting(self, error: Exception) -> None:
        waiting, self._waiting = self._waiting, []
        for call in waiting:
            self._calls.pop(call.messageId, None)
            if not call.deferred.called:
                call.deferred.errback(error)

    # Topology

    @inlineCallbacks
    def _declareRPCQueue(self, channel: Any, service: ServiceId) -> Any:
        key = ("rpc", service.hex)
        if key in self._declared:
            return
        yield channel.queue_declare(
            queue=rpcQueue(service), durable=True, arguments={"x-max-priority": 9}
        )
        yield channel.queue_bind(
            queue=rpcQueue(service), exchange=RPC_EXCHANGE, routing_key=service.hex
        )
        self._declared.add(key)

    def queueArguments(self) -> dict[str, Any]:
        """
        The arguments every durable event and dead-letter queue is declared
        with (its type).
        """
        return {"x-queue-type": self.url.queueType} if self.url.queueType != "classic" else {}

    @inlineCallbacks
    def _declareGroup(self, channel: Any, group: str, pattern: str) -> Any:
        dead = ("dead", group)
        typed = self.queueArguments()
        if dead not in self._declared:
            yield channel.queue_declare(queue=deadQueue(group), durable=True, arguments=typed)
            yield channel.queue_bind(
                queue=deadQueue(group), exchange=DEAD_EXCHANGE, routing_key=group
            )
            self._declared.add(dead)
        key = ("events", eventQueue(group, pattern))
        if key in self._declared:
            return
        yield channel.queue_declare(
            queue=eventQueue(group, pattern),
            durable=True,
            arguments={
                # Messages the broker itself gives up on (a consumer crash
                # loop on a quorum queue) also end up in the group's DLQ.
                "x-dead-letter-exchange": DEAD_EXCHANGE,
                "x-dead-letter-routing-key": group,
                **typed,
            },
        )
        yield channel.queue_bind(
            queue=eventQueue(group, pattern), exchange=EVENTS_EXCHANGE, routing_key=pattern
        )
        self._declared.add(key)

    def _forget(self, consumer: _Consumer) -> None:
        if consumer in self._consumers:
            self._consumers.remove(consumer)
        protocol, channel = self._protocol, self._channel
        if protocol is not None and not protocol.lost:
            d = channel.basic_cancel(consumer_tag=consumer.tag)
            d.addErrback(lambda f: None)

    def _addConsumer(self, consumer: _Consumer) -> Deferred[ISubscription]:
        """
        Register C{consumer}; it runs on this connection and every later one.
        Fires once it consumes; cancelling withdraws it.
        """
        self._consumers.append(consumer)
        if self.connected:
            d = consumer.start(self._protocol, self._channel)
        else:
            d = self.whenConnected()
        d.addCallback(lambda _: consumer)

        def withdraw(failure: Failure) -> Failure:
            self._forget(consumer)
            return failure

        return d.addErrback(withdraw)

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
        try:
            priority = checkPriority(priority)
        except ValueError:
            return fail()
        origin = origin if origin is not None else Origin(self.caller)
        now = self._clock.seconds()
        deadline = callDeadline(now, timeout, self.defaultTimeout, origin)
        messageId = newMessageId()
        try:
            data = self._codec.encode(payload, callBinding(service, method, messageId))
        except (TypeError, ValueError):
            return fail()
        caller = origin.caller or self.caller
        headers: dict[str, Any] = {
            "x-trace": origin.correlationId or messageId,
            "x-deadline": _millis(deadline),
            "x-schema": SCHEMA_VERSION,
        }
        if caller is not None:
            headers["x-caller"] = caller.hex
        properties = Properties(
            message_id=messageId,
            correlation_id=messageId,
            reply_to=REPLY_TO,
            priority=priority,
            type=method,
            timestamp=int(now),
            headers=headers,
        )

        def abandon(d: Deferred[Any]) -> None:
            self._calls.pop(messageId, None)
            if pending in self._waiting:
                self._waiting.remove(pending)

        d: Deferred[Any] = Deferred(abandon)
        pending = _PendingCall(
            messageId=messageId,
            service=service,
            method=method,
            data=data,
            properties=properties,
            deadline=deadline,
            idempotent=idempotent,
            deferred=d,
            sentOn=None,
        )
        self._calls[messageId] = pending
        d.addTimeout(
            max(deadline - now, 0.0), self._clock, onTimeoutCancel=timeoutFailure(service, method)
        )
        if self.connected:
            self._send(pending)
        else:
            self._waiting.append(pending)
        return d

    def _send(self, call: _PendingCall) -> None:
        remaining = call.deadline - self._clock.seconds()
        if call.deferred.called or remaining <= 0:
            return
        # The broker drops a request still queued past its deadline.
        call.properties.expiration = str(max(_millis(remaining), 1))
        protocol = self._protocol
        assert protocol is not None
        call.sentOn = protocol
        protocol.publish(
            CHANNEL, RPC_EXCHANGE, call.service.hex, call.properties, call.data, mandatory=True
        )

    def _replied(self, delivery: Delivery) -> None:
        call = self._calls.pop(delivery.properties.correlation_id or "", None)
        if call is None or call.deferred.called:
            return  # timed out, cancelled or answered already
        binding = replyBinding(call.service, call.method, call.messageId)
        try:
            result = resultOf(self._codec.decode(delivery.body, binding))
        except ServiceError as e:
            call.deferred.errback(e)
            return
        call.deferred.callback(result)

    def _returned(self, delivery: Delivery) -> None:
        if delivery.exchange != RPC_EXCHANGE:
            return
        call = self._calls.pop(delivery.properties.correlation_id or "", None)
        if call is not None and not call.deferred.called:
            call.deferred.errback(
                Unavailable(
                    f"no service {call.service.hex} on this bus", {"service": call.service.hex}
                )
            )

    def _publishReply(self, replyTo: str, correlationId: str | None, data: bytes) -> None:
        protocol = self._protocol
        if protocol is None or protocol.lost:
            self.log.warn("A reply was lost with the broker connection")
            return
        properties = Properties(correlation_id=correlationId, headers={"x-schema": SCHEMA_VERSION})
        protocol.publish(CHANNEL, "", replyTo, properties, data)

    def serve(
        self,
        service: ServiceId,
        handlers: Mapping[str, Callable[..., Any]],
        prefetch: int | None = None,
    ) -> Deferred[ISubscription]:
        return self._addConsumer(_Server(self, service, handlers, prefetch or self._callPrefetch))

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
            data = self._codec.encode(payload, eventBinding(event, messageId))
        except (TypeError, ValueError):
            return fail()
        protocol = self._protocol
        if protocol is None or protocol.lost:
            return fail(Unavailable("not connected to the broker"))
        origin = origin if origin is not None else Origin(self.caller)
        caller = origin.caller or self.caller
        headers: dict[str, Any] = {
            "x-trace": origin.correlationId or messageId,
            "x-schema": SCHEMA_VERSION,
        }
        if caller is not None:
            headers["x-caller"] = caller.hex
        properties = Properties(
            message_id=messageId,
            delivery_mode=2,
            timestamp=int(self._clock.seconds()),
            headers=headers,
        )
        d = protocol.publish(CHANNEL, EVENTS_EXCHANGE, event, properties, data, confirm=True)
        assert d is not None
        return d

    def subscribe(
        self,
        pattern: str,
        handler: Callable[[Any, EventContext], Any],
        group: str | None = None,
        prefetch: int | None = None,
        onGap: Callable[[], object] | None = None,
    ) -> Deferred[ISubscription]:
        try:
            checkPattern(pattern)
        except ValueError:
            return fail()
        return self._addConsumer(
            _Subscription(self, pattern, handler, group, prefetch or self._eventPrefetch, onGap)
        )

    def _deadLetter(
        self, delivery: Delivery, group: str, queue: str, reason: str, attempts: int
    ) -> Deferred[None]:
        protocol = self._protocol
        if protocol is None or protocol.lost:
            return fail(Unavailable("not connected to the broker"))
        original = delivery.properties
        headers = dict(original.headers or {})
        headers.update(
            {
                "x-error": reason[:2000],
                "x-attempts": attempts,
                "x-original-queue": queue,
                "x-original-routing-key": delivery.routingKey,
                "x-dead-lettered-at": _millis(self._clock.seconds()),
            }
        )
        properties = Properties(
            message_id=original.message_id,
            delivery_mode=2,
            timestamp=original.timestamp,
            headers=headers,
        )
        d = protocol.publish(CHANNEL, DEAD_EXCHANGE, group, properties, delivery.body, confirm=True)
        assert d is not None
        return d
