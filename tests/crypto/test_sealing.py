"""
Tests for L{txplatform.crypto.sealing}.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from txplatform.crypto.keyring import KeyRefused, Keyring, MasterKey, UnknownKeyVersion
from txplatform.crypto.sealing import HEADER_SIZE, DecryptionError, Header, Sealer

SECRET1 = bytes(range(32))
SECRET2 = bytes(range(100, 132))


def sealer(clock: Clock, *masters: MasterKey, segmentSize: int = 256, **kwargs: object) -> Sealer:
    ring = Keyring(
        "test",
        masters or [MasterKey(1, SECRET1)],
        clock,
        period=10.0,
        **kwargs,  # type: ignore[arg-type]
    )
    return Sealer(ring, segmentSize=segmentSize)


class RecordTests(SynchronousTestCase):
    def test_roundTrip(self) -> None:
        s = sealer(Clock())
        for size in [0, 1, 100, 255 - HEADER_SIZE - 16, 256, 1000, 5000]:
            data = bytes(range(256)) * (size // 256) + bytes(size % 256)
            sealed = s.seal(data, b"ctx")
            self.assertEqual(s.open(sealed, b"ctx"), data)
            if size >= 64:
                self.assertNotIn(data[:64], sealed)

    def test_headerSaysVersionAndEpoch(self) -> None:
        clock = Clock()
        clock.advance(12345)
        s = sealer(clock, MasterKey(1, SECRET1), MasterKey(2, SECRET2))
        header = Header.parse(s.seal(b"x", b""))
        self.assertEqual((header.version, header.epoch), (2, 1234))

    def test_everySealDiffers(self) -> None:
        """
        The same plaintext sealed twice gives unrelated ciphertexts (new
        nonce prefix each time, same session).
        """
        s = sealer(Clock())
        a, b = s.seal(b"same", b"c"), s.seal(b"same", b"c")
        self.assertNotEqual(a, b)
        self.assertEqual(Header.parse(a).salt, Header.parse(b).salt)
        self.assertNotEqual(Header.parse(a).prefix, Header.parse(b).prefix)

    def test_contextBound(self) -> None:
        """
        A record moved to another context (row, column, message) fails.
        """
        s = sealer(Clock())
        sealed = s.seal(b"secret", b"accounts\0email\0row1")
        error = self.assertRaises(DecryptionError, s.open, sealed, b"accounts\0email\0row2")
        self.assertIn("does not authenticate", str(error))

    def test_headerTampering(self) -> None:
        """
        Every header byte is authenticated: a change anywhere in it fails
        (or names an unknown format or version).
        """
        s = sealer(Clock())
        sealed = s.seal(b"secret", b"")
        for i in range(HEADER_SIZE):
            tampered = bytearray(sealed)
            tampered[i] ^= 0x01
            self.assertRaises((DecryptionError, KeyRefused), s.open, bytes(tampered), b"")

    def test_tooShort(self) -> None:
        error = self.assertRaises(DecryptionError, sealer(Clock()).open, b"\x01\x01abc", b"")
        self.assertIn("too short", str(error))

    def test_unknownFormat(self) -> None:
        s = sealer(Clock())
        sealed = bytearray(s.seal(b"x", b""))
        sealed[0] = 9
        error = self.assertRaises(DecryptionError, s.open, bytes(sealed), b"")
        self.assertIn("unknown ciphertext format 9", str(error))

    @settings(max_examples=60, deadline=None)
    @given(st.binary(max_size=700), st.data())
    def test_anyBitFlip(self, data: bytes, draw: st.DataObject) -> None:
        s = sealer(Clock(), segmentSize=128)
        sealed = s.seal(data, b"ctx")
        bit = draw.draw(st.integers(0, len(sealed) * 8 - 1))
        tampered = bytearray(sealed)
        tampered[bit // 8] ^= 1 << (bit % 8)
        self.assertRaises((DecryptionError, KeyRefused), s.open, bytes(tampered), b"ctx")

    @settings(max_examples=40, deadline=None)
    @given(st.binary(max_size=700), st.data())
    def test_anyTruncation(self, data: bytes, draw: st.DataObject) -> None:
        s = sealer(Clock(), segmentSize=128)
        sealed = s.seal(data, b"ctx")
        cut = draw.draw(st.integers(0, len(sealed) - 1))
        self.assertRaises(DecryptionError, s.open, sealed[:cut], b"ctx")


class EpochTests(SynchronousTestCase):
    def test_keysMoveOn(self) -> None:
        """
        Each epoch seals under a new key (a new session), and what was
        sealed epochs ago still opens.
        """
        clock = Clock()
        s = sealer(clock)
        old = s.seal(b"old", b"")
        clock.advance(10)
        new = s.seal(b"new", b"")
        self.assertEqual(Header.parse(old).epoch + 1, Header.parse(new).epoch)
        self.assertNotEqual(Header.parse(old).salt, Header.parse(new).salt)
        clock.advance(10**6)
        self.assertEqual(s.open(old, b""), b"old")
        self.assertEqual(s.open(new, b""), b"new")

    def test_skewedReplicas(self) -> None:
        """
        A replica whose clock is ahead (within the tolerated skew) writes
        under a later epoch; the others read it.
        """
        behind, ahead = Clock(), Clock()
        behind.advance(1000)
        ahead.advance(1015)
        writer = sealer(ahead, maxSkew=20.0)
        reader = sealer(behind, maxSkew=20.0)
        self.assertEqual(reader.open(writer.seal(b"x", b""), b""), b"x")
        ahead.advance(100)
        error = self.assertRaises(KeyRefused, reader.open, writer.seal(b"y", b""), b"")
        self.assertIn("in the future", str(error))

    def test_maxAge(self) -> None:
        clock = Clock()
        s = sealer(clock)
        sealed = s.seal(b"x", b"")
        clock.advance(100)
        s.open(sealed, b"", maxAge=200)
        error = self.assertRaises(KeyRefused, s.open, sealed, b"", maxAge=30)
        self.assertIn("too old", str(error))


class VersionTests(SynchronousTestCase):
    def test_rotation(self) -> None:
        """
        After a new version activates, new data is sealed under it, and data
        under the old one still opens until that version is retired.
        """
        clock = Clock()
        s = sealer(clock, MasterKey(1, SECRET1), MasterKey(2, SECRET2, activatesAt=50.0))
        old = s.seal(b"old", b"")
        clock.advance(50)
        new = s.seal(b"new", b"")
        self.assertEqual([Header.parse(x).version for x in (old, new)], [1, 2])
        self.assertEqual(s.open(old, b""), b"old")
        s.keyring.replace([MasterKey(2, SECRET2)], 2)
        s.clearCache()
        self.assertRaises(UnknownKeyVersion, s.open, old, b"")
        self.assertEqual(s.open(new, b""), b"new")

    def test_unknownVersion(self) -> None:
        clock = Clock()
        writer = sealer(clock, MasterKey(1, SECRET1), MasterKey(2, SECRET2))
        reader = sealer(clock, MasterKey(1, SECRET1))
        error = self.assertRaises(UnknownKeyVersion, reader.open, writer.seal(b"x", b""), b"")
        self.assertEqual(error.version, 2)

    def test_otherSecret(self) -> None:
        """
        Same version number, another secret (another cluster's key file):
        not authentic.
        """
        clock = Clock()
        a = sealer(clock, MasterKey(1, SECRET1))
        b = sealer(clock, MasterKey(1, SECRET2))
        self.assertRaises(DecryptionError, b.open, a.seal(b"x", b""), b"")


class StreamTests(SynchronousTestCase):
    def test_streamRoundTrip(self) -> None:
        """
        A stream sealed piece by piece opens piece by piece, and its bytes
        open as a record too.
        """
        s = sealer(Clock(), segmentSize=100)
        header, encrypter = s.encrypter(b"file")
        data = bytes(range(256)) * 20
        out = [header]
        for i in range(0, len(data), 77):
            out.append(encrypter.update(data[i : i + 77]))
        out.append(encrypter.finalize())
        sealed = b"".join(out)
        self.assertEqual(s.open(sealed, b"file"), data)
        decrypter = s.decrypter(sealed[:HEADER_SIZE], b"file")
        got = [decrypter.update(sealed[i : i + 50]) for i in range(HEADER_SIZE, len(sealed), 50)]
        got.append(decrypter.finalize())
        self.assertEqual(b"".join(got), data)

    def test_spliceBetweenStreams(self) -> None:
        """
        Segments of two streams of one session (same key, other prefixes)
        cannot be swapped.
        """
        s = sealer(Clock(), segmentSize=100)
        a = s.seal(bytes(300), b"")
        b = s.seal(bytes(300), b"")
        spliced = a[:100] + b[100:200] + a[200:]
        self.assertRaises(DecryptionError, s.open, spliced, b"")
        self.assertEqual(s.open(a, b""), bytes(300))
