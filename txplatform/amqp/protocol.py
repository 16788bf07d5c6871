# -*- test-case-name: tests.amqp.test_protocol -*-
"""
An AMQP 0-9-1 connection: txamqp's client, with the hot path done here.

txamqp negotiates the connection, opens channels and runs the synchronous
control methods (declarations, bindings, qos, consume, confirm.select).
Every message, though, goes through this subclass's own framing
(L{txplatform.amqp.frames}): publishing is one write, and incoming
deliveries, returns, get-ok replies and publisher confirms are parsed
straight from the receive buffer and handed to callbacks on the spot,
without txamqp's per-frame Deferreds and queues.
"""

from __future__ import annotations

import struct
from collections import defaultdict
from typing import Any, Callable

from twisted.internet.defer import Deferred, fail, inlineCallbacks
from twisted.internet.error import ConnectionLost
from twisted.logger import Logger
from twisted.python.failure import Failure
from txamqp.client import Closed, TwistedDelegate
from txamqp.protocol import AMQClient

from . import frames
from .frames import Delivery, Properties

__all__ = [
    "ACCESS_REFUSED",
    "NOT_ALLOWED",
    "AMQPConnection",
    "AMQPDelegate",
    "BrokerClosed",
    "PublishNacked",
    "PublishReturned",
    "NotConnected",
]

_HEAD = struct.Struct("!BHI")
_CLASS_METHOD = struct.Struct("!HH")

#: The largest frame we accept, and ask for when the broker sets no limit.
FRAME_MAX = 131072


class PublishNacked(Exception):
    """
    The broker refused to take responsibility for a published message.
    """


class PublishReturned(Exception):
    """
    The broker could not route a mandatory message to any queue.
    """


class NotConnected(Exception):
    """
    There is no connection to write to.
    """


#: connection.close reply codes the broker answers a handshake with: a
#: refused login (wrong user name or password), and a virtual host that does
#: not exist or that the user may not open.
ACCESS_REFUSED = 403
NOT_ALLOWED = 530


class BrokerClosed(Exception):
    """
    The broker closed the connection (connection.close), saying why.

    @ivar code: Its reply code: L{ACCESS_REFUSED}, L{NOT_ALLOWED}, 320 for
        an operator's or a shutdown's C{CONNECTION_FORCED}...
    @ivar text: Its reply text, which starts with the code's name (as in
        C{ACCESS_REFUSED - Login was refused ...}).
    """

    def __init__(self, code: int, text: str) -> None:
        super().__init__(code, text)
        self.code = code
        self.text = text

    def __str__(self) -> str:
        return f"{self.code} {self.text}"


class AMQPDelegate(TwistedDelegate):
    """
    Handles the control methods the broker sends.

    @ivar clientProperties: Sent in connection.start-ok: the capabilities we
        use and a name that shows in the broker's connection list.
    """

    log = Logger()

    def __init__(self, clientProperties: dict[str, Any]) -> None:
        super().__init__()
        self.clientProperties = clientProperties

    def connection_start(self, ch: Any, msg: Any) -> None:
        # txamqp's table encoder knows only strings and integers; the
        # capabilities are a nested table of booleans, so start-ok goes out
        # through our own encoder.
        args = (
            frames.encodeTable(self.clientProperties)
            + frames._shortstr(self.client.mechanism)
            + struct.pack("!I", len(self.client.response))
            + self.client.response
            + frames._shortstr(self.client.locale)
        )
        payload = _CLASS_METHOD.pack(10, 11) + args
        self.client.transport.write(frames._frame(frames.FRAME_METHOD, 0, payload))

    def connection_tune(self, ch: Any, msg: Any) -> None:
        # txamqp takes the broker's frame_max as it is, but 0 means "no
        # limit" there, and a huge one would let a single frame claim any
        # amount of memory: settle on the smaller of the two.
        frameMax = min(msg.frame_max or FRAME_MAX, FRAME_MAX)
        self.client.MAX_LENGTH = frameMax
        ch.connection_tune_ok(msg.channel_max, frameMax, self.client.heartbeatInterval)
        self.client.started.fire()

    def connection_close(self, ch: Any, msg: Any) -> None:
        # txamqp fails whatever waits (the handshake) with the raw method:
        # keep the broker's reason where logIn finds it.
        self.client.closedBy = BrokerClosed(msg.reply_code, msg.reply_text)
        super().connection_close(ch, msg)

    def channel_close(self, ch: Any, msg: Any) -> None:
        # A channel error means our state is off (a declaration refused,
        # publishing to an exchange that went away): start again from a new
        # connection rather than carry on half-working.
        self.log.error(
            "The broker closed channel {channel}: {code} {text}",
            channel=ch.id,
            code=msg.reply_code,
            text=msg.reply_text,
        )
        super().channel_close(ch, msg)
        self.client.transport.loseConnection()

    def connection_blocked(self, ch: Any, msg: Any) -> None:
        # A resource alarm (memory, disk): the broker holds our publishes
        # until it clears; their confirms time out meanwhile (see the bus).
        self.log.warn("The broker blocks publishing: {reason}", reason=msg.reason)
        self.client.blocked = True

    def connection_unblocked(self, ch: Any, msg: Any) -> None:
        self.log.info("The broker accepts publishing again")
        self.client.blocked = False

    def basic_cancel(self, ch: Any, msg: Any) -> None:
        # The broker cancelled a consumer (its queue was deleted): reconnect,
        # which declares the queue again and consumes anew.
        self.log.warn("The broker cancelled consumer {tag}", tag=msg.consumer_tag)
        self.client.transport.loseConnection()


class AMQPConnection(AMQClient):
    """
    An AMQP connection with a fast path for messages.

    @ivar onDeliver: Maps consumer tags to callables taking a L{Delivery}.
    @ivar onReturn: Called with each L{Delivery} the broker returned.
    @ivar onLost: Called once with the reason when the connection is gone.
    @ivar onMade: Called with the connection once it is made (before the
        AMQP handshake, which the bus then runs).
    @ivar closedBy: The L{BrokerClosed} the broker closed the connection
        with, if it did.
    """

    log = Logger()

    def __init__(self, delegate: AMQPDelegate, vhost: str, spec: Any, heartbeat: int, clock: Any):
        super().__init__(delegate, vhost, spec, heartbeat=heartbeat, clock=clock)
        self._buffer = bytearray()
        self._assembling: dict[int, tuple[Delivery, list[bytes], int]] = {}
        self.onDeliver: dict[str, Callable[[Delivery], None]] = {}
        self.onReturn: Callable[[Delivery], None] = lambda delivery: None
        self.onLost: Callable[[Failure], None] = lambda reason: None
        self.onMade: Callable[[AMQPConnection], None] = lambda protocol: None
        self._gets: dict[int, list[Deferred[Delivery | None]]] = defaultdict(list)
        self._publishSequence: dict[int, int] = {}
        self._unconfirmed: dict[int, dict[int, Deferred[None]]] = {}
        # Confirmed mandatory publishes by message id, and those the broker
        # returned: a return comes just before the confirm of its message.
        self._returnable: dict[int, dict[str, int]] = {}
        self._returnedSequences: dict[int, dict[int, str]] = {}
        self._lastReceived = clock.seconds()
        self.lost = False
        self.blocked = False
        self.closedBy: BrokerClosed | None = None

    def attach(
        self, onReturn: Callable[[Delivery], None], onLost: Callable[[Failure], None]
    ) -> AMQPConnection:
        """
        Set the callbacks for returned messages and for the end of the
        connection; return the connection itself (ClientService hands out a
        proxy, on which setting attributes would not reach it).
        """
        self.onReturn = onReturn
        self.onLost = onLost
        return self

    def connectionMade(self) -> None:
        super().connectionMade()
        self.onMade(self)

    def logIn(self, username: str, password: str, timeout: float) -> Deferred[Any]:
        """
        The handshake: log in (PLAIN), tune, open the virtual host.

        @param timeout: Seconds the whole handshake may take (heartbeats only
            start once it is done).
        @return: Fires once the connection is open; fails with
            L{BrokerClosed} when the broker closes it on the way (a refused
            login is a 403 C{connection.close}, as the client properties
            announce C{authentication_failure_close}; a missing virtual host
            a 530), with the reason the connection was lost (a TLS
            certificate that does not check out), or with
            L{twisted.internet.defer.TimeoutError}.
        """
        response = b"\0" + username.encode("utf-8") + b"\0" + password.encode("utf-8")
        d = self.start(response, mechanism="PLAIN", locale="en_US").addTimeout(timeout, self.clock)

        def why(failure: Failure) -> Failure:
            if self.closedBy is not None:
                return Failure(self.closedBy)
            # txamqp wraps the loss: Closed(<the Failure connectionLost got>).
            if failure.check(Closed) and failure.value.args:
                inner = failure.value.args[0]
                if isinstance(inner, Failure):
                    return inner
            return failure

        return d.addErrback(why)

    # The protocol header: txamqp writes AMQP 1 1 0 9; this is 0-9-1's.

    def send_init_string(self) -> None:
        self.transport.write(b"AMQP\x00\x00\x09\x01")

    # Receiving

    def dataReceived(self, data: bytes) -> None:
        if not self.frame_mode:
            return super().dataReceived(data)
        self._lastReceived = self.clock.seconds()
        buffer = self._buffer
        buffer += data
        offset = 0
        end = len(buffer)
        while end - offset >= 8:
            kind, channel, size = _HEAD.unpack_from(buffer, offset)
            frameEnd = offset + 7 + size
            if frameEnd >= end:
                if size > self.MAX_LENGTH + 8:
                    self._protocolError(f"a frame of {size} bytes, over the negotiated maximum")
                    return
                break
            if buffer[frameEnd] != frames.FRAME_END:
                self._protocolError("a frame without its end marker")
                return
            payload = bytes(buffer[offset + 7 : frameEnd])
            start, offset = offset, frameEnd + 1
            try:
                handled = self._fastFrame(kind, channel, payload)
            except (frames.FrameError, struct.error, IndexError, UnicodeError) as e:
                self._protocolError(f"a malformed frame: {e}")
                return
            if not handled:
                self.frame_received(self._unpack_frame(bytes(buffer[start:offset])))
            if self.transport is None or self.transport.disconnecting:
                break
        del buffer[:offset]

    def _protocolError(self, why: str) -> None:
        self.log.error("Broker connection dropped: {why}", why=why)
        self._buffer.clear()
        self.transport.abortConnection()

    def _fastFrame(self, kind: int, channel: int, payload: bytes) -> bool:
        """
        Handle a frame of the hot path; C{False} hands it to txamqp.
        """
        if kind == frames.FRAME_METHOD:
            classId, methodId = _CLASS_METHOD.unpack_from(payload, 0)
            if classId != frames.BASIC:
                return False
            args = payload[4:]
            if methodId == frames.DELIVER:
                self._assembling[channel] = (frames.parseDeliver(channel, args), [], 0)
            elif methodId == frames.GET_OK:
                self._assembling[channel] = (frames.parseGetOk(channel, args), [], 0)
            elif methodId == frames.RETURN:
                self._assembling[channel] = (frames.parseReturn(channel, args), [], 0)
            elif methodId == frames.ACK:
                self._confirmed(channel, *frames.parseAck(args), None)
            elif methodId == frames.NACK:
                self._confirmed(channel, *frames.parseNack(args), PublishNacked)
            elif methodId == 72:  # get-empty
                waiters = self._gets.get(channel)
                if waiters:
                    waiters.pop(0).callback(None)
            else:
                return False
            return True
        if kind == frames.FRAME_HEADER:
            assembling = self._assembling.get(channel)
            if assembling is None:
                return False
            delivery = assembling[0]
            try:
                delivery.bodySize, delivery.properties = frames.decodeHeader(payload)
            except frames.MalformedProperties as e:
                # Someone published headers we cannot read: that message is
                # refused, the connection and the other messages carry on.
                delivery.bodySize, delivery.malformed = e.size, str(e)
            if delivery.bodySize == 0:
                self._complete(channel)
            return True
        if kind == frames.FRAME_BODY:
            assembling = self._assembling.get(channel)
            if assembling is None:
                return False
            delivery, chunks, received = assembling
            chunks.append(payload)
            received += len(payload)
            if received >= delivery.bodySize:
                self._complete(channel)
            else:
                self._assembling[channel] = (delivery, chunks, received)
            return True
        if kind == frames.FRAME_HEARTBEAT:
            return True
        return False

    def _complete(self, channel: int) -> None:
        delivery, chunks, _ = self._assembling.pop(channel)
        delivery.body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        if delivery.consumerTag:
            handler = self.onDeliver.get(delivery.consumerTag)
            if handler is None:
                # A consumer cancelled while this was on its way: give it back.
                self.log.warn("A delivery for unknown consumer {tag}", tag=delivery.consumerTag)
                if delivery.consumerTag != "replies":
                    self.reject(channel, delivery.deliveryTag, requeue=True)
                return
            handler(delivery)
        elif delivery.replyCode:
            sequence = self._returnable.get(channel, {}).pop(
                delivery.properties.message_id or "", None
            )
            if sequence is not None:
                self._returnedSequences[channel][sequence] = delivery.replyText
            else:
                self.onReturn(delivery)
        else:
            waiters = self._gets.get(channel)
            if waiters:
                waiters.pop(0).callback(delivery)

    def check_heartbeat(self) -> None:
        # txamqp reschedules its check at every frame it processes; frames of
        # the fast path do not go through it, so look at the last arrival and
        # check again when the limit would be reached from there.
        limit = self.heartbeatInterval * self.MAX_UNSEEN_HEARTBEAT
        remaining = limit - (self.clock.seconds() - self._lastReceived)
        if remaining > 0:
            if self.checkHB is not None and self.checkHB.active():
                self.checkHB.cancel()
            self.checkHB = self.clock.callLater(remaining, self.check_heartbeat)
            return
        self.log.warn("No heartbeat from the broker for {limit}s: dropping", limit=limit)
        super().check_heartbeat()

    # Sending

    def startConfirming(self, channel: int) -> None:
        """
        Count publications on C{channel}, which is in confirm mode.
        """
        self._publishSequence[channel] = 0
        self._unconfirmed[channel] = {}
        self._returnable[channel] = {}
        self._returnedSequences[channel] = {}

    def publish(
        self,
        channel: int,
        exchange: str,
        routingKey: str,
        properties: Properties,
        body: bytes,
        mandatory: bool = False,
        confirm: bool = False,
    ) -> Deferred[None] | None:
        """
        Publish a message.

        @param confirm: Return a Deferred that fires when the broker confirms
            the message (the channel must be confirming).  With C{mandatory},
            it fails with L{PublishReturned} if no queue took the message
            (which needs a message id).
        """
        if self.lost or self.transport is None:
            return fail(NotConnected("not connected to the broker")) if confirm else None
        self.transport.write(
            frames.publish(
                channel, exchange, routingKey, properties, body, self.MAX_LENGTH, mandatory
            )
        )
        sequence = self._publishSequence.get(channel)
        if sequence is None:
            if confirm:
                raise ValueError(f"channel {channel} is not in confirm mode")
            return None
        sequence += 1
        self._publishSequence[channel] = sequence
        if not confirm:
            return None
        d: Deferred[None] = Deferred()
        self._unconfirmed[channel][sequence] = d
        if mandatory:
            if not properties.message_id:
                raise ValueError("a confirmed mandatory message needs a message id")
            self._returnable[channel][properties.message_id] = sequence
        return d

    def unconfirmedCount(self) -> int:
        """
        Messages published in confirm mode that the broker has not
        confirmed (or refused) yet.
        """
        return sum(len(pending) for pending in self._unconfirmed.values())

    def _confirmed(
        self, channel: int, deliveryTag: int, multiple: bool, error: type[Exception] | None
    ) -> None:
        pending = self._unconfirmed.get(channel)
        if not pending:
            return
        if multiple:
            settled = []
            for sequence in pending:
                if sequence > deliveryTag:
                    break
                settled.append(sequence)
        else:
            settled = [deliveryTag] if deliveryTag in pending else []
        returned = self._returnedSequences.get(channel, {})
        returnable = self._returnable.get(channel)
        for sequence in settled:
            d = pending.pop(sequence)
            why = returned.pop(sequence, None)
            if returnable and why is None:
                for messageId, s in list(returnable.items()):
                    if s == sequence:
                        del returnable[messageId]
                        break
            if d.called:
                continue  # the publisher stopped waiting (a timeout)
            if error is not None:
                d.errback(error(f"the broker refused message {sequence}"))
            elif why is not None:
                d.errback(PublishReturned(f"no queue took message {sequence}: {why}"))
            else:
                d.callback(None)

    def ack(self, channel: int, deliveryTag: int, multiple: bool = False) -> None:
        if not self.lost and self.transport is not None:
            self.transport.write(frames.ack(channel, deliveryTag, multiple))

    def reject(self, channel: int, deliveryTag: int, requeue: bool) -> None:
        if not self.lost and self.transport is not None:
            self.transport.write(frames.reject(channel, deliveryTag, requeue))

    def get(self, channel: int, queue: str) -> Deferred[Delivery | None]:
        """
        basic.get without automatic acknowledgement: the message, or None
        when the queue is empty.
        """
        if self.lost or self.transport is None:
            return fail(NotConnected("not connected to the broker"))
        d: Deferred[Delivery | None] = Deferred()
        self._gets[channel].append(d)
        args = (
            b"\x00\x00" + frames._shortstr(queue) + b"\x00"  # reserved, queue, no-ack=0
        )
        payload = _CLASS_METHOD.pack(frames.BASIC, 70) + args
        self.transport.write(frames._frame(frames.FRAME_METHOD, channel, payload))
        return d

    # Losing the connection

    @inlineCallbacks
    def closeCleanly(self, timeout: float) -> Any:
        """
        Say goodbye (connection.close), wait up to C{timeout} seconds for
        close-ok, then drop the connection whatever the answer.

        (txamqp's own C{close(within=...)} leaves its timer behind when the
        connection is lost while it waits.)
        """
        if self.lost or self.closed:
            return
        try:
            channel0 = yield self.channel(0)
            yield channel0.connection_close(reply_code=200, reply_text="goodbye").addTimeout(
                timeout, self.clock
            )
        except Exception:
            pass  # gone or silent: closed all the same below
        if not self.lost and self.transport is not None:
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure) -> None:
        self.lost = True
        lost = Failure(ConnectionLost("the connection to the broker was lost"))
        for pending in self._unconfirmed.values():
            for d in pending.values():
                if not d.called:
                    d.errback(lost)
            pending.clear()
        for waiters in self._gets.values():
            for d in waiters:
                d.errback(lost)
            waiters.clear()
        self._assembling.clear()
        self._returnable.clear()
        self._returnedSequences.clear()
        try:
            super().connectionLost(reason)
        finally:
            self.onLost(reason)
