"""
Tests for L{txplatform.prepared}: which statements a connection prepares,
when, and under which name.  (Against PostgreSQL itself: in
L{tests.test_database}.)
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from txplatform.prepared import PreparedStatements, parameterType


class Preparer:
    """
    What a transaction gives L{PreparedStatements.name}: runs nothing,
    notes the PREPAREs, and refuses those it is told to.
    """

    def __init__(self, refuse: bool = False) -> None:
        self.statements: list[str] = []
        self.refuse = refuse

    def __call__(self, statement: str) -> bool:
        self.statements.append(statement)
        return not self.refuse


class ParameterTypeTests(SynchronousTestCase):
    def test_types(self) -> None:
        """
        Each value PREPAREs as its literal would be typed; text and NULL as
        unknown, typed by where they stand.
        """
        self.assertEqual(
            [
                parameterType(v)
                for v in (None, "a", 1, b"x", bytearray(b"x"), memoryview(b"x"), True, 1.5, [1, 2])
            ],
            [
                "unknown",
                "unknown",
                "bigint",
                "bytea",
                "bytea",
                "bytea",
                "boolean",
                "double precision",
                "bigint[]",
            ],
        )

    def test_others(self) -> None:
        """
        A value of another kind (a dict, a list of text) makes no type: its
        statement is not prepared.
        """
        self.assertIsNone(parameterType({"a": 1}))
        self.assertIsNone(parameterType(["a"]))


class PreparedStatementsTests(SynchronousTestCase):
    def test_secondSighting(self) -> None:
        """
        A statement is prepared the second time it is seen, its
        placeholders numbered and its parameters typed, and its name is
        given from then on without preparing it again.
        """
        statements, prepare = PreparedStatements(), Preparer()
        sql = "SELECT a FROM t WHERE b = ? AND c = ?"
        self.assertIsNone(statements.name(sql, (1, b"x"), prepare))
        self.assertEqual(prepare.statements, [])
        self.assertEqual(statements.name(sql, (2, b"y"), prepare), "txp_0")
        self.assertEqual(
            prepare.statements,
            ["PREPARE txp_0(bigint, bytea) AS SELECT a FROM t WHERE b = $1 AND c = $2"],
        )
        self.assertEqual(statements.name(sql, (3, b"z"), prepare), "txp_0")
        self.assertEqual(statements.name(sql, (3, b"z"), None), "txp_0")
        self.assertEqual(len(prepare.statements), 1)
        self.assertEqual(len(statements), 1)

    def test_byTypes(self) -> None:
        """
        The same SQL with parameters of other types is another statement.
        """
        statements, prepare = PreparedStatements(), Preparer()
        sql = "UPDATE t SET a = ? WHERE id = ?"
        for _ in range(2):
            statements.name(sql, (1, "id"), prepare)
            statements.name(sql, (None, "id"), prepare)
        self.assertEqual(
            prepare.statements,
            [
                "PREPARE txp_0(bigint, unknown) AS UPDATE t SET a = $1 WHERE id = $2",
                "PREPARE txp_1(unknown, unknown) AS UPDATE t SET a = $1 WHERE id = $2",
            ],
        )

    def test_sameTypesOtherValues(self) -> None:
        """
        A statement prepared is found again under its name whatever Python
        type its values come as, where PostgreSQL's is the same (text and
        NULL are both C{unknown}); a list is C{bigint[]} only while it holds
        integers alone.
        """
        statements, prepare = PreparedStatements(), Preparer()
        sql = "SELECT * FROM t WHERE a = ? AND b = ANY(?)"
        for _ in range(2):
            name = statements.name(sql, ("x", [1, 2]), prepare)
        self.assertEqual(name, "txp_0")
        self.assertEqual(statements.name(sql, (None, [3]), None), "txp_0")
        self.assertEqual(statements.name(sql, ("y", []), None), "txp_0")
        self.assertIsNone(statements.name(sql, ("y", ["z"]), None))
        self.assertIsNone(statements.name(sql, ("y", [1, "z"]), prepare))
        self.assertIsNone(statements.name(sql, (1, [3]), None))
        self.assertEqual(statements.name(sql, ("x", [1, 2]), None), "txp_0")
        self.assertEqual(len(prepare.statements), 1)

    def test_noParameters(self) -> None:
        """
        A statement without parameters is prepared without a type list.
        """
        statements, prepare = PreparedStatements(), Preparer()
        for _ in range(2):
            name = statements.name("  SELECT count(*) FROM t", (), prepare)
        self.assertEqual(name, "txp_0")
        self.assertEqual(prepare.statements, ["PREPARE txp_0 AS SELECT count(*) FROM t"])

    def test_notWithoutPreparer(self) -> None:
        """
        Without a way to prepare (the transaction is under way), a
        statement not yet prepared goes as text, and is not counted.
        """
        statements, prepare = PreparedStatements(), Preparer()
        sql = "DELETE FROM t WHERE id = ?"
        for _ in range(3):
            self.assertIsNone(statements.name(sql, ("a",), None))
        self.assertIsNone(statements.name(sql, ("a",), prepare))
        self.assertEqual(statements.name(sql, ("a",), prepare), "txp_0")

    def test_refused(self) -> None:
        """
        A statement PostgreSQL refused to prepare goes as text from then on,
        and is not offered again.
        """
        statements, prepare = PreparedStatements(), Preparer(refuse=True)
        sql = "SELECT ?"
        for _ in range(4):
            self.assertIsNone(statements.name(sql, ("a",), prepare))
        self.assertEqual(prepare.statements, ["PREPARE txp_0(unknown) AS SELECT $1"])
        self.assertEqual(len(statements), 0)

    def test_notPreparable(self) -> None:
        """
        Statements PREPARE does not take (DDL, locks, settings), statements
        whose placeholders are not their parameters, and statements with a
        parameter of no known type are never prepared.
        """
        statements, prepare = PreparedStatements(), Preparer()
        for sql, params in [
            ("CREATE INDEX i ON t (a)", ()),
            ("LOCK TABLE t", ()),
            ("SET search_path = s", ()),
            ("SELECT a FROM t WHERE b = ?", ()),
            ("SELECT a FROM t WHERE b = ?", ({"a": 1},)),
        ]:
            for _ in range(3):
                self.assertIsNone(statements.name(sql, params, prepare))
        self.assertEqual(prepare.statements, [])

    def test_limit(self) -> None:
        """
        Past its limit, a connection prepares no more statements; those it
        has keep their names.
        """
        statements, prepare = PreparedStatements(), Preparer()
        statements.limit = 2
        for table in ("a", "b", "c"):
            for _ in range(2):
                statements.name(f"SELECT x FROM {table}", (), prepare)
        self.assertEqual(len(prepare.statements), 2)
        self.assertEqual(statements.name("SELECT x FROM a", (), None), "txp_0")
        self.assertIsNone(statements.name("SELECT x FROM c", (), prepare))

    def test_seenForgotten(self) -> None:
        """
        Statements seen once are forgotten, all together, when they reach
        four times the limit: one-off statements take no more room than
        that.
        """
        statements, prepare = PreparedStatements(), Preparer()
        statements.limit = 2
        for n in range(8):
            statements.name(f"SELECT {n}", (), prepare)
        # The ninth forgets the first eight: the first is new again.
        statements.name("SELECT 8", (), prepare)
        self.assertIsNone(statements.name("SELECT 0", (), prepare))
        self.assertEqual(prepare.statements, [])
        self.assertEqual(statements.name("SELECT 8", (), prepare), "txp_0")
