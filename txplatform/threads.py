# -*- test-case-name: tests.test_threads -*-
"""
Threads of a service's own, for blocking work that should not share the
reactor's pool with the database (a password hash, say).
"""

from __future__ import annotations

from threading import Thread
from typing import Any

from twisted.python.threadpool import ThreadPool

__all__ = ["ownThreadPool"]


def _daemonThread(*args: Any, **kwargs: Any) -> Thread:
    # Work under way must not hold the process open at its exit (a process
    # that never ran its reactor's shutdown: a test runner's worker, say).
    return Thread(*args, daemon=True, **kwargs)


def ownThreadPool(name: str, size: int) -> ThreadPool:
    """
    A thread pool of exactly C{size} threads named after C{name}, not yet
    started; its threads are daemons.  Its user starts and stops it.
    """
    pool = ThreadPool(size, size, name=name)
    pool.threadFactory = _daemonThread  # type: ignore[assignment]
    return pool
