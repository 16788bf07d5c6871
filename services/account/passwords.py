# -*- test-case-name: tests.services.test_passwords -*-
"""
Password hashing with argon2id, off the reactor thread.

argon2-cffi releases the GIL while it hashes, so hashing in a thread pool
keeps the reactor serving.  The pool is the hasher's own, one thread per hash
allowed at once (each takes C{memoryCost} KiB and a core): in the reactor's
pool of ten, shared with the database, the hashes wander from thread to
thread and malloc gives each thread's 19 MiB back to the kernel and faults
it in again, about 2 ms of system time a hash (812 page faults a verify
against 163 on two threads of its own, measured).
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Callable

import argon2
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from attrs import frozen
from prometheus_client import Counter
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure

from txplatform.threads import ownThreadPool

__all__ = ["Argon2Parameters", "PasswordHasher", "HASHING_CPU_SECONDS", "HASHINGS"]

#: What argon2id costs, measured where it runs: a login's CPU is mostly
#: this, and how much more it costs under load than alone (memory it
#: contends for with everything else on the machine) shows here.
HASHING_CPU_SECONDS = Counter(
    "account_password_hashing_cpu_seconds",
    "CPU time of the argon2id hashing threads, by operation (hash, verify).",
    ["operation"],
)
HASHINGS = Counter(
    "account_password_hashings",
    "argon2id hashes and verifications done, by operation (hash, verify).",
    ["operation"],
)


@frozen
class Argon2Parameters:
    """
    argon2id cost.  The default is OWASP's minimum (19 MiB, 2 passes, 1
    lane): about 25 ms a hash on a current core.
    """

    timeCost: int = 2
    memoryCost: int = 19456
    parallelism: int = 1

    @classmethod
    def cheapest(cls) -> Argon2Parameters:
        """
        For tests only: as fast as argon2 goes.
        """
        return cls(timeCost=1, memoryCost=8, parallelism=1)


class PasswordHasher:
    """
    Hash and verify passwords in a thread pool of C{concurrency} threads
    (default: one per core), made by C{threadPool} (a name and a size: see
    L{txplatform.catalogue.ServiceParts.threadPool}), started on first use
    and stopped by L{stop} (the Account service's own stop).
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        parameters: Argon2Parameters = Argon2Parameters(),
        concurrency: int | None = None,
        threadPool: Callable[[str, int], Any] = ownThreadPool,
    ) -> None:
        self._reactor = reactor
        self.parameters = parameters
        self._hasher = argon2.PasswordHasher(
            time_cost=parameters.timeCost,
            memory_cost=parameters.memoryCost,
            parallelism=parameters.parallelism,
            type=argon2.Type.ID,
        )
        # The start of a hash made with these parameters, where its salt
        # ends and how long it is: one that has all three needs no rehash,
        # said without argon2-cffi parsing it at every login.  (Other
        # lengths of salt and hash can add up to the same length.)
        self._ours = (
            f"$argon2id$v={argon2.low_level.ARGON2_VERSION}$m={parameters.memoryCost}"
            f",t={parameters.timeCost},p={parameters.parallelism}$"
        )
        self._saltEnds = len(self._ours) + _unpadded(self._hasher.salt_len)
        self._oursLength = self._saltEnds + 1 + _unpadded(self._hasher.hash_len)
        self._threads = concurrency or os.cpu_count() or 2
        self._makePool = threadPool
        self._pool: Any = None
        self._stopped = threading.Event()
        self._dummyHash: str | None = None

    def _inThread(self, operation: str, function: Any, *args: Any) -> Deferred[Any]:
        """
        C{function(*args)} on a hashing thread.  Hashes beyond the threads
        wait in the pool's queue, and a thread done with one takes the next
        at once, without the reactor's turn in between.  One still queued
        when its Deferred is cancelled, or when the hasher stops, is never
        begun: it fails with L{CancelledError}.
        """
        if self._pool is None:
            self._pool = self._makePool("argon2id", self._threads)
            self._stopped = threading.Event()
            self._pool.start()
        stopped = self._stopped
        cancelled = threading.Event()

        def work() -> Any:
            # A stopping process must not wait for every hash its calls
            # queued (a replica's whole prefetch: seconds): the calls not
            # begun go back to the bus, the others finish.
            if cancelled.is_set() or stopped.is_set():
                raise CancelledError(f"{operation} not begun: the hasher stopped")
            return _measured(operation, function, *args)

        result: Deferred[Any] = Deferred(lambda _: cancelled.set())

        def forward(outcome: Any) -> None:
            if not result.called:  # else cancelled: its outcome is moot
                (result.errback if isinstance(outcome, Failure) else result.callback)(outcome)

        deferToThreadPool(self._reactor, self._pool, work).addBoth(forward)
        return result

    def stop(self) -> None:
        """
        Stop the hashing threads after the hashes under way; the queued
        ones fail with L{CancelledError}.  A later hash starts them again.
        """
        if self._pool is not None:
            # A stopped ThreadPool cannot start again: a fresh one if asked.
            pool, self._pool = self._pool, None
            self._stopped.set()
            pool.stop()

    def hash(self, password: str) -> Deferred[str]:
        return self._inThread("hash", self._hasher.hash, password)

    def verify(self, encoded: str, password: str) -> Deferred[bool]:
        """
        Whether C{password} matches C{encoded}; a corrupt hash is logged and
        matches nothing.
        """
        return self._inThread("verify", self._verify, encoded, password)

    def _verify(self, encoded: str, password: str) -> bool:
        try:
            return self._hasher.verify(encoded, password)
        except VerifyMismatchError:
            return False
        except (InvalidHashError, VerificationError):
            self.log.error("A stored password hash is not a valid argon2 hash")
            return False

    def verifyNothing(self, password: str) -> Deferred[bool]:
        """
        Spend the time a real verification takes, and fail: used for unknown
        usernames so timing does not tell which accounts exist.
        """
        return self._inThread("verify", self._verifyNothing, password)

    def _verifyNothing(self, password: str) -> bool:
        if self._dummyHash is None:
            self._dummyHash = self._hasher.hash(os.urandom(16).hex())
        self._verify(self._dummyHash, password)
        return False

    def needsRehash(self, encoded: str) -> bool:
        """
        Whether C{encoded} was made with other parameters than ours.
        """
        if (
            len(encoded) == self._oursLength
            and encoded.startswith(self._ours)
            and encoded[self._saltEnds] == "$"
        ):
            return False
        try:
            return self._hasher.check_needs_rehash(encoded)
        except (InvalidHashError, ValueError):
            return True


def _unpadded(size: int) -> int:
    """
    The length of C{size} bytes in base64 without padding, as argon2 writes
    salts and hashes.
    """
    return (4 * size + 2) // 3


def _measured(operation: str, function: Callable[..., Any], *args: Any) -> Any:
    """
    C{function(*args)} in a hashing thread, its CPU time counted.
    """
    started = time.thread_time()
    try:
        return function(*args)
    finally:
        HASHING_CPU_SECONDS.labels(operation).inc(time.thread_time() - started)
        HASHINGS.labels(operation).inc()
