# -*- test-case-name: tests.test_fields -*-
"""
Stored user fields.

Stores never write a user's text straight into a column: they pass it
through an L{IFieldCodec}, naming table, column and row, and look values up
by the codec's index.  L{PlainFieldCodec} stores UTF-8 as it is; an
encrypting codec drops in at the same seam without changing any store.
"""

from __future__ import annotations

import unicodedata
from typing import Any, Callable, Iterable, Mapping

from attrs import field, frozen
from twisted.logger import Logger
from zope.interface import implementer

from .errors import InternalError
from .interfaces import IFieldCodec, ITransaction

__all__ = ["PlainFieldCodec", "CorruptField", "SealedTable", "readableRows", "fold", "reindexRows"]

_log = Logger()


class CorruptField(InternalError):
    """
    A stored value cannot be read back.
    """


@implementer(IFieldCodec)
class PlainFieldCodec:
    """
    UTF-8, unprotected; the index is the value itself.
    """

    def seal(self, table: str, column: str, rowId: str, value: str) -> bytes:
        return value.encode("utf-8")

    def open(self, table: str, column: str, rowId: str, data: bytes) -> str:
        try:
            return bytes(data).decode("utf-8")
        except UnicodeDecodeError:
            raise CorruptField(f"{table}.{column} of row {rowId} is not readable") from None

    def index(self, table: str, column: str, value: str) -> bytes:
        return value.encode("utf-8")

    def indexes(self, table: str, column: str, value: str) -> list[bytes]:
        return [self.index(table, column, value)]


def fold(text: str) -> str:
    """
    C{text} as blind indexes of what people type (email addresses, names)
    should see it: NFKC-casefolded (Unicode's NFKC_Casefold, less its
    removal of invisible characters, which fields refuse instead), with a
    capital I with a dot above folding to a plain i.  So C{ＡＬＩＣＥ} (full
    width), C{ALICE}, C{ALİCE} and C{alice} are one, and I{ﬁ} is I{fi}.

    (Full case folding turns U+0130 into i and a combining dot above, which
    no precomposed character absorbs: it would stay a second spelling of
    i that looks the same.)
    """
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKD", text).casefold())
    return folded.replace("i\u0307", "i")


def reindexRows(transaction: ITransaction, codec: IFieldCodec, table: SealedTable) -> int:
    """
    Compute the blind indexes of C{table} again, from its sealed values and
    under how each is normalised now (C{table.indexes}), in C{transaction}:
    the step of a migration that changed a normalisation.

    Rows whose values now normalise alike (written apart under the old
    rule) cannot all take the one index: the row that holds it already, or
    else the oldest, takes it; the others keep their old index, which no
    new lookup finds, and are logged by id for someone to resolve.
    Unreadable rows are logged and left as they are.

    @return: How many rows got a new index.
    """
    changed = 0
    for column, (indexColumn, normalise) in table.indexes.items():
        transaction.execute(
            f"SELECT {table.key}, {column}, {indexColumn} FROM {table.table} ORDER BY {table.key}"
        )
        current: dict[str, bytes] = {}
        wanted: dict[bytes, list[str]] = {}
        for rowId, sealed, index in transaction.fetchall():
            try:
                value = codec.open(table.table, column, rowId, bytes(sealed))
            except CorruptField as e:
                _log.error("Cannot re-index: {error}", error=e.message)
                continue
            current[rowId] = bytes(index)
            wanted.setdefault(codec.index(table.table, column, normalise(value)), []).append(rowId)
        for index, rows in wanted.items():
            holder = next((r for r in rows if current[r] == index), None)
            if holder is None:
                holder = rows[0]
                transaction.execute(
                    f"UPDATE {table.table} SET {indexColumn} = ? WHERE {table.key} = ?",
                    (index, holder),
                )
                changed += 1
            others = [r for r in rows if r != holder]
            if others:
                _log.warn(
                    "{table}.{column} of rows {others} now normalises as that of row {holder}:"
                    " they keep their old index, found by no lookup; resolve by hand",
                    table=table.table,
                    column=column,
                    others=", ".join(others),
                    holder=holder,
                )
    return changed


def _asTuple(value: Any) -> tuple[str, ...]:
    return tuple(value)


@frozen
class SealedTable:
    """
    Where a service keeps sealed fields: what a re-encryption job rewrites.

    @ivar key: The primary key column; its value is the row id the fields
        are bound to.
    @ivar columns: The sealed columns.
    @ivar indexes: For a sealed column with a blind index: the index column
        and how the value is normalised before indexing.
    """

    table: str
    key: str
    columns: tuple[str, ...] = field(converter=_asTuple)
    indexes: Mapping[str, tuple[str, Callable[[str], str]]] = field(factory=dict)


def readableRows(rows: Iterable[Any], convert: Callable[[Any], Any]) -> list[Any]:
    """
    C{convert} each row, leaving out (and logging) those whose fields cannot
    be read: one damaged record must not hide the others from a listing.
    """
    readable = []
    for row in rows:
        try:
            readable.append(convert(row))
        except CorruptField as e:
            _log.error("Left out of a listing: {error}", error=e.message)
    return readable
