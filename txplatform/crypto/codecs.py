# -*- test-case-name: tests.crypto.test_codecs -*-
"""
The encrypting codecs: user fields at rest, payloads on the bus.

Both drop into the seams every store and bus already goes through
(L{IFieldCodec}, L{IPayloadCodec}), so no store or bus knows whether it
holds plaintext.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any, Callable

from twisted.logger import Logger
from zope.interface import implementer

from ..codec import JSONCodec
from ..errors import MalformedMessage
from ..fields import CorruptField
from ..interfaces import IFieldCodec, IPayloadCodec
from .keyring import KeyRefused, UnknownKeyVersion
from .sealing import DecryptionError, Header, Sealer

__all__ = ["SealedFieldCodec", "SealedPayloadCodec", "fieldContext"]


def fieldContext(table: str, column: str, rowId: str) -> bytes:
    return b"\0".join([b"field", table.encode(), column.encode(), rowId.encode()])


def _retryOnce(reload: Callable[[], bool] | None, attempt: Callable[[], Any]) -> Any:
    """
    Run C{attempt}; if it meets a version we do not hold, reload the keys
    (a replica with a newer key file wrote it) and try once more.
    """
    try:
        return attempt()
    except UnknownKeyVersion:
        if reload is None or not reload():
            raise
    return attempt()


@implementer(IFieldCodec)
class SealedFieldCodec:
    """
    User fields encrypted under a service's keyring, bound to their table,
    column and row; lookups through blind indexes, HMAC-SHA256 under a
    per-column key of each master version.

    @param reload: Called when a value is under a version the keyring does
        not hold; returns whether new keys were taken.
    """

    def __init__(self, sealer: Sealer, reload: Callable[[], bool] | None = None) -> None:
        self.sealer = sealer
        self.keyring = sealer.keyring
        self._reload = reload
        # An HMAC keyed for each index key, copied for each value: the key
        # schedule is done once, and OpenSSL's digest not looked up by name
        # at every index (a login makes four).
        self._indexers: dict[bytes, Any] = {}

    def seal(self, table: str, column: str, rowId: str, value: str) -> bytes:
        return self.sealer.seal(value.encode("utf-8"), fieldContext(table, column, rowId))

    def checkValues(self) -> dict[int, bytes]:
        """
        The check value of every readable version (L{Keyring.checkValue}).
        """
        return {v: self.keyring.checkValue(v) for v in self.keyring.versions}

    def open(self, table: str, column: str, rowId: str, data: bytes) -> str:
        context = fieldContext(table, column, rowId)
        try:
            plaintext = _retryOnce(self._reload, lambda: self.sealer.open(data, context))
            return plaintext.decode("utf-8")
        except (DecryptionError, KeyRefused, UnicodeDecodeError) as e:
            raise CorruptField(f"{table}.{column} of row {rowId} cannot be read: {e}") from None

    def index(self, table: str, column: str, value: str) -> bytes:
        return self._index(self.keyring.currentVersion(), table, column, value)

    def indexes(self, table: str, column: str, value: str) -> list[bytes]:
        # Every readable version: rows not yet re-encrypted keep the index
        # of the version they were written under.
        return [self._index(v, table, column, value) for v in self.keyring.versions]

    def _index(self, version: int, table: str, column: str, value: str) -> bytes:
        key = self.keyring.indexKey(version, table, column)
        keyed = self._indexers.get(key)
        if keyed is None:
            keyed = self._indexers[key] = hmac.new(key, digestmod=hashlib.sha256)
        mac = keyed.copy()
        mac.update(value.encode("utf-8"))
        return mac.digest()  # type: ignore[no-any-return]

    def versionOf(self, data: bytes) -> int | None:
        """
        The master version a stored value is under; C{None} if unreadable.
        """
        try:
            return Header.parse(memoryview(data)).version
        except DecryptionError:
            return None


@implementer(IPayloadCodec)
class SealedPayloadCodec:
    """
    Bus payloads encrypted end to end under the cluster's bus keyring, with
    the message's binding (kind, addresses, method or event, message id,
    caller, trace, deadline) as context: a payload moved to another message,
    or a message whose routing headers were changed, does not decrypt.
    """

    log = Logger()

    def __init__(
        self,
        sealer: Sealer,
        inner: IPayloadCodec | None = None,
        reload: Callable[[], bool] | None = None,
    ) -> None:
        self.sealer = sealer
        self._inner = inner if inner is not None else JSONCodec()
        self._reload = reload

    def encode(self, payload: Any, binding: bytes) -> bytes:
        return self.sealer.seal(self._inner.encode(payload, binding), binding)

    def decode(self, data: bytes, binding: bytes) -> Any:
        try:
            plaintext = _retryOnce(self._reload, lambda: self.sealer.open(data, binding))
        except (DecryptionError, KeyRefused) as e:
            raise MalformedMessage(f"payload refused: {e}") from None
        return self._inner.decode(plaintext, binding)
