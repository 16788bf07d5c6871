# -*- test-case-name: tests.test_literals -*-
"""
Parameters written into PostgreSQL's SQL text, for the values that need no
escaping at all.

A transaction's sent statements go to PostgreSQL as one simple query
(L{txplatform.database}), so their parameters are written into the text.
psycopg's C{ClientCursor.mogrify} does that for any value, but at about
20 microseconds a statement of Python, a tenth of the service's CPU on a
created post.  Most of what the stores write needs no quoting to be
written safely: numbers, NULL, booleans, bytes (written as hexadecimal
digits), and identifiers (record ids, event names, W3C trace headers), whose
characters include no quote and no backslash.  Those are written here, by
construction rather than by escaping; a statement with any other value
(text a user wrote, which the stores seal into bytes anyway, or a type not
listed) is left to psycopg.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any, Sequence

__all__ = ["inlined", "executed"]

# Nothing that ends a quoted literal or escapes (no ' and no \), nothing
# outside printable ASCII (so no encoding question arises).
_PLAIN = re.compile(r"[A-Za-z0-9 _.,:;=+*/@-]*\Z")


@lru_cache(maxsize=1024)
def _pieces(sql: str) -> tuple[str, ...]:
    return tuple(sql.split("?"))


def _literal(value: Any) -> str | None:
    """
    C{value} as PostgreSQL's SQL would write it, or None when that would
    take escaping.
    """
    if value is None:
        return "NULL"
    kind = type(value)
    if kind is bool:
        return "true" if value else "false"
    if kind is int:
        # A negative number in parentheses: written after a minus sign
        # ("a -?"), "-" and "-1" would make "--1", a comment.
        return str(value) if value >= 0 else f"({value})"
    if kind is bytes or kind is bytearray or kind is memoryview:
        # As psycopg binds all three: bytea.  (Sealed fields come as
        # bytearrays.)  decode() rather than '\x...': no backslash,
        # whatever the server's standard_conforming_strings.
        return f"decode('{value.hex()}','hex')"
    if kind is str:
        return f"'{value}'" if _PLAIN.match(value) else None
    if kind is list and all(type(v) is int for v in value):
        # An array of integers: digits, minus signs and commas only.
        return "'{" + ",".join(map(str, value)) + "}'"
    return None


def inlined(sql: str, params: Sequence[Any]) -> str | None:
    """
    C{sql} (with C{?} placeholders) with C{params} written in, or None if
    any of them needs escaping, or their number is not the placeholders'.
    """
    pieces = _pieces(sql)
    if len(pieces) != len(params) + 1:
        return None
    written = [pieces[0]]
    for value, piece in zip(params, pieces[1:], strict=True):
        literal = _literal(value)
        if literal is None:
            return None
        written.append(literal)
        written.append(piece)
    return "".join(written)


def executed(name: str, params: Sequence[Any]) -> str | None:
    """
    The C{EXECUTE} of the prepared statement C{name} with C{params} written
    in (L{txplatform.prepared}), or None if any of them needs escaping.
    """
    if not params:
        return f"EXECUTE {name}"
    written = []
    for value in params:
        literal = _literal(value)
        if literal is None:
            return None
        written.append(literal)
    return f"EXECUTE {name}({', '.join(written)})"
