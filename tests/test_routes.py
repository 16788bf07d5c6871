"""
Tests for L{txplatform.routes}: declaring the HTTP operations a service
contributes.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from txplatform.errors import NotFound
from txplatform.messages import message, string
from txplatform.routes import (
    Operation,
    RouteConflict,
    bodyTypes,
    checkRoutes,
    pathRecordId,
    route,
    routesOf,
)


@message
class Note:
    text: str = string(maxLength=10)


class Notes:
    @route("POST", "/v1/notes", "Write a note", tag="notes", status=201, body=Note)
    def write(self, exchange, body):
        return {"text": body.text}

    @route("GET", "/v1/notes/{note_id}", "Read a note", tag="notes", errors=(404,))
    def read(self, exchange, note_id):
        return {"id": note_id}

    def helper(self):
        return "not a route"


class RouteTests(SynchronousTestCase):
    def test_declared(self) -> None:
        """
        C{routesOf} finds the methods declared with C{route}, bound, named by
        the method, with their paths' variables.
        """
        notes = Notes()
        found = routesOf(notes)
        self.assertEqual([r.name for r in found], ["read", "write"])
        read = found[0]
        self.assertEqual(
            (read.method, read.path, read.variables), ("GET", "/v1/notes/{note_id}", ["note_id"])
        )
        self.assertEqual(read.handler(None, note_id="x"), {"id": "x"})
        self.assertEqual(read.operation.errors, {404: ""})
        self.assertEqual([r.name for r in routesOf(Notes)], ["read", "write"])

    def test_malformed(self) -> None:
        """
        A method or a path a gateway cannot serve is refused where it is
        declared.
        """
        self.assertRaises(ValueError, route, "TRACE", "/v1/notes", "x", tag="t")
        for path in ["v1/notes", "/v1/notes/<id>", "/v1/{Note}", "/v1/a b"]:
            self.assertRaises(ValueError, route, "GET", path, "x", tag="t")

    def test_errors(self) -> None:
        """
        An operation's errors are statuses, each with what it means there.
        """
        self.assertEqual(Operation("s", "t", errors=(403, 404)).errors, {403: "", 404: ""})
        self.assertEqual(Operation("s", "t", errors={400: "Why."}).errors, {400: "Why."})

    def test_conflicts(self) -> None:
        """
        Two routes of one method and one path (whatever their variables are
        named) shadow each other; two of one name would share an
        operationId: both are refused, naming who contributed them.
        """

        class Others:
            @route("GET", "/v1/notes/{id}", "Also read", tag="notes")
            def other(self, exchange, id):
                pass

            @route("GET", "/v1/notes/{note_id}/text", "Read the text", tag="notes")
            def read(self, exchange, note_id):
                pass

        notes = [("the notes service", r) for r in routesOf(Notes())]
        shadow = [("the others service", r) for r in routesOf(Others()) if r.name == "other"]
        error = self.assertRaises(RouteConflict, checkRoutes, notes + shadow)
        self.assertEqual(
            str(error),
            "GET /v1/notes/{id} of the others service would shadow GET /v1/notes/{note_id}"
            " of the notes service",
        )
        named = [("the others service", r) for r in routesOf(Others()) if r.name == "read"]
        error = self.assertRaises(RouteConflict, checkRoutes, notes + named)
        self.assertIn("both have an operation named 'read'", str(error))
        checkRoutes(notes)

    def test_bodyTypes(self) -> None:
        """
        The body class of each operation that takes one, by operationId.
        """
        self.assertEqual(bodyTypes(routesOf(Notes)), {"write": Note})

    def test_pathRecordId(self) -> None:
        """
        A path segment that cannot be a record id is not found.
        """
        self.assertEqual(
            pathRecordId("01hzzzzzzzzzzzzzzzzzzzzzzz", "note"), "01hzzzzzzzzzzzzzzzzzzzzzzz"
        )
        error = self.assertRaises(NotFound, pathRecordId, "0", "note")
        self.assertEqual(error.message, "no such note")
