"""
Tests for L{txplatform.amqp.url}.
"""

from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from txplatform.amqp.url import BrokerURL, _certificates
from txplatform.buses import checkBusURL


class BrokerURLTests(SynchronousTestCase):
    def test_parse(self) -> None:
        """
        User, password, host, port and vhost come from the URL; the vhost
        is URL-decoded, and / when absent.
        """
        url = BrokerURL.parse("amqp://me:s%40cret@broker.example:5673/prod%2Fa?heartbeat=10")
        self.assertEqual(
            (url.tls, url.host, url.port, url.username, url.password, url.vhost, url.heartbeat),
            (False, "broker.example", 5673, "me", "s@cret", "prod/a", 10),
        )
        default = BrokerURL.parse("amqp://broker.example")
        self.assertEqual(
            (default.port, default.vhost, default.username, default.queueType),
            (5672, "/", "guest", "classic"),
        )
        self.assertNotIn("cret", str(url))

    def test_tls(self) -> None:
        """
        amqps:// is TLS on 5671 by default, and takes a CA file.
        """
        url = BrokerURL.parse("amqps://broker.example/?cafile=/etc/ca.pem")
        self.assertEqual((url.tls, url.port, url.cafile), (True, 5671, "/etc/ca.pem"))

    def test_refused(self) -> None:
        """
        Other schemes, unknown options, bad numbers and misplaced options are
        refused, with the password hidden.
        """
        for bad in [
            "http://broker",
            "amqp://",
            "amqp://h/?frobnicate=1",
            "amqp://h/?heartbeat=soon",
            "amqp://h/?cafile=/ca.pem",
            "amqp://h/?queue_type=stream",
            "amqp://h/?heartbeat=-1",
            "amqp://h/?heartbeat=70000",
            "amqp://h/?connect_timeout=0",
        ]:
            self.assertRaises(ValueError, BrokerURL.parse, bad)
        error = self.assertRaises(ValueError, BrokerURL.parse, "amqp://u:hunter2@/x")
        self.assertNotIn("hunter2", str(error))

    def test_endpoint(self) -> None:
        """
        amqp:// connects over plain TCP to the host and port.
        """
        endpoint = BrokerURL.parse("amqp://broker.example:5673/").endpoint(MemoryReactorClock())
        self.assertIsInstance(endpoint, HostnameEndpoint)

    def test_caBundle(self) -> None:
        """
        Every certificate of a CA file is trusted, not just the first.
        """
        pems = [_selfSigned(name) for name in ("First CA", "Second CA")]
        certificates = _certificates(b"junk before\n" + b"".join(pems))
        self.assertEqual(
            [c.getSubject().commonName for c in certificates], [b"First CA", b"Second CA"]
        )
        self.assertRaises(ValueError, _certificates, b"no certificate here")

    def test_busURLs(self) -> None:
        """
        --bus takes local: and broker URLs.
        """
        checkBusURL("local:")
        checkBusURL("amqp://guest:guest@127.0.0.1/")
        self.assertRaises(ValueError, checkBusURL, "carrier-pigeon:")
        self.assertRaises(ValueError, checkBusURL, "amqp://")


def _selfSigned(name: str) -> bytes:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM)
