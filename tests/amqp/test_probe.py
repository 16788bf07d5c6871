"""
Tests for L{txplatform.amqp.probe}: why the broker cannot be used, in one
line.  (Against real refusals: tests.amqp.test_deadletters.)
"""

from __future__ import annotations

from twisted.internet import error
from twisted.internet.defer import TimeoutError
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from txamqp.client import Closed, ConnectionClosed

from txplatform.amqp.probe import explain
from txplatform.amqp.url import BrokerURL

URL = BrokerURL.parse("amqp://guest:secret@broker.example:5672/orders")


class Close:
    """
    A connection.close as txamqp hands it over: fields by name.
    """

    def __init__(self, code: int, text: str) -> None:
        self.reply_code = code
        self.reply_text = text


def why(exception: BaseException, connected: bool = True) -> str:
    return explain(Failure(exception), URL, 2.5, connected)


class ExplainTests(SynchronousTestCase):
    def test_network(self) -> None:
        """
        Refused, unresolvable, timed out: said plainly.
        """
        self.assertEqual(
            why(error.ConnectionRefusedError(), False),
            "connection refused (no broker listens there)",
        )
        self.assertEqual(
            why(error.DNSLookupError("x"), False),
            "cannot resolve the host name 'broker.example'",
        )
        self.assertEqual(why(TimeoutError(), False), "no connection within 2.5s")
        self.assertEqual(
            why(TimeoutError()), "connected, but no AMQP answer within 2.5s (is it a broker?)"
        )

    def test_broker(self) -> None:
        """
        What the broker said when it closed the connection: access refused,
        no such vhost, or its code and text.
        """
        refused = "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN."
        self.assertEqual(
            why(Closed(Close(403, refused))),
            f"access refused (check the user name and password): {refused}",
        )
        missing = "NOT_ALLOWED - vhost orders not found"
        self.assertEqual(
            why(ConnectionClosed(Close(530, missing))), f"no such vhost 'orders': {missing}"
        )
        self.assertEqual(
            why(ConnectionClosed(Close(530, "NOT_ALLOWED - access to vhost 'orders' refused"))),
            "the broker closed the connection: 530 NOT_ALLOWED - access to vhost 'orders' refused",
        )

    def test_closedWithoutReason(self) -> None:
        """
        A connection closed during the handshake without a reason: not a
        broker, or one that does not say.
        """
        expected = "the connection was closed during the AMQP handshake (is it a broker?)"
        self.assertEqual(why(Closed(Failure(error.ConnectionLost()))), expected)
        self.assertEqual(why(error.ConnectionDone()), expected)

    def test_other(self) -> None:
        """
        Anything else: its type and message, on one line.
        """
        self.assertEqual(why(ValueError("bad\ncertificate")), "ValueError: bad certificate")
