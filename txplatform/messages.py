# -*- test-case-name: tests.test_messages -*-
"""
Messages: frozen attrs classes whose fields carry their own constraints.

A message class declares each field with L{string}, L{integer}, L{boolean}
or L{stringList}.  From that one declaration come the parser that checks a
JSON payload (L{fromPayload}), the payload it is turned back into
(L{toPayload}) and the JSON Schema published in the OpenAPI document
(L{jsonSchema}), so the validation code and the documentation cannot drift.
Rules on the fields together (one of these is needed, that one goes with
this one) are declared on the class, with L{message}'s keywords, and are
checked and published the same way.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any, Callable, TypeVar

from attrs import NOTHING, Attribute, field, fields, frozen

from .errors import InvalidArgument
from .pagination import CURSOR_PATTERN

__all__ = [
    "message",
    "request",
    "requestOf",
    "requestTarget",
    "RequestSpec",
    "string",
    "integer",
    "boolean",
    "stringList",
    "fromPayload",
    "fromQuery",
    "toPayload",
    "fieldSchemas",
    "jsonSchema",
    "RECORD_ID",
    "recordIdField",
    "usernameField",
    "limitField",
    "cursorField",
    "PageQuery",
]

T = TypeVar("T")

_SPEC = "txplatform.spec"

# Control characters (C0, DEL and C1) break logs and terminals, and
# PostgreSQL refuses NUL in text; only tab and newlines are allowed, and only
# in multi-line fields.  The classes are written with escapes that Python's
# re and ECMA-262 (the regexes of JSON Schema) read alike: the schemas
# published state exactly what the checks refuse.
_CONTROLS = r"\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f"
_BREAKS = r"\t\n\r"
_CONTROL = re.compile(f"[{_CONTROLS}]")
_NEWLINE = re.compile(f"[{_BREAKS}]")
_INTEGER = re.compile(r"-?[0-9]{1,18}")
# What an email address's parts leave out: @, white space and control
# characters, so that its pattern says all an email field accepts.  \s is
# not quite the same in both: ECMA-262's also has U+FEFF, named here so
# that both refuse it (its other differences are controls).
_NOT_IN_EMAIL = rf"@\s\ufeff{_CONTROLS}"
_EMAIL_PATTERN = rf"[^{_NOT_IN_EMAIL}]+@[^{_NOT_IN_EMAIL}.]+(\.[^{_NOT_IN_EMAIL}.]+)+"
_EMAIL = re.compile(f"^{_EMAIL_PATTERN}\\Z")
_RULES = "__txplatform_rules__"


def _invisibles() -> str:
    """
    The invisible formatting characters of the Basic Multilingual Plane
    (Unicode category Cf: zero-width spaces and joiners, bidirectional
    controls, the byte order mark...), as a character class's ranges.
    """
    import unicodedata

    ranges: list[tuple[int, int]] = []
    for code in range(0x10000):
        if 0xD800 <= code <= 0xDFFF or unicodedata.category(chr(code)) != "Cf":
            continue
        if ranges and ranges[-1][1] == code - 1:
            ranges[-1] = (ranges[-1][0], code)
        else:
            ranges.append((code, code))
    return "".join(f"\\u{a:04x}" if a == b else f"\\u{a:04x}-\\u{b:04x}" for a, b in ranges)


# Where a name must show what it is (an email address, a display name): a
# right-to-left override or a zero-width space would make two look alike.
_INVISIBLES = _invisibles()
_INVISIBLE = re.compile(f"[{_INVISIBLES}]")


def message(
    cls: type[T] | None = None,
    *,
    atLeastOne: tuple[str, ...] = (),
    requires: dict[str, tuple[str, ...]] | None = None,
) -> Any:
    """
    Make C{cls} a message: a frozen, keyword-only attrs class.  Used bare
    (C{@message}) or with rules on which fields go together, which
    L{fromPayload} checks and L{jsonSchema} states (C{anyOf},
    C{dependentRequired}):

    @param atLeastOne: Fields of which a payload must have one or more.
    @param requires: Fields a field needs beside it, by field:
        C{{"password": ("current_password",)}}.
    """
    rules = _Rules(atLeastOne, tuple((k, tuple(v)) for k, v in (requires or {}).items()))

    def make(cls: type[T]) -> type[T]:
        made = frozen(kw_only=True)(cls)
        names = {a.name for a in fields(made)}
        unknown = sorted(set(rules.names()) - names)
        if unknown:
            raise TypeError(f"{cls.__name__} has no field {', '.join(map(repr, unknown))}")
        if rules.atLeastOne or rules.requires:
            setattr(made, _RULES, rules)
        return made

    return make if cls is None else make(cls)


def _printableOnly(pattern: str) -> bool:
    """
    Whether C{pattern} can only match printable ASCII, so that it needs no
    control-character pattern beside it: it is written in printable ASCII,
    without escapes, C{.} or a negated class, so every character it matches
    is one it spells out or lies in a range between two printable ones.
    """
    return (
        all(" " <= c <= "~" for c in pattern)
        and "\\" not in pattern
        and "." not in pattern
        and "[^" not in pattern
    )


def _listed(names: tuple[str, ...]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


@frozen
class _Rules:
    atLeastOne: tuple[str, ...] = ()
    requires: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def names(self) -> list[str]:
        return [*self.atLeastOne, *(n for name, needed in self.requires for n in (name, *needed))]

    def check(self, payload: dict[str, Any]) -> list[tuple[str, str]]:
        errors = []
        if self.atLeastOne and not any(name in payload for name in self.atLeastOne):
            errors.append(("", f"give at least one of {_listed(self.atLeastOne)}"))
        for name, needed in self.requires:
            if name in payload:
                errors += [(n, f"is required with {name}") for n in needed if n not in payload]
        return errors

    def jsonSchema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {}
        if self.atLeastOne:
            schema["anyOf"] = [{"required": [name]} for name in self.atLeastOne]
        if self.requires:
            schema["dependentRequired"] = {name: list(needed) for name, needed in self.requires}
        return schema


_REQUEST = "__txplatform_request__"


@frozen
class RequestSpec:
    """
    The method a request message is for.

    @ivar service: The service's id (a L{txplatform.serviceid.ServiceId}).
    @ivar method: The method's name on the bus.
    """

    service: Any
    method: str


def request(service: Any, method: str) -> Callable[[type[T]], type[T]]:
    """
    Make the decorated class a message, and the request of C{method} of
    the service whose id is C{service}: callers then send an instance as it
    is (C{BusService.call(GetProfile(username=...))}), and the service
    serving it declares C{@rpc(GetProfile)}.
    """

    def decorator(cls: type[T]) -> type[T]:
        made = message(cls)
        setattr(made, _REQUEST, RequestSpec(service, method))
        return made

    return decorator


def requestOf(value: Any) -> RequestSpec | None:
    """
    The method a request message (or its class) is for, if it is one.
    """
    cls = value if isinstance(value, type) else type(value)
    return cls.__dict__.get(_REQUEST)


def requestTarget(value: Any) -> RequestSpec:
    """
    The method a request message (or its class) is for.

    @raise TypeError: It is not a request message.
    """
    spec = requestOf(value)
    if spec is None:
        name = value.__name__ if isinstance(value, type) else type(value).__name__
        raise TypeError(f"{name} is not a request message")
    return spec


@frozen
class _StringSpec:
    minLength: int = 0
    maxLength: int | None = None
    pattern: str | None = None
    hint: str | None = None
    format: str | None = None
    multiline: bool = False
    nullable: bool = False
    description: str = ""
    controls: bool = False
    visible: bool = False

    def check(self, value: object) -> str | None:
        if not isinstance(value, str):
            return "must be a string"
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return "must be valid Unicode text (no lone surrogates)"
        if not self.controls and (
            _CONTROL.search(value) or (not self.multiline and _NEWLINE.search(value))
        ):
            return "must not contain control characters"
        if self.visible and _INVISIBLE.search(value):
            return "must not contain invisible characters (zero-width, direction controls)"
        if len(value) < self.minLength:
            if self.minLength == 1:
                return "must not be empty"
            return f"must be at least {self.minLength} characters"
        if self.maxLength is not None and len(value) > self.maxLength:
            return f"must be at most {self.maxLength} characters"
        if self.pattern is not None and not re.fullmatch(self.pattern, value):
            return f"must be {self.hint}" if self.hint else f"must match {self.pattern}"
        if self.format == "email" and not _EMAIL.match(value):
            return "must be an email address such as name@example.com"
        return None

    def jsonSchema(self) -> dict[str, Any]:
        """
        What L{check} accepts, as JSON Schema: its patterns, one for each
        rule (the field's own, an email address's, no control characters;
        not the last where the others already leave them out), in
        C{pattern} and, past the first, C{allOf}.
        """
        schema: dict[str, Any] = {"type": "string"}
        if self.minLength:
            schema["minLength"] = self.minLength
        if self.maxLength is not None:
            schema["maxLength"] = self.maxLength
        patterns = []
        if self.pattern is not None:
            patterns.append(f"^(?:{self.pattern})$" if "|" in self.pattern else f"^{self.pattern}$")
        if self.format == "email":
            patterns.append(f"^{_EMAIL_PATTERN}$")
        elif not self.controls and not (self.pattern and _printableOnly(self.pattern)):
            refused = _CONTROLS if self.multiline else _CONTROLS + _BREAKS
            patterns.append(f"^[^{refused}]*$")
        if self.visible:
            patterns.append(f"^[^{_INVISIBLES}]*$")
        if patterns:
            schema["pattern"] = patterns[0]
        if patterns[1:]:
            schema["allOf"] = [{"pattern": pattern} for pattern in patterns[1:]]
        if self.format is not None:
            schema["format"] = self.format
        return schema


@frozen
class _IntegerSpec:
    minimum: int | None = None
    maximum: int | None = None
    nullable: bool = False
    description: str = ""

    def check(self, value: object) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int):
            return "must be an integer"
        if self.minimum is not None and value < self.minimum:
            return f"must be at least {self.minimum}"
        if self.maximum is not None and value > self.maximum:
            return f"must be at most {self.maximum}"
        return None

    def jsonSchema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "integer"}
        if self.minimum is not None:
            schema["minimum"] = self.minimum
        if self.maximum is not None:
            schema["maximum"] = self.maximum
        return schema


@frozen
class _BooleanSpec:
    nullable: bool = False
    description: str = ""

    def check(self, value: object) -> str | None:
        return None if isinstance(value, bool) else "must be true or false"

    def jsonSchema(self) -> dict[str, Any]:
        return {"type": "boolean"}


@frozen
class _ListSpec:
    item: _StringSpec
    maxItems: int
    nullable: bool = False
    description: str = ""

    def check(self, value: object) -> str | None:
        if not isinstance(value, list):
            return "must be a list"
        if len(value) > self.maxItems:
            return f"must have at most {self.maxItems} items"
        for index, item in enumerate(value):
            reason = self.item.check(item)
            if reason is not None:
                return f"item {index} {reason}"
        return None

    def jsonSchema(self) -> dict[str, Any]:
        return {"type": "array", "items": self.item.jsonSchema(), "maxItems": self.maxItems}


_Spec = _StringSpec | _IntegerSpec | _BooleanSpec | _ListSpec


def _field(spec: _Spec, default: Any, converter: Callable[[Any], Any] | None = None) -> Any:
    return field(default=default, metadata={_SPEC: spec}, converter=converter)


def string(
    *,
    minLength: int = 0,
    maxLength: int | None = None,
    pattern: str | None = None,
    hint: str | None = None,
    format: str | None = None,
    multiline: bool = False,
    controls: bool = False,
    visible: bool = False,
    nullable: bool = False,
    description: str = "",
    default: Any = NOTHING,
) -> Any:
    """
    A text field.  C{pattern} must match the whole value; C{hint} says in
    words what it accepts, for error messages.  A field with a C{default} may
    be left out.  Control characters are refused unless C{controls} (for
    text carried as it came, such as a request body to parse); C{multiline}
    allows only line breaks and tabs.  C{visible} refuses invisible
    formatting characters too (zero-width spaces and joiners, direction
    controls), for names that must show what they are.
    """
    return _field(
        _StringSpec(
            minLength,
            maxLength,
            pattern,
            hint,
            format,
            multiline,
            nullable,
            description,
            controls,
            visible,
        ),
        default,
    )


def integer(
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    description: str = "",
    default: Any = NOTHING,
) -> Any:
    return _field(_IntegerSpec(minimum, maximum, False, description), default)


def boolean(*, description: str = "", default: Any = NOTHING) -> Any:
    return _field(_BooleanSpec(False, description), default)


def stringList(item: Any, *, maxItems: int, description: str = "", default: Any = NOTHING) -> Any:
    """
    A list of strings, each checked like the field C{item} (made by
    L{string}); stored as a tuple so messages stay immutable.
    """
    itemSpec = item.metadata[_SPEC] if hasattr(item, "metadata") else item
    return _field(_ListSpec(itemSpec, maxItems, False, description), default, tuple)


def _spec(attribute: Attribute) -> _Spec:
    try:
        return attribute.metadata[_SPEC]
    except KeyError:
        raise TypeError(
            f"field {attribute.name!r} was not declared with a txplatform field"
        ) from None


def fromPayload(cls: type[T], payload: object) -> T:
    """
    Check C{payload} (decoded JSON) against message class C{cls} and build
    the message.  Every problem is reported at once, by field, in an
    L{InvalidArgument}; unknown fields are refused.
    """
    if not isinstance(payload, dict):
        raise InvalidArgument.forFields([("", "expected a JSON object")])
    known, plan = _plan(cls)
    errors = [(key, "is not a known field") for key in payload if key not in known]
    values = {}
    for name, spec, required in plan:
        if name not in payload:
            if required:
                errors.append((name, "is required"))
            continue
        value = payload[name]
        if value is None and spec.nullable:
            values[name] = None
            continue
        reason = spec.check(value)
        if reason is not None:
            errors.append((name, reason))
        else:
            values[name] = value
    rules = getattr(cls, _RULES, None)
    if rules is not None:
        errors += rules.check(payload)
    if errors:
        raise InvalidArgument.forFields(errors)
    return cls(**values)


@lru_cache(maxsize=None)
def _plan(cls: type) -> tuple[frozenset[str], tuple[tuple[str, _Spec, bool], ...]]:
    """
    What L{fromPayload} checks for C{cls}, worked out once per class.
    """
    declared = fields(cls)
    plan = tuple((a.name, _spec(a), a.default is NOTHING) for a in declared)
    return frozenset(a.name for a in declared), plan


def fromQuery(cls: type[T], query: dict[str, str]) -> T:
    """
    Like L{fromPayload}, for query parameters: text is converted to the
    field's type first (C{limit=5} to 5, C{unread=true} to True).  Unknown
    parameters are ignored: caches and proxies add their own.
    """
    payload: dict[str, Any] = {}
    errors = []
    for attribute in fields(cls):  # type: ignore[arg-type]
        if attribute.name not in query:
            continue
        text = query[attribute.name]
        spec = _spec(attribute)
        if isinstance(spec, _IntegerSpec):
            if not _INTEGER.fullmatch(text):
                errors.append((attribute.name, "must be an integer"))
                continue
            payload[attribute.name] = int(text)
        elif isinstance(spec, _BooleanSpec):
            if text not in ("true", "false"):
                errors.append((attribute.name, "must be true or false"))
                continue
            payload[attribute.name] = text == "true"
        else:
            payload[attribute.name] = text
    if errors:
        raise InvalidArgument.forFields(errors)
    return fromPayload(cls, payload)


def toPayload(instance: object) -> dict[str, Any]:
    """
    The JSON payload of a message, leaving out optional fields that are
    unset (C{None}) so the receiver sees them as absent.
    """
    payload = {}
    for attribute in fields(type(instance)):
        value = getattr(instance, attribute.name)
        if value is None and attribute.default is None:
            continue
        payload[attribute.name] = list(value) if isinstance(value, tuple) else value
    return payload


def fieldSchemas(cls: type) -> list[tuple[str, dict[str, Any], bool]]:
    """
    C{(name, JSON Schema, required)} for each field of C{cls}.
    """
    result = []
    for attribute in fields(cls):
        spec = _spec(attribute)
        schema = spec.jsonSchema()
        if spec.nullable:
            schema["type"] = [schema["type"], "null"]
        if spec.description:
            schema["description"] = spec.description
        if attribute.default not in (NOTHING, None):
            schema["default"] = attribute.default
        result.append((attribute.name, schema, attribute.default is NOTHING))
    return result


def jsonSchema(cls: type) -> dict[str, Any]:
    """
    The JSON Schema (2020-12, as OpenAPI 3.1 uses) of message class C{cls}.
    """
    properties = {}
    required = []
    for name, schema, isRequired in fieldSchemas(cls):
        properties[name] = schema
        if isRequired:
            required.append(name)
    schema = {"type": "object", "additionalProperties": False, "properties": properties}
    if required:
        schema["required"] = required
    rules = getattr(cls, _RULES, None)
    if rules is not None:
        schema.update(rules.jsonSchema())
    return schema


# Fields many services' messages share: declared once, here.

#: The pattern of record ids (L{txplatform.recordid}).
RECORD_ID = "[0-9a-hjkmnp-tv-z]{26}"


def recordIdField(what: str = "a record", **kwargs: Any) -> Any:
    """
    The id of a record (C{what}: which, for messages and the schema).
    """
    return string(
        pattern=RECORD_ID, hint=f"the id of {what}", description=f"The id of {what}.", **kwargs
    )


def usernameField(**kwargs: Any) -> Any:
    """
    A username as accounts have them.
    """
    return string(
        minLength=3,
        maxLength=32,
        pattern="[a-z0-9_]+",
        hint="lowercase letters a-z, digits and _ only",
        description="3-32 characters: a-z, 0-9 and _.",
        **kwargs,
    )


def limitField(maximum: int = 100, default: int = 20) -> Any:
    """
    The size of a page of a listing.
    """
    return integer(minimum=1, maximum=maximum, default=default, description="Page size.")


def cursorField() -> Any:
    """
    Where a page of a listing starts: the C{next} of the page before.
    """
    return string(
        minLength=1,
        maxLength=512,
        pattern=CURSOR_PATTERN,
        hint="a cursor from this listing",
        default=None,
        description="Opaque: the `next` of the previous page.",
    )


@message
class PageQuery:
    """
    The query of a listing: C{?limit=&cursor=}.
    """

    limit: int = limitField()
    cursor: str | None = cursorField()
