"""
Tests for L{txplatform.amqp.url}.
"""

import os

from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from txplatform.amqp.url import BrokerURL, _certificates, parseBrokerURLs
from txplatform.buses import checkBusURL

from ..gateway.test_edge import makeCertificate


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
        pems = []
        for name in ("First CA", "Second CA"):
            certPath, _ = makeCertificate(os.path.abspath(self.mktemp()), name)
            with open(certPath, "rb") as f:
                pems.append(f.read())
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


class ClusterURLTests(SynchronousTestCase):
    def test_several(self) -> None:
        """
        The nodes of a cluster are complete URLs separated by commas (spaces
        around them ignored), in their order; one URL is a cluster of one.
        """
        urls = parseBrokerURLs(
            "amqp://u:p@10.0.0.1:5681/v?queue_type=quorum,"
            " amqp://u:p@10.0.0.2:5682/v?queue_type=quorum"
        )
        self.assertEqual(
            [(url.host, url.port, url.vhost, url.queueType) for url in urls],
            [("10.0.0.1", 5681, "v", "quorum"), ("10.0.0.2", 5682, "v", "quorum")],
        )
        self.assertEqual(
            parseBrokerURLs("amqp://guest:guest@127.0.0.1/"),
            (BrokerURL.parse("amqp://guest:guest@127.0.0.1/"),),
        )
        checkBusURL("amqp://a:5672/,amqp://b:5672/")

    def test_sameBroker(self) -> None:
        """
        The URLs differ in host and port only: other credentials, virtual
        host, scheme or options are refused, without the password in the
        message; a node named twice and an empty part too.
        """
        for text in [
            "amqp://u:p@a/v,amqp://u:secret@b/v",
            "amqp://u:p@a/v,amqp://u:p@b/w",
            "amqp://u:p@a/v,amqps://u:p@b/v",
            "amqp://u:p@a/v,amqp://u:p@b/v?queue_type=quorum",
            "amqp://u:p@a/v,amqp://u:p@a:5672/v",
            "amqp://u:p@a/v,",
        ]:
            e = self.assertRaises(ValueError, parseBrokerURLs, text)
            self.assertNotIn("secret", str(e))
            self.assertRaises(ValueError, checkBusURL, text)
