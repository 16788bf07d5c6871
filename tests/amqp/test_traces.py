"""
Traces across every hop, on the platform as deployed: a gateway and a
replica of each service, each its own twistd process on RabbitMQ and
PostgreSQL, each exporting its spans over OTLP/HTTP (C{--otlp}) to a
receiver the test runs.  One created post is one trace.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import gatherResults, inlineCallbacks

from ..otlp import CREATED_POST, CREATED_POST_PARENTS, receiveTraces
from ..support import eventually
from .cluster import ClusterTestCase
from .test_cluster import PASSWORD, TwoGatewaysTestCase

#: The client's own span: the gateway's operation is its child.
CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


class TraceTests(TwoGatewaysTestCase):
    timeout = 240

    @inlineCallbacks
    def setUp(self) -> Any:
        yield ClusterTestCase.setUp(self)
        self.receiver, otlp = receiveTraces(self)
        replicas = [self.service(name, *otlp) for name in ["account", "post", "notify"]]
        gateway = self.gateway(*otlp)
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
        wanted = CREATED_POST

        def complete() -> Any:
            spans = self.receiver.trace(CLIENT_TRACE)
            return set(wanted) <= set(spans) and spans

        spans = yield eventually(complete, timeout=30)
        for name, service in wanted.items():
            self.assertEqual(spans[name][0], service, name)

        def parent(name: str) -> str:
            return self.receiver.parentName(CLIENT_TRACE, name)

        self.assertEqual(parent("POST /v1/posts"), CLIENT_SPAN)
        for child, expected in CREATED_POST_PARENTS:
            self.assertEqual(parent(child), expected, child)
        byId = {span.span_id: span for _, span in self.receiver.spans}
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
