"""
Tests for L{txplatform.amqp.frames}, checked against txamqp's own codec
where both can speak.
"""

from decimal import Decimal
from io import BytesIO

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase
from txamqp.codec import Codec
from txamqp.connection import Frame as TxFrame

from txplatform.amqp import frames
from txplatform.amqp.frames import FrameError, Properties
from txplatform.amqp.spec import loadSpec

_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(min_size=1, max_size=10), children, max_size=4)
    ),
    max_leaves=10,
)


def unpack(data: bytes):
    """
    Decode frames with txamqp, as a reference.
    """
    spec = loadSpec()
    codec = Codec(BytesIO(data))
    result = []
    while codec.nread < len(data):
        kind = codec.decode_octet()
        channel = codec.decode_short()
        payload = TxFrame.DECODERS[
            {1: "frame_method", 2: "frame_header", 3: "frame_body"}[kind]
        ].decode(spec, codec)
        assert codec.decode_octet() == frames.FRAME_END
        result.append((channel, payload))
    return result


class TableTests(SynchronousTestCase):
    @given(st.dictionaries(st.text(min_size=1, max_size=20), _values, max_size=6))
    def test_roundTrip(self, table) -> None:
        """
        Any table of supported values decodes to itself (bytes that are
        UTF-8 come back as text, as RabbitMQ's own clients do).
        """
        data = frames.encodeTable(table)
        decoded, end = frames.decodeTable(data, 0)
        self.assertEqual(end, len(data))
        self.assertEqual(_normalise(decoded), _normalise(table))

    def test_decimalAndTypes(self) -> None:
        """
        Decimals and RabbitMQ's small integer types decode.
        """
        decoded, _ = frames.decodeTable(frames.encodeTable({"d": Decimal("12.5")}), 0)
        self.assertEqual(decoded, {"d": Decimal("12.5")})
        raw = b"\x00\x00\x00\x04" + b"\x01bb\xff"
        self.assertEqual(frames.decodeTable(raw, 0)[0], {"b": -1})

    def test_garbage(self) -> None:
        """
        Unknown types and overruns are frame errors.
        """
        self.assertRaises(FrameError, frames.decodeTable, b"\x00\x00\x00\x03\x01kZ", 0)
        self.assertRaises(FrameError, frames.decodeTable, b"\x00\x00\x00\x09\x01kS\x00\x00", 0)
        self.assertRaises(FrameError, frames.encodeTable, {"x": object()})
        self.assertRaises(FrameError, frames.encodeTable, {"x": 2**64})

    def test_nestingLimit(self) -> None:
        """
        Tables and arrays nested past MAX_NESTING are frame errors, not a
        blown interpreter stack.
        """
        table: dict = {}
        for _ in range(frames.MAX_NESTING):
            table = {"t": table}
        frames.decodeTable(frames.encodeTable(table), 0)
        self.assertRaises(FrameError, frames.decodeTable, frames.encodeTable({"t": table}), 0)
        array: list = []
        for _ in range(frames.MAX_NESTING + 1):
            array = [array]
        self.assertRaises(FrameError, frames.decodeTable, frames.encodeTable({"a": array}), 0)
        deep = b"\x00\x00\x00\x00"
        for _ in range(3000):
            deep = frames._U32.pack(len(deep) + 3) + b"\x01tF" + deep
        self.assertRaises(FrameError, frames.decodeTable, deep, 0)

    def test_decimals(self) -> None:
        """
        Decimals keep their value, positive exponents included; those that
        do not fit AMQP's decimal are refused.
        """
        for value in ["1E+2", "12.5", "-0.001", "0", "7"]:
            decoded, _ = frames.decodeTable(frames.encodeTable({"d": Decimal(value)}), 0)
            self.assertEqual(decoded["d"], Decimal(value))
        for bad in ["NaN", "1E+20", "1E-300"]:
            self.assertRaises(FrameError, frames.encodeTable, {"d": Decimal(bad)})


def _normalise(value):
    if isinstance(value, dict):
        return {k: _normalise(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_normalise(v) for v in value]
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value
    return value


class PublishTests(SynchronousTestCase):
    def test_noRoomForBody(self) -> None:
        """
        A frame size too small to carry a body is refused rather than
        silently sending a header without its body.
        """
        self.assertRaises(FrameError, frames.publish, 1, "x", "k", Properties(), b"b", 8)

    def test_matchesTxamqp(self) -> None:
        """
        A publish is the method, header and body frames txamqp decodes to
        the same exchange, routing key, properties and body; a body larger
        than a frame is split.
        """
        properties = Properties(
            message_id="m1",
            correlation_id="c1",
            reply_to="r",
            priority=9,
            delivery_mode=2,
            expiration="100",
            timestamp=1700000000,
            type="echo",
            headers={"x-trace": "t", "x-schema": 1},
        )
        data = frames.publish(1, "ex", "key", properties, b"x" * 10000, 4096, mandatory=True)
        decoded = unpack(data)
        (_, method), (_, header), *bodies = decoded
        self.assertEqual((method.method.klass.name, method.method.name), ("basic", "publish"))
        self.assertEqual(method.args[1:4], ("ex", "key", True))
        self.assertEqual(header.size, 10000)
        self.assertEqual(header.properties["message-id"], "m1")
        self.assertEqual(header.properties["priority"], 9)
        self.assertEqual(header.properties["correlation-id"], "c1")
        self.assertEqual(len(bodies), 3)
        self.assertTrue(all(len(b.content) <= 4088 for _, b in bodies))
        self.assertEqual("".join(b.content for _, b in bodies), "x" * 10000)  # txamqp decodes text

    def test_propertiesRoundTrip(self) -> None:
        """
        Properties decode to what was encoded.
        """
        properties = Properties(content_type="application/json", headers={"a": 1}, app_id="app")
        header = frames._HEADER_HEAD.pack(60, 0, 5, 0)[:-2] + frames.encodeProperties(properties)
        self.assertEqual(frames.decodeHeader(header), (5, properties))

    def test_acks(self) -> None:
        """
        ack, nack and reject are what txamqp decodes.
        """
        [(_, ack)] = unpack(frames.ack(1, 7, True))
        self.assertEqual((ack.method.name, ack.args), ("ack", (7, True)))
        [(_, nack)] = unpack(frames.nack(1, 8, False, True))
        self.assertEqual((nack.method.name, nack.args), ("nack", (8, False, True)))
        [(_, reject)] = unpack(frames.reject(2, 9, False))
        self.assertEqual((reject.method.name, reject.args), ("reject", (9, False)))

    def test_longShortString(self) -> None:
        """
        Short strings hold 255 bytes at most.
        """
        self.assertRaises(FrameError, frames.publish, 1, "x" * 256, "k", Properties(), b"", 4096)
