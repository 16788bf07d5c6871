"""
Tests for L{txplatform.amqp.protocol}: the fast path, on a StringTransport.
"""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from txplatform.amqp import frames
from txplatform.amqp.frames import Properties
from txplatform.amqp.protocol import (
    ACCESS_REFUSED,
    FRAME_MAX,
    NOT_ALLOWED,
    AMQPConnection,
    AMQPDelegate,
    BrokerClosed,
    PublishNacked,
    PublishReturned,
)
from txplatform.amqp.spec import loadSpec


def method(channel: int, classId: int, methodId: int, args: bytes) -> bytes:
    return frames._frame(frames.FRAME_METHOD, channel, struct.pack("!HH", classId, methodId) + args)


def deliver(
    tag: str, deliveryTag: int, body: bytes, properties: Properties, chunk: int = 4096
) -> bytes:
    args = (
        frames._shortstr(tag)
        + struct.pack("!QB", deliveryTag, 1)
        + frames._shortstr("txplatform.events")
        + frames._shortstr("post.created")
    )
    header = frames._HEADER_HEAD.pack(60, 0, len(body), 0)[:-2] + frames.encodeProperties(
        properties
    )
    parts = [method(1, 60, 60, args), frames._frame(frames.FRAME_HEADER, 1, header)]
    for start in range(0, len(body), chunk):
        parts.append(frames._frame(frames.FRAME_BODY, 1, body[start : start + chunk]))
    return b"".join(parts)


def _longstr(value: bytes) -> bytes:
    return struct.pack("!I", len(value)) + value


def connectionStart() -> bytes:
    """
    The broker's connection.start, which opens the handshake.
    """
    args = b"\x00\x09" + frames.encodeTable({}) + _longstr(b"PLAIN AMQPLAIN") + _longstr(b"en_US")
    return method(0, 10, 10, args)


def connectionTune() -> bytes:
    """
    The broker's connection.tune, which it sends once the login is accepted.
    """
    return method(0, 10, 30, struct.pack("!HIH", 2047, FRAME_MAX, 60))


def connectionClose(code: int, text: str, classId: int = 0, methodId: int = 0) -> bytes:
    """
    The broker's connection.close, with why (and the method that failed).
    """
    args = struct.pack("!H", code) + frames._shortstr(text) + struct.pack("!HH", classId, methodId)
    return method(0, 10, 50, args)


def sentMethods(data: bytes) -> list[tuple[int, int, bytes]]:
    """
    The (class, method, arguments) of every method frame in C{data}.
    """
    found = []
    offset = 0
    while offset < len(data):
        kind, _, size = struct.unpack_from("!BHI", data, offset)
        payload = data[offset + 7 : offset + 7 + size]
        if kind == frames.FRAME_METHOD:
            found.append((*struct.unpack_from("!HH", payload), payload[4:]))
        offset += 8 + size
    return found


class ConnectionTestMixin:
    def connect(self, heartbeat: int = 0) -> tuple[AMQPConnection, StringTransport, Clock]:
        clock = Clock()
        connection = AMQPConnection(AMQPDelegate({}), "/", loadSpec(), heartbeat, clock)
        transport = StringTransport()
        connection.makeConnection(transport)
        self.assertEqual(transport.value(), b"AMQP\x00\x00\x09\x01")
        transport.clear()
        self.addCleanup(
            lambda: (
                connection.connectionLost(Failure(ConnectionLost()))
                if not connection.lost
                else None
            )
        )
        return connection, transport, clock


class DeliveryTests(ConnectionTestMixin, SynchronousTestCase):
    @given(
        body=st.binary(max_size=20000),
        cuts=st.lists(st.integers(min_value=1, max_value=30000), max_size=12),
    )
    @settings(max_examples=60, deadline=None)
    def test_anyChunking(self, body: bytes, cuts: list[int]) -> None:
        """
        A delivery reaches its consumer once, whole, however the bytes are
        cut up on the way, its body split across frames or not.
        """
        connection, _, _ = self.connect()
        got = []
        connection.onDeliver["c1"] = got.append
        properties = Properties(message_id="m", headers={"x-attempt": 2})
        data = deliver("c1", 5, body, properties, chunk=1000) + deliver(
            "c1", 6, b"next", Properties()
        )
        positions = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
        for start, end in zip(positions, positions[1:], strict=False):
            connection.dataReceived(data[start:end])
        self.assertEqual([(d.deliveryTag, d.body) for d in got], [(5, body), (6, b"next")])
        self.assertEqual(got[0].properties, properties)
        self.assertTrue(got[0].redelivered)
        self.assertEqual(
            (got[0].exchange, got[0].routingKey), ("txplatform.events", "post.created")
        )

    def test_otherFramesToTxamqp(self) -> None:
        """
        Frames outside the hot path (channel.open-ok here) go to txamqp.
        """
        connection, _, _ = self.connect()
        seen = []
        connection.frame_received = seen.append
        connection.dataReceived(method(1, 20, 11, b"\x00\x00\x00\x00"))
        [frame] = seen
        self.assertEqual((frame.channel, frame.payload.method.name), (1, "open-ok"))

    def test_return(self) -> None:
        """
        A returned message goes to onReturn with its reply code.
        """
        connection, _, _ = self.connect()
        returned = []
        connection.attach(returned.append, lambda reason: None)
        args = (
            struct.pack("!H", 312)
            + frames._shortstr("NO_ROUTE")
            + frames._shortstr("txplatform.rpc")
            + frames._shortstr("0fecc0")
        )
        header = frames._HEADER_HEAD.pack(60, 0, 2, 0)[:-2] + frames.encodeProperties(
            Properties(correlation_id="c")
        )
        connection.dataReceived(
            method(1, 60, 50, args)
            + frames._frame(frames.FRAME_HEADER, 1, header)
            + frames._frame(frames.FRAME_BODY, 1, b"{}")
        )
        [delivery] = returned
        self.assertEqual(
            (delivery.replyCode, delivery.routingKey, delivery.properties.correlation_id),
            (312, "0fecc0", "c"),
        )

    def test_malformed(self) -> None:
        """
        A frame without its end marker drops the connection.
        """
        connection, transport, _ = self.connect()
        connection.dataReceived(method(1, 60, 80, struct.pack("!QB", 1, 0))[:-1] + b"\x00")
        self.assertTrue(transport.disconnecting)
        self.flushLoggedErrors()


class ConfirmTests(ConnectionTestMixin, SynchronousTestCase):
    def test_confirms(self) -> None:
        """
        Publications on a confirming channel fire when the broker acks them
        (several at once with multiple), and fail when it nacks them.
        """
        connection, transport, _ = self.connect()
        connection.startConfirming(1)
        ds = [connection.publish(1, "x", "k", Properties(), b"b", confirm=True) for _ in range(3)]
        untracked = connection.publish(1, "x", "k", Properties(), b"b")
        self.assertIsNone(untracked)
        self.assertTrue(transport.value())
        connection.dataReceived(method(1, 60, 80, struct.pack("!QB", 2, 1)))
        self.successResultOf(ds[0])
        self.successResultOf(ds[1])
        self.assertNoResult(ds[2])
        connection.dataReceived(method(1, 60, 120, struct.pack("!QB", 3, 0)))
        self.failureResultOf(ds[2], PublishNacked)

    def test_lost(self) -> None:
        """
        Publications not yet confirmed fail when the connection goes, and
        publishing afterwards fails at once.
        """
        connection, _, _ = self.connect()
        lost = []
        connection.attach(lambda d: None, lost.append)
        connection.startConfirming(1)
        d = connection.publish(1, "x", "k", Properties(), b"b", confirm=True)
        connection.connectionLost(Failure(ConnectionLost()))
        self.failureResultOf(d, ConnectionLost)
        self.assertEqual(len(lost), 1)
        self.failureResultOf(connection.publish(1, "x", "k", Properties(), b"", confirm=True))


class HeartbeatTests(ConnectionTestMixin, SynchronousTestCase):
    def test_silenceDrops(self) -> None:
        """
        A broker silent for three heartbeats is dropped; traffic of any kind
        (messages included) keeps the connection.
        """
        connection, transport, clock = self.connect(heartbeat=1)
        connection.onDeliver["c"] = lambda delivery: None
        for _ in range(5):
            clock.advance(1)
            connection.dataReceived(deliver("c", 1, b"", Properties()))
        self.assertFalse(transport.disconnecting)
        clock.advance(3)
        self.assertTrue(transport.disconnecting)


def header(properties: bytes, bodySize: int) -> bytes:
    payload = frames._HEADER_HEAD.pack(60, 0, bodySize, 0)[:-2] + properties
    return frames._frame(frames.FRAME_HEADER, 1, payload)


def deliverMethod(tag: str, deliveryTag: int) -> bytes:
    args = (
        frames._shortstr(tag)
        + struct.pack("!QB", deliveryTag, 0)
        + frames._shortstr("txplatform.events")
        + frames._shortstr("post.created")
    )
    return method(1, 60, 60, args)


class MalformedMessageTests(ConnectionTestMixin, SynchronousTestCase):
    def test_unreadableHeaders(self) -> None:
        """
        A message whose headers cannot be read (nested past the limit, or
        cut short) reaches its consumer marked malformed, body and all; the
        connection and the next message carry on.
        """
        connection, transport, _ = self.connect()
        got = []
        connection.onDeliver["c"] = got.append
        nested: dict = {}
        for _ in range(frames.MAX_NESTING + 5):
            nested = {"n": nested}
        deep = frames.encodeProperties(Properties(headers=nested))
        cut = struct.pack("!H", 1 << 13) + b"\x00\x00\x00\x10\x01k"  # headers, truncated
        connection.dataReceived(
            deliverMethod("c", 1)
            + header(deep, 3)
            + frames._frame(frames.FRAME_BODY, 1, b"abc")
            + deliverMethod("c", 2)
            + header(cut, 0)
            + deliver("c", 3, b"fine", Properties(message_id="ok"))
        )
        self.assertFalse(transport.disconnecting)
        self.assertEqual([d.deliveryTag for d in got], [1, 2, 3])
        self.assertIn("nested", got[0].malformed)
        self.assertEqual(got[0].body, b"abc")
        self.assertIsNotNone(got[1].malformed)
        self.assertIsNone(got[2].malformed)
        self.assertEqual(got[2].properties.message_id, "ok")

    def test_unknownConsumer(self) -> None:
        """
        A delivery for a consumer that is gone is given back to the queue.
        """
        connection, transport, _ = self.connect()
        connection.dataReceived(deliver("gone", 7, b"x", Properties()))
        self.assertEqual(transport.value(), frames.reject(1, 7, True))


class ReturnedConfirmTests(ConnectionTestMixin, SynchronousTestCase):
    def returned(self, messageId: str) -> bytes:
        args = (
            struct.pack("!H", 312)
            + frames._shortstr("NO_ROUTE")
            + frames._shortstr("txplatform.dead")
            + frames._shortstr("group")
        )
        return method(1, 60, 50, args) + header(
            frames.encodeProperties(Properties(message_id=messageId)), 0
        )

    def test_mandatoryReturned(self) -> None:
        """
        A confirmed mandatory message that the broker returned (no queue
        took it) fails with PublishReturned even though the broker acks it;
        one that was routed succeeds.
        """
        connection, _, _ = self.connect()
        others = []
        connection.attach(others.append, lambda reason: None)
        connection.startConfirming(1)
        lost = connection.publish(
            1, "x", "k", Properties(message_id="a"), b"", mandatory=True, confirm=True
        )
        kept = connection.publish(
            1, "x", "k", Properties(message_id="b"), b"", mandatory=True, confirm=True
        )
        connection.dataReceived(self.returned("a") + method(1, 60, 80, struct.pack("!QB", 2, 1)))
        self.failureResultOf(lost, PublishReturned)
        self.successResultOf(kept)
        self.assertEqual(others, [])
        self.assertEqual(connection._returnable[1], {})

    def test_lateConfirm(self) -> None:
        """
        A confirm for a publication its publisher stopped waiting for is
        ignored.
        """
        connection, _, _ = self.connect()
        connection.startConfirming(1)
        d = connection.publish(1, "x", "k", Properties(), b"", confirm=True)
        d.cancel()
        self.failureResultOf(d)
        connection.dataReceived(method(1, 60, 80, struct.pack("!QB", 1, 0)))


class TuneTests(ConnectionTestMixin, SynchronousTestCase):
    def test_frameMax(self) -> None:
        """
        The frame size is the smaller of the broker's and ours, and ours
        when the broker sets no limit (0).
        """
        sent = []

        class Channel:
            def connection_tune_ok(self, *args):
                sent.append(args)

        class Tune:
            channel_max = 2047

            def __init__(self, frame_max):
                self.frame_max = frame_max

        for offered, expected in [(0, FRAME_MAX), (4096, 4096), (10 * FRAME_MAX, FRAME_MAX)]:
            connection, _, _ = self.connect(heartbeat=7)
            connection.delegate.connection_tune(Channel(), Tune(offered))
            self.assertEqual(connection.MAX_LENGTH, expected)
            self.assertEqual(sent[-1], (2047, expected, 7))


class HeartbeatTimingTests(ConnectionTestMixin, SynchronousTestCase):
    def test_dropsOnTime(self) -> None:
        """
        Silence is noticed three heartbeats after the last frame, not up to
        three more after the check that saw traffic.
        """
        connection, transport, clock = self.connect(heartbeat=1)
        connection.onDeliver["c"] = lambda delivery: None
        clock.advance(2.5)
        connection.dataReceived(deliver("c", 1, b"", Properties()))
        clock.advance(0.5)  # the first check, at 3 s: traffic 0.5 s ago
        self.assertFalse(transport.disconnecting)
        clock.advance(2.6)  # 3.1 s after the last frame
        self.assertTrue(transport.disconnecting)


class LogInTests(ConnectionTestMixin, SynchronousTestCase):
    """
    L{AMQPConnection.logIn}: the handshake, and the broker's reasons for
    ending it.
    """

    def test_opens(self) -> None:
        """
        Start-ok carries the credentials (PLAIN); once tuned, the virtual
        host is opened and the handshake fires when the broker says open-ok.
        """
        connection, transport, _ = self.connect()
        d = connection.logIn("guest", "secret", 10)
        connection.dataReceived(connectionStart())
        [(classId, methodId, args)] = sentMethods(transport.value())
        self.assertEqual((classId, methodId), (10, 11))
        self.assertIn(b"\x00guest\x00secret", args)
        transport.clear()
        connection.dataReceived(connectionTune())
        self.assertEqual([m[:2] for m in sentMethods(transport.value())], [(10, 31), (10, 40)])
        self.assertNoResult(d)
        connection.dataReceived(method(0, 10, 41, b"\x00"))
        self.successResultOf(d)

    def test_accessRefused(self) -> None:
        """
        A login the broker refuses (connection.close 403 in answer to
        start-ok) fails the handshake with L{BrokerClosed} and its reason;
        close-ok goes back and the connection is closed.
        """
        connection, transport, _ = self.connect()
        d = connection.logIn("guest", "wrong", 10)
        connection.dataReceived(connectionStart())
        transport.clear()
        text = "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN."
        connection.dataReceived(connectionClose(ACCESS_REFUSED, text))
        refused = self.failureResultOf(d, BrokerClosed).value
        self.assertEqual((refused.code, refused.text), (ACCESS_REFUSED, text))
        self.assertEqual([m[:2] for m in sentMethods(transport.value())], [(10, 51)])
        self.assertTrue(transport.disconnecting)

    def test_noSuchVirtualHost(self) -> None:
        """
        A virtual host that does not exist (connection.close 530 in answer to
        connection.open) fails the handshake with L{BrokerClosed}.
        """
        connection, transport, _ = self.connect()
        d = connection.logIn("guest", "guest", 10)
        connection.dataReceived(connectionStart())
        connection.dataReceived(connectionTune())
        text = "NOT_ALLOWED - vhost nosuchvhost not found"
        connection.dataReceived(connectionClose(NOT_ALLOWED, text, 10, 40))
        refused = self.failureResultOf(d, BrokerClosed).value
        self.assertEqual((refused.code, refused.text), (NOT_ALLOWED, text))
        self.assertEqual(str(refused), f"530 {text}")
        self.assertTrue(transport.disconnecting)

    def test_lost(self) -> None:
        """
        A connection lost during the handshake (a TLS certificate refused)
        fails it with the loss's own reason.
        """
        connection, _, _ = self.connect()
        d = connection.logIn("guest", "guest", 10)
        connection.dataReceived(connectionStart())
        connection.connectionLost(Failure(ValueError("certificate verify failed")))
        self.assertEqual(
            str(self.failureResultOf(d, ValueError).value), "certificate verify failed"
        )

    def test_timesOut(self) -> None:
        """
        A broker that does not answer fails the handshake once its time is
        up.
        """
        from twisted.internet.defer import TimeoutError

        connection, _, clock = self.connect()
        d = connection.logIn("guest", "guest", 10)
        clock.advance(9)
        self.assertNoResult(d)
        clock.advance(1)
        self.failureResultOf(d, TimeoutError)
