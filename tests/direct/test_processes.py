"""
The platform deployed on the direct transport: account, post, notify and a
gateway, each its own twistd process, calling one another over secure
channels at 127.x.y.z addresses derived from their ids, with events on
RabbitMQ.  The services are the same code as on AMQP: only options change.
"""

from __future__ import annotations

import json
import os
import random
import socket
from typing import Any

from twisted.internet.defer import gatherResults, inlineCallbacks

from txplatform.channel.identity import Identity, Peer, TrustStore, writeIdentity, writeTrust
from txplatform.direct.addresses import AddressBook

from ..amqp.cluster import ClusterTestCase
from ..otlp import CREATED_POST, CREATED_POST_PARENTS, receiveTraces
from ..support import eventually

SERVICES = {"account": "010001", "post": "010002", "notify": "010003", "gateway": "010100"}


def freeEverywhere(hosts: list[str]) -> int:
    """
    A port free on every one of C{hosts} (each service listens on its own
    address, all on one port).
    """
    for _ in range(100):
        port = random.randint(20000, 60000)
        try:
            for host in hosts:
                with socket.socket() as s:
                    s.bind((host, port))
        except OSError:
            continue
        return port
    raise RuntimeError("no common free port")


class DirectPlatformTests(ClusterTestCase):
    timeout = 180

    @inlineCallbacks
    def setUp(self) -> Any:
        yield super().setUp()
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        book = AddressBook("127.0.0.0/8")
        from txplatform.serviceid import ServiceId

        self.hosts = {name: book.derivedHost(ServiceId.fromHex(i)) for name, i in SERVICES.items()}
        self.port = freeEverywhere(list(self.hosts.values()))
        self.directURL = f"direct:127.0.0.0/8?port={self.port}"
        trust = TrustStore()
        self.identities = {}
        for name, hexId in SERVICES.items():
            identity = Identity.generate(ServiceId.fromHex(hexId))
            path = os.path.join(directory, f"{name}.identity")
            writeIdentity(path, identity)
            trust.add(Peer(identity.serviceId, identity.public, name))
            self.identities[name] = path
        self.trust = os.path.join(directory, "trust.json")
        writeTrust(self.trust, trust)

    def directOptions(self, name: str) -> list[str]:
        return [
            "--bus",
            self.directURL,
            "--event-bus",
            self.busURL,
            "--identity",
            self.identities[name],
            "--trust",
            self.trust,
        ]

    def start(self, *common: str) -> Any:
        """
        Start the three services and the gateway, each with C{common}
        options besides its own.
        """
        from ..processes import SERVING
        from ..support import keyArguments

        services = [
            self.spawn(
                name,
                *self.directOptions(name),
                "--db",
                self.databaseURL,
                *keyArguments(self.keys, name),
                *common,
                ready=SERVING,
            )
            for name in ["account", "post", "notify"]
        ]
        gateway = self.spawn(
            "gateway",
            *self.directOptions("gateway"),
            "--listen",
            "tcp:0:interface=127.0.0.1",
            *keyArguments(self.keys, "gateway"),
            *common,
        )
        names = ["account", "post", "notify", "gateway"]
        self.processes = dict(zip(names, [*services, gateway], strict=True))
        return gatherResults([p.ready for p in services] + [gateway.ready])

    @inlineCallbacks
    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        token: str | None = None,
        traceparent: str | None = None,
    ) -> Any:
        headers = {"Content-Type": ["application/json"]}
        if token:
            headers["Authorization"] = [f"Bearer {token}"]
        if traceparent:
            headers["traceparent"] = [traceparent]
        response = yield self.client().request(
            method,
            f"http://127.0.0.1:{self.gatewayPort}{path}",
            headers=headers,
            data=json.dumps(body).encode() if body is not None else None,
        )
        content = yield response.content()
        return response.code, (json.loads(content) if content else None)

    @inlineCallbacks
    def aliceAndBob(self) -> Any:
        """
        Sign up alice and bob; alice's session.
        """
        for name in ["alice", "bob"]:
            status, body = yield self.request(
                "POST",
                "/v1/accounts",
                {"username": name, "email": f"{name}@example.com", "password": "correct horse"},
            )
            self.assertEqual(status, 201, body)
        status, session = yield self.request(
            "POST", "/v1/sessions", {"username": "alice", "password": "correct horse"}
        )
        self.assertEqual(status, 201, session)
        return session

    @inlineCallbacks
    def test_platform(self) -> Any:
        """
        Accounts, sessions, posts and the notifications their events cause
        all work with calls going directly between the processes.
        """
        ready = yield self.start()
        self.gatewayPort = ready[-1]
        session = yield self.aliceAndBob()
        status, post = yield self.request(
            "POST", "/v1/posts", {"body": "hello @bob"}, token=session["token"]
        )
        self.assertEqual(status, 201, post)
        status, again = yield self.request("GET", f"/v1/posts/{post['id']}")
        self.assertEqual((status, again["body"]), (200, "hello @bob"))
        status, bobSession = yield self.request(
            "POST", "/v1/sessions", {"username": "bob", "password": "correct horse"}
        )

        @inlineCallbacks
        def notified() -> Any:
            status, page = yield self.request("GET", "/v1/notifications", token=bobSession["token"])
            self.assertEqual(status, 200, page)
            return page if page["items"] else None

        yield eventually(notified, timeout=20)
        # The calls went over the direct transport: each service says where
        # it took them.
        for name in ["account", "post", "notify"]:
            process = self.processes[name]
            self.assertIn(
                f"takes direct calls on IPv4Address(type='TCP', host='{self.hosts[name]}',"
                f" port={self.port})".encode(),
                process.output,
            )
        for process in self.processes.values():
            self.assertNotIn(b"Traceback", process.output, process.output.decode()[-3000:])

    @inlineCallbacks
    def test_traced(self) -> Any:
        """
        With C{--otlp} on every process, a post created over direct calls
        is one trace: the gateway's operation, its calls over the secure
        channels and the spans serving them, the event over RabbitMQ, and
        Notify's direct call to Account, each the child of the span that
        caused it.
        """
        receiver, otlp = receiveTraces(self)
        ready = yield self.start(*otlp)
        self.gatewayPort = ready[-1]
        session = yield self.aliceAndBob()
        traceId, clientSpan = "5bf92f3577b34da6a3ce929d0e0e4736", "10f067aa0ba902b7"
        status, post = yield self.request(
            "POST",
            "/v1/posts",
            {"body": "hello @bob"},
            token=session["token"],
            traceparent=f"00-{traceId}-{clientSpan}-01",
        )
        self.assertEqual(status, 201, post)
        wanted = CREATED_POST

        def complete() -> Any:
            spans = receiver.trace(traceId)
            return set(wanted) <= set(spans) and spans

        spans = yield eventually(complete, timeout=30)
        self.assertEqual({name: spans[name][0] for name in wanted}, wanted)
        self.assertEqual(receiver.parentName(traceId, "POST /v1/posts"), clientSpan)
        for child, parent in CREATED_POST_PARENTS:
            self.assertEqual(receiver.parentName(traceId, child), parent, child)
