"""
Tests for L{txplatform.pagination}, L{txplatform.recordid} and
L{txplatform.timestamps}.
"""

import base64
import json
import random
import re

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from txplatform.errors import InvalidArgument
from txplatform.pagination import CURSOR_PATTERN, decodeCursor, encodeCursor, page
from txplatform.recordid import _written, isRecordId, newRecordId, recordIdTime
from txplatform.timestamps import formatMillis

ID_A = "01aaaaaaaaaaaaaaaaaaaaaaaa"
ID_B = "01bbbbbbbbbbbbbbbbbbbbbbbb"
ID_C = "01cccccccccccccccccccccccc"


class CursorTests(SynchronousTestCase):
    def test_roundTrip(self) -> None:
        """
        A cursor decodes to the key it was made from.
        """
        cursor = encodeCursor(1700000000123, ID_B)
        self.assertEqual(decodeCursor(cursor, int, str), (1700000000123, ID_B))
        self.assertNotIn("=", cursor)

    def test_garbage(self) -> None:
        """
        Anything but a cursor of the right shape is an invalid argument
        naming the cursor.
        """
        good = encodeCursor(ID_A)
        for bad in ["", "!!!", "e30", good + "x", encodeCursor(1), encodeCursor(ID_A, ID_B)]:
            error = self.assertRaises(InvalidArgument, decodeCursor, bad, str)
            self.assertEqual(error.details["errors"][0]["field"], "cursor")

    def test_forgedParts(self) -> None:
        """
        A cursor whose parts are of the right type but could not come from
        a listing (not a record id; text with NUL or a lone surrogate; an
        integer past 64 bits or negative) is refused before any query.
        """
        for parts, types in [
            (("abc",), (str,)),
            (("a\x00" + ID_A[2:],), (str,)),
            (("\ud800",), (str,)),
            ((10**30, ID_A), (int, str)),
            ((-1, ID_A), (int, str)),
        ]:
            cursor = base64.urlsafe_b64encode(json.dumps(list(parts)).encode()).decode()
            self.assertRaises(InvalidArgument, decodeCursor, cursor, *types)

    def test_form(self) -> None:
        """
        Every cursor has the form L{CURSOR_PATTERN} states (whatever its
        length), and text that cannot be base64url has not.
        """
        for n in range(64):
            for cursor in [encodeCursor(10**n, ID_A), encodeCursor(ID_A, "x" * n)]:
                self.assertTrue(re.fullmatch(CURSOR_PATTERN, cursor), cursor)
        for bad in ["0", "abcde", encodeCursor(ID_A) + "=", "ab+c", "ab/c", "a b"]:
            self.assertIsNone(re.fullmatch(CURSOR_PATTERN, bad), bad)

    def test_page(self) -> None:
        """
        Of C{limit + 1} rows, the page keeps C{limit} and the cursor is the
        key of its last row; fewer rows mean the last page.
        """
        items, cursor = page([ID_A, ID_B, ID_C], 2, lambda r: (r,))
        self.assertEqual(items, [ID_A, ID_B])
        self.assertEqual(decodeCursor(cursor, str), (ID_B,))
        items, cursor = page([ID_A, ID_B], 2, lambda r: (r,))
        self.assertEqual((items, cursor), ([ID_A, ID_B], None))


class RecordIdTests(SynchronousTestCase):
    def test_shape(self) -> None:
        """
        Record ids are 26 lowercase Crockford base32 characters holding the
        creation time in milliseconds.
        """
        clock = Clock()
        clock.advance(1700000000.123)
        recordId = newRecordId(clock)
        self.assertTrue(isRecordId(recordId), recordId)
        self.assertEqual(recordIdTime(recordId), 1700000000123)
        self.assertFalse(isRecordId("x" * 26))
        self.assertFalse(isRecordId(recordId.upper()))
        self.assertFalse(isRecordId(recordId + "\n"))

    def test_digits(self) -> None:
        """
        An id's 128 bits are written as 26 base32 digits, the most significant
        first, in Crockford's alphabet: ULID's layout, whose specification
        gives the largest id as C{7ZZZZZZZZZZZZZZZZZZZZZZZZZ}.
        """
        self.assertEqual(_written(0), "0" * 26)
        self.assertEqual(_written(2**128 - 1), "7" + "z" * 25)
        self.assertEqual(_written(31), "0" * 25 + "z")
        self.assertEqual(_written(32), "0" * 24 + "10")
        self.assertEqual(_written(0x0123456789ABCDEF << 64), "014d2pf2dbsqqg000000000000")
        alphabet = "0123456789abcdefghjkmnpqrstvwxyz"
        for value in [random.getrandbits(128) for _ in range(200)]:
            digits = ""
            for shift in range(125, -5, -5):
                digits += alphabet[(value >> shift) & 31]
            self.assertEqual(_written(value), digits)

    def test_timeOrdered(self) -> None:
        """
        Later ids sort after earlier ones; ids of the same millisecond differ.
        """
        clock = Clock()
        clock.advance(1700000000)
        first = newRecordId(clock)
        self.assertNotEqual(first, newRecordId(clock))
        clock.advance(0.001)
        self.assertLess(first, newRecordId(clock))

    def test_monotonic(self) -> None:
        """
        Within a process ids only grow, even within one millisecond or when
        the clock steps back.
        """
        clock = Clock()
        clock.advance(1700000000)
        ids = [newRecordId(clock) for _ in range(1000)]
        clock.advance(-5)
        ids.append(newRecordId(clock))
        self.assertEqual(ids, sorted(ids))
        self.assertEqual(len(set(ids)), len(ids))


class TimestampTests(SynchronousTestCase):
    def test_format(self) -> None:
        """
        Milliseconds since the epoch are shown as RFC 3339 UTC.
        """
        self.assertEqual(formatMillis(1700000000123), "2023-11-14T22:13:20.123Z")
        self.assertEqual(formatMillis(999), "1970-01-01T00:00:00.999Z")
