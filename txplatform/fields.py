# -*- test-case-name: tests.test_fields -*-
"""
Stored user fields.

Stores never write a user's text straight into a column: they pass it
through an L{IFieldCodec}, naming table, column and row, and look values up
by the codec's index.  L{PlainFieldCodec} stores UTF-8 as it is; an
encrypting codec drops in at the same seam without changing any store.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

from attrs import field, frozen
from twisted.logger import Logger
from zope.interface import implementer

from .errors import InternalError
from .interfaces import IFieldCodec

__all__ = ["PlainFieldCodec", "CorruptField", "SealedTable", "readableRows"]

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
