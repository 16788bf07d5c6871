"""
Tests for L{txplatform.sidecar}: a service behind its sidecar on real
loopback sockets, called over the direct transport.
"""

from __future__ import annotations

import os
import re
import time

import treq
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from txplatform.channel.identity import Identity, Peer, TrustStore, readIdentity, readTrust
from txplatform.channel.protocol import ChannelSettings
from txplatform.crypto.keys import Keys
from txplatform.direct.addresses import AddressBook
from txplatform.direct.bus import DirectBus
from txplatform.errors import Unavailable, UnknownMethod
from txplatform.serviceid import ServiceId
from txplatform.sidecar import FrameObserver, Sidecar

from .direct.test_bus import freePort, sealedCodec
from .plugins.test_options import identityFiles
from .processes import SERVING, TwistdTestCase
from .support import eventually, keyArguments, keyFiles, socketDirectory

POST = ServiceId.fromHex("010002")
GATEWAY = ServiceId.fromHex("010100")


class SidecarTests(TestCase):
    def setUp(self) -> None:
        self.postIdentity = Identity.generate(POST)
        self.gatewayIdentity = Identity.generate(GATEWAY)
        self.trust = TrustStore(
            [Peer(POST, self.postIdentity.public), Peer(GATEWAY, self.gatewayIdentity.public)]
        )
        self.port = freePort("127.1.0.2")
        self.addresses = AddressBook("127.0.0.0/8", self.port)
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        self.socket = os.path.join(socketDirectory(self), "post.sock")
        self.healthFile = os.path.join(directory, "health")

    def settings(self, identity: Identity, trust: TrustStore | None = None) -> ChannelSettings:
        return ChannelSettings(identity, trust or self.trust, reactor)

    @inlineCallbacks
    def start(self, handlers: dict, http: str = "tcp:0:interface=127.0.0.1"):  # type: ignore[no-untyped-def]
        service = DirectBus(
            reactor,
            self.settings(self.postIdentity),
            self.addresses,
            codec=sealedCodec(),
            listen=f"unix:{self.socket}:mode=600",
            behindSidecar=True,
        )
        service.startService()
        self.addCleanup(service.stopService)
        yield service.serve(POST, handlers)
        sidecar = Sidecar(
            reactor,
            "post",
            self.settings(self.postIdentity),
            f"tcp:{self.port}:interface=127.1.0.2",
            f"unix:{self.socket}",
            http,
            healthFile=self.healthFile,
            healthMaxAge=5.0,
        )
        sidecar.startService()
        self.addCleanup(sidecar.stopService)
        yield sidecar.listening
        if http.startswith("tcp:"):
            self.http = f"http://127.0.0.1:{sidecar.ports['http'].getHost().port}"
        return service, sidecar

    def caller(self, identity: Identity | None = None) -> DirectBus:
        bus = DirectBus(
            reactor,
            self.settings(identity or self.gatewayIdentity),
            self.addresses,
            codec=sealedCodec(),
        )
        bus.startService()
        self.addCleanup(bus.stopService)
        return bus

    @inlineCallbacks
    def get(self, path: str):  # type: ignore[no-untyped-def]
        response = yield treq.get(self.http + path, persistent=False)
        body = yield response.text()
        return response.code, body

    @inlineCallbacks
    def test_forwardsCalls(self):  # type: ignore[no-untyped-def]
        """
        Calls reach the service through its sidecar, which told it who the
        caller is; the socket is its owner's only.
        """
        service, sidecar = yield self.start(
            {"who": lambda payload, context: {"caller": context.caller.hex, "n": payload["n"]}}
        )
        self.assertEqual(os.stat(self.socket).st_mode & 0o777, 0o600)
        caller = self.caller()
        for n in range(3):
            result = yield caller.call(POST, "who", {"n": n})
            self.assertEqual(result, {"caller": "010100", "n": n})
        self.assertEqual(sidecar.ports["channel"].getHost().host, "127.1.0.2")

    @inlineCallbacks
    def test_metrics(self):  # type: ignore[no-untyped-def]
        """
        /metrics counts the handshakes, the calls per method with their
        latency, and the bytes each way.
        """
        yield self.start({"who": lambda payload, context: {}})
        caller = self.caller()
        for _ in range(4):
            yield caller.call(POST, "who", {})
        stranger = self.caller(Identity.generate(GATEWAY))
        yield self.assertFailure(stranger.call(POST, "who", {}), Unavailable)
        status, text = yield self.get("/metrics")
        self.assertEqual(status, 200)
        self.assertIn('txplatform_sidecar_calls_total{method="who",service="post"} 4.0', text)
        self.assertIn(
            'txplatform_sidecar_call_seconds_count{method="who",service="post"} 4.0', text
        )
        self.assertIn(
            'txplatform_sidecar_handshakes_total{result="accepted",service="post"} 1.0', text
        )
        self.assertIn(
            'txplatform_sidecar_handshakes_total{result="refused",service="post"} 1.0', text
        )
        self.assertIn('txplatform_sidecar_open_channels{service="post"} 1.0', text)
        self.assertRegex(
            text, r'txplatform_sidecar_bytes_total\{direction="in",service="post"\} [1-9]'
        )

    @inlineCallbacks
    def test_httpOnUNIXSocket(self):  # type: ignore[no-untyped-def]
        """
        The metrics serve on a UNIX socket too (a pod's shared volume, a
        host reached through a file), which Twisted's WSGI cannot.
        """
        path = os.path.join(socketDirectory(self), "http.sock")
        yield self.start({}, http=f"unix:{path}")

        @implementer(IAgentEndpointFactory)
        class Socket:
            def endpointForURI(self, uri):  # type: ignore[no-untyped-def]
                return UNIXClientEndpoint(reactor, path)

        pool = HTTPConnectionPool(reactor, persistent=False)
        http = HTTPClient(Agent.usingEndpointFactory(reactor, Socket(), pool=pool))
        response = yield http.get("http://sidecar/metrics")
        text = yield response.text()
        self.assertEqual(response.code, 200, text)
        self.assertIn("txplatform_sidecar_open_channels", text)

    @inlineCallbacks
    def test_refusedNeverForwarded(self):  # type: ignore[no-untyped-def]
        """
        A caller whose key is not trusted never gets a byte to the service:
        no forwarded connection is even opened.
        """
        service, sidecar = yield self.start({"who": lambda payload, context: {}})
        stranger = self.caller(Identity.generate(GATEWAY))
        yield self.assertFailure(stranger.call(POST, "who", {}), Unavailable)
        self.assertEqual(service.connections, {})

    @inlineCallbacks
    def test_health(self):  # type: ignore[no-untyped-def]
        """
        /healthz follows the service's health file; /readyz whether the
        service listens.
        """
        service, sidecar = yield self.start({"who": lambda payload, context: {}})
        status, text = yield self.get("/healthz")
        self.assertEqual(status, 503)
        self.assertIn("no health file", text)
        with open(self.healthFile, "w") as f:
            f.write(str(time.time()))
        status, text = yield self.get("/healthz")
        self.assertEqual((status, text.split(":")[0]), (200, "ok"))
        old = time.time() - 60
        os.utime(self.healthFile, (old, old))
        status, text = yield self.get("/healthz")
        self.assertEqual(status, 503)
        self.assertIn("60 s old", text)
        status, text = yield self.get("/readyz")
        self.assertEqual(status, 200)
        yield service.stopService()
        status, text = yield self.get("/readyz")
        self.assertEqual(status, 503)
        self.assertIn("not listening", text)
        status, text = yield self.get("/metrics")
        self.assertIn('txplatform_sidecar_service_up{service="post"} 0.0', text)


class FrameObserverTests(TestCase):
    def test_anyCut(self) -> None:
        """
        Frames are read from their headers however the stream is cut, and
        large payloads are not kept.
        """
        from txplatform.direct.wire import CallFrame, ReplyFrame

        frames = [
            CallFrame(POST, 5, 1, "m1", "t", "get", b"x" * 5000),
            ReplyFrame("m1", b"y" * 70000),
            CallFrame(POST, 0, 2, "m2", "", "list", b""),
        ]
        stream = b"".join(len(f.encode()).to_bytes(4, "big") + f.encode() for f in frames)
        for size in [1, 3, 7, 1000, len(stream)]:
            seen: list = []
            bad: list = []
            observer = FrameObserver(seen.append, lambda bad=bad: bad.append(1))
            for start in range(0, len(stream), size):
                observer.feed(stream[start : start + size])
            self.assertEqual(
                [(type(f).__name__, f.messageId) for f in seen],
                [("CallFrame", "m1"), ("ReplyFrame", "m1"), ("CallFrame", "m2")],
            )
            self.assertEqual(seen[0].method, "get")
            self.assertLess(len(seen[1].payload), 1000)
            self.assertEqual(bad, [])


class SidecarProcessTests(TwistdTestCase):
    """
    C{twistd post --sidecar-socket} and C{twistd sidecar --for post}, as
    deployed: a caller reaches the service through the sidecar, which
    reports it in its metrics.
    """

    timeout = 120

    @inlineCallbacks
    def test_beside(self):  # type: ignore[no-untyped-def]
        directory = os.path.abspath(self.mktemp())
        paths = identityFiles(os.path.join(directory, "identities"))
        keys = keyFiles(os.path.join(directory, "keys"))
        socket = os.path.join(socketDirectory(self), "post.sock")
        port = freePort("127.1.0.2")
        direct = f"direct:127.0.0.0/8?port={port}"
        service = self.spawn(
            "post",
            "--bus",
            direct,
            "--identity",
            paths["post"],
            "--trust",
            paths["trust"],
            "--event-bus",
            "local:",
            "--sidecar-socket",
            socket,
            "--db",
            f"sqlite:{os.path.join(directory, 'post.sqlite')}",
            *keyArguments(keys, "post"),
            ready=SERVING,
        )
        yield service.ready
        sidecar = self.spawn(
            "sidecar",
            "--for",
            "post",
            "--identity",
            paths["post"],
            "--trust",
            paths["trust"],
            "--bus",
            direct,
            "--forward",
            f"unix:{socket}",
            "--http",
            "tcp:0:interface=127.0.0.1",
            ready=re.compile(rb"Sidecar HTTP \(health, metrics\) listening on .*port=(\d+)"),
        )
        httpPort = yield sidecar.ready
        # A caller in this process: the gateway's identity, the bus key.
        caller = DirectBus(
            reactor,
            ChannelSettings(readIdentity(paths["gateway"]), readTrust(paths["trust"]), reactor),
            AddressBook("127.0.0.0/8", port),
            codec=Keys(keys["bus"], reactor, "bus").payloadCodec(),
        )
        caller.startService()
        self.addCleanup(caller.stopService)
        yield eventually(lambda: self.answered(caller), timeout=20)
        response = yield treq.get(f"http://127.0.0.1:{httpPort}/metrics", persistent=False)
        text = yield response.text()
        self.assertIn('txplatform_sidecar_calls_total{method="nonesuch",service="post"}', text)
        response = yield treq.get(f"http://127.0.0.1:{httpPort}/readyz", persistent=False)
        self.assertEqual(response.code, 200)
        for process in (service, sidecar):
            self.assertNotIn(b"Traceback", process.output, process.output.decode()[-3000:])

    @inlineCallbacks
    def answered(self, caller: DirectBus):  # type: ignore[no-untyped-def]
        """
        Whether the service answers (with its error for a method it lacks:
        proof that the call went all the way and back).
        """
        try:
            yield caller.call(POST, "nonesuch", {}, timeout=2)
        except UnknownMethod:
            return True
        except Unavailable:
            return False
        return False
