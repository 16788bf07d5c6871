"""
The direct transport across hosts, for real: each service replica on a host
of its own (a network namespace: L{tests.direct.hosts}) at the address its
3-byte id gives in C{10.0.0.0/8}, a sidecar in front of it ending the secure
channels, and a gateway on another host calling them with no broker in
between.  Events still go through RabbitMQ, which the hosts reach, like
PostgreSQL (where Post's two replicas keep their posts), through
forwarders.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections import Counter
from typing import Any
from urllib.parse import urlsplit

from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import DeferredSemaphore, gatherResults, inlineCallbacks
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from txplatform.channel.identity import Identity, Peer, TrustStore, writeIdentity, writeTrust
from txplatform.direct.addresses import AddressBook
from txplatform.serviceid import ServiceId

from ..amqp import test_cluster
from ..amqp.cluster import ClusterTestCase
from ..amqp.test_cluster import PASSWORD, TwoGatewaysTestCase
from ..processes import SERVING
from ..support import eventually, keyArguments, socketDirectory
from .hosts import Network, forwarder, requireNamespaces

NETWORK, PORT = "10.0.0.0/8", 7300
IDS = {"account": "010001", "post": "010002", "notify": "010003", "gateway": "010100"}
#: Post's second replica: an address of its own, listed in the table.
POST_B = "10.2.0.2"
FORWARDING = re.compile(rb"(forwarding)")
CHANNEL = re.compile(rb"Sidecar (ingress) listening on")
GATEWAY = re.compile(rb"Gateway listening on UNIXAddress\('([^']+)'\)")


@implementer(IAgentEndpointFactory)
class _Sockets:
    """
    HTTP to processes on the hosts, through their UNIX sockets: the URL's
    host names the socket.
    """

    def __init__(self, paths: dict[str, str]) -> None:
        self.paths = paths

    def endpointForURI(self, uri: Any) -> Any:
        return UNIXClientEndpoint(reactor, self.paths[uri.host.decode()])


def _onLoopback(url: str, port: int) -> str:
    # The same server, as a process on a host reaches it (its forwarder).
    parts = urlsplit(url)
    credentials = parts.netloc.rpartition("@")[0]
    netloc = f"{credentials}@127.0.0.1:{port}" if credentials else f"127.0.0.1:{port}"
    return parts._replace(netloc=netloc).geturl()


class HostsTestCase(TwoGatewaysTestCase):
    """
    The platform on six hosts: account, post, a second post, notify, the
    gateway, and a host whose gateway has an identity nobody trusts.
    """

    timeout = 300

    @inlineCallbacks
    def setUp(self) -> Any:
        requireNamespaces()
        yield ClusterTestCase.setUp(self)
        self.network = Network(self)
        self.sockets = socketDirectory(self)
        self.book = AddressBook(NETWORK, PORT)
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        trust = TrustStore()
        self.identities: dict[str, str] = {}
        for name, hexId in [*IDS.items(), ("rogue", IDS["gateway"])]:
            identity = Identity.generate(ServiceId.fromHex(hexId))
            self.identities[name] = os.path.join(directory, f"{name}.identity")
            writeIdentity(self.identities[name], identity)
            if name != "rogue":
                trust.add(Peer(identity.serviceId, identity.public, name))
        self.trust = os.path.join(directory, "trust.json")
        writeTrust(self.trust, trust)
        table = os.path.join(directory, "addresses.json")
        with open(table, "w") as f:
            json.dump(
                {"services": {IDS["post"]: [f"{self.host('post')}:{PORT}", f"{POST_B}:{PORT}"]}}, f
            )
        self.directURL = f"direct:{NETWORK}?port={PORT}&table={table}"
        # The machine's RabbitMQ and PostgreSQL, through a UNIX socket each.
        self.forwards: list[str] = []
        for name, url, default in [("amqp", self.busURL, 5672), ("pg", self.databaseURL, 5432)]:
            parts = urlsplit(url)
            path = os.path.join(self.sockets, f"{name}.sock")
            port = parts.port or default
            listening = yield forwarder(f"unix:{path}", f"tcp:{parts.hostname}:{port}")
            self.addCleanup(listening.stopListening)
            self.forwards += [f"tcp:{port}:interface=127.0.0.1", f"unix:{path}"]
        self.hostBusURL = _onLoopback(self.busURL, urlsplit(self.busURL).port or 5672)
        self.hostDatabaseURL = _onLoopback(
            self.databaseURL, urlsplit(self.databaseURL).port or 5432
        )
        self.paths: dict[str, str] = {}
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.http = HTTPClient(Agent.usingEndpointFactory(reactor, _Sockets(self.paths), pool=pool))
        self.requests = [0, 0]

    def host(self, name: str) -> str:
        return self.book.derivedHost(ServiceId.fromHex(IDS[name]))

    def gatewayURL(self, gateway: int) -> str:
        # One gateway stands for both of the contract's.
        return "http://gateway"

    def directOptions(self, name: str, identity: str | None = None) -> list[str]:
        return [
            "--bus",
            self.directURL,
            "--event-bus",
            self.hostBusURL,
            "--identity",
            self.identities[identity or name],
            "--trust",
            self.trust,
        ]

    def ready(self, processes: list[Any], seconds: float = 90) -> Any:
        """
        Wait until every one of C{processes} is ready: a list of what each
        gave; the output of those still not ready if that takes too long.
        """
        d = gatherResults([p.ready for p in processes], consumeErrors=True)
        call = reactor.callLater(seconds, d.cancel)

        def done(result: Any) -> Any:
            if not call.active():
                waiting = [p.output.decode()[-2000:] for p in processes if not p.ready.called]
                raise AssertionError(f"not ready after {seconds} s:\n" + "\n----\n".join(waiting))
            call.cancel()
            return result

        return d.addBoth(done)

    @inlineCallbacks
    def startPlatform(self) -> Any:  # type: ignore[override]
        hosts = {
            "account": self.host("account"),
            "post": self.host("post"),
            "post-b": POST_B,
            "notify": self.host("notify"),
            "gateway": self.host("gateway"),
            "rogue": "10.9.9.9",
        }
        for name, address in hosts.items():
            self.network.add(name, f"{address}/8")
        forwarders = [
            self.spawn(
                *self.forwards,
                program=[sys.executable, "-m", "tests.direct.hosts"],
                ready=FORWARDING,
                within=self.network.on(name),
            )
            for name in hosts
        ]
        self.processes = list(forwarders)
        yield self.ready(forwarders)
        replicas = {"account": "account", "post": "post", "post-b": "post", "notify": "notify"}
        services = []
        for name, service in replicas.items():
            services.append(
                self.spawn(
                    service,
                    *self.directOptions(service),
                    "--db",
                    self.hostDatabaseURL,
                    *keyArguments(self.keys, service),
                    "--sidecar-socket",
                    os.path.join(self.sockets, f"{name}.sock"),
                    ready=SERVING,
                    within=self.network.on(name),
                )
            )
        self.processes += services
        yield self.ready(services)
        self.sidecars = {}
        for name, service in replicas.items():
            self.paths[f"sidecar-{name}"] = os.path.join(self.sockets, f"{name}-http.sock")
            elsewhere = ["--listen", f"tcp:{PORT}:interface={POST_B}"] if name == "post-b" else []
            self.sidecars[name] = self.spawn(
                "sidecar",
                "--for",
                service,
                *self.directOptions(service)[:2],
                "--identity",
                self.identities[service],
                "--trust",
                self.trust,
                "--forward",
                f"unix:{os.path.join(self.sockets, f'{name}.sock')}",
                "--http",
                f"unix:{self.paths[f'sidecar-{name}']}",
                *elsewhere,
                ready=CHANNEL,
                within=self.network.on(name),
            )
        self.processes += list(self.sidecars.values())
        yield self.ready(list(self.sidecars.values()))
        gateways = []
        for name in ["gateway", "rogue"]:
            gateways.append(
                self.spawn(
                    "gateway",
                    *self.directOptions("gateway", identity=name),
                    "--listen",
                    f"unix:{os.path.join(self.sockets, f'{name}-http.sock')}",
                    "--call-timeout",
                    "3",
                    *keyArguments(self.keys, "gateway"),
                    within=self.network.on(name),
                    ready=GATEWAY,
                )
            )
        self.processes += gateways
        self.paths["gateway"], self.paths["rogue"] = yield self.ready(gateways)
        self.addCleanup(self.noTracebacks)

    @inlineCallbacks
    def metric(self, host: str, name: str, **labels: str) -> Any:
        """
        The sum of a metric's samples with C{labels}, as the sidecar on
        C{host} reports it.
        """
        response = yield self.http.get(f"http://sidecar-{host}/metrics")
        text = yield response.text()
        total = 0.0
        for line in text.splitlines():
            sample, _, value = line.rpartition(" ")
            if sample.partition("{")[0] != name:
                continue
            if all(f'{k}="{v}"' in sample for k, v in labels.items()):
                total += float(value)
        return total


class ContractTests(HostsTestCase):
    @inlineCallbacks
    def setUp(self) -> Any:
        yield super().setUp()
        yield self.startPlatform()

    test_contract = test_cluster.ClusterTests.test_contractThroughBothGateways

    @inlineCallbacks
    def test_untrusted(self) -> Any:
        """
        A host whose identity the others do not trust reaches nothing: each
        sidecar it tries refuses the handshake (no byte of a call reaches
        the service), and its gateway answers 503; a trusted one answers.
        """
        status, _ = yield self.request(
            0,
            "POST",
            "/v1/accounts",
            {"username": "alice", "email": "alice@example.com", "password": PASSWORD},
        )
        self.assertEqual(status, 201)
        before = yield self.metric("account", "txplatform_sidecar_bytes_total", direction="in")
        response = yield self.http.get("http://rogue/v1/accounts/alice")
        problem = yield response.json()
        self.assertEqual(response.code, 503, problem)
        self.assertEqual(
            response.headers.getRawHeaders("content-type"), ["application/problem+json"]
        )

        @inlineCallbacks
        def refused() -> Any:
            count = yield self.metric(
                "account", "txplatform_sidecar_handshakes_total", result="refused"
            )
            return count >= 1 and count

        yield eventually(refused, timeout=10)
        after = yield self.metric("account", "txplatform_sidecar_bytes_total", direction="in")
        self.assertEqual(after, before)
        # The trusted gateway still gets its answers.
        status, profile = yield self.request(0, "GET", "/v1/accounts/alice")
        self.assertEqual((status, profile["username"]), (200, "alice"))

    @inlineCallbacks
    def test_unplugged(self) -> Any:
        """
        Post's second host unplugged under load (its cable pulled: nobody is
        told): every request is answered, 2xx or a clear 503/504 problem;
        the reads go on through the replica left; every post accepted is
        readable.
        """
        status, _ = yield self.request(
            0,
            "POST",
            "/v1/accounts",
            {"username": "alice", "email": "alice@example.com", "password": PASSWORD},
        )
        self.assertEqual(status, 201)
        status, session = yield self.request(
            0, "POST", "/v1/sessions", {"username": "alice", "password": PASSWORD}
        )
        token = session["token"]
        posts = []
        for n in range(4):
            status, post = yield self.request(
                0, "POST", "/v1/posts", {"body": f"post {n}"}, token=token
            )
            self.assertEqual(status, 201, post)
            posts.append(post["id"])
        answers: list[tuple[int, float]] = []
        started = reactor.seconds()

        @inlineCallbacks
        def one(n: int) -> Any:
            if n % 4 == 0:
                status, body = yield self.request(
                    0, "POST", "/v1/posts", {"body": f"load {n}"}, token=token
                )
                if status == 201:
                    posts.append(body["id"])
            else:
                status, _ = yield self.request(0, "GET", f"/v1/posts/{posts[n % 4]}")
            answers.append((status, reactor.seconds() - started))

        semaphore = DeferredSemaphore(4)
        load = gatherResults([semaphore.run(one, n) for n in range(160)])
        yield eventually(lambda: len(answers) >= 40, timeout=60)
        self.network.unplug("post-b")
        yield load
        statuses = Counter(status for status, _ in answers)
        self.assertLessEqual(set(statuses), {200, 201, 503, 504}, statuses)
        # Only calls in flight to the host as it went, or sent before its
        # channel closed (TCP_USER_TIMEOUT), fail; the last quarter of the
        # load all succeed through the replica left.
        self.assertEqual({status for status, _ in answers[-40:]} - {200, 201}, set(), statuses)
        for postId in posts:
            status, _ = yield self.request(0, "GET", f"/v1/posts/{postId}")
            self.assertEqual(status, 200, postId)
        # Plugged in again, the host takes its share once more.
        served = yield self.metric("post-b", "txplatform_sidecar_calls_total")
        self.network.plug("post-b")

        @inlineCallbacks
        def backInService() -> Any:
            for postId in posts[:4]:
                status, _ = yield self.request(0, "GET", f"/v1/posts/{postId}")
                self.assertEqual(status, 200)
            now = yield self.metric("post-b", "txplatform_sidecar_calls_total")
            return now > served

        yield eventually(backInService, timeout=30)
