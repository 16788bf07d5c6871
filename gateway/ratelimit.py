# -*- test-case-name: tests.gateway.test_ratelimit -*-
"""
Requests per client address, and per account, limited across every
gateway replica.

Each replica counts the requests it admits per address, in windows of
C{window} seconds aligned to the clock (so replicas agree on them without
talking), and estimates an address's rate as a sliding window: this
window's count plus the last one's, weighted by how much of it still lies
within C{window} seconds.  No burst of twice the limit at a window's edge.

Replicas share their counts over the bus: every C{share} seconds each
publishes C{gateway.usage} with the counts that changed, as totals for the
window (so a duplicated or lost event does no harm: the next one
corrects it), and adds the others' latest totals to its own.  A client
spreading requests over replicas thus gets at most the limit plus what the
replicas admit in one sharing interval.

IPv6 clients are counted by /64, the block one subscriber usually holds.
Accounts are counted by id, whatever addresses their requests come from
(one account driven from many addresses).  Each kind of limit shares its
counts under its own C{scope}.
"""

from __future__ import annotations

import ipaddress
import os
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from txplatform.interfaces import IBus

__all__ = [
    "AccountRateLimit",
    "AddressRateLimit",
    "USAGE_EVENT",
    "addressKey",
    "parseRateLimit",
]

USAGE_EVENT = "gateway.usage"
#: Addresses per usage event: bounded messages, however many clients.
_BATCH = 2000


def parseRateLimit(text: str) -> tuple[int, float]:
    """
    C{"600/60"}: 600 requests per 60 seconds.

    @raise ValueError: Saying what is wrong.
    """
    count, slash, seconds = text.partition("/")
    try:
        if not slash:
            raise ValueError
        limit, window = int(count), float(seconds)
    except ValueError:
        raise ValueError(f"{text!r} is not REQUESTS/SECONDS, such as 600/60") from None
    if limit < 1 or not (1 <= window <= 86400):
        raise ValueError(f"{text!r}: at least 1 request, per 1 to 86400 seconds")
    return limit, window


def addressKey(address: str) -> str:
    """
    What an address is counted as: itself for IPv4, its /64 for IPv6.
    """
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address  # not an IP (a UNIX socket peer): counted as given
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class _Window:
    """
    Counts for one window: this replica's, and the sum of the others'
    latest totals (kept per replica so totals replace, not add).
    """

    __slots__ = ("index", "local", "remote", "byReplica")

    def __init__(self, index: int) -> None:
        self.index = index
        self.local: dict[str, int] = {}
        self.remote: dict[str, int] = {}
        self.byReplica: dict[tuple[str, str], int] = {}

    def count(self, key: str) -> int:
        return self.local.get(key, 0) + self.remote.get(key, 0)

    def merge(self, replica: str, counts: dict[str, Any]) -> None:
        for key, total in counts.items():
            if not isinstance(total, int) or isinstance(total, bool):
                continue
            old = self.byReplica.get((replica, key), 0)
            if total > old:
                self.byReplica[(replica, key)] = total
                self.remote[key] = self.remote.get(key, 0) + total - old


class AddressRateLimit(Service):
    """
    @ivar limit: Requests admitted per address per C{window} seconds.
    @ivar maxTracked: Addresses counted per window at most, bounding memory;
        past it, new addresses go uncounted until the window ends (logged).
    @ivar scope: What is counted, in the usage events: replicas count
        addresses and accounts apart.
    """

    log = Logger()
    scope = "address"

    @staticmethod
    def key(subject: str) -> str:
        return addressKey(subject)

    def __init__(
        self,
        bus: IBus,
        clock: IReactorTime,
        limit: int,
        window: float = 60.0,
        share: float = 0.5,
        maxTracked: int = 200_000,
    ) -> None:
        self.bus = bus
        self.clock = clock
        self.limit = limit
        self.window = window
        self.share = share
        self.maxTracked = maxTracked
        self.replica = os.urandom(8).hex()
        self._current = _Window(self._index())
        self._previous = _Window(self._current.index - 1)
        self._changed: set[str] = set()
        self._full = False
        self._sharing = LoopingCall(self._publish)
        self._sharing.clock = clock
        self._subscription: Any = None

    def _index(self) -> int:
        return int(self.clock.seconds() // self.window)

    def _roll(self) -> None:
        index = self._index()
        if index == self._current.index:
            return
        if index == self._current.index + 1:
            self._previous = self._current
        else:
            self._previous = _Window(index - 1)
        self._current = _Window(index)
        self._changed = set()
        self._full = False

    def _estimate(self, key: str, elapsed: float) -> float:
        return self._current.count(key) + self._previous.count(key) * (1 - elapsed)

    def check(self, subject: str) -> float | None:
        """
        Count a request from C{subject} (an address, or an account), or
        refuse it.

        @return: C{None} if admitted; otherwise the seconds after which the
            subject may try again.
        """
        self._roll()
        key = self.key(subject)
        now = self.clock.seconds()
        elapsed = now / self.window - self._current.index  # fraction of this window gone
        if self._estimate(key, elapsed) + 1 > self.limit:
            return self._retryAfter(key, elapsed)
        local = self._current.local
        if key not in local and len(local) >= self.maxTracked:
            if not self._full:
                self._full = True
                self.log.warn(
                    "Rate limit: {count} {scope} keys this window; new ones go uncounted",
                    count=len(local),
                    scope=self.scope,
                )
            return None
        local[key] = local.get(key, 0) + 1
        self._changed.add(key)
        return None

    def _retryAfter(self, key: str, elapsed: float) -> float:
        """
        Seconds until one more request from C{key} fits, if it sends none
        meanwhile.
        """
        current, previous = self._current.count(key), self._previous.count(key)
        room = self.limit - 1 - current  # what the last window's share must fall to
        if room >= 0 and previous > 0:
            # Within this window, once (1 - f) * previous <= room.
            fraction = 1 - room / previous
            return max((fraction - elapsed) * self.window, 0.0)
        # Next window: this one becomes the last; (1 - f) * current <= limit - 1.
        fraction = 1 - (self.limit - 1) / current if current else 0.0
        return (1 - elapsed + fraction) * self.window

    # Sharing

    def startService(self) -> None:
        super().startService()
        d = self.bus.subscribe(USAGE_EVENT, self._received, group=None)
        d.addCallback(self._subscribed)
        d.addErrback(lambda f: self.log.failure("Rate limit: cannot hear the other gateways", f))
        self._sharing.start(self.share, now=False)

    def _subscribed(self, subscription: Any) -> None:
        if self.running:
            self._subscription = subscription
        else:
            subscription.stop()

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        if self._sharing.running:
            self._sharing.stop()
        subscription, self._subscription = self._subscription, None
        return subscription.stop() if subscription is not None else None

    def _publish(self) -> None:
        self._roll()
        if not self._changed:
            return
        keys, self._changed = sorted(self._changed), set()
        for start in range(0, len(keys), _BATCH):
            counts = {k: self._current.local[k] for k in keys[start : start + _BATCH]}
            d = self.bus.publish(
                USAGE_EVENT,
                {
                    "replica": self.replica,
                    "scope": self.scope,
                    "window": self._current.index,
                    "counts": counts,
                },
            )
            d.addErrback(
                lambda f: self.log.warn("Rate limit: usage not shared: {why}", why=f.value)
            )

    def _received(self, payload: Any, context: Any) -> None:
        if not isinstance(payload, dict) or payload.get("replica") == self.replica:
            return
        if payload.get("scope", "address") != self.scope:
            return
        replica, index, counts = (
            payload.get("replica"),
            payload.get("window"),
            payload.get("counts"),
        )
        if not isinstance(replica, str) or not isinstance(counts, dict):
            return
        self._roll()
        for window in (self._current, self._previous):
            if window.index == index:
                window.merge(replica, counts)


class AccountRateLimit(AddressRateLimit):
    """
    Requests per account (its id), for authenticated requests.
    """

    scope = "account"

    @staticmethod
    def key(subject: str) -> str:
        return subject
