"""
Tests for L{txplatform.direct.addresses}.
"""

from __future__ import annotations

import json
import os

from twisted.trial.unittest import SynchronousTestCase

from txplatform.direct.addresses import (
    DEFAULT_PORT,
    AddressBook,
    AddressError,
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
