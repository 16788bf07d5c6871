# -*- test-case-name: tests.test_pagination -*-
"""
Timestamps: stored as integer milliseconds since the epoch, shown as
RFC 3339 UTC strings with millisecond precision.
"""

from __future__ import annotations

import time

__all__ = ["formatMillis", "nowMillis"]


def formatMillis(millis: int) -> str:
    """
    C{1700000000123} -> C{"2023-11-14T22:13:20.123Z"}.
    """
    t = time.gmtime(millis // 1000)
    return "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ" % (
        t.tm_year,
        t.tm_mon,
        t.tm_mday,
        t.tm_hour,
        t.tm_min,
        t.tm_sec,
        millis % 1000,
    )


def nowMillis(clock: object) -> int:
    return int(clock.seconds() * 1000)  # type: ignore[attr-defined]
