# -*- test-case-name: tests.crypto.test_sealing -*-
"""
Sealing records and streams under a keyring.

The ciphertext of a record or stream is::

    header (37 bytes)                               segments
    format 1 | alg 1 | version u32 | epoch u64 | salt 16 | prefix 7 | seg 0 | seg 1 | ...

The segments are Tink's AES-GCM-HKDF-Streaming layout (see
L{txplatform.crypto.stream}): AES-256-GCM, nonce = prefix | BE32(index) |
last flag, and the associated data of every segment is the whole header
followed by the caller's context (which row and column, which message), so
a ciphertext moved elsewhere, or with any header byte changed, fails.

One thing differs from Tink, for speed: Tink derives a key per stream
(HKDF of the key, a random salt and the associated data), which costs more
than AES-GCM itself on a record of 64 KiB.  Here a writer derives a session
key once, C{K_s = HKDF-SHA256(K(v, e), salt, "txplatform/stream/v1")} with a
random 16-byte salt, and gives each stream it writes under that session its
own 7-byte nonce prefix from a counter.  Nonces thus never repeat under a
key (a new salt for every session, a new prefix for every stream, a new
index for every segment), streams cannot be spliced (their prefixes
differ), and the context is authenticated by GCM itself rather than
through the key derivation.  Readers cache the session keys they derived.
"""

from __future__ import annotations

import itertools
import os
import struct
import threading
from functools import lru_cache
from typing import Callable

from attrs import frozen
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .keyring import KeyRefused, Keyring
from .stream import (
    DEFAULT_SEGMENT_SIZE,
    TAG_SIZE,
    DecryptionError,
    SegmentDecrypter,
    SegmentEncrypter,
    SegmentKey,
    ciphertextSize,
    decryptSegments,
    encryptSegmentsInto,
)

__all__ = [
    "FORMAT",
    "AES256GCM",
    "HEADER_SIZE",
    "Header",
    "Sealer",
    "DecryptionError",
    "KeyRefused",
]

FORMAT = 1
#: Algorithm ids: the only one so far.
AES256GCM = 1

_ENVELOPE = struct.Struct(">BBIQ")
_SALT_SIZE = 16
_PREFIX_SIZE = 7
HEADER_SIZE = _ENVELOPE.size + _SALT_SIZE + _PREFIX_SIZE
_SESSION_INFO = b"txplatform/stream/v1"
# The nonce suffix of a stream's only segment: index 0, final.
_ONLY = b"\0\0\0\0\1"
# 2**56 streams per session: a session never gets near it, but say so.
_MAX_STREAMS = 1 << (8 * _PREFIX_SIZE)


@frozen
class Header:
    """
    What the header of a ciphertext says.
    """

    version: int
    epoch: int
    salt: bytes
    prefix: bytes

    @classmethod
    def parse(cls, data: bytes | memoryview) -> Header:
        """
        @raise DecryptionError: Too short, or an unknown format.
        """
        if len(data) < HEADER_SIZE:
            raise DecryptionError(
                f"ciphertext too short: {len(data)} bytes, the header alone is {HEADER_SIZE}"
            )
        fmt, alg, version, epoch = _ENVELOPE.unpack_from(data)
        if fmt != FORMAT or alg != AES256GCM:
            raise DecryptionError(f"unknown ciphertext format {fmt}, algorithm {alg}")
        start = _ENVELOPE.size
        salt = bytes(data[start : start + _SALT_SIZE])
        prefix = bytes(data[start + _SALT_SIZE : HEADER_SIZE])
        return cls(version, epoch, salt, prefix)


def _sessionKey(epochKey: bytes, salt: bytes) -> SegmentKey:
    return SegmentKey(HKDF(SHA256(), 32, salt=salt, info=_SESSION_INFO).derive(epochKey))


class _Session:
    """
    A writer's key for one (version, epoch): a random salt, and a counter
    giving every stream its nonce prefix.
    """

    def __init__(self, version: int, epoch: int, epochKey: bytes) -> None:
        self.version = version
        self.epoch = epoch
        self.salt = os.urandom(_SALT_SIZE)
        self.key = _sessionKey(epochKey, self.salt)
        self.aead = self.key.aead
        self._envelope = _ENVELOPE.pack(FORMAT, AES256GCM, version, epoch) + self.salt
        # next() on a count is atomic under the GIL: fields are sealed in
        # database threads as well as in the reactor's.
        self._streams = itertools.count()

    def header(self) -> tuple[bytes, bytes]:
        """
        A new stream's header, and its nonce prefix.
        """
        n = next(self._streams)
        if n >= _MAX_STREAMS:
            raise OverflowError("session exhausted")
        prefix = n.to_bytes(_PREFIX_SIZE, "big")
        return self._envelope + prefix, prefix


class Sealer:
    """
    Seals records and streams under the current key of a keyring, and opens
    them under whatever key their header names, as the keyring's policy
    allows.

    @param segmentSize: Ciphertext segment size.  Records up to about that
        size are a single AES-GCM operation.
    """

    def __init__(self, keyring: Keyring, segmentSize: int = DEFAULT_SEGMENT_SIZE) -> None:
        self.keyring = keyring
        self.segmentSize = segmentSize
        # The largest record that is a single segment.
        self._firstPlaintext = segmentSize - HEADER_SIZE - TAG_SIZE
        if self._firstPlaintext < 0:
            raise ValueError(f"a segment of {segmentSize} bytes cannot follow the header")
        self._session: _Session | None = None
        # Until when the session holds, and for which keyring contents.
        self._until = float("-inf")
        self._generation = -1
        self._lock = threading.Lock()
        self._readerKey: Callable[[int, int, bytes], SegmentKey] = lru_cache(maxsize=1024)(
            self._deriveReaderKey
        )

    # Writing

    def _current(self) -> _Session:
        keyring = self.keyring
        now = keyring.clock.seconds()
        session = self._session
        # The hot path: one clock read and two comparisons.
        if session is not None and now < self._until and self._generation == keyring.generation:
            return session
        with self._lock:
            version, epoch = keyring.currentVersion(now), keyring.epoch(now)
            session = self._session
            if session is None or session.epoch != epoch or session.version != version:
                session = _Session(version, epoch, keyring.epochKey(version, epoch))
                self._session = session
            self._until = keyring.nextChange(now)
            self._generation = keyring.generation
        return session

    def seal(self, plaintext: bytes | bytearray | memoryview, context: bytes) -> bytearray:
        """
        Encrypt a whole record.

        @param context: Where the record belongs (bound in, not stored).
        @return: The header and the segments, in one buffer allocated once
            (a C{bytearray}: making it C{bytes} would copy it all).
        """
        session = self._current()
        header, prefix = session.header()
        size = len(plaintext)
        if size <= self._firstPlaintext:
            # One segment, the usual record: one AES-GCM call, no layout.
            out = bytearray(HEADER_SIZE + size + TAG_SIZE)
            out[:HEADER_SIZE] = header
            session.aead.encrypt_into(
                prefix + _ONLY, plaintext, header + context, memoryview(out)[HEADER_SIZE:]
            )
            return out
        out = bytearray(HEADER_SIZE + ciphertextSize(size, HEADER_SIZE, self.segmentSize))
        out[:HEADER_SIZE] = header
        encryptSegmentsInto(
            session.aead,
            prefix,
            header + context,
            HEADER_SIZE,
            plaintext,
            memoryview(out)[HEADER_SIZE:],
            self.segmentSize,
        )
        return out

    def encrypter(self, context: bytes) -> tuple[bytes, SegmentEncrypter]:
        """
        Start a stream: the header to send first, and the encrypter for the
        rest.
        """
        session = self._current()
        header, prefix = session.header()
        return header, SegmentEncrypter(
            session.key, prefix, header + context, HEADER_SIZE, self.segmentSize
        )

    # Reading

    def _deriveReaderKey(self, version: int, epoch: int, salt: bytes) -> SegmentKey:
        return _sessionKey(self.keyring.epochKey(version, epoch), salt)

    def _key(self, header: Header, maxAge: float | None) -> SegmentKey:
        self.keyring.check(header.version, header.epoch, maxAge)
        return self._readerKey(header.version, header.epoch, header.salt)

    def open(
        self, ciphertext: bytes | memoryview, context: bytes, maxAge: float | None = None
    ) -> bytes:
        """
        Decrypt a whole record.

        @raise DecryptionError: Not authentic (tampered, truncated, another
            context).
        @raise KeyRefused: Under a key the policy refuses
            (L{txplatform.crypto.keyring.UnknownKeyVersion} when the version
            is not held).
        """
        view = memoryview(ciphertext)
        if len(view) < HEADER_SIZE:
            Header.parse(view)  # raises, saying why
        fmt, alg, version, epoch = _ENVELOPE.unpack_from(view)
        if fmt != FORMAT or alg != AES256GCM:
            Header.parse(view)
        self.keyring.check(version, epoch, maxAge)
        header = view[:HEADER_SIZE].tobytes()
        aead = self._readerKey(version, epoch, header[_ENVELOPE.size : -_PREFIX_SIZE]).aead
        if len(view) - HEADER_SIZE <= self._firstPlaintext + TAG_SIZE:
            try:
                return aead.decrypt(
                    header[-_PREFIX_SIZE:] + _ONLY, view[HEADER_SIZE:], header + context
                )
            except InvalidTag:
                pass  # decryptSegments says what is wrong
        return decryptSegments(
            aead,
            header[-_PREFIX_SIZE:],
            header + context,
            HEADER_SIZE,
            view[HEADER_SIZE:],
            self.segmentSize,
        )

    def decrypter(
        self, header: bytes, context: bytes, maxAge: float | None = None
    ) -> SegmentDecrypter:
        """
        Read a stream whose first L{HEADER_SIZE} bytes are C{header}.
        """
        parsed = Header.parse(header)
        return SegmentDecrypter(
            self._key(parsed, maxAge),
            parsed.prefix,
            bytes(header[:HEADER_SIZE]) + context,
            HEADER_SIZE,
            self.segmentSize,
        )

    def clearCache(self) -> None:
        """
        Forget derived keys (the key file changed).
        """
        self._readerKey.cache_clear()  # type: ignore[attr-defined]
        self._session = None
