# -*- test-case-name: tests.test_pagination, tests.services.test_post -*-
"""
Record identifiers: 128 bits, time-ordered, made by the application.

An id is a 48-bit millisecond timestamp followed by 80 random bits, written
as 26 lowercase Crockford base32 characters (ULID layout).  Ids sort by
creation time, so listings page on the id alone; and they exist before the
row is inserted, so a row's id can be bound into what is stored in it.

Within a process ids are strictly increasing: an id made in the same
millisecond as the last one (or after the clock stepped back) is the last
one plus one, as ULID's monotonic mode does, so "newest first" holds for
everything one replica writes.  The last id is kept per clock, so a test's
fake clock does not inherit the real clock's time.
"""

from __future__ import annotations

import os
import re
import threading
import weakref

from twisted.internet.interfaces import IReactorTime

__all__ = ["newRecordId", "isRecordId", "recordIdTime"]

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
_RECORD_ID = re.compile(r"^[0-7][0-9abcdefghjkmnpqrstvwxyz]{25}\Z")
# Every pair of digits, by the 10 bits it writes: 13 lookups write an id.
_PAIRS = tuple(high + low for high in _ALPHABET for low in _ALPHABET)
_SHIFTS = tuple(range(120, -10, -10))


_lock = threading.Lock()
_last: weakref.WeakKeyDictionary[object, int] = weakref.WeakKeyDictionary()


def newRecordId(clock: IReactorTime) -> str:
    millis = int(clock.seconds() * 1000)
    value = (millis << 80) | int.from_bytes(os.urandom(10), "big")
    with _lock:
        last = _last.get(clock, 0)
        if value <= last:
            value = last + 1
        _last[clock] = value
    return _written(value)


def _written(value: int) -> str:
    """
    C{value} (under 2 ** 130) as 26 Crockford base32 digits, the most
    significant first.
    """
    return "".join([_PAIRS[(value >> shift) & 1023] for shift in _SHIFTS])


def isRecordId(text: object) -> bool:
    return isinstance(text, str) and _RECORD_ID.match(text) is not None


def recordIdTime(recordId: str) -> int:
    """
    The millisecond timestamp inside C{recordId}.
    """
    value = 0
    for char in recordId:
        value = value * 32 + _ALPHABET.index(char)
    return value >> 80
