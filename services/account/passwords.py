# -*- test-case-name: tests.services.test_passwords -*-
"""
Password hashing with argon2id, off the reactor thread.

argon2-cffi releases the GIL while it hashes, so hashing in a thread pool
keeps the reactor serving; a semaphore bounds how many hashes run at once,
since each takes C{memoryCost} KiB and a core.
"""

from __future__ import annotations

import os
from typing import Any

import argon2
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from attrs import frozen
from twisted.internet.defer import Deferred, DeferredSemaphore
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

__all__ = ["Argon2Parameters", "PasswordHasher"]


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
    Hash and verify passwords in C{reactor}'s thread pool.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        parameters: Argon2Parameters = Argon2Parameters(),
        concurrency: int | None = None,
    ) -> None:
        self._reactor = reactor
        self.parameters = parameters
        self._hasher = argon2.PasswordHasher(
            time_cost=parameters.timeCost,
            memory_cost=parameters.memoryCost,
            parallelism=parameters.parallelism,
            type=argon2.Type.ID,
        )
        self._semaphore = DeferredSemaphore(concurrency or os.cpu_count() or 2)
        self._dummyHash: str | None = None

    def _inThread(self, function: Any, *args: Any) -> Deferred[Any]:
        return self._semaphore.run(
            deferToThreadPool, self._reactor, self._reactor.getThreadPool(), function, *args
        )

    def hash(self, password: str) -> Deferred[str]:
        return self._inThread(self._hasher.hash, password)

    def verify(self, encoded: str, password: str) -> Deferred[bool]:
        """
        Whether C{password} matches C{encoded}; a corrupt hash is logged and
        matches nothing.
        """
        return self._inThread(self._verify, encoded, password)

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
        return self._inThread(self._verifyNothing, password)

    def _verifyNothing(self, password: str) -> bool:
        if self._dummyHash is None:
            self._dummyHash = self._hasher.hash(os.urandom(16).hex())
        self._verify(self._dummyHash, password)
        return False

    def needsRehash(self, encoded: str) -> bool:
        """
        Whether C{encoded} was made with other parameters than ours.
        """
        try:
            return self._hasher.check_needs_rehash(encoded)
        except (InvalidHashError, ValueError):
            return True
