# -*- test-case-name: tests.test_fields -*-
"""
Stored user fields.

Stores never write a user's text straight into a column: they pass it
through an L{IFieldCodec}, naming table, column and row, and look values up
by the codec's index.  L{PlainFieldCodec} stores UTF-8 as it is; an
encrypting codec drops in at the same seam without changing any store.
"""

from __future__ import annotations

from zope.interface import implementer

from .errors import InternalError
from .interfaces import IFieldCodec

__all__ = ["PlainFieldCodec", "CorruptField"]


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
