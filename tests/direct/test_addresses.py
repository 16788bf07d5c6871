"""
Tests for L{txplatform.direct.addresses}.
"""

from __future__ import annotations

import json
import os

from twisted.internet.task import Clock
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from txplatform.direct.addresses import (
    DEFAULT_PORT,
    AddressBook,
    AddressError,
    AddressTableService,
    parseDirectURL,
)
from txplatform.serviceid import ServiceId

POST = ServiceId.fromHex("010002")


class AddressBookTests(SynchronousTestCase):
    def test_derived(self) -> None:
        """
        A service's address is the range's base plus its id: the three
        bytes become the last three octets.
        """
        self.assertEqual(AddressBook("10.0.0.0/8").derivedHost(POST), "10.1.0.2")
        self.assertEqual(AddressBook("127.0.0.0/8").derivedHost(POST), "127.1.0.2")
        self.assertEqual(AddressBook().derivedHost(ServiceId.fromHex("abcdef")), "127.171.205.239")
        self.assertEqual(AddressBook().addressesOf(POST), [("127.1.0.2", DEFAULT_PORT)])

    def test_backAgain(self) -> None:
        """
        The id is read back from an address with no lookup.
        """
        book = AddressBook("10.0.0.0/8")
        self.assertEqual(book.serviceAt("10.1.0.2"), POST)
        self.assertIsNone(book.serviceAt("192.168.0.1"))
        self.assertIsNone(book.serviceAt("not an address"))

    def test_edges(self) -> None:
        """
        The range's network and broadcast addresses belong to no service.
        """
        book = AddressBook("10.0.0.0/8")
        self.assertRaises(AddressError, book.derivedHost, ServiceId.fromHex("000000"))
        self.assertRaises(AddressError, book.derivedHost, ServiceId.fromHex("ffffff"))

    def test_tooSmall(self) -> None:
        """
        A range without room for every 3-byte id is refused, saying why.
        """
        error = self.assertRaises(AddressError, AddressBook, "10.1.0.0/16")
        self.assertIn("a /8 or wider", str(error))
        self.assertRaises(AddressError, AddressBook, "fe80::/10")
        self.assertRaises(AddressError, AddressBook, "127.0.0.0/8", 0)

    def test_table(self) -> None:
        """
        A static table lists replicas; services not in it keep their derived
        address.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            json.dump({"services": {"010002": ["127.1.0.2:7301", "127.1.0.2:7302"]}}, f)
        book = AddressBook.withTableFile("127.0.0.0/8", 7300, path)
        self.assertEqual(book.addressesOf(POST), [("127.1.0.2", 7301), ("127.1.0.2", 7302)])
        self.assertEqual(book.addressesOf(ServiceId.fromHex("010001")), [("127.1.0.1", 7300)])

    def test_badTables(self) -> None:
        for content, message in [
            ("nope", "is not JSON"),
            ("[]", "expected"),
            ('{"services": {"xyz": ["127.0.0.1:1"]}}', "is not a service id"),
            ('{"services": {"010002": []}}', "needs a list"),
            ('{"services": {"010002": ["localhost:1"]}}', "IP:port"),
            ('{"services": {"010002": ["127.0.0.1:99999"]}}', "not in 1-65535"),
        ]:
            path = self.mktemp()
            with open(path, "w") as f:
                f.write(content)
            error = self.assertRaises(
                AddressError, AddressBook.withTableFile, "127.0.0.0/8", 1, path
            )
            self.assertIn(message, str(error))
        missing = os.path.join(self.mktemp(), "none.json")
        self.assertRaises(AddressError, AddressBook.withTableFile, "127.0.0.0/8", 1, missing)


class AddressTableServiceTests(SynchronousTestCase):
    def write(self, path: str, services: object) -> None:
        # Replaced, as a ConfigMap's file is: a new inode every time.
        temporary = path + ".new"
        with open(temporary, "w") as f:
            json.dump({"services": services}, f)
        os.replace(temporary, path)

    def test_readAgain(self) -> None:
        """
        Once its file changed, the table is read again and calls go by it;
        a table that cannot be read is logged and the one in use kept; an
        unchanged file is not read.
        """
        path = self.mktemp()
        self.write(path, {"010002": ["127.1.0.2:7301"]})
        book = AddressBook.withTableFile("127.0.0.0/8", 7300, path)
        service = AddressTableService(path, book, interval=5)
        self.assertFalse(service.check())
        self.write(path, {"010002": ["127.1.0.2:7302", "127.1.0.2:7303"]})
        self.assertTrue(service.check())
        self.assertEqual(book.addressesOf(POST), [("127.1.0.2", 7302), ("127.1.0.2", 7303)])
        self.assertFalse(service.check())
        with open(path + ".new", "w") as f:
            f.write("{not json")
        os.replace(path + ".new", path)
        logged: list[dict] = []
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        globalLogPublisher.addObserver(logged.append)
        self.assertFalse(service.check())
        self.assertEqual(book.addressesOf(POST), [("127.1.0.2", 7302), ("127.1.0.2", 7303)])
        [error] = [e for e in logged if e["log_level"] == LogLevel.error]
        self.assertIn("is not JSON", formatEvent(error))
        # Its service gone from the table: its derived address again.
        self.write(path, {})
        self.assertTrue(service.check())
        self.assertEqual(book.addressesOf(POST), [("127.1.0.2", 7300)])

    def test_timer(self) -> None:
        """
        Running, it checks every C{interval} seconds on its clock.
        """
        path = self.mktemp()
        self.write(path, {"010002": ["127.1.0.2:7301"]})
        book = AddressBook.withTableFile("127.0.0.0/8", 7300, path)
        service = AddressTableService(path, book, interval=5)
        clock = Clock()
        service.clock = clock
        service.startService()
        self.addCleanup(service.stopService)
        self.write(path, {"010002": ["127.1.0.2:7309"]})
        clock.advance(4)
        self.assertEqual(book.addressesOf(POST), [("127.1.0.2", 7301)])
        clock.advance(1)
        self.assertEqual(book.addressesOf(POST), [("127.1.0.2", 7309)])


class URLTests(SynchronousTestCase):
    def test_parse(self) -> None:
        self.assertEqual(parseDirectURL("direct:"), ("127.0.0.0/8", DEFAULT_PORT, None))
        self.assertEqual(
            parseDirectURL("direct:10.0.0.0/8?port=7400&table=/etc/t.json"),
            ("10.0.0.0/8", 7400, "/etc/t.json"),
        )

    def test_bad(self) -> None:
        for url in ["amqp://x", "direct:10.0.0.0/16", "direct:?port=x", "direct:?colour=red"]:
            self.assertRaises(AddressError, parseDirectURL, url)
