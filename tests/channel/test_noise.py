"""
Tests for L{txplatform.channel.noise}.

C{cacophony-xx.json} holds the two C{Noise_XX_25519_*_SHA256} vectors of
cacophony's C{vectors/cacophony.txt} (haskell-cryptography/cacophony,
blob b8a271ed1aba8b4a56bf429e559d7947827123b4; public domain, the
Unlicense), copied field for field.
"""

from __future__ import annotations

import json
import os

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from txplatform.channel import noise
from txplatform.channel.noise import (
    AESGCM_SHA256,
    CHACHAPOLY_SHA256,
    MAX_NONCE,
    SUITES,
    CipherState,
    HandshakeFailed,
    HandshakeState,
    NoiseError,
    NonceExhausted,
    publicBytes,
)

VECTORS = os.path.join(os.path.dirname(__file__), "cacophony-xx.json")


def private(hexKey: str) -> X25519PrivateKey:
    return X25519PrivateKey.from_private_bytes(bytes.fromhex(hexKey))


def handshakePair(
    suite: noise.CipherSuite = AESGCM_SHA256,
    prologue: bytes = b"txplatform",
) -> tuple[HandshakeState, HandshakeState]:
    return (
        HandshakeState(True, X25519PrivateKey.generate(), prologue, suite),
        HandshakeState(False, X25519PrivateKey.generate(), prologue, suite),
    )


def runHandshake(
    initiator: HandshakeState, responder: HandshakeState
) -> tuple[noise.CipherState, noise.CipherState, noise.CipherState, noise.CipherState]:
    responder.readMessage(initiator.writeMessage())
    initiator.readMessage(responder.writeMessage())
    responder.readMessage(initiator.writeMessage())
    return (*initiator.split(), *responder.split())


class VectorTests(SynchronousTestCase):
    """
    The published vectors, replayed byte for byte.
    """

    def vectors(self) -> list[dict]:
        with open(VECTORS) as f:
            return json.load(f)["vectors"]

    def test_vectors(self) -> None:
        """
        Both XX suites: every handshake message, the handshake hash, and the
        three transport messages after it.
        """
        names = []
        for vector in self.vectors():
            name = vector["protocol_name"]
            names.append(name)
            suite = SUITES[name.split("_")[3]]
            initiator = HandshakeState(
                True,
                private(vector["init_static"]),
                bytes.fromhex(vector["init_prologue"]),
                suite,
                ephemeral=private(vector["init_ephemeral"]),
            )
            responder = HandshakeState(
                False,
                private(vector["resp_static"]),
                bytes.fromhex(vector["resp_prologue"]),
                suite,
                ephemeral=private(vector["resp_ephemeral"]),
            )
            self.assertEqual(initiator.protocolName.decode(), name)
            messages = vector["messages"]
            sides = [(initiator, responder), (responder, initiator)]
            for i, message in enumerate(messages[:3]):
                writer, reader = sides[i % 2]
                payload = bytes.fromhex(message["payload"])
                ciphertext = writer.writeMessage(payload)
                self.assertEqual(ciphertext.hex(), message["ciphertext"], f"{name} message {i}")
                self.assertEqual(reader.readMessage(ciphertext), payload)
            self.assertTrue(initiator.complete and responder.complete)
            self.assertEqual(initiator.handshakeHash.hex(), vector["handshake_hash"])
            self.assertEqual(responder.handshakeHash.hex(), vector["handshake_hash"])
            self.assertEqual(initiator.remoteStatic, publicBytes(private(vector["resp_static"])))
            self.assertEqual(responder.remoteStatic, publicBytes(private(vector["init_static"])))
            initiatorSend, initiatorReceive = initiator.split()
            responderSend, responderReceive = responder.split()
            # After the handshake the responder speaks first, then in turn.
            transport = [
                (responderSend, initiatorReceive),
                (initiatorSend, responderReceive),
            ]
            for i, message in enumerate(messages[3:]):
                send, receive = transport[i % 2]
                payload = bytes.fromhex(message["payload"])
                ciphertext = send.encryptWithAd(b"", payload)
                self.assertEqual(ciphertext.hex(), message["ciphertext"], f"{name} transport {i}")
                self.assertEqual(receive.decryptWithAd(b"", ciphertext), payload)
        self.assertEqual(
            sorted(names),
            ["Noise_XX_25519_AESGCM_SHA256", "Noise_XX_25519_ChaChaPoly_SHA256"],
        )

    def test_tamperedVector(self) -> None:
        """
        A vector's second message with one bit flipped is refused, and the
        handshake cannot go on.
        """
        vector = self.vectors()[0]
        suite = SUITES[vector["protocol_name"].split("_")[3]]
        initiator = HandshakeState(
            True,
            private(vector["init_static"]),
            bytes.fromhex(vector["init_prologue"]),
            suite,
            ephemeral=private(vector["init_ephemeral"]),
        )
        initiator.writeMessage(bytes.fromhex(vector["messages"][0]["payload"]))
        second = bytearray.fromhex(vector["messages"][1]["ciphertext"])
        second[40] ^= 1
        self.assertRaises(HandshakeFailed, initiator.readMessage, bytes(second))
        self.assertRaises(HandshakeFailed, initiator.writeMessage, b"")


class RekeyTests(SynchronousTestCase):
    """
    C{Rekey()}, which the vectors do not cover: a known answer computed
    from the specification's formula.
    """

    def test_knownAnswer(self) -> None:
        """
        The next key is the first 32 bytes of ENCRYPT(k, 2**64 - 1, "", 32
        zero bytes), with each suite's nonce encoding, and the counter goes
        on.
        """
        key = bytes(range(32))
        for suite, aead, nonce in [
            (AESGCM_SHA256, AESGCM, bytes(4) + b"\xff" * 8),
            (CHACHAPOLY_SHA256, ChaCha20Poly1305, bytes(4) + b"\xff" * 8),
        ]:
            expected = aead(key).encrypt(nonce, bytes(32), b"")[:32]
            state = CipherState(suite, key)
            state.encryptWithAd(b"", b"x")
            state.rekey()
            self.assertEqual(state.n, 1)
            ciphertext = state.encryptWithAd(b"ad", b"after")
            self.assertEqual(ciphertext, aead(expected).encrypt(suite.nonce(1), b"after", b"ad"))

    def test_knownAnswerBytes(self) -> None:
        """
        The rekeys of the all-0x01 key, pinned (computed once from the
        formula with cryptography), so that any change shows.
        """
        for suite, expected in [
            (AESGCM_SHA256, "1a30e5fb17506601967f98cf0e0b1faf59672fabb40a80ac37568c035e217a33"),
            (CHACHAPOLY_SHA256, "6cfb2b964ed404cedd9051572bde20be5910d8de91207ef94b5ceb2fa67ad788"),
        ]:
            state = CipherState(suite, b"\x01" * 32)
            state.rekey()
            other = CipherState(suite, bytes.fromhex(expected))
            self.assertEqual(state.encryptWithAd(b"", b"x"), other.encryptWithAd(b"", b"x"))

    def test_nonceEncoding(self) -> None:
        """
        AES-GCM takes the counter big-endian, ChaCha20-Poly1305
        little-endian, both after four zero bytes.
        """
        self.assertEqual(AESGCM_SHA256.nonce(1), bytes(11) + b"\x01")
        self.assertEqual(CHACHAPOLY_SHA256.nonce(1), bytes(4) + b"\x01" + bytes(7))


class CipherStateTests(SynchronousTestCase):
    def test_noKey(self) -> None:
        """
        Without a key, messages pass as they are.
        """
        state = CipherState(AESGCM_SHA256)
        self.assertEqual(state.encryptWithAd(b"", b"clear"), b"clear")
        self.assertRaises(NoiseError, state.rekey)

    def test_exhausted(self) -> None:
        """
        The reserved nonce is never used for a message: past 2**64 - 2 the
        state refuses both ways.
        """
        sender = CipherState(AESGCM_SHA256, bytes(32))
        receiver = CipherState(AESGCM_SHA256, bytes(32))
        sender.n = receiver.n = MAX_NONCE - 1
        receiver.decryptWithAd(b"", sender.encryptWithAd(b"", b"last"))
        self.assertRaises(NonceExhausted, sender.encryptWithAd, b"", b"more")
        self.assertRaises(NonceExhausted, receiver.decryptWithAd, b"", bytes(16))

    def test_failedDecryptKeepsNonce(self) -> None:
        """
        A message that does not authenticate does not use up a nonce, so
        the next good one still decrypts.
        """
        sender = CipherState(AESGCM_SHA256, bytes(32))
        receiver = CipherState(AESGCM_SHA256, bytes(32))
        good = sender.encryptWithAd(b"", b"good")
        self.assertRaises(NoiseError, receiver.decryptWithAd, b"", good[:-1] + b"!")
        self.assertEqual(receiver.decryptWithAd(b"", good), b"good")


class HandshakeTests(SynchronousTestCase):
    """
    Handshakes between fresh keys.
    """

    def test_roundTrip(self) -> None:
        """
        Both suites: both sides learn each other's static key, hold the same
        handshake hash, and talk both ways.
        """
        for suite in (AESGCM_SHA256, CHACHAPOLY_SHA256):
            initiator, responder = handshakePair(suite)
            iSend, iReceive, rSend, rReceive = runHandshake(initiator, responder)
            self.assertEqual(initiator.handshakeHash, responder.handshakeHash)
            self.assertEqual(initiator.remoteStatic, publicBytes(responder._s))
            self.assertEqual(responder.remoteStatic, publicBytes(initiator._s))
            self.assertEqual(rReceive.decryptWithAd(b"", iSend.encryptWithAd(b"", b"hi")), b"hi")
            self.assertEqual(iReceive.decryptWithAd(b"", rSend.encryptWithAd(b"", b"yo")), b"yo")

    def test_prologueMismatch(self) -> None:
        """
        Different prologues (a version or a service id apart) fail at the
        second message, read by the initiator.
        """
        initiator = HandshakeState(True, X25519PrivateKey.generate(), b"v1")
        responder = HandshakeState(False, X25519PrivateKey.generate(), b"v2")
        responder.readMessage(initiator.writeMessage())
        self.assertRaises(HandshakeFailed, initiator.readMessage, responder.writeMessage())

    def test_suiteMismatch(self) -> None:
        """
        Suites are never negotiated: two sides configured differently fail.
        """
        initiator = HandshakeState(True, X25519PrivateKey.generate(), b"", AESGCM_SHA256)
        responder = HandshakeState(False, X25519PrivateKey.generate(), b"", CHACHAPOLY_SHA256)
        responder.readMessage(initiator.writeMessage())
        self.assertRaises(HandshakeFailed, initiator.readMessage, responder.writeMessage())

    def test_turns(self) -> None:
        """
        Writing or reading out of turn, or after the end, is an error.
        """
        initiator, responder = handshakePair()
        self.assertRaises(NoiseError, responder.writeMessage)
        self.assertRaises(NoiseError, initiator.readMessage, b"")
        runHandshake(initiator, responder)
        self.assertRaises(NoiseError, initiator.writeMessage)
        self.assertRaises(NoiseError, responder.readMessage, b"")
        fresh = HandshakeState(True, X25519PrivateKey.generate())
        self.assertRaises(NoiseError, fresh.split)

    def test_lowOrderEphemeral(self) -> None:
        """
        An all-zero (low-order) ephemeral key fails the handshake at the
        first Diffie-Hellman.
        """
        initiator, responder = handshakePair()
        first = initiator.writeMessage()
        responder.readMessage(bytes(32) + first[32:])
        self.assertRaises(HandshakeFailed, responder.writeMessage)
        initiator, responder = handshakePair()
        responder.readMessage(initiator.writeMessage())
        second = responder.writeMessage()
        self.assertRaises(HandshakeFailed, initiator.readMessage, bytes(32) + second[32:])

    def test_replayedThirdMessage(self) -> None:
        """
        A recorded third message does not complete a handshake with a new
        responder, whose ephemeral key is another: replaying a session
        fails there.
        """
        initiator, responder = handshakePair()
        first = initiator.writeMessage()
        responder.readMessage(first)
        initiator.readMessage(responder.writeMessage())
        third = initiator.writeMessage()
        replayTarget = HandshakeState(False, responder._s, b"txplatform")
        replayTarget.readMessage(first)
        replayTarget.writeMessage()
        self.assertRaises(HandshakeFailed, replayTarget.readMessage, third)

    @settings(max_examples=200, deadline=None)
    @given(st.integers(0, 2), st.binary(max_size=200))
    def test_garbage(self, stage: int, garbage: bytes) -> None:
        """
        Random bytes in place of any message are refused with
        L{HandshakeFailed} (or taken, for the unauthenticated first
        message), never another exception.
        """
        initiator, responder = handshakePair()
        messages = []
        sides = [(initiator, responder), (responder, initiator)]
        for i in range(stage):
            writer, reader = sides[i % 2]
            message = writer.writeMessage()
            messages.append(message)
            reader.readMessage(message)
        writer, reader = sides[stage % 2]
        try:
            reader.readMessage(garbage)
        except HandshakeFailed:
            return
        # Only the first message, whose ephemeral key is not authenticated
        # yet, can be taken: anything of at least 32 bytes.
        self.assertEqual(stage, 0)
        self.assertGreaterEqual(len(garbage), 32)

    def test_oversized(self) -> None:
        """
        A handshake message over 65535 bytes is refused.
        """
        initiator, responder = handshakePair()
        self.assertRaises(HandshakeFailed, responder.readMessage, bytes(70000))
        self.assertRaises(NoiseError, initiator.writeMessage, bytes(70000))
