# -*- test-case-name: tests.crypto.test_keyfile -*-
"""
Key files: where a keyring's master secrets live.

A key file is JSON, readable by its owner only::

    {
      "format": "txplatform-keys/1",
      "name": "account",
      "period": 3600,
      "max_skew": 60,
      "max_age": null,
      "min_decrypt_version": 1,
      "versions": [
        {"version": 1, "secret": "<32 bytes, base64>", "activates_at": 0}
      ]
    }

Every replica of a service reads the same file (a Docker or Kubernetes
secret).  A key source is a path, or C{env:NAME} for the same JSON in an
environment variable.  L{KeyringService} reads the file again when it
changes, so a rotation reaches running replicas without a restart.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import secrets
import stat
from typing import Any

from twisted.application.internet import TimerService
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from ..filewatch import fileStamp
from .keyring import Keyring, MasterKey

__all__ = [
    "FORMAT",
    "KeyFileError",
    "KeyFile",
    "newKeyFile",
    "readKeySource",
    "readSecretSource",
    "writeKeyFile",
    "writeSecretFile",
    "ensureKeyFile",
    "keyringFromSource",
    "KeyringService",
]

FORMAT = "txplatform-keys/1"


class KeyFileError(Exception):
    """
    A key file that cannot be used; the message says why.
    """


class KeyFile:
    """
    The parsed contents of a key file.
    """

    def __init__(
        self,
        name: str,
        versions: list[MasterKey],
        period: float = 3600.0,
        maxSkew: float = 60.0,
        maxAge: float | None = None,
        minDecryptVersion: int = 1,
    ) -> None:
        self.name = name
        self.versions = versions
        self.period = period
        self.maxSkew = maxSkew
        self.maxAge = maxAge
        self.minDecryptVersion = minDecryptVersion

    @classmethod
    def fromJSON(cls, text: str, where: str) -> KeyFile:
        try:
            data = json.loads(text)
        except ValueError as e:
            raise KeyFileError(f"{where} is not JSON: {e}") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise KeyFileError(f"{where} is not a key file (its format is not {FORMAT!r})")
        try:
            versions = [
                MasterKey(
                    int(v["version"]),
                    base64.b64decode(v["secret"], validate=True),
                    float(v.get("activates_at", 0)),
                )
                for v in data["versions"]
            ]
            keyFile = cls(
                name=str(data["name"]),
                versions=versions,
                period=float(data.get("period", 3600)),
                maxSkew=float(data.get("max_skew", 60)),
                maxAge=None if data.get("max_age") is None else float(data["max_age"]),
                minDecryptVersion=int(data.get("min_decrypt_version", 1)),
            )
        except (KeyError, TypeError, ValueError, binascii.Error) as e:
            raise KeyFileError(f"{where}: {type(e).__name__}: {e}") from None
        if keyFile.period <= 0:
            raise KeyFileError(f"{where}: the period must be positive")
        return keyFile

    def toJSON(self) -> str:
        return json.dumps(
            {
                "format": FORMAT,
                "name": self.name,
                "period": self.period,
                "max_skew": self.maxSkew,
                "max_age": self.maxAge,
                "min_decrypt_version": self.minDecryptVersion,
                "versions": [
                    {
                        "version": m.version,
                        "secret": base64.b64encode(m.secret).decode("ascii"),
                        "activates_at": m.activatesAt,
                    }
                    for m in sorted(self.versions, key=lambda m: m.version)
                ],
            },
            indent=2,
        )

    def keyring(self, clock: IReactorTime) -> Keyring:
        try:
            return Keyring(
                self.name,
                self.versions,
                clock,
                period=self.period,
                minDecryptVersion=self.minDecryptVersion,
                maxSkew=self.maxSkew,
                maxAge=self.maxAge,
            )
        except ValueError as e:
            raise KeyFileError(str(e)) from None

    # Changes

    def rotated(self, activatesAt: float) -> KeyFile:
        """
        With a new version, to encrypt with from C{activatesAt} on.
        """
        newest = max((m.version for m in self.versions), default=0)
        master = MasterKey(newest + 1, secrets.token_bytes(32), activatesAt)
        return KeyFile(
            self.name,
            [*self.versions, master],
            self.period,
            self.maxSkew,
            self.maxAge,
            self.minDecryptVersion,
        )

    def retired(self, below: int) -> KeyFile:
        """
        Without the versions below C{below}: their secrets are gone.
        """
        kept = [m for m in self.versions if m.version >= below]
        if not kept:
            raise KeyFileError(f"retiring every version below {below} would leave none")
        return KeyFile(self.name, kept, self.period, self.maxSkew, self.maxAge, below)


def newKeyFile(name: str, period: float = 3600.0, maxAge: float | None = None) -> KeyFile:
    """
    A key file with one fresh version, active at once.
    """
    return KeyFile(name, [MasterKey(1, secrets.token_bytes(32), 0.0)], period, maxAge=maxAge)


def readKeySource(source: str) -> KeyFile:
    """
    Read a key file from a path, or from C{env:NAME}.

    @raise KeyFileError: Missing, unreadable, readable by others, or not a
        key file.
    """
    text, label = readSecretSource(source, "key file")
    return KeyFile.fromJSON(text, label)


def readSecretSource(source: str, what: str) -> tuple[str, str]:
    """
    Read a secret's text from a path, refusing a file of ours that others
    can read, or from C{env:NAME}.

    @param what: What the secret is, for messages ("key file").

    @return: The text, and a label for messages (the path, or C{$NAME}).

    @raise KeyFileError: Missing, unreadable, or readable by others.
    """
    if source.startswith("env:"):
        name = source[4:]
        text = os.environ.get(name)
        if text is None:
            raise KeyFileError(f"the environment variable {name} is not set")
        return text, f"${name}"
    try:
        with open(source, encoding="utf-8") as f:
            st = os.fstat(f.fileno())
            text = f.read()
    except OSError as e:
        raise KeyFileError(f"cannot read the {what} {source}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise KeyFileError(f"the {what} {source} is not UTF-8 text") from None
    mode = st.st_mode
    # Only our own files: a secret mounted by the platform (Kubernetes,
    # Docker) belongs to it, with the mode it chose.
    ours = st.st_uid == os.getuid() and not _mountedSecret(source)
    if ours and mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(
            f"the {what} {source} is readable by others (mode {stat.S_IMODE(mode):o}); chmod 600 it"
        )
    return text, source


def _mountedSecret(path: str) -> bool:
    # Kubernetes mounts secrets through a symlink into a ..data directory,
    # with a mode the pod spec sets (defaultMode): trust the platform there.
    return os.path.islink(path) and "..data" in os.path.realpath(path)


def writeKeyFile(path: str, keyFile: KeyFile) -> None:
    """
    Write atomically (replace), with mode 0600 from the start.
    """
    writeSecretFile(path, keyFile.toJSON())


def writeSecretFile(path: str, text: str) -> None:
    """
    Write C{text} to C{path} atomically (replace), with mode 0600 from the
    start, in a directory created 0700 if missing.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, mode=0o700, exist_ok=True)
    # A new name, opened only if nothing (not even a link planted there)
    # has it: the secret goes to a file of ours, never through a link.
    temporary = f"{path}.{os.urandom(6).hex()}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def ensureKeyFile(path: str, name: str, period: float = 3600.0) -> KeyFile:
    """
    Read the key file at C{path}, creating it first if there is none (the
    embedded mode's first start).
    """
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
        try:
            fd = os.open(path + ".lock", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # someone else is creating it
        else:
            try:
                if not os.path.exists(path):
                    writeKeyFile(path, newKeyFile(name, period))
            finally:
                os.close(fd)
                os.unlink(path + ".lock")
    return readKeySource(path)


def keyringFromSource(source: str, clock: IReactorTime, name: str | None = None) -> Keyring:
    """
    @param name: The purpose the keyring must be for: a key file for
        another purpose is refused (a wrong --keys argument).
    """
    keyFile = readKeySource(source)
    if name is not None and keyFile.name != name:
        raise KeyFileError(f"{source} holds the keys of {keyFile.name!r}, not of {name!r}")
    return keyFile.keyring(clock)


class KeyringService(TimerService):
    """
    Reads the key file again when it changed, so that a rotation or a
    retirement reaches a running replica within C{interval} seconds.

    @param onChange: Called after the keyring took new keys (to drop
        caches of derived keys).
    """

    log = Logger()

    def __init__(
        self,
        source: str,
        keyring: Keyring,
        clock: IReactorTime,
        interval: float = 10.0,
        onChange: Any = None,
    ) -> None:
        super().__init__(interval, self.check)
        self.clock = clock
        self.source = source
        self.keyring = keyring
        self._onChange = onChange
        self._seen = self._stamp()

    def _stamp(self) -> Any:
        if self.source.startswith("env:"):
            return os.environ.get(self.source[4:])
        return fileStamp(self.source)

    def check(self, force: bool = False) -> bool:
        """
        Reload if the file changed (or when C{force}d: data under a version
        we do not know has arrived).

        @return: whether new keys were taken.
        """
        stamp = self._stamp()
        if stamp == self._seen and not force:
            return False
        self._seen = stamp
        try:
            keyFile = readKeySource(self.source)
            if keyFile.name != self.keyring.name:
                raise KeyFileError(
                    f"{self.source} now holds the keys of {keyFile.name!r},"
                    f" not of {self.keyring.name!r}"
                )
            before = (self.keyring.versions, self.keyring.minDecryptVersion)
            self.keyring.replace(keyFile.versions, keyFile.minDecryptVersion)
        except (KeyFileError, ValueError) as e:
            self.log.error("Keeping the keys in use: {error}", error=str(e))
            return False
        after = (self.keyring.versions, self.keyring.minDecryptVersion)
        self.log.info(
            "Keyring {name}: versions {versions}, current {current}",
            name=self.keyring.name,
            versions=after[0],
            current=self.keyring.currentVersion(),
        )
        if self._onChange is not None:
            self._onChange()
        return before != after or force
