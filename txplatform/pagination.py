# -*- test-case-name: tests.test_pagination -*-
"""
Keyset pagination with opaque cursors.

A listing is ordered by a key (newest first), and the cursor of a page is
the key of its last item: the next page is whatever comes after it, so
pages stay correct while items are added or removed, and no query ever
skips over an C{OFFSET}.  Cursors are base64url JSON; clients must treat
them as opaque.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any, Callable, Sequence, TypeVar

from .errors import InvalidArgument
from .recordid import isRecordId

__all__ = [
    "encodeCursor",
    "decodeCursor",
    "page",
    "CURSOR_PATTERN",
    "DEFAULT_LIMIT",
    "MAX_LIMIT",
]

T = TypeVar("T")

DEFAULT_LIMIT = 20
MAX_LIMIT = 100

#: The form of every cursor L{encodeCursor} makes: base64url without
#: padding (so never a length of 4n + 1).  What a cursor field checks and
#: publishes; whether a cursor of that form was made here, for that listing,
#: only L{decodeCursor} can tell.
CURSOR_PATTERN = "(?:[A-Za-z0-9_-]{4})*(?:[A-Za-z0-9_-]{2,3})?"


def encodeCursor(*key: str | int) -> str:
    raw = json.dumps(list(key), separators=(",", ":")).encode("utf-8")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decodeCursor(cursor: str, *types: type) -> tuple[Any, ...]:
    """
    The key in C{cursor}, checked against C{types} (one per part).  Keys
    are made of record ids and non-negative 64-bit integers (timestamps),
    and a cursor holding anything else was not made here: it goes no
    further than this check, whatever a client put in it.

    @raise InvalidArgument: C{cursor} was not made by L{encodeCursor} for a
        key of these types.
    """
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        key = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
    except (ValueError, UnicodeError, binascii.Error):
        key = None
    if (
        not isinstance(key, list)
        or len(key) != len(types)
        or not all(_fits(part, kind) for part, kind in zip(key, types, strict=True))
    ):
        raise InvalidArgument.forFields([("cursor", "is not a cursor from this listing")])
    return tuple(key)


def _fits(part: object, kind: type) -> bool:
    if type(part) is not kind:
        return False
    if kind is str:
        return isRecordId(part)
    if kind is int:
        return 0 <= part < 2**63  # type: ignore[operator]
    return False


def page(
    rows: Sequence[T], limit: int, key: Callable[[T], tuple[str | int, ...]]
) -> tuple[list[T], str | None]:
    """
    Split C{rows}, fetched with C{LIMIT limit + 1}, into the page and the
    cursor of the next one (C{None} on the last page).
    """
    items = list(rows[:limit])
    if len(rows) > limit and items:
        return items, encodeCursor(*key(items[-1]))
    return items, None
