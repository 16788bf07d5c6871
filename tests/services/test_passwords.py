"""
Tests for L{txplatform_services.account.passwords}.
"""

from typing import Any

from argon2 import extract_parameters
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import LoopingCall
from twisted.trial.unittest import TestCase

from txplatform_services.account.passwords import Argon2Parameters, PasswordHasher


class PasswordHasherTests(TestCase):
    @inlineCallbacks
    def test_argon2id(self) -> Any:
        """
        Hashes are argon2id with the configured parameters, and verify.
        """
        hasher = PasswordHasher(
            reactor, Argon2Parameters(timeCost=1, memoryCost=1024, parallelism=1)
        )
        encoded = yield hasher.hash("correct horse")
        self.assertTrue(encoded.startswith("$argon2id$"))
        parameters = extract_parameters(encoded)
        self.assertEqual(
            (parameters.time_cost, parameters.memory_cost, parameters.parallelism), (1, 1024, 1)
        )
        self.assertTrue((yield hasher.verify(encoded, "correct horse")))
        self.assertFalse((yield hasher.verify(encoded, "wrong horse")))
        self.assertFalse(hasher.needsRehash(encoded))

    @inlineCallbacks
    def test_default(self) -> Any:
        """
        The default is OWASP's argon2id minimum: 19 MiB, 2 passes, 1 lane.
        """
        hasher = PasswordHasher(reactor)
        encoded = yield hasher.hash("correct horse")
        parameters = extract_parameters(encoded)
        self.assertEqual(
            (parameters.time_cost, parameters.memory_cost, parameters.parallelism), (2, 19456, 1)
        )

    @inlineCallbacks
    def test_rehash(self) -> Any:
        """
        A hash made with other parameters needs rehashing.
        """
        old = yield PasswordHasher(reactor, Argon2Parameters.cheapest()).hash("x" * 10)
        self.assertTrue(PasswordHasher(reactor).needsRehash(old))
        self.assertTrue(PasswordHasher(reactor).needsRehash("not a hash"))

    @inlineCallbacks
    def test_corruptHash(self) -> Any:
        """
        A corrupt stored hash matches nothing, and is reported.
        """
        hasher = PasswordHasher(reactor, Argon2Parameters.cheapest())
        self.assertFalse((yield hasher.verify("$argon2id$garbage", "x")))

    @inlineCallbacks
    def test_verifyNothing(self) -> Any:
        """
        The stand-in verification for unknown users fails, after real work.
        """
        hasher = PasswordHasher(reactor, Argon2Parameters.cheapest())
        self.assertFalse((yield hasher.verifyNothing("anything")))

    @inlineCallbacks
    def test_reactorKeepsTurning(self) -> Any:
        """
        Hashing runs off the reactor thread: timers keep firing meanwhile.
        """
        hasher = PasswordHasher(
            reactor, Argon2Parameters(timeCost=3, memoryCost=65536, parallelism=1)
        )
        ticks = []
        loop = LoopingCall(lambda: ticks.append(reactor.seconds()))
        loop.start(0.005)
        try:
            yield hasher.hash("correct horse")
        finally:
            loop.stop()
        self.assertGreater(len(ticks), 5)
