# -*- test-case-name: tests.amqp.test_bus -*-
"""
The AMQP bus: L{IBus} over RabbitMQ.

Topology (all durable, declared again on every connection; on a cluster,
the call queues are transient: see L{AMQPBus.rpcQueuesDurable}):

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
(C{x-schema}); a call or event in an OpenTelemetry trace also says so
(C{x-traced}), its C{traceparent} and C{tracestate} being inside the
(sealed) payload.  A call sent again after the connection it went on was
lost says so (C{x-resent}: see L{AMQPBus.call}).
"""

from __future__ import annotations

import itertools
import os
import socket
from typing import Any, Callable, Mapping, Sequence

from attrs import evolve
from twisted.application.internet import backoffPolicy
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, fail, inlineCallbacks, succeed
from twisted.internet.protocol import Factory
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ..busrules import (
    awaitAnswer,
    checkIdempotencyKey,
    encodeEvent,
    failureReason,
    internalReply,
    millis,
    prepareCall,
    replyFor,
    resultOf,
    retryDelay,
)
from ..codec import JSONCodec, callBinding, eventBinding, replyBinding, untraced
from ..context import CallContext, EventContext, Origin, Priority, newMessageId
from ..errors import (
    MalformedMessage,
    ServiceError,
    Unavailable,
    UnknownMethod,
)
from ..interfaces import IBus, IPayloadCodec, ISubscription
from ..metrics import BUS_CONNECTIONS, DEAD_LETTERS
from ..serviceid import ServiceId
from ..topics import checkEventName, checkPattern
from ._attempts import FailoverEndpoint, QuietClientService, ReportingEndpoint, whyNotConnected
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
# Calls and their replies: a channel without publisher confirms.  A call is
# answered, or returned as unroutable, or times out by its deadline: a
# confirm would tell its caller nothing more, and would cost the broker a
# frame each way (two per call, half a read's messages).  Direct reply-to
# wants the calls published on the channel that consumes the replies.
CALLS_CHANNEL = 2
# On a call sent again, under its message id, after the connection it went
# on was lost: the service treats it as a call the broker redelivered.
RESENT_HEADER = "x-resent"


def rpcQueue(service: ServiceId) -> str:
    return f"txplatform.rpc.{service.hex}"


def eventQueue(group: str, pattern: str) -> str:
    return f"txplatform.events.{group}.{pattern}"


def deadQueue(group: str) -> str:
    return f"txplatform.dead.{group}"


def _callerOf(headers: Mapping[str, Any]) -> ServiceId | None:
    # Headers come from whoever could publish: read them, never trust them
    # to be well-formed.
    caller = headers.get("x-caller")
    if isinstance(caller, str):
        try:
            return ServiceId.fromHex(caller)
        except ValueError:
            return None
    return None


def _traceOf(headers: Mapping[str, Any], messageId: str) -> str:
    trace = headers.get("x-trace")
    return trace if isinstance(trace, str) and trace else messageId


def _isTraced(headers: Mapping[str, Any]) -> bool:
    """
    Whether a message says its payload carries a trace (the binding says
    the same, so a broker cannot change it).
    """
    return headers.get("x-traced") == 1


def _keyOf(value: object) -> str | None:
    try:
        return checkIdempotencyKey(value)
    except ValueError:
        return None


def _intHeader(headers: Mapping[str, Any], name: str) -> int | None:
    value = headers.get(name)
    return value if type(value) is int else None


def eventOf(delivery: Delivery) -> str:
    """
    The event a delivery is: its routing key, or for a copy put straight in
    a queue (a retry, a replayed dead letter), the event it was a copy of.
    """
    if delivery.exchange == "":
        event = (delivery.properties.headers or {}).get("x-event")
        if isinstance(event, str):
            return event
    return delivery.routingKey


class _Factory(Factory):
    # Not a line per connection attempt ("Starting factory ..."): the bus
    # logs the attempts that fail, and the connection that gets ready.
    noisy = False

    def __init__(self, bus: AMQPBus) -> None:
        self._bus = bus

    def buildProtocol(self, addr: Any) -> AMQPConnection:
        bus = self._bus
        delegate = AMQPDelegate(bus.clientProperties())
        protocol = AMQPConnection(
            delegate, bus.url.vhost, loadSpec(), bus.url.heartbeat, bus._clock
        )
        protocol.factory = self
        protocol.onMade = bus._connectionMade
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
        "retry",
        "sentAgain",
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
        #: The broker confirmed the cancel: nothing more is delivered to us.
        self.cancelled = False
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
        if self.stopping:
            # Stopped while consume was on its way: the cancel sent then
            # reached the broker before the consumer existed.
            yield channel.basic_cancel(consumer_tag=self.tag)

    def _deliver(self, protocol: AMQPConnection, delivery: Delivery) -> None:
        self.inflight += 1
        try:
            if delivery.malformed is not None:
                self.malformed(protocol, delivery, delivery.malformed)
            else:
                self.delivered(protocol, delivery)
        except Exception:
            # A bug of ours: refuse the message rather than hold it forever.
            self.log.failure("Delivery to {tag} failed", tag=self.tag)
            protocol.reject(delivery.channel, delivery.deliveryTag, requeue=False)
            self.finished()

    def malformed(self, protocol: AMQPConnection, delivery: Delivery, reason: str) -> None:
        """
        A message that cannot be handled at all: dead-letter it at once.
        """
        self.log.error(
            "Dead-lettering a malformed message ({messageId}) from {queue}: {reason}",
            messageId=delivery.properties.message_id,
            queue=self.queueName(),
            reason=reason,
        )
        self._bus._deadLetterAndSettle(self, protocol, delivery, self.deadGroup(), reason, 1)

    def deadGroup(self) -> str | None:
        """
        The dead-letter queue (its group name) of this consumer's messages;
        C{None} to drop them instead.
        """
        raise NotImplementedError

    def finished(self) -> None:
        self.inflight -= 1
        if self.stopping and not self.inflight:
            drained, self._drained = self._drained, []
            for d in drained:
                d.callback(None)

    @inlineCallbacks
    def stop(self) -> Any:
        """
        Cancel the consumer and wait until the broker confirmed it (no more
        deliveries on the way); fire once the messages in hand are handled
        and acknowledged.  Cancelled when the service gives up waiting (its
        drain deadline).
        """
        if not self.stopping:
            self.stopping = True
            yield self._bus._forget(self)
            self.cancelled = True
            # Only now: given back before the cancel, they could come
            # straight back to us.
            self.stopRetries()
        if self.inflight:
            d: Deferred[None] = Deferred(self._drained.remove)
            self._drained.append(d)
            yield d

    def stopRetries(self) -> None:
        """
        Give back the messages waiting for another attempt.
        """


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
        #: Calls the stopping service gave up on, held until the broker
        #: confirmed the cancel (given back sooner, they could come back to
        #: us).
        self._givenUp: list[tuple[AMQPConnection, Delivery]] = []

    def queueName(self) -> str:
        return rpcQueue(self.service)

    @inlineCallbacks
    def declare(self, channel: Any) -> Any:
        yield self._bus._declareRPCQueue(channel, self.service)
        yield self._bus._declareDead(channel, self.deadGroup())

    def deadGroup(self) -> str:
        return f"rpc.{self.service.hex}"

    def delivered(self, protocol: AMQPConnection, delivery: Delivery) -> None:
        bus = self._bus
        properties = delivery.properties
        headers = properties.headers or {}
        now = bus._clock.seconds()
        deadline = _intHeader(headers, "x-deadline")
        method = properties.type or ""
        if deadline is not None and deadline / 1000 <= now:
            # The caller has given up: doing the work now would be waste at
            # best, and a surprise at worst.
            self.log.debug(
                "Dropped call {method} to {service} past its deadline",
                method=method,
                service=self.service.hex,
            )
            self._settle(protocol, delivery)
            return
        resent = _intHeader(headers, RESENT_HEADER) == 1
        if delivery.redelivered or resent:
            self.log.info(
                "Call {method} ({messageId}) to {service} {why}",
                method=method,
                messageId=properties.message_id,
                service=self.service.hex,
                why=(
                    "delivered again: a replica stopped before answering it"
                    if delivery.redelivered
                    else "sent again: its caller lost the connection it first went on"
                ),
            )
        messageId = properties.message_id or ""
        rawKey = headers.get("x-idempotency-key")
        key = _keyOf(rawKey)
        isTraced = _isTraced(headers)
        context = CallContext(
            messageId=messageId,
            service=self.service,
            method=method,
            caller=_callerOf(headers),
            correlationId=_traceOf(headers, messageId),
            deadline=deadline / 1000 if deadline is not None else now + bus.defaultTimeout,
            priority=properties.priority if properties.priority is not None else Priority.NORMAL,
            redelivered=delivery.redelivered or resent,
            idempotencyKey=key,
        )
        try:
            if rawKey is not None and key is None:
                raise MalformedMessage(
                    "the x-idempotency-key header is not 1 to 255 printable ASCII characters"
                )
            handler = self._handlers.get(method)
            if handler is None:
                raise UnknownMethod(
                    f"service {self.service.hex} has no method {method!r}", {"method": method}
                )
            payload = bus._codec.decode(
                delivery.body,
                callBinding(
                    self.service,
                    method,
                    context.messageId,
                    context.caller,
                    context.correlationId,
                    deadline or 0,
                    key,
                    isTraced,
                ),
            )
            if isTraced:
                payload, traceParent, traceState = untraced(payload)
                context = evolve(context, traceParent=traceParent, traceState=traceState)
        except MalformedMessage as e:
            # The caller hears why; the message is kept for inspection.
            self._reply(Failure(), delivery, context)
            self.malformed(protocol, delivery, e.message)
            return
        except BaseException:
            self._answer(Failure(), protocol, delivery, context)
            return
        try:
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
        if self.stopping and isinstance(result, Failure) and result.check(CancelledError):
            # Work the stopping service gave up on (past its drain deadline,
            # say): not a failure to answer, but a call for another replica.
            self.log.info(
                "Call {method} ({messageId}) to {service} given back: this replica stopped"
                " before doing it",
                method=context.method,
                messageId=context.messageId,
                service=self.service.hex,
            )
            self._givenUp.append((protocol, delivery))
            if self.cancelled:
                self.stopRetries()
            return
        self._reply(result, delivery, context)
        self._settle(protocol, delivery)

    def stopRetries(self) -> None:
        givenUp, self._givenUp = self._givenUp, []
        for protocol, delivery in givenUp:
            # On a connection since lost, the broker gave it back already.
            protocol.reject(delivery.channel, delivery.deliveryTag, requeue=True)
            self.finished()

    def _reply(self, result: Any, delivery: Delivery, context: CallContext) -> None:
        bus = self._bus
        reply = replyFor(result, self.service, context.method)
        replyTo = delivery.properties.reply_to
        if not replyTo:
            return
        if not replyTo.startswith(REPLY_TO + "."):
            # Only a caller's direct reply-to pseudo-queue: anything else
            # would let a request make this service publish into any queue.
            self.log.warn(
                "Not answering call {messageId}: it asks for replies to {replyTo!r}",
                messageId=context.messageId,
                replyTo=replyTo[:100],
            )
            return
        binding = replyBinding(self.service, context.method, context.messageId)
        try:
            data = bus._codec.encode(reply, binding)
        except (TypeError, ValueError):
            self.log.failure("Unencodable result from {method}", method=context.method)
            data = bus._codec.encode(internalReply(context.method), binding)
        bus._publishReply(replyTo, delivery.properties.correlation_id, data, context)

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
        # Failed messages held unacknowledged until their next attempt (or,
        # once stopping, until the consumer is cancelled): the timer, if
        # any, and where each came from.
        self._retrying: list[tuple[Any, AMQPConnection, Delivery]] = []

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

    def deadGroup(self) -> str | None:
        return self.group

    def delivered(self, protocol: AMQPConnection, delivery: Delivery) -> None:
        bus = self._bus
        properties = delivery.properties
        headers = properties.headers or {}
        # The attempt travels with the message (see _retry), so a crash or
        # a reconnection does not start the count again.
        attempt = max(_intHeader(headers, "x-attempt") or 1, 1)
        messageId = properties.message_id or ""
        event = eventOf(delivery)
        try:
            source, correlationId = _callerOf(headers), _traceOf(headers, messageId)
            isTraced = _isTraced(headers)
            payload = bus._codec.decode(
                delivery.body, eventBinding(event, messageId, source, correlationId, isTraced)
            )
            traceParent = traceState = None
            if isTraced:
                payload, traceParent, traceState = untraced(payload)
            context = EventContext(
                messageId=messageId,
                event=event,
                source=source,
                correlationId=correlationId,
                publishedAt=(properties.timestamp or 0) * 1.0,
                attempt=attempt,
                traceParent=traceParent,
                traceState=traceState,
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
        if delay is not None and self.stopping:
            # Another member of the group tries it next; stop() gives it
            # back once no more deliveries can reach us.
            self._retrying.append((None, protocol, delivery))
            if self.cancelled:
                self.stopRetries()
            return
        if delay is not None:
            self.log.warn(
                "Event {event} ({messageId}) failed in {group}, attempt {attempt}; retrying in"
                " {delay}s: {error}",
                event=eventOf(delivery),
                messageId=delivery.properties.message_id,
                group=self.group or "(private)",
                attempt=attempt,
                delay=delay,
                error=failure.getErrorMessage(),
            )
            # Kept unacknowledged meanwhile: if this replica dies, the broker
            # redelivers it elsewhere.
            call = bus._clock.callLater(delay, self._retry, protocol, delivery, attempt + 1)
            self._retrying.append((call, protocol, delivery))
            return
        reason = failureReason(failure)
        self.log.error(
            "Dead-lettering event {event} ({messageId}) of {group} after {attempts} attempt(s):"
            " {reason}",
            event=eventOf(delivery),
            messageId=delivery.properties.message_id,
            group=self.group or "(private)",
            attempts=attempt,
            reason=reason,
        )
        bus._deadLetterAndSettle(self, protocol, delivery, self.group, reason, attempt)

    def _retry(self, protocol: AMQPConnection, delivery: Delivery, attempt: int) -> None:
        """
        Put a copy marked with its next attempt at the back of the queue,
        and acknowledge the original once the broker has the copy.
        """
        self._retrying = [r for r in self._retrying if r[0] is None or r[0].active()]
        if protocol.lost:
            self.finished()  # the broker already gave it back
            return
        d = self._bus._publishCopy(
            protocol,
            delivery,
            self.queueName(),
            {"x-attempt": attempt, "x-event": eventOf(delivery)},
        )
        self._bus._settleAfter(d, self, protocol, delivery)

    def stopRetries(self) -> None:
        retrying, self._retrying = self._retrying, []
        for call, protocol, delivery in retrying:
            if call is None or call.active():
                if call is not None:
                    call.cancel()
                if not protocol.lost:
                    protocol.reject(delivery.channel, delivery.deliveryTag, requeue=True)
                self.finished()


def _countDeadLetter(result: Any, group: str) -> Any:
    # Counted once the dead letter is stored (confirmed by the broker).
    DEAD_LETTERS.labels(group).inc()
    return result


@implementer(IBus)
class AMQPBus(Service):
    """
    An L{IBus} on RabbitMQ.

    @param url: Where the broker is: its URL, or its nodes' (a cluster;
        see L{parseBrokerURLs}), tried in turn.
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
        url: BrokerURL | Sequence[BrokerURL],
        codec: IPayloadCodec | None = None,
        caller: ServiceId | None = None,
        defaultTimeout: float = 10.0,
        retryDelays: tuple[float, ...] = (0.5, 2.0, 10.0),
        callPrefetch: int = 64,
        eventPrefetch: int = 16,
        connectionName: str | None = None,
    ) -> None:
        self._clock = reactor
        #: Every node's URL; they differ in host and port only.
        self.urls: tuple[BrokerURL, ...] = (url,) if isinstance(url, BrokerURL) else tuple(url)
        #: The broker's settings (credentials, virtual host, options): the
        #: first node's URL.
        self.url = self.urls[0]
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
        # When each service last answered a call of ours (the clock's
        # seconds): a call it cannot be routed to soon after is one whose
        # queue went with a node, and is being declared again elsewhere.
        self._heard: dict[ServiceId, float] = {}
        #: For how long after a service last answered a call that cannot be
        #: routed to it is tried again (every L{returnedRetryDelay} seconds,
        #: within its deadline) rather than failed as "no service".
        self.reappearWithin = 5.0
        self.returnedRetryDelay = 0.2
        #: On stop, how long to wait for answers to the calls in flight.
        self.drainTimeout = 10.0
        #: How long to wait for the broker to confirm a message.
        self.confirmTimeout = 30.0
        self._declared: set[tuple[str, str]] = set()
        self._connections = itertools.count(1)
        self._connected: list[Deferred[None]] = []
        self._stopping: Deferred[None] | None = None
        # Exponential: 0.4 s, 0.8 s, 1.6 s ... up to 10 s, plus up to 1 s of
        # jitter.
        self._backoff = backoffPolicy(initialDelay=0.2, factor=2.0, maxDelay=10.0)
        #: Attempts that failed in a row, however they failed (see
        #: _retryDelay); none once a connection is ready.
        self._failedInARow = 0
        #: Why the last attempt failed, and whether its connection had been
        #: ready: told in the line of the next retry (_retryDelay).
        self._lastFailure: tuple[Failure, bool] | None = None
        #: The connection whose handshake runs, if any.
        self._handshaking: AMQPConnection | None = None
        # No prepareConnection: ClientService leaves the connection of a
        # failed or cancelled preparation open, and its later loss then
        # finds no transition (automat's NoTransition, in Waiting or
        # Stopped).  To ClientService a connection is up once TCP (and TLS)
        # is; the AMQP handshake and topology follow in _connectionMade,
        # and a connection that does not get ready is closed, so that
        # ClientService's own loss handling retries it.
        self._nodes = FailoverEndpoint(reactor, self.urls)
        self._service = QuietClientService(
            ReportingEndpoint(self._nodes, self._attemptFailed),
            _Factory(self),
            retryPolicy=self._retryDelay,
            clock=reactor,
        )

    @property
    def node(self) -> BrokerURL:
        """
        The node connected to (or being tried).
        """
        return self._nodes.current

    def clientProperties(self) -> dict[str, Any]:
        return {
            "product": "txplatform",
            "connection_name": self.connectionName,
            "capabilities": {
                "publisher_confirms": True,
                "basic.nack": True,
                "consumer_cancel_notify": True,
                "connection.blocked": True,
                "authentication_failure_close": True,
            },
        }

    # Lifecycle

    def startService(self) -> None:
        super().startService()
        self._stopping = None
        self._failedInARow = 0
        self._lastFailure = None
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
        for consumer in list(self._consumers):
            consumer.stopRetries()
        # The services stopped first (see plugins' StopInOrder); what is
        # left in flight are our own calls: their answers are on the way.
        deadline = self._clock.seconds() + self.drainTimeout
        while self._calls and self.connected and self._clock.seconds() < deadline:
            yield deferLater(self._clock, 0.05, lambda: None)
        protocol = self._protocol
        if protocol is not None and not protocol.lost:
            yield protocol.closeCleanly(2)
        handshaking = self._handshaking
        if handshaking is not None and not handshaking.lost:
            # Not left to ClientService's loseConnection: over TLS, that
            # waits for the TLS handshake to finish (or for ours to time
            # out) before the connection closes and the service stops.
            handshaking.transport.abortConnection()
        yield self._service.stopService()
        for call in list(self._calls.values()):
            if call.retry is not None and call.retry.active():
                call.retry.cancel()
                self._waiting.append(call)
        self._failWaiting(Unavailable("the bus is stopping"))

    def whenStarted(self) -> Deferred[None]:
        """
        Fires once connected: a process waits for it before it listens.
        """
        return self.whenConnected()

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

    def confirmsPending(self) -> int:
        """
        Messages published on the current connection that the broker has
        not confirmed yet.
        """
        protocol = self._protocol
        return 0 if protocol is None else protocol.unconfirmedCount()

    def _connectionMade(self, protocol: AMQPConnection) -> None:
        """
        A connection is up: log in, declare, start the consumers.  One that
        fails on the way (refused login, missing virtual host, bad
        certificate, a handshake that times out) is closed, and ClientService
        retries it (see L{_retryDelay}).

        Called from the protocol's connectionMade, before ClientService
        knows of the connection: nothing here may raise, or the connection
        would be lost with ClientService still connecting.
        """

        def failed(failure: Failure) -> None:
            if self._handshaking is protocol:
                self._handshaking = None
            if self.running:
                self._attemptFailed(failure)
            if protocol.lost or protocol.transport is None:
                return
            if protocol.closedBy is not None:
                # The broker closed it: our close-ok is on its way out.
                protocol.transport.loseConnection()
            else:
                protocol.transport.abortConnection()

        self._handshaking = protocol
        self._prepare(protocol).addErrback(failed)

    def _attemptFailed(self, reason: Failure, wasReady: bool = False) -> None:
        self._lastFailure = (reason, wasReady)

    def _retryDelay(self, attempts: int) -> float:
        """
        ClientService's retry policy, called once per failed attempt: the
        delay before the next one, growing with the attempts that failed in a
        row.  Counted here, not from C{attempts}: ClientService counts from
        one again with every connection made, so a login refused each time
        would always be its first failure.  Logs one line saying why and
        when.

        Called inside a transition of ClientService's state machine: it must
        not raise, or the machine would be left half-way.
        """
        self._failedInARow += 1
        attempts = self._failedInARow
        delay = self._backoff(attempts)
        last, self._lastFailure = self._lastFailure, None
        if not self.running:
            return delay
        try:
            node = self.node
            why = (
                whyNotConnected(node, *last)
                if last is not None
                else f"The connection to AMQP broker {node.host}:{node.port} ended"
            )
            # With several nodes, the next attempt goes to the next one.
            upcoming = self._nodes.upcoming
            then = f"trying {upcoming.host}:{upcoming.port}" if len(self.urls) > 1 else "retrying"
            self.log.warn(
                "{why}; {then} in {delay:.1f} s",
                why=why,
                then=then,
                delay=delay,
                broker=str(node),
                attempt=attempts,
            )
        except Exception:
            self.log.failure("Cannot say why the broker connection failed")
        return delay

    @inlineCallbacks
    def _prepare(self, protocol: AMQPConnection) -> Any:
        url = self.url
        protocol.attach(self._returned, lambda reason: self._lost(protocol, reason))
        # Heartbeats only start once connected: bound the handshake itself.
        yield protocol.logIn(url.username, url.password, url.connectTimeout)
        channel = yield protocol.channel(CHANNEL)
        yield channel.channel_open()
        yield channel.exchange_declare(exchange=RPC_EXCHANGE, type="direct", durable=True)
        yield channel.exchange_declare(exchange=EVENTS_EXCHANGE, type="topic", durable=True)
        yield channel.exchange_declare(exchange=DEAD_EXCHANGE, type="direct", durable=True)
        yield channel.confirm_select()
        protocol.startConfirming(CHANNEL)
        calls = yield protocol.channel(CALLS_CHANNEL)
        yield calls.channel_open()
        protocol.onDeliver["replies"] = self._replied
        yield calls.basic_consume(queue=REPLY_TO, consumer_tag="replies", no_ack=True)
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
        BUS_CONNECTIONS.labels("amqp").inc()
        self._failedInARow = 0
        self._handshaking = None
        self.log.info(
            "Connected to {broker} ({consumers} consumer(s), connection {n})",
            broker=str(self.node),
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
            # Said in the line of the retry that follows (_retryDelay), with
            # the broker's own reason if it gave one (an operator closed the
            # connection, the broker shuts down): the loss alone says less.
            why = Failure(protocol.closedBy) if protocol.closedBy is not None else reason
            self._attemptFailed(why, wasReady=True)
        # Replies to calls sent on that connection cannot come back on the
        # next one: send them again on it.  An idempotent call is simply
        # sent again; any other goes marked (x-resent), under the same
        # message id, and the service takes it as a call the broker
        # delivered again: a method that must not run twice answers it from
        # its reply log if the first copy ran (L{txplatform.service.rpc}),
        # as it does when the broker redelivers a call its replica never
        # answered.  Failing it instead answered the caller 503 for work
        # that was often done all the same.  Once only: a call whose
        # publishing took its connection down (a frame the broker refuses)
        # must not take the next one down with it, and the next.
        for call in list(self._calls.values()):
            if call.sentOn is not protocol:
                continue
            if self.running and not call.sentAgain:
                call.sentAgain = True
                call.sentOn = None
                if not call.idempotent:
                    call.properties.headers[RESENT_HEADER] = 1
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
            queue=rpcQueue(service),
            durable=self.rpcQueuesDurable(),
            arguments={"x-max-priority": 9},
        )
        yield channel.queue_bind(
            queue=rpcQueue(service), exchange=RPC_EXCHANGE, routing_key=service.hex
        )
        self._declared.add(key)

    def rpcQueuesDurable(self) -> bool:
        """
        Whether call queues are durable: on a single broker, yes; on a
        cluster (C{queue_type=quorum}), no.  A classic queue lives on one
        node: a durable one whose node is down cannot be declared or used
        on another until that node is back (404 NOT_FOUND, "home node ...
        is down"), which would stop every call to the service; a transient
        one is deleted with its node, and the replicas, told their consumer
        is cancelled, declare it again on the node they reconnect to.  The
        calls it held are lost: their callers get a 503 or 504, as they
        would for a call in flight on a lost connection.
        """
        return self.url.queueType == "classic"

    def queueArguments(self) -> dict[str, Any]:
        """
        The arguments every durable event and dead-letter queue is declared
        with (its type).
        """
        return {"x-queue-type": self.url.queueType} if self.url.queueType != "classic" else {}

    @inlineCallbacks
    def _declareDead(self, channel: Any, group: str) -> Any:
        dead = ("dead", group)
        if dead not in self._declared:
            yield channel.queue_declare(
                queue=deadQueue(group), durable=True, arguments=self.queueArguments()
            )
            yield channel.queue_bind(
                queue=deadQueue(group), exchange=DEAD_EXCHANGE, routing_key=group
            )
            self._declared.add(dead)

    @inlineCallbacks
    def _declareGroup(self, channel: Any, group: str, pattern: str) -> Any:
        typed = self.queueArguments()
        yield self._declareDead(channel, group)
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

    def _forget(self, consumer: _Consumer) -> Deferred[Any]:
        """
        Withdraw C{consumer}; fires when the broker confirmed the cancel (or
        the connection is gone, which cancels it too).
        """
        if consumer in self._consumers:
            self._consumers.remove(consumer)
        protocol, channel = self._protocol, self._channel
        if protocol is None or protocol.lost or consumer.startedOn is not protocol:
            return succeed(None)
        d = channel.basic_cancel(consumer_tag=consumer.tag)
        d.addErrback(lambda f: None)
        return d

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
        """
        See L{IBus.call}.  A call in flight when the connection to the
        broker is lost is sent again once the bus has reconnected, within
        its deadline: an idempotent one as it was, any other marked as sent
        again (C{x-resent}), which the service answering it takes as a
        redelivered call (L{CallContext.redelivered}).  A call is sent
        again so once; lost with a second connection, it fails with
        L{Unavailable}.
        """
        origin = origin if origin is not None else Origin(self.caller)
        now = self._clock.seconds()
        try:
            if len(method.encode("utf-8")) > 255:
                raise ValueError(f"a method name holds at most 255 bytes: {method[:40]!r}...")
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
                origin.caller or self.caller,
            )
        except (TypeError, ValueError):
            return fail()
        messageId, caller, trace = call.messageId, call.caller, call.correlationId
        priority, deadline, data = call.priority, call.deadline, call.data
        headers: dict[str, Any] = {
            "x-trace": trace,
            "x-deadline": millis(deadline),
            "x-schema": SCHEMA_VERSION,
        }
        if caller is not None:
            headers["x-caller"] = caller.hex
        if call.idempotencyKey is not None:
            headers["x-idempotency-key"] = call.idempotencyKey
        if call.isTraced:
            headers["x-traced"] = 1
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
            if pending.retry is not None and pending.retry.active():
                pending.retry.cancel()

        d = awaitAnswer(self._clock, service, method, deadline, abandon, call.span)
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
            retry=None,
            sentAgain=False,
        )
        self._calls[messageId] = pending
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
        call.properties.expiration = str(max(millis(remaining), 1))
        protocol = self._protocol
        assert protocol is not None
        call.sentOn = protocol
        protocol.publish(
            CALLS_CHANNEL,
            RPC_EXCHANGE,
            call.service.hex,
            call.properties,
            call.data,
            mandatory=True,
        )

    def _replied(self, delivery: Delivery) -> None:
        call = self._calls.pop(delivery.properties.correlation_id or "", None)
        if call is None or call.deferred.called:
            return  # timed out, cancelled or answered already
        self._heard[call.service] = self._clock.seconds()
        binding = replyBinding(call.service, call.method, call.messageId)
        try:
            result = resultOf(self._codec.decode(delivery.body, binding))
        except ServiceError as e:
            call.deferred.errback(e)
            return
        except Exception:
            self.log.failure("Unreadable reply to {method}", method=call.method)
            call.deferred.errback(
                MalformedMessage(f"service {call.service.hex} sent an unreadable reply")
            )
            return
        call.deferred.callback(result)

    def _returned(self, delivery: Delivery) -> None:
        if delivery.exchange != RPC_EXCHANGE:
            return
        call = self._calls.get(delivery.properties.correlation_id or "")
        if call is None or call.deferred.called:
            return
        now = self._clock.seconds()
        heard = self._heard.get(call.service)
        if (
            self.running
            and heard is not None
            and now - heard < self.reappearWithin
            and call.deadline - now > self.returnedRetryDelay
        ):
            # The service answered moments ago: its queue went with a
            # node (a transient queue on a cluster), and its replicas are
            # declaring it again on the nodes they reconnect to.  Nothing
            # was delivered, so sending it again is harmless, idempotent
            # or not.
            call.sentOn = None
            call.retry = self._clock.callLater(self.returnedRetryDelay, self._sendAgain, call)
            return
        self._calls.pop(call.messageId, None)
        call.deferred.errback(
            Unavailable(f"no service {call.service.hex} on this bus", {"service": call.service.hex})
        )

    def _sendAgain(self, call: _PendingCall) -> None:
        call.retry = None
        if call.deferred.called or self._calls.get(call.messageId) is not call:
            return
        if self.connected:
            self._send(call)
        elif self.running:
            self._waiting.append(call)
        else:
            self._calls.pop(call.messageId, None)
            call.deferred.errback(Unavailable("the bus is stopping"))

    def _publishReply(
        self, replyTo: str, correlationId: str | None, data: bytes, context: CallContext
    ) -> None:
        protocol = self._protocol
        if protocol is None or protocol.lost:
            self.log.warn("A reply was lost with the broker connection")
            return
        properties = Properties(
            message_id=newMessageId(),
            correlation_id=correlationId,
            headers={
                "x-caller": context.service.hex,
                "x-trace": context.correlationId,
                "x-schema": SCHEMA_VERSION,
            },
        )
        protocol.publish(CALLS_CHANNEL, "", replyTo, properties, data)

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
            origin = origin if origin is not None else Origin(self.caller)
            caller = origin.caller or self.caller
            trace = origin.correlationId or messageId
            data = encodeEvent(
                self._codec,
                event,
                messageId,
                caller,
                trace,
                payload,
                origin.traceParent,
                origin.traceState,
            )
        except (TypeError, ValueError):
            return fail()
        protocol = self._protocol
        if protocol is None or protocol.lost:
            return fail(Unavailable("not connected to the broker"))
        headers: dict[str, Any] = {
            "x-trace": trace,
            "x-schema": SCHEMA_VERSION,
        }
        if caller is not None:
            headers["x-caller"] = caller.hex
        if origin.traceParent is not None:
            headers["x-traced"] = 1
        properties = Properties(
            message_id=messageId,
            delivery_mode=2,
            timestamp=int(self._clock.seconds()),
            headers=headers,
        )
        d = protocol.publish(CHANNEL, EVENTS_EXCHANGE, event, properties, data, confirm=True)
        return self._confirmed(d, f"event {event} ({messageId})")

    def _confirmed(self, d: Deferred[None] | None, what: str) -> Deferred[None]:
        """
        C{d}, a publisher confirm, failing with L{Unavailable} if the broker
        has not confirmed within C{confirmTimeout} (a resource alarm blocks
        publishers, or a confirm went missing): whoever published it then
        publishes it again (same message id) or gives it back.
        """
        assert d is not None

        def timedOut(result: Any, timeout: float) -> Any:
            return Failure(Unavailable(f"the broker did not confirm {what} within {timeout:g}s"))

        return d.addTimeout(self.confirmTimeout, self._clock, onTimeoutCancel=timedOut)

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
                "x-original-routing-key": eventOf(delivery),
                "x-dead-lettered-at": millis(self._clock.seconds()),
            }
        )
        properties = Properties(
            message_id=original.message_id or newMessageId(),
            delivery_mode=2,
            timestamp=original.timestamp,
            type=original.type,
            headers=headers,
        )
        # Mandatory: if the dead-letter queue is gone, the confirm fails and
        # the original is given back rather than acknowledged into nothing.
        d = protocol.publish(
            CHANNEL, DEAD_EXCHANGE, group, properties, delivery.body, mandatory=True, confirm=True
        )
        return self._confirmed(d, f"dead letter {properties.message_id}")

    def _deadLetterAndSettle(
        self,
        consumer: _Consumer,
        protocol: AMQPConnection,
        delivery: Delivery,
        group: str | None,
        reason: str,
        attempts: int,
    ) -> None:
        """
        Dead-letter C{delivery} into C{group}'s queue, then acknowledge it;
        without a group (a private subscription), just acknowledge it.
        """
        if group is None:
            protocol.ack(delivery.channel, delivery.deliveryTag)
            consumer.finished()
            return
        d = self._deadLetter(delivery, group, consumer.queueName(), reason, attempts)
        d.addCallback(_countDeadLetter, group)
        self._settleAfter(d, consumer, protocol, delivery)

    def _publishCopy(
        self,
        protocol: AMQPConnection,
        delivery: Delivery,
        queue: str,
        headers: Mapping[str, Any],
    ) -> Deferred[None]:
        """
        Publish a copy of C{delivery} straight to C{queue} (through the
        default exchange), with C{headers} added.
        """
        original = delivery.properties
        properties = Properties(
            content_type=original.content_type,
            message_id=original.message_id or newMessageId(),
            delivery_mode=2,
            timestamp=original.timestamp,
            type=original.type,
            headers={**(original.headers or {}), **headers},
        )
        d = protocol.publish(
            CHANNEL, "", queue, properties, delivery.body, mandatory=True, confirm=True
        )
        return self._confirmed(d, f"a copy of {properties.message_id}")

    def _settleAfter(
        self,
        d: Deferred[None],
        consumer: _Consumer,
        protocol: AMQPConnection,
        delivery: Delivery,
    ) -> None:
        """
        Once what C{d} stored is confirmed, acknowledge C{delivery}; if it
        was not stored, give C{delivery} back to its queue.
        """

        def settled(result: Any) -> None:
            if isinstance(result, Failure):
                self.log.warn(
                    "Giving back {messageId}: {why}",
                    messageId=delivery.properties.message_id,
                    why=result.getErrorMessage(),
                )
                protocol.reject(delivery.channel, delivery.deliveryTag, requeue=True)
            else:
                protocol.ack(delivery.channel, delivery.deliveryTag)
            consumer.finished()

        d.addBoth(settled)
