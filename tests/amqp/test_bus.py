"""
Tests for L{txplatform.amqp.bus} against the local RabbitMQ: the semantics
the in-process bus has, over a real broker.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from twisted.internet import reactor, threads
from twisted.internet.defer import CancelledError, Deferred, gatherResults, inlineCallbacks
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from txplatform.amqp import frames
from txplatform.amqp.bus import (
    CALLS_CHANNEL,
    CHANNEL,
    EVENTS_EXCHANGE,
    REPLY_TO,
    RPC_EXCHANGE,
    AMQPBus,
    deadQueue,
    eventQueue,
    rpcQueue,
)
from txplatform.amqp.frames import Properties
from txplatform.amqp.url import BrokerURL
from txplatform.busrules import millis
from txplatform.context import Origin, Priority
from txplatform.errors import (
    DeadlineExceeded,
    InternalError,
    MalformedMessage,
    NotFound,
    Unavailable,
    UnknownMethod,
)
from txplatform.interfaces import IBus
from txplatform.serviceid import ServiceId

from ..support import eventually, missing
from .harness import BrokerTestCase

CALLER = ServiceId.fromHex("f0ca11")


def sleep(seconds: float) -> Deferred[None]:
    return deferLater(reactor, seconds, lambda: None)


def rawCall(client: AMQPBus, service: ServiceId, messageId: str, **properties: Any) -> None:
    """
    Publish a call to C{service}'s method C{work} straight on C{client}'s
    connection, with C{properties} as given: what another client could send.
    """
    client._protocol.publish(
        CALLS_CHANNEL,
        RPC_EXCHANGE,
        service.hex,
        Properties(message_id=messageId, correlation_id=messageId, type="work", **properties),
        b"{}",
    )


class CallTests(BrokerTestCase):
    @inlineCallbacks
    def test_roundTrip(self) -> Any:
        """
        A call reaches a replica of the service and its result comes back,
        with the caller's id and trace id.
        """
        service = self.newServiceId()
        server = yield self.makeBus()
        client = yield self.makeBus(caller=CALLER)
        verifyObject(IBus, client)
        contexts = []

        def echo(payload: Any, context: Any) -> Any:
            contexts.append(context)
            return {"echo": payload}

        yield server.serve(service, {"echo": echo})
        result = yield client.call(
            service, "echo", {"x": [1, "é"]}, origin=Origin(CALLER, "trace-1")
        )
        self.assertEqual(result, {"echo": {"x": [1, "é"]}})
        [context] = contexts
        self.assertEqual(
            (context.caller, context.correlationId, context.method, context.service),
            (CALLER, "trace-1", "echo", service),
        )

    @inlineCallbacks
    def test_metrics(self) -> Any:
        """
        Each connection made and set up is counted; the confirms the
        broker owes are none once a publication is confirmed.
        """
        from prometheus_client import REGISTRY

        def connections() -> float:
            return (
                REGISTRY.get_sample_value("txplatform_bus_connections_total", {"transport": "amqp"})
                or 0.0
            )

        before = connections()
        bus = yield self.makeBus()
        self.assertEqual(connections() - before, 1)
        self.assertEqual(bus.confirmsPending(), 0)
        published = bus.publish(self.newEvent(), {"n": 1})
        self.assertEqual(bus.confirmsPending(), 1)
        yield published
        self.assertEqual(bus.confirmsPending(), 0)

    @inlineCallbacks
    def test_deferredHandler(self) -> Any:
        """
        Handlers may answer through a Deferred.
        """
        service = self.newServiceId()
        bus = yield self.makeBus()
        yield bus.serve(service, {"later": lambda p, c: sleep(0.05).addCallback(lambda _: "done")})
        self.assertEqual((yield bus.call(service, "later", {})), "done")

    @inlineCallbacks
    def test_errors(self) -> Any:
        """
        Service errors come back typed; anything else as a bare internal
        error; unknown methods and services say so.
        """
        service = self.newServiceId()
        bus = yield self.makeBus()

        def missing(payload: Any, context: Any) -> Any:
            raise NotFound("no such thing", {"thing": 1})

        def broken(payload: Any, context: Any) -> Any:
            raise ZeroDivisionError("secret")

        yield bus.serve(service, {"missing": missing, "broken": broken})
        error = yield self.assertFailure(bus.call(service, "missing", {}), NotFound)
        self.assertEqual((error.message, error.details), ("no such thing", {"thing": 1}))
        error = yield self.assertFailure(bus.call(service, "broken", {}), InternalError)
        self.assertNotIn("secret", error.message)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        yield self.assertFailure(bus.call(service, "nothing", {}), UnknownMethod)
        yield self.assertFailure(bus.call(self.newServiceId(), "x", {}), Unavailable)

    @inlineCallbacks
    def test_timeout(self) -> Any:
        """
        A call without an answer by its deadline fails with DeadlineExceeded.
        """
        service = self.newServiceId()
        bus = yield self.makeBus()
        yield bus.serve(service, {"never": lambda p, c: Deferred()})
        error = yield self.assertFailure(
            bus.call(service, "never", {}, timeout=0.3), DeadlineExceeded
        )
        self.assertIn(service.hex, error.message)

    @inlineCallbacks
    def test_expiredNotExecuted(self) -> Any:
        """
        A request that waited in the queue past its deadline is dropped, not
        executed late.
        """
        service = self.newServiceId()
        bus = yield self.makeBus()
        release: Deferred[None] = Deferred()
        ran = []

        def work(payload: Any, context: Any) -> Any:
            ran.append(payload["n"])
            return release if payload["n"] == 1 else None

        yield bus.serve(service, {"work": work}, prefetch=1)
        first = bus.call(service, "work", {"n": 1}, timeout=10)
        yield eventually(lambda: ran)
        late = bus.call(service, "work", {"n": 2}, timeout=0.2)
        yield self.assertFailure(late, DeadlineExceeded)
        yield sleep(0.1)
        release.callback(None)
        yield first
        yield sleep(0.2)
        self.assertEqual(ran, [1])

    @inlineCallbacks
    def test_priorities(self) -> Any:
        """
        Waiting calls are taken highest priority first.
        """
        service = self.newServiceId()
        bus = yield self.makeBus()
        order = []
        release: Deferred[None] = Deferred()

        def work(payload: Any, context: Any) -> Any:
            order.append(payload["name"])
            return release if payload["name"] == "first" else None

        yield bus.serve(service, {"work": work}, prefetch=1)
        calls = [bus.call(service, "work", {"name": "first"})]
        yield eventually(lambda: order)
        for name, priority in [
            ("low", Priority.LOW),
            ("normal", Priority.NORMAL),
            ("high", Priority.HIGH),
        ]:
            calls.append(bus.call(service, "work", {"name": name}, priority=priority))
        yield sleep(0.3)  # all three are queued at the broker
        release.callback(None)
        yield gatherResults(calls)
        self.assertEqual(order, ["first", "high", "normal", "low"])

    @inlineCallbacks
    def test_competingReplicas(self) -> Any:
        """
        Replicas of a service share its calls; each call is handled once.
        """
        service = self.newServiceId()
        handled: dict[str, list[int]] = {"a": [], "b": []}
        for name in "ab":
            replica = yield self.makeBus()

            def work(payload: Any, context: Any, name: str = name) -> Any:
                handled[name].append(payload["n"])
                return sleep(0.01)

            yield replica.serve(service, {"work": work}, prefetch=4)
        client = yield self.makeBus()
        yield gatherResults([client.call(service, "work", {"n": n}) for n in range(40)])
        self.assertEqual(sorted(handled["a"] + handled["b"]), list(range(40)))
        self.assertTrue(handled["a"] and handled["b"], handled)

    @inlineCallbacks
    def test_stopDrains(self) -> Any:
        """
        A stopping replica finishes the calls it holds, and the others take
        the rest.
        """
        service = self.newServiceId()
        first = yield self.makeBus()
        release: Deferred[None] = Deferred()
        subscription = yield first.serve(
            service, {"work": lambda p, c: release.addCallback(lambda _: "first")}, prefetch=1
        )
        client = yield self.makeBus()
        held = client.call(service, "work", {})
        yield sleep(0.2)
        stopped = subscription.stop()
        self.assertNoResult(stopped)
        queued = client.call(service, "work", {})
        second = yield self.makeBus()
        yield second.serve(service, {"work": lambda p, c: "second"})
        self.assertEqual((yield queued), "second")
        release.callback(None)
        self.assertEqual((yield held), "first")
        yield stopped

    @inlineCallbacks
    def test_stoppingGivesBackCancelled(self) -> Any:
        """
        A call whose handler a stopping replica cancelled (work it gave up
        on) is not answered with the cancellation: it goes back to the
        broker, and another replica answers it.  Before the replica stops,
        a cancellation is an answer like any other failure.
        """
        service = self.newServiceId()
        first = yield self.makeBus()
        held: list[Deferred[None]] = []

        def work(payload: Any, context: Any) -> Any:
            d: Deferred[None] = Deferred()
            held.append(d)
            return d

        subscription = yield first.serve(service, {"work": work}, prefetch=2)
        client = yield self.makeBus()
        early = client.call(service, "work", {"n": 0})
        yield eventually(lambda: held)
        held.pop().cancel()
        yield self.assertFailure(early, InternalError)
        self.assertEqual(len(self.flushLoggedErrors(CancelledError)), 1)
        late = client.call(service, "work", {"n": 1})
        yield eventually(lambda: held)
        stopped = subscription.stop()
        held.pop().cancel()
        yield stopped
        self.assertNoResult(late)
        second = yield self.makeBus()
        yield second.serve(service, {"work": lambda p, c: {"by": "second", **p}})
        self.assertEqual((yield late), {"by": "second", "n": 1})

    @inlineCallbacks
    def test_resentAfterLoss(self) -> Any:
        """
        A call in flight when its caller loses the connection to the broker
        is sent again once the caller has reconnected, under the same
        message id: a non-idempotent one marked, so that the service takes
        it as redelivered (and a method that must not run twice answers it
        from its reply log); an idempotent one as it was.  The caller gets
        the second copy's answer.  A call is sent again so once.
        """
        service = self.newServiceId()
        server = yield self.makeBus()
        held: list[tuple[Any, Deferred[Any]]] = []

        def work(payload: Any, context: Any) -> Any:
            d: Deferred[Any] = Deferred()
            held.append((context, d))
            return d

        yield server.serve(service, {"work": work}, prefetch=4)
        client = yield self.makeBus()
        for idempotent in (False, True):
            del held[:]
            call = client.call(service, "work", {}, timeout=10, idempotent=idempotent)
            yield eventually(lambda: len(held) == 1)
            client._protocol.transport.loseConnection()
            yield eventually(lambda: len(held) == 2, timeout=10)
            (first, firstAnswer), (second, secondAnswer) = held
            self.assertEqual(second.messageId, first.messageId)
            self.assertFalse(first.redelivered)
            self.assertEqual(second.redelivered, not idempotent)
            # The first copy's answer has nowhere to go: its reply-to was
            # the lost connection's.
            firstAnswer.callback({"copy": 1})
            secondAnswer.callback({"copy": 2})
            self.assertEqual((yield call), {"copy": 2})

        # Once only: lost with a second connection, it fails.
        del held[:]
        call = client.call(service, "work", {}, timeout=10)
        yield eventually(lambda: len(held) == 1)
        client._protocol.transport.loseConnection()
        yield eventually(lambda: len(held) == 2, timeout=10)
        client._protocol.transport.loseConnection()
        error = yield self.assertFailure(call, Unavailable)
        self.assertIn("lost before service", error.message)
        for _, answer in held:
            answer.callback(None)

    @inlineCallbacks
    def test_returnedWhileReappearing(self) -> Any:
        """
        A call that cannot be routed to a service which answered moments
        ago (its queue went with a node, and its replicas are declaring it
        again) is sent again every C{returnedRetryDelay} seconds, within
        its deadline, until the queue is back; once the service has been
        silent for C{reappearWithin} seconds, or to a service never heard
        from, it fails at once with Unavailable.
        """
        service = self.newServiceId()
        server = yield self.makeBus()
        subscription = yield server.serve(service, {"work": lambda p, c: {"by": "first"}})
        client = yield self.makeBus()
        self.assertEqual((yield client.call(service, "work", {})), {"by": "first"})
        yield subscription.stop()
        yield client._channel.queue_delete(queue=rpcQueue(service))
        late = client.call(service, "work", {}, timeout=10)
        yield sleep(0.5)
        self.assertNoResult(late)
        replacement = yield self.makeBus()
        yield replacement.serve(service, {"work": lambda p, c: {"by": "second"}})
        self.assertEqual((yield late), {"by": "second"})

        yield replacement.stopService()
        yield client._channel.queue_delete(queue=rpcQueue(service))
        client.reappearWithin = 0.0
        started = reactor.seconds()
        error = yield self.assertFailure(client.call(service, "work", {}, timeout=10), Unavailable)
        self.assertIn("no service", error.message)
        self.assertLess(reactor.seconds() - started, 1)
        # A stopping bus sends nothing again: such a call fails as it stops.
        client.reappearWithin = 5.0
        waiting = client.call(service, "work", {}, timeout=10)
        yield sleep(0.1)
        self.assertNoResult(waiting)
        started = reactor.seconds()
        yield client.stopService()
        yield self.assertFailure(waiting, Unavailable)
        self.assertLess(reactor.seconds() - started, 1)

    @inlineCallbacks
    def test_callsUnconfirmed(self) -> Any:
        """
        Calls and replies go without publisher confirms (a reply, a return
        or the deadline settles a call): the broker confirms none of them,
        while events are still confirmed.
        """
        service = self.newServiceId()
        server = yield self.makeBus()
        yield server.serve(service, {"work": lambda p, c: {"ok": True}})
        client = yield self.makeBus()
        for bus in (client, server):
            self.assertNotIn(CALLS_CHANNEL, bus._protocol._publishSequence)
        confirmed = {bus: bus._protocol._publishSequence[CHANNEL] for bus in (client, server)}
        for _ in range(3):
            self.assertEqual((yield client.call(service, "work", {})), {"ok": True})
        self.assertEqual(
            {bus: bus._protocol._publishSequence[CHANNEL] for bus in (client, server)}, confirmed
        )
        yield client.publish("test.unconfirmed-calls", {})
        self.assertEqual(client._protocol._publishSequence[CHANNEL], confirmed[client] + 1)

    @inlineCallbacks
    def test_untrustedHeaders(self) -> Any:
        """
        Headers are read, not trusted: a caller id that is not hex leaves
        the caller unknown, and a request asking for its answer in some
        queue other than a direct reply-to is served without publishing
        there.  Both are acknowledged.
        """
        service = self.newServiceId()
        seen = []
        server = yield self.makeBus()
        yield server.serve(service, {"work": lambda p, c: seen.append(c.caller) or {}})
        client = yield self.makeBus()
        target = f"test-target-{uuid.uuid4().hex[:10]}"
        self._queues.add(target)
        yield client._channel.queue_declare(queue=target)
        for messageId, replyTo, caller in [
            ("m1", REPLY_TO, "zzzzzz"),
            ("m2", target, CALLER.hex),
        ]:
            rawCall(client, service, messageId, reply_to=replyTo, headers={"x-caller": caller})
        yield eventually(lambda: len(seen) == 2)
        self.assertEqual(seen, [None, CALLER])
        yield sleep(0.2)
        self.assertIsNone((yield client._protocol.get(1, target)))
        yield server.stopService()
        ok = yield client._channel.queue_declare(
            queue=rpcQueue(service), durable=True, arguments={"x-max-priority": 9}
        )
        self.assertEqual(ok.message_count, 0)

    @inlineCallbacks
    def test_expiredDeliveryNotRun(self) -> Any:
        """
        A call delivered past its deadline is not run, even when the broker
        delivers it (a call prefetched, or given back, outlives its message
        expiry, which only drops messages waiting in the queue): the
        replica checks C{x-deadline} itself, and settles the message.
        """
        service = self.newServiceId()
        seen = []
        server = yield self.makeBus()
        yield server.serve(service, {"work": lambda p, c: seen.append(c.messageId) or {}})
        client = yield self.makeBus()
        now = millis(reactor.seconds())
        for messageId, deadline in [("late", now - 1000), ("in-time", now + 60_000)]:
            # No expiration property: only the header says it is late.
            rawCall(client, service, messageId, headers={"x-deadline": deadline})
        yield eventually(lambda: seen == ["in-time"])
        yield sleep(0.2)
        self.assertEqual(seen, ["in-time"])
        yield server.stopService()
        ok = yield client._channel.queue_declare(
            queue=rpcQueue(service), durable=True, arguments={"x-max-priority": 9}
        )
        self.assertEqual(ok.message_count, 0)

    @inlineCallbacks
    def test_malformedCall(self) -> Any:
        """
        A request whose payload cannot be decoded is answered with
        MalformedMessage and kept in the service's dead letters; the
        service goes on serving.
        """
        service = self.newServiceId()
        bus = yield self.makeBus()
        yield bus.serve(service, {"echo": lambda p, c: p})
        real = bus._codec

        class Garbling:
            def encode(self, payload: Any, binding: bytes) -> bytes:
                if payload == "garble":
                    return b"\xff not json"
                return real.encode(payload, binding)

            def decode(self, data: bytes, binding: bytes) -> Any:
                return real.decode(data, binding)

        bus._codec = Garbling()
        yield self.assertFailure(bus.call(service, "echo", "garble"), MalformedMessage)
        self.assertEqual((yield bus.call(service, "echo", "fine")), "fine")
        [dead] = yield eventually(lambda: self.deadLetters(bus, f"rpc.{service.hex}"))
        self.assertIn("not JSON", dead.properties.headers["x-error"])
        self.assertEqual(dead.properties.type, "echo")

    @inlineCallbacks
    def test_longMethodName(self) -> Any:
        """
        A method name too long for AMQP fails the call cleanly.
        """
        bus = yield self.makeBus()
        yield self.assertFailure(bus.call(self.newServiceId(), "m" * 300, {}), ValueError)

    @inlineCallbacks
    def test_stopWaitsForAnswers(self) -> Any:
        """
        A stopping bus (a gateway on SIGTERM) waits for the answers to the
        calls it has in flight before it closes its connection.
        """
        service = self.newServiceId()
        server = yield self.makeBus()
        yield server.serve(service, {"slow": lambda p, c: sleep(0.5).addCallback(lambda _: 7)})
        client = yield self.makeBus()
        answer = client.call(service, "slow", {})
        yield sleep(0.1)
        yield client.stopService()
        self.assertEqual(self.successResultOf(answer), 7)


class EventTests(BrokerTestCase):
    @inlineCallbacks
    def test_groups(self) -> Any:
        """
        Every group gets every event once; a group's replicas share them.
        """
        event = self.newEvent()
        groupA = self.newGroup(event)
        groupB = self.newGroup(event)
        got: dict[str, list[int]] = {"a1": [], "a2": [], "b": []}
        for name, group in [("a1", groupA), ("a2", groupA), ("b", groupB)]:
            bus = yield self.makeBus()
            yield bus.subscribe(
                event, lambda p, c, name=name: got[name].append(p["n"]), group, prefetch=2
            )
        publisher = yield self.makeBus(caller=CALLER)
        yield gatherResults([publisher.publish(event, {"n": n}) for n in range(30)])
        yield eventually(lambda: len(got["a1"]) + len(got["a2"]) == 30 and len(got["b"]) == 30)
        self.assertEqual(sorted(got["a1"] + got["a2"]), list(range(30)))
        self.assertTrue(got["a1"] and got["a2"])
        self.assertEqual(sorted(got["b"]), list(range(30)))

    @inlineCallbacks
    def test_context(self) -> Any:
        """
        Handlers learn the event's id, name, source and trace.
        """
        event = self.newEvent()
        group = self.newGroup(event)
        contexts = []
        bus = yield self.makeBus(caller=CALLER)
        yield bus.subscribe(event, lambda p, c: contexts.append(c), group)
        yield bus.publish(event, {}, origin=Origin(CALLER, "trace-7"), messageId="m-1")
        [context] = yield eventually(lambda: contexts)
        self.assertEqual(
            (
                context.messageId,
                context.event,
                context.source,
                context.correlationId,
                context.attempt,
            ),
            ("m-1", event, CALLER, "trace-7", 1),
        )

    @inlineCallbacks
    def test_durableGroup(self) -> Any:
        """
        A group's queue keeps events while no member is there.
        """
        event = self.newEvent()
        group = self.newGroup(event)
        bus = yield self.makeBus()
        subscription = yield bus.subscribe(event, lambda p, c: None, group)
        yield subscription.stop()
        yield bus.publish(event, {"n": 1})
        got = []
        yield bus.subscribe(event, lambda p, c: got.append(p), group)
        yield eventually(lambda: got == [{"n": 1}])

    @inlineCallbacks
    def test_private(self) -> Any:
        """
        Private subscriptions each get every event, beside the groups.
        """
        event = self.newEvent()
        got: list[str] = []
        for name in ["x", "y"]:
            bus = yield self.makeBus()
            yield bus.subscribe(event, lambda p, c, name=name: got.append(name))
        publisher = yield self.makeBus()
        yield publisher.publish(event, {})
        yield eventually(lambda: sorted(got) == ["x", "y"])

    @inlineCallbacks
    def test_retryThenDeadLetter(self) -> Any:
        """
        A failing handler gets the event again after each retry delay, then
        it goes to the group's dead-letter queue with the error.
        """
        event = self.newEvent()
        group = self.newGroup(event)
        attempts = []

        def failing(payload: Any, context: Any) -> Any:
            attempts.append(context.attempt)
            raise RuntimeError("database is down")

        bus = yield self.makeBus()
        yield bus.subscribe(event, failing, group)
        yield bus.publish(event, {"n": 1}, messageId="dead-1")
        [dead] = yield eventually(lambda: self.deadLetters(bus, group))
        self.assertEqual(attempts, [1, 2, 3])
        headers = dead.properties.headers
        self.assertEqual(dead.properties.message_id, "dead-1")
        self.assertIn("database is down", headers["x-error"])
        self.assertEqual(headers["x-attempts"], 3)
        self.assertEqual(headers["x-original-routing-key"], event)
        self.flushLoggedErrors(RuntimeError)

    @inlineCallbacks
    def test_retryThenSucceed(self) -> Any:
        """
        An event that succeeds on a retry is not dead-lettered.
        """
        event = self.newEvent()
        group = self.newGroup(event)
        attempts = []

        def flaky(payload: Any, context: Any) -> Any:
            attempts.append(context.attempt)
            if context.attempt < 2:
                raise RuntimeError("not yet")

        bus = yield self.makeBus()
        yield bus.subscribe(event, flaky, group)
        yield bus.publish(event, {})
        yield eventually(lambda: attempts == [1, 2])
        yield sleep(0.3)
        self.assertEqual((yield self.deadLetters(bus, group)), [])

    @inlineCallbacks
    def test_malformed(self) -> Any:
        """
        A message that cannot be decoded goes to the dead-letter queue at
        once, and the group goes on with the next event.
        """
        event = self.newEvent()
        group = self.newGroup(event)
        got = []

        def handler(payload: Any, context: Any) -> Any:
            if payload.get("bad"):
                raise MalformedMessage("missing field")
            got.append(payload)

        bus = yield self.makeBus()
        yield bus.subscribe(event, handler, group, prefetch=1)
        bus._protocol.publish(
            1, EVENTS_EXCHANGE, event, Properties(message_id="junk"), b"\xff not json"
        )
        yield bus.publish(event, {"bad": True})
        yield bus.publish(event, {"good": True})
        yield eventually(lambda: got == [{"good": True}])
        dead = yield eventually(
            lambda: self.deadLetters(bus, group).addCallback(lambda d: len(d) == 2 and d)
        )
        self.assertEqual(sorted(d.properties.headers["x-attempts"] for d in dead), [1, 1])
        self.assertTrue(any("not JSON" in d.properties.headers["x-error"] for d in dead))

    @inlineCallbacks
    def test_unreadableHeaders(self) -> Any:
        """
        An event whose headers cannot be read goes to the dead letters at
        once; the connection stays up and the next event is handled.
        """
        event = self.newEvent()
        group = self.newGroup(event)
        got = []
        bus = yield self.makeBus()
        yield bus.subscribe(event, lambda p, c: got.append(p), group)
        protocol = bus._protocol
        nested: dict = {}
        for _ in range(frames.MAX_NESTING + 2):
            nested = {"n": nested}
        protocol.publish(
            1, EVENTS_EXCHANGE, event, Properties(message_id="deep", headers=nested), b"{}"
        )
        yield bus.publish(event, {"good": True})
        yield eventually(lambda: got == [{"good": True}])
        [dead] = yield eventually(lambda: self.deadLetters(bus, group))
        self.assertIn("nested", dead.properties.headers["x-error"])
        self.assertIs(bus._protocol, protocol)

    @inlineCallbacks
    def test_stopGivesBackRetries(self) -> Any:
        """
        An event waiting for its next attempt is given back at once when its
        subscriber stops, and another member of the group gets it.
        """
        event = self.newEvent()
        group = self.newGroup(event)
        failing = yield self.makeBus(retryDelays=(30.0,))
        tried = []

        def fail(payload: Any, context: Any) -> Any:
            tried.append(context.attempt)
            raise RuntimeError("not now")

        subscription = yield failing.subscribe(event, fail, group)
        yield failing.publish(event, {"n": 1})
        yield eventually(lambda: tried == [1])
        other = yield self.makeBus()
        got = []
        yield other.subscribe(event, lambda p, c: got.append(p), group)
        started = reactor.seconds()
        yield subscription.stop()
        self.assertLess(reactor.seconds() - started, 5)
        yield eventually(lambda: got == [{"n": 1}])
        self.flushLoggedErrors(RuntimeError)

    @inlineCallbacks
    def test_deadLetterNotStoredGivesBack(self) -> Any:
        """
        A failed event is acknowledged only once its dead letter is
        confirmed: with its group's dead-letter queue gone (the mandatory
        publish comes back), it is given back to its queue, not lost, and
        handled when it next succeeds.
        """
        event = self.newEvent()
        group = self.newGroup(event)
        calls = []

        def failsOnce(payload: Any, context: Any) -> Any:
            calls.append(payload)
            if len(calls) == 1:
                raise RuntimeError("fails once")

        bus = yield self.makeBus(retryDelays=())
        yield bus.subscribe(event, failsOnce, group)
        yield bus._channel.queue_delete(queue=deadQueue(group))
        yield bus.publish(event, {"n": 1})
        yield eventually(lambda: len(calls) == 2)
        self.assertEqual(calls, [{"n": 1}, {"n": 1}])
        self.flushLoggedErrors(RuntimeError)

    @inlineCallbacks
    def test_retryKeepsTheEvent(self) -> Any:
        """
        A retried event (a copy put back in the queue) keeps its event name,
        message id and trace.
        """
        event = self.newEvent()
        group = self.newGroup(event)
        contexts = []

        def flaky(payload: Any, context: Any) -> Any:
            contexts.append(context)
            if context.attempt == 1:
                raise RuntimeError("once")

        bus = yield self.makeBus()
        yield bus.subscribe(event, flaky, group)
        yield bus.publish(event, {}, origin=Origin(CALLER, "trace-1"), messageId="keep-1")
        yield eventually(lambda: len(contexts) == 2)
        self.assertEqual(
            [(c.event, c.messageId, c.correlationId, c.source, c.attempt) for c in contexts],
            [(event, "keep-1", "trace-1", CALLER, 1), (event, "keep-1", "trace-1", CALLER, 2)],
        )
        self.flushLoggedErrors(RuntimeError)

    @inlineCallbacks
    def test_confirmTimeout(self) -> Any:
        """
        A publish the broker does not confirm in time fails with Unavailable
        (the outbox then publishes it again).
        """
        bus = yield self.makeBus()
        bus.confirmTimeout = 0.2
        bus._protocol.dataReceived = lambda data: None  # the broker goes quiet
        error = yield self.assertFailure(bus.publish(self.newEvent(), {}), Unavailable)
        self.assertIn("did not confirm", error.message)
        bus._protocol.transport.loseConnection()

    @inlineCallbacks
    def test_quorumQueues(self) -> Any:
        """
        With ?queue_type=quorum, a group's queue and its dead letters are
        quorum queues, and events flow as with classic ones.
        """
        event = self.newEvent()
        group = self.newGroup(event)
        if shutil.which("rabbitmqctl") is None:
            missing("rabbitmqctl is not on the PATH: cannot check the queue types")
        self.brokerURL = urlunsplit(urlsplit(self.brokerURL)._replace(query="queue_type=quorum"))
        bus = yield self.makeBus()
        got = []
        yield bus.subscribe(event, lambda p, c: got.append(p), group)
        yield bus.publish(event, {"n": 1})
        yield eventually(lambda: got == [{"n": 1}])
        result = yield threads.deferToThreadPool(
            reactor,
            reactor.getThreadPool(),
            subprocess.run,
            ["rabbitmqctl", "list_queues", "name", "type"],
            capture_output=True,
            text=True,
        )
        types = dict(line.split("\t")[:2] for line in result.stdout.splitlines() if "\t" in line)
        self.assertEqual(types.get(eventQueue(group, event)), "quorum")
        self.assertEqual(types.get(deadQueue(group)), "quorum")

    @inlineCallbacks
    def test_publishConfirmed(self) -> Any:
        """
        publish fires once the broker has the event; without a connection
        it fails at once, so that the outbox keeps the event.
        """
        bus = yield self.makeBus()
        confirmed = bus.publish(self.newEvent(), {"n": 1})
        yield confirmed
        yield bus.stopService()
        yield self.assertFailure(bus.publish(self.newEvent(), {}), Unavailable)


class _Silent(Protocol):
    """
    A server that accepts and never answers: the AMQP handshake waits.
    """

    def connectionMade(self) -> None:
        self.factory.connections.append(self)
        self.lost: Deferred[None] = Deferred()

    def connectionLost(self, reason: Any = None) -> None:
        self.lost.callback(None)


class UnreadyConnectionTests(TestCase):
    """
    Connections that never get ready (no broker behind the port, a
    handshake that times out) are closed, by the bus, before it retries or
    stops: ClientService would otherwise find their later loss in a state
    with no transition for it (automat's NoTransition, logged).
    """

    def listen(self) -> Any:
        factory = ServerFactory.forProtocol(_Silent)
        factory.connections = []
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return factory, port.getHost().port

    @inlineCallbacks
    def test_stopWhileHandshaking(self) -> Any:
        """
        Stopping while the handshake waits closes the connection, and its
        loss is not an error.
        """
        factory, port = self.listen()
        bus = AMQPBus(reactor, BrokerURL.parse(f"amqp://127.0.0.1:{port}/"))
        bus.startService()
        yield eventually(lambda: len(factory.connections) == 1)
        yield bus.stopService()
        yield factory.connections[0].lost.addTimeout(5, reactor)

    @inlineCallbacks
    def test_handshakeTimesOut(self) -> Any:
        """
        A handshake that times out is closed before the next attempt.
        """
        factory, port = self.listen()
        bus = AMQPBus(reactor, BrokerURL.parse(f"amqp://127.0.0.1:{port}/?connect_timeout=0.2"))
        bus.startService()
        self.addCleanup(bus.stopService)
        yield eventually(lambda: len(factory.connections) == 2, timeout=10)
        self.assertTrue(factory.connections[0].lost.called)
        self.assertFalse(bus.connected)
