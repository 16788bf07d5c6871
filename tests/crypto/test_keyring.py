"""
Tests for L{txplatform.crypto.keyring}.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from txplatform.crypto.keyring import SALT, KeyRefused, Keyring, MasterKey, UnknownKeyVersion

SECRET1 = bytes(range(32))
SECRET2 = bytes(range(32, 64))


def keyring(clock: Clock, **kwargs: object) -> Keyring:
    masters = kwargs.pop("masters", [MasterKey(1, SECRET1), MasterKey(2, SECRET2, 100.0)])
    return Keyring("account", masters, clock, period=10.0, **kwargs)  # type: ignore[arg-type]


class RFC5869Tests(SynchronousTestCase):
    """
    The HKDF the keyring derives with is RFC 5869's (its test case 1 and 3).
    """

    def test_case1(self) -> None:
        okm = HKDF(
            SHA256(),
            42,
            salt=bytes.fromhex("000102030405060708090a0b0c"),
            info=bytes.fromhex("f0f1f2f3f4f5f6f7f8f9"),
        ).derive(bytes.fromhex("0b" * 22))
        self.assertEqual(
            okm.hex(),
            "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865",
        )

    def test_case3(self) -> None:
        okm = HKDF(SHA256(), 42, salt=b"", info=b"").derive(bytes.fromhex("0b" * 22))
        self.assertEqual(
            okm.hex(),
            "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8",
        )


class DerivationTests(SynchronousTestCase):
    def test_epochKeyFormula(self) -> None:
        """
        K(v, e) = HKDF-SHA256(master_v, salt=SALT, info="epoch" 0 name 0 BE64(e)).
        """
        ring = keyring(Clock())
        expected = HKDF(
            SHA256(), 32, salt=SALT, info=b"epoch\0account\0" + (7).to_bytes(8, "big")
        ).derive(SECRET1)
        self.assertEqual(ring.epochKey(1, 7), expected)

    def test_keysDiffer(self) -> None:
        """
        Epochs, versions, purposes and columns all give different keys.
        """
        clock = Clock()
        ring = keyring(clock)
        other = Keyring("post", [MasterKey(1, SECRET1)], clock)
        keys = {
            ring.epochKey(1, 1),
            ring.epochKey(1, 2),
            ring.epochKey(2, 1),
            other.epochKey(1, 1),
            ring.indexKey(1, "accounts", "email"),
            ring.indexKey(1, "accounts", "username"),
            ring.indexKey(2, "accounts", "email"),
            other.indexKey(1, "accounts", "email"),
        }
        self.assertEqual(len(keys), 8)

    def test_replicasAgree(self) -> None:
        """
        Two keyrings from the same secrets (two replicas) derive the same
        keys with no coordination.
        """
        a, b = keyring(Clock()), keyring(Clock())
        self.assertEqual(a.epochKey(2, 12345), b.epochKey(2, 12345))
        self.assertEqual(a.indexKey(1, "t", "c"), b.indexKey(1, "t", "c"))


class EpochTests(SynchronousTestCase):
    def test_epochMovesWithTime(self) -> None:
        clock = Clock()
        ring = keyring(clock)
        self.assertEqual(ring.epoch(), 0)
        clock.advance(9.999)
        self.assertEqual(ring.epoch(), 0)
        clock.advance(0.001)
        self.assertEqual(ring.epoch(), 1)
        clock.advance(1000)
        self.assertEqual(ring.epoch(), 101)

    def test_badPeriod(self) -> None:
        self.assertRaises(ValueError, Keyring, "x", [MasterKey(1, SECRET1)], Clock(), period=0)


class VersionTests(SynchronousTestCase):
    def test_activation(self) -> None:
        """
        A version becomes current at its activation time, not before.
        """
        clock = Clock()
        ring = keyring(clock)
        clock.advance(99)
        self.assertEqual(ring.currentVersion(), 1)
        clock.advance(1)
        self.assertEqual(ring.currentVersion(), 2)
        self.assertEqual(ring.versions, [2, 1])

    def test_retired(self) -> None:
        """
        Below the minimum decrypt version, data is refused, saying so.
        """
        ring = keyring(Clock(), minDecryptVersion=2)
        error = self.assertRaises(KeyRefused, ring.check, 1, 0)
        self.assertIn("retired", str(error))
        self.assertEqual(ring.versions, [2])

    def test_unknown(self) -> None:
        ring = keyring(Clock())
        error = self.assertRaises(UnknownKeyVersion, ring.check, 3, 0)
        self.assertEqual(error.version, 3)
        self.assertIn("no master key version 3", str(error))

    def test_replace(self) -> None:
        """
        New key file contents: a new version can be read at once, derived
        keys of the old secrets are forgotten.
        """
        ring = keyring(Clock(), masters=[MasterKey(1, SECRET1)])
        self.assertRaises(UnknownKeyVersion, ring.check, 2, 0)
        ring.replace([MasterKey(1, SECRET1), MasterKey(2, SECRET2)], 1)
        ring.check(2, 0)
        ring.replace([MasterKey(2, SECRET2)], 2)
        self.assertRaises(UnknownKeyVersion, ring.epochKey, 1, 0)

    def test_replaceRefusesNothingUsable(self) -> None:
        ring = keyring(Clock())
        self.assertRaises(ValueError, ring.replace, [MasterKey(1, SECRET1)], 2)
        self.assertRaises(ValueError, ring.replace, [MasterKey(1, SECRET1)] * 2, 1)

    def test_secretLength(self) -> None:
        self.assertRaises(ValueError, MasterKey, 1, b"short")


class PolicyTests(SynchronousTestCase):
    def test_skew(self) -> None:
        """
        Data from a replica whose clock is ahead by less than the tolerated
        skew is read; further in the future, it is refused.
        """
        clock = Clock()
        clock.advance(1000)
        ring = keyring(clock, maxSkew=15.0)  # two epochs of 10 s
        ring.check(1, 100)
        ring.check(1, 102)
        error = self.assertRaises(KeyRefused, ring.check, 1, 103)
        self.assertIn("in the future", str(error))

    def test_oldDataReadable(self) -> None:
        """
        Without a maximum age, data from any past epoch is read.
        """
        clock = Clock()
        clock.advance(10**9)
        keyring(clock).check(1, 0)

    def test_maxAge(self) -> None:
        clock = Clock()
        clock.advance(1000)
        ring = keyring(clock, maxAge=30.0)
        ring.check(1, 97)
        error = self.assertRaises(KeyRefused, ring.check, 1, 96)
        self.assertIn("too old", str(error))
        ring.check(1, 50, maxAge=1000.0)
