# -*- test-case-name: tests.gateway.test_admission -*-
"""
Admission control: what a gateway replica takes on when it is busy.

Every route has a priority class (its operation's C{priority}: sessions and
account safety high, writes normal, listings and feeds low).  A request is
admitted while the requests in flight on this replica are fewer than its
class's threshold, a share of the capacity: low work stops being admitted
first, then normal work, and high work only at full capacity, so the high
class is never refused while a lower one is admitted.  Refused requests get
503 with C{Retry-After}, before any parsing or bus call.  A L{BusyMonitor}
adds the other sign of overload: a reactor busy most of its time refuses
the low class, then the normal one, while higher classes are coming and
the high class is still taken.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from typing import Any, Callable

from twisted.application.service import Service

from txplatform.context import Priority

__all__ = ["Admission", "BusyMonitor"]

# Thresholds as shares of the capacity, by class.
DEFAULT_SHARES = {Priority.LOW: 0.5, Priority.NORMAL: 0.8, Priority.HIGH: 1.0}


class Admission:
    """
    @ivar inFlight: Requests admitted and not yet finished.
    @ivar shed: Requests refused, by class.
    """

    def __init__(self, capacity: int = 512, shares: dict[Priority, float] | None = None) -> None:
        if capacity < 1:
            raise ValueError(f"the capacity is at least 1, not {capacity}")
        shares = dict(DEFAULT_SHARES if shares is None else shares)
        self.capacity = capacity
        self.thresholds = {
            priority: max(1, min(capacity, round(capacity * share)))
            for priority, share in shares.items()
        }
        if sorted(self.thresholds.values()) != [
            self.thresholds[p] for p in sorted(self.thresholds)
        ]:
            raise ValueError("a higher class needs a threshold at least as high")
        self.inFlight = 0
        self.admitted: Counter[Priority] = Counter()
        self.shed: Counter[Priority] = Counter()
        self._lastSeen: dict[Priority, float] = {}
        # Worked out once: every request asks.
        self._classes: dict[int, Priority] = {}
        self._higher = {p: [q for q in self.thresholds if q > p] for p in self.thresholds}
        self._lowest = min(self.thresholds)

    def _class(self, priority: int) -> Priority:
        klass = self._classes.get(priority)
        if klass is None:
            # The highest class not above the request's priority.
            eligible = [p for p in self.thresholds if p <= priority]
            klass = self._classes[priority] = max(eligible) if eligible else self._lowest
        return klass

    #: With a L{BusyMonitor}: a reactor busier than C{busyLimit} refuses
    #: the low class, and busier than halfway from there to full the normal
    #: class too, keeping the rest of its time for the higher classes, while
    #: they are there: only if a request of a higher class came in the last
    #: C{reserveFor} seconds.  Alone, a class may have the whole reactor;
    #: and only while other requests are in flight: a request that arrives
    #: when nothing else is being served (a client waiting for each answer)
    #: waits for nobody, and is never refused for a busy reactor.
    monitor: BusyMonitor | None = None
    busyLimit = 0.5
    reserveFor = 2.0

    def admit(self, priority: int) -> bool:
        """
        Take a request of C{priority} on, if its class is still admitted.
        """
        klass = self._class(priority)
        if self.monitor is not None:
            now = self.monitor.clock.seconds()
            self._lastSeen[klass] = now
            if self._reserved(klass, now):
                self.shed[klass] += 1
                return False
        if self.inFlight >= self.thresholds[klass]:
            self.shed[klass] += 1
            return False
        self.inFlight += 1
        self.admitted[klass] += 1
        return True

    def _reserved(self, klass: Priority, now: float) -> bool:
        """
        Whether the reactor's time left is kept from C{klass} for a higher
        class.
        """
        assert self.monitor is not None
        higher = self._higher[klass]
        if not higher:
            return False
        limit = self.busyLimit
        if klass > self._lowest:
            limit = (1 + limit) / 2
        if self.monitor.busy <= limit or not self.inFlight:
            return False
        since = now - self.reserveFor
        return any(self._lastSeen.get(p, -math.inf) > since for p in higher)

    def release(self) -> None:
        """
        An admitted request finished.
        """
        self.inFlight -= 1


class BusyMonitor(Service):
    """
    How busy the reactor is: the share of the wall-clock time its thread
    spent on the CPU, measured by a timer every C{interval} seconds and
    smoothed.  Admission by requests in flight misses the overload of many
    short requests (each finishes quickly, few are in flight, yet the
    reactor never rests and every request waits its turn at every
    crossing); a busy reactor shows it.  Its lateness would not: a reactor
    at full load still runs timers nearly on time, a turn being short.

    @ivar busy: The smoothed share, from 0 (idle) to 1 (never waiting).
    """

    def __init__(
        self,
        clock: Any,
        interval: float = 0.05,
        smoothing: float = 0.3,
        cpuTime: Callable[[], float] = time.thread_time,
    ) -> None:
        self.clock = clock
        self.interval = interval
        self._smoothing = smoothing
        # Read in the reactor's thread: the CPU time of that thread alone,
        # not of the threads hashing passwords or waiting on databases.
        self._cpuTime = cpuTime
        self.busy = 0.0
        self._last = (0.0, 0.0)
        self._call: Any = None

    def startService(self) -> None:
        super().startService()
        self.start()

    def stopService(self) -> None:
        super().stopService()
        self.stop()

    def start(self) -> None:
        if self._call is None:
            self._last = (self.clock.seconds(), self._cpuTime())
            self._call = self.clock.callLater(self.interval, self._tick)

    def _tick(self) -> None:
        now, cpu = self.clock.seconds(), self._cpuTime()
        elapsed = now - self._last[0]
        if elapsed > 0:
            share = min(1.0, max(0.0, (cpu - self._last[1]) / elapsed))
            self.busy += self._smoothing * (share - self.busy)
        self._last = (now, cpu)
        self._call = self.clock.callLater(self.interval, self._tick)

    def stop(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
