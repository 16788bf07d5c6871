"""
Tests for L{txplatform.bodies}: strict JSON decoding of request bodies.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from txplatform.bodies import decodeBody, decodeJSON
from txplatform.errors import InvalidArgument, MalformedJSON
from txplatform_services.account.api import Login


class DecodeTests(SynchronousTestCase):
    def test_strict(self) -> None:
        """
        Only UTF-8 JSON, without NaN or Infinity, with each key once per
        object (parsers disagree on which of two wins); each refusal says
        where or what.
        """
        for raw, expected in [
            (b"\xff{}", "not UTF-8 (byte 0)"),
            (b'{"a": NaN}', "NaN is not allowed"),
            (b'{"a": -Infinity}', "-Infinity is not allowed"),
            (b'{"a": ', "line 1, column 7"),
            (b"[" * 100000, "not valid JSON"),
            (b'{"a": 1, "b": {"c": 2, "c": 3}}', "the key 'c' appears twice"),
            (b'{"password": "x", "password": "y"}', "the key 'password' appears twice"),
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
