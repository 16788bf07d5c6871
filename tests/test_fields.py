"""
Tests for L{txplatform.fields}.
"""

from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase, TestCase

from txplatform.database import Migration
from txplatform.fields import PlainFieldCodec, SealedTable, fold, reindexRows

from .support import PostgresMixin, SQLiteMixin


class FoldTests(SynchronousTestCase):
    def test_variantsAreOne(self) -> None:
        """
        Full-width letters, case, a capital I with a dot above, ligatures
        and compatibility forms fold to one spelling.
        """
        for variant in [
            "ALICE@EXAMPLE.COM",
            "ａｌｉｃｅ@ｅｘａｍｐｌｅ.ｃｏｍ",
            "ALİCE@example.com",
            "Alice@Example.Com",
        ]:
            self.assertEqual(fold(variant), "alice@example.com", variant)
        self.assertEqual(fold("\ufb01n@x"), "fin@x")
        self.assertEqual(fold("STRASSE"), fold("straße"))
        self.assertEqual(fold("e\u0301"), fold("\u00e9"))

    def test_distinctStayDistinct(self) -> None:
        """
        Different letters stay different: accents are kept.
        """
        self.assertNotEqual(fold("josé@x"), fold("jose@x"))
        self.assertNotEqual(fold("ı@x"), fold("i@x"))  # a dotless i is its own letter

    def test_idempotent(self) -> None:
        for text in ["ALİCE", "ǰ", "ﬃ", "Ⅻ", "ÅNGSTRÖM", "ŉ"]:
            self.assertEqual(fold(fold(text)), fold(text), text)


TABLE = SealedTable("people", "id", ["email"], {"email": ("email_index", fold)})


class ReindexTestsMixin:
    @inlineCallbacks
    def setUp(self) -> Any:
        self.database = self.makeDatabase()
        self.codec = PlainFieldCodec()
        schema = Migration(
            1,
            "people",
            (
                "CREATE TABLE people (id {id} PRIMARY KEY, email {bytes} NOT NULL,"
                " email_index {bytes} NOT NULL UNIQUE)",
            ),
        )
        yield self.database.migrate("people", [schema])

    def add(self, t: Any, rowId: str, email: str, index: str) -> None:
        t.execute(
            "INSERT INTO people (id, email, email_index) VALUES (?, ?, ?)",
            (rowId, email.encode(), index.encode()),
        )

    @inlineCallbacks
    def test_reindex(self) -> Any:
        """
        Rows indexed under an older rule get the index of the current one;
        of rows that now fold alike, the one already holding the index keeps
        it (else the oldest takes it) and the others keep their old index.
        """

        def before(t: Any) -> None:
            self.add(t, "1", "ＢＯＢ@x", "ｂｏｂ@x")  # old rule: casefold only
            self.add(t, "2", "carol@x", "carol@x")  # holds its index already
            self.add(t, "3", "ＣＡＲＯＬ@x", "ｃａｒｏｌ@x")  # now folds as 2
            self.add(t, "4", "ＤＡＶＥ@x", "ｄａｖｅ@x")  # the older of two
            self.add(t, "5", "Ｄave@x", "ｄave@x")

        yield self.database.runInteraction(before)
        changed = yield self.database.runInteraction(reindexRows, self.codec, TABLE)
        self.assertEqual(changed, 2)
        rows = yield self.database.runQuery("SELECT id, email_index FROM people ORDER BY id")
        self.assertEqual(
            [(r[0], bytes(r[1]).decode()) for r in rows],
            [
                ("1", "bob@x"),
                ("2", "carol@x"),
                ("3", "ｃａｒｏｌ@x"),
                ("4", "dave@x"),
                ("5", "ｄave@x"),
            ],
        )
        again = yield self.database.runInteraction(reindexRows, self.codec, TABLE)
        self.assertEqual(again, 0)


class SQLiteReindexTests(SQLiteMixin, ReindexTestsMixin, TestCase):
    pass


class PostgresReindexTests(PostgresMixin, ReindexTestsMixin, TestCase):
    pass
