"""
Tests for L{txplatform.serviceid}.
"""

from twisted.trial.unittest import SynchronousTestCase

from txplatform.catalogue import installedServices
from txplatform.serviceid import ServiceId, ServiceIdCollision, ServiceRegistry, UnknownService


class ServiceIdTests(SynchronousTestCase):
    def test_hexRoundTrip(self) -> None:
        """
        A service id is written as six hex digits and parses back to itself.
        """
        sid = ServiceId.fromHex("0A00fF")
        self.assertEqual(sid.hex, "0a00ff")
        self.assertEqual(bytes(sid), b"\x0a\x00\xff")
        self.assertEqual(ServiceId.fromHex(sid.hex), sid)
        self.assertEqual(str(sid), "0a00ff")

    def test_intRoundTrip(self) -> None:
        """
        A service id is also a 24-bit number.
        """
        self.assertEqual(int(ServiceId.fromInt(0x010203)), 0x010203)
        self.assertEqual(ServiceId.fromInt(0x010203), ServiceId(b"\x01\x02\x03"))

    def test_exactlyThreeBytes(self) -> None:
        """
        Anything but three bytes is refused.
        """
        for bad in [b"", b"\x01\x02", b"\x01\x02\x03\x04"]:
            self.assertRaises(ValueError, ServiceId, bad)
        for text in ["", "12345", "1234567", "zzzzzz", "0x0101"]:
            self.assertRaises(ValueError, ServiceId.fromHex, text)
        self.assertRaises(ValueError, ServiceId.fromInt, 1 << 24)
        self.assertRaises(ValueError, ServiceId.fromInt, -1)

    def test_ordered(self) -> None:
        """
        Service ids order by their bytes.
        """
        self.assertLess(ServiceId.fromHex("000001"), ServiceId.fromHex("000100"))


class ServiceRegistryTests(SynchronousTestCase):
    def test_bothWays(self) -> None:
        """
        A registry maps names to ids and ids to names.
        """
        sid = ServiceId.fromHex("000aaa")
        registry = ServiceRegistry([("alpha", sid)])
        self.assertEqual(registry.idFor("alpha"), sid)
        self.assertEqual(registry.nameFor(sid), "alpha")
        self.assertIn("alpha", registry)
        self.assertIn(sid, registry)
        self.assertEqual(list(registry), [("alpha", sid)])
        self.assertEqual(registry.describe(sid), "alpha (000aaa)")
        self.assertEqual(registry.describe(ServiceId.fromHex("000bbb")), "000bbb")

    def test_sameTwice(self) -> None:
        """
        Registering the same pair again is harmless.
        """
        sid = ServiceId.fromHex("000aaa")
        registry = ServiceRegistry([("alpha", sid), ("alpha", sid)])
        self.assertEqual(len(registry), 1)

    def test_idCollision(self) -> None:
        """
        An id already given to one service cannot go to another.
        """
        registry = ServiceRegistry([("alpha", ServiceId.fromHex("000aaa"))])
        error = self.assertRaises(
            ServiceIdCollision, registry.register, "beta", ServiceId.fromHex("000aaa")
        )
        self.assertIn("alpha", str(error))
        self.assertNotIn("beta", registry)

    def test_nameCollision(self) -> None:
        """
        A name cannot be registered at a second id.
        """
        registry = ServiceRegistry([("alpha", ServiceId.fromHex("000aaa"))])
        self.assertRaises(
            ServiceIdCollision, registry.register, "alpha", ServiceId.fromHex("000bbb")
        )
        self.assertEqual(registry.idFor("alpha"), ServiceId.fromHex("000aaa"))

    def test_badNames(self) -> None:
        """
        Names are short lowercase words.
        """
        registry = ServiceRegistry()
        for name in ["", "Alpha", "1st", "a" * 33, "with space"]:
            self.assertRaises(ValueError, registry.register, name, ServiceId.fromHex("000001"))

    def test_unknown(self) -> None:
        """
        Looking up an unregistered name or id raises L{UnknownService}.
        """
        registry = ServiceRegistry()
        self.assertRaises(UnknownService, registry.idFor, "nobody")
        self.assertRaises(UnknownService, registry.nameFor, ServiceId.fromHex("000001"))

    def test_platform(self) -> None:
        """
        The platform's services, as installed, have distinct registered ids.
        """
        registry = installedServices().registry()
        names = [name for name, _ in registry]
        self.assertLessEqual({"account", "gateway", "notify", "parser", "post"}, set(names))
        self.assertEqual(registry.idFor("account").hex, "010001")
