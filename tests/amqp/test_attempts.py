"""
Tests for the bus's attempts to reach its broker (L{txplatform.amqp._attempts}
and L{txplatform.amqp.bus.AMQPBus}'s use of ClientService): one readable line
per failed attempt, exponential back-off with a cap, and no state machine
errors (automat's NoTransition) whatever the order of failures and stops.

The first tests drive the bus on a L{MemoryReactorClock}, the broker's side
scripted frame by frame; the last ones run it against the real RabbitMQ with
a wrong password, a missing virtual host, and a closed port.
"""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from twisted.application.internet import ClientService
from twisted.internet import error, reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    TimeoutError,
    fail,
    inlineCallbacks,
    succeed,
)
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogLevel, capturedLogs, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from txplatform.amqp import _attempts
from txplatform.amqp._attempts import (
    FailoverEndpoint,
    QuietClientService,
    ReportingEndpoint,
    whyNotConnected,
)
from txplatform.amqp.bus import AMQPBus
from txplatform.amqp.protocol import ACCESS_REFUSED, NOT_ALLOWED, BrokerClosed
from txplatform.amqp.url import BrokerURL, parseBrokerURLs

from ..support import BROKER_URL, requireBroker
from .test_protocol import connectionClose, connectionStart, connectionTune

URL = BrokerURL.parse("amqp://guest:guest@127.0.0.1:5672/orders")


class WhyNotConnectedTests(SynchronousTestCase):
    def why(self, exception: BaseException, wasReady: bool = False) -> str:
        return whyNotConnected(URL, Failure(exception), wasReady)

    def test_refused(self) -> None:
        """
        The broker's refusals name the user, or the virtual host, and keep
        the broker's text.
        """
        self.assertEqual(
            self.why(BrokerClosed(ACCESS_REFUSED, "ACCESS_REFUSED - Login was refused")),
            "AMQP broker 127.0.0.1:5672 refused access for user 'guest'"
            " (ACCESS_REFUSED - Login was refused)",
        )
        self.assertEqual(
            self.why(BrokerClosed(NOT_ALLOWED, "NOT_ALLOWED - vhost orders not found")),
            "AMQP broker 127.0.0.1:5672 refused virtual host 'orders' to user 'guest'"
            " (NOT_ALLOWED - vhost orders not found)",
        )
        self.assertEqual(
            self.why(BrokerClosed(320, "CONNECTION_FORCED - shutdown")),
            "AMQP broker 127.0.0.1:5672 closed the connection (320 CONNECTION_FORCED - shutdown)",
        )

    def test_unreachable(self) -> None:
        """
        Nothing listening, no route, a name that does not resolve: the
        broker is unreachable, and the system's words follow.
        """
        for exception in [
            error.ConnectionRefusedError(),
            error.TCPTimedOutError(),
            error.DNSLookupError("broker.example"),
        ]:
            why = self.why(exception)
            self.assertTrue(why.startswith("AMQP broker 127.0.0.1:5672 is unreachable ("), why)

    def test_others(self) -> None:
        """
        A handshake that times out says how long it was given; a loss after
        the connection was ready, and anything else, say what happened.
        """
        self.assertEqual(
            self.why(TimeoutError()),
            "AMQP broker 127.0.0.1:5672 did not complete the AMQP handshake within 10 s",
        )
        self.assertEqual(
            self.why(ValueError("gone"), wasReady=True),
            "Lost the connection to AMQP broker 127.0.0.1:5672 (gone)",
        )
        closed = error.ConnectionDone("bye")
        self.assertEqual(
            self.why(closed),
            "The connection to AMQP broker 127.0.0.1:5672 failed before it was ready"
            f" ({Failure(closed).getErrorMessage()})",
        )


class _Endpoint:
    def __init__(self, result: Deferred[Any]) -> None:
        self.result = result

    def connect(self, factory: Any) -> Deferred[Any]:
        return self.result


class ReportingEndpointTests(SynchronousTestCase):
    def test_reports(self) -> None:
        """
        A failed attempt is reported and still fails; a connection is passed
        on; cancelling the attempt cancels the wrapped one.
        """
        reported: list[Failure] = []
        failing = ReportingEndpoint(
            _Endpoint(fail(error.ConnectionRefusedError())), reported.append
        )
        self.failureResultOf(failing.connect(Factory()), error.ConnectionRefusedError)
        [reason] = reported
        self.assertIsInstance(reason.value, error.ConnectionRefusedError)
        protocol = Protocol()
        self.assertIs(
            self.successResultOf(
                ReportingEndpoint(_Endpoint(succeed(protocol)), reported.append).connect(Factory())
            ),
            protocol,
        )
        cancelled: list[Deferred[Any]] = []
        pending = ReportingEndpoint(_Endpoint(Deferred(cancelled.append)), reported.append)
        attempt = pending.connect(Factory())
        attempt.cancel()
        self.assertEqual(len(cancelled), 1)
        self.failureResultOf(attempt, CancelledError)


class QuietClientServiceTests(SynchronousTestCase):
    def test_quiet(self) -> None:
        """
        ClientService's line per retry is not logged; its warnings are.
        """
        service = QuietClientService(_Endpoint(Deferred()), Factory(), clock=MemoryReactorClock())
        with capturedLogs() as events:
            service._log.info("Scheduling retry 1")
            service._log.warn("Duplicate ClientService.startService")
        self.assertEqual(
            [e["log_format"] for e in events], ["Duplicate ClientService.startService"]
        )
        self.assertIsInstance(service, ClientService)


class _Connection:
    """
    One TCP connection of a bus on a L{MemoryReactorClock}, the broker's side
    played by the test.
    """

    def __init__(self, reactor: MemoryReactorClock, index: int) -> None:
        host, port, factory, _, _ = reactor.tcpClients[index]
        self.connector = reactor.connectors[index]
        self.factory = factory
        self.transport = StringTransport()
        self.protocol = None

    def make(self) -> _Connection:
        self.protocol = self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5672))
        self.protocol.makeConnection(self.transport)
        return self

    def receive(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def lose(self) -> None:
        self.protocol.connectionLost(Failure(error.ConnectionDone("closed")))


class BusAttemptTests(SynchronousTestCase):
    """
    The bus on a L{MemoryReactorClock}: every order of failures and stops
    ends in ClientService's expected states (automat raises NoTransition,
    out of the connection's connectionLost here, otherwise), with one line
    per failed attempt.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.bus = AMQPBus(self.reactor, URL)
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def lines(self) -> list[str]:
        """
        What an operator reads: every event at warning level and above.
        """
        return [formatEvent(e) for e in self.events if e["log_level"] >= LogLevel.warn]

    def failures(self) -> list[dict[str, Any]]:
        return [e for e in self.events if "log_failure" in e]

    def connection(self, index: int = -1) -> _Connection:
        return _Connection(self.reactor, index)

    def retryDelay(self) -> float:
        [call] = self.reactor.getDelayedCalls()
        return call.getTime() - self.reactor.seconds()

    def refuse(self, code: int = ACCESS_REFUSED, text: str = "ACCESS_REFUSED - no") -> None:
        """
        The latest connection is made, its login refused, and it is closed.
        """
        connection = self.connection().make()
        connection.receive(connectionStart())
        if code == NOT_ALLOWED:
            connection.receive(connectionTune())
        connection.receive(connectionClose(code, text))
        self.assertTrue(connection.transport.disconnecting)
        connection.lose()

    def unreachable(self) -> None:
        """
        The latest connection attempt fails: nothing listens.
        """
        connection = self.connection()
        connection.factory.clientConnectionFailed(
            connection.connector, Failure(error.ConnectionRefusedError())
        )
        # HostnameEndpoint gives up once it tried every address the name
        # resolved to, when it would start the next attempt.
        self.reactor.advance(HostnameEndpoint._DEFAULT_ATTEMPT_DELAY)

    def test_refusedLogin(self) -> None:
        """
        A refused login is one line naming the user and the broker's reason,
        and when the next attempt is; the next attempt follows then.
        """
        self.bus.startService()
        text = "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN."
        self.refuse(ACCESS_REFUSED, text)
        delay = self.retryDelay()
        self.assertEqual(
            self.lines(),
            [
                f"AMQP broker 127.0.0.1:5672 refused access for user 'guest' ({text});"
                f" retrying in {delay:.1f} s"
            ],
        )
        self.reactor.advance(delay)
        self.assertEqual(len(self.reactor.tcpClients), 2)
        self.assertEqual(self.failures(), [])
        self.assertFalse(self.bus.connected)

    def test_missingVirtualHost(self) -> None:
        """
        A virtual host the broker does not have is one line naming it.
        """
        self.bus.startService()
        text = "NOT_ALLOWED - vhost orders not found"
        self.refuse(NOT_ALLOWED, text)
        [line] = self.lines()
        self.assertTrue(
            line.startswith(
                f"AMQP broker 127.0.0.1:5672 refused virtual host 'orders' to user 'guest' ({text});"
                " retrying in "
            ),
            line,
        )
        self.assertEqual(self.failures(), [])

    def test_unreachable(self) -> None:
        """
        A closed port is one line per attempt too.
        """
        self.bus.startService()
        for _ in range(3):
            self.unreachable()
            self.reactor.advance(self.retryDelay())
        lines = self.lines()
        self.assertEqual(len(lines), 3)
        for line in lines:
            self.assertIn("AMQP broker 127.0.0.1:5672 is unreachable (Connection was refused", line)
        self.assertEqual(len(self.reactor.tcpClients), 4)
        self.assertEqual(self.failures(), [])

    def test_backoff(self) -> None:
        """
        The delays double from 0.4 s up to 10 s, each with less than a
        second of jitter, over refused logins and closed ports alike.
        """
        self.bus.startService()
        delays = []
        for attempt in range(8):
            if attempt % 3 == 2:
                self.unreachable()
            else:
                self.refuse()
            delays.append(self.retryDelay())
            self.reactor.advance(delays[-1])
        for attempt, delay in enumerate(delays, 1):
            base = min(0.2 * 2**attempt, 10.0)
            self.assertTrue(base <= delay < base + 1, (attempt, delays))
        self.assertEqual(len(self.lines()), 8)

    def test_stopWhileHandshaking(self) -> None:
        """
        Stopped while the AMQP handshake runs, the bus aborts the connection
        and stops once it is lost: no retry, nothing logged.
        """
        self.bus.startService()
        connection = self.connection().make()
        stopped = self.bus.stopService()
        # Aborted: over TLS, a plain close would wait for the TLS handshake.
        self.assertTrue(connection.transport.disconnected)
        self.assertNoResult(stopped)
        connection.lose()
        self.successResultOf(stopped)
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertEqual((self.lines(), self.failures()), ([], []))

    def test_lostAfterStop(self) -> None:
        """
        A connection lost after the bus stopped (its handshake refused on
        the way) logs nothing and schedules nothing.
        """
        self.bus.startService()
        connection = self.connection().make()
        connection.receive(connectionStart())
        stopped = self.bus.stopService()
        connection.receive(connectionClose(ACCESS_REFUSED, "ACCESS_REFUSED - no"))
        connection.lose()
        self.successResultOf(stopped)
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertEqual((self.lines(), self.failures()), ([], []))

    def test_stopWhileConnecting(self) -> None:
        """
        Stopped while TCP connects, the bus stops the attempt; the failure
        the reactor then reports is not an error.
        """
        self.bus.startService()
        connection = self.connection()
        self.bus.stopService()
        self.assertTrue(connection.connector.stoppedConnecting)
        connection.factory.clientConnectionFailed(connection.connector, Failure(error.UserError()))
        self.successResultOf(self.bus.stopService())
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertEqual((self.lines(), self.failures()), ([], []))

    def test_stopWhileWaiting(self) -> None:
        """
        Stopped while it waits to retry, the bus cancels the retry at once.
        """
        self.bus.startService()
        self.refuse()
        self.successResultOf(self.bus.stopService())
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.reactor.advance(60)
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.assertEqual(len(self.lines()), 1)
        self.assertEqual(self.failures(), [])


NODES = parseBrokerURLs(
    "amqp://guest:guest@127.0.0.1:5681/orders,amqp://guest:guest@127.0.0.1:5682/orders,"
    "amqp://guest:guest@127.0.0.1:5683/orders"
)


class FailoverEndpointTests(SynchronousTestCase):
    def test_inTurn(self) -> None:
        """
        Each attempt goes to the next node, round and round; C{current} is
        the node of the latest, C{upcoming} that of the next.
        """
        reactor = MemoryReactorClock()
        endpoint = FailoverEndpoint(reactor, NODES, first=1)
        self.assertEqual((endpoint.current.port, endpoint.upcoming.port), (5682, 5682))
        for expected in [5682, 5683, 5681, 5682]:
            endpoint.connect(Factory.forProtocol(Protocol))
            self.assertEqual(endpoint.current.port, expected)
            self.assertEqual(reactor.tcpClients[-1][:2], ("127.0.0.1", expected))
        self.assertEqual(endpoint.upcoming.port, 5683)

    def test_randomFirst(self) -> None:
        """
        The first node is drawn at random, so that processes spread over the
        nodes.
        """
        firsts = {FailoverEndpoint(MemoryReactorClock(), NODES).current.port for _ in range(60)}
        self.assertEqual(firsts, {5681, 5682, 5683})
        self.assertRaises(ValueError, FailoverEndpoint, MemoryReactorClock(), [])


class BusFailoverTests(SynchronousTestCase):
    """
    A bus given the nodes of a cluster tries them in turn, under the same
    back-off, saying why each attempt failed and which node it tries next.
    """

    def setUp(self) -> None:
        BusAttemptTests.setUp(self)  # type: ignore[arg-type]
        self.patch(_attempts.random, "randrange", lambda n: 0)
        self.bus = AMQPBus(self.reactor, NODES)

    lines = BusAttemptTests.lines
    failures = BusAttemptTests.failures
    connection = BusAttemptTests.connection
    retryDelay = BusAttemptTests.retryDelay
    refuse = BusAttemptTests.refuse
    unreachable = BusAttemptTests.unreachable

    def test_nextNode(self) -> None:
        """
        A node that is unreachable, refuses the login, or loses the
        connection before it is ready: the next attempt goes to the next
        node, and the line names both.
        """
        self.bus.startService()
        self.assertEqual(self.reactor.tcpClients[-1][1], 5681)
        self.unreachable()
        self.reactor.advance(self.retryDelay())
        self.assertEqual(self.reactor.tcpClients[-1][1], 5682)
        self.refuse()
        self.reactor.advance(self.retryDelay())
        self.assertEqual(self.reactor.tcpClients[-1][1], 5683)
        connection = self.connection().make()
        connection.receive(connectionStart())
        connection.lose()
        self.reactor.advance(self.retryDelay())
        self.assertEqual(self.reactor.tcpClients[-1][1], 5681)
        lines = self.lines()
        self.assertEqual(len(lines), 3, lines)
        self.assertRegex(
            lines[0],
            r"^AMQP broker 127.0.0.1:5681 is unreachable \(.*\); trying 127.0.0.1:5682 in \d",
        )
        self.assertRegex(
            lines[1],
            r"^AMQP broker 127.0.0.1:5682 refused access for user 'guest' .*;"
            r" trying 127.0.0.1:5683 in \d",
        )
        self.assertRegex(
            lines[2],
            r"^The connection to AMQP broker 127.0.0.1:5683 failed before it was ready .*;"
            r" trying 127.0.0.1:5681 in \d",
        )
        self.assertEqual(self.failures(), [])
        self.assertEqual(self.bus.url, NODES[0])
        self.assertEqual(self.bus.urls, NODES)

    def test_transientCallQueues(self) -> None:
        """
        On a cluster (quorum queues for events), call queues are transient,
        so that another node can declare them when theirs is lost; on one
        broker they are durable.
        """
        quorum = parseBrokerURLs(
            ",".join(f"{url}?queue_type=quorum".replace("guest@", "guest:guest@") for url in NODES)
        )
        self.assertFalse(AMQPBus(self.reactor, quorum).rpcQueuesDurable())
        self.assertTrue(AMQPBus(self.reactor, NODES).rpcQueuesDurable())
        self.assertTrue(AMQPBus(self.reactor, URL).rpcQueuesDurable())


class BrokerRefusalTests(TestCase):
    """
    Against the real broker, for a few seconds: one line per attempt naming
    the reason, and no failure logged (a NoTransition would be one).
    """

    timeout = 30

    def setUp(self) -> None:
        requireBroker()
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.attempts = 0
        connect = ReportingEndpoint.connect

        def counting(endpoint: ReportingEndpoint, factory: Any) -> Deferred[Any]:
            self.attempts += 1
            return connect(endpoint, factory)

        self.patch(_attempts.ReportingEndpoint, "connect", counting)

    def url(self, **replaced: str) -> str:
        parts = urlsplit(BROKER_URL)
        user, _, host = parts.netloc.rpartition("@")
        username, _, password = user.partition(":")
        netloc = f"{username}:{replaced.get('password', password)}@{replaced.get('host', host)}"
        return urlunsplit(parts._replace(netloc=netloc, path=replaced.get("path", parts.path)))

    @inlineCallbacks
    def runFor(self, url: str, reason: str, seconds: float = 3.0) -> Any:
        """
        Run a bus on C{url} for C{seconds}; each attempt must have given one
        line with C{reason}.
        """
        bus = AMQPBus(reactor, BrokerURL.parse(url))
        bus.startService()
        yield deferLater(reactor, seconds, lambda: None)
        yield bus.stopService()
        yield deferLater(reactor, 0.1, lambda: None)  # any late loss
        lines = [formatEvent(e) for e in self.events if e["log_level"] >= LogLevel.warn]
        self.assertGreaterEqual(len(lines), 2, lines)
        # The last attempt may have been cut short by the stop.
        self.assertIn(len(lines), (self.attempts - 1, self.attempts), lines)
        for line in lines:
            self.assertIn(reason, line)
            self.assertRegex(line, r"; retrying in \d+\.\d s$")
        self.assertEqual([e for e in self.events if "log_failure" in e], [])
        self.assertFalse(any("Traceback" in formatEvent(e) for e in self.events))
        self.assertFalse(bus.connected)

    def test_wrongPassword(self) -> None:
        """
        A wrong password: the broker refused access for the user.
        """
        parts = urlsplit(BROKER_URL)
        return self.runFor(
            self.url(password="wrong-" + uuid.uuid4().hex),
            f"refused access for user '{parts.username}' (ACCESS_REFUSED - ",
        )

    def test_missingVirtualHost(self) -> None:
        """
        A virtual host that does not exist: the broker refused it.
        """
        vhost = "txplatform-missing-" + uuid.uuid4().hex[:8]
        return self.runFor(self.url(path="/" + vhost), f"refused virtual host '{vhost}'")

    def test_closedPort(self) -> None:
        """
        A port nothing listens on: the broker is unreachable.
        """
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        return self.runFor(self.url(host=f"127.0.0.1:{port}"), "is unreachable (")
