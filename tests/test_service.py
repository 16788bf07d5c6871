"""
Tests for L{txplatform.service}.
"""

from typing import Any

from twisted.internet.defer import CancelledError, Deferred, fail, maybeDeferred, succeed
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from txplatform.context import CallContext, Origin, Priority
from txplatform.database import DatabaseUnavailable, Migration
from txplatform.errors import IdempotencyKeyReused, InvalidArgument, NotFound
from txplatform.keychecks import KeyMismatch
from txplatform.localbus import LocalBus
from txplatform.messages import RequestSpec, message, request, requestOf, string
from txplatform.service import BusService, DatabaseService, callRequest, handles, rpc
from txplatform.serviceid import ServiceId
from txplatform.testing import ServiceHarness

OTHER = ServiceId.fromHex("0000b2")


@message
class Hello:
    name: str = string(minLength=1, maxLength=10)


@message
class Greeting:
    greeting: str = string()


@message
class Named:
    name: str = string(minLength=1)


class Greeter(BusService):
    name = "greeter"
    serviceId = ServiceId.fromHex("0000a2")

    def __init__(self, bus: Any, clock: Any) -> None:
        super().__init__(bus, clock)
        self.events: list[tuple[Named, Any]] = []
        self.prepared = 0
        self.cleaned = 0
        self.prepareResult: Deferred[None] | None = None
        self.pendingAnswer: Deferred[Any] | None = None

    def prepare(self) -> Any:
        self.prepared += 1
        return self.prepareResult

    def cleanup(self) -> None:
        self.cleaned += 1

    @rpc(Hello)
    def hello(self, request: Hello, context: Any) -> Any:
        if request.name == "nobody":
            raise NotFound("nobody is not here")
        if request.name == "slow":
            self.pendingAnswer = Deferred()
            return self.pendingAnswer
        return Greeting(greeting=f"hello {request.name}")

    @rpc(Hello, name="relay")
    def relayToOther(self, request: Hello, context: Any) -> Any:
        return self.callService(OTHER, "whoami", {}, context)

    @handles("named.*", Named)
    def named(self, event: Named, context: Any) -> None:
        self.events.append((event, context))


class Batcher(BusService):
    name = "batcher"
    serviceId = ServiceId.fromHex("0000a3")
    eventPrefetch = 8

    def __init__(self, bus: Any, clock: Any) -> None:
        super().__init__(bus, clock)
        self.batches: list[list[tuple[Named, Any]]] = []

    @handles("named.*", Named, batch=3)
    def named(self, batch: list[tuple[Named, Any]]) -> None:
        self.batches.append(batch)
        if any(event.name == "poison" for event, _ in batch):
            raise ValueError("cannot take poison")


class BatchHandlerTests(SynchronousTestCase):
    """
    Handlers declared with C{batch} take the events that arrive together.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.bus = LocalBus(self.clock)
        self.service = Batcher(self.bus, self.clock)
        self.service.startService()
        self.successResultOf(self.service.whenStarted())

    def names(self) -> list[list[str]]:
        return [[event.name for event, _ in batch] for batch in self.service.batches]

    def test_together(self) -> None:
        """
        Events published together reach the handler in batches of at most
        its size, each with its own context, and are all acknowledged.
        """
        for name in "abcde":
            self.bus.publish("named.x", {"name": name}, origin=Origin(None, f"corr-{name}"))
        self.clock.advance(0)
        self.clock.advance(0)
        self.assertEqual(self.names(), [["a", "b", "c"], ["d", "e"]])
        self.assertEqual(
            [context.correlationId for batch in self.service.batches for _, context in batch],
            [f"corr-{name}" for name in "abcde"],
        )
        self.assertEqual(self.bus.pendingEvents("batcher", "named.*"), 0)
        self.assertEqual(self.bus.deadLetters("batcher"), [])

    def test_poisonAlone(self) -> None:
        """
        An event that fails its batch is handled again alone and, failing
        again, takes the bus's way to the dead letters; the others of its
        batch are handled.
        """
        for name in ["a", "poison", "c"]:
            self.bus.publish("named.x", {"name": name})
        for _ in range(100):
            self.clock.advance(1)
        [letter] = self.bus.deadLetters("batcher")
        self.assertIn("cannot take poison", letter.reason)
        self.assertGreater(letter.attempts, 1)
        self.flushLoggedErrors(ValueError)
        handled = [batch for batch in self.names() if "poison" not in batch]
        self.assertEqual(sorted(handled), [["a"], ["c"]])
        self.assertEqual(self.bus.pendingEvents("batcher", "named.*"), 0)

    def test_malformedNotBatched(self) -> None:
        """
        A malformed event is dead-lettered before it joins a batch.
        """
        self.bus.publish("named.x", {"nom": "a"})
        self.bus.publish("named.x", {"name": "b"})
        self.clock.advance(0)
        self.clock.advance(0)
        self.assertEqual(self.names(), [["b"]])
        [letter] = self.bus.deadLetters("batcher")
        self.assertEqual(letter.attempts, 1)

    def test_declaration(self) -> None:
        """
        A batch holds at least one event.
        """
        self.assertRaises(ValueError, handles, "named.*", Named, batch=0)
        [spec] = Batcher.eventHandlers()
        self.assertEqual(spec.batch, 3)


class ServiceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.bus = LocalBus(self.clock)
        self.service = Greeter(self.bus, self.clock)

    def start(self) -> None:
        self.service.startService()
        self.successResultOf(self.service.whenStarted())

    def call(self, method: str, payload: Any, **kwargs: Any) -> Deferred[Any]:
        d = self.bus.call(Greeter.serviceId, method, payload, **kwargs)
        self.clock.advance(0)
        return d

    def test_declarations(self) -> None:
        """
        L{rpc} and L{handles} declare methods by name without changing them.
        """
        self.assertEqual(sorted(Greeter.rpcMethods()), ["hello", "relay"])
        [handler] = Greeter.eventHandlers()
        self.assertEqual(
            (handler.pattern, handler.eventType, handler.group), ("named.*", Named, None)
        )
        self.assertEqual(self.service.hello(Hello(name="x"), None), Greeting(greeting="hello x"))

    def test_serves(self) -> None:
        """
        A started service answers calls; message results become payloads.
        """
        self.start()
        self.assertEqual(self.service.prepared, 1)
        self.assertEqual(
            self.successResultOf(self.call("hello", {"name": "bob"})), {"greeting": "hello bob"}
        )

    def test_checksRequests(self) -> None:
        """
        A request that does not fit the method's message is refused before
        the method runs, field by field.
        """
        self.start()
        error = self.failureResultOf(
            self.call("hello", {"name": "", "x": 1}), InvalidArgument
        ).value
        self.assertEqual([e["field"] for e in error.details["errors"]], ["x", "name"])

    def test_errors(self) -> None:
        """
        The method's service errors reach the caller.
        """
        self.start()
        self.failureResultOf(self.call("hello", {"name": "nobody"}), NotFound)

    def test_events(self) -> None:
        """
        Event handlers get parsed events, in the service's group by default.
        """
        self.start()
        self.bus.publish("named.one", {"name": "a"})
        self.clock.advance(0)
        [(event, context)] = self.service.events
        self.assertEqual((event, context.event), (Named(name="a"), "named.one"))
        self.assertEqual(self.bus.pendingEvents("greeter", "named.*"), 0)

    def test_malformedEvent(self) -> None:
        """
        An event that does not fit its message is dead-lettered at once.
        """
        self.start()
        self.bus.publish("named.one", {"nom": "a"})
        self.clock.advance(0)
        [letter] = self.bus.deadLetters("greeter")
        self.assertEqual(letter.attempts, 1)
        self.assertIn("nom", letter.reason)
        self.assertEqual(self.service.events, [])

    def test_callServicePropagates(self) -> None:
        """
        Calls made while handling a call carry its trace, deadline and
        priority, with the service as the caller.
        """
        seen = []
        self.successResultOf(
            self.bus.serve(OTHER, {"whoami": lambda p, c: seen.append(c) or {"ok": True}})
        )
        self.start()
        d = self.call(
            "relay",
            {"name": "x"},
            timeout=3,
            priority=Priority.HIGH,
            origin=Origin(None, "trace-9"),
        )
        self.clock.advance(0)
        self.assertEqual(self.successResultOf(d), {"ok": True})
        [context] = seen
        self.assertEqual(
            (context.caller, context.correlationId, context.deadline, context.priority),
            (Greeter.serviceId, "trace-9", 3.0, Priority.HIGH),
        )

    def test_waitsForPrepare(self) -> None:
        """
        Nothing is served before L{prepare} finishes.
        """
        self.service.prepareResult = Deferred()
        self.service.startService()
        started = self.service.whenStarted()
        self.assertNoResult(started)
        self.failureResultOf(self.call("hello", {"name": "x"}))
        self.service.prepareResult.callback(None)
        self.successResultOf(started)
        self.successResultOf(self.call("hello", {"name": "x"}))

    def test_failedStart(self) -> None:
        """
        A service that cannot prepare says so to whoever waits for it, and
        logs why.
        """
        self.service.prepareResult = fail(RuntimeError("no database"))
        self.service.startService()
        self.failureResultOf(self.service.whenStarted(), RuntimeError)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.successResultOf(self.service.stopService())

    def test_explainedFailedStart(self) -> None:
        """
        A failure to start whose message says it all (no database, keys
        that are not the data's) goes to whoever waits for the service, who
        reports it in one line: the service logs no traceback of it.
        """
        for error in [
            DatabaseUnavailable("cannot open postgresql://db/x: no such database"),
            KeyMismatch("the keys of greeter are not those its data was written with"),
        ]:
            service = Greeter(self.bus, self.clock)
            service.prepareResult = fail(error)
            service.startService()
            self.assertIs(self.failureResultOf(service.whenStarted()).value, error)
            self.assertEqual(self.flushLoggedErrors(), [])
            self.successResultOf(service.stopService())

    def test_stopWhileStarting(self) -> None:
        """
        A service stopped before it finished starting (its bus never came)
        gives up starting, quietly.
        """
        self.service.prepareResult = Deferred()
        self.service.startService()
        self.successResultOf(self.service.stopService())
        self.assertEqual(self.flushLoggedErrors(), [])
        self.failureResultOf(self.service.whenStarted(), CancelledError)

    def test_drainDeadline(self) -> None:
        """
        Work that does not finish within the drain deadline is left to the
        bus, and the service stops anyway.
        """
        self.service.drainTimeout = 2.0
        self.start()
        d = self.call("hello", {"name": "slow"})
        stopped = self.service.stopService()
        self.clock.advance(1.9)
        self.assertNoResult(stopped)
        self.clock.advance(0.1)
        self.successResultOf(stopped)
        self.assertEqual(self.service.cleaned, 1)
        self.assertNoResult(d)
        # The work finishing late is harmless.
        self.service.pendingAnswer.callback({"late": True})

    def test_stopDrains(self) -> None:
        """
        Stopping waits for the calls in progress, then cleans up.
        """
        self.start()
        d = self.call("hello", {"name": "slow"})
        stopped = self.service.stopService()
        self.assertNoResult(stopped)
        self.assertEqual(self.service.cleaned, 0)
        self.service.pendingAnswer.callback({"late": True})
        self.successResultOf(stopped)
        self.assertEqual(self.service.cleaned, 1)
        self.assertEqual(self.successResultOf(d), {"late": True})


ECHO_ID = ServiceId.fromHex("0000e1")


@request(ECHO_ID, "echo")
class Echo:
    text: str = string(maxLength=20)


class Echoer(BusService):
    name = "echoer"
    serviceId = ECHO_ID

    @rpc(Echo)
    def answer(self, request: Echo, context: Any) -> Any:
        return {"text": request.text}


class Asker(BusService):
    name = "asker"
    serviceId = ServiceId.fromHex("0000e2")


class TypedCallTests(SynchronousTestCase):
    """
    Calls made with a request message (L{txplatform.messages.request}).
    """

    def test_methodFromRequest(self) -> None:
        """
        A method serving a request message is named by the request's
        declaration, whatever the function is called; naming it otherwise
        is refused.
        """
        self.assertEqual(list(Echoer.rpcMethods()), ["echo"])
        self.assertEqual(requestOf(Echo(text="x")), RequestSpec(ECHO_ID, "echo"))
        self.assertIsNone(requestOf(Hello))
        self.assertRaises(ValueError, rpc, Echo, name="shout")

    def test_call(self) -> None:
        """
        A service calls another with the request message alone; the bus
        gets the method and the payload it stands for.
        """
        clock = Clock()
        bus = LocalBus(clock)
        bus.startService()
        echoer, asker = Echoer(bus, clock), Asker(bus, clock)
        echoer.startService()
        asker.startService()
        self.addCleanup(echoer.stopService)
        self.addCleanup(asker.stopService)
        clock.advance(0)
        d = asker.call(Echo(text="hello"))
        clock.advance(0)
        self.assertEqual(self.successResultOf(d), {"text": "hello"})
        d = callRequest(bus, Echo(text="again"))
        clock.advance(0)
        self.assertEqual(self.successResultOf(d), {"text": "again"})
        self.assertRaises(TypeError, asker.call, Hello(name="not a request"))


@message
class Note:
    text: str = string(minLength=1, maxLength=100)


class Notebook(DatabaseService):
    """
    A service that writes: C{add} records its reply in its transaction (a
    non-idempotent write), C{touch} does not (harmless to repeat, but its
    answer changes).
    """

    name = "notebook"
    serviceId = ServiceId.fromHex("0000a5")
    migrations = [
        Migration(1, "notes", ["CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT NOT NULL)"])
    ]

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.touched = 0
        # What the next add waits for before its transaction, if anything.
        self.gate: Deferred[None] | None = None

    @rpc(Note, idempotent=False)
    def add(self, request: Note, context: Any) -> Any:
        record = self.replies.recorder(context, lambda rowId: {"id": rowId})
        if request.text == "refuse":
            raise InvalidArgument("refused")

        def add(t: Any) -> int:
            t.execute("INSERT INTO notes (text) VALUES (?)", (request.text,))
            [(rowId,)] = t.execute("SELECT max(id) FROM notes").fetchall()
            if record is not None:
                record(t, rowId)
            return rowId

        gate, self.gate = self.gate or succeed(None), None
        gate.addCallback(lambda _: self.database.runInteraction(add))
        return gate.addCallback(lambda rowId: {"id": rowId})

    @rpc(Note)
    def touch(self, request: Note, context: Any) -> Any:
        self.touched += 1
        return {"touched": self.touched}

    @rpc(Note, name="forgetful_add", idempotent=False)
    def forgetfulAdd(self, request: Note, context: Any) -> Any:
        # Declared not to run twice, but records nothing: a mistake.
        return self.database.runOperation("INSERT INTO notes (text) VALUES (?)", (request.text,))


class UnrecordedReplyTests(SynchronousTestCase):
    """
    A method declared C{idempotent=False} that records no reply is a
    mistake a service's own tests may not show: the service says so.
    """

    def test_saidOncePerMethod(self) -> None:
        """
        A warning the first time such a method succeeds without recording
        its reply, none for later calls or for a method that records.
        """
        harness = ServiceHarness(self.mktemp())
        self.addCleanup(harness.stop)
        notebook = harness.start(
            Notebook(harness.bus, harness.database("notebook"), harness.reactor)
        )
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        for method in ["add", "forgetful_add", "forgetful_add", "add", "touch"]:
            harness.run(harness.bus.call(Notebook.serviceId, method, {"text": "x"}))
        said = [
            formatEvent(e) for e in events if "recorded no reply" in (e.get("log_format") or "")
        ]
        self.assertEqual(
            said,
            [
                "notebook forgetful_add is declared idempotent=False but recorded no reply"
                " (self.replies.recorder): a call delivered or sent again will run again"
            ],
        )
        # Nothing is kept once the calls are done.
        self.assertFalse(notebook.replies._accounted)

    def test_calledDirectly(self) -> None:
        """
        A method that records its reply, called directly with a call's
        context (by the service's own code, or a test) rather than handled
        from the bus, records it; nothing is kept for it, since no handling
        will be asked about it.
        """
        harness = ServiceHarness(self.mktemp())
        self.addCleanup(harness.stop)
        notebook = harness.start(
            Notebook(harness.bus, harness.database("notebook"), harness.reactor)
        )
        for n in range(3):
            context = CallContext(
                messageId=f"direct-{n}",
                service=notebook.serviceId,
                method="add",
                caller=None,
                correlationId="direct",
                deadline=harness.reactor.seconds() + 10,
                priority=5,
            )
            harness.run(notebook.add(Note(text=f"n{n}"), context))
        replies = harness.run(notebook.database.runQuery("SELECT count(*) FROM notebook_replies"))
        self.assertEqual(replies, [(3,)])
        self.assertEqual((notebook.replies._handling, notebook.replies._accounted), ({}, {}))


class CopiesAtOnceTests(SynchronousTestCase):
    """
    Two copies of one call running at once: the first as delivered, the
    other delivered or sent again while the first was still running.
    """

    def deliver(self, notebook: Notebook, redelivered: bool) -> Deferred[Any]:
        context = CallContext(
            messageId="msg-1",
            service=notebook.serviceId,
            method="add",
            caller=None,
            correlationId="one-request",
            deadline=self.harness.reactor.seconds() + 10,
            priority=5,
            redelivered=redelivered,
        )
        handler = notebook._callHandler(notebook.rpcMethods()["add"])
        return maybeDeferred(handler, {"text": "once"}, context)

    def test_copyCommitsFirst(self) -> None:
        """
        When the copy commits first, the first run fails on the reply on
        record, and answers that reply: not an internal error, and the
        note is made once.
        """
        self.harness = ServiceHarness(self.mktemp())
        self.addCleanup(self.harness.stop)
        notebook = self.harness.start(
            Notebook(self.harness.bus, self.harness.database("notebook"), self.harness.reactor)
        )
        gate: Deferred[None] = Deferred()
        notebook.gate = gate
        first = self.deliver(notebook, redelivered=False)
        copy = self.harness.run(self.deliver(notebook, redelivered=True))
        self.assertNoResult(first)
        gate.callback(None)
        self.assertEqual(self.harness.run(first), copy)
        notes = self.harness.run(notebook.database.runQuery("SELECT text FROM notes"))
        self.assertEqual(notes, [("once",)])
        self.assertFalse(notebook.replies._accounted)


class IdempotencyKeyTests(SynchronousTestCase):
    """
    Calls that carry an idempotency key: the same key and payload answer
    what the first call answered, without running again.
    """

    def setUp(self) -> None:
        self.harness = ServiceHarness(self.mktemp())
        self.addCleanup(self.harness.stop)
        self.notebook = self.harness.start(
            Notebook(self.harness.bus, self.harness.database("notebook"), self.harness.reactor)
        )

    def call(self, method: str, text: str, key: str | None, caller: Any = OTHER) -> Deferred:
        return self.harness.bus.call(
            Notebook.serviceId,
            method,
            {"text": text},
            origin=Origin(caller, "trace", idempotencyKey=key),
        )

    def notes(self) -> list[Any]:
        return self.harness.run(self.notebook.database.runQuery("SELECT id, text FROM notes"))

    def test_sameKeySameAnswer(self) -> None:
        """
        A write sent again with its key gets the first answer and does not
        happen twice; without a key, or with another key, it happens again.
        """
        first = self.harness.run(self.call("add", "one", "k1"))
        self.assertEqual(self.harness.run(self.call("add", "one", "k1")), first)
        self.assertEqual(len(self.notes()), 1)
        self.assertNotEqual(self.harness.run(self.call("add", "one", "k2")), first)
        self.assertNotEqual(self.harness.run(self.call("add", "one", None)), first)
        self.assertEqual(len(self.notes()), 3)

    def test_otherPayload(self) -> None:
        """
        The same key with another payload is refused, and nothing is done.
        """
        self.harness.run(self.call("add", "one", "k1"))
        failure = self.failureResultOf(self.runFailing(self.call("add", "two", "k1")))
        self.assertIsInstance(failure.value, IdempotencyKeyReused)
        self.assertEqual([text for _, text in self.notes()], ["one"])

    def test_keyPerCaller(self) -> None:
        """
        Another caller's key, though spelt the same, is its own.
        """
        first = self.harness.run(self.call("add", "one", "k1"))
        other = self.harness.run(self.call("add", "one", "k1", caller=ServiceId.fromHex("0000b3")))
        self.assertNotEqual(first, other)

    def test_harmlessCalls(self) -> None:
        """
        A call whose handler records nothing itself has its answer recorded
        after it ran: a retry with the key gets the same answer.
        """
        self.assertEqual(self.harness.run(self.call("touch", "x", "k1")), {"touched": 1})
        self.assertEqual(self.harness.run(self.call("touch", "x", "k1")), {"touched": 1})
        self.assertEqual(self.harness.run(self.call("touch", "x", None)), {"touched": 2})

    def test_recordingFails(self) -> None:
        """
        A reply that cannot be recorded after the call ran is still the
        answer (the work is done); the failure to record it is logged.
        """
        self.patch(
            self.notebook, "remember", lambda context, reply: fail(RuntimeError("disk full"))
        )
        self.assertEqual(self.harness.run(self.call("touch", "x", "k1")), {"touched": 1})
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_lookupFailsAfterFailure(self) -> None:
        """
        A call that failed, whose second look in the reply log fails too,
        answers its own failure, not the lookup's.
        """
        answers = [succeed((False, None)), fail(RuntimeError("database gone"))]
        self.patch(self.notebook, "replay", lambda context: answers.pop(0))
        failure = self.failureResultOf(self.runFailing(self.call("add", "refuse", "k1")))
        self.assertIsInstance(failure.value, InvalidArgument)

    def test_failuresNotRecorded(self) -> None:
        """
        A call that failed runs again when retried with its key.
        """
        for _ in range(2):
            failure = self.failureResultOf(self.runFailing(self.call("add", "refuse", "k1")))
            self.assertIsInstance(failure.value, InvalidArgument)

    def test_atTheSameTime(self) -> None:
        """
        A retry that arrives while the first try still runs (both looked
        for a reply before either recorded one) gets the first one's reply,
        and what it did is rolled back: one note, not two.
        """
        first, second = self.call("add", "one", "k1"), self.call("add", "one", "k1")
        self.assertEqual(self.harness.run(first), self.harness.run(second))
        self.assertEqual(len(self.notes()), 1)

    def runFailing(self, d: Deferred) -> Deferred:
        results: list[Any] = []
        d.addBoth(results.append)
        self.harness.flush()
        for _ in range(100):
            if results:
                break
            self.harness.advance(0.1)
        return fail(results[0]) if isinstance(results[0], Failure) else succeed(results[0])
