# -*- test-case-name: tests.direct.test_wire -*-
"""
The direct transport's frames, carried inside the secure channel.

Each frame is a 32-bit big-endian length and a body whose first byte is
its kind.  Addresses are binary (the 3-byte service id), never names: a
replica routes a call by reading three bytes.

    CALL   kind 1 | service (3) | priority (1) | deadline, ms (8)
           | message id | correlation id | method | idempotency key
             (each: length (1), bytes; an empty key: none)
           | payload (the rest: as the payload codec made it)
    REPLY  kind 2 | message id (length (1), bytes) | reply payload (the rest)
    TRACED kind 3 | as CALL: a call whose payload carries its OpenTelemetry
           trace (L{txplatform.codec.traced}), which its binding says too

A call sent again under its message id, after the channel it first went
on broke, has the kind of its first copy with bit C{RESENT} (0x10) set:
the service takes it as a call that may have run before
(L{txplatform.context.CallContext.redelivered}).

The caller of a call is not in the frame: it is the peer the secure channel
authenticated, and the payload's binding names it, so the codec refuses a
payload sealed by anyone else.
"""

from __future__ import annotations

import struct
from typing import Any

from attrs import frozen
from twisted.protocols.basic import Int32StringReceiver

from ..serviceid import ServiceId

__all__ = [
    "CALL",
    "REPLY",
    "TRACED_CALL",
    "RESENT",
    "MAX_FRAME",
    "FrameError",
    "CallFrame",
    "ReplyFrame",
    "parseFrame",
    "DirectProtocol",
]

CALL, REPLY, TRACED_CALL = 1, 2, 3
RESENT = 0x10
# The largest frame accepted: payloads are records, not bulk transfers.
MAX_FRAME = 16 * 1024 * 1024

_CALL = struct.Struct(">B3sBQ")


class FrameError(ValueError):
    """
    Bytes that are not a frame; the message says what is wrong.
    """


def _short(text: str) -> bytes:
    raw = text.encode("utf-8")
    if len(raw) > 255:
        raise ValueError(f"{text[:20]!r}... is longer than 255 bytes")
    return bytes([len(raw)]) + raw


def _readShort(body: bytes, at: int, what: str) -> tuple[str, int]:
    if at >= len(body):
        raise FrameError(f"the frame ends before its {what}")
    length = body[at]
    end = at + 1 + length
    if end > len(body):
        raise FrameError(f"the frame ends inside its {what}")
    try:
        return body[at + 1 : end].decode("utf-8"), end
    except UnicodeDecodeError:
        raise FrameError(f"the frame's {what} is not UTF-8") from None


@frozen
class CallFrame:
    service: ServiceId
    priority: int
    deadlineMillis: int
    messageId: str
    correlationId: str
    method: str
    payload: bytes
    idempotencyKey: str | None = None
    isTraced: bool = False
    resent: bool = False

    def encode(self) -> bytes:
        kind = (TRACED_CALL if self.isTraced else CALL) | (RESENT if self.resent else 0)
        return b"".join(
            [
                _CALL.pack(kind, self.service.raw, self.priority, self.deadlineMillis),
                _short(self.messageId),
                _short(self.correlationId),
                _short(self.method),
                _short(self.idempotencyKey or ""),
                self.payload,
            ]
        )


@frozen
class ReplyFrame:
    messageId: str
    payload: bytes

    def encode(self) -> bytes:
        return bytes([REPLY]) + _short(self.messageId) + self.payload


def parseFrame(body: bytes) -> CallFrame | ReplyFrame:
    """
    @raise FrameError: Not a frame of a known kind, or cut short.
    """
    if not body:
        raise FrameError("an empty frame")
    kind = body[0]
    resent = kind & RESENT == RESENT
    if kind & ~RESENT in (CALL, TRACED_CALL):
        if len(body) < _CALL.size:
            raise FrameError("a call frame shorter than its header")
        _, service, priority, deadline = _CALL.unpack_from(body)
        if priority > 9:
            raise FrameError(f"priority {priority} is not 0 to 9")
        messageId, at = _readShort(body, _CALL.size, "message id")
        correlationId, at = _readShort(body, at, "correlation id")
        method, at = _readShort(body, at, "method")
        key, at = _readShort(body, at, "idempotency key")
        return CallFrame(
            ServiceId(service),
            priority,
            deadline,
            messageId,
            correlationId,
            method,
            body[at:],
            key or None,
            kind & ~RESENT == TRACED_CALL,
            resent,
        )
    if kind == REPLY:
        messageId, at = _readShort(body, 1, "message id")
        return ReplyFrame(messageId, body[at:])
    raise FrameError(f"a frame of unknown kind {kind}")


class DirectProtocol(Int32StringReceiver):
    """
    Frames both ways on one secure channel: calls from the peer go to
    C{bus.frameReceived}, as do replies to this side's calls.
    """

    MAX_LENGTH = MAX_FRAME
    open = False
    #: Whether the peer has sent a frame on this channel: it took this
    #: side's identity (a responder that refuses it closes the channel
    #: after the handshake, without a word).
    heard = False

    def __init__(self, bus: Any) -> None:
        self._bus = bus

    def itself(self) -> DirectProtocol:
        """
        This protocol, even when reached through a proxy (ClientService's).
        """
        return self

    def connectionMade(self) -> None:
        self.open = True
        self._bus.connectionMade(self)

    def stringReceived(self, body: bytes) -> None:
        self.heard = True
        self._bus.frameReceived(self, body)

    def lengthLimitExceeded(self, length: int) -> None:
        self._bus.frameTooLong(self, length)

    def send(self, frame: CallFrame | ReplyFrame) -> None:
        self.sendString(frame.encode())

    def connectionLost(self, reason: Any) -> None:
        self.open = False
        self._bus.connectionLost(self, reason)
