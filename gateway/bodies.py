# -*- test-case-name: tests.gateway.test_bodies -*-
"""
Request bodies: from bytes to a checked message.

The gateway decodes small bodies itself and hands larger ones to the parser
service (L{txplatform_services.parser}); both run L{decodeBody}, against the message
classes the OpenAPI document publishes (L{bodyMessages}), so a client gets
the same answer whichever did the work.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any, TypeVar

from txplatform.errors import MalformedJSON
from txplatform.messages import fromPayload

from .operations import operationOf

__all__ = ["decodeBody", "decodeJSON", "bodyMessages"]

T = TypeVar("T")


def _reject(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in JSON")


def decodeJSON(raw: bytes | str) -> Any:
    """
    Decode a JSON body, strictly: UTF-8 only, no NaN or Infinity.

    @raise MalformedJSON: Saying where and why it is not JSON.
    """
    if isinstance(raw, bytes):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise MalformedJSON(f"the body is not UTF-8 (byte {e.start})") from None
    else:
        text = raw
    try:
        return json.loads(text, parse_constant=_reject)
    except json.JSONDecodeError as e:
        raise MalformedJSON(
            f"the body is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}"
        ) from None
    except (ValueError, RecursionError) as e:
        raise MalformedJSON(f"the body is not valid JSON: {e}") from None


def decodeBody(raw: bytes | str, messageType: type[T]) -> T:
    """
    The message of type C{messageType} in body C{raw}.

    @raise MalformedJSON: It is not JSON.
    @raise InvalidArgument: It is JSON but not such a message (each field
        and why).
    """
    return fromPayload(messageType, decodeJSON(raw))


@lru_cache(maxsize=None)
def bodyMessages() -> dict[str, type]:
    """
    The message class of each gateway operation that takes a body, by its
    OpenAPI C{operationId}: the names parse calls use.
    """
    from .app import Gateway

    found = {}
    for rule in Gateway.app.url_map.iter_rules():
        op = operationOf(Gateway.app.endpoints[rule.endpoint])
        if op is not None and op.body is not None:
            found[rule.endpoint] = op.body
    return found
