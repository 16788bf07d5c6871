# -*- test-case-name: tests.test_bodies -*-
"""
Request bodies: from bytes to a checked message.

The gateway decodes small bodies itself and may hand larger ones to a
parser pool; both run L{decodeBody}, against the message classes the routes
declare (L{txplatform.routes.bodyTypes}), so a client gets the same answer
whichever did the work.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from .errors import MalformedJSON
from .messages import fromPayload

__all__ = ["decodeBody", "decodeJSON"]

T = TypeVar("T")


def _reject(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in JSON")


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found = dict(pairs)
    if len(found) != len(pairs):
        seen: set[str] = set()
        twice = next(key for key, _ in pairs if key in seen or seen.add(key))
        # Parsers disagree on which of two values wins: refuse both.
        raise ValueError(f"the key {twice!r} appears twice in one object")
    return found


def decodeJSON(raw: bytes | str) -> Any:
    """
    Decode a JSON body, strictly: UTF-8 only, no NaN or Infinity, no key
    twice in one object.

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
        return json.loads(text, parse_constant=_reject, object_pairs_hook=_object)
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
