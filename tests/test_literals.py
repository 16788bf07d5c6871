"""
Tests for L{txplatform.literals}.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from txplatform.literals import executed, inlined

from .support import POSTGRES_URL, requirePostgres


class ExecutedTests(SynchronousTestCase):
    def test_written(self) -> None:
        """
        A prepared statement's EXECUTE has its values written as
        L{inlined} writes them, and no parentheses without values.
        """
        self.assertEqual(
            executed("txp_3", (1, -2, None, True, b"\x00'", "01JX-a", [3, -4])),
            "EXECUTE txp_3(1, (-2), NULL, true, decode('0027','hex'), '01JX-a', '{3,-4}')",
        )
        self.assertEqual(executed("txp_0", ()), "EXECUTE txp_0")

    def test_escapingRefused(self) -> None:
        """
        A value that would need escaping makes no EXECUTE: the statement
        goes as text, escaped by psycopg.
        """
        self.assertIsNone(executed("txp_0", (1, "it's")))
        self.assertIsNone(executed("txp_0", ({"a": 1},)))


class InlinedTests(SynchronousTestCase):
    def test_written(self) -> None:
        """
        Numbers, NULL, booleans, bytes, plain identifiers and arrays of
        integers are written into the statement.
        """
        self.assertEqual(
            inlined(
                "INSERT INTO t VALUES (?, ?, ?, ?, ?, ?, ?, ?::bigint[])",
                (1, -(2**63), None, True, False, b"\x00\xff'\\", "01JX.post-created:a=b", [3, -4]),
            ),
            "INSERT INTO t VALUES (1, (-9223372036854775808), NULL, true, false,"
            " decode('00ff275c','hex'), '01JX.post-created:a=b', '{3,-4}'::bigint[])",
        )
        self.assertEqual(inlined("SELECT 1", ()), "SELECT 1")

    def test_bytesLike(self) -> None:
        """
        Bytearrays (what sealing makes) and memoryviews are written as
        bytes are.
        """
        for value in (bytearray(b"\x00\xff'\\"), memoryview(b"\x00\xff'\\")):
            self.assertEqual(inlined("SELECT ?", (value,)), "SELECT decode('00ff275c','hex')")

    def test_escapingLeftToPsycopg(self) -> None:
        """
        A statement with any value that would need escaping, or of a type
        not listed, is not written here.
        """
        for value in [
            "it's",
            "back\\slash",
            "line\nbreak",
            "nul\x00",
            "caf\u00e9",
            "$$",
            1.5,
            ["1"],
            [True],
            (1, 2),
            {"a": 1},
        ]:
            self.assertIsNone(inlined("SELECT ?, ?", (1, value)), value)

    def test_count(self) -> None:
        """
        Too few or too many parameters: not written here (psycopg says
        what is wrong).
        """
        self.assertIsNone(inlined("SELECT ?, ?", (1,)))
        self.assertIsNone(inlined("SELECT ?", (1, 2)))


class AgainstPostgresTests(SynchronousTestCase):
    def setUp(self) -> None:
        requirePostgres()
        import psycopg

        self.connection = psycopg.connect(POSTGRES_URL, autocommit=True)
        self.addCleanup(self.connection.close)

    def test_sameValues(self) -> None:
        """
        What is written here reads back as the values psycopg binds on the
        server, type for type, whatever the server's
        standard_conforming_strings.
        """
        values: list[Any] = [
            0,
            2**63 - 1,
            None,
            True,
            b"",
            bytes(range(256)),
            bytearray(range(256)),
            memoryview(bytes(range(255, -1, -1))),
            "",
            "01JABCDEFGHJKMNPQRSTVWXYZ0",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "vendor=a:b,other=c;d*e/f@g+h",
            "-- /* not comments inside quotes; */",
        ]
        casts = ["bigint", "bigint", "text", "boolean"] + ["bytea"] * 4 + ["text"] * 5
        select = "SELECT " + ", ".join(f"?::{cast}" for cast in casts)
        for setting in ("on", "off"):
            with self.connection.cursor() as cursor:
                cursor.execute(f"SET standard_conforming_strings = {setting}")
                text = inlined(select, values)
                assert text is not None
                cursor.execute(text)
                written = cursor.fetchone()
                cursor.execute(select.replace("?", "%s"), values)
                bound = cursor.fetchone()
            self.assertEqual(written, bound, setting)
            self.assertEqual(
                list(written),
                [bytes(v) if isinstance(v, (bytearray, memoryview)) else v for v in values],
                setting,
            )

    def test_negativeAfterMinus(self) -> None:
        """
        A negative number written after a minus sign stays a number: it
        does not make a comment of the rest of the statement.
        """
        text = inlined("SELECT 1 -?, 2", (-1,))
        assert text is not None
        with self.connection.cursor() as cursor:
            cursor.execute(text)
            self.assertEqual(cursor.fetchone(), (2, 2))

    def test_arrays(self) -> None:
        """
        An array of integers reads back as the list.
        """
        text = inlined("SELECT ?::bigint[]", ([5, -(2**62), 0],))
        assert text is not None
        with self.connection.cursor() as cursor:
            cursor.execute(text)
            self.assertEqual(cursor.fetchone(), ([5, -(2**62), 0],))
