"""
An OTLP/HTTP receiver of traces for tests of processes that export their
spans (C{--otlp URL}): what each process sends, decoded, kept in order.
"""

from __future__ import annotations

import gzip
import os
from typing import Any

from twisted.internet import reactor
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site

#: The spans of one created post (a mention), by name: the process of each.
CREATED_POST = {
    "POST /v1/posts": "gateway",
    "010001/verify_token": "gateway",
    "account/verify_token": "account",
    "010002/create_post": "gateway",
    "post/create_post": "post",
    "publish post.created": "post",
    "notify process post.created": "notify",
    "010001/audiences": "notify",
    "account/audiences": "account",
}

#: The parent of each of those spans that has one in the trace.
CREATED_POST_PARENTS = [
    ("010001/verify_token", "POST /v1/posts"),
    ("account/verify_token", "010001/verify_token"),
    ("010002/create_post", "POST /v1/posts"),
    ("post/create_post", "010002/create_post"),
    ("publish post.created", "db.transaction"),
    ("notify process post.created", "publish post.created"),
    ("010001/audiences", "notify process post.created"),
    ("account/audiences", "010001/audiences"),
]


class Receiver(Resource):
    """
    The receiving end of C{POST /v1/traces}.

    @ivar spans: C{(service.name, span)} for every span received.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
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

    def trace(self, traceId: str) -> dict[str, tuple[str, Any]]:
        """
        The spans of one trace received so far, by name: C{(service, span)}.
        """
        wanted = bytes.fromhex(traceId)
        return {
            span.name: (service, span) for service, span in self.spans if span.trace_id == wanted
        }

    def parentName(self, traceId: str, name: str) -> str:
        """
        The name of the parent of span C{name} in the trace, or the parent's
        span id in hex if the parent was not received (the client's own).
        """
        wanted = bytes.fromhex(traceId)
        byId = {span.span_id: span for _, span in self.spans if span.trace_id == wanted}
        child = self.trace(traceId)[name][1]
        found = byId.get(child.parent_span_id)
        return found.name if found is not None else child.parent_span_id.hex()


def receiveTraces(case: TestCase) -> tuple[Receiver, tuple[str, str]]:
    """
    Listen for traces until the test ends; return the receiver and the
    options that make a process export to it.  The processes the test
    spawns export within a tenth of a second, not the SDK's default five.
    """
    receiver = Receiver()
    port = reactor.listenTCP(0, Site(receiver), interface="127.0.0.1")
    case.addCleanup(port.stopListening)
    previous = os.environ.get("OTEL_BSP_SCHEDULE_DELAY")
    os.environ["OTEL_BSP_SCHEDULE_DELAY"] = "100"

    def restore() -> None:
        if previous is None:
            os.environ.pop("OTEL_BSP_SCHEDULE_DELAY", None)
        else:
            os.environ["OTEL_BSP_SCHEDULE_DELAY"] = previous

    case.addCleanup(restore)
    return receiver, ("--otlp", f"http://127.0.0.1:{port.getHost().port}/v1/traces")
