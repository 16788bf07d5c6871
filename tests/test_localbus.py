"""
Tests for L{txplatform.localbus}: the semantics every bus shares.
"""

from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from txplatform.codec import JSONCodec
from txplatform.context import Origin, Priority
from txplatform.errors import (
    DeadlineExceeded,
    InternalError,
    MalformedMessage,
    NotFound,
    Unavailable,
    UnknownMethod,
)
from txplatform.interfaces import IBus, ISubscription
from txplatform.localbus import LocalBus
from txplatform.serviceid import ServiceId

SERVICE = ServiceId.fromHex("0000a1")
CALLER = ServiceId.fromHex("0000c1")


class BusTestMixin:
    def setUp(self) -> None:
        self.clock = Clock()
        self.bus = LocalBus(self.clock, retryDelays=(1.0, 5.0))

    def serve(self, handlers: dict, prefetch: int | None = None) -> Any:
        return self.successResultOf(self.bus.serve(SERVICE, handlers, prefetch=prefetch))

    def subscribe(self, pattern: str, handler: Any, group: str, prefetch: int | None = None) -> Any:
        return self.successResultOf(self.bus.subscribe(pattern, handler, group, prefetch=prefetch))

    def turn(self) -> None:
        """
        Let the bus deliver what is pending.
        """
        self.clock.advance(0)


class CallTests(BusTestMixin, SynchronousTestCase):
    def test_interface(self) -> None:
        """
        L{LocalBus} provides L{IBus}; what serving gives provides L{ISubscription}.
        """
        verifyObject(IBus, self.bus)
        verifyObject(ISubscription, self.serve({}))

    def test_roundTrip(self) -> None:
        """
        A call reaches the handler on a later turn, and its result comes back.
        """
        seen = []

        def echo(payload: Any, context: Any) -> Any:
            seen.append((payload, context))
            return {"echo": payload["x"]}

        self.serve({"echo": echo})
        d = self.bus.call(SERVICE, "echo", {"x": 1}, origin=Origin(CALLER, "trace-1"))
        self.assertNoResult(d)
        self.assertEqual(seen, [])
        self.turn()
        self.assertEqual(self.successResultOf(d), {"echo": 1})
        payload, context = seen[0]
        self.assertEqual((context.caller, context.correlationId), (CALLER, "trace-1"))
        self.assertEqual((context.service, context.method), (SERVICE, "echo"))
        self.assertEqual(context.priority, Priority.NORMAL)
        self.assertEqual(context.deadline, self.bus.defaultTimeout)

    def test_bindingMadeOnce(self) -> None:
        """
        A call made in this process is bound once, by its caller: the
        worker opens it with the caller's binding rather than computing it
        again (traced or not).
        """
        import txplatform.busrules
        import txplatform.localbus

        made: list[str] = []
        again: list[str] = []
        for module, seen in ((txplatform.busrules, made), (txplatform.localbus, again)):
            real = module.callBinding

            def recorded(*args: Any, real: Any = real, seen: list[str] = seen) -> bytes:
                seen.append(args[1])
                return real(*args)

            self.patch(module, "callBinding", recorded)
        self.serve({"echo": lambda payload, context: payload})
        untraced = self.bus.call(SERVICE, "echo", {"x": 1})
        traced = self.bus.call(
            SERVICE,
            "echo",
            {"x": 2},
            origin=Origin(traceParent="00-" + "1" * 32 + "-" + "2" * 16 + "-01"),
        )
        self.turn()
        self.assertEqual(self.successResultOf(untraced), {"x": 1})
        self.assertEqual(self.successResultOf(traced), {"x": 2})
        self.assertEqual((len(made), len(again)), (2, 0))

    def test_deferredResult(self) -> None:
        """
        A handler may answer later through a Deferred.
        """
        answer: Deferred[Any] = Deferred()
        self.serve({"slow": lambda p, c: answer})
        d = self.bus.call(SERVICE, "slow", {})
        self.turn()
        self.assertNoResult(d)
        answer.callback([1, 2])
        self.assertEqual(self.successResultOf(d), [1, 2])

    def test_isolation(self) -> None:
        """
        Payloads and results are copied through the codec: neither side
        shares objects with the other.
        """
        kept = {"list": [1]}

        def mutate(payload: Any, context: Any) -> Any:
            payload["list"].append(2)
            return kept

        self.serve({"mutate": mutate})
        sent = {"list": [1]}
        d = self.bus.call(SERVICE, "mutate", sent)
        self.turn()
        result = self.successResultOf(d)
        self.assertEqual(sent, {"list": [1]})
        result["list"].append(3)
        self.assertEqual(kept, {"list": [1]})

    def test_timeout(self) -> None:
        """
        A call without an answer by its deadline fails with
        L{DeadlineExceeded}, naming the service and method.
        """
        self.serve({"never": lambda p, c: Deferred()})
        d = self.bus.call(SERVICE, "never", {}, timeout=2.5)
        self.turn()
        self.clock.advance(2.4)
        self.assertNoResult(d)
        self.clock.advance(0.1)
        error = self.failureResultOf(d, DeadlineExceeded).value
        self.assertIn(SERVICE.hex, error.message)
        self.assertIn("never", error.message)
        self.assertEqual(error.details["service"], SERVICE.hex)

    def test_lateAnswerIgnored(self) -> None:
        """
        An answer after the deadline is dropped quietly.
        """
        answer: Deferred[Any] = Deferred()
        self.serve({"slow": lambda p, c: answer})
        d = self.bus.call(SERVICE, "slow", {}, timeout=1)
        self.turn()
        self.clock.advance(1)
        self.failureResultOf(d, DeadlineExceeded)
        answer.callback({})

    def test_expiredNotExecuted(self) -> None:
        """
        A call still queued when its deadline passes is dropped, not
        executed late.
        """
        blocker: Deferred[Any] = Deferred()
        ran = []

        def handler(payload: Any, context: Any) -> Any:
            ran.append(payload["n"])
            return blocker if payload["n"] == 1 else {}

        self.serve({"work": handler}, prefetch=1)
        self.bus.call(SERVICE, "work", {"n": 1}, timeout=100)
        late = self.bus.call(SERVICE, "work", {"n": 2}, timeout=1)
        self.turn()
        self.assertEqual(self.bus.pendingCalls(SERVICE), 1)
        self.clock.advance(2)
        self.failureResultOf(late, DeadlineExceeded)
        blocker.callback({})
        self.turn()
        self.assertEqual(ran, [1])
        self.assertEqual(self.bus.pendingCalls(SERVICE), 0)

    def test_originDeadlineCaps(self) -> None:
        """
        A nested call never outlives the deadline it inherited.
        """
        self.serve({"never": lambda p, c: Deferred()})
        d = self.bus.call(SERVICE, "never", {}, timeout=60, origin=Origin(deadline=3.0))
        self.turn()
        self.clock.advance(3)
        self.failureResultOf(d, DeadlineExceeded)

    def test_cancelledNotExecuted(self) -> None:
        """
        Cancelling a queued call withdraws it.
        """
        ran = []
        self.serve({"work": lambda p, c: ran.append(p)})
        d = self.bus.call(SERVICE, "work", {})
        d.cancel()
        self.turn()
        self.assertEqual(ran, [])
        self.failureResultOf(d)

    def test_typedErrors(self) -> None:
        """
        A service error reaches the caller as the same type, message and details.
        """

        def missing(payload: Any, context: Any) -> Any:
            raise NotFound("no such thing", {"thing": "x"})

        self.serve({"find": missing})
        d = self.bus.call(SERVICE, "find", {})
        self.turn()
        error = self.failureResultOf(d, NotFound).value
        self.assertEqual((error.message, error.details), ("no such thing", {"thing": "x"}))

    def test_unexpectedError(self) -> None:
        """
        Any other exception is logged with its traceback, and the caller gets
        an L{InternalError} that says nothing of it.
        """

        def broken(payload: Any, context: Any) -> Any:
            raise ZeroDivisionError("secret detail")

        self.serve({"broken": broken})
        d = self.bus.call(SERVICE, "broken", {})
        self.turn()
        error = self.failureResultOf(d, InternalError).value
        self.assertNotIn("secret", error.message)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_unencodableResult(self) -> None:
        """
        A result that cannot be encoded is an internal error, not a hang.
        """
        self.serve({"bad": lambda p, c: {"x": object()}})
        d = self.bus.call(SERVICE, "bad", {})
        self.turn()
        self.failureResultOf(d, InternalError)
        self.flushLoggedErrors(TypeError)

    def test_unknownMethod(self) -> None:
        """
        Calling a method the service does not have fails with L{UnknownMethod}.
        """
        self.serve({"known": lambda p, c: {}})
        d = self.bus.call(SERVICE, "unknown", {})
        self.turn()
        self.failureResultOf(d, UnknownMethod)

    def test_noSuchService(self) -> None:
        """
        Calling a service that never served on this bus fails at once.
        """
        self.failureResultOf(self.bus.call(SERVICE, "x", {}), Unavailable)

    def test_unencodablePayload(self) -> None:
        """
        A payload that cannot be encoded fails the call at once.
        """
        self.serve({})
        self.failureResultOf(self.bus.call(SERVICE, "x", {"x": object()}), TypeError)

    def test_priorities(self) -> None:
        """
        Pending calls are taken highest priority first, then in arrival order.
        """
        order = []
        blocker: Deferred[Any] = Deferred()

        def work(payload: Any, context: Any) -> Any:
            order.append(payload["name"])
            return blocker if payload["name"] == "first" else {}

        self.serve({"work": work}, prefetch=1)
        self.bus.call(SERVICE, "work", {"name": "first"})
        self.turn()
        for name, priority in [
            ("low", Priority.LOW),
            ("normal-1", Priority.NORMAL),
            ("high", Priority.HIGH),
            ("normal-2", Priority.NORMAL),
        ]:
            self.bus.call(SERVICE, "work", {"name": name}, priority=priority)
        self.turn()
        self.assertEqual(order, ["first"])
        blocker.callback({})
        self.turn()
        self.assertEqual(order, ["first", "high", "normal-1", "normal-2", "low"])

    def test_badPriority(self) -> None:
        """
        Priorities are AMQP's 0-9.
        """
        self.serve({})
        self.failureResultOf(self.bus.call(SERVICE, "x", {}, priority=10), ValueError)

    def test_competingConsumers(self) -> None:
        """
        Replicas serving one service share its calls; each call is handled once.
        """
        handled: dict[str, list[int]] = {"a": [], "b": []}
        self.serve({"work": lambda p, c: handled["a"].append(p["n"])})
        self.serve({"work": lambda p, c: handled["b"].append(p["n"])})
        calls = [self.bus.call(SERVICE, "work", {"n": n}) for n in range(10)]
        self.turn()
        for d in calls:
            self.successResultOf(d)
        self.assertEqual(sorted(handled["a"] + handled["b"]), list(range(10)))
        self.assertTrue(handled["a"] and handled["b"], handled)

    def test_prefetch(self) -> None:
        """
        A replica has at most C{prefetch} calls in progress.
        """
        pending: list[Deferred[Any]] = []
        self.serve({"work": lambda p, c: pending.append(Deferred()) or pending[-1]}, prefetch=3)
        for _ in range(5):
            self.bus.call(SERVICE, "work", {})
        self.turn()
        self.assertEqual((len(pending), self.bus.pendingCalls(SERVICE)), (3, 2))
        pending[0].callback({})
        self.turn()
        self.assertEqual(len(pending), 4)

    def test_stopDrains(self) -> None:
        """
        A stopping replica takes no new calls, finishes those in hand, and
        leaves the queued ones to the other replicas.
        """
        answer: Deferred[Any] = Deferred()
        first = self.serve({"work": lambda p, c: answer}, prefetch=1)
        d1 = self.bus.call(SERVICE, "work", {})
        self.turn()
        d2 = self.bus.call(SERVICE, "work", {})
        stopped = first.stop()
        self.assertNoResult(stopped)
        answer.callback({"by": "first"})
        self.successResultOf(stopped)
        self.assertEqual(self.successResultOf(d1), {"by": "first"})
        self.turn()
        self.assertNoResult(d2)
        self.serve({"work": lambda p, c: {"by": "second"}})
        self.turn()
        self.assertEqual(self.successResultOf(d2), {"by": "second"})

    def test_stopGivesBackCancelled(self) -> None:
        """
        A call whose handler a stopping replica cancelled goes to another
        replica; with none left, the caller hears L{Unavailable}.  Before
        the stop, a cancellation is answered like any other failure.
        """
        firstHeld: list[Deferred[Any]] = []
        secondHeld: list[Deferred[Any]] = []

        contexts: list[Any] = []

        def holding(held: list[Deferred[Any]]) -> Any:
            def work(payload: Any, context: Any) -> Deferred[Any]:
                contexts.append(context)
                held.append(Deferred())
                return held[-1]

            return work

        first = self.serve({"work": holding(firstHeld)}, prefetch=1)
        early = self.bus.call(SERVICE, "work", {})
        self.turn()
        firstHeld.pop().cancel()
        self.turn()
        self.failureResultOf(early, InternalError)
        self.assertEqual(len(self.flushLoggedErrors(CancelledError)), 1)

        late = self.bus.call(SERVICE, "work", {})
        self.turn()
        [mine] = firstHeld
        second = self.serve({"work": holding(secondHeld)}, prefetch=1)
        stopped = first.stop()
        mine.cancel()
        self.successResultOf(stopped)
        self.turn()
        self.assertNoResult(late)
        [theirs] = secondHeld
        # It may have done its work before it was cancelled: the second
        # replica takes it as redelivered (a method that must not run twice
        # answers from its reply log).
        self.assertEqual(contexts[-1].messageId, contexts[-2].messageId)
        self.assertEqual([c.redelivered for c in contexts[-2:]], [False, True])
        theirs.callback({"by": "second"})
        self.turn()
        self.assertEqual(self.successResultOf(late), {"by": "second"})

        alone = self.bus.call(SERVICE, "work", {})
        self.turn()
        [last] = secondHeld[1:]
        stopped = second.stop()
        last.cancel()
        self.successResultOf(stopped)
        self.turn()
        error = self.failureResultOf(alone, Unavailable).value
        self.assertIn("stopped before doing work", str(error))
        self.assertEqual(self.flushLoggedErrors(), [])


class EventTests(BusTestMixin, SynchronousTestCase):
    def test_everyGroupOnce(self) -> None:
        """
        Every group whose pattern matches gets each event once; a group's
        members share its events.
        """
        got: dict[str, list[str]] = {"a1": [], "a2": [], "b": [], "other": []}
        self.subscribe("post.*", lambda p, c: got["a1"].append(p["n"]), "groupA")
        self.subscribe("post.*", lambda p, c: got["a2"].append(p["n"]), "groupA")
        self.subscribe("post.created", lambda p, c: got["b"].append(p["n"]), "groupB")
        self.subscribe("account.#", lambda p, c: got["other"].append(p["n"]), "groupC")
        published = [self.bus.publish("post.created", {"n": n}) for n in range(6)]
        self.turn()
        for d in published:
            self.successResultOf(d)
        self.assertEqual(sorted(got["a1"] + got["a2"]), list(range(6)))
        self.assertTrue(got["a1"] and got["a2"])
        self.assertEqual(got["b"], list(range(6)))
        self.assertEqual(got["other"], [])

    def test_private(self) -> None:
        """
        Private subscriptions each get every event published while they
        exist, beside the groups; their queue goes when they stop.
        """
        got: dict[str, list[int]] = {"a": [], "b": [], "group": []}
        a = self.subscribe("post.*", lambda p, c: got["a"].append(p["n"]), None)
        self.subscribe("post.*", lambda p, c: got["b"].append(p["n"]), None)
        self.subscribe("post.*", lambda p, c: got["group"].append(p["n"]), "g")
        self.bus.publish("post.deleted", {"n": 1})
        self.turn()
        self.assertEqual(got, {"a": [1], "b": [1], "group": [1]})
        queues = len(self.bus._events)
        self.successResultOf(a.stop())
        self.assertEqual(len(self.bus._events), queues - 1)
        self.bus.publish("post.deleted", {"n": 2})
        self.turn()
        self.assertEqual(got, {"a": [1], "b": [1, 2], "group": [1, 2]})

    def test_context(self) -> None:
        """
        Handlers learn the event's id, name, source and trace.
        """
        contexts = []
        self.subscribe("post.created", lambda p, c: contexts.append(c), "g")
        self.bus.publish("post.created", {}, origin=Origin(CALLER, "trace"), messageId="m1")
        self.turn()
        [context] = contexts
        self.assertEqual(
            (
                context.messageId,
                context.event,
                context.source,
                context.correlationId,
                context.attempt,
            ),
            ("m1", "post.created", CALLER, "trace", 1),
        )

    def test_publishedOnceHandled(self) -> None:
        """
        Publishing fires once every group the event went to has handled it
        (or dead-lettered it), not when it is queued: until then it lives
        only in this process, and its publisher must keep it.  Private
        subscriptions are not waited for.
        """
        handled: list[Deferred[None]] = []

        def slow(payload: Any, context: Any) -> Any:
            d: Deferred[None] = Deferred()
            handled.append(d)
            return d

        self.subscribe("post.*", slow, "a")
        self.subscribe("post.created", lambda p, c: None, "b")
        self.subscribe("post.created", lambda p, c: Deferred(), None)  # never done
        published = self.bus.publish("post.created", {})
        self.turn()
        self.assertNoResult(published)
        handled[0].callback(None)
        self.successResultOf(published)

        def broken(payload: Any, context: Any) -> Any:
            raise RuntimeError("no")

        self.subscribe("bad.thing", broken, "c")
        published = self.bus.publish("bad.thing", {})
        self.turn()
        for delay in self.bus.retryDelays:
            self.assertNoResult(published)
            self.clock.advance(delay)
            self.turn()
        self.successResultOf(published)  # dead-lettered: given up
        self.assertEqual(len(self.bus.deadLetters("c")), 1)
        self.flushLoggedErrors(RuntimeError)

    def test_consumerGone(self) -> None:
        """
        When a group's last member stops with events waiting, their
        publishers are told; published again, an event waits once.
        """
        subscription = self.subscribe("x.y", lambda p, c: Deferred(), "g")
        self.subscribe("x.y", lambda p, c: None, "h")
        first = self.bus.publish("x.y", {"n": 1}, messageId="m1")
        self.turn()
        second = self.bus.publish("x.y", {"n": 2}, messageId="m2")
        subscription.stop()
        self.failureResultOf(second, Unavailable)
        again = self.bus.publish("x.y", {"n": 2}, messageId="m2")
        self.failureResultOf(again, Unavailable)
        self.assertEqual(self.bus.pendingEvents("g", "x.y"), 1)
        self.assertNoResult(first)  # in hand: drained or not, its handler says

    def test_durableGroup(self) -> None:
        """
        Once a group exists, events wait for it while it has no member, but
        events from before the group existed are not its own.
        """
        got = []
        self.successResultOf(self.bus.publish("post.created", {"n": 0}))  # nobody's
        subscription = self.subscribe("post.created", lambda p, c: got.append(p["n"]), "g")
        self.successResultOf(subscription.stop())
        # Kept for the group, in memory only: its publisher is told so.
        self.failureResultOf(self.bus.publish("post.created", {"n": 1}), Unavailable)
        self.turn()
        self.assertEqual((got, self.bus.pendingEvents("g", "post.created")), ([], 1))
        self.subscribe("post.created", lambda p, c: got.append(p["n"]), "g")
        self.turn()
        self.assertEqual(got, [1])

    def test_retryThenSucceed(self) -> None:
        """
        A failing handler gets the event again after each retry delay,
        until it succeeds.
        """
        attempts = []

        def flaky(payload: Any, context: Any) -> Any:
            attempts.append(context.attempt)
            if context.attempt < 3:
                raise RuntimeError("not yet")

        self.subscribe("x.y", flaky, "g")
        self.bus.publish("x.y", {})
        self.turn()
        self.assertEqual(attempts, [1])
        self.clock.advance(1.0)
        self.assertEqual(attempts, [1, 2])
        self.clock.advance(4.9)
        self.assertEqual(attempts, [1, 2])
        self.clock.advance(0.1)
        self.assertEqual(attempts, [1, 2, 3])
        self.assertEqual(self.bus.deadLetters(), [])

    def test_deadLettersBounded(self) -> None:
        """
        Past C{maxDeadLetters}, the oldest dead letters are forgotten, and
        it is logged.
        """
        from twisted.logger import globalLogPublisher

        logged: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        self.bus.maxDeadLetters = 3
        self.bus.retryDelays = ()

        def broken(payload: Any, context: Any) -> Any:
            raise RuntimeError("always")

        self.subscribe("x.y", broken, "g")
        for n in range(5):
            self.bus.publish("x.y", {"n": n}, messageId=f"m{n}")
        self.turn()
        self.flushLoggedErrors(RuntimeError)
        self.assertEqual([d.messageId for d in self.bus.deadLetters("g")], ["m2", "m3", "m4"])
        self.assertEqual(
            [e["key"] for e in logged if "limit" in e and "key" in e], ["g/m0", "g/m1"]
        )

    def test_deadLetterAndReplay(self) -> None:
        """
        Once the retries are used up the event is dead-lettered with the
        reason; replaying it delivers it afresh.
        """
        attempts = []
        broken = [True]

        def handler(payload: Any, context: Any) -> Any:
            attempts.append(context.attempt)
            if broken[0]:
                raise RuntimeError("database is down")

        self.subscribe("x.y", handler, "g")
        self.bus.publish("x.y", {"k": 1}, messageId="m1")
        self.turn()
        self.clock.advance(1)
        self.clock.advance(5)
        self.assertEqual(attempts, [1, 2, 3])
        [letter] = self.bus.deadLetters("g")
        self.assertEqual((letter.messageId, letter.event, letter.attempts), ("m1", "x.y", 3))
        self.assertIn("database is down", letter.reason)
        self.flushLoggedErrors(RuntimeError)
        broken[0] = False
        self.bus.replay(letter)
        self.turn()
        self.assertEqual(attempts, [1, 2, 3, 1])
        self.assertEqual(self.bus.deadLetters(), [])
        self.assertRaises(KeyError, self.bus.replay, letter)

    def test_permanentErrorNotRetried(self) -> None:
        """
        A malformed message is dead-lettered at once, and the group goes on
        with the next event.
        """
        got = []

        def handler(payload: Any, context: Any) -> Any:
            if payload.get("bad"):
                raise MalformedMessage("missing field")
            got.append(payload)

        self.subscribe("x.y", handler, "g", prefetch=1)
        self.bus.publish("x.y", {"bad": True})
        self.bus.publish("x.y", {"good": True})
        self.turn()
        self.turn()
        self.assertEqual(got, [{"good": True}])
        [letter] = self.bus.deadLetters()
        self.assertEqual(letter.attempts, 1)
        self.assertIn("malformed_message", letter.reason)

    def test_undecodable(self) -> None:
        """
        An event whose bytes do not decode is dead-lettered at once.
        """

        class PickyCodec(JSONCodec):
            def decode(self, data: bytes, binding: bytes) -> Any:
                if b"poison" in data:
                    raise MalformedMessage("cannot read this")
                return super().decode(data, binding)

        bus = LocalBus(self.clock, codec=PickyCodec())
        got = []
        self.successResultOf(bus.subscribe("x.y", lambda p, c: got.append(p), "g"))
        bus.publish("x.y", "poison")
        bus.publish("x.y", "fine")
        self.turn()
        self.assertEqual(got, ["fine"])
        self.assertEqual(len(bus.deadLetters()), 1)

    def test_deferredHandler(self) -> None:
        """
        An event is only done when the handler's Deferred fires; a failed
        Deferred counts as a failure.
        """
        results: list[Deferred[None]] = []
        self.subscribe(
            "x.y", lambda p, c: results.append(Deferred()) or results[-1], "g", prefetch=1
        )
        self.bus.publish("x.y", {})
        self.bus.publish("x.y", {})
        self.turn()
        self.assertEqual(len(results), 1)
        results[0].errback(RuntimeError("failed later"))
        self.turn()
        self.assertEqual(len(results), 2)
        results[1].callback(None)
        self.clock.advance(1)
        self.assertEqual(len(results), 3)
        results[2].callback(None)
        self.assertEqual(self.bus.deadLetters(), [])

    def test_badNames(self) -> None:
        """
        Event names and patterns are checked.
        """
        self.failureResultOf(self.bus.publish("Bad Name", {}), ValueError)
        self.failureResultOf(self.bus.subscribe("x.y*", lambda p, c: None, "g"), ValueError)

    def test_stopCancelsRetries(self) -> None:
        """
        Stopping the bus cancels scheduled redeliveries.
        """
        self.bus.startService()

        def fail(payload: Any, context: Any) -> Any:
            raise RuntimeError("no")

        self.subscribe("x.y", fail, "g")
        published = self.bus.publish("x.y", {})
        self.turn()
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.bus.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        # Never handled: its publisher must keep it.
        self.failureResultOf(published, Unavailable)
