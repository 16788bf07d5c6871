# -*- test-case-name: tests.amqp.test_frames -*-
"""
The AMQP 0-9-1 frames of the hot path, encoded and decoded directly.

txamqp encodes every frame through a generic codec (a BytesIO, one
C{struct.pack} per field, a Deferred queue per frame); that is fine for the
handful of control methods a connection exchanges, and costs two to three
times the CPU of the message itself when every call and event crosses the
broker.  Publishing, delivering, acknowledging and confirming are therefore
encoded here, with precompiled structs and one write per message, and the
protocol (L{txplatform.amqp.protocol}) routes the matching incoming frames
here instead of through txamqp.

Field tables follow RabbitMQ's type set (the one the broker uses in
headers such as C{x-death}).
"""

from __future__ import annotations

import struct
from decimal import Decimal
from typing import Any

from attrs import define, field

__all__ = [
    "FRAME_METHOD",
    "FRAME_HEADER",
    "FRAME_BODY",
    "FRAME_HEARTBEAT",
    "FRAME_END",
    "Properties",
    "Delivery",
    "encodeTable",
    "decodeTable",
    "encodeProperties",
    "decodeHeader",
    "publish",
    "ack",
    "reject",
    "nack",
    "parseDeliver",
    "parseGetOk",
    "parseReturn",
    "parseAck",
    "parseNack",
    "FrameError",
    "MalformedProperties",
]

FRAME_METHOD = 1
FRAME_HEADER = 2
FRAME_BODY = 3
FRAME_HEARTBEAT = 8
FRAME_END = 0xCE
FRAME_END_BYTE = b"\xce"

BASIC = 60
PUBLISH, RETURN, DELIVER, GET_OK, ACK, REJECT, NACK = 40, 50, 60, 71, 80, 90, 120

_FRAME_HEAD = struct.Struct("!BHI")
_CLASS_METHOD = struct.Struct("!HH")
_HEADER_HEAD = struct.Struct("!HHQH")
_U8 = struct.Struct("!B")
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_I32 = struct.Struct("!i")
_U64 = struct.Struct("!Q")
_I64 = struct.Struct("!q")
_ACK_ARGS = struct.Struct("!QB")
_DELIVERY_TAG = struct.Struct("!QB")

#: Tables and arrays nested deeper than this are refused: a few kilobytes of
#: nesting would otherwise exhaust the interpreter's recursion limit.
MAX_NESTING = 32


class FrameError(ValueError):
    """
    Bytes that are not a well-formed frame or value.
    """


# Field tables


def _shortstr(value: str | bytes) -> bytes:
    data = value.encode("utf-8") if isinstance(value, str) else value
    if len(data) > 255:
        raise FrameError(f"a short string holds 255 bytes, not {len(data)}")
    return _U8.pack(len(data)) + data


def _encodeValue(value: Any) -> bytes:
    if value is None:
        return b"V"
    if value is True or value is False:
        return b"t" + (b"\x01" if value else b"\x00")
    if isinstance(value, int):
        if -(2**31) <= value < 2**31:
            return b"I" + _I32.pack(value)
        if -(2**63) <= value < 2**63:
            return b"l" + _I64.pack(value)
        raise FrameError(f"{value} does not fit a field table's 64-bit integer")
    if isinstance(value, float):
        return b"d" + struct.pack("!d", value)
    if isinstance(value, str):
        data = value.encode("utf-8")
        return b"S" + _U32.pack(len(data)) + data
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        return b"x" + _U32.pack(len(data)) + data
    if isinstance(value, dict):
        return b"F" + encodeTable(value)
    if isinstance(value, (list, tuple)):
        items = b"".join(_encodeValue(item) for item in value)
        return b"A" + _U32.pack(len(items)) + items
    if isinstance(value, Decimal):
        sign, digits, exponent = value.as_tuple()
        if not isinstance(exponent, int):
            raise FrameError(f"cannot put {value} in a field table")
        integer = int("".join(map(str, digits)) or "0") * (-1 if sign else 1)
        # AMQP decimals are an integer and a count of decimal places.
        if exponent > 0:
            integer, exponent = integer * 10**exponent, 0
        if not (-(2**31) <= integer < 2**31 and -exponent <= 255):
            raise FrameError(f"{value} does not fit an AMQP decimal")
        return b"D" + _U8.pack(-exponent) + _I32.pack(integer)
    raise FrameError(f"cannot put a {type(value).__name__} in a field table")


def encodeTable(table: dict[str, Any] | None) -> bytes:
    """
    A field table, length first.
    """
    if not table:
        return b"\x00\x00\x00\x00"
    body = b"".join(_shortstr(key) + _encodeValue(value) for key, value in table.items())
    return _U32.pack(len(body)) + body


def _decodeValue(data: bytes, offset: int, depth: int) -> tuple[Any, int]:
    kind = data[offset : offset + 1]
    offset += 1
    if kind == b"S":
        (size,) = _U32.unpack_from(data, offset)
        offset += 4
        raw = data[offset : offset + size]
        try:
            return raw.decode("utf-8"), offset + size
        except UnicodeDecodeError:
            return raw, offset + size
    if kind == b"I":
        return _I32.unpack_from(data, offset)[0], offset + 4
    if kind == b"l":
        return _I64.unpack_from(data, offset)[0], offset + 8
    if kind == b"t":
        return data[offset] != 0, offset + 1
    if kind == b"F":
        return _decodeTable(data, offset, depth + 1)
    if kind == b"A":
        if depth >= MAX_NESTING:
            raise FrameError(f"field arrays nested over {MAX_NESTING} deep")
        (size,) = _U32.unpack_from(data, offset)
        offset += 4
        end = offset + size
        items = []
        while offset < end:
            item, offset = _decodeValue(data, offset, depth + 1)
            items.append(item)
        return items, end
    if kind == b"T":
        return _U64.unpack_from(data, offset)[0], offset + 8
    if kind == b"V":
        return None, offset
    if kind == b"x":
        (size,) = _U32.unpack_from(data, offset)
        return bytes(data[offset + 4 : offset + 4 + size]), offset + 4 + size
    if kind in (b"b", b"B"):
        fmt = "!b" if kind == b"b" else "!B"
        return struct.unpack_from(fmt, data, offset)[0], offset + 1
    if kind in (b"s", b"u"):
        fmt = "!h" if kind == b"s" else "!H"
        return struct.unpack_from(fmt, data, offset)[0], offset + 2
    if kind == b"i":
        return _U32.unpack_from(data, offset)[0], offset + 4
    if kind == b"f":
        return struct.unpack_from("!f", data, offset)[0], offset + 4
    if kind == b"d":
        return struct.unpack_from("!d", data, offset)[0], offset + 8
    if kind == b"D":
        scale = data[offset]
        (value,) = _I32.unpack_from(data, offset + 1)
        return Decimal(value).scaleb(-scale), offset + 5
    raise FrameError(f"unknown field type {kind!r}")


def decodeTable(data: bytes, offset: int) -> tuple[dict[str, Any], int]:
    """
    The field table at C{offset}, and the offset after it.

    @raise FrameError: not a well-formed table.
    """
    try:
        return _decodeTable(data, offset, 0)
    except (IndexError, struct.error) as e:
        raise FrameError(f"a truncated field table: {e}") from None


def _decodeTable(data: bytes, offset: int, depth: int) -> tuple[dict[str, Any], int]:
    if depth > MAX_NESTING:
        raise FrameError(f"field tables nested over {MAX_NESTING} deep")
    (size,) = _U32.unpack_from(data, offset)
    offset += 4
    end = offset + size
    table = {}
    while offset < end:
        length = data[offset]
        key = data[offset + 1 : offset + 1 + length].decode("utf-8", "replace")
        value, offset = _decodeValue(data, offset + 1 + length, depth)
        table[key] = value
    if offset != end:
        raise FrameError("a field table overran its length")
    return table, end


# Message properties (the basic class's content header)


@define(slots=True)
class Properties:
    """
    The properties of a message (AMQP's basic class), all optional.
    """

    content_type: str | None = None
    content_encoding: str | None = None
    headers: dict[str, Any] | None = None
    delivery_mode: int | None = None
    priority: int | None = None
    correlation_id: str | None = None
    reply_to: str | None = None
    expiration: str | None = None
    message_id: str | None = None
    timestamp: int | None = None
    type: str | None = None
    user_id: str | None = None
    app_id: str | None = None


# (name, flag bit, kind) in wire order.
_PROPERTIES = [
    ("content_type", 15, "s"),
    ("content_encoding", 14, "s"),
    ("headers", 13, "F"),
    ("delivery_mode", 12, "B"),
    ("priority", 11, "B"),
    ("correlation_id", 10, "s"),
    ("reply_to", 9, "s"),
    ("expiration", 8, "s"),
    ("message_id", 7, "s"),
    ("timestamp", 6, "T"),
    ("type", 5, "s"),
    ("user_id", 4, "s"),
    ("app_id", 3, "s"),
]


def encodeProperties(properties: Properties) -> bytes:
    """
    The property flags and property list of a content header.
    """
    flags = 0
    parts = []
    for name, bit, kind in _PROPERTIES:
        value = getattr(properties, name)
        if value is None:
            continue
        flags |= 1 << bit
        if kind == "s":
            parts.append(_shortstr(value))
        elif kind == "B":
            parts.append(_U8.pack(value))
        elif kind == "F":
            parts.append(encodeTable(value))
        else:
            parts.append(_U64.pack(value))
    return _U16.pack(flags) + b"".join(parts)


def decodeHeader(payload: bytes) -> tuple[int, Properties]:
    """
    The body size and properties in a content header frame's payload.

    @raise FrameError: the frame is too short to hold a body size.
    @raise MalformedProperties: the size is there, the properties are not
        readable: a problem with this one message, not with the connection.
    """
    try:
        _classId, _weight, size, flags = _HEADER_HEAD.unpack_from(payload, 0)
    except struct.error as e:
        raise FrameError(f"a truncated content header: {e}") from None
    try:
        return size, _decodeProperties(payload, flags)
    except (FrameError, IndexError, struct.error, UnicodeError) as e:
        raise MalformedProperties(size, str(e)) from None


class MalformedProperties(FrameError):
    """
    A content header whose properties cannot be read.

    @ivar size: The body size it announced.
    """

    def __init__(self, size: int, why: str) -> None:
        super().__init__(f"unreadable message properties: {why}")
        self.size = size


def _decodeProperties(payload: bytes, flags: int) -> Properties:
    offset = _HEADER_HEAD.size
    if flags & 1:
        raise FrameError("more than one word of property flags")
    properties = Properties()
    for name, bit, kind in _PROPERTIES:
        if not flags & (1 << bit):
            continue
        if kind == "s":
            length = payload[offset]
            value: Any = payload[offset + 1 : offset + 1 + length].decode("utf-8", "replace")
            offset += 1 + length
        elif kind == "B":
            value = payload[offset]
            offset += 1
        elif kind == "F":
            value, offset = decodeTable(payload, offset)
        else:
            (value,) = _U64.unpack_from(payload, offset)
            offset += 8
        setattr(properties, name, value)
    return properties


# Outgoing frames


def _frame(kind: int, channel: int, payload: bytes) -> bytes:
    return _FRAME_HEAD.pack(kind, channel, len(payload)) + payload + FRAME_END_BYTE


def publish(
    channel: int,
    exchange: str,
    routingKey: str,
    properties: Properties,
    body: bytes,
    frameMax: int,
    mandatory: bool = False,
) -> bytes:
    """
    basic.publish with its content: the method, the header and the body
    frames (split to fit C{frameMax}), ready for one write.
    """
    method = (
        _CLASS_METHOD.pack(BASIC, PUBLISH)
        + b"\x00\x00"
        + _shortstr(exchange)
        + _shortstr(routingKey)
        + (b"\x01" if mandatory else b"\x00")
    )
    header = _HEADER_HEAD.pack(BASIC, 0, len(body), 0)[:-2] + encodeProperties(properties)
    frames = [_frame(FRAME_METHOD, channel, method), _frame(FRAME_HEADER, channel, header)]
    chunk = frameMax - 8
    if chunk <= 0:
        raise FrameError(f"a frame size of {frameMax} leaves no room for a body")
    for start in range(0, len(body), chunk):
        frames.append(_frame(FRAME_BODY, channel, body[start : start + chunk]))
    return b"".join(frames)


def ack(channel: int, deliveryTag: int, multiple: bool = False) -> bytes:
    return _frame(
        FRAME_METHOD,
        channel,
        _CLASS_METHOD.pack(BASIC, ACK) + _ACK_ARGS.pack(deliveryTag, multiple),
    )


def reject(channel: int, deliveryTag: int, requeue: bool) -> bytes:
    return _frame(
        FRAME_METHOD,
        channel,
        _CLASS_METHOD.pack(BASIC, REJECT) + _DELIVERY_TAG.pack(deliveryTag, requeue),
    )


def nack(channel: int, deliveryTag: int, multiple: bool, requeue: bool) -> bytes:
    bits = (1 if multiple else 0) | (2 if requeue else 0)
    return _frame(
        FRAME_METHOD, channel, _CLASS_METHOD.pack(BASIC, NACK) + _ACK_ARGS.pack(deliveryTag, bits)
    )


# Incoming methods (payload after the class and method ids)


@define(slots=True)
class Delivery:
    """
    A message the broker handed over: by basic.deliver to a consumer,
    basic.get-ok, or basic.return for an unroutable mandatory message.
    """

    channel: int
    consumerTag: str
    deliveryTag: int
    redelivered: bool
    exchange: str
    routingKey: str
    bodySize: int = 0
    properties: Properties = field(factory=Properties)
    body: bytes = b""
    replyCode: int = 0
    replyText: str = ""
    messageCount: int = 0
    #: Why the message's properties could not be read, if they could not:
    #: such a message is dead-lettered, not handled.
    malformed: str | None = None


def _readShortstr(data: bytes, offset: int) -> tuple[str, int]:
    length = data[offset]
    return data[offset + 1 : offset + 1 + length].decode("utf-8", "replace"), offset + 1 + length


def parseDeliver(channel: int, args: bytes) -> Delivery:
    consumerTag, offset = _readShortstr(args, 0)
    deliveryTag, redelivered = _DELIVERY_TAG.unpack_from(args, offset)
    exchange, offset = _readShortstr(args, offset + 9)
    routingKey, offset = _readShortstr(args, offset)
    return Delivery(channel, consumerTag, deliveryTag, bool(redelivered & 1), exchange, routingKey)


def parseGetOk(channel: int, args: bytes) -> Delivery:
    deliveryTag, redelivered = _DELIVERY_TAG.unpack_from(args, 0)
    exchange, offset = _readShortstr(args, 9)
    routingKey, offset = _readShortstr(args, offset)
    (count,) = _U32.unpack_from(args, offset)
    delivery = Delivery(channel, "", deliveryTag, bool(redelivered & 1), exchange, routingKey)
    delivery.messageCount = count
    return delivery


def parseReturn(channel: int, args: bytes) -> Delivery:
    (code,) = _U16.unpack_from(args, 0)
    text, offset = _readShortstr(args, 2)
    exchange, offset = _readShortstr(args, offset)
    routingKey, offset = _readShortstr(args, offset)
    delivery = Delivery(channel, "", 0, False, exchange, routingKey)
    delivery.replyCode, delivery.replyText = code, text
    return delivery


def parseAck(args: bytes) -> tuple[int, bool]:
    deliveryTag, bits = _ACK_ARGS.unpack_from(args, 0)
    return deliveryTag, bool(bits & 1)


def parseNack(args: bytes) -> tuple[int, bool]:
    deliveryTag, bits = _ACK_ARGS.unpack_from(args, 0)
    return deliveryTag, bool(bits & 1)
