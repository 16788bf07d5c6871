# -*- test-case-name: tests.testing.test_buscontract -*-
"""
The contract every L{IBus} keeps, as test methods any bus can run.

In the manner of Twisted's C{ReactorBuilder}, which runs the same tests
against every reactor, L{BusContract} is a mixin for
L{twisted.trial.unittest.TestCase}: a subclass says how to build two
connected buses (L{BusContract.makeBuses}) and inherits a test method for
each behaviour L{IBus} promises, so the in-process, AMQP and direct buses,
and a bus of your own, are held to the same contract::

    from twisted.internet import reactor
    from twisted.internet.defer import succeed
    from twisted.trial.unittest import TestCase

    from txplatform.serviceid import ServiceId
    from txplatform.testing.buscontract import BusContract, BusPair

    class MyBusContractTests(BusContract, TestCase):
        def makeBuses(self):
            bus = MyBus(reactor, retryDelays=(0.05, 0.1))
            bus.startService()
            self.addCleanup(bus.stopService)
            return succeed(
                BusPair(
                    caller=bus,
                    server=bus,
                    service=ServiceId.fromHex("f00001"),
                    callerService=ServiceId.fromHex("f00002"),
                    unserved=ServiceId.fromHex("f00003"),
                    clock=reactor,
                )
            )

A bus on a shared broker should give each test service ids of its own,
and override L{BusContract.newGroup} to delete the groups' queues after
the test (see C{tests/testing/test_buscontract.py}).

The tests run on the real reactor and return Deferreds; each is bounded
(L{BusContract.timeout}) and takes well under two seconds on a healthy bus.
Where a bus documents a deviation from the common behaviour, a class
attribute of the contract says so (L{BusContract.callerFromOrigin}); no
test is skipped silently.
"""

from __future__ import annotations

import math
import uuid
from typing import TYPE_CHECKING, Any, Callable

from attrs import evolve, frozen
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from zope.interface.verify import verifyObject

from ..context import CallContext, EventContext, Origin, Priority
from ..errors import (
    DeadlineExceeded,
    InternalError,
    MalformedMessage,
    NotFound,
    ServiceError,
    Unavailable,
    UnknownMethod,
)
from ..interfaces import IBus, ISubscription
from ..serviceid import ServiceId

__all__ = ["BusContract", "BusPair"]

if TYPE_CHECKING:
    from twisted.trial.unittest import TestCase as _TestCase
else:
    _TestCase = object


@frozen
class BusPair:
    """
    The buses one contract test runs on: started, connected to each other,
    and stopped when the test ends (their cleanup registered with
    C{addCleanup}).  Both may be the same object (an in-process bus).

    @ivar caller: The bus that makes calls and publishes events.
    @ivar server: The bus that serves L{service} and subscribes to events.
    @ivar service: A service id that C{server} may serve and that nobody
        else serves.
    @ivar callerService: The service the caller speaks for: the tests
        name it as the caller in the origins they pass, and a bus that
        authenticates its caller (the direct bus) stamps it on every call.
    @ivar unserved: A service id nobody serves, on any bus.
    @ivar clock: The clock the buses keep time with (deadlines, publication
        times): under trial, the global reactor.
    """

    caller: IBus
    server: IBus
    service: ServiceId
    callerService: ServiceId
    unserved: ServiceId
    clock: IReactorTime


#: A service id no bus serves or stamps: an origin naming someone else.
_STRANGER = ServiceId.fromHex("f0bad0")

#: Payload values of every JSON type, with text that needs care on the way:
#: accents, scripts, characters outside the BMP, escapes, and the NUL.
_PAYLOAD: dict[str, Any] = {
    "null": None,
    "true": True,
    "false": False,
    "zero": 0,
    "int": 42,
    "negative": -7,
    "big": 2**53 + 1,
    "float": 0.1,
    "exponent": -1.5e300,
    "text": "plain",
    "unicode": "é ü ß Ωμέγα 中文 日本語 עברית 🎉",
    "escapes": 'quote " backslash \\ slash / newline \n tab \t nul \x00 del \x7f',
    "empty": "",
    "list": [1, "two", None, [3.5, {"four": 4, "false": False}]],
    "emptyList": [],
    "emptyObject": {},
    "clé 🔑": "a key that is not ASCII",
}


def _typed(value: Any) -> Any:
    """
    C{value} with every scalar tagged with its type, so that a comparison
    tells C{1} from C{1.0} and from C{True}, and object keys in any order.
    """
    if isinstance(value, dict):
        return ("object", sorted((key, _typed(item)) for key, item in value.items()))
    if isinstance(value, (list, tuple)):
        return ("array", [_typed(item) for item in value])
    return (type(value).__name__, value)


class BusContract(_TestCase):
    """
    The behaviour every L{IBus} implementation must have, one test method
    each; mix into a L{twisted.trial.unittest.TestCase} and implement
    L{makeBuses}.

    Each test builds its own buses, and uses its own service ids, consumer
    groups (L{newGroup}) and event names, so tests may share a broker with
    each other and with other suites.

    @cvar callerFromOrigin: Whether a handler learns the caller that the
        call's L{Origin} names (the in-process and AMQP buses).  A bus whose
        channel authenticates the caller (the direct bus) sets it to
        C{False}: there, the caller is always the calling process's own
        service, L{BusPair.callerService}, whatever the origin says.
    @cvar durablePublish: Whether an event published to a group without a
        member is kept by something that outlives the process (a broker),
        so its publish succeeds.  The in-process bus keeps it in memory
        only, and fails the publish (its publisher, an outbox, keeps the
        event to publish again), while the group still gets it if a member
        comes back in this process.
    @cvar retryWait: Seconds within which an event whose handler failed is
        delivered again: build the buses with a first retry delay well
        below it (C{retryDelays=(0.05, 0.1)}).
    @cvar settle: Seconds within which a message sent reaches where it
        goes (calls queued for a busy replica), and after which one that
        must I{not} arrive (a second copy, a dropped call) is taken not to.
    @cvar timeout: trial's limit for each test, in seconds.
    """

    callerFromOrigin = True
    durablePublish = True
    retryWait = 0.5
    settle = 0.2
    timeout = 15

    # What a subclass provides.

    def makeBuses(self) -> Deferred[BusPair]:
        """
        Build, start and connect the buses of one test, and register their
        cleanup with C{self.addCleanup}.

        @return: A Deferred firing with a L{BusPair} once both buses are
            ready to call, serve, publish and subscribe.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement makeBuses")

    def newGroup(self, *patterns: str) -> str:
        """
        A consumer group name no other test uses, for subscriptions to
        C{patterns}.  Override it to remember what to clean up (a broker
        keeps a group's queues after the test).
        """
        return f"contract-{uuid.uuid4().hex[:12]}"

    # Helpers for the tests.

    def _topic(self) -> str:
        """
        A first word for event names no other test publishes.
        """
        return f"c{uuid.uuid4().hex[:12]}"

    def _sleep(self, pair: BusPair, seconds: float) -> Deferred[None]:
        return deferLater(pair.clock, seconds, lambda: None)

    @inlineCallbacks
    def _eventually(self, pair: BusPair, check: Callable[[], Any], timeout: float = 2.0) -> Any:
        """
        Wait until C{check()} is true, and return it; fail after C{timeout}.
        """
        started = pair.clock.seconds()
        while True:
            result = check()
            if result:
                return result
            if pair.clock.seconds() - started >= timeout:
                raise AssertionError(f"still false after {timeout}s: {result!r}")
            yield self._sleep(pair, 0.01)

    def _hang(self) -> Deferred[Any]:
        """
        A handler's answer that comes only when the test ends (before the
        buses stop, as cleanups run last registered first).
        """
        d: Deferred[Any] = Deferred()
        self.addCleanup(lambda: d.called or d.callback({"late": True}))
        return d

    @inlineCallbacks
    def _serving(self, handlers: dict[str, Callable[..., Any]], prefetch: int | None = None) -> Any:
        """
        Buses, with the server serving C{handlers} as the pair's service.
        """
        pair = yield self.makeBuses()
        yield pair.server.serve(pair.service, handlers, prefetch=prefetch)
        return pair

    def _origin(self, pair: BusPair, trace: str = "contract-trace") -> Origin:
        return Origin(pair.callerService, trace)

    @inlineCallbacks
    def _within(self, pair: BusPair, d: Deferred[Any], limit: float) -> Any:
        """
        Wait for C{d} to fail with L{Unavailable} (or a subclass), and check
        that it took at most C{limit} seconds.

        @return: the error
        """
        started = pair.clock.seconds()
        error = yield self.assertFailure(d, Unavailable)
        self.assertLessEqual(pair.clock.seconds() - started, limit)
        return error

    # Calls

    @inlineCallbacks
    def test_interfaces(self) -> Any:
        """
        Both buses provide L{IBus}; serving and subscribing give an
        L{ISubscription}.
        """
        pair = yield self.makeBuses()
        verifyObject(IBus, pair.caller)
        verifyObject(IBus, pair.server)
        serving = yield pair.server.serve(pair.service, {"echo": lambda p, c: p})
        verifyObject(ISubscription, serving)
        subscription = yield pair.server.subscribe(
            f"{self._topic()}.happened", lambda p, c: None, None
        )
        verifyObject(ISubscription, subscription)

    @inlineCallbacks
    def test_callAnswered(self) -> Any:
        """
        A call reaches the handler of its method on the service serving its
        id, with its payload, and the handler's result comes back to the
        caller.  The handler runs later, never inside C{call}.
        """
        seen: list[Any] = []

        def echo(payload: Any, context: CallContext) -> Any:
            seen.append(payload)
            return {"echo": payload}

        pair = yield self._serving({"echo": echo})
        d = pair.caller.call(pair.service, "echo", {"n": 1}, origin=self._origin(pair))
        self.assertEqual(seen, [])
        result = yield d
        self.assertEqual(result, {"echo": {"n": 1}})
        self.assertEqual(seen, [{"n": 1}])

    @inlineCallbacks
    def test_idempotencyKey(self) -> Any:
        """
        A call's idempotency key (L{Origin.idempotencyKey}) reaches the
        handler's context; a call without one has none; a key no bus can
        carry (not 1 to 255 printable ASCII characters) is refused before
        anything is sent.
        """
        seen: list[str | None] = []

        def keyed(payload: Any, context: CallContext) -> Any:
            seen.append(context.idempotencyKey)
            return {}

        pair = yield self._serving({"keyed": keyed})
        key = "k" * 200 + "-0123456789"
        origin = Origin(pair.callerService, "trace-key", idempotencyKey=key)
        yield pair.caller.call(pair.service, "keyed", {}, origin=origin)
        yield pair.caller.call(pair.service, "keyed", {}, origin=self._origin(pair))
        self.assertEqual(seen, [key, None])
        for bad in ["", "k" * 256, "new\nline", "caf\u00e9"]:
            origin = Origin(pair.callerService, "trace-key", idempotencyKey=bad)
            yield self.assertFailure(
                pair.caller.call(pair.service, "keyed", {}, origin=origin), ValueError
            )
        self.assertEqual(len(seen), 2)

    @inlineCallbacks
    def test_traceParentCarried(self) -> Any:
        """
        A call's W3C C{traceparent} (L{Origin.traceParent}) reaches the
        handler's context, inside the payload (sealed with it by an
        encrypting codec); a call without one has none, and the payload
        is the caller's either way.  (With tracing off in this process, the
        bus passes it on unchanged.)
        """
        seen: list[tuple[Any, str | None]] = []

        def look(payload: Any, context: CallContext) -> Any:
            seen.append((payload, context.traceParent))
            return {"ok": True}

        pair = yield self._serving({"look": look})
        traceParent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        origin = Origin(pair.callerService, "trace-tp", traceParent=traceParent)
        result = yield pair.caller.call(pair.service, "look", {"n": 1}, origin=origin)
        self.assertEqual(result, {"ok": True})
        keyed = Origin(pair.callerService, "trace-tp", idempotencyKey="k1", traceParent=traceParent)
        yield pair.caller.call(pair.service, "look", {"n": 2}, origin=keyed)
        yield pair.caller.call(pair.service, "look", {"n": 3}, origin=self._origin(pair))
        self.assertEqual(seen, [({"n": 1}, traceParent), ({"n": 2}, traceParent), ({"n": 3}, None)])

    @inlineCallbacks
    def test_traceStateCarried(self) -> Any:
        """
        A call's W3C C{tracestate} (L{Origin.traceState}) reaches the
        handler's context beside its C{traceparent}, unchanged (with
        tracing off in this process, as a hop that does not record passes
        it on); a call without one has none.
        """
        seen: list[tuple[Any, str | None, str | None]] = []

        def look(payload: Any, context: CallContext) -> Any:
            seen.append((payload, context.traceParent, context.traceState))
            return {"ok": True}

        pair = yield self._serving({"look": look})
        traceParent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        traceState = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"
        origin = Origin(
            pair.callerService, "trace-ts", traceParent=traceParent, traceState=traceState
        )
        result = yield pair.caller.call(pair.service, "look", {"n": 1}, origin=origin)
        self.assertEqual(result, {"ok": True})
        keyed = evolve(origin, idempotencyKey="k1")
        yield pair.caller.call(pair.service, "look", {"n": 2}, origin=keyed)
        plain = Origin(pair.callerService, "trace-ts", traceParent=traceParent)
        yield pair.caller.call(pair.service, "look", {"n": 3}, origin=plain)
        self.assertEqual(
            seen,
            [
                ({"n": 1}, traceParent, traceState),
                ({"n": 2}, traceParent, traceState),
                ({"n": 3}, traceParent, None),
            ],
        )

    @inlineCallbacks
    def test_eventTraceStateCarried(self) -> Any:
        """
        An event's W3C C{tracestate} (L{Origin.traceState}) reaches the
        handler's L{EventContext} beside its C{traceparent}; an event
        without one has none.
        """
        got: list[tuple[Any, str | None, str | None]] = []
        pair = yield self.makeBuses()
        event = f"{self._topic()}.post.created"
        yield pair.server.subscribe(
            event,
            lambda p, c: got.append((p, c.traceParent, c.traceState)),
            self.newGroup(event),
        )
        traceParent = "00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01"
        traceState = "rojo=00f067aa0ba902b7"
        origin = Origin(
            pair.callerService, "trace-es", traceParent=traceParent, traceState=traceState
        )
        yield pair.caller.publish(event, {"id": "p1"}, origin=origin)
        yield self._eventually(pair, lambda: got)
        plain = Origin(pair.callerService, "trace-es", traceParent=traceParent)
        yield pair.caller.publish(event, {"id": "p2"}, origin=plain)
        yield self._eventually(pair, lambda: len(got) == 2)
        self.assertEqual(
            got,
            [({"id": "p1"}, traceParent, traceState), ({"id": "p2"}, traceParent, None)],
        )

    @inlineCallbacks
    def test_eventTraceParentCarried(self) -> Any:
        """
        An event's W3C C{traceparent} (L{Origin.traceParent}) reaches the
        handler's L{EventContext}; an event without one has none.
        """
        got: list[tuple[Any, str | None]] = []
        pair = yield self.makeBuses()
        event = f"{self._topic()}.post.created"
        yield pair.server.subscribe(
            event, lambda p, c: got.append((p, c.traceParent)), self.newGroup(event)
        )
        traceParent = "00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01"
        origin = Origin(pair.callerService, "trace-ev", traceParent=traceParent)
        yield pair.caller.publish(event, {"id": "p1"}, origin=origin)
        yield self._eventually(pair, lambda: got)
        yield pair.caller.publish(event, {"id": "p2"}, origin=self._origin(pair))
        yield self._eventually(pair, lambda: len(got) == 2)
        self.assertEqual(got, [({"id": "p1"}, traceParent), ({"id": "p2"}, None)])

    @inlineCallbacks
    def test_callContext(self) -> Any:
        """
        The handler gets a L{CallContext} naming the service and method, the
        caller, the trace id of the origin, the call's priority, its own
        message id, and its deadline: when the call was made plus its
        timeout, on the bus clock.
        """
        contexts: list[CallContext] = []
        pair = yield self._serving({"look": lambda p, c: contexts.append(c) or {}})
        before = pair.clock.seconds()
        yield pair.caller.call(
            pair.service,
            "look",
            {},
            timeout=5.0,
            priority=Priority.HIGH,
            origin=self._origin(pair, "trace-ctx"),
        )
        [context] = contexts
        self.assertIsInstance(context, CallContext)
        self.assertEqual(
            (context.service, context.method, context.caller, context.correlationId),
            (pair.service, "look", pair.callerService, "trace-ctx"),
        )
        self.assertEqual(context.priority, Priority.HIGH)
        self.assertFalse(context.redelivered)
        self.assertIsInstance(context.messageId, str)
        self.assertTrue(context.messageId)
        # Deadlines travel as whole milliseconds on some buses.
        self.assertLessEqual(before + 5.0 - 0.01, context.deadline)
        self.assertLessEqual(context.deadline, pair.clock.seconds() + 5.0)

    @inlineCallbacks
    def test_callerNamed(self) -> Any:
        """
        A handler learns who called.  Where the caller comes from the
        origin (C{callerFromOrigin}), that is the caller the origin names;
        a bus that authenticates its callers reports the calling process's
        own service instead, whatever the origin claims.
        """
        callers: list[ServiceId | None] = []
        pair = yield self._serving({"who": lambda p, c: callers.append(c.caller) or {}})
        yield pair.caller.call(pair.service, "who", {}, origin=Origin(_STRANGER, "trace-who"))
        expected = _STRANGER if self.callerFromOrigin else pair.callerService
        self.assertEqual(callers, [expected])

    @inlineCallbacks
    def test_inheritedDeadline(self) -> Any:
        """
        A call never gets a deadline later than the one its origin
        inherited: the origin's earlier deadline caps the call's timeout.
        """
        contexts: list[CallContext] = []
        pair = yield self._serving({"look": lambda p, c: contexts.append(c) or {}})
        deadline = pair.clock.seconds() + 2.0
        yield pair.caller.call(
            pair.service,
            "look",
            {},
            timeout=30.0,
            origin=Origin(pair.callerService, "trace-nested", deadline),
        )
        [context] = contexts
        self.assertLessEqual(context.deadline, deadline)
        self.assertLessEqual(deadline - 0.01, context.deadline)
        self.assertEqual(context.correlationId, "trace-nested")

    @inlineCallbacks
    def test_deferredAnswer(self) -> Any:
        """
        A handler may answer later, through a Deferred.
        """
        pair = yield self.makeBuses()

        def later(payload: Any, context: CallContext) -> Deferred[Any]:
            return self._sleep(pair, 0.05).addCallback(lambda _: {"done": payload["n"]})

        yield pair.server.serve(pair.service, {"later": later})
        result = yield pair.caller.call(pair.service, "later", {"n": 3})
        self.assertEqual(result, {"done": 3})

    @inlineCallbacks
    def test_concurrentCalls(self) -> Any:
        """
        Calls in flight together each get their own answer.
        """
        pair = yield self.makeBuses()

        def double(payload: Any, context: CallContext) -> Deferred[Any]:
            # Answers in another order than the calls were made.
            delay = 0.001 * (20 - payload["n"])
            return self._sleep(pair, delay).addCallback(lambda _: {"twice": 2 * payload["n"]})

        yield pair.server.serve(pair.service, {"double": double})
        results = yield gatherResults(
            [pair.caller.call(pair.service, "double", {"n": n}) for n in range(20)]
        )
        self.assertEqual(results, [{"twice": 2 * n} for n in range(20)])

    @inlineCallbacks
    def test_serviceError(self) -> Any:
        """
        A L{ServiceError} a handler raises, or fails its Deferred with,
        reaches the caller as an error of the same type, with the same
        code, message and details.
        """

        def raising(payload: Any, context: CallContext) -> Any:
            raise NotFound("no such post", {"id": payload["id"], "tried": [1, "é"]})

        def failing(payload: Any, context: CallContext) -> Any:
            d: Deferred[Any] = Deferred()
            d.errback(NotFound("gone later", {"id": payload["id"]}))
            return d

        pair = yield self._serving({"raising": raising, "failing": failing})
        error = yield self.assertFailure(
            pair.caller.call(pair.service, "raising", {"id": "p1"}), NotFound
        )
        self.assertIs(type(error), NotFound)
        self.assertEqual(
            (error.code, error.message, error.details),
            ("not_found", "no such post", {"id": "p1", "tried": [1, "é"]}),
        )
        error = yield self.assertFailure(
            pair.caller.call(pair.service, "failing", {"id": "p2"}), NotFound
        )
        self.assertEqual(
            (error.code, error.message, error.details), ("not_found", "gone later", {"id": "p2"})
        )

    @inlineCallbacks
    def test_unknownErrorCode(self) -> Any:
        """
        An error whose code the caller does not know (a newer service's)
        reaches it as a plain L{ServiceError} keeping that code, message
        and details.
        """

        class Melted(ServiceError):
            code = "contract_melted"

        def melt(payload: Any, context: CallContext) -> Any:
            raise Melted("it melted", {"degrees": 451})

        pair = yield self._serving({"melt": melt})
        error = yield self.assertFailure(pair.caller.call(pair.service, "melt", {}), ServiceError)
        self.assertEqual(
            (error.code, error.message, error.details),
            ("contract_melted", "it melted", {"degrees": 451}),
        )

    @inlineCallbacks
    def test_unexpectedError(self) -> Any:
        """
        Anything else a handler raises reaches the caller as an
        L{InternalError} that says nothing of the cause (it is logged where
        the service runs).
        """

        def broken(payload: Any, context: CallContext) -> Any:
            raise ZeroDivisionError("the secret cause")

        pair = yield self._serving({"broken": broken})
        error = yield self.assertFailure(
            pair.caller.call(pair.service, "broken", {}), InternalError
        )
        self.assertNotIn("secret", error.message)
        self.assertNotIn("secret", repr(error.details))
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    @inlineCallbacks
    def test_unknownMethod(self) -> Any:
        """
        Calling a method the service does not serve fails with
        L{UnknownMethod}; the service goes on serving.
        """
        pair = yield self._serving({"echo": lambda p, c: p})
        yield self.assertFailure(
            pair.caller.call(pair.service, "nonesuch", {}, timeout=1.0), UnknownMethod
        )
        result = yield pair.caller.call(pair.service, "echo", {"still": "here"})
        self.assertEqual(result, {"still": "here"})

    @inlineCallbacks
    def test_unserved(self) -> Any:
        """
        A call to a service nobody serves fails with L{Unavailable} (or its
        kind L{DeadlineExceeded}) by its timeout, give or take the
        reactor's slack.
        """
        pair = yield self.makeBuses()
        yield self._within(pair, pair.caller.call(pair.unserved, "echo", {}, timeout=1.0), 1.5)

    @inlineCallbacks
    def test_deadlineExceeded(self) -> Any:
        """
        A call the service does not answer in time fails with
        L{DeadlineExceeded} once its timeout has passed, not much later.
        """
        pair = yield self._serving({"never": lambda p, c: self._hang()})
        started = pair.clock.seconds()
        yield self.assertFailure(
            pair.caller.call(pair.service, "never", {}, timeout=0.3), DeadlineExceeded
        )
        waited = pair.clock.seconds() - started
        self.assertLessEqual(0.3 - 0.01, waited)
        self.assertLessEqual(waited, 1.0)

    @inlineCallbacks
    def test_expiredNotRun(self) -> Any:
        """
        A call still waiting for a free replica when its deadline passes is
        dropped, not run late.
        """
        ran: list[int] = []
        release: Deferred[Any] = Deferred()

        def work(payload: Any, context: CallContext) -> Any:
            ran.append(payload["n"])
            return release if payload["n"] == 1 else {}

        pair = yield self._serving({"work": work}, prefetch=1)
        first = pair.caller.call(pair.service, "work", {"n": 1}, timeout=5.0)
        yield self._eventually(pair, lambda: ran)
        late = pair.caller.call(pair.service, "work", {"n": 2}, timeout=0.3)
        yield self.assertFailure(late, DeadlineExceeded)
        release.callback({"first": True})
        self.assertEqual((yield first), {"first": True})
        yield self._sleep(pair, self.settle)
        self.assertEqual(ran, [1])

    @inlineCallbacks
    def test_priorityOrder(self) -> Any:
        """
        Calls waiting for a free replica are taken highest priority first,
        and in the order they were made within a priority.
        """
        order: list[str] = []
        release: Deferred[Any] = Deferred()

        def work(payload: Any, context: CallContext) -> Any:
            order.append(payload["name"])
            return release if payload["name"] == "first" else {}

        pair = yield self._serving({"work": work}, prefetch=1)
        calls = [pair.caller.call(pair.service, "work", {"name": "first"})]
        yield self._eventually(pair, lambda: order)
        for name, priority in [
            ("low-1", Priority.LOW),
            ("high-1", Priority.HIGH),
            ("normal", Priority.NORMAL),
            ("high-2", Priority.HIGH),
            ("low-2", Priority.LOW),
        ]:
            calls.append(pair.caller.call(pair.service, "work", {"name": name}, priority=priority))
        yield self._sleep(pair, self.settle)  # all of them are waiting now
        release.callback({})
        yield gatherResults(calls)
        self.assertEqual(order, ["first", "high-1", "high-2", "normal", "low-1", "low-2"])

    @inlineCallbacks
    def test_competingReplicas(self) -> Any:
        """
        Replicas serving one service compete for its calls: each call is
        handled by one of them, once, and a replica never holds more calls
        than its prefetch, so two replicas with a prefetch of one each take
        one of two calls.
        """
        held: dict[str, list[int]] = {"a": [], "b": []}
        release: Deferred[Any] = Deferred()

        def replica(name: str) -> Callable[..., Any]:
            def work(payload: Any, context: CallContext) -> Any:
                held[name].append(payload["n"])
                d: Deferred[Any] = Deferred()
                release.addCallback(lambda _: d.callback({"by": name}))
                return d

            return work

        pair = yield self._serving({"work": replica("a")}, prefetch=1)
        yield pair.server.serve(pair.service, {"work": replica("b")}, prefetch=1)
        calls = [pair.caller.call(pair.service, "work", {"n": n}) for n in range(2)]
        yield self._eventually(pair, lambda: held["a"] and held["b"])
        release.callback(None)
        results = yield gatherResults(calls)
        self.assertEqual(sorted(r["by"] for r in results), ["a", "b"])
        self.assertEqual(sorted(held["a"] + held["b"]), [0, 1])

    @inlineCallbacks
    def test_stopDrains(self) -> Any:
        """
        Stopping a serving subscription fires only once the call it holds
        is answered, and that answer reaches the caller; after it, the
        stopped replica takes no more calls.
        """
        ran: list[int] = []
        release: Deferred[Any] = Deferred()

        def work(payload: Any, context: CallContext) -> Any:
            ran.append(payload["n"])
            return release

        pair = yield self.makeBuses()
        serving = yield pair.server.serve(pair.service, {"work": work}, prefetch=1)
        held = pair.caller.call(pair.service, "work", {"n": 1}, timeout=5.0)
        yield self._eventually(pair, lambda: ran)
        stopped = serving.stop()
        yield self._sleep(pair, 0.05)
        self.assertFalse(stopped.called)
        release.callback({"answered": True})
        self.assertEqual((yield held), {"answered": True})
        yield stopped
        yield self._within(pair, pair.caller.call(pair.service, "work", {"n": 2}, timeout=0.5), 1.0)
        self.assertEqual(ran, [1])

    @inlineCallbacks
    def test_callPayloads(self) -> Any:
        """
        Payloads and results of every JSON type round-trip unchanged,
        Unicode text included.
        """
        received: list[Any] = []

        def echo(payload: Any, context: CallContext) -> Any:
            received.append(payload)
            return {"back": payload}

        pair = yield self._serving({"echo": echo})
        result = yield pair.caller.call(pair.service, "echo", _PAYLOAD)
        self.assertEqual(_typed(received[0]), _typed(_PAYLOAD))
        self.assertEqual(_typed(result), _typed({"back": _PAYLOAD}))

    @inlineCallbacks
    def test_unsendable(self) -> Any:
        """
        What cannot be sent fails at once with C{TypeError} or
        C{ValueError}, and reaches no handler: a payload that is not JSON, a
        priority outside 0 to 9, an event name or a pattern that is not
        dot-separated words.
        """
        called: list[Any] = []
        pair = yield self._serving({"echo": lambda p, c: called.append(p)})
        call, service = pair.caller.call, pair.service
        yield self.assertFailure(call(service, "echo", {"set": {1}}), TypeError)
        yield self.assertFailure(call(service, "echo", {"nan": math.nan}), ValueError)
        yield self.assertFailure(call(service, "echo", {}, priority=10), ValueError)
        topic = self._topic()
        yield self.assertFailure(pair.caller.publish(f"{topic}.happened", {"set": {1}}), TypeError)
        yield self.assertFailure(pair.caller.publish(f"{topic}.Not An Event", {}), ValueError)
        yield self.assertFailure(
            pair.server.subscribe(f"{topic}.#.what?", lambda p, c: None, None), ValueError
        )
        yield self._sleep(pair, self.settle)
        self.assertEqual(called, [])

    # Events

    @inlineCallbacks
    def test_eventDelivered(self) -> Any:
        """
        An event published reaches a subscribed group with its payload and
        an L{EventContext} naming the event, its message id, its source and
        trace (from the origin), its first attempt, and when it was
        published (bus clock, to the second).
        """
        got: list[tuple[Any, EventContext]] = []
        pair = yield self.makeBuses()
        event = f"{self._topic()}.post.created"
        yield pair.server.subscribe(event, lambda p, c: got.append((p, c)), self.newGroup(event))
        before = pair.clock.seconds()
        yield pair.caller.publish(
            event, {"id": "p1"}, origin=self._origin(pair, "trace-ev"), messageId="contract-m1"
        )
        yield self._eventually(pair, lambda: got)
        [(payload, context)] = got
        self.assertEqual(payload, {"id": "p1"})
        self.assertIsInstance(context, EventContext)
        self.assertEqual(
            (context.event, context.messageId, context.source, context.correlationId),
            (event, "contract-m1", pair.callerService, "trace-ev"),
        )
        self.assertEqual(context.attempt, 1)
        self.assertLessEqual(before - 1.0, context.publishedAt)
        self.assertLessEqual(context.publishedAt, pair.clock.seconds())

    @inlineCallbacks
    def test_oneMemberPerGroup(self) -> Any:
        """
        The members of one group compete for its events: each event reaches
        one of them, once.
        """
        got: dict[str, list[int]] = {"a": [], "b": []}
        pair = yield self.makeBuses()
        event = f"{self._topic()}.happened"
        group = self.newGroup(event)
        for name in "ab":
            yield pair.server.subscribe(
                event, lambda p, c, name=name: got[name].append(p["n"]), group
            )
        yield gatherResults([pair.caller.publish(event, {"n": n}) for n in range(10)])
        yield self._eventually(pair, lambda: len(got["a"]) + len(got["b"]) >= 10)
        yield self._sleep(pair, self.settle)
        self.assertEqual(sorted(got["a"] + got["b"]), list(range(10)))

    @inlineCallbacks
    def test_everyGroup(self) -> Any:
        """
        Every group subscribed to an event gets its own copy, once.
        """
        got: dict[str, list[int]] = {"a": [], "b": []}
        pair = yield self.makeBuses()
        event = f"{self._topic()}.happened"
        for name in "ab":
            yield pair.server.subscribe(
                event, lambda p, c, name=name: got[name].append(p["n"]), self.newGroup(event)
            )
        yield pair.caller.publish(event, {"n": 1})
        yield self._eventually(pair, lambda: got["a"] and got["b"])
        yield self._sleep(pair, self.settle)
        self.assertEqual(got, {"a": [1], "b": [1]})

    @inlineCallbacks
    def test_privateSubscriptions(self) -> Any:
        """
        A private subscription (no group) gets every matching event
        published while it exists, each its own copy, and none once it has
        stopped.
        """
        got: dict[str, list[int]] = {"x": [], "y": []}
        pair = yield self.makeBuses()
        event = f"{self._topic()}.invalidated"
        subscriptions = {}
        for name in "xy":
            subscriptions[name] = yield pair.server.subscribe(
                event, lambda p, c, name=name: got[name].append(p["n"]), None
            )
        yield pair.caller.publish(event, {"n": 1})
        yield self._eventually(pair, lambda: got["x"] and got["y"])
        yield subscriptions["x"].stop()
        yield pair.caller.publish(event, {"n": 2})
        yield self._eventually(pair, lambda: len(got["y"]) == 2)
        yield self._sleep(pair, self.settle)
        self.assertEqual(got, {"x": [1], "y": [1, 2]})

    @inlineCallbacks
    def test_groupOutlivesMembers(self) -> Any:
        """
        A group keeps the events published while it has no member: the
        next member to subscribe gets them.
        """
        got: list[Any] = []
        pair = yield self.makeBuses()
        event = f"{self._topic()}.happened"
        group = self.newGroup(event)
        subscription = yield pair.server.subscribe(event, lambda p, c: None, group)
        yield subscription.stop()
        published = pair.caller.publish(event, {"n": 1})
        if self.durablePublish:
            yield published
        else:
            yield self.assertFailure(published, Unavailable)
        yield pair.server.subscribe(event, lambda p, c: got.append(p), group)
        yield self._eventually(pair, lambda: got)
        self.assertEqual(got, [{"n": 1}])

    @inlineCallbacks
    def test_topicPatterns(self) -> Any:
        """
        Patterns match event names as on an AMQP topic exchange: C{*} is
        exactly one word, C{#} zero or more.
        """
        topic = self._topic()
        patterns = {
            "star-created": f"{topic}.*.created",
            "post-hash": f"{topic}.post.#",
            "hash": f"{topic}.#",
            "star": f"{topic}.*",
            "exact": f"{topic}.post.created",
        }
        events = ["post.created", "post", "post.comment.created", "user.created", "user"]
        expected = {
            "star-created": ["post.created", "user.created"],
            "post-hash": ["post", "post.comment.created", "post.created"],
            "hash": sorted(events),
            "star": ["post", "user"],
            "exact": ["post.created"],
        }
        got: dict[str, list[str]] = {name: [] for name in patterns}
        pair = yield self.makeBuses()
        for name, pattern in patterns.items():
            yield pair.server.subscribe(
                pattern,
                lambda p, c, name=name: got[name].append(c.event[len(topic) + 1 :]),
                self.newGroup(pattern),
            )
        for event in events:
            yield pair.caller.publish(f"{topic}.{event}", {})
        total = sum(len(names) for names in expected.values())
        yield self._eventually(pair, lambda: sum(len(names) for names in got.values()) >= total)
        yield self._sleep(pair, self.settle)
        self.assertEqual({name: sorted(names) for name, names in got.items()}, expected)

    @inlineCallbacks
    def test_eventPayloads(self) -> Any:
        """
        Event payloads of every JSON type arrive unchanged, Unicode text
        included.
        """
        got: list[Any] = []
        pair = yield self.makeBuses()
        event = f"{self._topic()}.happened"
        yield pair.server.subscribe(event, lambda p, c: got.append(p), self.newGroup(event))
        yield pair.caller.publish(event, _PAYLOAD)
        yield self._eventually(pair, lambda: got)
        self.assertEqual(_typed(got[0]), _typed(_PAYLOAD))

    @inlineCallbacks
    def test_eventRetried(self) -> Any:
        """
        An event whose handler failed (here through its Deferred) is
        delivered again to the group: the same event and message id, as
        attempt 2.
        """
        contexts: list[EventContext] = []

        def flaky(payload: Any, context: EventContext) -> Any:
            contexts.append(context)
            d: Deferred[Any] = Deferred()
            if context.attempt == 1:
                d.errback(RuntimeError("not yet"))
            else:
                d.callback(None)
            return d

        pair = yield self.makeBuses()
        event = f"{self._topic()}.happened"
        yield pair.server.subscribe(event, flaky, self.newGroup(event))
        yield pair.caller.publish(event, {"n": 1}, messageId="contract-retry")
        yield self._eventually(pair, lambda: len(contexts) >= 2, self.retryWait + 2.0)
        yield self._sleep(pair, self.settle)
        self.assertEqual(
            [(c.event, c.messageId, c.attempt) for c in contexts],
            [(event, "contract-retry", 1), (event, "contract-retry", 2)],
        )
        self.flushLoggedErrors(RuntimeError)

    @inlineCallbacks
    def test_malformedNotRetried(self) -> Any:
        """
        An event its handler finds malformed (L{MalformedMessage}, or any
        error marked permanent) is not tried again: it is dead-lettered at
        once.
        """
        attempts: list[int] = []

        def refuse(payload: Any, context: EventContext) -> Any:
            attempts.append(context.attempt)
            raise MalformedMessage("missing field")

        pair = yield self.makeBuses()
        event = f"{self._topic()}.happened"
        group = self.newGroup(event)
        yield pair.server.subscribe(event, refuse, group)
        yield pair.caller.publish(event, {"bad": True})
        yield self._eventually(pair, lambda: attempts)
        yield self._sleep(pair, self.retryWait)
        self.assertEqual(attempts, [1])
        # Counted for an operator (txplatform_bus_dead_letters_total).
        yield self._eventually(pair, lambda: _deadLetters(group) == 1)


def _deadLetters(group: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("txplatform_bus_dead_letters_total", {"group": group}) or 0.0
