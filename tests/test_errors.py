"""
Tests for L{txplatform.errors} and L{txplatform.codec}.
"""

from twisted.trial.unittest import SynchronousTestCase

from txplatform.codec import JSONCodec
from txplatform.errors import (
    InvalidArgument,
    MalformedJSON,
    MalformedMessage,
    NotFound,
    ServiceError,
    errorFromWire,
    errorToWire,
)


class WireTests(SynchronousTestCase):
    def test_roundTrip(self) -> None:
        """
        A typed error survives the trip through its JSON form.
        """
        error = NotFound("no such post", {"post": "x"})
        again = errorFromWire(errorToWire(error))
        self.assertIsInstance(again, NotFound)
        self.assertEqual(again, error)

    def test_fieldErrors(self) -> None:
        """
        L{InvalidArgument.forFields} names each field and reason.
        """
        error = InvalidArgument.forFields([("a", "is required"), ("", "whole body")])
        self.assertEqual(error.message, "a: is required; whole body")
        self.assertEqual(error.details["errors"][0], {"field": "a", "reason": "is required"})

    def test_manyFieldErrors(self) -> None:
        """
        Past twenty problems, the rest are counted rather than listed: an
        answer never grows with the number of fields sent.
        """
        error = InvalidArgument.forFields([(f"f{n}", "is not a known field") for n in range(500)])
        self.assertEqual(len(error.details["errors"]), 21)
        self.assertEqual(
            error.details["errors"][-1], {"field": "", "reason": "and 480 more problems"}
        )
        self.assertTrue(error.message.endswith("; and 480 more problems"))

    def test_malformedJSON(self) -> None:
        """
        MalformedJSON crosses the bus as itself: an invalid argument of its
        own code.
        """
        again = errorFromWire(errorToWire(MalformedJSON("the body is not valid JSON")))
        self.assertIsInstance(again, MalformedJSON)
        self.assertIsInstance(again, InvalidArgument)
        self.assertEqual(again.code, "malformed_json")

    def test_unknownCode(self) -> None:
        """
        A code this side does not know survives as a L{ServiceError}.
        """
        error = errorFromWire({"code": "teapot", "message": "short and stout", "details": {}})
        self.assertEqual(
            (type(error), error.code, error.message), (ServiceError, "teapot", "short and stout")
        )

    def test_garbage(self) -> None:
        """
        An error reply that is not one becomes a L{MalformedMessage}.
        """
        for bad in [None, [], {"code": 1, "message": "x"}, {"code": "x"}]:
            self.assertIsInstance(errorFromWire(bad), MalformedMessage)


class JSONCodecTests(SynchronousTestCase):
    def test_roundTrip(self) -> None:
        """
        Payloads are compact UTF-8 JSON.
        """
        codec = JSONCodec()
        data = codec.encode({"b": "é", "n": [1, None]}, b"binding")
        self.assertEqual(data, '{"b":"é","n":[1,null]}'.encode())
        self.assertEqual(codec.decode(data, b"binding"), {"b": "é", "n": [1, None]})

    def test_malformed(self) -> None:
        """
        Bytes that are not JSON raise L{MalformedMessage}; so do NaN and
        Infinity, which JSON does not have.
        """
        codec = JSONCodec()
        for bad in [b"{", b"\xff", b"NaN", b"[Infinity]"]:
            self.assertRaises(MalformedMessage, codec.decode, bad, b"")
        self.assertRaises(ValueError, codec.encode, float("nan"), b"")
