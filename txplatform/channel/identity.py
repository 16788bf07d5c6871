# -*- test-case-name: tests.channel.test_identity -*-
"""
Who is who on the secure channel: each service instance's static X25519
identity key, and the allow-list of the keys a peer may present.

An identity file is a secret (mode 0600, or C{env:NAME})::

    {"format": "txplatform-identity/1", "service": "010001",
     "private": "<32 bytes, base64>"}

A trust file is public: the keys accepted, each for the service it may
speak for::

    {"format": "txplatform-trust/1",
     "peers": [{"service": "010001", "key": "<32 bytes, base64>",
                "comment": "account, replica 1"}]}

C{txplatform-channel keygen} makes an identity and adds its public key to
a trust file.  A key is trusted for the services listed with it only: a
replica of Post holding its own key cannot pass for Account.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from typing import Any, Callable, Iterable

from attrs import field, frozen
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from ..crypto.keyfile import KeyFileError, readSecretSource, writeSecretFile
from ..filewatch import FileWatchService
from ..serviceid import ServiceId
from .noise import publicBytes

__all__ = [
    "IDENTITY_FORMAT",
    "TRUST_FORMAT",
    "IdentityError",
    "Identity",
    "Peer",
    "TrustStore",
    "readIdentity",
    "writeIdentity",
    "readTrust",
    "writeTrust",
    "TrustFileService",
    "encodeKey",
    "decodeKey",
]

IDENTITY_FORMAT = "txplatform-identity/1"
TRUST_FORMAT = "txplatform-trust/1"


class IdentityError(KeyFileError):
    """
    An identity or trust file that cannot be used; the message says why.
    """


def encodeKey(key: bytes) -> str:
    return base64.b64encode(key).decode("ascii")


def decodeKey(text: Any, where: str) -> bytes:
    """
    A 32-byte key from base64.

    @raise IdentityError: Anything else, saying where it was found.
    """
    try:
        key = base64.b64decode(text, validate=True) if isinstance(text, str) else b""
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != 32:
        raise IdentityError(f"{where}: a key is 32 bytes in base64")
    return key


def _serviceId(text: Any, where: str) -> ServiceId:
    try:
        return ServiceId.fromHex(text)
    except ValueError:
        raise IdentityError(f"{where}: the service is six hex digits, not {text!r}") from None


@frozen
class Identity:
    """
    A service instance's static key, and the service it speaks for.
    """

    serviceId: ServiceId
    private: X25519PrivateKey = field(repr=False)

    @classmethod
    def generate(cls, serviceId: ServiceId) -> Identity:
        return cls(serviceId, X25519PrivateKey.generate())

    @property
    def public(self) -> bytes:
        return publicBytes(self.private)

    def toJSON(self) -> str:
        raw = self.private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        document = {
            "format": IDENTITY_FORMAT,
            "service": self.serviceId.hex,
            "private": encodeKey(raw),
            "public": encodeKey(self.public),
        }
        return json.dumps(document, indent=2) + "\n"

    @classmethod
    def fromJSON(cls, text: str, where: str) -> Identity:
        try:
            document = json.loads(text)
        except ValueError:
            raise IdentityError(f"{where} is not JSON") from None
        if not isinstance(document, dict) or document.get("format") != IDENTITY_FORMAT:
            raise IdentityError(f"{where} is not an identity file ({IDENTITY_FORMAT})")
        private = X25519PrivateKey.from_private_bytes(decodeKey(document.get("private"), where))
        return cls(_serviceId(document.get("service"), where), private)


@frozen
class Peer:
    """
    One entry of a trust file.
    """

    serviceId: ServiceId
    key: bytes
    comment: str = ""


class TrustStore:
    """
    The static keys accepted, each for the services it may speak for.
    """

    def __init__(self, peers: Iterable[Peer] = ()) -> None:
        self._allowed: dict[bytes, set[ServiceId]] = {}
        self.peers: list[Peer] = []
        self._watchers: set[Callable[[], object]] = set()
        for peer in peers:
            self.add(peer)

    def add(self, peer: Peer) -> None:
        self.peers.append(peer)
        self._allowed.setdefault(peer.key, set()).add(peer.serviceId)

    def replace(self, peers: Iterable[Peer]) -> None:
        """
        Trust these peers instead (the trust file changed), and tell the
        watchers: open channels whose peer is no longer trusted close.
        """
        self._allowed = {}
        self.peers = []
        for peer in peers:
            self.add(peer)
        for watcher in list(self._watchers):
            watcher()

    def watch(self, watcher: Callable[[], object]) -> Callable[[], None]:
        """
        Call C{watcher} after every L{replace}.

        @return: A function that stops watching.
        """
        self._watchers.add(watcher)
        return lambda: self._watchers.discard(watcher)

    def allows(self, key: bytes, serviceId: ServiceId) -> bool:
        """
        Whether C{key} may speak for C{serviceId}.
        """
        return serviceId in self._allowed.get(key, ())

    def servicesOf(self, key: bytes) -> set[ServiceId]:
        return set(self._allowed.get(key, ()))

    def toJSON(self) -> str:
        document = {
            "format": TRUST_FORMAT,
            "peers": [
                {"service": p.serviceId.hex, "key": encodeKey(p.key), "comment": p.comment}
                for p in self.peers
            ],
        }
        return json.dumps(document, indent=2) + "\n"

    @classmethod
    def fromJSON(cls, text: str, where: str) -> TrustStore:
        try:
            document = json.loads(text)
        except ValueError:
            raise IdentityError(f"{where} is not JSON") from None
        if not isinstance(document, dict) or document.get("format") != TRUST_FORMAT:
            raise IdentityError(f"{where} is not a trust file ({TRUST_FORMAT})")
        entries = document.get("peers")
        if not isinstance(entries, list):
            raise IdentityError(f"{where}: 'peers' is a list")
        peers = []
        for i, entry in enumerate(entries):
            place = f"{where}, peer {i}"
            if not isinstance(entry, dict):
                raise IdentityError(f"{place} is not an object")
            comment = entry.get("comment", "")
            peers.append(
                Peer(
                    _serviceId(entry.get("service"), place),
                    decodeKey(entry.get("key"), place),
                    comment if isinstance(comment, str) else "",
                )
            )
        return cls(peers)


def readIdentity(source: str) -> Identity:
    """
    Read an identity from a file (readable by its owner only) or C{env:NAME}.

    @raise IdentityError: Missing, unreadable, readable by others, or not an
        identity file.
    """
    try:
        text, where = readSecretSource(source, "identity file")
    except IdentityError:
        raise
    except KeyFileError as e:
        raise IdentityError(str(e)) from None
    return Identity.fromJSON(text, where)


def writeIdentity(path: str, identity: Identity) -> None:
    writeSecretFile(path, identity.toJSON())


def readTrust(path: str) -> TrustStore:
    """
    @raise IdentityError: Missing, unreadable, or not a trust file.
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise IdentityError(f"cannot read the trust file {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise IdentityError(f"the trust file {path} is not UTF-8 text") from None
    return TrustStore.fromJSON(text, path)


def writeTrust(path: str, store: TrustStore) -> None:
    """
    Write atomically (replace).  Not a secret: public keys only.
    """
    temporary = f"{path}.{os.getpid()}.tmp"
    with open(temporary, "w", encoding="utf-8") as f:
        f.write(store.toJSON())
    os.replace(temporary, path)


class TrustFileService(FileWatchService[TrustStore]):
    """
    Read the trust file again when it changed, so that a key added reaches
    running processes, and a key removed is refused from then on and its
    open channels closed, within C{interval} seconds.
    """

    what = "the trust file"
    refused = (IdentityError,)

    def __init__(self, path: str, store: TrustStore, interval: float = 10.0) -> None:
        super().__init__(path, interval)
        self.store = store

    def read(self) -> TrustStore:
        return readTrust(self.path)

    def take(self, fresh: TrustStore) -> str:
        self.store.replace(fresh.peers)
        return f"{len(fresh.peers)} peer key(s)"
