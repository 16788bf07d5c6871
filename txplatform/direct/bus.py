# -*- test-case-name: tests.direct.test_bus -*-
"""
The direct transport: calls go straight to the callee over the secure
channel, at an address derived from its id (L{AddressBook}), with no broker
in between.

A process serving a service listens at its own address, behind the
channel's handshake: only peers whose keys are trusted reach it, and each
call's caller is the peer the channel authenticated.  Calls it receives are
served with the in-process bus's rules (priority order, prefetch, dropped
past their deadline, typed errors), the payload codec checking each payload
against the call it came with.  A caller keeps one channel per replica
(L{twisted.application.internet.ClientService}: reconnecting with backoff),
picks replicas in turn, and sends again the calls whose channel broke
(under the same message id; those not idempotent marked as sent again).

Events are not carried here: a durable fan-out is what a broker is for, so
C{publish} and C{subscribe} go to the event bus given (AMQP in
production), and fail without one.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, Mapping

from attrs import define, evolve, field
from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import IService, MultiService
from twisted.internet.defer import Deferred, fail, gatherResults, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint, serverFromString
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ..busrules import awaitAnswer, prepareCall, resultOf
from ..channel.forward import ForwardedFactory
from ..channel.protocol import ChannelClientEndpoint, ChannelServerEndpoint, ChannelSettings
from ..codec import JSONCodec, replyBinding
from ..context import EventContext, Origin
from ..errors import DeadlineExceeded, ServiceError, Unavailable, errorToWire
from ..interfaces import IBus, IPayloadCodec, ISubscription
from ..localbus import LocalBus
from ..once import Once
from ..serviceid import ServiceId
from .addresses import AddressBook
from .liveness import Liveness, LivenessEndpoint
from .wire import CallFrame, DirectProtocol, FrameError, ReplyFrame, parseFrame

__all__ = ["DirectBus", "MalformedFrame"]


@define(eq=False)
class _Outgoing:
    """
    A call sent and not yet answered.
    """

    frame: CallFrame
    service: ServiceId
    idempotent: bool
    deferred: Deferred = field(repr=False)
    protocol: DirectProtocol | None = None
    sentAgain: bool = False


@define
class MalformedFrame:
    """
    A frame that could not be read, kept for inspection (the direct
    transport's dead letters).
    """

    peer: str
    reason: str
    size: int
    at: float


@implementer(IBus)
class DirectBus(MultiService):
    """
    An L{IBus} whose calls go directly to the callee over secure channels.

    @param settings: This process's identity (its service id is the
        caller of every call it makes, and the only service it can serve),
        the trusted keys, and the channel's parameters.
    @param addresses: Where services are.
    @param codec: Encodes payloads (the bus keys' encrypting codec).
    @param events: The bus for events, if any.
    @param listen: An endpoint description to listen on instead of this
        service's derived address (replicas sharing a host).
    @param behindSidecar: Listen (on C{listen}, a UNIX socket only the
        sidecar reaches) for calls whose channels the sidecar ended
        (L{txplatform.channel.forward}), instead of ending them here.
    @param liveness: How soon a channel to a vanished peer is closed.
    @param maxWaiting: Calls waiting for a free worker beyond which new
        ones are refused at once with L{Unavailable}: with no broker to
        hold them, an overloaded replica must shed rather than grow.
    """

    log = Logger()
    name = "bus"

    def __init__(
        self,
        reactor: Any,
        settings: ChannelSettings,
        addresses: AddressBook,
        codec: IPayloadCodec | None = None,
        events: IBus | None = None,
        defaultTimeout: float = 10.0,
        callPrefetch: int = 64,
        listen: str | None = None,
        connectTimeout: float = 5.0,
        keepMalformed: int = 100,
        behindSidecar: bool = False,
        maxWaiting: int = 1000,
        liveness: Liveness = Liveness(),
    ) -> None:
        super().__init__()
        self._reactor = reactor
        self._settings = settings
        self.caller = settings.identity.serviceId
        self.addresses = addresses
        self._codec = codec if codec is not None else JSONCodec()
        self._events = events
        if events is not None and IService.providedBy(events):
            events.setServiceParent(self)  # type: ignore[attr-defined]
        self.defaultTimeout = defaultTimeout
        # Serves the calls that arrive, with the in-process bus's rules.
        self._local = LocalBus(
            reactor, codec=self._codec, defaultTimeout=defaultTimeout, callPrefetch=callPrefetch
        )
        self._listenDescription = listen
        self._listen = Once(self._startListening)
        self.behindSidecar = behindSidecar
        self.maxWaiting = maxWaiting
        self.port: Any = None
        self._connectTimeout = connectTimeout
        self._liveness = liveness
        self._peers: dict[tuple[str, int], ClientService] = {}
        self._turn: dict[ServiceId, int] = {}
        self._outgoing: dict[str, _Outgoing] = {}
        self.malformed: deque[MalformedFrame] = deque(maxlen=keepMalformed)
        #: Every open channel, both ways, and what waits for each to close.
        self.connections: dict[DirectProtocol, list[Deferred[None]]] = {}

    # Lifecycle

    def whenStarted(self) -> Deferred[None]:
        return succeed(None)

    @property
    def connected(self) -> bool:
        return self.running

    def stopService(self) -> Deferred[None]:
        for outgoing in list(self._outgoing.values()):
            if not outgoing.deferred.called:
                outgoing.deferred.errback(Unavailable("the bus is stopping"))
        self._outgoing.clear()
        stopping = [super().stopService()]
        port, self.port = self.port, None
        if port is not None:
            stopping.append(port.stopListening())
        # Channels accepted stay open when the port closes: close them too.
        for protocol, waiting in self.connections.items():
            closed: Deferred[None] = Deferred()
            waiting.append(closed)
            stopping.append(closed)
            protocol.transport.loseConnection()
        return gatherResults([d for d in stopping if d is not None]).addCallback(lambda _: None)

    # Serving

    def serve(
        self,
        service: ServiceId,
        handlers: Mapping[str, Callable[..., Any]],
        prefetch: int | None = None,
    ) -> Deferred[ISubscription]:
        if service != self.caller:
            return fail(
                ValueError(
                    f"this process speaks for service {self.caller.hex}"
                    f" (its identity): it cannot serve {service.hex}"
                )
            )
        d = self._listen()
        d.addCallback(lambda _: self._local.serve(service, handlers, prefetch))
        return d

    def listenAddress(self) -> str:
        """
        The endpoint this process listens on: its service's derived address,
        unless told otherwise.
        """
        if self._listenDescription is not None:
            return self._listenDescription
        host = self.addresses.derivedHost(self.caller)
        return f"tcp:{self.addresses.port}:interface={host}"

    def _startListening(self) -> Deferred[Any]:
        factory: Any = Factory.forProtocol(lambda: DirectProtocol(self))
        endpoint: Any = serverFromString(self._reactor, self.listenAddress())
        if self.behindSidecar:
            factory = ForwardedFactory(factory)
        else:
            endpoint = ChannelServerEndpoint(endpoint, self._settings)

        def listening(port: Any) -> Any:
            self.port = port
            self.log.info(
                "Service {service} takes direct calls on {address}",
                service=self.caller.hex,
                address=port.getHost(),
            )
            return port

        return endpoint.listen(factory).addCallback(listening)

    # Frames

    def connectionMade(self, protocol: DirectProtocol) -> None:
        self.connections[protocol] = []

    def frameReceived(self, protocol: DirectProtocol, body: bytes) -> None:
        try:
            frame = parseFrame(body)
        except FrameError as e:
            self._malformed(protocol, str(e), len(body))
            return
        if isinstance(frame, CallFrame):
            self._incomingCall(protocol, frame)
        else:
            self._incomingReply(protocol, frame)

    def frameTooLong(self, protocol: DirectProtocol, length: int) -> None:
        self._malformed(protocol, f"a frame of {length} bytes is too long", length)
        protocol.transport.loseConnection()

    def _malformed(self, protocol: DirectProtocol, reason: str, size: int) -> None:
        peer = protocol.transport.peerServiceId
        self.log.error(
            "Dead-lettered a malformed frame from service {peer}: {reason}",
            peer=peer.hex if peer else "?",
            reason=reason,
        )
        self.malformed.append(
            MalformedFrame(peer.hex if peer else "?", reason, size, self._reactor.seconds())
        )

    def _incomingCall(self, protocol: DirectProtocol, frame: CallFrame) -> None:
        # The caller is who the channel authenticated; the payload's binding
        # names its caller too, so the codec refuses one sealed by another.
        caller = protocol.transport.peerServiceId
        waiting = self._local.pendingCalls(frame.service)
        if waiting >= self.maxWaiting:
            self._answerError(
                protocol,
                frame,
                Unavailable(
                    f"service {frame.service.hex} is overloaded: {waiting} calls waiting",
                    {"service": frame.service.hex},
                ),
            )
            return
        d = self._local.accept(
            frame.service,
            frame.method,
            frame.payload,
            frame.messageId,
            caller,
            frame.correlationId,
            frame.deadlineMillis,
            frame.priority,
            frame.idempotencyKey,
            frame.isTraced,
            redelivered=frame.resent,
        )

        def failed(failure: Failure) -> bytes | None:
            if failure.check(DeadlineExceeded):
                return None  # the caller has given up too
            error = failure.value
            if not isinstance(error, ServiceError):
                self.log.failure("Serving a direct call failed", failure)
                error = Unavailable("the call could not be served")
            return self._codec.encode(
                {"error": errorToWire(error)},
                replyBinding(frame.service, frame.method, frame.messageId),
            )

        def answer(data: bytes | None) -> None:
            if data is not None and protocol.open:
                protocol.send(ReplyFrame(frame.messageId, data))

        d.addErrback(failed).addCallback(answer)

    def _answerError(self, protocol: DirectProtocol, frame: CallFrame, error: ServiceError) -> None:
        data = self._codec.encode(
            {"error": errorToWire(error)},
            replyBinding(frame.service, frame.method, frame.messageId),
        )
        protocol.send(ReplyFrame(frame.messageId, data))

    def _incomingReply(self, protocol: DirectProtocol, frame: ReplyFrame) -> None:
        outgoing = self._outgoing.get(frame.messageId)
        if outgoing is None or outgoing.protocol is not protocol:
            self.log.debug("A reply nobody waits for: {messageId}", messageId=frame.messageId)
            return
        del self._outgoing[frame.messageId]
        d = outgoing.deferred
        if d.called:
            return
        try:
            answer = self._codec.decode(
                frame.payload,
                replyBinding(outgoing.service, outgoing.frame.method, frame.messageId),
            )
            result = resultOf(answer)
        except ServiceError as e:
            d.errback(e)
            return
        d.callback(result)

    def connectionLost(self, protocol: DirectProtocol, reason: Any) -> None:
        for waiting in self.connections.pop(protocol, []):
            waiting.callback(None)
        for messageId, outgoing in list(self._outgoing.items()):
            if outgoing.protocol is not protocol:
                continue
            outgoing.protocol = None
            if outgoing.deferred.called:
                del self._outgoing[messageId]
            elif self.running and protocol.heard and not outgoing.sentAgain:
                # Sent again, once (to the next replica in turn, once
                # ClientService has seen the loss too), under the same
                # message id; a call that is not idempotent marked so, as
                # a call the service may have run already: a method that
                # must not run twice answers it from its reply log.  Not
                # over a channel the peer never spoke on: that may be the
                # peer refusing this process's identity (the last message
                # of the handshake is the initiator's), which sending again
                # would only repeat.
                outgoing.sentAgain = True
                if not outgoing.idempotent:
                    outgoing.frame = evolve(outgoing.frame, resent=True)
                self._reactor.callLater(0, self._send, outgoing)
            else:
                del self._outgoing[messageId]
                outgoing.deferred.errback(
                    Unavailable(
                        f"the connection to service {outgoing.service.hex} broke before"
                        f" its answer to {outgoing.frame.method}",
                        {"service": outgoing.service.hex},
                    )
                )

    # Calling

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
        if not self.running:
            return fail(Unavailable("the bus is not running"))
        origin = origin if origin is not None else Origin()
        now = self._reactor.seconds()
        try:
            addresses = self.addresses.addressesOf(service)
            # The caller is who this process's channels authenticate.
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
                self.caller,
            )
        except (TypeError, ValueError):
            return fail()
        messageId = call.messageId
        frame = CallFrame(
            service,
            call.priority,
            call.deadlineMillis,
            messageId,
            call.correlationId,
            method,
            call.data,
            call.idempotencyKey,
            call.isTraced,
        )
        d = awaitAnswer(
            self._reactor,
            service,
            method,
            call.deadline,
            lambda d: self._outgoing.pop(messageId, None),
            call.span,
        )
        outgoing = _Outgoing(frame, service, idempotent, d)
        self._outgoing[messageId] = outgoing
        self._send(outgoing, addresses)
        return d

    def _send(self, outgoing: _Outgoing, addresses: list[tuple[str, int]] | None = None) -> None:
        service = outgoing.service
        if addresses is None:
            addresses = self.addresses.addressesOf(service)
        turn = self._turn.get(service, 0)
        self._turn[service] = turn + 1
        order = addresses[turn % len(addresses) :] + addresses[: turn % len(addresses)]
        self._sendVia(outgoing, order, [])

    def _sendVia(
        self, outgoing: _Outgoing, order: list[tuple[str, int]], errors: list[str]
    ) -> None:
        if outgoing.deferred.called:
            self._outgoing.pop(outgoing.frame.messageId, None)
            return
        if not order:
            self._outgoing.pop(outgoing.frame.messageId, None)
            outgoing.deferred.errback(
                Unavailable(
                    f"service {outgoing.service.hex} is unreachable: {'; '.join(errors)}",
                    {"service": outgoing.service.hex},
                )
            )
            return
        order = self._connectedFirst(outgoing.service, order)
        host, port = order[0]
        peer = self._peer(outgoing.service, host, port)

        def connected(protocol: Any) -> None:
            if outgoing.deferred.called:
                self._outgoing.pop(outgoing.frame.messageId, None)
                return
            # ClientService hands out a proxy: this is the protocol behind it,
            # the one replies arrive on.
            channel = protocol.itself()
            if not channel.open:
                # Lost, and ClientService not told yet: ask again shortly.
                self._reactor.callLater(0.05, self._sendVia, outgoing, order, errors)
                return
            outgoing.protocol = channel
            protocol.send(outgoing.frame)

        def failed(failure: Failure) -> None:
            errors.append(f"{host}:{port}: {failure.getErrorMessage()}")
            # On the next turn: ClientService fires its waiters before it
            # has finished its own transition.
            self._reactor.callLater(0, self._sendVia, outgoing, order[1:], errors)

        peer.whenConnected(failAfterFailures=1).addCallbacks(connected, failed)

    def _connectedFirst(
        self, service: ServiceId, order: list[tuple[str, int]]
    ) -> list[tuple[str, int]]:
        """
        C{order} with the first replica whose channel is up in front: one
        being connected again (its host gone, or restarting) would hold the
        call until it connects or fails, while another could answer now.
        """
        for i, (host, port) in enumerate(order):
            waiting = self._peer(service, host, port).whenConnected(failAfterFailures=1)
            if waiting.called:
                return [order[i], *order[:i], *order[i + 1 :]]
            # Not up: stop waiting (ClientService's later answer is ignored).
            waiting.addErrback(lambda _: None)
            waiting.cancel()
        return order

    def _peer(self, service: ServiceId, host: str, port: int) -> ClientService:
        key = (host, port)
        peer = self._peers.get(key)
        if peer is None:
            endpoint = ChannelClientEndpoint(
                LivenessEndpoint(
                    TCP4ClientEndpoint(self._reactor, host, port, timeout=self._connectTimeout),
                    self._liveness,
                ),
                self._settings,
                service,
            )
            peer = ClientService(
                endpoint,
                Factory.forProtocol(lambda: DirectProtocol(self)),
                retryPolicy=backoffPolicy(initialDelay=0.2, maxDelay=10.0),
                clock=self._reactor,
            )
            peer.setServiceParent(self)
            self._peers[key] = peer
        return peer

    # Events: the event bus's

    def publish(
        self,
        event: str,
        payload: Any,
        origin: Origin | None = None,
        messageId: str | None = None,
    ) -> Deferred[None]:
        if self._events is None:
            return fail(Unavailable("the direct transport carries calls only: no event bus"))
        return self._events.publish(event, payload, origin=origin, messageId=messageId)

    def subscribe(
        self,
        pattern: str,
        handler: Callable[[Any, EventContext], Any],
        group: str | None = None,
        prefetch: int | None = None,
        onGap: Callable[[], object] | None = None,
    ) -> Deferred[ISubscription]:
        if self._events is None:
            return fail(Unavailable("the direct transport carries calls only: no event bus"))
        return self._events.subscribe(pattern, handler, group, prefetch=prefetch, onGap=onGap)
