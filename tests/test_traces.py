"""
Tests for L{txplatform.traces}: spans of every hop, and the W3C
C{traceparent} that the buses carry sealed inside the payload.
"""

from __future__ import annotations

from typing import Any

from opentelemetry.trace import SpanKind, StatusCode
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase, TestCase

from txplatform import traces
from txplatform.codec import callBinding, dumps, eventBinding, traced, untraced
from txplatform.crypto.codecs import SealedPayloadCodec
from txplatform.crypto.keyring import Keyring, MasterKey
from txplatform.crypto.sealing import Sealer
from txplatform.database import SQLiteDatabase
from txplatform.errors import MalformedMessage
from txplatform.fields import PlainFieldCodec
from txplatform.localbus import LocalBus
from txplatform.outbox import Outbox
from txplatform.serviceid import ServiceId
from txplatform.testing import ServiceHarness, parentOf, recordSpans, spanNamed
from txplatform_gateway.testing import GatewayClient

from .support import eventually

SERVICE = ServiceId.fromHex("0000c1")
CALLER = ServiceId.fromHex("0000c2")
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
CLIENT_PARENT = f"00-{TRACE_ID}-b7ad6b7169203331-01"
CLIENT_STATE = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"


class TraceParentTests(SynchronousTestCase):
    def test_offByDefault(self) -> None:
        """
        Until a process turns tracing on, no span is made: the functions
        the hot paths call return C{None}.
        """
        self.assertFalse(traces.enabled())
        self.assertIsNone(traces.startSpan("x", SpanKind.SERVER, CLIENT_PARENT))
        self.assertIsNone(traces.startChildOfCurrent("x"))

    def test_childOfTraceParent(self) -> None:
        """
        A span started under a C{traceparent} is in its trace, its child;
        its own C{traceparent} names it.
        """
        exporter = recordSpans(self)
        span = traces.startSpan("x", SpanKind.SERVER, CLIENT_PARENT)
        assert span is not None
        traceParent = traces.traceParentOf(span)
        span.end()
        [finished] = exporter.get_finished_spans()
        self.assertEqual(f"{finished.context.trace_id:032x}", TRACE_ID)
        self.assertEqual(finished.parent.span_id, 0xB7AD6B7169203331)
        self.assertTrue(traceParent.startswith(f"00-{TRACE_ID}-{finished.context.span_id:016x}-"))
        parsed = traces.parseTraceParent(traceParent)
        self.assertEqual(
            (parsed.trace_id, parsed.span_id, parsed.trace_flags),
            (finished.context.trace_id, finished.context.span_id, finished.context.trace_flags),
        )

    def test_traceState(self) -> None:
        """
        A span started under a C{traceparent} and C{tracestate} has that
        trace state, which L{traces.traceStateOf} gives back to carry on;
        a span without one gives C{None}, and a C{tracestate} that is not
        one is dropped (the parent is kept).
        """
        recordSpans(self)
        span = traces.startSpan("x", SpanKind.SERVER, CLIENT_PARENT, traceState=CLIENT_STATE)
        assert span is not None
        self.assertEqual(span.get_span_context().trace_state.get("rojo"), "00f067aa0ba902b7")
        self.assertEqual(traces.traceStateOf(span), CLIENT_STATE)
        for state in [None, "", "not a tracestate"]:
            plain = traces.startSpan("x", SpanKind.SERVER, CLIENT_PARENT, traceState=state)
            assert plain is not None
            self.assertIsNone(traces.traceStateOf(plain), state)
            self.assertEqual(f"{plain.get_span_context().trace_id:032x}", TRACE_ID)

    def test_invalidTraceParent(self) -> None:
        """
        A C{traceparent} that is not one starts a new trace, as W3C Trace
        Context says.
        """
        exporter = recordSpans(self)
        for bad in ["", "00-zz-b7ad6b7169203331-01", f"00-{'0' * 32}-b7ad6b7169203331-01"]:
            self.assertIsNone(traces.parseTraceParent(bad))
            span = traces.startSpan("x", SpanKind.SERVER, bad)
            assert span is not None
            span.end()
        self.assertEqual([s.parent for s in exporter.get_finished_spans()], [None] * 3)

    def test_errorStatus(self) -> None:
        """
        A span ended with a failure is marked an error, with the error's
        code when it is a service error.
        """
        from twisted.python.failure import Failure

        from txplatform.errors import NotFound

        exporter = recordSpans(self)
        span = traces.startSpan("x", SpanKind.SERVER, None)
        traces.endSpan(Failure(NotFound("no such thing")), span)
        [finished] = exporter.get_finished_spans()
        self.assertEqual(finished.status.status_code, StatusCode.ERROR)
        self.assertEqual(finished.attributes["txplatform.error"], "not_found")


def _sealedCodec() -> SealedPayloadCodec:
    from twisted.internet.task import Clock

    return SealedPayloadCodec(Sealer(Keyring("bus", [MasterKey(1, b"k" * 32)], Clock())))


class SealedTraceTests(SynchronousTestCase):
    """
    The C{traceparent} travels inside the sealed payload, and whether a
    message carries one is bound in: neither can be changed on the way.
    """

    def test_notInTheClear(self) -> None:
        """
        A sealed traced payload does not show its C{traceparent}.
        """
        codec = _sealedCodec()
        binding = callBinding(SERVICE, "m", "id1", CALLER, "trace", 1000, None, True)
        data = codec.encode(traced({"n": 1}, CLIENT_PARENT), binding)
        self.assertNotIn(TRACE_ID.encode(), data)
        self.assertEqual(untraced(codec.decode(data, binding)), ({"n": 1}, CLIENT_PARENT, None))

    def test_markBound(self) -> None:
        """
        A traced call or event whose mark was removed (or an untraced one
        marked) does not open; nor does one whose sealed part was changed.
        """
        codec = _sealedCodec()
        for kind in ["call", "event"]:
            if kind == "call":
                marked = callBinding(SERVICE, "m", "id1", CALLER, "trace", 1000, None, True)
                unmarked = callBinding(SERVICE, "m", "id1", CALLER, "trace", 1000, None)
            else:
                marked = eventBinding("post.created", "id1", CALLER, "trace", True)
                unmarked = eventBinding("post.created", "id1", CALLER, "trace")
            self.assertNotEqual(marked, unmarked)
            data = codec.encode(traced({"n": 1}, CLIENT_PARENT), marked)
            self.assertRaises(MalformedMessage, codec.decode, data, unmarked)
            plain = codec.encode({"n": 1}, unmarked)
            self.assertRaises(MalformedMessage, codec.decode, plain, marked)
            tampered = data[:-20] + bytes([data[-20] ^ 1]) + data[-19:]
            self.assertRaises(MalformedMessage, codec.decode, tampered, marked)

    def test_keyAndMarkDistinct(self) -> None:
        """
        The mark cannot pass for an idempotency key, nor a key for the mark.
        """
        self.assertNotEqual(
            callBinding(SERVICE, "m", "id1", CALLER, "t", 1, "traced"),
            callBinding(SERVICE, "m", "id1", CALLER, "t", 1, None, True),
        )
        self.assertNotEqual(
            callBinding(SERVICE, "m", "id1", CALLER, "t", 1, "k", True),
            callBinding(SERVICE, "m", "id1", CALLER, "t", 1, "k"),
        )

    def test_untracedRefusesOthers(self) -> None:
        """
        A payload marked traced that is not a traced envelope is malformed.
        """
        for value in [
            {"n": 1},
            [],
            {"traceparent": 1, "payload": {}},
            "x",
            {"traceparent": CLIENT_PARENT, "tracestate": 1, "payload": {}},
            {"traceparent": CLIENT_PARENT, "other": "a=1", "payload": {}},
            {"traceparent": CLIENT_PARENT, "tracestate": "a=1", "x": 1, "payload": {}},
        ]:
            self.assertRaises(MalformedMessage, untraced, value)

    def test_traceStateSealed(self) -> None:
        """
        A C{tracestate} travels sealed beside the C{traceparent}, not in
        the clear, and comes out unchanged.
        """
        codec = _sealedCodec()
        binding = eventBinding("post.created", "id1", CALLER, "trace", True)
        data = codec.encode(traced({"n": 1}, CLIENT_PARENT, CLIENT_STATE), binding)
        self.assertNotIn(b"rojo", data)
        self.assertEqual(
            untraced(codec.decode(data, binding)), ({"n": 1}, CLIENT_PARENT, CLIENT_STATE)
        )

    def test_withoutTraceStateUnchanged(self) -> None:
        """
        A traced payload without a C{tracestate} (or with an empty one) is
        encoded byte for byte as before there were trace states, so peers
        that know only C{traceparent} read it; such a payload from them
        decodes with no C{tracestate}.
        """
        before = b'{"traceparent":"' + CLIENT_PARENT.encode() + b'","payload":{"n":1}}'
        for state in [None, ""]:
            self.assertEqual(dumps(traced({"n": 1}, CLIENT_PARENT, state)), before)
        self.assertEqual(dumps(traced({"n": 1}, CLIENT_PARENT)), before)
        self.assertEqual(
            untraced({"traceparent": CLIENT_PARENT, "payload": {"n": 1}}),
            ({"n": 1}, CLIENT_PARENT, None),
        )


class PlatformTraceTests(SynchronousTestCase):
    """
    The platform in one process (sealed bus payloads): one created post is
    one trace, from the gateway's operation to Notify's calls.
    """

    def setUp(self) -> None:
        self.harness = ServiceHarness(self.mktemp(), encrypted=True)
        self.addCleanup(self.harness.stop)
        for name in ("account", "post", "notify"):
            options = {"argon2_time_cost": 1, "argon2_memory_cost": 8} if name == "account" else {}
            self.harness.startService(name, **options)
        self.client = GatewayClient(self.harness)
        for name in ("alice", "bob"):
            self.client.post(
                "/v1/accounts",
                {"username": name, "email": f"{name}@example.com", "password": "correct horse"},
            )
        self.token = self.client.post(
            "/v1/sessions", {"username": "alice", "password": "correct horse"}
        ).json["token"]

    def post(self, **headers: str) -> Any:
        reply = self.client.post(
            "/v1/posts", {"body": "hi @bob"}, token=self.token, headers=headers
        )
        self.assertEqual(reply.status, 201)
        self.harness.flush()
        return reply

    def test_oneTrace(self) -> None:
        """
        The gateway's span is the root; the token check and the post's
        creation are its calls, each with the service's span under it; the
        post's transaction stages the event, whose publication is its
        child; Notify's handling is the publication's child, and its call
        to Account the handling's.  The request id is an attribute of the
        gateway's span.
        """
        exporter = recordSpans(self)
        reply = self.post()
        spans = exporter.get_finished_spans()
        self.assertEqual({s.context.trace_id for s in spans}, {spans[0].context.trace_id})
        root = spanNamed(spans, "POST /v1/posts")
        self.assertIsNone(root.parent)
        self.assertEqual(root.kind, SpanKind.SERVER)
        self.assertEqual(root.attributes["txplatform.request_id"], reply.header("x-request-id"))
        self.assertEqual(root.attributes["http.response.status_code"], 201)
        self.assertEqual(root.attributes["http.route"], "/v1/posts")
        chain = [
            ("010001/verify_token", SpanKind.CLIENT, "POST /v1/posts"),
            ("account/verify_token", SpanKind.SERVER, "010001/verify_token"),
            ("010002/create_post", SpanKind.CLIENT, "POST /v1/posts"),
            ("post/create_post", SpanKind.SERVER, "010002/create_post"),
            ("publish post.created", SpanKind.PRODUCER, "db.transaction"),
            ("notify process post.created", SpanKind.CONSUMER, "publish post.created"),
            ("010001/audiences", SpanKind.CLIENT, "notify process post.created"),
            ("account/audiences", SpanKind.SERVER, "010001/audiences"),
        ]
        for name, kind, parent in chain:
            span = spanNamed(spans, name)
            self.assertEqual(span.kind, kind, name)
            self.assertEqual(parentOf(spans, span).name, parent, name)
        staged = parentOf(spans, spanNamed(spans, "publish post.created"))
        self.assertEqual(parentOf(spans, staged).name, "post/create_post")
        self.assertEqual(staged.attributes["db.system.name"], "sqlite")
        serving = spanNamed(spans, "post/create_post")
        self.assertEqual(
            serving.attributes["txplatform.correlation_id"], reply.header("x-request-id")
        )

    def test_clientTraceParent(self) -> None:
        """
        A request with a W3C C{traceparent} joins the client's trace: the
        gateway's span is the child of the client's.
        """
        exporter = recordSpans(self)
        self.post(traceparent=CLIENT_PARENT, tracestate="vendor=1")
        spans = exporter.get_finished_spans()
        root = spanNamed(spans, "POST /v1/posts")
        self.assertEqual(f"{root.context.trace_id:032x}", TRACE_ID)
        self.assertEqual(root.parent.span_id, 0xB7AD6B7169203331)
        self.assertEqual(root.context.trace_state.get("vendor"), "1")
        self.assertEqual({s.context.trace_id for s in spans}, {int(TRACE_ID, 16)})

    def test_clientTraceState(self) -> None:
        """
        A client's W3C C{tracestate} goes with its trace over the bus: the
        spans of the services handling the request (their handlers'
        children, the outbox's publication and the consumer's) have it.
        """
        exporter = recordSpans(self)
        self.post(traceparent=CLIENT_PARENT, tracestate=CLIENT_STATE)
        spans = exporter.get_finished_spans()
        for name in [
            "account/verify_token",
            "post/create_post",
            "db.transaction",
            "publish post.created",
            "notify process post.created",
            "010001/audiences",
            "account/audiences",
        ]:
            span = spans[[s.name for s in spans].index(name)]
            self.assertEqual(span.context.trace_state.to_header(), CLIENT_STATE, name)
        self.assertEqual({s.context.trace_state.to_header() for s in spans}, {CLIENT_STATE})

    def test_newTraceEachRequest(self) -> None:
        """
        Without a C{traceparent} (or with an invalid one), each request
        starts a trace of its own.
        """
        exporter = recordSpans(self)
        self.post()
        self.post(traceparent="00-garbage")
        roots = [s for s in exporter.get_finished_spans() if s.name == "POST /v1/posts"]
        self.assertEqual([r.parent for r in roots], [None, None])
        self.assertNotEqual(roots[0].context.trace_id, roots[1].context.trace_id)

    def test_offCarriesNothing(self) -> None:
        """
        With tracing off, no span is made and no message carries a trace.
        """
        seen: list[Any] = []
        self.harness.bus.subscribe("post.created", lambda p, c: seen.append(c), "watch")
        self.post(traceparent=CLIENT_PARENT, tracestate=CLIENT_STATE)
        self.harness.flush()
        self.assertEqual([(c.traceParent, c.traceState) for c in seen], [(None, None)])


class OutboxTraceTests(TestCase):
    """
    An event keeps the trace of the transaction that staged it in its
    outbox row, even when it is published from the table later.
    """

    @inlineCallbacks
    def setUp(self) -> Any:
        self.exporter = recordSpans(self)
        self.database = SQLiteDatabase(self.mktemp())
        self.database.start()
        self.addCleanup(self.database.close)
        self.bus = LocalBus(reactor)
        self.received: list[Any] = []
        yield self.bus.subscribe("thing.*", lambda p, c: self.received.append(c), "watcher")
        self.outbox = Outbox(
            self.database, self.bus, PlainFieldCodec(), "things", SERVICE, reactor, interval=0.05
        )
        # It deletes what the bus confirmed a little later, or on stopping.
        self.addCleanup(self.outbox.stop)
        yield self.database.migrate(self.outbox.table, self.outbox.migrations())

    @inlineCallbacks
    def test_leftoverKeepsTrace(self) -> Any:
        """
        A row published by a later scan (here: a new outbox, as after a
        crash) is published under a span whose parent is the transaction's.
        """
        handler = traces.startSpan("handler", SpanKind.SERVER, None)
        with traces.current(handler):
            d = self.database.runInteraction(lambda t: self.outbox.stage(t, "thing.made", {"n": 1}))
        yield d
        handler.end()
        [[stored]] = yield self.database.runQuery(f"SELECT trace_parent FROM {self.outbox.table}")
        transaction = spanNamed(self.exporter.get_finished_spans(), "db.transaction")
        self.assertEqual(parentOf(self.exporter.get_finished_spans(), transaction).name, "handler")
        self.assertEqual(traces.parseTraceParent(stored).span_id, transaction.context.span_id)
        again = Outbox(
            self.database, self.bus, PlainFieldCodec(), "things", SERVICE, reactor, interval=0.05
        )
        self.addCleanup(again.stop)
        yield again.flush()
        yield eventually(lambda: self.received)
        spans = self.exporter.get_finished_spans()
        publish = spanNamed(spans, "publish thing.made")
        self.assertEqual(publish.kind, SpanKind.PRODUCER)
        self.assertEqual(publish.parent.span_id, transaction.context.span_id)
        [context] = self.received
        self.assertEqual(
            traces.parseTraceParent(context.traceParent).span_id, publish.context.span_id
        )

    @inlineCallbacks
    def test_leftoverKeepsTraceState(self) -> Any:
        """
        The transaction's C{tracestate} (its handler's) is kept in the row
        beside its C{traceparent}: a later scan publishes under a span
        that has it, and the event carries it on.
        """
        handler = traces.startSpan(
            "handler", SpanKind.SERVER, CLIENT_PARENT, traceState=CLIENT_STATE
        )
        with traces.current(handler):
            d = self.database.runInteraction(lambda t: self.outbox.stage(t, "thing.made", {"n": 1}))
        yield d
        handler.end()
        [[stored]] = yield self.database.runQuery(f"SELECT trace_state FROM {self.outbox.table}")
        self.assertEqual(stored, CLIENT_STATE)
        again = Outbox(
            self.database, self.bus, PlainFieldCodec(), "things", SERVICE, reactor, interval=0.05
        )
        self.addCleanup(again.stop)
        yield again.flush()
        yield eventually(lambda: self.received)
        publish = spanNamed(self.exporter.get_finished_spans(), "publish thing.made")
        self.assertEqual(publish.context.trace_state.to_header(), CLIENT_STATE)
        [context] = self.received
        self.assertEqual(context.traceState, CLIENT_STATE)

    @inlineCallbacks
    def test_noTraceNoSpan(self) -> Any:
        """
        A transaction outside any trace makes no span, and its events
        carry none.
        """
        yield self.database.runInteraction(lambda t: self.outbox.stage(t, "thing.made", {"n": 1}))
        yield self.outbox.flush()
        yield eventually(lambda: self.received)
        self.assertEqual(self.exporter.get_finished_spans(), ())
        self.assertIsNone(self.received[0].traceParent)
        self.assertIsNone(self.received[0].traceState)
