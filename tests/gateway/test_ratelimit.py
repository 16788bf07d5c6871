"""
Tests for gateway.ratelimit: requests per address and per account, counted
across gateway replicas sharing one bus (a Clock drives time and the
in-process bus).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from txplatform.localbus import LocalBus
from txplatform_gateway.openapi import openapiDocument
from txplatform_gateway.ratelimit import (
    USAGE_EVENT,
    AccountRateLimit,
    AddressRateLimit,
    addressKey,
    parseRateLimit,
)

from ..support import SQLiteMixin
from .harness import OpenAPIChecker, PlatformTestCase


class ParseTests(SynchronousTestCase):
    def test_parse(self) -> None:
        self.assertEqual(parseRateLimit("600/60"), (600, 60.0))
        self.assertEqual(parseRateLimit("5/1.5"), (5, 1.5))
        for bad in ["", "600", "ten/60", "0/60", "10/0", "10/100000", "10/x"]:
            self.assertRaises(ValueError, parseRateLimit, bad)

    def test_addressKey(self) -> None:
        """
        IPv4 addresses count alone, IPv6 ones by /64, IPv4-mapped IPv6 as
        their IPv4 address.
        """
        self.assertEqual(addressKey("192.0.2.7"), "192.0.2.7")
        self.assertEqual(addressKey("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::/64")
        self.assertEqual(addressKey("2001:db8:1:2:bbbb::9"), "2001:db8:1:2::/64")
        self.assertEqual(addressKey("::ffff:192.0.2.7"), "192.0.2.7")
        self.assertEqual(addressKey("/run/socket"), "/run/socket")


class LimitTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000 * 60)  # at the start of a window
        self.bus = LocalBus(self.clock)
        self.bus.startService()
        self.addCleanup(self.bus.stopService)

    def replica(self, limit: int = 10, window: float = 60.0) -> AddressRateLimit:
        limiter = AddressRateLimit(self.bus, self.clock, limit, window, share=0.5)
        limiter.startService()
        self.addCleanup(limiter.stopService)
        self.clock.advance(0)  # subscribed
        return limiter

    def admitted(self, limiter: AddressRateLimit, address: str, count: int) -> int:
        return sum(limiter.check(address) is None for _ in range(count))

    def settle(self) -> None:
        """
        Let every replica share its counts, and the bus deliver them.
        """
        self.clock.advance(0.5)
        for _ in range(5):
            self.clock.advance(0)

    def test_alone(self) -> None:
        """
        One replica admits the limit per address, then says how long to
        wait; other addresses are not affected.
        """
        limiter = self.replica(limit=10)
        self.clock.advance(15)
        self.assertEqual(self.admitted(limiter, "192.0.2.1", 10), 10)
        wait = limiter.check("192.0.2.1")
        self.assertIsNotNone(wait)
        # Ten in this window: the next fits once the window is over and a
        # tenth of the next has passed (the last window's ten weigh 9).
        self.assertAlmostEqual(wait, 45 + 6)
        self.assertEqual(self.admitted(limiter, "192.0.2.2", 10), 10)
        self.clock.advance(wait - 0.01)
        self.assertIsNotNone(limiter.check("192.0.2.1"))
        self.clock.advance(0.02)
        self.assertIsNone(limiter.check("192.0.2.1"))

    def test_slidingWindow(self) -> None:
        """
        The last window's requests weigh by how much of it is still within
        the window: no double burst at the edge.
        """
        limiter = self.replica(limit=10)
        self.clock.advance(59)
        self.assertEqual(self.admitted(limiter, "192.0.2.1", 10), 10)
        self.clock.advance(2)  # 1 s into the next window: the ten weigh ~9.8
        self.assertEqual(self.admitted(limiter, "192.0.2.1", 10), 0)
        self.clock.advance(29)  # half way: they weigh 5
        self.assertEqual(self.admitted(limiter, "192.0.2.1", 10), 5)
        self.clock.advance(120)  # both windows gone
        self.assertEqual(self.admitted(limiter, "192.0.2.1", 20), 10)

    def test_sharedAcrossReplicas(self) -> None:
        """
        Requests through several replicas count as one: once they shared
        their counts, the limit is the total's.
        """
        first, second, third = self.replica(), self.replica(), self.replica()
        self.assertEqual(self.admitted(first, "192.0.2.1", 4), 4)
        self.assertEqual(self.admitted(second, "192.0.2.1", 3), 3)
        self.settle()
        self.assertEqual(self.admitted(third, "192.0.2.1", 10), 3)
        self.settle()
        for limiter in (first, second, third):
            self.assertIsNotNone(limiter.check("192.0.2.1"))
        self.assertEqual(self.admitted(first, "192.0.2.9", 10), 10)

    def test_totalsNotDeltas(self) -> None:
        """
        Counts travel as totals for the window: an event seen twice, or an
        older one after a newer, counts once.
        """
        limiter = self.replica()
        window = limiter._current.index
        for counts in [{"a": 3}, {"a": 3}, {"a": 5}, {"a": 4}]:
            self.bus.publish(USAGE_EVENT, {"replica": "other", "window": window, "counts": counts})
        self.bus.publish(USAGE_EVENT, {"replica": "old", "window": window - 5, "counts": {"a": 9}})
        self.bus.publish(USAGE_EVENT, {"replica": "x", "window": window, "counts": {"a": True}})
        self.bus.publish(USAGE_EVENT, ["not", "usage"])
        for _ in range(10):
            self.clock.advance(0)
        self.assertEqual(self.admitted(limiter, "a", 10), 5)

    def test_scopes(self) -> None:
        """
        Accounts are counted by id, apart from addresses: replicas share
        each kind's counts, and neither counts the other's.
        """
        addresses = self.replica()
        accounts = [AccountRateLimit(self.bus, self.clock, 10, 60.0, share=0.5) for _ in "ab"]
        for limiter in accounts:
            limiter.startService()
            self.addCleanup(limiter.stopService)
        self.clock.advance(0)
        self.assertEqual(self.admitted(accounts[0], "01hx0000000000000000000000", 6), 6)
        self.assertEqual(self.admitted(addresses, "01hx0000000000000000000000", 2), 2)
        self.settle()
        self.assertEqual(self.admitted(accounts[1], "01hx0000000000000000000000", 10), 4)
        self.assertEqual(self.admitted(addresses, "01hx0000000000000000000000", 10), 8)
        # Old replicas' events, without a scope, count addresses.
        window = addresses._current.index
        self.bus.publish(USAGE_EVENT, {"replica": "old", "window": window, "counts": {"a": 7}})
        self.settle()
        self.assertEqual(self.admitted(addresses, "a", 10), 3)
        self.assertEqual(self.admitted(accounts[0], "a", 10), 10)

    def test_ownEventsIgnored(self) -> None:
        """
        A replica hears its own usage events and does not count them twice.
        """
        limiter = self.replica()
        self.assertEqual(self.admitted(limiter, "192.0.2.1", 6), 6)
        self.settle()
        self.settle()
        self.assertEqual(self.admitted(limiter, "192.0.2.1", 10), 4)

    def test_boundedMemory(self) -> None:
        """
        Past maxTracked addresses in a window, new ones go uncounted (and it
        is logged once) rather than growing without bound.
        """
        limiter = self.replica(limit=1)
        limiter.maxTracked = 3
        for n in range(3):
            self.assertIsNone(limiter.check(f"192.0.2.{n}"))
            self.assertIsNotNone(limiter.check(f"192.0.2.{n}"))
        for _ in range(3):
            self.assertIsNone(limiter.check("192.0.2.200"))
        self.assertEqual(len(limiter._current.local), 3)


class GatewayRateLimitTests(SQLiteMixin, PlatformTestCase):
    """
    The limit through HTTP: 429 problem details with Retry-After, per
    client address (as read through trusted proxies), probes exempt.
    """

    trustedProxies = ["127.0.0.1"]

    @inlineCallbacks
    def setUp(self) -> Any:
        yield super().setUp()
        limiter = AddressRateLimit(self.bus, self.clock, limit=5, window=60)
        limiter.startService()
        self.addCleanup(limiter.stopService)
        self.gateway.rateLimit = limiter
        self.openapi = OpenAPIChecker(openapiDocument(self.gateway))

    @inlineCallbacks
    def test_limited(self) -> Any:
        client = {"X-Forwarded-For": "198.51.100.7"}
        for _ in range(5):
            reply = yield self.request("GET", "/v1/accounts/nobody", headers=client)
            self.assertEqual(reply.status, 404)
        reply = yield self.request("GET", "/v1/accounts/nobody", headers=client)
        problem = self.assertProblem(reply, 429, "resource_exhausted")
        self.assertIn("too many requests from your address", problem["detail"])
        self.assertEqual(reply.header("retry-after"), str(problem["retry_after"]))
        self.assertGreaterEqual(problem["retry_after"], 1)
        # Probes are not counted, nor refused.
        for path in ["/healthz", "/v1/openapi.json"]:
            reply = yield self.request("GET", path, headers=client)
            self.assertEqual(reply.status, 200)
        # Another client is not affected.
        reply = yield self.request(
            "GET", "/v1/accounts/nobody", headers={"X-Forwarded-For": "198.51.100.8"}
        )
        self.assertEqual(reply.status, 404)


class GatewayAccountRateLimitTests(SQLiteMixin, PlatformTestCase):
    """
    The limit per account through HTTP: an account's requests count
    together whatever address they come from; other accounts, and requests
    without a token, are not affected.
    """

    trustedProxies = ["127.0.0.1"]

    @inlineCallbacks
    def setUp(self) -> Any:
        yield super().setUp()
        limiter = AccountRateLimit(self.bus, self.clock, limit=4, window=60)
        limiter.startService()
        self.addCleanup(limiter.stopService)
        self.gateway.accountRateLimit = limiter
        self.openapi = OpenAPIChecker(openapiDocument(self.gateway))
        for name in ("alice", "bob"):
            yield self.register(name)

    @inlineCallbacks
    def test_limited(self) -> Any:
        alice = yield self.login("alice")
        for n in range(4):
            reply = yield self.request(
                "GET", "/v1/me", token=alice, headers={"X-Forwarded-For": f"198.51.100.{n}"}
            )
            self.assertEqual(reply.status, 200)
        reply = yield self.request(
            "GET", "/v1/me", token=alice, headers={"X-Forwarded-For": "203.0.113.1"}
        )
        problem = self.assertProblem(reply, 429, "resource_exhausted")
        self.assertIn("too many requests from your account", problem["detail"])
        self.assertEqual(reply.header("retry-after"), str(problem["retry_after"]))
        # Another session of the same account shares the count.
        again = yield self.login("alice")
        reply = yield self.request("GET", "/v1/notifications", token=again)
        self.assertProblem(reply, 429, "resource_exhausted")
        # Others are not affected, nor requests without a token.
        bob = yield self.login("bob")
        reply = yield self.request("GET", "/v1/me", token=bob)
        self.assertEqual(reply.status, 200)
        reply = yield self.request("GET", "/v1/accounts/alice")
        self.assertEqual(reply.status, 200)
        document = openapiDocument(self.gateway)
        self.assertIn("429", document["paths"]["/v1/me"]["get"]["responses"])
        self.assertNotIn("429", document["paths"]["/v1/accounts/{username}"]["get"]["responses"])
