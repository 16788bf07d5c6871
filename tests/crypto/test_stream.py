"""
Tests for L{txplatform.crypto.stream}.
"""

from __future__ import annotations

from io import BytesIO

from attrs import frozen
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.internet.task import Cooperator
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import FileBodyProducer
from zope.interface import implementer
from zope.interface.verify import verifyObject

from txplatform.crypto import stream
from txplatform.crypto.stream import (
    DEFAULT_SEGMENT_SIZE,
    NONCE_PREFIX_SIZE,
    TAG_SIZE,
    DecryptingConsumer,
    DecryptionError,
    EncryptingConsumer,
    SegmentDecrypter,
    SegmentEncrypter,
    SegmentKey,
    decryptSegments,
    encryptSegments,
    segmentNonce,
)

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))

# Few examples: each one already tries every byte of a stream, or every
# truncation.  The small segments give streams of many segments.
_settings = settings(max_examples=60, deadline=None)


@frozen
class Layout:
    """
    The parameters of one stream, with shortcuts to this module's functions.
    """

    segmentSize: int
    headerLength: int
    aad: bytes = b"aad"
    noncePrefix: bytes = b"prefix!"
    key: bytes = KEY
    # Writes below this size are copied together, larger ones held as they
    # are: 1 holds every write apart, 10**9 copies them all.
    coalesce: int = 16
    # Segments that arrived in pieces and are no larger are joined: 0 uses
    # the incremental cipher for all of them.
    join: int = 0

    @property
    def aead(self) -> AESGCM:
        return AESGCM(self.key)

    def args(self) -> tuple:
        return (self.aead, self.noncePrefix, self.aad, self.headerLength)

    def encrypt(self, plaintext: bytes) -> bytes:
        return encryptSegments(*self.args(), plaintext, self.segmentSize)

    def decrypt(self, ciphertext: bytes) -> bytes:
        return decryptSegments(*self.args(), ciphertext, self.segmentSize)

    def streamArgs(self) -> tuple:
        return (SegmentKey(self.key), self.noncePrefix, self.aad, self.headerLength)

    def encrypter(self) -> SegmentEncrypter:
        encrypter = SegmentEncrypter(*self.streamArgs(), self.segmentSize)
        encrypter.coalesce = self.coalesce
        encrypter.join = self.join
        return encrypter

    def decrypter(self) -> SegmentDecrypter:
        decrypter = SegmentDecrypter(*self.streamArgs(), self.segmentSize)
        decrypter.coalesce = self.coalesce
        decrypter.join = self.join
        return decrypter

    def encryptStreaming(self, pieces: list[bytes]) -> bytes:
        encrypter = self.encrypter()
        return b"".join([encrypter.update(p) for p in pieces]) + encrypter.finalize()

    def decryptStreaming(self, pieces: list[bytes]) -> bytes:
        decrypter = self.decrypter()
        return b"".join([decrypter.update(p) for p in pieces]) + decrypter.finalize()

    def segments(self, ciphertext: bytes) -> list[bytes]:
        """
        Cut a ciphertext into its segments by the documented layout alone.
        """
        first = self.segmentSize - self.headerLength
        result = [ciphertext[:first]]
        for start in range(first, len(ciphertext), self.segmentSize):
            result.append(ciphertext[start : start + self.segmentSize])
        return result


@st.composite
def layouts(draw: st.DrawFn) -> Layout:
    segmentSize = draw(st.integers(48, 100))
    return Layout(
        segmentSize=segmentSize,
        # Up to the largest header that leaves segment 0 one byte.
        headerLength=draw(st.integers(0, segmentSize - TAG_SIZE - 1)),
        aad=draw(st.binary(max_size=20)),
        noncePrefix=draw(st.binary(min_size=NONCE_PREFIX_SIZE, max_size=NONCE_PREFIX_SIZE)),
        coalesce=draw(st.sampled_from([1, 16, 10**9])),
        join=draw(st.sampled_from([0, 50, 10**9])),
    )


def plaintexts(maxSize: int) -> st.SearchStrategy[bytes]:
    """
    Plaintexts of lengths spread evenly up to C{maxSize}: C{st.binary} alone
    favours short ones, of a single segment.
    """
    return st.integers(0, maxSize).flatmap(lambda n: st.binary(min_size=n, max_size=n))


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    """
    Cut C{data} at the given offsets (empty pieces included).
    """
    points = sorted(cuts)
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


def cutsOf(draw: st.DrawFn, data: bytes) -> list[int]:
    return draw(st.lists(st.integers(0, len(data)), max_size=12))


class RefusalMixin:
    def assertRefused(
        self, layout: Layout, ciphertext: bytes, cuts: list[int] | tuple[()] = ()
    ) -> DecryptionError:
        """
        Both ways of decrypting refuse C{ciphertext}, for the same reason.

        @param cuts: Where to cut the ciphertext for the decrypter.
        """
        error = self.assertRaises(DecryptionError, layout.decrypt, ciphertext)
        streamed = self.assertRaises(
            DecryptionError, layout.decryptStreaming, split(ciphertext, list(cuts))
        )
        self.assertEqual(str(streamed), str(error))
        return error


def tamper(data: bytes, position: int, bit: int = 0) -> bytes:
    flipped = bytearray(data)
    flipped[position] ^= 1 << bit
    return bytes(flipped)


# Tink's published AES-GCM-HKDF-Streaming vectors, from tink-crypto/tink-java,
# src/main/java/com/google/crypto/tink/streamingaead/internal/testing/
# AesGcmHkdfStreamingTestUtil.java (commit a21764eebcfc): key, HKDF hash,
# ciphertext segment size, derived key size, plaintext, associated data,
# ciphertext (header included).  All of them have ciphertext offset 0.
TINK_VECTORS = [
    (
        "6eb56cdc726dfbe5d57f2fcdc6e9345b",
        hashes.SHA1,
        64,
        16,
        b"This is a fairly long plaintext. It is of the exact length to create "
        b"three output blocks. ",
        b"aad",
        "18"
        "93b3af5e14ab378d065addfc8484da64"
        "2c0862877baea8"
        "db92d9c77406a406168478821c4298eab3e6d531277f4c1a051714faebcaefcbca7b7be05e9445ea"
        "a0bb2904153398a25084dd80ae0edcd1c3079fcea2cd3770630ee36f7539207b8ec9d754956d486b"
        "71cdf989f0ed6fba6779b63558be0a66e668df14e1603cd2"
        "af8944844078345286d0b292e772e7190775c51a0f83e40c0b75821027e7e538e111",
    ),
    (
        "6eb56cdc726dfbe5d57f2fcdc6e9345b",
        hashes.SHA1,
        64,
        16,
        b"",
        b"",
        "18ec99b2c3884194023bd41bb9bff309205354c750fa0cb3c0d02609abf71f88eaeaa48d7deca27f",
    ),
    (
        "6eb56cdc726dfbe5d57f2fcdc6e9345b",
        hashes.SHA256,
        64,
        16,
        b"",
        b"",
        "18be78bce0cab6fd38a9041eea8ab0ffc4cf17e3c00b661d3927f5f79069f41a210fedc40b25648c",
    ),
    (
        "6eb56cdc726dfbe5d57f2fcdc6e9345b",
        hashes.SHA512,
        64,
        16,
        b"",
        b"",
        "18fec8139ccb406e0f140d7e2bcc41e1b899bc1b121574cc31d1c78ed2ca1cdf324665b8dce21095",
    ),
    (
        "00112233445566778899aabbccddeeff6eb56cdc726dfbe5d57f2fcdc6e9345b",
        hashes.SHA1,
        64,
        16,
        b"",
        b"",
        "180880e85a24207a7b72cefde26306ed09d7d76e58104b751d005a3ffd72dd6151f0d9c8ccf163f7",
    ),
    (
        "00112233445566778899aabbccddeeff6eb56cdc726dfbe5d57f2fcdc6e9345b",
        hashes.SHA1,
        64,
        32,
        b"",
        b"",
        "28fae780c70a82d1256c8303a1261ac6a98cf557b4e173967a62f3c149517ba5b2431da93b3c6e90"
        "f508b34dc14bfda59bab05681c6ad3fa",
    ),
    (
        "00112233445566778899aabbccddeeff6eb56cdc726dfbe5d57f2fcdc6e9345b",
        hashes.SHA1,
        128,
        32,
        b"",
        b"",
        "28fae780c70a82d1256c8303a1261ac6a98cf557b4e173967a62f3c149517ba5b2431da93b3c6e90"
        "f508b34dc14bfda59bab05681c6ad3fa",
    ),
    (
        "00112233445566778899aabbccddeeff6eb56cdc726dfbe5d57f2fcdc6e9345b",
        hashes.SHA1,
        120,
        32,
        b"BLOCK 1.BLOCK 2.BLOCK 3.BLOCK 4.BLOCK 5.BLOCK 6.BLOCK 7.BLOCK 8.",
        bytes([0, 1, 2, 3]),
        "28782994617714a80fa085e15051a16854522330d6d0f26c049b2192f09cdd98b2eb90c753bfff27"
        "7a29e54fa4afb15d648c28477eb07f012535c767f5fdce24ffffae318480c1d37357d6d3c5111593"
        "18afa09ef38aa3f5456fd7817c5c02dd6e1a7fef174c8bd24e38b5982ac105497c0101ac5581fe5b",
    ),
]


def tinkStream(vector: tuple) -> tuple[Layout, bytes, bytes]:
    """
    Tink's key derivation and header, which this module leaves to its
    callers: the header is its own length, the salt and the nonce prefix;
    the segment key is HKDF(ikm=key, salt, info=associated data); GCM
    authenticates no data.

    @return: The stream's layout, its plaintext and its ciphertext without
        the header.
    """
    ikm, hashType, segmentSize, keySize, plaintext, aad, ciphertext = vector
    ciphertext = bytes.fromhex(ciphertext)
    headerLength = ciphertext[0]
    assert headerLength == 1 + keySize + NONCE_PREFIX_SIZE, headerLength
    salt = ciphertext[1 : 1 + keySize]
    key = HKDF(hashType(), keySize, salt, aad).derive(bytes.fromhex(ikm))
    layout = Layout(
        segmentSize=segmentSize,
        headerLength=headerLength,
        aad=b"",
        noncePrefix=ciphertext[1 + keySize : headerLength],
        key=key,
    )
    return layout, plaintext, ciphertext[headerLength:]


class TinkVectorTests(SynchronousTestCase):
    """
    Known answers: Tink's streams, given Tink's key derivation.
    """

    def test_vectors(self) -> None:
        """
        All eight vectors are there, among them a stream of several segments
        and one that fills its segment.
        """
        counts = [len(tinkStream(v)[0].segments(tinkStream(v)[2])) for v in TINK_VECTORS]
        # The last one's plaintext fills segment 0 exactly (64 bytes, not 65
        # as its comment in Tink says), and no empty segment follows it.
        self.assertEqual(counts, [3, 1, 1, 1, 1, 1, 1, 1])
        layout, plaintext, ciphertext = tinkStream(TINK_VECTORS[7])
        self.assertEqual(len(plaintext), layout.segmentSize - layout.headerLength - TAG_SIZE)

    def test_decrypt(self) -> None:
        """
        Both decrypters read Tink's streams, whole or a byte at a time.
        """
        for vector in TINK_VECTORS:
            layout, plaintext, ciphertext = tinkStream(vector)
            self.assertEqual(layout.decrypt(ciphertext), plaintext)
            self.assertEqual(layout.decryptStreaming([ciphertext]), plaintext)
            self.assertEqual(
                layout.decryptStreaming(split(ciphertext, list(range(len(ciphertext))))),
                plaintext,
            )

    def test_encrypt(self) -> None:
        """
        With Tink's salt and nonce prefix, both encrypters give Tink's
        ciphertext byte for byte.
        """
        for vector in TINK_VECTORS:
            layout, plaintext, ciphertext = tinkStream(vector)
            self.assertEqual(layout.encrypt(plaintext), ciphertext)
            self.assertEqual(layout.encryptStreaming([plaintext]), ciphertext)
            self.assertEqual(
                layout.encryptStreaming(split(plaintext, list(range(len(plaintext))))),
                ciphertext,
            )

    def test_tampered(self) -> None:
        """
        A Tink stream with a segment changed is refused, by its index.
        """
        layout, plaintext, ciphertext = tinkStream(TINK_VECTORS[0])
        e = self.assertRaises(DecryptionError, layout.decrypt, tamper(ciphertext, 50))
        self.assertEqual(str(e), "segment 1 does not authenticate")


class LayoutTests(RefusalMixin, SynchronousTestCase):
    """
    The exact layout of segments, on examples.
    """

    layout = Layout(segmentSize=48, headerLength=8)

    def openByHand(self, ciphertext: bytes) -> bytes:
        """
        Decrypt the segments with AES-GCM directly, by the documented nonces.
        """
        segments = self.layout.segments(ciphertext)
        aead = self.layout.aead
        return b"".join(
            aead.decrypt(
                segmentNonce(self.layout.noncePrefix, i, i == len(segments) - 1),
                segment,
                self.layout.aad,
            )
            for i, segment in enumerate(segments)
        )

    def test_nonce(self) -> None:
        """
        The nonce is the prefix, the big-endian index and the final flag.
        """
        self.assertEqual(segmentNonce(b"ABCDEFG", 0x01020304, True), b"ABCDEFG\x01\x02\x03\x04\x01")
        self.assertEqual(segmentNonce(b"ABCDEFG", 7, False), b"ABCDEFG\x00\x00\x00\x07\x00")
        self.assertEqual(
            segmentNonce(b"ABCDEFG", (1 << 32) - 1, False), b"ABCDEFG\xff\xff\xff\xff\x00"
        )

    def test_empty(self) -> None:
        """
        An empty plaintext is one final segment holding only its tag.
        """
        ciphertext = self.layout.encrypt(b"")
        self.assertEqual(len(ciphertext), TAG_SIZE)
        self.assertEqual(self.openByHand(ciphertext), b"")
        self.assertEqual(self.layout.encryptStreaming([]), ciphertext)
        self.assertEqual(self.layout.decrypt(ciphertext), b"")

    def test_sizes(self) -> None:
        """
        Segment 0 fills the segment after the header; the others are full
        segments but the last; a plaintext that fills segments exactly adds
        no empty segment.
        """
        first, rest = 48 - 8 - TAG_SIZE, 48 - TAG_SIZE
        for size, lengths in [
            (1, [17]),
            (first, [40]),
            (first + 1, [40, 17]),
            (first + rest, [40, 48]),
            (first + 2 * rest, [40, 48, 48]),
            (first + 2 * rest + 5, [40, 48, 48, 21]),
        ]:
            plaintext = bytes(range(size))
            ciphertext = self.layout.encrypt(plaintext)
            self.assertEqual([len(s) for s in self.layout.segments(ciphertext)], lengths)
            self.assertEqual(self.openByHand(ciphertext), plaintext)

    def test_aadInEverySegment(self) -> None:
        """
        Every segment authenticates the associated data.
        """
        ciphertext = self.layout.encrypt(bytes(100))
        for i, segment in enumerate(self.layout.segments(ciphertext)):
            last = i == len(self.layout.segments(ciphertext)) - 1
            nonce = segmentNonce(self.layout.noncePrefix, i, last)
            self.layout.aead.decrypt(nonce, segment, b"aad")
            self.assertRaises(InvalidTag, self.layout.aead.decrypt, nonce, segment, b"")

    def test_encrypterHoldsBackFullSegment(self) -> None:
        """
        The encrypter returns a full segment only once more data shows that
        it is not the final one.
        """
        encrypter = self.layout.encrypter()
        self.assertEqual(encrypter.update(bytes(24)), b"")
        first = encrypter.update(b"x")
        self.assertEqual(len(first), 40)
        self.assertEqual(encrypter.update(bytes(31)), b"")
        self.assertEqual(len(encrypter.update(b"y")), 48)
        self.assertEqual(len(encrypter.finalize()), 1 + TAG_SIZE)

    def test_decrypterWaitsForMore(self) -> None:
        """
        The decrypter verifies a full segment only once a byte after it has
        arrived, and returns nothing before.
        """
        plaintext = bytes(range(60))
        ciphertext = self.layout.encrypt(plaintext)
        decrypter = self.layout.decrypter()
        self.assertEqual(decrypter.update(ciphertext[:40]), b"")
        self.assertEqual(decrypter.update(ciphertext[40:41]), plaintext[:24])
        self.assertEqual(decrypter.update(ciphertext[41:88]), b"")
        self.assertEqual(decrypter.update(ciphertext[88:]), plaintext[24:56])
        self.assertEqual(decrypter.finalize(), plaintext[56:])

    def test_bigUpdates(self) -> None:
        """
        An update of many segments returns them all; other bytes-like
        objects are taken too.
        """
        plaintext = bytes(range(256)) * 4
        ciphertext = self.layout.encrypt(plaintext)
        encrypter = self.layout.encrypter()
        self.assertEqual(encrypter.update(bytearray(plaintext)) + encrypter.finalize(), ciphertext)
        self.assertEqual(self.layout.encrypt(memoryview(plaintext)), ciphertext)
        decrypter = self.layout.decrypter()
        self.assertEqual(decrypter.update(memoryview(ciphertext)) + decrypter.finalize(), plaintext)
        self.assertEqual(self.layout.decrypt(memoryview(ciphertext)), plaintext)

    def test_mutableWrites(self) -> None:
        """
        A write is held until its segment is complete, but a C{bytearray}
        (or a view of one) that the caller changes after L{update} does not
        change the stream, small or large.
        """
        plaintext = bytes(range(100))
        ciphertext = self.layout.encrypt(plaintext)
        for coalesce in [1, 10**9]:
            layout = Layout(segmentSize=48, headerLength=8, coalesce=coalesce)
            for source, make, expected in [
                (plaintext, layout.encrypter, ciphertext),
                (ciphertext, layout.decrypter, plaintext),
            ]:
                transform = make()
                first, second = bytearray(source[:20]), bytearray(source[20:])
                out = transform.update(first)
                first[:] = bytes(20)
                out += transform.update(memoryview(second))
                second[:] = bytes(len(second))
                out += transform.finalize()
                self.assertEqual(out, expected)

    def test_piecewise(self) -> None:
        """
        A segment that arrived in several writes comes out in several
        pieces, from L{updateSequence} (joined, from L{update}): the
        ciphertext of each write, then the tag; its plaintext is given only
        once the tag has been checked.
        """
        layout = Layout(segmentSize=48, headerLength=8, coalesce=1)
        plaintext = bytes(range(60))
        ciphertext = layout.encrypt(plaintext)
        encrypter = layout.encrypter()
        self.assertEqual(encrypter.updateSequence(plaintext[:10]), [])
        self.assertEqual(encrypter.updateSequence(plaintext[10:20]), [])
        pieces = encrypter.updateSequence(plaintext[20:30])
        self.assertEqual([len(p) for p in pieces], [10, 10, 4, TAG_SIZE])
        self.assertEqual(b"".join(pieces), ciphertext[:40])
        rest = encrypter.updateSequence(plaintext[30:]) + encrypter.finalizeSequence()
        self.assertEqual(b"".join(pieces + rest), ciphertext)

        decrypter = layout.decrypter()
        self.assertEqual(decrypter.updateSequence(ciphertext[:30]), [])
        # The tag of segment 0 is split between these two writes.
        self.assertEqual(decrypter.updateSequence(ciphertext[30:35]), [])
        pieces = decrypter.updateSequence(ciphertext[35:50])
        self.assertEqual([len(p) for p in pieces], [24])
        self.assertEqual(b"".join(pieces), plaintext[:24])
        self.assertEqual(
            b"".join(decrypter.updateSequence(ciphertext[50:]) + decrypter.finalizeSequence()),
            plaintext[24:],
        )

    def test_defaultSegmentSize(self) -> None:
        """
        Segments are 1 MiB unless said otherwise.
        """
        self.assertEqual(DEFAULT_SEGMENT_SIZE, 1 << 20)
        aead = AESGCM(KEY)
        plaintext = bytes(DEFAULT_SEGMENT_SIZE)
        ciphertext = encryptSegments(aead, b"prefix!", b"", 100, plaintext)
        self.assertEqual(len(ciphertext), DEFAULT_SEGMENT_SIZE + 2 * TAG_SIZE)
        self.assertEqual(
            aead.decrypt(
                segmentNonce(b"prefix!", 0, False), ciphertext[: DEFAULT_SEGMENT_SIZE - 100], b""
            ),
            plaintext[: DEFAULT_SEGMENT_SIZE - 100 - TAG_SIZE],
        )
        self.assertEqual(decryptSegments(aead, b"prefix!", b"", 100, ciphertext), plaintext)

    def test_truncationMessages(self) -> None:
        """
        A stream cut at a segment boundary, or inside a tag's length of one,
        is refused as truncated; cut elsewhere, its last segment does not
        authenticate.
        """
        ciphertext = self.layout.encrypt(bytes(100))
        for length in [0, 15, 40, 40 + 15, 88, 88 + 15]:
            e = self.assertRefused(self.layout, ciphertext[:length])
            self.assertEqual(str(e), "the stream ends without its final segment (truncated)")
        e = self.assertRefused(self.layout, ciphertext[:70])
        self.assertEqual(str(e), "segment 1 does not authenticate")

    def test_appendedMessage(self) -> None:
        """
        Data after a full final segment is named as such.
        """
        ciphertext = self.layout.encrypt(bytes(24 + 32))
        e = self.assertRefused(self.layout, ciphertext + b"x")
        self.assertEqual(str(e), "data after the final segment (segment 1 is final)")

    def test_noBareInvalidTag(self) -> None:
        """
        The error does not carry cryptography's exception along.
        """
        ciphertext = tamper(self.layout.encrypt(bytes(100)), 45)
        e = self.assertRefused(self.layout, ciphertext)
        self.assertEqual(str(e), "segment 1 does not authenticate")
        self.assertIsNone(e.__cause__)
        self.assertTrue(e.__suppress_context__)


class PropertyTests(RefusalMixin, SynchronousTestCase):
    """
    Round trips, and every kind of tampering, on random streams.
    """

    @_settings
    @given(layouts(), plaintexts(400), st.data())
    def test_roundTrip(self, layout: Layout, plaintext: bytes, data: st.DataObject) -> None:
        """
        However the plaintext and the ciphertext are cut, the streaming
        classes and the one-shot functions agree and give the plaintext
        back.
        """
        ciphertext = layout.encrypt(plaintext)
        self.assertEqual(
            layout.encryptStreaming(split(plaintext, cutsOf(data.draw, plaintext))), ciphertext
        )
        self.assertEqual(layout.decrypt(ciphertext), plaintext)
        self.assertEqual(
            layout.decryptStreaming(split(ciphertext, cutsOf(data.draw, ciphertext))), plaintext
        )
        segments = layout.segments(ciphertext)
        self.assertEqual(len(ciphertext), len(plaintext) + TAG_SIZE * len(segments))
        self.assertEqual(
            b"".join(
                layout.aead.decrypt(
                    segmentNonce(layout.noncePrefix, i, i == len(segments) - 1), s, layout.aad
                )
                for i, s in enumerate(segments)
            ),
            plaintext,
        )

    @_settings
    @given(layouts(), plaintexts(250), st.integers(0, 7), st.data())
    def test_bitFlips(
        self, layout: Layout, plaintext: bytes, bit: int, data: st.DataObject
    ) -> None:
        """
        A bit flipped anywhere is detected.
        """
        ciphertext = layout.encrypt(plaintext)
        cuts = cutsOf(data.draw, ciphertext)
        for position in range(len(ciphertext)):
            self.assertRefused(layout, tamper(ciphertext, position, bit), cuts)

    @_settings
    @given(layouts(), plaintexts(300), st.data())
    def test_truncation(self, layout: Layout, plaintext: bytes, data: st.DataObject) -> None:
        """
        Every proper prefix of a stream is refused.
        """
        ciphertext = layout.encrypt(plaintext)
        cuts = cutsOf(data.draw, ciphertext)
        for length in range(len(ciphertext)):
            self.assertRefused(layout, ciphertext[:length], [c for c in cuts if c <= length])

    @_settings
    @given(layouts(), st.binary(min_size=1, max_size=20))
    def test_appended(self, layout: Layout, extra: bytes) -> None:
        """
        Data after the final segment is refused, whether the final segment
        is full or not.
        """
        rest = layout.segmentSize - TAG_SIZE
        full = layout.segmentSize - layout.headerLength - TAG_SIZE + rest
        for plaintext in [bytes(full), bytes(full - 1), b""]:
            self.assertRefused(layout, layout.encrypt(plaintext) + extra)

    @_settings
    @given(layouts(), st.data())
    def test_reordered(self, layout: Layout, data: st.DataObject) -> None:
        """
        Swapping, duplicating or dropping segments is detected.
        """
        rest = layout.segmentSize - TAG_SIZE
        first = layout.segmentSize - layout.headerLength - TAG_SIZE
        plaintext = data.draw(st.binary(min_size=first + 2 * rest + 1, max_size=first + 5 * rest))
        segments = layout.segments(layout.encrypt(plaintext))
        n = len(segments)
        i = data.draw(st.integers(0, n - 2))
        j = data.draw(st.integers(i + 1, n - 1))
        swapped = list(segments)
        swapped[i], swapped[j] = swapped[j], swapped[i]
        self.assertRefused(layout, b"".join(swapped))
        k = data.draw(st.integers(0, n - 1))
        self.assertRefused(layout, b"".join(segments[: k + 1] + segments[k:]))
        self.assertRefused(layout, b"".join(segments[:k] + segments[k + 1 :]))
        self.assertRefused(layout, b"".join(segments[:i] + [segments[j]] + segments[i + 1 :]))

    @_settings
    @given(layouts(), plaintexts(300), st.data())
    def test_spliced(self, layout: Layout, plaintext: bytes, data: st.DataObject) -> None:
        """
        A segment from another stream, at the same place, is detected: the
        other stream has another nonce prefix under the same key, or the
        same prefix under another key.
        """
        segments = layout.segments(layout.encrypt(plaintext))
        otherPrefix = bytes([layout.noncePrefix[0] ^ 1]) + layout.noncePrefix[1:]
        for other in [
            Layout(layout.segmentSize, layout.headerLength, layout.aad, otherPrefix, layout.key),
            Layout(
                layout.segmentSize, layout.headerLength, layout.aad, layout.noncePrefix, OTHER_KEY
            ),
        ]:
            alien = other.segments(other.encrypt(plaintext))
            i = data.draw(st.integers(0, len(segments) - 1))
            self.assertRefused(layout, b"".join(segments[:i] + [alien[i]] + segments[i + 1 :]))
            self.assertRefused(layout, b"".join(alien))

    @_settings
    @given(layouts(), plaintexts(300), st.binary(max_size=20))
    def test_wrongAad(self, layout: Layout, plaintext: bytes, aad: bytes) -> None:
        """
        Other associated data is refused.
        """
        ciphertext = layout.encrypt(plaintext)
        if aad == layout.aad:
            aad += b"!"
        other = Layout(layout.segmentSize, layout.headerLength, aad, layout.noncePrefix)
        self.assertRefused(other, ciphertext)


@implementer(IPushProducer)
class FakeProducer:
    stopped = False

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        self.stopped = True


class ConsumerTests(SynchronousTestCase):
    """
    L{EncryptingConsumer} and L{DecryptingConsumer}.
    """

    layout = Layout(segmentSize=64, headerLength=11)
    header = b"HEADER-----"
    plaintext = bytes(range(256)) * 2

    def encrypt(self) -> tuple[StringTransport, FakeProducer]:
        transport = StringTransport()
        producer = FakeProducer()
        consumer = EncryptingConsumer(transport, self.layout.encrypter(), self.header)
        verifyObject(IConsumer, consumer)
        consumer.registerProducer(producer, True)
        self.assertIs(transport.producer, producer)
        self.assertTrue(transport.streaming)
        for piece in split(self.plaintext, list(range(0, len(self.plaintext), 37))):
            consumer.write(piece)
        consumer.unregisterProducer()
        self.assertIsNone(transport.producer)
        consumer.finish()
        self.assertRaises(ValueError, consumer.finish)
        return transport, producer

    def decrypt(
        self, ciphertext: bytes, pieceSize: int
    ) -> tuple[StringTransport, FakeProducer, DecryptingConsumer]:
        transport = StringTransport()
        producer = FakeProducer()
        consumer = DecryptingConsumer(transport, self.layout.decrypter())
        verifyObject(IConsumer, consumer)
        consumer.registerProducer(producer, False)
        self.assertIs(transport.producer, producer)
        self.assertFalse(transport.streaming)
        for start in range(0, len(ciphertext), pieceSize):
            consumer.write(ciphertext[start : start + pieceSize])
        return transport, producer, consumer

    def test_encrypt(self) -> None:
        """
        The encrypting consumer writes the header, then the segments.
        """
        transport, producer = self.encrypt()
        self.assertEqual(transport.value(), self.header + self.layout.encrypt(self.plaintext))
        self.assertFalse(producer.stopped)

    def test_headerFirst(self) -> None:
        """
        The header comes first even when the stream is too short to fill a
        segment before the end.
        """
        transport = StringTransport()
        consumer = EncryptingConsumer(transport, self.layout.encrypter(), self.header)
        consumer.write(b"hi")
        self.assertEqual(transport.value(), self.header)
        consumer.finish()
        self.assertEqual(transport.value(), self.header + self.layout.encrypt(b"hi"))

    def test_roundTrip(self) -> None:
        """
        What the encrypting consumer writes, the decrypting one turns back
        into the plaintext, whatever the pieces.
        """
        ciphertext = self.encrypt()[0].value()[len(self.header) :]
        for pieceSize in [1, 7, 64, 1000]:
            transport, producer, consumer = self.decrypt(ciphertext, pieceSize)
            tail = consumer.finish()
            self.assertEqual(transport.value(), self.plaintext)
            self.assertTrue(self.plaintext.endswith(tail))
            self.assertNotEqual(tail, b"")
            self.assertFalse(producer.stopped)
            self.assertIsNone(consumer.failure)

    def test_tampered(self) -> None:
        """
        When a segment does not authenticate, the decrypting consumer stops
        its producer, passes nothing on from that segment on, and its
        finish raises the error.
        """
        self.assertTamperedRefused()

    def test_tamperedPiecewise(self) -> None:
        """
        So too when every write is held as a piece of its own: the segment
        that fails was decrypted piece by piece, and none of its pieces
        gets through.
        """
        self.layout = Layout(segmentSize=64, headerLength=11, coalesce=1)
        self.assertTamperedRefused()

    def assertTamperedRefused(self) -> None:
        ciphertext = self.layout.encrypt(self.plaintext)
        first = self.layout.segmentSize - self.layout.headerLength
        tampered = tamper(ciphertext, first + 64 + 10)
        transport, producer, consumer = self.decrypt(tampered, 1)
        self.assertTrue(producer.stopped)
        # Segments 0 and 1 only.
        self.assertEqual(transport.value(), self.plaintext[: first - 16 + 48])
        self.assertEqual(str(consumer.failure), "segment 2 does not authenticate")
        e = self.assertRaises(DecryptionError, consumer.finish)
        self.assertIs(e, consumer.failure)
        self.assertEqual(transport.value(), self.plaintext[: first - 16 + 48])

    def test_truncated(self) -> None:
        """
        A stream cut short is refused at finish, and its producer stopped.
        """
        ciphertext = self.layout.encrypt(self.plaintext)
        transport, producer, consumer = self.decrypt(ciphertext[:-20], 64)
        self.assertFalse(producer.stopped)
        self.assertRaises(DecryptionError, consumer.finish)
        self.assertTrue(producer.stopped)
        self.assertNotEqual(transport.value(), self.plaintext)
        self.assertTrue(self.plaintext.startswith(transport.value()))


class CountingFile(BytesIO):
    """
    A file that counts the bytes read from it.
    """

    count = 0

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        self.count += len(data)
        return data


class _Call:
    def cancel(self) -> None:
        pass


class ProducerTests(SynchronousTestCase):
    """
    The consumers fed by L{FileBodyProducer}, as their documentation says,
    on a cooperator run by hand.
    """

    layout = Layout(segmentSize=256, headerLength=20)
    plaintext = bytes(range(256)) * 20

    def setUp(self) -> None:
        self.calls: list = []
        self.cooperator = Cooperator(
            terminationPredicateFactory=lambda: lambda: True,
            scheduler=lambda f: self.calls.append(f) or _Call(),
        )

    def produce(self, data: bytes, consumer: IConsumer) -> Deferred:
        self.file = CountingFile(data)
        producer = FileBodyProducer(self.file, self.cooperator, readSize=100)
        consumer.registerProducer(producer, True)
        d = producer.startProducing(consumer)
        while self.calls:
            self.calls.pop(0)()
        return d

    def test_roundTrip(self) -> None:
        """
        A file's worth of data goes through both consumers.
        """
        transport = StringTransport()
        encrypting = EncryptingConsumer(transport, self.layout.encrypter(), bytes(20))
        self.successResultOf(self.produce(self.plaintext, encrypting))
        encrypting.unregisterProducer()
        encrypting.finish()
        ciphertext = transport.value()[20:]
        self.assertEqual(ciphertext, self.layout.encrypt(self.plaintext))

        transport = StringTransport()
        decrypting = DecryptingConsumer(transport, self.layout.decrypter())
        self.successResultOf(self.produce(ciphertext, decrypting))
        decrypting.unregisterProducer()
        decrypting.finish()
        self.assertEqual(transport.value(), self.plaintext)

    def test_tampered(self) -> None:
        """
        A tampered segment stops the file's producer: it reads no further,
        and (as documented for a stopped L{FileBodyProducer}) its Deferred
        never fires.
        """
        ciphertext = tamper(self.layout.encrypt(self.plaintext), 1000)
        transport = StringTransport()
        decrypting = DecryptingConsumer(transport, self.layout.decrypter())
        self.assertNoResult(self.produce(ciphertext, decrypting))
        self.assertEqual(self.file.count, 1100)
        self.assertRaises(DecryptionError, decrypting.finish)
        # Segment 3 (bytes 748 to 1003) is bad, found when byte 1004 arrived
        # with the read of bytes 1000 to 1099: segments 0 to 2 got through.
        self.assertEqual(transport.value(), self.plaintext[: 220 + 2 * 240])
        self.assertEqual(str(decrypting.failure), "segment 3 does not authenticate")


class ValidationTests(SynchronousTestCase):
    """
    Parameters that cannot describe a stream are refused.
    """

    def assertAllRefuse(
        self, exception: type[Exception], noncePrefix: bytes, headerLength: int, segmentSize: int
    ) -> None:
        aead = AESGCM(KEY)
        for make in [SegmentEncrypter, SegmentDecrypter]:
            self.assertRaises(
                exception, make, SegmentKey(KEY), noncePrefix, b"", headerLength, segmentSize
            )
        for oneShot in [encryptSegments, decryptSegments]:
            for data in [b"", bytes(100)]:
                self.assertRaises(
                    exception, oneShot, aead, noncePrefix, b"", headerLength, data, segmentSize
                )

    def test_noncePrefix(self) -> None:
        """
        The nonce prefix is seven bytes.
        """
        for prefix in [b"", b"abcdef", b"abcdefgh"]:
            self.assertAllRefuse(ValueError, prefix, 0, 64)
            self.assertRaises(ValueError, segmentNonce, prefix, 0, False)

    def test_headerLength(self) -> None:
        """
        The header length is not negative, and an integer.
        """
        self.assertAllRefuse(ValueError, b"prefix!", -1, 64)
        self.assertAllRefuse(TypeError, b"prefix!", 1.5, 64)

    def test_segmentSize(self) -> None:
        """
        Segment 0 holds at least one byte of plaintext after the header.
        """
        self.assertAllRefuse(ValueError, b"prefix!", 0, TAG_SIZE)
        self.assertAllRefuse(ValueError, b"prefix!", 10, 10 + TAG_SIZE)
        self.assertAllRefuse(TypeError, b"prefix!", 0, 64.0)
        # One byte more is enough.
        layout = Layout(segmentSize=10 + TAG_SIZE + 1, headerLength=10)
        ciphertext = layout.encrypt(b"abc")
        self.assertEqual([len(s) for s in layout.segments(ciphertext)], [17, 18])
        self.assertEqual(layout.decrypt(ciphertext), b"abc")

    def test_segmentIndex(self) -> None:
        """
        A segment index fits 32 bits.
        """
        self.assertRaises(ValueError, segmentNonce, b"prefix!", -1, False)
        self.assertRaises(ValueError, segmentNonce, b"prefix!", 1 << 32, False)

    def test_finalized(self) -> None:
        """
        Nothing more is taken after finalize.
        """
        layout = Layout(segmentSize=48, headerLength=0)
        encrypter = layout.encrypter()
        encrypter.finalize()
        self.assertRaises(ValueError, encrypter.update, b"x")
        self.assertRaises(ValueError, encrypter.finalize)
        decrypter = layout.decrypter()
        decrypter.update(layout.encrypt(b"x"))
        self.assertEqual(decrypter.finalize(), b"x")
        self.assertRaises(ValueError, decrypter.update, b"x")
        self.assertRaises(ValueError, decrypter.finalize)

    def test_failureSticks(self) -> None:
        """
        After refusing a segment, a decrypter refuses everything, even data
        that would have been good.
        """
        layout = Layout(segmentSize=48, headerLength=0)
        ciphertext = layout.encrypt(bytes(100))
        decrypter = layout.decrypter()
        e = self.assertRaises(DecryptionError, decrypter.update, tamper(ciphertext, 0) + b"x")
        self.assertIs(self.assertRaises(DecryptionError, decrypter.update, ciphertext[48:]), e)
        self.assertIs(self.assertRaises(DecryptionError, decrypter.finalize), e)

    def test_tooManySegments(self) -> None:
        """
        A stream holds at most 2**32 segments (lowered to 3 here): more is
        refused when encrypting and when decrypting.
        """
        layout = Layout(segmentSize=48, headerLength=0)
        three, four = bytes(3 * 32), bytes(3 * 32 + 1)
        ciphertexts = layout.encrypt(three), layout.encrypt(four)
        self.patch(stream, "_MAX_SEGMENTS", 3)

        self.assertEqual(layout.encrypt(three), ciphertexts[0])
        self.assertEqual(layout.encryptStreaming([three]), ciphertexts[0])
        self.assertEqual(layout.decrypt(ciphertexts[0]), three)
        self.assertEqual(layout.decryptStreaming([ciphertexts[0]]), three)
        self.assertRaises(ValueError, segmentNonce, b"prefix!", 3, True)

        self.assertRaises(ValueError, layout.encrypt, four)
        self.assertRaises(ValueError, layout.encryptStreaming, [four])
        self.assertRaises(ValueError, layout.encryptStreaming, split(four, list(range(97))))
        self.assertRaises(DecryptionError, layout.decrypt, ciphertexts[1])
        self.assertRaises(DecryptionError, layout.decryptStreaming, [ciphertexts[1]])
