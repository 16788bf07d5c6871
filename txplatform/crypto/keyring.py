# -*- test-case-name: tests.crypto.test_keyring -*-
"""
Keyrings: versioned master secrets and the keys derived from them.

A keyring holds a few master secret versions, each with the moment it
becomes the one to encrypt with.  Working keys are derived, never stored:

    K(v, e)           = HKDF-SHA256(master_v, salt=SALT, info="epoch" 0 name 0 BE64(e))
    K_idx(v, t, c)    = HKDF-SHA256(master_v, salt=SALT, info="index" 0 name 0 t 0 c)

where C{e = floor(now / period)} is the time epoch.  Every replica holding
the same key file computes the same current key with no coordination, and
the key in use moves on every period while the service runs.  A reader
derives the key of whatever (version, epoch) a header names, so an epoch
boundary never breaks data in flight, and data written years ago stays
readable as long as its master version is kept.

Index keys (for blind indexes) depend on the version only: an index that
changed every epoch could not be looked up.
"""

from __future__ import annotations

import hmac
import math
import struct
from functools import lru_cache
from typing import Iterable, Mapping

from attrs import field, frozen
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from twisted.internet.interfaces import IReactorTime

__all__ = [
    "SALT",
    "KeyRefused",
    "UnknownKeyVersion",
    "MasterKey",
    "Keyring",
]

#: Domain separation for everything this module derives.
SALT = b"txplatform/keyring/v1"

_BE64 = struct.Struct(">Q")


class KeyRefused(Exception):
    """
    Data under a key the policy does not accept (retired version, an epoch
    from the future or too old).  The message says which and why.
    """


class UnknownKeyVersion(KeyRefused):
    """
    Data under a master version this keyring does not hold: written by a
    replica with a newer key file, or with a version since retired.
    """

    def __init__(self, name: str, version: int) -> None:
        super().__init__(f"keyring {name!r} has no master key version {version}")
        self.version = version


def _secret(value: bytes) -> bytes:
    if len(value) != 32:
        raise ValueError(f"a master secret is 32 bytes, not {len(value)}")
    return bytes(value)


@frozen
class MasterKey:
    """
    One master secret version.

    @ivar activatesAt: When (epoch seconds) this version becomes the one to
        encrypt with, if it is the newest active one: set a little in the
        future on rotation, so that every replica has loaded it before any
        replica writes with it.
    """

    version: int
    secret: bytes = field(converter=_secret, repr=False)
    activatesAt: float = 0.0


def _derive(secret: bytes, info: bytes) -> bytes:
    return HKDF(SHA256(), 32, salt=SALT, info=info).derive(secret)


class Keyring:
    """
    The master versions of one purpose (a service's data at rest, or the
    bus) and the policy for reading.

    @param name: What the keys are for (C{"account"}, C{"bus"}): bound into
        every derived key, so two keyrings never share a working key even
        with the same secret.
    @param period: Length of an epoch, in seconds.
    @param minDecryptVersion: Versions below it are refused (retired).
    @param maxSkew: Clock difference between replicas tolerated: data from
        at most this far in the future is accepted.
    @param maxAge: When set, data from epochs older than this many seconds
        is refused (for messages; data at rest has no age limit).
    """

    def __init__(
        self,
        name: str,
        masters: Iterable[MasterKey],
        clock: IReactorTime,
        period: float = 3600.0,
        minDecryptVersion: int = 1,
        maxSkew: float = 60.0,
        maxAge: float | None = None,
    ) -> None:
        if period <= 0:
            raise ValueError(f"the epoch period must be positive, not {period}")
        self.name = name
        self.clock = clock
        self.period = float(period)
        self.maxSkew = maxSkew
        self.maxAge = maxAge
        self._nameBytes = name.encode("utf-8")
        self._masters: Mapping[int, MasterKey] = {}
        self.minDecryptVersion = minDecryptVersion
        self.replace(masters, minDecryptVersion)

    def replace(self, masters: Iterable[MasterKey], minDecryptVersion: int) -> None:
        """
        Take a new set of versions (the key file changed).
        """
        byVersion = {}
        for master in masters:
            if master.version in byVersion:
                raise ValueError(f"keyring {self.name!r}: version {master.version} given twice")
            if master.version < 1 or master.version >= 2**32:
                raise ValueError(f"keyring {self.name!r}: bad version {master.version}")
            byVersion[master.version] = master
        for version, master in byVersion.items():
            known = self._masters.get(version)
            if known is not None and known.secret != master.secret:
                # Data sealed under the old secret would become unreadable,
                # and blind indexes would stop matching (uniqueness lost).
                raise ValueError(
                    f"keyring {self.name!r}: the secret of version {version} changed; a"
                    " version's secret never changes (rotate to a new version instead)"
                )
        usable = [v for v in byVersion if v >= minDecryptVersion]
        if not usable:
            raise ValueError(
                f"keyring {self.name!r} holds no version at or above {minDecryptVersion}"
            )
        self._masters = byVersion
        self.minDecryptVersion = minDecryptVersion
        self._readable = sorted((v for v in byVersion if v >= minDecryptVersion), reverse=True)
        #: Bumped on every change, so that users of derived keys can tell.
        self.generation = getattr(self, "generation", 0) + 1
        self._epochKey.cache_clear()
        self._indexKey.cache_clear()

    # Time

    def epoch(self, now: float | None = None) -> int:
        """
        The epoch number at C{now} (default: the clock's time).
        """
        if now is None:
            now = self.clock.seconds()
        return int(now // self.period)

    # Versions

    @property
    def versions(self) -> list[int]:
        """
        The versions this keyring can read, newest first.
        """
        return list(self._readable)

    def currentVersion(self, now: float | None = None) -> int:
        """
        The version to encrypt with: the newest one already active.
        """
        if now is None:
            now = self.clock.seconds()
        for version in self._readable:
            if self._masters[version].activatesAt <= now:
                return version
        # Before any activation time (a clock far behind): the oldest.
        return self._readable[-1]

    def nextChange(self, now: float) -> float:
        """
        When the key to encrypt with next changes: the next epoch boundary,
        or a version's activation if sooner.
        """
        boundary = (self.epoch(now) + 1) * self.period
        pending = [m.activatesAt for m in self._masters.values() if m.activatesAt > now]
        return min([boundary, *pending])

    def master(self, version: int) -> MasterKey:
        """
        @raise UnknownKeyVersion: Not held.
        @raise KeyRefused: Retired.
        """
        try:
            master = self._masters[version]
        except KeyError:
            raise UnknownKeyVersion(self.name, version) from None
        if version < self.minDecryptVersion:
            raise KeyRefused(
                f"keyring {self.name!r}: version {version} is retired"
                f" (versions below {self.minDecryptVersion} are refused)"
            )
        return master

    # Keys

    def epochKey(self, version: int, epoch: int) -> bytes:
        """
        K(version, epoch), with no policy check (see L{check}).
        """
        return self._epochKey(version, epoch)

    def indexKey(self, version: int, table: str, column: str) -> bytes:
        """
        The blind-index key of a column under a master version.
        """
        return self._indexKey(version, table, column)

    @lru_cache(maxsize=256)  # noqa: B019 - one keyring per process and purpose
    def _epochKey(self, version: int, epoch: int) -> bytes:
        secret = self.master(version).secret
        return _derive(secret, b"epoch\0" + self._nameBytes + b"\0" + _BE64.pack(epoch))

    @lru_cache(maxsize=256)  # noqa: B019
    def _indexKey(self, version: int, table: str, column: str) -> bytes:
        secret = self.master(version).secret
        info = b"\0".join([b"index", self._nameBytes, table.encode(), column.encode()])
        return _derive(secret, info)

    def checkValue(self, version: int) -> bytes:
        """
        A value that tells this version's secret from any other without
        revealing it (an HMAC of a constant under a key of its own), which
        a database keeps to refuse other keys for its data.
        """
        secret = self.master(version).secret
        key = _derive(secret, b"check\0" + self._nameBytes)
        return hmac.new(key, b"txplatform key check", "sha256").digest()

    # Policy

    def check(self, version: int, epoch: int, maxAge: float | None = None) -> None:
        """
        Refuse data the policy does not accept.

        @param maxAge: Overrides the keyring's own maximum age.
        @raise UnknownKeyVersion: The version is not held.
        @raise KeyRefused: Retired version, an epoch from the future (beyond
            the tolerated skew) or older than the maximum age.
        """
        self.master(version)
        now = self.clock.seconds()
        current = self.epoch(now)
        if epoch > current + math.ceil(self.maxSkew / self.period):
            raise KeyRefused(
                f"keyring {self.name!r}: epoch {epoch} is in the future (now {current},"
                f" {self.maxSkew:g}s of clock skew tolerated)"
            )
        if maxAge is None:
            maxAge = self.maxAge
        if maxAge is not None and epoch < current - math.ceil(maxAge / self.period):
            raise KeyRefused(
                f"keyring {self.name!r}: epoch {epoch} is too old (now {current},"
                f" at most {maxAge:g}s accepted)"
            )
