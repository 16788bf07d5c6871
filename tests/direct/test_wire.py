"""
Tests for L{txplatform.direct.wire}.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from txplatform.direct.wire import CallFrame, FrameError, ReplyFrame, parseFrame
from txplatform.serviceid import ServiceId


class FrameTests(SynchronousTestCase):
    def test_call(self) -> None:
        """
        A call frame's header is binary: the service id is its bytes 1-3.
        """
        frame = CallFrame(ServiceId.fromHex("010002"), 7, 1234, "m1", "t1", "get", b"payload")
        encoded = frame.encode()
        self.assertEqual(encoded[:4], b"\x01\x01\x00\x02")
        self.assertEqual(parseFrame(encoded), frame)

    def test_idempotencyKey(self) -> None:
        """
        A call's idempotency key travels after its method; an empty one is
        none.
        """
        frame = CallFrame(ServiceId.fromHex("010002"), 7, 1234, "m1", "t1", "add", b"p", "k-1")
        self.assertEqual(parseFrame(frame.encode()), frame)
        self.assertIn(b"\x03add\x03k-1p", frame.encode())
        unkeyed = CallFrame(frame.service, 7, 1234, "m1", "t1", "add", b"p")
        self.assertIsNone(parseFrame(unkeyed.encode()).idempotencyKey)

    def test_resent(self) -> None:
        """
        A call sent again has its first copy's kind with bit 0x10 set,
        traced or not.
        """
        for traced, kind in [(False, 0x11), (True, 0x13)]:
            frame = CallFrame(
                ServiceId.fromHex("010002"), 7, 1234, "m1", "t1", "add", b"p", None, traced, True
            )
            self.assertEqual(frame.encode()[0], kind)
            parsed = parseFrame(frame.encode())
            self.assertEqual(parsed, frame)
            self.assertEqual((parsed.isTraced, parsed.resent), (traced, True))
        self.assertFalse(
            parseFrame(CallFrame(frame.service, 7, 1, "m", "t", "a", b"").encode()).resent
        )
        # A reply has no such bit.
        error = self.assertRaises(FrameError, parseFrame, b"\x12\x02m1")
        self.assertIn("unknown kind 18", str(error))

    def test_reply(self) -> None:
        frame = ReplyFrame("m1", b"answer")
        self.assertEqual(parseFrame(frame.encode()), frame)

    def test_malformed(self) -> None:
        for body, message in [
            (b"", "empty"),
            (b"\x09", "unknown kind 9"),
            (b"\x01\x01\x00", "shorter than its header"),
            (b"\x01\x01\x00\x02\x0a" + bytes(8) + b"\x00\x00\x00", "priority 10"),
            (b"\x01\x01\x00\x02\x01" + bytes(8) + b"\x05ab", "inside its message id"),
            (b"\x01\x01\x00\x02\x01" + bytes(8) + b"\x00\x00\x01x", "before its idempotency key"),
            (b"\x02", "before its message id"),
            (b"\x02\x02\xff\xfe", "not UTF-8"),
        ]:
            error = self.assertRaises(FrameError, parseFrame, body)
            self.assertIn(message, str(error))

    def test_longNames(self) -> None:
        """
        Names longer than a length byte can say are refused when encoding.
        """
        frame = CallFrame(ServiceId.fromHex("010002"), 0, 0, "m" * 300, "", "x", b"")
        self.assertRaises(ValueError, frame.encode)

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=64))
    def test_anyBytes(self, body: bytes) -> None:
        """
        Any bytes parse to a frame or raise FrameError: nothing else.
        """
        try:
            parseFrame(body)
        except FrameError:
            pass
