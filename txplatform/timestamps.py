# -*- test-case-name: tests.test_timestamps -*-
"""
Timestamps: stored as integer milliseconds since the epoch, shown as
RFC 3339 UTC strings with millisecond precision.
"""

from __future__ import annotations

from datetime import datetime, timezone

__all__ = ["formatMillis", "nowMillis"]


def formatMillis(millis: int) -> str:
    """
    C{1700000000123} -> C{"2023-11-14T22:13:20.123Z"}.
    """
    moment = datetime.fromtimestamp(millis // 1000, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{millis % 1000:03d}Z"


def nowMillis(clock: object) -> int:
    return int(clock.seconds() * 1000)  # type: ignore[attr-defined]
