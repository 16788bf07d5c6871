"""
Tests for L{txplatform_gateway.admission}, alone and in a gateway over real HTTP.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from txplatform.context import Priority
from txplatform.errors import NotFound
from txplatform_gateway import Gateway
from txplatform_gateway.admission import Admission, BusyMonitor

from ..support import eventually


class AdmissionTests(SynchronousTestCase):
    def test_thresholds(self) -> None:
        """
        Low work stops at half the capacity, normal work at four fifths,
        high work at the capacity.
        """
        admission = Admission(10)
        self.assertEqual(
            admission.thresholds, {Priority.LOW: 5, Priority.NORMAL: 8, Priority.HIGH: 10}
        )
        admitted = [admission.admit(Priority.LOW) for _ in range(7)]
        self.assertEqual(admitted, [True] * 5 + [False] * 2)
        self.assertEqual([admission.admit(Priority.NORMAL) for _ in range(4)], [True] * 3 + [False])
        self.assertEqual([admission.admit(Priority.HIGH) for _ in range(3)], [True, True, False])
        self.assertEqual(
            dict(admission.shed), {Priority.LOW: 2, Priority.NORMAL: 1, Priority.HIGH: 1}
        )
        admission.release()
        self.assertFalse(admission.admit(Priority.LOW))
        self.assertTrue(admission.admit(Priority.HIGH))

    def test_neverHighBeforeLower(self) -> None:
        """
        Whatever the mix, when a high request is refused no lower one is
        admitted.
        """
        import random

        generator = random.Random(5)
        admission = Admission(20)
        for _ in range(2000):
            if admission.inFlight and generator.random() < 0.45:
                admission.release()
                continue
            priority = generator.choice(list(Priority))
            if not admission.admit(priority) and priority == Priority.HIGH:
                for lower in (Priority.LOW, Priority.NORMAL):
                    self.assertFalse(admission.admit(lower))

    def test_unlistedPriority(self) -> None:
        """
        A priority between classes counts as the class below it.
        """
        admission = Admission(10)
        for _ in range(5):
            admission.admit(Priority.LOW)
        self.assertFalse(admission.admit(3))
        self.assertTrue(admission.admit(7))

    def test_invalid(self) -> None:
        self.assertRaises(ValueError, Admission, 0)
        self.assertRaises(ValueError, Admission, 10, {Priority.LOW: 0.9, Priority.HIGH: 0.5})


class FakeCPU:
    """
    The reactor thread's CPU time, as a test sets it.
    """

    def __init__(self) -> None:
        self.seconds = 0.0

    def __call__(self) -> float:
        return self.seconds


class BusyTests(SynchronousTestCase):
    def test_busy(self) -> None:
        """
        The monitor measures the share of each interval the reactor's
        thread spent on the CPU, smoothed; stopped, it leaves no timer.
        """
        clock, cpu = Clock(), FakeCPU()
        monitor = BusyMonitor(clock, interval=0.05, smoothing=0.5, cpuTime=cpu)
        monitor.startService()
        clock.advance(0.05)
        self.assertEqual(monitor.busy, 0.0)
        cpu.seconds += 0.04  # 80% of the next interval
        clock.advance(0.05)
        self.assertAlmostEqual(monitor.busy, 0.4)
        cpu.seconds += 0.05
        clock.advance(0.05)
        self.assertAlmostEqual(monitor.busy, 0.7)
        for _ in range(20):
            clock.advance(0.05)
        self.assertLess(monitor.busy, 0.001)
        monitor.stopService()
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_lateTick(self) -> None:
        """
        A tick that comes late measures the share over the time that really
        passed, and never more than all of it.
        """
        clock, cpu = Clock(), FakeCPU()
        monitor = BusyMonitor(clock, interval=0.05, smoothing=1.0, cpuTime=cpu)
        monitor.start()
        cpu.seconds += 0.1
        clock.advance(0.2)  # one turn of 100 ms on the CPU, 100 ms idle
        self.assertAlmostEqual(monitor.busy, 0.5)
        cpu.seconds += 0.2  # several threads' worth would be a clock error
        clock.advance(0.05)
        self.assertEqual(monitor.busy, 1.0)
        monitor.stop()

    def test_threadTime(self) -> None:
        """
        By default the monitor reads the CPU time of the thread it runs in
        (the reactor's): spinning in that thread counts; sleeping, or
        another thread spinning (hashing a password), does not.
        """
        import threading
        import time

        monitor = BusyMonitor(Clock())

        def spin(seconds: float) -> None:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                pass

        before = monitor._cpuTime()
        time.sleep(0.05)
        other = threading.Thread(target=spin, args=(0.2,))
        other.start()
        other.join()
        self.assertLess(monitor._cpuTime() - before, 0.02)
        before = monitor._cpuTime()
        deadline = time.monotonic() + 10
        while monitor._cpuTime() - before < 0.05 and time.monotonic() < deadline:
            pass
        self.assertGreaterEqual(monitor._cpuTime() - before, 0.05)

    def test_busyReactorSheds(self) -> None:
        """
        While higher classes are coming, a busy reactor refuses the low
        class past the limit and the normal class past halfway from the
        limit to full, whatever is in flight; never the high class.
        """
        clock = Clock()
        monitor = BusyMonitor(clock)
        admission = Admission(100)
        admission.monitor = monitor
        admission.busyLimit = 0.5
        classes = (Priority.LOW, Priority.NORMAL, Priority.HIGH)
        monitor.busy = 0.6
        self.assertEqual([admission.admit(p) for p in classes], [True, True, True])
        self.assertEqual([admission.admit(p) for p in classes], [False, True, True])
        monitor.busy = 0.8
        self.assertEqual([admission.admit(p) for p in classes], [False, False, True])
        monitor.busy = 1.0
        self.assertEqual([admission.admit(p) for p in classes], [False, False, True])
        self.assertEqual(admission.shed, {Priority.LOW: 3, Priority.NORMAL: 2})
        monitor.busy = 0.5
        self.assertTrue(admission.admit(Priority.LOW))

    def test_loneClient(self) -> None:
        """
        A client that waits for each answer is never refused for a busy
        reactor: its requests arrive when nothing else is in flight (the
        embedded platform, one client posting 100 times then reading, was
        refused before).  Let another request be in flight, and the
        reservation holds again.
        """
        clock = Clock()
        monitor = BusyMonitor(clock)
        admission = Admission(100)
        admission.monitor = monitor
        monitor.busy = 0.99
        for _ in range(100):
            self.assertTrue(admission.admit(Priority.NORMAL))
            admission.release()
        self.assertTrue(admission.admit(Priority.LOW))
        admission.release()
        self.assertTrue(admission.admit(Priority.NORMAL))
        self.assertFalse(admission.admit(Priority.LOW))

    def test_aloneTakesAll(self) -> None:
        """
        The reactor's time is kept for higher classes only while they come:
        a class alone, or once the higher ones stopped for C{reserveFor}
        seconds, is admitted however busy the reactor.
        """
        clock = Clock()
        monitor = BusyMonitor(clock)
        admission = Admission(100)
        admission.monitor = monitor
        monitor.busy = 0.95
        self.assertTrue(all(admission.admit(Priority.LOW) for _ in range(10)))
        self.assertTrue(admission.admit(Priority.NORMAL))
        self.assertFalse(admission.admit(Priority.LOW))
        clock.advance(admission.reserveFor - 0.1)
        self.assertFalse(admission.admit(Priority.LOW))
        clock.advance(0.2)
        self.assertTrue(admission.admit(Priority.LOW))
        self.assertTrue(admission.admit(Priority.HIGH))
        self.assertEqual(
            [admission.admit(p) for p in (Priority.LOW, Priority.NORMAL)], [False, False]
        )
        clock.advance(admission.reserveFor + 0.1)
        self.assertTrue(admission.admit(Priority.NORMAL))


class ShedDelayTests(SynchronousTestCase):
    def test_spread(self) -> None:
        """
        Refused requests get their 503 no sooner than C{shedDelay} and no
        later than half as long again, spread over that span: a flood
        refused at once does not come back at once.
        """
        clock = Clock()
        gateway = Gateway(StubBus(), clock, shedDelay=1.0)  # type: ignore[arg-type]
        answered: list[float] = []
        for _ in range(50):
            d = gateway._shed(serverRequest())
            d.addCallback(lambda body: answered.append(clock.seconds()))
        for _ in range(160):
            clock.advance(0.01)
        self.assertEqual(len(answered), 50)
        self.assertGreaterEqual(min(answered), 1.0)
        self.assertLessEqual(max(answered), 1.51)
        # 50 draws over half a second: at least a dozen distinct 10 ms turns.
        self.assertGreater(len(set(answered)), 12)

    def test_gone(self) -> None:
        """
        A client that leaves before its 503 leaves no timer behind.
        """
        clock = Clock()
        gateway = Gateway(StubBus(), clock, shedDelay=1.0)  # type: ignore[arg-type]
        request = serverRequest()
        gateway._shed(request).addErrback(lambda f: None)
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        from twisted.internet.error import ConnectionLost
        from twisted.python.failure import Failure

        request.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(clock.getDelayedCalls(), [])


def serverRequest() -> Any:
    """
    A request as twisted.web makes them (the gateway keeps its state on it
    as a component), over no connection.
    """
    from twisted.web.server import Request
    from twisted.web.test.requesthelper import DummyChannel

    request = Request(DummyChannel())
    request.method, request.path, request.uri = b"GET", b"/v1/posts", b"/v1/posts"
    return request


class StubBus:
    """
    A bus whose calls wait until the test answers them, and whose
    subscriptions are never made (so the gateway keeps no post it read:
    every read is a call).
    """

    def __init__(self) -> None:
        self.calls: list[tuple[str, Deferred]] = []

    def call(self, service: Any, method: str, payload: Any, **kwargs: Any) -> Deferred:
        d: Deferred = Deferred()
        self.calls.append((method, d))
        return d

    def subscribe(self, pattern: str, handler: Any, **kwargs: Any) -> Deferred:
        return Deferred()


class ShedTests(TestCase):
    """
    A gateway at its limits, over real HTTP.
    """

    def setUp(self) -> None:
        self.bus = StubBus()
        self.gateway = Gateway(
            self.bus,  # type: ignore[arg-type]
            reactor,
            maxInFlight=4,
            shedDelay=0.2,
        )
        self.port = reactor.listenTCP(0, self.gateway.site(), interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        self.agent = Agent(reactor, pool=pool)

    def request(self, method: str, path: str, body: Any = None) -> Deferred:
        import treq

        return treq.request(
            method,
            f"http://127.0.0.1:{self.port.getHost().port}{path}",
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Content-Type": ["application/json"]},
            agent=self.agent,
        )

    @inlineCallbacks
    def test_shedsLowestFirst(self):  # type: ignore[no-untyped-def]
        """
        With 4 in flight at most: low reads stop at 2, normal writes at 3,
        logins (high) at 4; the refused get 503 problem details with
        Retry-After at once; once work finishes, low reads are taken again.
        """
        low = [self.request("GET", "/v1/posts/01hx0000000000000000000000") for _ in range(2)]
        yield eventually(lambda: len(self.bus.calls) == 2)
        started = reactor.seconds()
        refused = yield self.request("GET", "/v1/posts/01hx0000000000000000000000")
        self.assertEqual(refused.code, 503)
        # Answered after the delay, the connection idle meanwhile.
        self.assertGreaterEqual(reactor.seconds() - started, 0.2)
        self.assertEqual(refused.headers.getRawHeaders("retry-after"), ["1"])
        problem = yield refused.json()
        self.assertEqual(problem["type"], "urn:txplatform:problem:overloaded")

        register = {"username": "alice", "email": "a@example.com", "password": "correct horse"}
        normal = self.request("POST", "/v1/accounts", register)
        yield eventually(lambda: len(self.bus.calls) == 3)
        refused = yield self.request("POST", "/v1/accounts", register)
        self.assertEqual(refused.code, 503)

        login = {"username": "alice", "password": "correct horse"}
        high = self.request("POST", "/v1/sessions", login)
        yield eventually(lambda: len(self.bus.calls) == 4)
        refused = yield self.request("POST", "/v1/sessions", login)
        self.assertEqual(refused.code, 503)
        self.assertEqual(self.gateway.admission.inFlight, 4)

        for _, d in self.bus.calls:
            d.errback(NotFound("gone"))
        for response in [*low, normal, high]:
            self.assertEqual((yield response).code, 404)
        yield eventually(lambda: self.gateway.admission.inFlight == 0)
        again = self.request("GET", "/v1/posts/01hx0000000000000000000000")
        yield eventually(lambda: len(self.bus.calls) == 5)
        self.bus.calls[-1][1].errback(NotFound("gone"))
        self.assertEqual((yield again).code, 404)
