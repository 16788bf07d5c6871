"""
Traces across every hop, on the platform as deployed: a gateway and a
replica of each service, each its own twistd process on RabbitMQ and
PostgreSQL, each exporting its spans over OTLP/HTTP (C{--otlp}) to a
receiver the test runs.  One created post is one trace.
"""

from __future__ import annotations

import gzip
import os
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.web.resource import Resource
from twisted.web.server import Site

from ..support import eventually
from .cluster import ClusterTestCase
from .test_cluster import PASSWORD, TwoGatewaysTestCase

#: The client's own span: the gateway's operation is its child.
CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


class _Receiver(Resource):
    """
    An OTLP/HTTP receiver of traces: what each process exports, decoded.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        # (service.name, span) for every span received.
        self.spans: list[tuple[str, Any]] = []

    def render_POST(self, request: Any) -> bytes:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
            ExportTraceServiceResponse,
        )

        body = request.content.read()
        if request.getHeader("content-encoding") == "gzip":
            body = gzip.decompress(body)
        export = ExportTraceServiceRequest.FromString(body)
        for resourceSpans in export.resource_spans:
            attributes = {a.key: a.value.string_value for a in resourceSpans.resource.attributes}
            for scopeSpans in resourceSpans.scope_spans:
                for span in scopeSpans.spans:
                    self.spans.append((attributes.get("service.name", "?"), span))
        request.setHeader("Content-Type", "application/x-protobuf")
        return ExportTraceServiceResponse().SerializeToString()


class TraceTests(TwoGatewaysTestCase):
    timeout = 240

    @inlineCallbacks
    def setUp(self) -> Any:
        yield ClusterTestCase.setUp(self)
        self.receiver = _Receiver()
        port = reactor.listenTCP(0, Site(self.receiver), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        otlp = ("--otlp", f"http://127.0.0.1:{port.getHost().port}/v1/traces")
        # Export within a tenth of a second, not the SDK's default five.
        previous = os.environ.get("OTEL_BSP_SCHEDULE_DELAY")
        os.environ["OTEL_BSP_SCHEDULE_DELAY"] = "100"
        try:
            replicas = [self.service(name, *otlp) for name in ["account", "post", "notify"]]
            gateway = self.gateway(*otlp)
        finally:
            if previous is None:
                del os.environ["OTEL_BSP_SCHEDULE_DELAY"]
            else:
                os.environ["OTEL_BSP_SCHEDULE_DELAY"] = previous
        self.processes = [*replicas, gateway]
        yield gatherResults([p.ready for p in replicas])
        self.ports = [(yield gateway.ready)]
        self.http = self.client()
        self.requests = [0]
        self.addCleanup(self.noTracebacks)

    @inlineCallbacks
    def test_onePostOneTrace(self) -> Any:
        """
        A post created with the client's C{traceparent} is one trace across
        four processes: the gateway's operation (the client's span's
        child), its token check and the post's creation (each a call, with
        the serving span beneath), the post's transaction, the publication
        of C{post.created} from the outbox, Notify's handling of it, and
        Notify's call to Account; the request id is an attribute of the
        gateway's span and of each served call's.
        """
        for name in ["alice", "bob"]:
            status, _ = yield self.request(
                0,
                "POST",
                "/v1/accounts",
                {"username": name, "email": f"{name}@example.com", "password": PASSWORD},
            )
            self.assertEqual(status, 201)
        status, session = yield self.request(
            0, "POST", "/v1/sessions", {"username": "alice", "password": PASSWORD}
        )
        self.assertEqual(status, 201)
        status, post = yield self.request(
            0,
            "POST",
            "/v1/posts",
            {"body": "hello @bob"},
            token=session["token"],
            traceparent=f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01",
            x_request_id="trace-test-request-1",
        )
        self.assertEqual(status, 201, post)
        traceId = bytes.fromhex(CLIENT_TRACE)

        def inTrace() -> dict[str, tuple[str, Any]]:
            return {
                span.name: (service, span)
                for service, span in self.receiver.spans
                if span.trace_id == traceId
            }

        wanted = {
            "POST /v1/posts": "gateway",
            "010001/verify_token": "gateway",
            "account/verify_token": "account",
            "010002/create_post": "gateway",
            "post/create_post": "post",
            "publish post.created": "post",
            "notify process post.created": "notify",
            "010001/audience": "notify",
            "account/audience": "account",
        }
        spans = yield eventually(lambda: set(wanted) <= set(inTrace()) and inTrace(), timeout=30)
        for name, service in wanted.items():
            self.assertEqual(spans[name][0], service, name)
        byId = {span.span_id: span for _, span in self.receiver.spans if span.trace_id == traceId}

        def parent(name: str) -> str:
            found = byId.get(spans[name][1].parent_span_id)
            return found.name if found is not None else spans[name][1].parent_span_id.hex()

        self.assertEqual(parent("POST /v1/posts"), CLIENT_SPAN)
        for child, expected in [
            ("010001/verify_token", "POST /v1/posts"),
            ("account/verify_token", "010001/verify_token"),
            ("010002/create_post", "POST /v1/posts"),
            ("post/create_post", "010002/create_post"),
            ("publish post.created", "db.transaction"),
            ("notify process post.created", "publish post.created"),
            ("010001/audience", "notify process post.created"),
            ("account/audience", "010001/audience"),
        ]:
            self.assertEqual(parent(child), expected, child)
        staged = byId[spans["publish post.created"][1].parent_span_id]
        self.assertEqual(byId[staged.parent_span_id].name, "post/create_post")

        def attribute(name: str, key: str) -> Any:
            for a in spans[name][1].attributes:
                if a.key == key:
                    return a.value.string_value or a.value.int_value
            return None

        self.assertEqual(
            attribute("POST /v1/posts", "txplatform.request_id"), "trace-test-request-1"
        )
        self.assertEqual(attribute("POST /v1/posts", "http.response.status_code"), 201)
        self.assertEqual(
            attribute("post/create_post", "txplatform.correlation_id"), "trace-test-request-1"
        )
