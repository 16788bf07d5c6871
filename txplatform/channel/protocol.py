# -*- test-case-name: tests.channel.test_protocol -*-
"""
The secure channel: a Noise XX handshake before a connection is accepted,
then an encrypted, framed stream under any Twisted protocol.

On the wire, the initiator first sends a clear preamble, so that a wrong
port, version or service is refused with a clear reason before any
cryptography (the same three fields are bound into the handshake's
prologue, so changing them in transit fails the handshake)::

    "TXPC" | version (1 byte) | target service id (3 bytes)

then both sides send frames, each a 16-bit big-endian length and a body:
the three Noise handshake messages, then records.  A record is a type
byte and the Noise ciphertext of its data (under the transport keys, with
consecutive nonces), the type bound in as associated data.  The type is
in clear rather than encrypted with the data so that neither side copies
the data to prepend or strip it; it tells no more than the record's length
already does (REKEY and CLOSE are empty).

    DATA   application bytes
    REKEY  the sender rekeys its sending key right after it (Noise's
           Rekey(), section 11.3): after C{rekeyInterval} seconds or
           C{rekeyBytes} bytes
    CLOSE  the sender closes cleanly: a connection that ends without it was
           truncated

The handshake payloads carry the protocol version and the service id each
side speaks for; a peer is accepted only when its static key is trusted
for that id (L{txplatform.channel.identity.TrustStore}).  The application
protocol is built only once the handshake has succeeded: before, it does
not exist, so no byte can reach it or come from it.
"""

from __future__ import annotations

import struct
from typing import Any, Callable

from attrs import field, frozen
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IConsumer,
    IDelayedCall,
    IProtocolFactory,
    IPushProducer,
    IReactorTime,
    IStreamClientEndpoint,
    IStreamServerEndpoint,
    ITransport,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Attribute, implementer

from ..serviceid import ServiceId
from .identity import Identity, TrustStore, encodeKey
from .noise import (
    AESGCM_SHA256,
    MAX_MESSAGE,
    TAG_SIZE,
    CipherState,
    CipherSuite,
    HandshakeState,
    NoiseError,
)

__all__ = [
    "MAGIC",
    "VERSION",
    "MAX_RECORD_DATA",
    "ChannelError",
    "HandshakeRefused",
    "ChannelTruncated",
    "IChannelTransport",
    "ChannelSettings",
    "ChannelProtocol",
    "ChannelServerFactory",
    "ChannelClientFactory",
    "ChannelServerEndpoint",
    "ChannelClientEndpoint",
    "prologue",
]

MAGIC = b"TXPC"
VERSION = 1
_PREAMBLE = struct.Struct(">4sB3s")
_LENGTH = struct.Struct(">H")
_HELLO = struct.Struct(">B3s")  # the handshake payloads: version, service id

DATA, REKEY, CLOSE = 0, 1, 2
_KIND = [bytes([kind]) for kind in range(256)]
_RECORD = struct.Struct(">HB")  # a record's frame: length, then its type
# A frame is at most 65535 bytes: the type, the data and the tag.
MAX_RECORD_DATA = MAX_MESSAGE - TAG_SIZE - 1
# Handshake messages are about a hundred bytes: anything larger is refused
# before it is even buffered.
MAX_HANDSHAKE_FRAME = 1024


class ChannelError(Exception):
    """
    The channel failed: the message says why.
    """


class HandshakeRefused(ChannelError):
    """
    The handshake failed, and the connection was closed.
    """


class ChannelTruncated(ChannelError):
    """
    The connection ended without the peer's CLOSE record.
    """


def prologue(version: int, serviceId: ServiceId) -> bytes:
    """
    What both sides bind into the handshake: the protocol, its version and
    the service the initiator asks for.
    """
    return b"txplatform-channel\0" + bytes([version]) + serviceId.raw


class IChannelTransport(ITransport, IPushProducer, IConsumer):
    """
    The transport an application protocol gets on a secure channel.
    """

    peerServiceId = Attribute("The ServiceId the peer was authenticated for.")
    peerKey = Attribute("The peer's static public key (32 bytes).")
    handshakeHash = Attribute("Noise's handshake hash: binds anything to this channel.")


@frozen
class ChannelSettings:
    """
    What a side of the channel needs.

    @ivar identity: This instance's key and the service it speaks for.
    @ivar trust: The peers' keys accepted.
    @ivar suite: The AEAD (the same on both sides: never negotiated).
    @ivar handshakeTimeout: Seconds a handshake may take.
    @ivar preambleTimeout: Seconds a responder waits for the preamble (the
        initiator sends it with its first message, at once): a connection
        that says nothing goes soon.
    @ivar rekeyInterval: Seconds between rekeys of the sending key; a peer
        whose key lasts twice as long is dropped.
    @ivar rekeyBytes: Bytes sent under one key before rekeying; a peer
        sending twice as much under one key is dropped.
    @ivar version: The protocol version spoken (tests change it).
    """

    identity: Identity
    trust: TrustStore
    reactor: IReactorTime = field(repr=False)
    suite: CipherSuite = AESGCM_SHA256
    handshakeTimeout: float = 10.0
    preambleTimeout: float = 2.0
    rekeyInterval: float = 60.0
    rekeyBytes: int = 1 << 30
    version: int = VERSION


class _Refusal(Exception):
    """
    Internal: why this side is ending the handshake.
    """


class TransportPassThrough:
    """
    What a protocol that is its application's transport passes to its own
    transport as it is: addresses, aborting, and flow control (such a
    protocol holds no data, so the connection's flow control is the
    application's).
    """

    transport: Any
    disconnecting = False

    def abortConnection(self) -> None:
        self.disconnecting = True
        self.transport.abortConnection()

    def getPeer(self) -> Any:
        return self.transport.getPeer()

    def getHost(self) -> Any:
        return self.transport.getHost()

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.transport.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self.transport.unregisterProducer()

    def pauseProducing(self) -> None:
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.transport.resumeProducing()

    def stopProducing(self) -> None:
        self.transport.stopProducing()


@implementer(IChannelTransport)
class ChannelProtocol(TransportPassThrough, Protocol):
    """
    One side of a secure channel, and the transport of the application
    protocol above it once the handshake has succeeded.

    @ivar established: Fires with the application protocol once the
        handshake has succeeded, or fails with L{HandshakeRefused}.
    """

    log = Logger()

    def __init__(
        self,
        settings: ChannelSettings,
        applicationFactory: IProtocolFactory,
        initiator: bool,
        target: ServiceId | None = None,
        onHandshakeEnd: Callable[[ChannelProtocol], None] | None = None,
    ) -> None:
        """
        @param target: The service the initiator asks for.
        @param onHandshakeEnd: Called once when the handshake ends, either
            way (the server factory's count of pending handshakes).
        """
        self.settings = settings
        self._applicationFactory = applicationFactory
        self.initiator = initiator
        self.target = target if initiator else settings.identity.serviceId
        self._onHandshakeEnd = onHandshakeEnd
        self.established: Deferred[Protocol] = Deferred()
        self.application: Protocol | None = None
        self.peerServiceId: ServiceId | None = None
        self.peerKey: bytes | None = None
        self.handshakeHash: bytes | None = None
        self._handshake: HandshakeState | None = None
        self._send: CipherState | None = None
        self._receive: CipherState | None = None
        self._buffer = bytearray()
        self._late: list[bytes] = []
        self._unwatch: Callable[[], None] | None = None
        self._preambleRead = initiator  # only the responder reads one
        self._deadline: IDelayedCall | None = None
        self._rekeyTimer: IDelayedCall | None = None
        self._sentSinceRekey = 0
        self._receivedSinceRekey = 0
        self._lastReceiveRekey = 0.0
        self._closeSent = False
        self._closeReceived = False
        self._failure: Failure | None = None
        self._paused = False
        self._delivering = False
        self.disconnecting = False

    # The handshake

    def connectionMade(self) -> None:
        settings = self.settings
        self._deadline = settings.reactor.callLater(settings.handshakeTimeout, self._tooSlow)
        if not self.initiator:
            self._silence = settings.reactor.callLater(settings.preambleTimeout, self._silent)
        assert self.target is not None
        self._handshake = HandshakeState(
            self.initiator,
            settings.identity.private,
            prologue(settings.version, self.target),
            settings.suite,
        )
        if self.initiator:
            preamble = _PREAMBLE.pack(MAGIC, settings.version, self.target.raw)
            self._sendFrame(self._handshake.writeMessage(), preamble)

    _silence: Any = None

    @property
    def silent(self) -> bool:
        """
        Whether the peer has not yet sent its preamble.
        """
        return not self._preambleRead

    def _silent(self) -> None:
        self._silence = None
        if not self._preambleRead:
            self._refuse(f"no preamble within {self.settings.preambleTimeout:g} s")

    def evict(self) -> None:
        """
        End this handshake, which has not begun, to make room for others.
        """
        self._refuse("evicted: too many handshakes in progress, this one silent")

    def _tooSlow(self) -> None:
        self._deadline = None
        self._refuse(f"the handshake took longer than {self.settings.handshakeTimeout:g} s")

    def _sendFrame(self, body: bytes, before: bytes = b"") -> None:
        self.transport.writeSequence([before + _LENGTH.pack(len(body)), body])

    def _refuse(self, reason: str) -> None:
        """
        End a handshake: log why, close the connection at once, tell whoever
        waits for it.
        """
        self.log.warn(
            "Secure channel {role} {peer} refused: {reason}",
            role="to" if self.initiator else "from",
            peer=_describe(self.transport.getPeer()),
            reason=reason,
        )
        self._endHandshake()
        self._buffer.clear()
        self._failure = Failure(HandshakeRefused(reason))
        self.transport.abortConnection()
        self._settle(HandshakeRefused(reason))

    def _endHandshake(self) -> None:
        self._handshake = None
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None
        if self._silence is not None and self._silence.active():
            self._silence.cancel()
        self._silence = None
        if self._onHandshakeEnd is not None:
            onEnd, self._onHandshakeEnd = self._onHandshakeEnd, None
            onEnd(self)

    def _readPreamble(self) -> bool:
        buffer = self._buffer
        if len(buffer) < _PREAMBLE.size:
            if not MAGIC.startswith(bytes(buffer[:4])):
                raise _Refusal("not a txplatform channel (bad preamble)")
            return False
        magic, version, target = _PREAMBLE.unpack_from(buffer)
        del buffer[: _PREAMBLE.size]
        if magic != MAGIC:
            raise _Refusal("not a txplatform channel (bad preamble)")
        if version != self.settings.version:
            raise _Refusal(
                f"protocol version {version} is not supported"
                f" (this side speaks {self.settings.version})"
            )
        if target != self.settings.identity.serviceId.raw:
            raise _Refusal(
                f"the peer asks for service {target.hex()},"
                f" this is {self.settings.identity.serviceId.hex}"
            )
        self._preambleRead = True
        if self._silence is not None and self._silence.active():
            self._silence.cancel()
        self._silence = None
        return True

    def _handshakeFrame(self, body: bytes) -> None:
        handshake = self._handshake
        assert handshake is not None
        try:
            payload = handshake.readMessage(body)
        except NoiseError as e:
            raise _Refusal(f"the handshake does not authenticate ({e})") from None
        if self.initiator:
            # Message 2: the responder's key and who it speaks for, checked
            # before this side says anything more.
            self._checkPeer(payload, handshake, self.target)
            settings = self.settings
            hello = _HELLO.pack(settings.version, settings.identity.serviceId.raw)
            self._sendFrame(handshake.writeMessage(hello))
        elif handshake.isMyTurn():
            # Message 1 read: answer with message 2.
            if payload:
                raise _Refusal("the first handshake message carries data")
            hello = _HELLO.pack(self.settings.version, self.settings.identity.serviceId.raw)
            try:
                # The first Diffie-Hellman with the peer's ephemeral key:
                # a low-order point fails here, and is the peer's fault.
                answer = handshake.writeMessage(hello)
            except NoiseError as e:
                raise _Refusal(f"the handshake cannot go on ({e})") from None
            self._sendFrame(answer)
            return
        else:
            # Message 3: the initiator's key and who it speaks for.
            self._checkPeer(payload, handshake, None)
        if handshake.complete:
            self._establish(handshake)

    def _checkPeer(
        self, payload: bytes, handshake: HandshakeState, expected: ServiceId | None
    ) -> None:
        if len(payload) != _HELLO.size:
            raise _Refusal("the peer's handshake payload is malformed")
        version, raw = _HELLO.unpack(payload)
        if version != self.settings.version:
            raise _Refusal(f"the peer speaks protocol version {version}")
        serviceId = ServiceId(raw)
        if expected is not None and serviceId != expected:
            raise _Refusal(f"the peer speaks for service {serviceId.hex}, not {expected.hex}")
        key = handshake.remoteStatic
        assert key is not None
        if not self.settings.trust.allows(key, serviceId):
            raise _Refusal(
                f"the peer's key {encodeKey(key)} is not trusted for service {serviceId.hex}"
            )
        self.peerServiceId = serviceId
        self.peerKey = key

    def _establish(self, handshake: HandshakeState) -> None:
        self._unwatch = self.settings.trust.watch(self._trustChanged)
        self._send, self._receive = handshake.split()
        self.handshakeHash = handshake.handshakeHash
        self._endHandshake()
        reactor = self.settings.reactor
        self._lastReceiveRekey = reactor.seconds()
        self._rekeyTimer = reactor.callLater(self.settings.rekeyInterval, self._rekeyByTime)
        application = self._applicationFactory.buildProtocol(self.transport.getPeer())
        if application is None:
            self.log.info(
                "Secure channel from {peer}: the application refused the connection",
                peer=_describe(self.transport.getPeer()),
            )
            # A clean end for the peer, whose application may exist.
            self._sendRecord(CLOSE)
            self._closeSent = self.disconnecting = True
            self.transport.loseConnection()
            self._settle(ChannelError("the application refused the connection"))
            return
        self.application = application
        application.makeConnection(self)
        if not self.established.called:
            self.established.callback(application)

    # Receiving

    def dataReceived(self, data: bytes) -> None:
        if self._failure is not None:
            return
        if self._delivering:
            # Arrived while frames are handed out further up the stack (the
            # buffer is being read in place): that loop takes it after.
            self._late.append(data)
            return
        self._buffer += data
        self._process()

    def _process(self) -> None:
        if self._delivering:
            return  # the loop below is already running, further up the stack
        self._delivering = True
        try:
            while True:
                consumed = self._processFrames()
                del self._buffer[:consumed]
                if not self._late or self._failure is not None:
                    break
                self._buffer += b"".join(self._late)
                self._late.clear()
                if self._paused:
                    break
        except _Refusal as e:
            self._refuse(str(e))
        except ChannelError as e:
            self._fail(e)
        finally:
            self._delivering = False

    def _processFrames(self) -> int:
        """
        Hand out the complete frames in the buffer, read in place.

        @return: How many bytes of the buffer they took.
        """
        buffer = self._buffer
        if not self._preambleRead and not self._readPreamble():
            return 0
        at, end = 0, len(buffer)
        view = memoryview(buffer)
        try:
            while self._failure is None and not self._paused and end - at >= 2:
                (length,) = _LENGTH.unpack_from(buffer, at)
                if self._handshake is not None and length > MAX_HANDSHAKE_FRAME:
                    raise _Refusal(f"a handshake frame of {length} bytes is too large")
                if end - at - 2 < length:
                    break
                body = view[at + 2 : at + 2 + length]
                at += 2 + length
                try:
                    if self._handshake is not None:
                        self._handshakeFrame(body.tobytes())
                    elif self.application is not None:
                        self._record(body)
                    else:
                        break  # refused by the application: closing
                finally:
                    body.release()
        finally:
            # Views of the buffer must be gone before it changes size.
            view.release()
        return at

    def _record(self, body: memoryview) -> None:
        receive = self._receive
        assert receive is not None and self.application is not None
        if self._closeReceived:
            raise ChannelError("data after the peer's CLOSE")
        if len(body) < 1 + TAG_SIZE:
            raise ChannelError(f"a record of {len(body)} bytes is too short")
        kind = body[0]
        ciphertext = body[1:]
        try:
            # The type travels in clear, bound in as associated data.
            plaintext = receive.decryptWithAd(_KIND[kind], ciphertext)
        except NoiseError:
            raise ChannelError(f"record {receive.n} does not authenticate") from None
        finally:
            ciphertext.release()
        if kind == DATA:
            self._receivedSinceRekey += len(plaintext)
            self._checkPeerRekeys()
            if plaintext:
                self.application.dataReceived(plaintext)
        elif kind == REKEY:
            receive.rekey()
            self._receivedSinceRekey = 0
            self._lastReceiveRekey = self.settings.reactor.seconds()
        elif kind == CLOSE:
            self._closeReceived = True
        else:
            raise ChannelError(f"a record of unknown type {kind}")

    def _trustChanged(self) -> None:
        """
        The trust file changed: a peer no longer trusted is cut off now,
        not when it next connects.
        """
        assert self.peerKey is not None and self.peerServiceId is not None
        if self._failure is None and not self.settings.trust.allows(
            self.peerKey, self.peerServiceId
        ):
            self._fail(
                ChannelError(f"the peer's key is no longer trusted for {self.peerServiceId.hex}")
            )

    def _checkPeerRekeys(self) -> None:
        settings = self.settings
        if self._receivedSinceRekey > 2 * settings.rekeyBytes:
            raise ChannelError(f"the peer sent over {2 * settings.rekeyBytes} bytes under one key")
        age = settings.reactor.seconds() - self._lastReceiveRekey
        if age > 2 * settings.rekeyInterval:
            raise ChannelError(f"the peer kept its key for {age:.0f} s")

    def _fail(self, error: ChannelError) -> None:
        """
        The established channel is broken: nothing more is delivered, and
        the application learns why from connectionLost.
        """
        self.log.warn(
            "Secure channel with {peer} broken: {reason}",
            peer=_describe(self.transport.getPeer()),
            reason=str(error),
        )
        self._failure = Failure(error)
        self._buffer.clear()
        self.transport.abortConnection()

    # Sending: the application's transport

    def write(self, data: bytes) -> None:
        if self._send is None or self._closeSent or self._failure is not None:
            return
        if not isinstance(data, bytes):
            raise TypeError("Data must be bytes")
        # All the records of one write go down in one call: a transport
        # pauses its producer once per call that overfills its buffer, and
        # resumes it once.
        frames: list[bytes] = []
        view = memoryview(data)
        for start in range(0, len(view), MAX_RECORD_DATA):
            chunk = view[start : start + MAX_RECORD_DATA]
            self._seal(frames, DATA, chunk)
            self._sentSinceRekey += len(chunk)
            if self._sentSinceRekey >= self.settings.rekeyBytes:
                self._rekey(frames)
        if frames:
            self.transport.writeSequence(frames)

    def writeSequence(self, data: list[bytes]) -> None:
        self.write(b"".join(data))

    def _seal(self, frames: list[bytes], kind: int, data: bytes | memoryview = b"") -> None:
        assert self._send is not None
        record = self._send.encryptWithAd(_KIND[kind], data)
        frames += (_RECORD.pack(len(record) + 1, kind), record)

    def _sendRecord(self, kind: int, data: bytes | memoryview = b"") -> None:
        frames: list[bytes] = []
        self._seal(frames, kind, data)
        self.transport.writeSequence(frames)

    def _rekey(self, frames: list[bytes] | None = None) -> None:
        """
        Send REKEY (into C{frames}, or now), then rekey the sending key.
        """
        assert self._send is not None
        if frames is None:
            self._sendRecord(REKEY)
        else:
            self._seal(frames, REKEY)
        self._send.rekey()
        self._sentSinceRekey = 0
        if self._rekeyTimer is not None and self._rekeyTimer.active():
            self._rekeyTimer.reset(self.settings.rekeyInterval)

    def _rekeyByTime(self) -> None:
        self._rekeyTimer = None
        if self._send is None or self._closeSent or self._failure is not None:
            return
        self._rekeyTimer = self.settings.reactor.callLater(
            self.settings.rekeyInterval, self._rekeyByTime
        )
        self._rekey()

    def loseConnection(self) -> None:
        if self.disconnecting:
            return
        self.disconnecting = True
        if self._send is not None and not self._closeSent and self._failure is None:
            self._sendRecord(CLOSE)
            self._closeSent = True
        self.transport.loseConnection()

    def pauseProducing(self) -> None:
        self._paused = True
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self._paused = False
        self.transport.resumeProducing()
        if self._buffer:
            self._process()

    # The end

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._unwatch is not None:
            self._unwatch()
            self._unwatch = None
        for timer in (self._deadline, self._rekeyTimer):
            if timer is not None and timer.active():
                timer.cancel()
        self._rekeyTimer = None
        if self._handshake is not None:
            self._refuseLost(reason)
            return
        application, self.application = self.application, None
        if application is None:
            return
        if self._failure is not None:
            reason = self._failure
        elif not self._closeReceived and not self._closeSent:
            reason = Failure(ChannelTruncated("the connection ended without the peer's CLOSE"))
        application.connectionLost(reason)

    def _refuseLost(self, reason: Failure) -> None:
        message = f"the connection was lost during the handshake ({reason.getErrorMessage()})"
        self.log.info(
            "Secure channel {role} {peer}: {message}",
            role="to" if self.initiator else "from",
            peer=_describe(self.transport.getPeer()),
            message=message,
        )
        self._endHandshake()
        self._settle(HandshakeRefused(message))

    def _settle(self, error: ChannelError) -> None:
        # Only an initiator's caller waits for established: a responder's
        # failures are logged, and would be unhandled errors there.
        if self.initiator and not self.established.called:
            self.established.errback(error)


def sourceNetwork(host: str) -> str:
    """
    The network a peer address counts against: its /24 (IPv4) or /64
    (IPv6); anything else as it is.
    """
    import ipaddress

    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    prefix = 24 if address.version == 4 else 64
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))


def _describe(address: Any) -> str:
    host, port = getattr(address, "host", None), getattr(address, "port", None)
    return f"{host}:{port}" if host is not None else str(address)


class ChannelServerFactory(Factory):
    """
    Accept secure channels for an application factory, building its
    protocols only for peers that completed the handshake.

    A flood of connections that say nothing must not keep out peers that
    complete their handshake at once: such connections go after
    C{preambleTimeout}; pending handshakes are bounded per source network
    (a /24 in IPv4, a /64 in IPv6: one attacker's addresses share one
    bound); and when they are all taken, the oldest that has not sent its
    preamble makes room for the newcomer.

    @ivar maxPending: Handshakes in progress at once, in all.
    @ivar maxPendingPerNetwork: ... from one source network.
    """

    protocol = ChannelProtocol  # type: ignore[assignment]
    log = Logger()

    def __init__(
        self,
        settings: ChannelSettings,
        applicationFactory: IProtocolFactory,
        maxPending: int = 1000,
        maxPendingPerNetwork: int = 100,
    ) -> None:
        self.settings = settings
        self.applicationFactory = applicationFactory
        self.maxPending = maxPending
        self.maxPendingPerNetwork = maxPendingPerNetwork
        self.pending: dict[str, int] = {}
        # In the order they came: the oldest silent one goes first.
        self._handshakes: dict[ChannelProtocol, None] = {}

    def doStart(self) -> None:
        self.applicationFactory.doStart()

    def doStop(self) -> None:
        self.applicationFactory.doStop()

    def buildProtocol(self, addr: Any) -> ChannelProtocol | None:
        network = sourceNetwork(getattr(addr, "host", str(addr)))
        if self.pending.get(network, 0) >= self.maxPendingPerNetwork or (
            len(self._handshakes) >= self.maxPending and not self._evictSilent()
        ):
            self.log.warn(
                "Refused a secure channel from {peer}: too many handshakes in progress",
                peer=_describe(addr),
            )
            self.handshakeEnded(None)
            return None
        self.pending[network] = self.pending.get(network, 0) + 1

        def ended(channel: ChannelProtocol) -> None:
            self._handshakes.pop(channel, None)
            left = self.pending[network] - 1
            if left:
                self.pending[network] = left
            else:
                del self.pending[network]
            self.handshakeEnded(channel)

        channel = ChannelProtocol(
            self.settings, self.applicationFactory, initiator=False, onHandshakeEnd=ended
        )
        self._handshakes[channel] = None
        return channel

    def _evictSilent(self) -> bool:
        for channel in self._handshakes:
            if channel.silent and channel.transport is not None:
                channel.evict()
                return True
        return False

    def handshakeEnded(self, channel: ChannelProtocol | None) -> None:
        """
        Called as each handshake ends: C{channel.peerServiceId} is set when
        it succeeded; C{None} for a connection refused before any handshake
        (too many pending).  For metrics: override it.
        """


class ChannelClientFactory(Factory):
    """
    Open a secure channel to C{target} for an application factory.
    """

    def __init__(
        self, settings: ChannelSettings, applicationFactory: IProtocolFactory, target: ServiceId
    ) -> None:
        self.settings = settings
        self.applicationFactory = applicationFactory
        self.target = target

    def buildProtocol(self, addr: Any) -> ChannelProtocol:
        return ChannelProtocol(self.settings, self.applicationFactory, True, self.target)


@implementer(IStreamServerEndpoint)
class ChannelServerEndpoint:
    """
    Listen on C{endpoint}, accepting only secure channels.
    """

    def __init__(self, endpoint: IStreamServerEndpoint, settings: ChannelSettings) -> None:
        self._endpoint = endpoint
        self._settings = settings

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred:
        return self._endpoint.listen(ChannelServerFactory(self._settings, protocolFactory))


@implementer(IStreamClientEndpoint)
class ChannelClientEndpoint:
    """
    Connect through C{endpoint} to the service C{target} over a secure
    channel: C{connect} fires with the application protocol once the
    handshake has succeeded, or fails with L{HandshakeRefused}.
    """

    def __init__(
        self, endpoint: IStreamClientEndpoint, settings: ChannelSettings, target: ServiceId
    ) -> None:
        self._endpoint = endpoint
        self._settings = settings
        self._target = target

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred:
        factory = ChannelClientFactory(self._settings, protocolFactory, self._target)
        connecting = self._endpoint.connect(factory)
        return connecting.addCallback(lambda channel: channel.established)
