# -*- test-case-name: tests.crypto.test_stream -*-
"""
Streaming authenticated encryption: the segments.

This is the segment layout of Tink's AES-GCM-HKDF-Streaming, the STREAM
construction of Hoang, Reyhanitabar, Rogaway and Vizár (2015).  A stream is::

    header | segment 0 | segment 1 | ... | segment n-1

The header (C{headerLength} bytes) and the key belong to the caller: this
module neither writes nor reads them.  Every ciphertext segment is
C{segmentSize} bytes, except that segment 0 is C{segmentSize - headerLength}
(so the header and segment 0 fill one segment) and the last may be shorter.
Segment C{i} is AES-GCM under the caller's key with the nonce::

    noncePrefix (7 bytes) | BE32(i) | 1 if final else 0

and the caller's associated data, so each segment carries a 16-byte tag.
Exactly one segment is final: a plaintext that fills C{k} segments gives
C{k} segments, the last of them flagged final, and an empty one gives a
single final segment holding only its tag.  Since the index and the flag
are authenticated, segments cannot be reordered, dropped, duplicated,
appended or truncated away unnoticed; nor taken from another stream, which
has another prefix or key.

Unlike Tink, which authenticates no data in GCM (its associated data goes
into the key derivation), the caller's C{aad} is passed to every segment.
"""

from __future__ import annotations

import operator
import struct
from collections import deque
from typing import Union

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import (
    AEADDecryptionContext,
    AEADEncryptionContext,
    Cipher,
    algorithms,
    modes,
)
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from twisted.internet.interfaces import IConsumer, IProducer
from zope.interface import implementer

__all__ = [
    "NONCE_PREFIX_SIZE",
    "TAG_SIZE",
    "DEFAULT_SEGMENT_SIZE",
    "DecryptionError",
    "SegmentKey",
    "segmentNonce",
    "SegmentEncrypter",
    "SegmentDecrypter",
    "encryptSegments",
    "encryptSegmentsInto",
    "ciphertextSize",
    "decryptSegments",
    "EncryptingConsumer",
    "DecryptingConsumer",
]

NONCE_PREFIX_SIZE = 7
TAG_SIZE = 16
DEFAULT_SEGMENT_SIZE = 1 << 20

# The index is 32 bits of the nonce: past it, nonces would repeat.  Read at
# run time so that tests can lower it.
_MAX_SEGMENTS = 1 << 32

_nonceSuffix = struct.Struct(">IB").pack
# The nonce suffix of a stream's only segment: the hot path of small records.
_ONLY = _nonceSuffix(0, 1)

_TRUNCATED = "the stream ends without its final segment (truncated)"

# Part of a stream as held: a write, a slice of one, or small writes joined.
Piece = Union[bytes, bytearray, memoryview]


class DecryptionError(Exception):
    """
    Ciphertext that does not authenticate: tampered, truncated, extended,
    reordered, from another stream, or read with the wrong key or associated
    data.  The message says which segment, or what is missing.
    """


class SegmentKey:
    """
    An AES-GCM key in the two forms the segments need: the one-shot AEAD,
    for a segment that arrived in one piece, and the incremental cipher, for
    one that arrived in several (so that they are not joined first: on large
    streams, that copy costs as much as the encryption).
    """

    __slots__ = ("aead", "_algorithm")

    def __init__(self, secret: bytes) -> None:
        """
        @param secret: 32 bytes (16 or 24 for AES-128 or -192, as in
            Tink's test vectors).

        @raise ValueError: Not an AES key size.
        """
        self.aead = AESGCM(secret)
        self._algorithm = algorithms.AES(secret)

    def encryptor(self, nonce: bytes, aad: bytes) -> AEADEncryptionContext:
        """
        An incremental encryption of one segment.
        """
        encryptor = Cipher(self._algorithm, modes.GCM(nonce)).encryptor()
        encryptor.authenticate_additional_data(aad)
        return encryptor

    def decryptor(self, nonce: bytes, aad: bytes) -> AEADDecryptionContext:
        """
        An incremental decryption of one segment.
        """
        decryptor = Cipher(self._algorithm, modes.GCM(nonce)).decryptor()
        decryptor.authenticate_additional_data(aad)
        return decryptor


def segmentNonce(noncePrefix: bytes, index: int, last: bool) -> bytes:
    """
    The GCM nonce of one segment.

    @param noncePrefix: The stream's C{NONCE_PREFIX_SIZE} bytes.
    @param index: The segment's position, from 0.
    @param last: Whether this is the stream's final segment.

    @raise ValueError: The prefix is not C{NONCE_PREFIX_SIZE} bytes, or the
        index does not fit 32 bits.
    """
    if len(noncePrefix) != NONCE_PREFIX_SIZE:
        raise ValueError(f"the nonce prefix is {len(noncePrefix)} bytes, not {NONCE_PREFIX_SIZE}")
    if not 0 <= index < _MAX_SEGMENTS:
        raise ValueError(f"segment index {index} is not in [0, 2**32)")
    return bytes(noncePrefix) + _nonceSuffix(index, bool(last))


def _checkLayout(noncePrefix: bytes, headerLength: int, segmentSize: int) -> tuple[bytes, int]:
    """
    Check the parameters of a stream.

    @return: The nonce prefix as L{bytes}, and the ciphertext size of a full
        segment 0.

    @raise ValueError: They cannot describe a stream.
    @raise TypeError: A length is not an integer.
    """
    if len(noncePrefix) != NONCE_PREFIX_SIZE:
        raise ValueError(f"the nonce prefix is {len(noncePrefix)} bytes, not {NONCE_PREFIX_SIZE}")
    headerLength = operator.index(headerLength)
    segmentSize = operator.index(segmentSize)
    if headerLength < 0:
        raise ValueError(f"the header length is {headerLength}: it cannot be negative")
    if segmentSize - headerLength <= TAG_SIZE:
        raise ValueError(
            f"a segment size of {segmentSize} leaves segment 0 no room for plaintext "
            f"after a {headerLength}-byte header and a {TAG_SIZE}-byte tag"
        )
    return bytes(noncePrefix), segmentSize - headerLength


def _tooManySegments(count: int) -> str:
    return f"{count} segments: a stream holds at most {_MAX_SEGMENTS}"


def ciphertextSize(plaintextSize: int, headerLength: int, segmentSize: int) -> int:
    """
    The size of the segments (without the header) of a plaintext of
    C{plaintextSize} bytes.
    """
    first = segmentSize - headerLength - TAG_SIZE
    if plaintextSize <= first:
        return plaintextSize + TAG_SIZE
    segments = (plaintextSize - first - 1) // (segmentSize - TAG_SIZE) + 2
    return plaintextSize + segments * TAG_SIZE


def encryptSegments(
    aead: AESGCM,
    noncePrefix: bytes,
    aad: bytes,
    headerLength: int,
    plaintext: bytes | bytearray | memoryview,
    segmentSize: int = DEFAULT_SEGMENT_SIZE,
) -> bytes:
    """
    Encrypt a whole stream at once: the same bytes as a L{SegmentEncrypter}
    fed C{plaintext}, faster.  A plaintext that fits segment 0 costs one
    AES-GCM call.

    @param aead: The stream's key.
    @param noncePrefix: The stream's C{NONCE_PREFIX_SIZE} bytes, unique per
        stream under C{aead}.
    @param aad: Associated data, authenticated by every segment.
    @param headerLength: The length of the caller's header, which precedes
        the returned segments.
    @param plaintext: Bytes (a memoryview must be of bytes).
    @param segmentSize: The ciphertext size of a full segment.

    @return: The segments, without the header.

    @raise ValueError: Bad parameters, or a plaintext of more than 2**32
        segments.
    """
    # The checks of _checkLayout cost a third of a small record's time: the
    # common case takes these instead, and anything else goes through it.
    first = segmentSize - headerLength - TAG_SIZE
    if (
        len(plaintext) <= first
        and first > 0 <= headerLength
        and len(noncePrefix) == NONCE_PREFIX_SIZE
        and type(noncePrefix) is bytes
        and type(first) is int  # not if either length is a float
    ):
        return aead.encrypt(noncePrefix + _ONLY, plaintext, aad)
    _checkLayout(noncePrefix, headerLength, segmentSize)
    out = bytearray(ciphertextSize(len(plaintext), headerLength, segmentSize))
    encryptSegmentsInto(aead, noncePrefix, aad, headerLength, plaintext, out, segmentSize)
    return bytes(out)


def encryptSegmentsInto(
    aead: AESGCM,
    noncePrefix: bytes,
    aad: bytes,
    headerLength: int,
    plaintext: bytes | bytearray | memoryview,
    out: bytearray | memoryview,
    segmentSize: int = DEFAULT_SEGMENT_SIZE,
) -> None:
    """
    L{encryptSegments} into C{out}, exactly L{ciphertextSize} bytes: each
    segment is written straight into its place, so a caller that allocates
    one buffer for its header and the segments copies nothing (on 16 MiB,
    a copy and the second buffer cost several times the encryption).
    """
    noncePrefix, first = _checkLayout(noncePrefix, headerLength, segmentSize)
    first -= TAG_SIZE
    size = len(plaintext)
    target = memoryview(out)
    if len(target) != ciphertextSize(size, headerLength, segmentSize):
        raise ValueError(f"the output holds {len(target)} bytes, not the ciphertext's size")
    encryptInto = aead.encrypt_into
    if size <= first:
        encryptInto(noncePrefix + _ONLY, plaintext, aad, target)
        return
    rest = segmentSize - TAG_SIZE
    last = (size - first - 1) // rest + 1
    if last >= _MAX_SEGMENTS:
        raise ValueError(_tooManySegments(last + 1))
    source = memoryview(plaintext)
    encryptInto(noncePrefix + _nonceSuffix(0, 0), source[:first], aad, target[: first + TAG_SIZE])
    start, at = first, first + TAG_SIZE
    for index in range(1, last):
        encryptInto(
            noncePrefix + _nonceSuffix(index, 0),
            source[start : start + rest],
            aad,
            target[at : at + segmentSize],
        )
        start += rest
        at += segmentSize
    encryptInto(noncePrefix + _nonceSuffix(last, 1), source[start:], aad, target[at:])


def decryptSegments(
    aead: AESGCM,
    noncePrefix: bytes,
    aad: bytes,
    headerLength: int,
    ciphertext: bytes | bytearray | memoryview,
    segmentSize: int = DEFAULT_SEGMENT_SIZE,
) -> bytes | bytearray:
    """
    Decrypt a whole stream at once: what L{SegmentDecrypter} gives, faster
    (a C{bytearray} when it spans several segments).

    @param ciphertext: The segments, without the header.

    @see: L{encryptSegments} for the other parameters.

    @raise DecryptionError: C{ciphertext} does not authenticate.
    @raise ValueError: Bad parameters.
    """
    # As in encryptSegments: cheap checks for the common case.
    first = segmentSize - headerLength
    size = len(ciphertext)
    if not (
        size <= first
        and first > TAG_SIZE
        and headerLength >= 0
        and len(noncePrefix) == NONCE_PREFIX_SIZE
        and type(noncePrefix) is bytes
        and type(first) is int
    ):
        noncePrefix, first = _checkLayout(noncePrefix, headerLength, segmentSize)
    if size <= first:
        try:
            return aead.decrypt(noncePrefix + _ONLY, ciphertext, aad)
        except InvalidTag:
            raise _refusal(aead, noncePrefix, aad, headerLength, ciphertext, segmentSize) from None

    last = (size - first - 1) // segmentSize + 1
    if last >= _MAX_SEGMENTS:
        raise DecryptionError(_tooManySegments(last + 1))
    if size - first - (last - 1) * segmentSize < TAG_SIZE:
        raise _refusal(aead, noncePrefix, aad, headerLength, ciphertext, segmentSize)
    source = memoryview(ciphertext)
    out = bytearray(size - (last + 1) * TAG_SIZE)
    target = memoryview(out)
    decryptInto = aead.decrypt_into
    try:
        decryptInto(
            noncePrefix + _nonceSuffix(0, 0), source[:first], aad, target[: first - TAG_SIZE]
        )
        start, at, rest = first, first - TAG_SIZE, segmentSize - TAG_SIZE
        for index in range(1, last):
            decryptInto(
                noncePrefix + _nonceSuffix(index, 0),
                source[start : start + segmentSize],
                aad,
                target[at : at + rest],
            )
            start += segmentSize
            at += rest
        decryptInto(noncePrefix + _nonceSuffix(last, 1), source[start:], aad, target[at:])
    except InvalidTag:
        # out may hold unauthenticated plaintext: it is dropped with it.
        raise _refusal(aead, noncePrefix, aad, headerLength, ciphertext, segmentSize) from None
    finally:
        target.release()
    # Not bytes(out): on large streams the copy costs more than decrypting.
    return out


def _refusal(
    aead: AESGCM,
    noncePrefix: bytes,
    aad: bytes,
    headerLength: int,
    ciphertext: bytes | bytearray | memoryview,
    segmentSize: int,
) -> DecryptionError:
    """
    Say why a stream that L{decryptSegments} refused does not authenticate,
    in the words of L{SegmentDecrypter}: the failure path pays a second
    pass, segment by segment.
    """
    view = memoryview(ciphertext)
    start, end = 0, segmentSize - headerLength
    for index in range(_MAX_SEGMENTS):
        last = end >= len(view)
        segment = view[start:end]
        if last and len(segment) < TAG_SIZE:
            return DecryptionError(_TRUNCATED)
        try:
            aead.decrypt(noncePrefix + _nonceSuffix(index, last), segment, aad)
        except InvalidTag:
            return _segmentRefusal(aead, noncePrefix, aad, index, segment, last)
        if last:
            break
        start, end = end, end + segmentSize
    # Not reached: decryptSegments decrypted the same segments.
    return DecryptionError("the stream does not authenticate")


def _segmentRefusal(
    aead: AESGCM,
    noncePrefix: bytes,
    aad: bytes,
    index: int,
    segment: bytes | bytearray | memoryview,
    last: bool,
) -> DecryptionError:
    """
    Say why segment C{index} does not authenticate.  Trying the other flag
    tells a stream cut at a segment boundary, or one with data after its
    final segment, from damage.
    """
    try:
        aead.decrypt(noncePrefix + _nonceSuffix(index, not last), segment, aad)
    except InvalidTag:
        return DecryptionError(f"segment {index} does not authenticate")
    if last:
        return DecryptionError(_TRUNCATED)
    return DecryptionError(f"data after the final segment (segment {index} is final)")


def _split(pieces: list[Piece], at: int) -> tuple[list[Piece], bytes]:
    """
    Cut C{pieces} after C{at} bytes: the pieces before, and the bytes after
    (a tag: a few bytes, joined).
    """
    before: list[Piece] = []
    for i, piece in enumerate(pieces):
        size = len(piece)
        if size <= at:
            before.append(piece)
            at -= size
            continue
        view = memoryview(piece)
        if at:
            before.append(view[:at])
        return before, b"".join([view[at:], *pieces[i + 1 :]])
    return before, b""


class _Segmenter:
    """
    Cut a stream into segments as it arrives, holding back a full segment
    until more data shows that it is not the final one.

    What it holds are the writes themselves, not a copy: a segment that
    arrived in several writes is transformed piece by piece with the
    incremental cipher.  A write is copied only if it is small (see
    C{coalesce}) or mutable (a C{bytearray}, or a view of one: the caller
    may reuse it).

    @cvar coalesce: Writes smaller than this many bytes are copied together,
        so that a stream written a few bytes at a time does not cost a
        cipher call per write; larger ones are held as they came.
    @cvar join: A segment of up to this many bytes that arrived in several
        pieces is joined and handled in one AEAD call: copying it costs less
        than setting up the incremental cipher.
    """

    coalesce = 16 * 1024
    join = 128 * 1024
    _inputLess: int

    def __init__(
        self,
        key: SegmentKey,
        noncePrefix: bytes,
        aad: bytes,
        headerLength: int,
        segmentSize: int = DEFAULT_SEGMENT_SIZE,
    ) -> None:
        """
        @param key: The stream's key.

        @see: L{encryptSegments} for the other parameters.

        @raise ValueError: Bad parameters.
        """
        noncePrefix, first = _checkLayout(noncePrefix, headerLength, segmentSize)
        self._key = key
        self._noncePrefix = noncePrefix
        self._aad = aad
        self._held: deque[Piece] = deque()
        self._heldSize = 0
        # The last held piece when it is this object's own buffer, which
        # small writes extend.
        self._tail: bytearray | None = None
        # How much input a segment takes: segment 0 is shorter, by the header.
        self._capacity = first - self._inputLess
        self._rest = segmentSize - self._inputLess
        self._index = 0
        self._finalized = False
        self._failure: Exception | None = None

    def _segment(self, pieces: list[Piece], last: bool) -> list[bytes]:
        """
        Transform the next segment, whose index is C{self._index}, given as
        the pieces that make it up.
        """
        raise NotImplementedError()

    def _next(self, pieces: list[Piece], last: bool) -> list[bytes]:
        try:
            result = self._segment(pieces, last)
        except Exception as e:
            self._failure = e
            raise
        self._index += 1
        self._capacity = self._rest
        return result

    def _check(self) -> None:
        if self._failure is not None:
            raise self._failure
        if self._finalized:
            raise ValueError("finalize() was already called")

    def _hold(self, data: bytes | bytearray | memoryview) -> None:
        if type(data) is not bytes:
            data = memoryview(data).cast("B")
            if not (data.readonly and type(data.obj) is bytes):
                data = data.tobytes() if len(data) >= self.coalesce else data
        size = len(data)
        if not size:
            return
        self._heldSize += size
        if size < self.coalesce:
            if self._tail is None:
                self._tail = bytearray()
                self._held.append(self._tail)
            self._tail += data
        else:
            self._tail = None
            self._held.append(data)

    def _take(self, size: int) -> list[Piece]:
        """
        Remove the first C{size} held bytes.
        """
        held = self._held
        self._heldSize -= size
        pieces = []
        while size:
            piece = held[0]
            length = len(piece)
            if length <= size:
                pieces.append(held.popleft())
                size -= length
                if piece is self._tail:
                    self._tail = None
                continue
            view = memoryview(piece)
            pieces.append(view[:size])
            if piece is self._tail:
                # A new buffer: the old one cannot grow while viewed.
                self._tail = held[0] = bytearray(view[size:])
            else:
                held[0] = view[size:]
            break
        return pieces

    def updateSequence(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """
        Take the next part of the stream.

        @return: The output of the segments it completes that are known not
            to be the final one (a full segment is held back until data
            after it arrives), in pieces: joining them would copy them all,
            and a consumer such as a transport takes them one by one.
        """
        self._check()
        self._hold(data)
        out: list[bytes] = []
        while self._heldSize > self._capacity:
            out += self._next(self._take(self._capacity), False)
        return out

    def finalizeSequence(self) -> list[bytes]:
        """
        End the stream.

        @return: The output of its final segment, in pieces.
        """
        self._check()
        self._finalized = True
        return self._next(self._take(self._heldSize), True)

    def update(self, data: bytes | bytearray | memoryview) -> bytes:
        """
        L{updateSequence}, joined.
        """
        return b"".join(self.updateSequence(data))

    def finalize(self) -> bytes:
        """
        L{finalizeSequence}, joined.
        """
        return b"".join(self.finalizeSequence())


class SegmentEncrypter(_Segmenter):
    """
    Encrypt a stream as it arrives.  Together, the outputs of L{update} and
    L{finalize} are what L{encryptSegments} gives for all the data at once.

    Every call does work in proportion to its data (it is all encrypted
    before returning): feed big data in parts.
    """

    # What a segment holds of its input besides its output: plaintext in,
    # so a segment's input is its size less the tag.
    _inputLess = TAG_SIZE

    def _segment(self, pieces: list[Piece], last: bool) -> list[bytes]:
        index = self._index
        if index >= _MAX_SEGMENTS:
            raise ValueError(_tooManySegments(index + 1))
        nonce = self._noncePrefix + _nonceSuffix(index, last)
        if len(pieces) <= 1 or sum(map(len, pieces)) <= self.join:
            return [self._key.aead.encrypt(nonce, b"".join(pieces), self._aad)]
        encryptor = self._key.encryptor(nonce, self._aad)
        out = [encryptor.update(piece) for piece in pieces]
        encryptor.finalize()  # nothing more in GCM, but the tag
        out.append(encryptor.tag)
        return out

    def updateSequence(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """
        Take the next part of the plaintext.

        @return: The ciphertext of the segments completed by it, except one
            that could still be the final segment, in pieces.

        @raise ValueError: Already finalized, or the stream reached 2**32
            segments.
        """
        return super().updateSequence(data)

    def finalizeSequence(self) -> list[bytes]:
        """
        End the stream: encrypt what is left as the final segment (empty if
        nothing is left).

        @return: The final segment, in pieces.

        @raise ValueError: Already finalized, or the stream reached 2**32
            segments.
        """
        return super().finalizeSequence()


class SegmentDecrypter(_Segmenter):
    """
    Decrypt a stream as it arrives, returning plaintext only once its
    segment has been verified.  A full segment is verified only when at
    least one byte after it has arrived, since until then it may be the
    final one.

    After a L{DecryptionError}, every call raises it again; plaintext that
    the failing call had already verified is not returned.

    Every call does work in proportion to its data: feed big data in parts.
    """

    _inputLess = 0  # ciphertext in: a whole segment

    def _segment(self, pieces: list[Piece], last: bool) -> list[bytes]:
        index = self._index
        if index >= _MAX_SEGMENTS:
            raise DecryptionError(_tooManySegments(index + 1))
        size = sum(map(len, pieces))
        if last and size < TAG_SIZE:
            raise DecryptionError(_TRUNCATED)
        nonce = self._noncePrefix + _nonceSuffix(index, last)
        aead = self._key.aead
        try:
            if len(pieces) == 1 or size <= self.join:
                return [aead.decrypt(nonce, b"".join(pieces), self._aad)]
            body, tag = _split(pieces, size - TAG_SIZE)
            decryptor = self._key.decryptor(nonce, self._aad)
            # Held until the tag is checked: unverified plaintext goes nowhere.
            out = [decryptor.update(piece) for piece in body]
            decryptor.finalize_with_tag(tag)
        except InvalidTag:
            segment = b"".join(pieces)
        else:
            return out
        raise _segmentRefusal(aead, self._noncePrefix, self._aad, index, segment, last)

    def updateSequence(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """
        Take the next part of the ciphertext (after the header).

        @return: The plaintext of the segments verified by it, in pieces.

        @raise DecryptionError: A segment does not authenticate, or there
            is data after the final one.
        @raise ValueError: Already finalized.
        """
        return super().updateSequence(data)

    def finalizeSequence(self) -> list[bytes]:
        """
        End the stream: verify its final segment.

        @return: The plaintext of the final segment, in pieces.

        @raise DecryptionError: The stream is truncated, or its last segment
            does not authenticate.
        @raise ValueError: Already finalized.
        """
        return super().finalizeSequence()


@implementer(IConsumer)
class EncryptingConsumer:
    """
    A consumer that encrypts what is written to it and writes the
    ciphertext, after C{header}, to another consumer.

    Each L{write} does work in proportion to its size: all its data is
    encrypted before it returns, so one giant write blocks the reactor for
    as long.  Feed large data from a producer instead, such as
    L{twisted.web.client.FileBodyProducer}, which writes 64 KiB at a time
    from a cooperator: with writes no bigger than a segment, each one
    encrypts at most one segment.
    """

    def __init__(
        self, consumer: IConsumer, encrypter: SegmentEncrypter, header: bytes = b""
    ) -> None:
        """
        @param consumer: Where the header and ciphertext go.
        @param encrypter: Encrypts the stream.
        @param header: Written before the first segment.
        """
        self._consumer = consumer
        self._encrypter = encrypter
        self._header = header

    def _writeHeader(self) -> None:
        if self._header:
            self._consumer.write(self._header)
            self._header = b""

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        """
        Register C{producer} with the wrapped consumer.
        """
        self._consumer.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        """
        Unregister the producer from the wrapped consumer.
        """
        self._consumer.unregisterProducer()

    def write(self, data: bytes) -> None:
        """
        Encrypt C{data}, writing the segments it completes.
        """
        pieces = self._encrypter.updateSequence(data)
        self._writeHeader()
        for piece in pieces:
            self._consumer.write(piece)

    def finish(self) -> None:
        """
        Write the final segment: call once, after the last L{write}.

        @raise ValueError: Called again.
        """
        pieces = self._encrypter.finalizeSequence()
        self._writeHeader()
        for piece in pieces:
            self._consumer.write(piece)


@implementer(IConsumer)
class DecryptingConsumer:
    """
    A consumer that decrypts what is written to it (the segments, the header
    having been read already) and writes the verified plaintext to another
    consumer.

    When a segment does not authenticate, it stops its producer, if one is
    registered, and passes nothing more on: neither that segment nor
    anything after it (nor the segments verified earlier in the same
    write).  L{finish} then raises the error.

    Each L{write} does work in proportion to its size: feed large data from
    a producer writing at most a segment at a time, as for
    L{EncryptingConsumer}.
    """

    def __init__(self, consumer: IConsumer, decrypter: SegmentDecrypter) -> None:
        """
        @param consumer: Where the plaintext goes.
        @param decrypter: Decrypts the stream.
        """
        self._consumer = consumer
        self._decrypter = decrypter
        self._producer: IProducer | None = None
        self._failure: DecryptionError | None = None

    @property
    def failure(self) -> DecryptionError | None:
        """
        Why the stream was refused, if it was.
        """
        return self._failure

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        """
        Register C{producer} with the wrapped consumer, and remember it to
        stop it if the stream turns out not to be authentic.
        """
        self._producer = producer
        self._consumer.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        """
        Unregister the producer from the wrapped consumer.
        """
        self._producer = None
        self._consumer.unregisterProducer()

    def _fail(self, failure: DecryptionError) -> None:
        self._failure = failure
        if self._producer is not None:
            self._producer.stopProducing()

    def write(self, data: bytes) -> None:
        """
        Decrypt C{data}, writing the plaintext of the segments it verifies;
        once a segment fails, drop everything.
        """
        if self._failure is not None:
            return
        try:
            pieces = self._decrypter.updateSequence(data)
        except DecryptionError as e:
            self._fail(e)
            return
        for piece in pieces:
            if piece:
                self._consumer.write(piece)

    def finish(self) -> bytes:
        """
        Verify the final segment and write its plaintext: call once, after
        the last L{write}.

        @return: The plaintext of the final segment (already written).

        @raise DecryptionError: The stream is not authentic: truncated, or a
            segment failed (then it is the error met by L{write}).
        """
        if self._failure is not None:
            raise self._failure
        try:
            pieces = self._decrypter.finalizeSequence()
        except DecryptionError as e:
            self._fail(e)
            raise
        for piece in pieces:
            if piece:
                self._consumer.write(piece)
        return b"".join(pieces)
