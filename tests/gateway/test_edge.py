"""
The gateway's edge: HTTPS (TLS 1.2 at least) and CORS, through real
HTTP(S) on loopback.
"""

from __future__ import annotations

import datetime
import os
from typing import Any

import treq
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import Certificate
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool
from zope.interface import implementer

from txplatform_gateway.tls import TLSConfigError, serverOptions, wrapTLS

from ..support import SQLiteMixin
from .harness import PASSWORD, PlatformTestCase


def makeCertificate(directory: str, name: str = "localhost") -> tuple[str, str]:
    """
    A self-signed certificate for C{name} and its key, as PEM files.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    os.makedirs(directory, exist_ok=True)
    certPath, keyPath = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    with open(certPath, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(keyPath, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return certPath, keyPath


class ServerOptionsTests(SynchronousTestCase):
    def test_mismatch(self) -> None:
        """
        Missing files, non-PEM files and a key of another certificate are
        refused, saying which.
        """
        cert, key = makeCertificate(self.mktemp())
        _, otherKey = makeCertificate(self.mktemp())
        for certPath, keyPath, message in [
            ("/nonexistent.pem", key, "cannot read the certificate"),
            (key, key, "holds no PEM certificate"),
            (cert, cert, "not an unencrypted PEM private key"),
            (cert, otherKey, "is not the key of"),
        ]:
            error = self.assertRaises(TLSConfigError, serverOptions, certPath, keyPath)
            self.assertIn(message, str(error))


class HTTPSTests(SQLiteMixin, PlatformTestCase):
    @inlineCallbacks
    def setUp(self) -> Any:
        yield super().setUp()
        self.cert, key = makeCertificate(self.mktemp())
        factory = wrapTLS(serverOptions(self.cert, key), self.gateway.site())
        self.httpsPort = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(self.httpsPort.stopListening)

    def trusted(self) -> Certificate:
        with open(self.cert, "rb") as f:
            return Certificate.loadPEM(f.read())

    @inlineCallbacks
    def test_https(self) -> Any:
        """
        The API answers over HTTPS, to a client that checks the certificate.
        """
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        agent = Agent(reactor, BrowserLikePolicyForHTTPS(self.trusted()), pool=pool)
        response = yield treq.get(
            f"https://localhost:{self.httpsPort.getHost().port}/healthz", agent=agent
        )
        self.assertEqual(response.code, 200)
        self.assertEqual((yield response.json()), {"status": "ok"})

    @inlineCallbacks
    def test_oldTLSRefused(self) -> Any:
        """
        A client that speaks at most TLS 1.1 gets no connection: the
        handshake fails, and no HTTP answer comes.
        """
        lost: Deferred = Deferred()
        received: list[bytes] = []

        class Probe(Protocol):
            def connectionMade(self) -> None:
                self.transport.write(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")

            def dataReceived(self, data: bytes) -> None:
                received.append(data)

            def connectionLost(self, reason: Any) -> None:
                lost.callback([reason])  # a Failure given to callback would errback

        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.httpsPort.getHost().port)
        yield wrapClientTLS(_OldTLS(), endpoint).connect(Factory.forProtocol(Probe))
        [reason] = yield lost
        self.assertTrue(reason.check(SSL.Error), reason)
        self.assertIn("protocol version", str(reason.value))
        self.assertEqual(received, [])
        # Twisted logs the failed handshake.
        self.flushLoggedErrors(SSL.Error)


@implementer(IOpenSSLClientConnectionCreator)
class _OldTLS:
    """
    A client offering TLS 1.0 and 1.1 only.
    """

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        context = SSL.Context(SSL.TLS_METHOD)
        context.set_min_proto_version(SSL.TLS1_VERSION)
        context.set_max_proto_version(SSL.TLS1_1_VERSION)
        context.set_cipher_list(b"DEFAULT:@SECLEVEL=0")
        connection = SSL.Connection(context, None)
        connection.set_app_data(tlsProtocol)
        connection.set_connect_state()
        return connection


class CORSTests(SQLiteMixin, PlatformTestCase):
    corsOrigins = ["https://app.example"]

    @inlineCallbacks
    def raw(self, method: str, path: str, **headers: str) -> Any:
        response = yield self.http.request(
            method, self.url(path), headers={k.replace("_", "-"): [v] for k, v in headers.items()}
        )
        body = yield response.content()
        return response, body

    def header(self, response: Any, name: str) -> str | None:
        values = response.headers.getRawHeaders(name)
        return values[0] if values else None

    @inlineCallbacks
    def test_preflight(self) -> Any:
        """
        A preflight from an allowed origin is answered 204 with what it may
        send; from another origin, 403 problem details.
        """
        response, body = yield self.raw(
            "OPTIONS",
            "/v1/posts",
            Origin="https://app.example",
            Access_Control_Request_Method="POST",
            Access_Control_Request_Headers="authorization, content-type",
        )
        self.assertEqual((response.code, body), (204, b""))
        self.assertEqual(
            self.header(response, "access-control-allow-origin"), "https://app.example"
        )
        self.assertIn("POST", self.header(response, "access-control-allow-methods"))
        self.assertIn("Authorization", self.header(response, "access-control-allow-headers"))
        response, body = yield self.raw(
            "OPTIONS",
            "/v1/posts",
            Origin="https://evil.example",
            Access_Control_Request_Method="POST",
        )
        self.assertEqual(response.code, 403)
        self.assertEqual(self.header(response, "content-type"), "application/problem+json")
        self.assertIsNone(self.header(response, "access-control-allow-origin"))

    @inlineCallbacks
    def test_simple(self) -> Any:
        """
        Answers to an allowed origin carry its name and expose the request
        id; other origins get none; requests without Origin are untouched.
        """
        response, _ = yield self.raw("GET", "/healthz", Origin="https://app.example")
        self.assertEqual(response.code, 200)
        self.assertEqual(
            self.header(response, "access-control-allow-origin"), "https://app.example"
        )
        self.assertIn("X-Request-Id", self.header(response, "access-control-expose-headers"))
        self.assertEqual(self.header(response, "vary"), "Origin")
        response, _ = yield self.raw("GET", "/healthz", Origin="https://evil.example")
        self.assertEqual(response.code, 200)
        self.assertIsNone(self.header(response, "access-control-allow-origin"))
        response, _ = yield self.raw("GET", "/healthz")
        self.assertIsNone(self.header(response, "vary"))


class LoginThrottleTests(SQLiteMixin, PlatformTestCase):
    """
    Brute force against POST /v1/sessions gets 429 with Retry-After.
    """

    trustedProxies = ["127.0.0.0/8"]

    @inlineCallbacks
    def attempt(self, password: str, forwardedFor: str) -> Any:
        return (
            yield self.request(
                "POST",
                "/v1/sessions",
                json={"username": "alice", "password": password},
                headers={"X-Forwarded-For": forwardedFor},
            )
        )

    @inlineCallbacks
    def test_bruteForce(self) -> Any:
        """
        After five failures from one client the sixth blocks it: 429 with
        Retry-After and problem details saying how long, even with the
        right password.
        """
        yield self.register("alice")
        for _ in range(6):
            reply = yield self.attempt("wrong", "192.0.2.10")
            self.assertProblem(reply, 401, "unauthenticated")
        reply = yield self.attempt(PASSWORD, "192.0.2.10")
        problem = self.assertProblem(reply, 429, "resource_exhausted")
        self.assertEqual(reply.header("retry-after"), "1")
        self.assertEqual(problem["retry_after"], 1)
        self.assertIn("too many failed logins", problem["detail"])

    @inlineCallbacks
    def test_forwardedFor(self) -> Any:
        """
        Behind a trusted proxy the client is the nearest untrusted address
        in X-Forwarded-For: another client is not blocked by the first.
        """
        yield self.register("bob")
        for n in range(6):
            yield self.request(
                "POST",
                "/v1/sessions",
                json={"username": f"nobody{n}", "password": "wrong"},
                headers={"X-Forwarded-For": "203.0.113.9, 192.0.2.20"},
            )
        reply = yield self.request(
            "POST",
            "/v1/sessions",
            json={"username": "bob", "password": PASSWORD},
            headers={"X-Forwarded-For": "192.0.2.20"},
        )
        self.assertProblem(reply, 429)
        reply = yield self.request(
            "POST",
            "/v1/sessions",
            json={"username": "bob", "password": PASSWORD},
            headers={"X-Forwarded-For": "192.0.2.21"},
        )
        self.assertEqual(reply.status, 201)


class ClientAddressTests(SynchronousTestCase):
    def test_clientAddress(self) -> None:
        """
        X-Forwarded-For counts only from a trusted proxy, read from the
        nearest hop; garbage falls back to the peer.
        """
        from twisted.internet.address import IPv4Address
        from twisted.web.test.requesthelper import DummyRequest

        from txplatform_gateway import Gateway

        gateway = Gateway(None, None, trustedProxies=["10.0.0.0/8"])  # type: ignore[arg-type]

        def address(peer: str, forwarded: str | None) -> str:
            request = DummyRequest([])
            request.client = IPv4Address("TCP", peer, 1234)
            if forwarded is not None:
                request.requestHeaders.setRawHeaders(b"x-forwarded-for", [forwarded.encode()])
            return gateway.clientAddress(request)

        self.assertEqual(address("192.0.2.1", "198.51.100.1"), "192.0.2.1")
        self.assertEqual(address("10.0.0.5", "198.51.100.1"), "198.51.100.1")
        self.assertEqual(address("10.0.0.5", "1.2.3.4, 198.51.100.1, 10.0.0.6"), "198.51.100.1")
        self.assertEqual(address("10.0.0.5", None), "10.0.0.5")
        self.assertEqual(address("10.0.0.5", "not-an-address"), "10.0.0.5")
