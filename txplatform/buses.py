# -*- test-case-name: tests.test_buses -*-
"""
Choosing a bus from a URL, as the C{--bus} option of every process does.
"""

from __future__ import annotations

from typing import Any

from .localbus import LocalBus

__all__ = ["busFromURL"]


def busFromURL(url: str, reactor: Any) -> LocalBus:
    """
    The bus C{url} names:

      - C{local:}: the in-process bus, for everything in one process.

    @raise ValueError: an unknown kind of bus.
    """
    if url in ("local", "local:"):
        return LocalBus(reactor)
    raise ValueError(f"unknown bus {url!r}: this release has local: (the in-process bus)")
