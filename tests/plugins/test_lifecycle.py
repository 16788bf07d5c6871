"""
Tests for L{txplatform_plugins._lifecycle}.
"""

import os
from typing import Any

from twisted.application.service import Service
from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail, inlineCallbacks, succeed
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import SynchronousTestCase, TestCase

from txplatform_plugins._lifecycle import HealthFile, ListeningService, ReadinessGate, StopInOrder


class FakeReactor:
    def __init__(self) -> None:
        self.triggers: list[tuple] = []
        self.stopped = False
        self.whenRunning: list[Any] = []

    def callWhenRunning(self, f: Any) -> None:
        self.whenRunning.append(f)

    def run(self) -> None:
        for f in self.whenRunning:
            f()

    def addSystemEventTrigger(self, phase: str, event: str, f: Any, *args: Any) -> None:
        self.triggers.append((phase, event, f, args))

    def stop(self) -> None:
        self.stopped = True


class Ready(Service):
    publishing = False

    def __init__(self, result: Any) -> None:
        self.result = result

    def whenStarted(self) -> Deferred[None]:
        return self.result

    def startPublishing(self) -> None:
        self.publishing = True


class ReadinessGateTests(SynchronousTestCase):
    def test_waits(self) -> None:
        """
        The gated service starts only once everything before it is ready
        (which then starts publishing), and stops with the gate.
        """
        first: Deferred[None] = Deferred()
        then = Service()
        ready = []
        services = [Ready(first), Ready(succeed(None))]
        gate = ReadinessGate(
            FakeReactor(), services, then, whenReady=lambda: ready.append(then.running)
        )
        gate.startService()
        self.assertFalse(then.running)
        self.assertEqual([s.publishing for s in services], [False, False])
        first.callback(None)
        self.assertTrue(then.running)
        self.assertEqual(ready, [False])
        self.assertEqual([s.publishing for s in services], [True, True])
        gate.stopService()
        self.assertFalse(then.running)

    def test_failure(self) -> None:
        """
        When a service cannot start, the process stops and will exit 1.
        """
        fake = FakeReactor()
        then = Service()
        gate = ReadinessGate(
            fake, [Ready(fail(RuntimeError("database missing")))], then, whenReady=self.fail
        )
        with capturedLogs() as events:
            gate.startService()
        self.assertFalse(then.running)
        self.assertFalse(fake.stopped)
        fake.run()
        self.assertTrue(fake.stopped)
        [(phase, event, f, args)] = fake.triggers
        self.assertEqual((phase, event, args), ("after", "shutdown", (1,)))
        [critical] = [e for e in events if e["log_level"] == LogLevel.critical]
        self.assertEqual(critical["why"], "database missing")

    def test_failureNamesTheService(self) -> None:
        """
        The line saying why the process stops names the service that could
        not start (services leave explained failures to the gate, see
        L{txplatform.service.BusService}).
        """
        failing = Ready(fail(RuntimeError("database missing")))
        failing.name = "account"
        gate = ReadinessGate(
            FakeReactor(), [Ready(succeed(None)), failing], Service(), whenReady=self.fail
        )
        with capturedLogs() as events:
            gate.startService()
        [critical] = [e for e in events if e["log_level"] == LogLevel.critical]
        self.assertEqual(
            (critical["what"], critical["why"]), ("starting account", "database missing")
        )


class ListeningServiceTests(TestCase):
    @inlineCallbacks
    def test_listens(self) -> Any:
        """
        The service listens on its endpoint string, logs the address it got
        and stops listening when stopped.
        """
        service = ListeningService(
            reactor, "tcp:0:interface=127.0.0.1", Factory.forProtocol(Protocol), "Test"
        )
        with capturedLogs() as events:
            service.startService()
        self.assertEqual(service.address.host, "127.0.0.1")
        [event] = [e for e in events if e.get("label") == "Test"]
        self.assertEqual(event["port"], service.address.port)
        yield service.stopService()
        self.assertIsNone(service._port)


class ListeningFailureTests(SynchronousTestCase):
    def test_unreadable(self) -> None:
        """
        An endpoint description Twisted cannot read stops the process, which
        will exit 1, with the reason: as a port that cannot be had does.
        """
        fake = FakeReactor()
        service = ListeningService(fake, "bogus:endpoint", Factory.forProtocol(Protocol), "Test")
        with capturedLogs() as events:
            service.startService()
        fake.run()
        self.assertTrue(fake.stopped)
        [(phase, event, f, args)] = fake.triggers
        self.assertEqual((phase, event, f, args), ("after", "shutdown", os._exit, (1,)))
        [critical] = [e for e in events if e["log_level"] == LogLevel.critical]
        self.assertEqual(critical["what"], "Test listening on bogus:endpoint")
        self.assertEqual(critical["why"], "Unknown endpoint type: 'bogus'")
        self.assertIsNone(service.stopService())


class HealthFileTests(SynchronousTestCase):
    def test_beats(self) -> None:
        """
        The file gets the time while the bus is connected and the services
        started, and stops being updated otherwise.
        """
        from twisted.internet.task import Clock

        clock = Clock()
        clock.advance(1000)
        path = self.mktemp()

        class Bus:
            connected = True

        class Started:
            _started: Deferred[None] = Deferred()
            _startResult = None

        bus, service = Bus(), Started()
        health = HealthFile(clock, path, bus, [service], interval=5)
        health.startService()
        self.addCleanup(health.stopService)
        self.assertFalse(os.path.exists(path))
        service._started.callback(None)
        clock.advance(5)
        with open(path) as f:
            self.assertEqual(f.read(), "1005\n")
        bus.connected = False
        clock.advance(5)
        with open(path) as f:
            self.assertEqual(f.read(), "1005\n")


class StopInOrderTests(SynchronousTestCase):
    def test_oneAfterTheOther(self) -> None:
        """
        Children stop last added first, each only once the one after it has
        finished stopping; a child that fails to stop does not stop the
        others from stopping.
        """
        events: list[str] = []
        pending: dict[str, Deferred[None]] = {}

        class Slow(Service):
            def __init__(self, name: str) -> None:
                self.name = name

            def stopService(self) -> Any:
                super().stopService()
                events.append(f"stop {self.name}")
                if self.name == "broken":
                    return fail(RuntimeError("cannot stop"))
                pending[self.name] = Deferred()
                return pending[self.name]

        top = StopInOrder()
        for name in ("bus", "service", "broken"):
            Slow(name).setServiceParent(top)
        top.startService()
        done = top.stopService()
        self.assertEqual(events, ["stop broken", "stop service"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        pending["service"].callback(None)
        self.assertEqual(events, ["stop broken", "stop service", "stop bus"])
        self.assertNoResult(done)
        pending["bus"].callback(None)
        self.successResultOf(done)
