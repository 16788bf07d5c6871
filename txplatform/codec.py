# -*- test-case-name: tests.test_localbus, tests.test_traces -*-
"""
Payload encoding for the buses.

Every bus turns payloads into bytes with an L{IPayloadCodec} before it holds
them, even in process, so the same codec seam serves every transport: the
JSON codec here, and an encrypting codec that wraps it.
"""

from __future__ import annotations

import json
from typing import Any

from zope.interface import implementer

from .errors import MalformedMessage
from .interfaces import IPayloadCodec
from .serviceid import ServiceId

__all__ = [
    "JSONCodec",
    "callBinding",
    "replyBinding",
    "eventBinding",
    "dumps",
    "traced",
    "untraced",
]


def _reject(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


# One encoder and one decoder for the process: json.dumps and json.loads
# build a new one on every call when given options.
_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
_decoder = json.JSONDecoder(parse_constant=_reject)


def dumps(value: Any) -> bytes:
    """
    Compact UTF-8 JSON.
    """
    return _encoder.encode(value).encode("utf-8")


def loads(data: bytes | str) -> Any:
    """
    Strict JSON: no C{NaN} or C{Infinity}.

    @raise ValueError: C{data} is not (UTF-8) JSON.
    """
    return _decoder.decode(data.decode("utf-8") if isinstance(data, bytes) else data)


@implementer(IPayloadCodec)
class JSONCodec:
    """
    Payloads as compact JSON; the binding is not used.
    """

    def encode(self, payload: Any, binding: bytes) -> bytes:
        return dumps(payload)

    def decode(self, data: bytes, binding: bytes) -> Any:
        try:
            return loads(data)
        except (ValueError, UnicodeDecodeError) as e:
            raise MalformedMessage(f"payload is not JSON: {e}") from None


def _fields(*fields: bytes) -> bytes:
    # Length-prefixed, so that no choice of field values (a message id is
    # whatever the sender put in its header) can make two bindings equal.
    return b"".join([len(f).to_bytes(2, "big") + f for f in fields])


def callBinding(
    service: ServiceId,
    method: str,
    messageId: str,
    caller: ServiceId | None = None,
    correlationId: str = "",
    deadlineMillis: int = 0,
    idempotencyKey: str | None = None,
    isTraced: bool = False,
) -> bytes:
    """
    What a request is: its address, its id, who sends it, its trace, its
    deadline, its idempotency key if it has one, and whether its payload is
    L{traced} (so that none of the headers carrying them can be changed,
    added or removed).
    """
    fields = [
        b"call",
        service.raw,
        method.encode(),
        messageId.encode(),
        caller.raw if caller is not None else b"",
        correlationId.encode(),
        str(deadlineMillis).encode(),
    ]
    if idempotencyKey is not None or isTraced:
        # An empty key field when traced: no key is empty, so the count of
        # fields tells a key from the mark.
        fields.append(idempotencyKey.encode() if idempotencyKey is not None else b"")
    if isTraced:
        fields.append(_TRACED)
    return _fields(*fields)


def replyBinding(service: ServiceId, method: str, messageId: str) -> bytes:
    return _fields(b"reply", service.raw, method.encode(), messageId.encode())


def eventBinding(
    event: str,
    messageId: str,
    source: ServiceId | None = None,
    correlationId: str = "",
    isTraced: bool = False,
) -> bytes:
    fields = [
        b"event",
        event.encode(),
        messageId.encode(),
        source.raw if source is not None else b"",
        correlationId.encode(),
    ]
    if isTraced:
        fields.append(_TRACED)
    return _fields(*fields)


_TRACED = b"traced"


def traced(payload: Any, traceParent: str, traceState: str | None = None) -> dict[str, Any]:
    """
    What a bus encodes instead of C{payload} to carry a trace's
    C{traceparent} (and C{tracestate}, if there is one) with it: inside
    the payload, so an encrypting codec seals it with the rest and no
    broker or peer reads or changes it.  The message says it is traced (a
    header, a frame kind) and its binding says so too (C{isTraced}), so
    that mark cannot be added or removed on the way either.

    Without a C{tracestate} (or with an empty one) the envelope is what it
    was before there was one, byte for byte, so peers that know only
    C{traceparent} read it.  (Those peers refuse one with a C{tracestate}.)
    """
    if not traceState:
        return {"traceparent": traceParent, "payload": payload}
    return {"traceparent": traceParent, "tracestate": traceState, "payload": payload}


def untraced(value: Any) -> tuple[Any, str | None, str | None]:
    """
    The payload, C{traceparent} and C{tracestate} (C{None} if it carries
    none) of a L{traced} payload, decoded.

    @raise MalformedMessage: It is not one.
    """
    if isinstance(value, dict) and "payload" in value:
        traceParent = value.get("traceparent")
        if isinstance(traceParent, str):
            if len(value) == 2:
                return value["payload"], traceParent, None
            traceState = value.get("tracestate")
            if len(value) == 3 and isinstance(traceState, str):
                return value["payload"], traceParent, traceState or None
    raise MalformedMessage("a traced message without its trace")
