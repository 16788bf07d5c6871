"""
Tests for L{txplatform_services.account.passwords}.
"""

import threading
from typing import Any

import argon2
from argon2 import extract_parameters
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, gatherResults, inlineCallbacks
from twisted.internet.task import LoopingCall
from twisted.trial.unittest import TestCase

from txplatform_services.account.passwords import (
    HASHING_CPU_SECONDS,
    HASHINGS,
    Argon2Parameters,
    PasswordHasher,
)


class PasswordHasherTests(TestCase):
    def hasher(self, parameters: Argon2Parameters = Argon2Parameters(), **kwargs: Any) -> Any:
        hasher = PasswordHasher(reactor, parameters, **kwargs)
        self.addCleanup(hasher.stop)
        return hasher

    @inlineCallbacks
    def test_argon2id(self) -> Any:
        """
        Hashes are argon2id with the configured parameters, and verify.
        """
        hasher = self.hasher(Argon2Parameters(timeCost=1, memoryCost=1024, parallelism=1))
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
    def test_cpuCounted(self) -> Any:
        """
        Each hash and verification is counted, with the CPU time its thread
        spent on it: at the default cost, milliseconds of it.
        """

        def counted(operation: str) -> tuple[float, float]:
            return (
                HASHINGS.labels(operation)._value.get(),
                HASHING_CPU_SECONDS.labels(operation)._value.get(),
            )

        hasher = self.hasher()
        before = {operation: counted(operation) for operation in ("hash", "verify")}
        encoded = yield hasher.hash("correct horse")
        yield hasher.verify(encoded, "correct horse")
        yield hasher.verify(encoded, "wrong horse")
        yield hasher.verifyNothing("anything")
        for operation, count in [("hash", 1), ("verify", 3)]:
            done, cpu = counted(operation)
            self.assertEqual(done - before[operation][0], count)
            self.assertGreater(cpu - before[operation][1], 0.001 * count)

    @inlineCallbacks
    def test_default(self) -> Any:
        """
        The default is OWASP's argon2id minimum: 19 MiB, 2 passes, 1 lane.
        """
        hasher = self.hasher()
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
        old = yield self.hasher(Argon2Parameters.cheapest()).hash("x" * 10)
        self.assertTrue(self.hasher().needsRehash(old))
        self.assertTrue(self.hasher().needsRehash("not a hash"))
        cheapest = Argon2Parameters.cheapest()
        hasher = self.hasher(cheapest)
        ours = yield hasher.hash("x" * 10)
        self.assertFalse(hasher.needsRehash(ours))
        # The same costs, but a longer salt, or a shorter hash, than ours;
        # or both, to the same length as ours in all.
        for salt, length in [(32, 32), (16, 16), (17, 31), (14, 34)]:
            other = argon2.PasswordHasher(
                time_cost=cheapest.timeCost,
                memory_cost=cheapest.memoryCost,
                parallelism=cheapest.parallelism,
                salt_len=salt,
                hash_len=length,
            ).hash("x" * 10)
            self.assertTrue(other.startswith("$argon2id$v=19$m=8,t=1,p=1$"), other)
            self.assertTrue(hasher.needsRehash(other), other)

    @inlineCallbacks
    def test_corruptHash(self) -> Any:
        """
        A corrupt stored hash matches nothing, and is reported.
        """
        hasher = self.hasher(Argon2Parameters.cheapest())
        self.assertFalse((yield hasher.verify("$argon2id$garbage", "x")))

    @inlineCallbacks
    def test_verifyNothing(self) -> Any:
        """
        The stand-in verification for unknown users fails, after real work.
        """
        hasher = self.hasher(Argon2Parameters.cheapest())
        self.assertFalse((yield hasher.verifyNothing("anything")))

    @inlineCallbacks
    def test_reactorKeepsTurning(self) -> Any:
        """
        Hashing runs off the reactor thread: timers keep firing meanwhile.
        """
        hasher = self.hasher(Argon2Parameters(timeCost=3, memoryCost=65536, parallelism=1))
        ticks = []
        loop = LoopingCall(lambda: ticks.append(reactor.seconds()))
        loop.start(0.005)
        try:
            yield hasher.hash("correct horse")
        finally:
            loop.stop()
        self.assertGreater(len(ticks), 5)

    @inlineCallbacks
    def test_ownThreads(self) -> Any:
        """
        Hashes run on the hasher's own threads, as many as hashes may run at
        once, not on the reactor's pool (where they would wander between
        ten threads, each faulting its 19 MiB in again).
        """
        hasher = self.hasher(Argon2Parameters.cheapest(), concurrency=2)
        names = yield gatherResults(
            [hasher._inThread("hash", lambda: threading.current_thread().name) for _ in range(20)]
        )
        self.assertEqual(len(names), 20)
        self.assertLessEqual(len(set(names)), 2)
        for name in names:
            self.assertIn("argon2id", name)

    @inlineCallbacks
    def test_queuedRunOnThreads(self) -> Any:
        """
        Hashes beyond the threads wait in the pool's queue: a thread done
        with one takes the next itself, without waiting for the reactor
        (which, here, does not turn until the last has run).
        """
        hasher = self.hasher(Argon2Parameters.cheapest(), concurrency=1)
        release, last = threading.Event(), threading.Event()
        ran: list[int] = []
        first = hasher._inThread("hash", lambda: release.wait(5) and ran.append(1))
        rest = [hasher._inThread("hash", ran.append, n) for n in (2, 3)]
        rest.append(hasher._inThread("hash", last.set))
        release.set()
        self.assertTrue(last.wait(5))
        self.assertEqual(ran, [1, 2, 3])
        yield gatherResults([first, *rest])

    @inlineCallbacks
    def test_stopSkipsQueued(self) -> Any:
        """
        L{PasswordHasher.stop} lets the hash under way finish; those still
        queued are never begun and fail with L{CancelledError} (a stopping
        replica does not wait for its whole queue of hashes).
        """
        hasher = self.hasher(Argon2Parameters.cheapest(), concurrency=1)
        started, release = threading.Event(), threading.Event()
        ran: list[int] = []

        def first() -> str:
            started.set()
            release.wait(5)
            ran.append(1)
            return "done"

        under = hasher._inThread("hash", first)
        queued = [hasher._inThread("hash", ran.append, n) for n in (2, 3)]
        self.assertTrue(started.wait(5))
        # stop() blocks this thread until the hash under way is done.
        timer = threading.Timer(0.05, release.set)
        timer.start()
        hasher.stop()
        self.assertEqual(ran, [1])
        self.assertEqual((yield under), "done")
        for d in queued:
            yield self.assertFailure(d, CancelledError)
        self.assertEqual(ran, [1])

    @inlineCallbacks
    def test_cancelQueued(self) -> Any:
        """
        A queued hash whose Deferred is cancelled is never begun; the
        others run.
        """
        hasher = self.hasher(Argon2Parameters.cheapest(), concurrency=1)
        release = threading.Event()
        ran: list[int] = []
        first = hasher._inThread("hash", release.wait, 5)
        cancelled = hasher._inThread("hash", ran.append, 2)
        kept = hasher._inThread("hash", ran.append, 3)
        cancelled.cancel()
        self.failureResultOf(cancelled, CancelledError)
        release.set()
        yield gatherResults([first, kept])
        self.assertEqual(ran, [3])

    @inlineCallbacks
    def test_stop(self) -> Any:
        """
        L{PasswordHasher.stop} ends its threads; a later hash starts them
        again.
        """
        hasher = self.hasher(Argon2Parameters.cheapest(), concurrency=1)

        def argon2Threads() -> list[str]:
            return [t.name for t in threading.enumerate() if "argon2id" in t.name]

        before = len(argon2Threads())
        yield hasher.hash("p")
        self.assertEqual(len(argon2Threads()), before + 1)
        hasher.stop()
        self.assertEqual(len(argon2Threads()), before)
        self.assertTrue((yield hasher.verify((yield hasher.hash("p")), "p")))
        self.assertEqual(len(argon2Threads()), before + 1)

    @inlineCallbacks
    def test_threadsDoNotHoldTheProcess(self) -> Any:
        """
        The hashing threads are daemons: a process that never shuts its
        reactor down still exits.
        """
        hasher = self.hasher(Argon2Parameters.cheapest(), concurrency=1)
        yield hasher.hash("p")
        threads = [t for t in threading.enumerate() if "argon2id" in t.name]
        self.assertTrue(threads)
        self.assertTrue(all(t.daemon for t in threads))
