"""
Tests for L{txplatform.messages}.
"""

import jsonschema
from twisted.trial.unittest import SynchronousTestCase

from txplatform.errors import InvalidArgument
from txplatform.messages import (
    boolean,
    fromPayload,
    fromQuery,
    integer,
    jsonSchema,
    message,
    string,
    stringList,
    toPayload,
)

from .support import ecmaValidator as ecma


@message
class Sample:
    name: str = string(minLength=3, maxLength=8, pattern="[a-z]+", hint="lowercase letters")
    email: str | None = string(format="email", default=None)
    text: str = string(minLength=1, multiline=True, default="x")
    count: int = integer(minimum=1, maximum=10, default=5)
    flag: bool | None = boolean(default=None)
    tags: tuple = stringList(string(maxLength=3), maxItems=2, default=())


@message(
    atLeastOne=("email", "name"),
    requires={"password": ("current",), "current": ("password",)},
)
class Change:
    email: str | None = string(format="email", default=None)
    name: str | None = string(minLength=1, default=None)
    password: str | None = string(minLength=1, default=None)
    current: str | None = string(minLength=1, default=None)


def reasons(error: InvalidArgument) -> dict:
    return {e["field"]: e["reason"] for e in error.details["errors"]}


class FromPayloadTests(SynchronousTestCase):
    def test_valid(self) -> None:
        """
        A valid payload becomes a message, with defaults for what it leaves out.
        """
        sample = fromPayload(Sample, {"name": "abc", "tags": ["a"]})
        self.assertEqual(sample, Sample(name="abc", count=5, tags=("a",)))
        self.assertEqual(sample.email, None)

    def test_notAnObject(self) -> None:
        """
        A payload must be an object.
        """
        for bad in [[], "x", 1, None]:
            error = self.assertRaises(InvalidArgument, fromPayload, Sample, bad)
            self.assertIn("JSON object", error.message)

    def test_everyProblemAtOnce(self) -> None:
        """
        Every field's problem is reported, each with its reason; unknown
        fields are refused.
        """
        error = self.assertRaises(
            InvalidArgument,
            fromPayload,
            Sample,
            {"name": "AB", "email": "nope", "count": 11, "flag": "yes", "extra": 1},
        )
        self.assertEqual(
            reasons(error),
            {
                "extra": "is not a known field",
                "name": "must be at least 3 characters",
                "email": "must be an email address such as name@example.com",
                "count": "must be at most 10",
                "flag": "must be true or false",
            },
        )

    def test_required(self) -> None:
        """
        A field without a default is required.
        """
        error = self.assertRaises(InvalidArgument, fromPayload, Sample, {})
        self.assertEqual(reasons(error), {"name": "is required"})

    def test_types(self) -> None:
        """
        Values of the wrong JSON type are refused; booleans are not integers.
        """
        error = self.assertRaises(
            InvalidArgument, fromPayload, Sample, {"name": 3, "count": True, "tags": "ab"}
        )
        self.assertEqual(
            reasons(error),
            {"name": "must be a string", "count": "must be an integer", "tags": "must be a list"},
        )

    def test_pattern(self) -> None:
        """
        A pattern must match the whole value; the hint explains it.
        """
        error = self.assertRaises(InvalidArgument, fromPayload, Sample, {"name": "abc1"})
        self.assertEqual(reasons(error), {"name": "must be lowercase letters"})

    def test_controlCharacters(self) -> None:
        """
        Control characters are refused everywhere (NUL would break
        PostgreSQL); newlines and tabs only in multi-line fields.
        """
        error = self.assertRaises(InvalidArgument, fromPayload, Sample, {"name": "ab\x00c"})
        self.assertEqual(reasons(error), {"name": "must not contain control characters"})
        error = self.assertRaises(InvalidArgument, fromPayload, Sample, {"name": "ab\nc"})
        self.assertEqual(reasons(error), {"name": "must not contain control characters"})
        for c1 in ["\x85", "\x9b", "\x80"]:
            error = self.assertRaises(InvalidArgument, fromPayload, Sample, {"name": f"ab{c1}c"})
            self.assertEqual(reasons(error), {"name": "must not contain control characters"})
        self.assertEqual(fromPayload(Sample, {"name": "abc", "text": "a\n\tb"}).text, "a\n\tb")

    def test_loneSurrogate(self) -> None:
        """
        Text that cannot be encoded as UTF-8 is refused before it reaches
        storage.
        """
        error = self.assertRaises(InvalidArgument, fromPayload, Sample, {"name": "ab\ud800c"})
        self.assertIn("Unicode", reasons(error)["name"])

    def test_listItems(self) -> None:
        """
        List items are checked one by one, and the list's length too.
        """
        error = self.assertRaises(
            InvalidArgument, fromPayload, Sample, {"name": "abc", "tags": ["abcd"]}
        )
        self.assertEqual(reasons(error), {"tags": "item 0 must be at most 3 characters"})
        error = self.assertRaises(
            InvalidArgument, fromPayload, Sample, {"name": "abc", "tags": ["a", "b", "c"]}
        )
        self.assertEqual(reasons(error), {"tags": "must have at most 2 items"})


class FromQueryTests(SynchronousTestCase):
    def test_conversion(self) -> None:
        """
        Query text is converted to the field's type.
        """
        sample = fromQuery(Sample, {"name": "abc", "count": "7", "flag": "false", "other": "x"})
        self.assertEqual((sample.count, sample.flag), (7, False))

    def test_badText(self) -> None:
        """
        Text that is not of the field's type is refused, naming the field.
        """
        error = self.assertRaises(
            InvalidArgument, fromQuery, Sample, {"name": "abc", "count": "seven", "flag": "1"}
        )
        self.assertEqual(
            reasons(error), {"count": "must be an integer", "flag": "must be true or false"}
        )
        for text in ["--5", "-", "", "5.0", "1" * 19, "٣", "+5", " 5"]:
            error = self.assertRaises(
                InvalidArgument, fromQuery, Sample, {"name": "abc", "count": text}
            )
            self.assertEqual(reasons(error), {"count": "must be an integer"}, text)


class SchemaTests(SynchronousTestCase):
    def test_payloadRoundTrip(self) -> None:
        """
        L{toPayload} leaves out unset optional fields and gives what
        L{fromPayload} takes back.
        """
        sample = Sample(name="abc", tags=("a",))
        payload = toPayload(sample)
        self.assertNotIn("email", payload)
        self.assertEqual(payload["tags"], ["a"])
        self.assertEqual(fromPayload(Sample, payload), sample)

    def test_jsonSchemaAgrees(self) -> None:
        """
        The published JSON Schema accepts what the parser accepts and
        refuses what it refuses.
        """
        schema = jsonSchema(Sample)
        jsonschema.Draft202012Validator.check_schema(schema)
        validator = jsonschema.Draft202012Validator(schema)
        self.assertEqual(schema["required"], ["name"])
        good = [
            {"name": "abc"},
            {"name": "abcdefgh", "count": 10, "tags": ["a", "bc"], "flag": True},
        ]
        bad = [
            {},
            {"name": "ab"},
            {"name": "abc1"},
            {"name": "abc", "count": 0},
            {"name": "abc", "extra": 1},
            {"name": "abc", "tags": ["a", "b", "c"]},
            {"name": "abc", "tags": ["abcd"]},
        ]
        for payload in good:
            fromPayload(Sample, payload)
            self.assertTrue(validator.is_valid(payload), payload)
        for payload in bad:
            self.assertRaises(InvalidArgument, fromPayload, Sample, payload)
            self.assertFalse(validator.is_valid(payload), payload)

    def test_controlCharactersStated(self) -> None:
        """
        The schema of a text field refuses exactly the characters its check
        refuses as control characters, in one-line and multi-line fields,
        combined with the field's own pattern.
        """
        for spec in [
            string(),
            string(multiline=True),
            string(pattern=r"[\s\S]*\S[\s\S]*", multiline=True),
            string(pattern=r"(?:[ -~]|[^a])+"),
            string(pattern="[a-z0-9_-]+|[ -~]+"),
        ]:
            spec = spec.metadata["txplatform.spec"]
            validator = ecma(spec.jsonSchema())
            jsonschema.Draft202012Validator.check_schema(spec.jsonSchema())
            for point in [*range(0x800), 0x2028, 0x3000, 0xFEFF, 0xFFFF, 0x1F600, 0x10FFFF]:
                text = f"a{chr(point)}" if spec.pattern else chr(point)
                self.assertEqual(
                    validator.is_valid(text), spec.check(text) is None, (hex(point), spec)
                )
            for text in ["ab\n", "\n", "a\tb", "a\r\n"]:
                self.assertEqual(validator.is_valid(text), spec.check(text) is None, text)

    def test_printablePattern(self) -> None:
        """
        A pattern that can only match printable ASCII needs no
        control-character pattern beside it; one with an escape, a C{.} or
        a negated class might match anything, so it gets one.
        """
        for pattern in ["[a-z0-9_]+", "(?:[A-Za-z0-9_-]{4})*", "[!-~]|a b"]:
            spec = string(pattern=pattern).metadata["txplatform.spec"]
            self.assertNotIn("allOf", spec.jsonSchema(), pattern)
        for pattern in [r"[\w]+", "a.b", "[^a]+", "[a-\u00ff]", "a\tb", "é+"]:
            spec = string(pattern=pattern).metadata["txplatform.spec"]
            self.assertIn("allOf", spec.jsonSchema(), pattern)

    def test_controlsAllowed(self) -> None:
        """
        A field that takes text as it came (C{controls=True}) has no such
        pattern.
        """
        spec = string(controls=True).metadata["txplatform.spec"]
        self.assertEqual(spec.jsonSchema(), {"type": "string"})

    def test_emailStated(self) -> None:
        """
        An email field's schema gives the pattern its check applies, beyond
        the C{email} format (which allows far more).
        """
        validator = ecma(jsonSchema(Sample))
        for email in [
            "name@example.com",
            "a.b+c@mail.example.org",
            "name@localhost",
            "a b@example.com",
            '"a b"@example.com',
            "name@@example.com",
            "name@example.",
            "nam\ufeffe@example.com",
            "name@exa\u3000mple.com",
            "name@example.com\n",
            "na\x00me@example.com",
            "name@exa\x85mple.com",
        ]:
            payload = {"name": "abc", "email": email}
            try:
                fromPayload(Sample, payload)
            except InvalidArgument:
                accepted = False
            else:
                accepted = True
            self.assertEqual(validator.is_valid(payload), accepted, email)


class RulesTests(SynchronousTestCase):
    def test_atLeastOne(self) -> None:
        """
        A message may need one or more of some fields.
        """
        error = self.assertRaises(InvalidArgument, fromPayload, Change, {})
        self.assertEqual(reasons(error), {"": "give at least one of email and name"})
        self.assertEqual(fromPayload(Change, {"name": "x"}).name, "x")

    def test_requires(self) -> None:
        """
        A field may need others beside it; every problem is reported at
        once, with those of the fields.
        """
        error = self.assertRaises(InvalidArgument, fromPayload, Change, {"password": "x"})
        self.assertEqual(
            reasons(error),
            {"": "give at least one of email and name", "current": "is required with password"},
        )
        error = self.assertRaises(
            InvalidArgument, fromPayload, Change, {"name": "", "current": "x"}
        )
        self.assertEqual(
            reasons(error),
            {"name": "must not be empty", "password": "is required with current"},
        )
        fromPayload(Change, {"name": "x", "password": "y", "current": "z"})

    def test_stated(self) -> None:
        """
        The schema states the rules (C{anyOf}, C{dependentRequired}) and
        agrees with the check.
        """
        schema = jsonSchema(Change)
        jsonschema.Draft202012Validator.check_schema(schema)
        self.assertEqual(
            schema["dependentRequired"], {"password": ["current"], "current": ["password"]}
        )
        validator = ecma(schema)
        for payload in [
            {},
            {"password": "x", "current": "y"},
            {"email": "a@example.com"},
            {"name": "x", "current": "y"},
            {"name": "x", "password": "y"},
            {"name": "x", "password": "y", "current": "z"},
        ]:
            try:
                fromPayload(Change, payload)
            except InvalidArgument:
                accepted = False
            else:
                accepted = True
            self.assertEqual(validator.is_valid(payload), accepted, payload)

    def test_unknownField(self) -> None:
        """
        A rule naming a field the message does not have is a mistake caught
        when the class is made.
        """

        def make() -> None:
            @message(atLeastOne=("nope",))
            class Broken:
                name: str = string()

        error = self.assertRaises(TypeError, make)
        self.assertIn("'nope'", str(error))


class VisibleTests(SynchronousTestCase):
    def test_invisibleRefused(self) -> None:
        """
        A visible-only field refuses zero-width and direction-control
        characters, and its schema says so in the same terms; other text
        fields keep them (an emoji sequence joins with U+200D).
        """
        import re

        from txplatform.messages import fromPayload, jsonSchema, message, string

        @message
        class Named:
            name: str = string(maxLength=64, visible=True)
            text: str = string(maxLength=64, default="")

        for sneaky in ["alice\u200b", "\u202eecila", "a\u2066b", "\ufeffbob"]:
            error = self.assertRaises(InvalidArgument, fromPayload, Named, {"name": sneaky})
            self.assertIn("invisible characters", error.message)
            schema = jsonSchema(Named)["properties"]["name"]
            patterns = [schema["pattern"], *(p["pattern"] for p in schema.get("allOf", []))]
            self.assertFalse(all(re.search(p, sneaky) for p in patterns), sneaky)
        family = "\U0001f468\u200d\U0001f469\u200d\U0001f467"
        self.assertEqual(fromPayload(Named, {"name": "Zoë", "text": family}).text, family)
