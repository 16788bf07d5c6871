# -*- test-case-name: tests.test_prepared -*-
"""
The statements one PostgreSQL connection has prepared, for the batches of
L{txplatform.database}.

A transaction's statements go to PostgreSQL together as one simple query,
their parameters written into the text (L{txplatform.literals}).
PostgreSQL parses, analyses and plans every statement of such a query
every time it comes.  For the statements a service sends again and again
(a login's counting upserts, a created post's INSERTs), that is most of
the server's work: a login's two transactions cost PostgreSQL about 1.3
ms of CPU as text and about 0.75 as prepared statements (measured on
this project's machine).  So a statement seen a second time on a
connection is prepared there (C{PREPARE}), on its own, before its
transaction begins, and from then on goes into the batch as C{EXECUTE
name(values)}: the batch is still one message.

A prepared statement outlives a transaction rolled back (PostgreSQL's
C{PREPARE} is not transactional), and each is prepared outside any
transaction, so the names held here are exactly those the connection
has; a statement PostgreSQL refuses to prepare (a parameter whose type
nothing in the statement says) goes as text, as before.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

__all__ = ["PreparedStatements", "parameterType"]

# What PREPARE takes.
_PREPARABLE = ("SELECT", "INSERT", "UPDATE", "DELETE", "WITH", "VALUES")


def parameterType(value: Any) -> str | None:
    """
    The type to PREPARE a parameter of C{value}'s kind with, as its
    literal would be typed (L{txplatform.literals}), or None if no such
    statement should be prepared.

    Text and NULL are C{unknown}: their type comes from where they stand,
    as a quoted literal's does.  Integers are C{bigint}, which every
    integer column takes and compares with (a literal of the same digits
    is C{integer} or C{bigint} by its size).
    """
    if value is None:
        return "unknown"
    kind = type(value)
    if kind is str:
        return "unknown"
    if kind is int:
        return "bigint"
    if kind is bytes or kind is bytearray or kind is memoryview:
        return "bytea"
    if kind is bool:
        return "boolean"
    if kind is float:
        return "double precision"
    if kind is list and all(type(v) is int for v in value):
        return "bigint[]"
    return None


class PreparedStatements:
    """
    The statements one connection has prepared, by their SQL (with C{?}
    placeholders) and their parameters' types.

    @ivar limit: At most this many statements are prepared on one
        connection; past it, new statements go as text.  (A statement
        built for a number of rows, such as a batch's multi-row INSERT, is
        one statement per number.)
    @ivar threshold: A statement is prepared when it is seen this many
        times: one that runs once (a migration) never is.
    """

    limit = 256
    threshold = 2

    def __init__(self) -> None:
        self._names: dict[tuple[str, tuple[str, ...]], str] = {}
        self._seen: dict[tuple[str, tuple[str, ...]], int] = {}
        self._refused: set[tuple[str, tuple[str, ...]]] = set()
        # Prepared later, by whoever was asked (see L{prepared}).
        self._later: dict[str, tuple[str, tuple[str, ...]]] = {}
        self._pending: set[tuple[str, tuple[str, ...]]] = set()
        self._made = 0
        # The names of statements prepared, by their SQL and the Python
        # types of their values: found without typing each value (a
        # statement prepared keeps its name for the connection's life).
        self._known: dict[tuple[Any, ...], str] = {}

    def __len__(self) -> int:
        return len(self._names)

    def name(
        self,
        sql: str,
        params: Sequence[Any],
        prepare: Callable[[str], bool | None] | None,
    ) -> str | None:
        """
        The name C{sql} with parameters like C{params} is prepared under on
        this connection, preparing it now if it is due and C{prepare} is
        given (it runs a C{PREPARE} statement alone, outside any
        transaction, and says whether PostgreSQL took it, or None if it
        will run it later and say so to L{prepared}); None if it goes as
        text.
        """
        kinds = (sql, *map(type, params))
        name = self._known.get(kinds)
        if name is not None and (list not in kinds or _intLists(params)):
            return name
        types = tuple(map(parameterType, params))
        key = (sql, types)
        name = self._names.get(key)
        if name is not None:
            if len(self._known) >= 4 * self.limit:
                self._known.clear()
            self._known[kinds] = name
            return name
        if prepare is None:
            return None
        if (
            None in types
            or key in self._refused
            or len(self._names) + len(self._later) >= self.limit
            or key in self._pending
        ):
            return None
        seen = self._seen.get(key, 0) + 1
        if seen < self.threshold:
            if len(self._seen) >= 4 * self.limit:
                # Statements seen once, most never again: forget them all.
                self._seen.clear()
            self._seen[key] = seen
            return None
        self._seen.pop(key, None)
        numbered = _numbered(sql, len(params))
        if numbered is None:
            self._refused.add(key)
            return None
        name = f"txp_{self._made}"
        self._made += 1
        typed = f"({', '.join(types)})" if types else ""
        took = prepare(f"PREPARE {name}{typed} AS {numbered}")
        if took is None:
            self._later[name] = key
            self._pending.add(key)
            return None
        if not took:
            self._refused.add(key)
            return None
        self._names[key] = name
        return name

    def prepared(self, name: str, took: bool) -> None:
        """
        The C{PREPARE} of C{name}, which L{name}'s C{prepare} said it would
        run later, ran: PostgreSQL took it (and its statement goes as its
        EXECUTE from now on), or not (and it goes as text).
        """
        key = self._later.pop(name)
        self._pending.discard(key)
        if took:
            self._names[key] = name
        else:
            self._refused.add(key)


def _intLists(params: Sequence[Any]) -> bool:
    """
    Whether every list among C{params} holds integers only (the one kind of
    list a statement is prepared for: C{bigint[]}).
    """
    return all(type(v) is int for p in params if type(p) is list for v in p)


def _numbered(sql: str, count: int) -> str | None:
    """
    C{sql} with its C{?} placeholders numbered as PREPARE wants them
    (C{$1}, C{$2}, ...), or None if it is no statement PREPARE takes or
    its placeholders are not C{count}.
    """
    stripped = sql.lstrip()
    if not stripped[:6].upper().startswith(_PREPARABLE):
        return None
    pieces = stripped.split("?")
    if len(pieces) != count + 1:
        return None
    written = [pieces[0]]
    for number, piece in enumerate(pieces[1:], 1):
        written.append(f"${number}")
        written.append(piece)
    return "".join(written)
