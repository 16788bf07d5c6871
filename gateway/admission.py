# -*- test-case-name: tests.gateway.test_admission -*-
"""
Admission control: what a gateway replica takes on when it is busy.

Every route has a priority class (its operation's C{priority}: sessions and
account safety high, writes normal, listings and feeds low).  A request is
admitted while the requests in flight on this replica are fewer than its
class's threshold, a share of the capacity: low work stops being admitted
first, then normal work, and high work only at full capacity, so the high
class is never refused while a lower one is admitted.  Refused requests get
503 with C{Retry-After}, before any parsing or bus call.  A L{LagMonitor}
adds the other sign of overload: a reactor running late refuses the low
class, then the normal one, while the high class is still taken.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from twisted.application.service import Service

from txplatform.context import Priority

__all__ = ["Admission", "LagMonitor"]

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

    def _class(self, priority: int) -> Priority:
        # The highest class not above the request's priority.
        eligible = [p for p in self.thresholds if p <= priority]
        return max(eligible) if eligible else min(self.thresholds)

    #: With a L{LagMonitor}: past C{lagLimit} seconds of lateness the low
    #: class is refused whatever is in flight, past twice as much the
    #: normal class too.
    monitor: LagMonitor | None = None
    lagLimit = 0.02

    def admit(self, priority: int) -> bool:
        """
        Take a request of C{priority} on, if its class is still admitted.
        """
        klass = self._class(priority)
        if self.monitor is not None and klass != max(self.thresholds):
            lag = self.monitor.lag
            if lag > self.lagLimit * (2 if klass > min(self.thresholds) else 1):
                self.shed[klass] += 1
                return False
        if self.inFlight >= self.thresholds[klass]:
            self.shed[klass] += 1
            return False
        self.inFlight += 1
        self.admitted[klass] += 1
        return True

    def release(self) -> None:
        """
        An admitted request finished.
        """
        self.inFlight -= 1


class LagMonitor(Service):
    """
    How late the reactor runs: a timer due every C{interval} seconds notes
    how much later it fires, smoothed.  Admission by requests in flight
    misses the overload of many short requests (each finishes quickly, few
    are in flight, yet the reactor never rests and every request waits its
    turn); a late reactor shows it.

    @ivar lag: The smoothed lateness, seconds.
    """

    def __init__(self, clock: Any, interval: float = 0.05, smoothing: float = 0.3) -> None:
        self._clock = clock
        self.interval = interval
        self._smoothing = smoothing
        self.lag = 0.0
        self._last = 0.0
        self._call: Any = None

    def startService(self) -> None:
        super().startService()
        self.start()

    def stopService(self) -> None:
        super().stopService()
        self.stop()

    def start(self) -> None:
        if self._call is None:
            self._last = self._clock.seconds()
            self._call = self._clock.callLater(self.interval, self._tick)

    def _tick(self) -> None:
        now = self._clock.seconds()
        late = max(0.0, now - self._last - self.interval)
        self.lag += self._smoothing * (late - self.lag)
        self._last = now
        self._call = self._clock.callLater(self.interval, self._tick)

    def stop(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
