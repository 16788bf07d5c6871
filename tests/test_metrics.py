"""
Tests for L{txplatform.metrics}: what a service counts of its calls and
events, read back from prometheus-client's registry.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from txplatform.errors import NotFound
from txplatform.localbus import LocalBus
from txplatform.metrics import BusCollector

from .test_service import Greeter


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class ServiceMetricsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.bus = LocalBus(self.clock, retryDelays=(1.0,))
        self.service = Greeter(self.bus, self.clock)
        self.service.startService()
        self.addCleanup(self.service.stopService)
        self.successResultOf(self.service.whenStarted())

    def call(self, payload: Any) -> Any:
        d = self.bus.call(Greeter.serviceId, "hello", payload)
        self.clock.advance(0)
        return d

    def test_calls(self) -> None:
        """
        Every call served is counted by method and outcome (ok, or the
        error's code), and its time observed: the one that failed too.
        """
        labels = dict(service="greeter", method="hello")
        before = {
            outcome: sample("txplatform_calls_total", outcome=outcome, **labels)
            for outcome in ("ok", "not_found", "invalid_argument")
        }
        observed = sample("txplatform_call_seconds_count", **labels)
        self.successResultOf(self.call({"name": "bob"}))
        self.successResultOf(self.call({"name": "eve"}))
        self.failureResultOf(self.call({"name": "nobody"}), NotFound)
        self.failureResultOf(self.call({"name": ""}))
        self.assertEqual(
            {
                outcome: sample("txplatform_calls_total", outcome=outcome, **labels) - count
                for outcome, count in before.items()
            },
            {"ok": 2, "not_found": 1, "invalid_argument": 1},
        )
        self.assertEqual(sample("txplatform_call_seconds_count", **labels) - observed, 4)

    def test_slowCallTimed(self) -> None:
        """
        A call's time runs from its arrival to its reply.
        """
        labels = dict(service="greeter", method="hello")
        total = sample("txplatform_call_seconds_sum", **labels)
        d = self.call({"name": "slow"})
        self.clock.advance(0.25)
        self.service.pendingAnswer.callback({"greeting": "at last"})
        self.successResultOf(d)
        self.assertAlmostEqual(sample("txplatform_call_seconds_sum", **labels) - total, 0.25)

    def test_events(self) -> None:
        """
        Events are counted by the pattern handled and outcome: ok, failed
        (for each attempt) or malformed.
        """
        labels = dict(service="greeter", pattern="named.*")

        def counts() -> dict[str, float]:
            return {
                outcome: sample("txplatform_events_handled_total", outcome=outcome, **labels)
                for outcome in ("ok", "failed", "malformed")
            }

        before = counts()
        self.bus.publish("named.one", {"name": "a"})
        self.bus.publish("named.two", {"name": ""})
        self.clock.advance(0)
        failing = [True]

        def named(event: Any, context: Any) -> None:
            if failing.pop():
                raise RuntimeError("not this time")

        self.patch(self.service, "events", _Appending(named))
        self.bus.publish("named.three", {"name": "c"})
        self.clock.advance(0)
        failing.append(False)
        self.clock.advance(1.0)
        after = counts()
        self.assertEqual(
            {k: after[k] - before[k] for k in after}, {"ok": 2, "failed": 1, "malformed": 1}
        )


class _Appending:
    """
    Stands in for Greeter's list of events: runs C{f} on each.
    """

    def __init__(self, f: Any) -> None:
        self._f = f

    def append(self, item: Any) -> None:
        self._f(*item)


class BusMetricsTests(SynchronousTestCase):
    def test_inFlightAndDeadlines(self) -> None:
        """
        A call waiting for its answer is in flight; one whose deadline
        passes is counted by callee and method, and is in flight no more.
        """
        clock = Clock()
        bus = LocalBus(clock)
        service = Greeter(bus, clock)
        service.startService()
        self.addCleanup(service.stopService)
        self.successResultOf(service.whenStarted())
        inFlight = sample("txplatform_bus_calls_in_flight")
        expired = sample(
            "txplatform_bus_deadlines_expired_total", service=Greeter.serviceId.hex, method="hello"
        )
        d = bus.call(Greeter.serviceId, "hello", {"name": "slow"}, timeout=2.0)
        clock.advance(0)
        self.assertEqual(sample("txplatform_bus_calls_in_flight") - inFlight, 1)
        clock.advance(2.0)
        self.failureResultOf(d)
        self.assertEqual(sample("txplatform_bus_calls_in_flight") - inFlight, 0)
        self.assertEqual(
            sample(
                "txplatform_bus_deadlines_expired_total",
                service=Greeter.serviceId.hex,
                method="hello",
            )
            - expired,
            1,
        )

    def test_collector(self) -> None:
        """
        L{BusCollector} reads the bus when metrics are read: connected or
        not, and the confirms pending where the bus has them.
        """

        class FakeBus:
            connected = False

            def confirmsPending(self) -> int:
                return 3

        registry = CollectorRegistry()
        registry.register(BusCollector(FakeBus(), "amqp"))
        self.assertEqual(
            registry.get_sample_value("txplatform_bus_connected", {"transport": "amqp"}), 0.0
        )
        self.assertEqual(
            registry.get_sample_value("txplatform_bus_confirms_pending", {"transport": "amqp"}),
            3.0,
        )
        registry = CollectorRegistry()
        registry.register(BusCollector(LocalBus(Clock()), "local"))
        self.assertEqual(
            registry.get_sample_value("txplatform_bus_connected", {"transport": "local"}), 1.0
        )
        self.assertIsNone(
            registry.get_sample_value("txplatform_bus_confirms_pending", {"transport": "local"})
        )
