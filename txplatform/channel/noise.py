# -*- test-case-name: tests.channel.test_noise -*-
"""
The Noise Protocol Framework (revision 34), as much of it as the secure
channel uses: the XX pattern over X25519 and SHA-256, with AES-GCM (the
default: the fastest AEAD on this hardware) or ChaCha20-Poly1305.

    XX:
      -> e
      <- e, ee, s, es
      -> s, se

The names follow the specification (sections 5.1 to 5.3): L{CipherState},
L{SymmetricState}, L{HandshakeState}, so that each method can be read
against its pseudocode.  Everything is built on C{cryptography}'s
primitives; the published cacophony vectors check it byte for byte
(tests/channel/test_noise.py).

Whether the peer's static key is acceptable is not Noise's question but
the caller's (section 14): see L{HandshakeState.remoteStatic}.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from typing import Callable

from attrs import frozen
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

__all__ = [
    "MAX_MESSAGE",
    "DHLEN",
    "TAG_SIZE",
    "NoiseError",
    "HandshakeFailed",
    "NonceExhausted",
    "CipherSuite",
    "AESGCM_SHA256",
    "CHACHAPOLY_SHA256",
    "SUITES",
    "CipherState",
    "SymmetricState",
    "HandshakeState",
    "XX",
    "publicBytes",
]

# Section 3: every Noise message, handshake or transport, fits 65535 bytes.
MAX_MESSAGE = 65535
DHLEN = 32
HASHLEN = 32
TAG_SIZE = 16
# Section 5.1: the nonce 2**64 - 1 is reserved (for rekeying).
MAX_NONCE = 2**64 - 1
_ZEROS = bytes(32)


class NoiseError(Exception):
    """
    A Noise operation failed: the message does not authenticate, or does
    not fit the pattern.
    """


class HandshakeFailed(NoiseError):
    """
    The handshake cannot go on: a message that does not authenticate, is
    malformed, or yields a low-order Diffie-Hellman result.
    """


class NonceExhausted(NoiseError):
    """
    A cipher state used its last nonce: the session must end (or have been
    rekeyed and restarted long before).
    """


@frozen
class CipherSuite:
    """
    The cipher half of a Noise protocol name: the AEAD, and how it encodes
    the 64-bit nonce (section 12: big-endian for AES-GCM, little-endian for
    ChaCha20-Poly1305, after 32 zero bits).
    """

    name: str
    aead: Callable[[bytes], AESGCM | ChaCha20Poly1305]
    nonceFormat: str

    def nonce(self, n: int) -> bytes:
        return struct.pack(self.nonceFormat, n)


AESGCM_SHA256 = CipherSuite("AESGCM", AESGCM, ">4xQ")
CHACHAPOLY_SHA256 = CipherSuite("ChaChaPoly", ChaCha20Poly1305, "<4xQ")
SUITES = {suite.name: suite for suite in (AESGCM_SHA256, CHACHAPOLY_SHA256)}


def _hkdf(chainingKey: bytes, inputKeyMaterial: bytes, outputs: int) -> list[bytes]:
    """
    Section 4.3's HKDF: C{outputs} (2 or 3) blocks of C{HASHLEN} bytes.
    """
    tempKey = hmac.digest(chainingKey, inputKeyMaterial, "sha256")
    result: list[bytes] = []
    previous = b""
    for i in range(1, outputs + 1):
        previous = hmac.digest(tempKey, previous + bytes([i]), "sha256")
        result.append(previous)
    return result


def publicBytes(key: X25519PrivateKey) -> bytes:
    """
    The 32 raw bytes of C{key}'s public half.
    """
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def _dh(private: X25519PrivateKey, public: bytes) -> bytes:
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError:
        # cryptography refuses an all-zero result, which a low-order point
        # gives: section 12.1 allows failing the handshake there.
        raise HandshakeFailed("the peer's key is a low-order point") from None


class CipherState:
    """
    Section 5.1: a key (or none) and a nonce counter.
    """

    __slots__ = ("suite", "_aead", "_key", "n")

    def __init__(self, suite: CipherSuite, key: bytes | None = None) -> None:
        self.suite = suite
        self.initializeKey(key)

    def initializeKey(self, key: bytes | None) -> None:
        self._key = key
        self._aead = None if key is None else self.suite.aead(key)
        self.n = 0

    def hasKey(self) -> bool:
        return self._key is not None

    def encryptWithAd(self, ad: bytes, plaintext: bytes) -> bytes:
        """
        @raise NonceExhausted: The nonces are used up.
        """
        if self._aead is None:
            return plaintext
        if self.n >= MAX_NONCE:
            raise NonceExhausted("no nonce left: the channel must be renewed")
        ciphertext = self._aead.encrypt(self.suite.nonce(self.n), plaintext, ad)
        self.n += 1
        return ciphertext

    def decryptWithAd(self, ad: bytes, ciphertext: bytes) -> bytes:
        """
        @raise NoiseError: C{ciphertext} does not authenticate (the nonce
            is then not used up, as the specification says).
        @raise NonceExhausted: The nonces are used up.
        """
        if self._aead is None:
            return ciphertext
        if self.n >= MAX_NONCE:
            raise NonceExhausted("no nonce left: the channel must be renewed")
        try:
            plaintext = self._aead.decrypt(self.suite.nonce(self.n), ciphertext, ad)
        except InvalidTag:
            raise NoiseError("a message does not authenticate") from None
        self.n += 1
        return plaintext

    def rekey(self) -> None:
        """
        Section 4.2's REKEY: the next key is the first 32 bytes of the
        encryption of 32 zero bytes under the reserved nonce.  The counter
        goes on (section 11.3).
        """
        if self._aead is None:
            raise NoiseError("no key to rekey")
        key = self._aead.encrypt(self.suite.nonce(MAX_NONCE), _ZEROS, b"")[:32]
        n = self.n
        self.initializeKey(key)
        self.n = n


class SymmetricState:
    """
    Section 5.2: the chaining key, the handshake hash, and a cipher state.
    """

    def __init__(self, protocolName: bytes, suite: CipherSuite) -> None:
        if len(protocolName) <= HASHLEN:
            self.h = protocolName.ljust(HASHLEN, b"\0")
        else:
            self.h = hashlib.sha256(protocolName).digest()
        self.ck = self.h
        self.suite = suite
        self.cipher = CipherState(suite)

    def mixKey(self, inputKeyMaterial: bytes) -> None:
        self.ck, tempKey = _hkdf(self.ck, inputKeyMaterial, 2)
        self.cipher.initializeKey(tempKey)

    def mixHash(self, data: bytes) -> None:
        self.h = hashlib.sha256(self.h + data).digest()

    def encryptAndHash(self, plaintext: bytes) -> bytes:
        ciphertext = self.cipher.encryptWithAd(self.h, plaintext)
        self.mixHash(ciphertext)
        return ciphertext

    def decryptAndHash(self, ciphertext: bytes) -> bytes:
        try:
            plaintext = self.cipher.decryptWithAd(self.h, ciphertext)
        except NoiseError as e:
            raise HandshakeFailed(str(e)) from None
        self.mixHash(ciphertext)
        return plaintext

    def split(self) -> tuple[CipherState, CipherState]:
        first, second = _hkdf(self.ck, b"", 2)
        return CipherState(self.suite, first), CipherState(self.suite, second)


# A pattern: its message patterns, each a tuple of tokens; the initiator
# sends the even ones.
XX = (("e",), ("e", "ee", "s", "es"), ("s", "se"))


class HandshakeState:
    """
    Section 5.3, for patterns without pre-messages (such as L{XX}).

    Call L{writeMessage} and L{readMessage} in turn, as the pattern says,
    until L{complete}; then L{split} gives the two transport cipher states.

    @ivar remoteStatic: The peer's static public key once a message has
        carried it (the second for the initiator, the third for the
        responder): check it against what is trusted then, before
        sending anything more.
    """

    def __init__(
        self,
        initiator: bool,
        static: X25519PrivateKey,
        prologue: bytes = b"",
        suite: CipherSuite = AESGCM_SHA256,
        pattern: tuple[tuple[str, ...], ...] = XX,
        patternName: str = "XX",
        ephemeral: X25519PrivateKey | None = None,
    ) -> None:
        """
        @param ephemeral: Only for known-answer tests: a fresh key is made
            when the handshake needs one.
        """
        self.initiator = initiator
        self.protocolName = f"Noise_{patternName}_25519_{suite.name}_SHA256".encode()
        self._symmetric = SymmetricState(self.protocolName, suite)
        self._symmetric.mixHash(prologue)
        self._s = static
        self._e = ephemeral
        self.remoteStatic: bytes | None = None
        self._re: bytes | None = None
        self._pattern = pattern
        self._index = 0
        self._failed = False

    @property
    def complete(self) -> bool:
        return self._index == len(self._pattern)

    @property
    def handshakeHash(self) -> bytes:
        """
        The hash of the whole handshake: the channel's binding (section
        11.2), the same on both sides once complete.
        """
        return self._symmetric.h

    def isMyTurn(self) -> bool:
        """
        Whether the next message is one this side writes.
        """
        return not self.complete and (self._index % 2 == 0) == self.initiator

    def _tokens(self, writing: bool) -> tuple[str, ...]:
        if self._failed:
            raise HandshakeFailed("the handshake already failed")
        if self.complete:
            raise NoiseError("the handshake is complete")
        if self.isMyTurn() != writing:
            raise NoiseError(f"not this side's turn to {'write' if writing else 'read'}")
        return self._pattern[self._index]

    def _mixDH(self, token: str) -> None:
        # "es" is DH(initiator's e, responder's s), whichever side computes it.
        local, remote = token
        if not self.initiator:
            local, remote = remote, local
        private = self._e if local == "e" else self._s
        public = self._re if remote == "e" else self.remoteStatic
        assert private is not None and public is not None
        self._symmetric.mixKey(_dh(private, public))

    def writeMessage(self, payload: bytes = b"") -> bytes:
        """
        The next handshake message, carrying C{payload} (encrypted once a
        key has been mixed in: in XX, from the second message on).

        @raise NoiseError: Not this side's turn, or the message would be
            larger than L{MAX_MESSAGE}.
        """
        tokens = self._tokens(writing=True)
        symmetric = self._symmetric
        out = []
        try:
            for token in tokens:
                if token == "e":
                    if self._e is None:
                        self._e = X25519PrivateKey.generate()
                    e = publicBytes(self._e)
                    out.append(e)
                    symmetric.mixHash(e)
                elif token == "s":
                    out.append(symmetric.encryptAndHash(publicBytes(self._s)))
                else:
                    self._mixDH(token)
            out.append(symmetric.encryptAndHash(payload))
        except NoiseError:
            self._failed = True
            raise
        message = b"".join(out)
        if len(message) > MAX_MESSAGE:
            self._failed = True
            raise NoiseError(f"a handshake message of {len(message)} bytes is too large")
        self._index += 1
        return message

    def readMessage(self, message: bytes) -> bytes:
        """
        Read the peer's next handshake message.

        @return: Its payload.

        @raise HandshakeFailed: It does not authenticate or is malformed;
            the handshake cannot continue.
        @raise NoiseError: Not this side's turn.
        """
        tokens = self._tokens(writing=False)
        symmetric = self._symmetric
        view = memoryview(message)
        try:
            if len(message) > MAX_MESSAGE:
                raise HandshakeFailed(f"a handshake message of {len(message)} bytes is too large")
            for token in tokens:
                if token == "e":
                    if len(view) < DHLEN:
                        raise HandshakeFailed("the handshake message is too short")
                    self._re = bytes(view[:DHLEN])
                    view = view[DHLEN:]
                    symmetric.mixHash(self._re)
                elif token == "s":
                    size = DHLEN + (TAG_SIZE if symmetric.cipher.hasKey() else 0)
                    if len(view) < size:
                        raise HandshakeFailed("the handshake message is too short")
                    self.remoteStatic = symmetric.decryptAndHash(bytes(view[:size]))
                    view = view[size:]
                else:
                    self._mixDH(token)
            if symmetric.cipher.hasKey() and len(view) < TAG_SIZE:
                raise HandshakeFailed("the handshake message is too short")
            payload = symmetric.decryptAndHash(bytes(view))
        except NoiseError:
            self._failed = True
            raise
        self._index += 1
        return payload

    def split(self) -> tuple[CipherState, CipherState]:
        """
        The transport cipher states, once the handshake is complete: the
        one this side sends with, and the one it receives with.
        """
        if not self.complete:
            raise NoiseError("the handshake is not complete")
        first, second = self._symmetric.split()
        return (first, second) if self.initiator else (second, first)
