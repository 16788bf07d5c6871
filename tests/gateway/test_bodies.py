"""
Tests for gateway.bodies: strict JSON decoding and the catalogue of body
messages the parser service checks against.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from txplatform_gateway import Gateway
from txplatform_gateway.bodies import bodyMessages, decodeBody, decodeJSON
from txplatform_gateway.openapi import openapiDocument
from txplatform_services.account.api import Login
from txplatform.errors import InvalidArgument, MalformedJSON
from txplatform.localbus import LocalBus
from txplatform.messages import jsonSchema


class DecodeTests(SynchronousTestCase):
    def test_strict(self) -> None:
        """
        Only UTF-8 JSON, without NaN or Infinity; each refusal says where.
        """
        for raw, expected in [
            (b"\xff{}", "not UTF-8 (byte 0)"),
            (b'{"a": NaN}', "NaN is not allowed"),
            (b'{"a": -Infinity}', "-Infinity is not allowed"),
            (b'{"a": ', "line 1, column 7"),
            (b"[" * 100000, "not valid JSON"),
        ]:
            error = self.assertRaises(MalformedJSON, decodeJSON, raw)
            self.assertIn(expected, error.message)
            self.assertEqual(error.code, "malformed_json")
        self.assertEqual(decodeJSON('{"a": [1, "é"]}'), {"a": [1, "é"]})

    def test_message(self) -> None:
        self.assertEqual(
            decodeBody(b'{"username": "a", "password": "p"}', Login),
            Login(username="a", password="p"),
        )
        self.assertRaises(InvalidArgument, decodeBody, b'{"username": "a"}', Login)


class CatalogueTests(SynchronousTestCase):
    def test_sameAsOpenAPI(self) -> None:
        """
        The parser checks each operation's body against exactly the schema
        the OpenAPI document publishes for it, under its operationId.
        """
        document = openapiDocument(Gateway(LocalBus(Clock()), Clock()))
        published = {}
        for operations in document["paths"].values():
            for entry in operations.values():
                if "requestBody" in entry:
                    schema = entry["requestBody"]["content"]["application/json"]["schema"]
                    published[entry["operationId"]] = schema
        self.assertEqual({name: jsonSchema(cls) for name, cls in bodyMessages().items()}, published)
        self.assertEqual(len(published), 5)
