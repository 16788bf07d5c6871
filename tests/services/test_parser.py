"""
Tests for the Parser service: the same answer as the gateway's own parsing,
for any body, through the service's call handler and the error wire format,
and over the in-process bus.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from txplatform.bodies import decodeBody
from txplatform.catalogue import installedServices
from txplatform.context import CallContext
from txplatform.errors import (
    InvalidArgument,
    MalformedJSON,
    ServiceError,
    UnknownMethod,
    errorFromWire,
    errorToWire,
)
from txplatform.localbus import LocalBus
from txplatform.messages import jsonSchema, toPayload
from txplatform_gateway import Gateway
from txplatform_gateway.openapi import openapiDocument
from txplatform_services.parser import api
from txplatform_services.parser.service import ParserService, installedBodyTypes

from .harness import ServiceTestCase

CONTEXT = CallContext("m1", api.SERVICE_ID, "parse", None, "trace", 0.0, 5)

# Bodies near the schemas: objects with the fields operations take, of
# every JSON type, with text that needs escaping; and raw text near JSON.
_FIELDS = st.sampled_from(
    ["username", "email", "password", "display_name", "body", "current_password", "x"]
)
_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text()
    | st.sampled_from(["alice", "alice@example.com", "correct horse", "hi @bob"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)
_OBJECTS = st.dictionaries(_FIELDS, _VALUES, max_size=5).map(json.dumps)
_TEXT = st.one_of(
    _OBJECTS,
    st.text(alphabet=st.sampled_from('{}[]":,01 \\u\t\x01é\ud7ff'), max_size=40),
    st.text(max_size=40),
)


def outcome(run: Any) -> Any:
    """
    What C{run()} gives: its result, or the error's wire form.
    """
    try:
        return ("ok", run())
    except ServiceError as e:
        return ("error", errorToWire(e))


class ParserServiceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.service = ParserService(LocalBus(Clock()), Clock())
        self.handle = ParserService.rpcMethods()["parse"]
        self.handler = self.service._callHandler(self.handle)

    def viaService(self, operation: str, text: str) -> Any:
        """
        Parse through the service's call handler, as the bus runs it, and
        back through the error wire format, as the gateway gets it.
        """
        results: list[Any] = []
        self.handler({"operation": operation, "body": text}, CONTEXT).addBoth(results.append)
        [result] = results
        if isinstance(result, Failure):
            raise errorFromWire(errorToWire(result.value))
        return result["message"]

    @settings(max_examples=300, deadline=None)
    @given(st.sampled_from(sorted(installedBodyTypes(installedServices()))), _TEXT)
    def test_sameAsTheGateway(self, operation: str, text: str) -> None:
        """
        For any body and any operation, the service gives what the gateway
        would have: the same message, or the same error (code, message,
        fields).
        """
        messageType = installedBodyTypes(installedServices())[operation]
        local = outcome(lambda: toPayload(decodeBody(text.encode("utf-8"), messageType)))
        remote = outcome(lambda: self.viaService(operation, text))
        self.assertEqual(remote, local)

    def test_validBody(self) -> None:
        message = self.viaService("createPost", json.dumps({"body": "hello @bob"}))
        self.assertEqual(message, {"body": "hello @bob"})

    def test_malformed(self) -> None:
        """
        Text that is not JSON (control characters included) is the client's
        error, as malformed JSON, not the envelope's.
        """
        for text, expected in [
            ('{"body": ', "Expecting value"),
            ('{"body": "a\x01"}', "Invalid control character"),
            ('{"body": NaN}', "NaN is not allowed"),
        ]:
            error = self.assertRaises(MalformedJSON, self.viaService, "createPost", text)
            self.assertIn(expected, error.message)

    def test_invalidFields(self) -> None:
        error = self.assertRaises(
            InvalidArgument, self.viaService, "register", json.dumps({"username": "A"})
        )
        self.assertEqual(
            sorted(e["field"] for e in error.details["errors"]), ["email", "password", "username"]
        )

    def test_unknownOperation(self) -> None:
        """
        An operation this replica does not know (a newer gateway) is the
        platform's error, not the client's.
        """
        self.assertRaises(UnknownMethod, self.viaService, "uploadAvatar", "{}")
        self.assertRaises(InvalidArgument, self.viaService, "not an id", "{}")


class ParserOverTheBusTests(ServiceTestCase):
    """
    The service on the in-process bus, called as the gateway calls it.
    """

    @inlineCallbacks
    def test_calls(self) -> Any:
        yield self.start(ParserService(self.bus, self.clock))
        reply = yield self.call(
            api.SERVICE_ID, "parse", operation="login", body='{"username": "a", "password": "p"}'
        )
        self.assertEqual(reply, {"message": {"username": "a", "password": "p"}})
        failed = yield self.call(api.SERVICE_ID, "parse", operation="login", body="[").addErrback(
            lambda f: [f]
        )
        self.assertIsInstance(failed[0].value, MalformedJSON)


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
        self.assertEqual(
            {
                name: jsonSchema(cls)
                for name, cls in installedBodyTypes(installedServices()).items()
            },
            published,
        )
        self.assertEqual(len(published), 5)
