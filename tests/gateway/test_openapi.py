"""
Tests for L{txplatform_gateway.openapi}: the document assembled from the
routes the installed services declare.
"""

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from txplatform.localbus import LocalBus
from txplatform.pagination import encodeCursor
from txplatform_gateway import Gateway
from txplatform_gateway.openapi import openapiDocument

from ..support import ecmaValidator


class OpenAPITests(SynchronousTestCase):
    def setUp(self) -> None:
        self.gateway = Gateway(LocalBus(Clock()), Clock())
        self.document = openapiDocument(self.gateway)

    def operations(self):
        for path, entries in self.document["paths"].items():
            for method, entry in entries.items():
                yield path, method, entry

    def test_everyRouteDocumented(self) -> None:
        """
        The document lists exactly the routes the gateway serves, under
        their operation ids.
        """
        served = {
            (rule.endpoint, tuple(sorted(rule.methods - {"HEAD", "OPTIONS"})))
            for rule in self.gateway.app.url_map.iter_rules()
        }
        documented = {
            (entry["operationId"], (method.upper(),)) for _, method, entry in self.operations()
        }
        self.assertEqual(served, documented)

    def test_authDocumented(self) -> None:
        """
        Operations that need a token say so and list 401.
        """
        private = set()
        for path, method, entry in self.operations():
            if "security" in entry:
                private.add((method, path))
                self.assertIn("401", entry["responses"])
        self.assertIn(("get", "/v1/me"), private)
        self.assertIn(("post", "/v1/posts"), private)
        self.assertNotIn(("get", "/v1/posts/{post_id}"), private)
        self.assertNotIn(("post", "/v1/sessions"), private)

    def test_bodiesDocumented(self) -> None:
        """
        Operations with a body give its schema and list 400, 413 and 415.
        """
        for path, method, entry in self.operations():
            if "requestBody" in entry:
                schema = entry["requestBody"]["content"]["application/json"]["schema"]
                self.assertFalse(schema["additionalProperties"], path)
                for status in ["400", "413", "415"]:
                    self.assertIn(status, entry["responses"], (method, path))

    def test_priorities(self) -> None:
        """
        Logging in is high priority, listings low.
        """
        paths = self.document["paths"]
        self.assertEqual(paths["/v1/sessions"]["post"]["x-priority"], "high")
        self.assertEqual(paths["/v1/notifications"]["get"]["x-priority"], "low")
        self.assertEqual(paths["/v1/posts"]["post"]["x-priority"], "normal")

    def test_info(self) -> None:
        """
        The document's C{info} is txplatform's unless the gateway is given
        its own.
        """
        self.assertEqual(self.document["info"]["title"], "txplatform")
        gateway = Gateway(LocalBus(Clock()), Clock(), info={"title": "Bookmarks", "version": "2.1"})
        info = openapiDocument(gateway)["info"]
        self.assertEqual((info["title"], info["version"]), ("Bookmarks", "2.1"))
        self.assertTrue(info["description"])

    def test_declaredAnswers(self) -> None:
        """
        What an operation says of its own answers is in the document, with
        what the gateway says of the same status.
        """
        login = self.document["paths"]["/v1/sessions"]["post"]
        self.assertIn("Malformed JSON", login["responses"]["400"]["description"])
        self.assertIn("failed logins", login["responses"]["429"]["description"])

    def test_idempotencyKeys(self) -> None:
        """
        Every POST and PATCH takes an optional Idempotency-Key header and
        may answer 422 for a key used with another body; no other method
        says so.
        """
        seen = 0
        for path, entries in self.document["paths"].items():
            for method, entry in entries.items():
                headers = [p for p in entry.get("parameters", []) if p["in"] == "header"]
                if method in ("post", "patch"):
                    seen += 1
                    [key] = headers
                    self.assertEqual((key["name"], key["required"]), ("Idempotency-Key", False))
                    self.assertIn("Idempotency-Key", entry["responses"]["422"]["description"])
                else:
                    self.assertEqual(headers, [], (method, path))
                    self.assertNotIn("422", entry["responses"], (method, path))
        self.assertGreaterEqual(seen, 5)
        said = self.document["info"]["description"]
        for what in ["408", "413", "Idempotency-Key", "422"]:
            self.assertIn(what, said)

    def test_rulesBeyondSchemas(self) -> None:
        """
        A 400 no schema can announce is declared by the operation: listed,
        by field, with the 400 answer (C{x-rules}) and said in its
        description.
        """
        paths = self.document["paths"]
        refusal = paths["/v1/me/following/{username}"]["put"]["responses"]["400"]
        self.assertEqual(list(refusal["x-rules"]), ["username"])
        self.assertIn("follow yourself", refusal["description"])
        for path in ["/v1/accounts/{username}/posts", "/v1/me/following", "/v1/notifications"]:
            refusal = paths[path]["get"]["responses"]["400"]
            self.assertEqual(list(refusal["x-rules"]), ["cursor"], path)
            self.assertIn("`cursor`", refusal["description"])
        self.assertNotIn("x-rules", paths["/v1/posts"]["post"]["responses"]["400"])

    def test_cursorForm(self) -> None:
        """
        A cursor parameter states the form of cursors: base64url, so no
        cursor is one character long.
        """
        [cursor] = [
            p
            for p in self.document["paths"]["/v1/notifications"]["get"]["parameters"]
            if p["name"] == "cursor"
        ]
        validator = ecmaValidator(cursor["schema"])
        for good in [encodeCursor("01aaaaaaaaaaaaaaaaaaaaaaaa"), "ab", "abc", "abcd"]:
            self.assertTrue(validator.is_valid(good), good)
        for bad in ["", "0", "abcde", "ab=", "a+b/"]:
            self.assertFalse(validator.is_valid(bad), bad)

    def test_pathParameters(self) -> None:
        """
        Every path parameter of the platform's routes states what a value
        must look like to name anything (others are a 404); the stream's
        query states what may stand for Last-Event-ID.
        """
        seen = set()
        for path, method, entry in self.operations():
            for parameter in entry.get("parameters", []):
                if parameter["in"] == "path":
                    self.assertIn("pattern", parameter["schema"], (method, path))
                    seen.add(parameter["name"])
        self.assertEqual(seen, {"username", "post_id", "notification_id"})
        stream = self.document["paths"]["/v1/notifications/stream"]["get"]
        [lastEventId] = stream["parameters"]
        self.assertEqual(lastEventId["name"], "last_event_id")
        self.assertIn("Last-Event-ID", stream["responses"]["400"]["x-rules"])
