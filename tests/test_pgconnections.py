"""
Tests for L{txplatform.pgconnections}, against a fake libpq connection
(the real one is tested through L{txplatform.database} in
L{tests.test_database}).
"""

import os
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import SynchronousTestCase

from txplatform.pgconnections import ConnectionClosed, ReactorConnection, ReactorConnections


class FakePGconn:
    """
    The part of C{psycopg.pq.PGconn} a L{ReactorConnection} uses: what is
    sent is kept, C{unsent} bytes stay unflushed until C{flush} is called
    that many times, and results come as the test gives them.
    """

    nonblocking = 0

    def __init__(self) -> None:
        # A real descriptor, as the connection duplicates it.
        self.socket, self._other = os.pipe()
        self.pipe = (self.socket, self._other)
        self.sent: list[bytes] = []
        self.unsent = 0
        self.status = 0
        self.busy = False
        self.results: list[Any] = []
        self.dead = False

    def send_query(self, text: bytes) -> None:
        if self.dead:
            raise OSError("server closed the connection unexpectedly")
        self.sent.append(text)

    def flush(self) -> int:
        if self.unsent:
            self.unsent -= 1
        return 1 if self.unsent else 0

    def consume_input(self) -> None:
        if self.dead:
            raise OSError("server closed the connection unexpectedly")

    def is_busy(self) -> bool:
        return self.busy

    def get_result(self) -> Any:
        return self.results.pop(0)


class FakeConnection:
    """
    A psycopg connection, as far as a L{ReactorConnection} sees one.
    """

    def __init__(self) -> None:
        self.pgconn = FakePGconn()
        self.closed = False

    def close(self) -> None:
        self.closed = True
        for fd in self.pgconn.pipe:
            os.close(fd)


class ReactorConnectionTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactor()
        self.psycopg = FakeConnection()
        self.addCleanup(lambda: self.psycopg.closed or self.psycopg.close())
        self.pgconn = self.psycopg.pgconn
        self.connection = ReactorConnection(self.reactor, self.psycopg)
        self.lost: list[ReactorConnection] = []
        self.connection.lost = self.lost.append

    def test_readsWhileIdle(self) -> None:
        """
        A connection is non-blocking, and read from as soon as it is made.
        """
        self.assertEqual(self.pgconn.nonblocking, 1)
        self.assertIn(self.connection, self.reactor.readers)
        # A duplicate of libpq's socket, which libpq may close first.
        fileno = self.connection.fileno()
        self.assertNotEqual(fileno, self.pgconn.socket)
        self.assertEqual(os.fstat(fileno).st_ino, os.fstat(self.pgconn.socket).st_ino)
        self.connection.close()
        self.assertEqual(self.connection.fileno(), -1)
        self.assertRaises(OSError, os.fstat, fileno)

    def test_resultsAcrossReads(self) -> None:
        """
        The results of a query are gathered over as many reads as they
        take, until libpq says there are no more.
        """
        d = self.connection.query("BEGIN\n;\nSELECT 1\n;\nCOMMIT")
        self.assertEqual(self.pgconn.sent, [b"BEGIN\n;\nSELECT 1\n;\nCOMMIT"])
        self.assertNoResult(d)
        self.pgconn.results = ["begin", "select"]
        # Two results, then libpq waits for more input.
        original = self.pgconn.get_result

        def twoThenBusy() -> Any:
            result = original()
            if not self.pgconn.results:
                self.pgconn.busy = True
            return result

        self.pgconn.get_result = twoThenBusy  # type: ignore[method-assign]
        self.connection.doRead()
        self.assertNoResult(d)
        self.pgconn.busy = False
        self.pgconn.results = ["commit", None]
        self.connection.doRead()
        self.assertEqual(self.successResultOf(d), ["begin", "select", "commit"])

    def test_oneAtATime(self) -> None:
        """
        A second query before the first's answer is a programming error.
        """
        self.connection.query("SELECT 1")
        self.assertRaises(RuntimeError, self.connection.query, "SELECT 2")

    def test_writesWhatIsLeft(self) -> None:
        """
        What the socket did not take is written when the reactor says it
        can be, and the connection stops asking once all is written.
        """
        self.pgconn.unsent = 3
        self.connection.query("SELECT 1")
        self.assertIn(self.connection, self.reactor.writers)
        self.connection.doWrite()
        self.assertIn(self.connection, self.reactor.writers)
        self.connection.doWrite()
        self.assertNotIn(self.connection, self.reactor.writers)

    def test_lostWhileWaiting(self) -> None:
        """
        A connection lost while a query waits fails it with
        L{ConnectionClosed}, closes, leaves the reactor and says so; a
        query after that fails at once.
        """
        self.pgconn.unsent = 2
        d = self.connection.query("SELECT 1")
        self.pgconn.dead = True
        self.connection.doRead()
        failure = self.failureResultOf(d, ConnectionClosed)
        self.assertIn("server closed the connection unexpectedly", str(failure.value))
        self.assertTrue(self.connection.broken)
        self.assertTrue(self.psycopg.closed)
        self.assertNotIn(self.connection, self.reactor.readers)
        self.assertNotIn(self.connection, self.reactor.writers)
        self.assertEqual(self.lost, [self.connection])
        self.failureResultOf(self.connection.query("SELECT 2"), ConnectionClosed)

    def test_lostWhenSending(self) -> None:
        """
        A connection found dead when a query is sent fails the query.
        """
        self.pgconn.dead = True
        self.failureResultOf(self.connection.query("SELECT 1"), ConnectionClosed)
        self.assertTrue(self.connection.broken)
        self.assertEqual(self.lost, [self.connection])

    def test_endedWhileIdle(self) -> None:
        """
        A server that ends an idle connection is noticed when it does.
        """
        self.pgconn.status = 1  # CONNECTION_BAD
        self.connection.doRead()
        self.assertTrue(self.connection.broken)
        self.assertEqual(self.lost, [self.connection])

    def test_idleInputForgotten(self) -> None:
        """
        Input on a healthy idle connection (a notice) changes nothing.
        """
        self.connection.doRead()
        self.assertFalse(self.connection.broken)

    def test_close(self) -> None:
        """
        Closing fails a waiting query; closing again does nothing more.
        """
        d = self.connection.query("SELECT 1")
        self.connection.close()
        self.failureResultOf(d, ConnectionClosed)
        self.connection.close()
        self.assertEqual(self.lost, [self.connection])


class ReactorConnectionsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactor()
        self.opening: list[Deferred[Any]] = []
        self.pool = ReactorConnections(self.reactor, FakeConnection, 2, self.inThread)
        self.addCleanup(self.pool.close)

    def inThread(self, f: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.opening.append(d)
        d.addCallback(lambda _: f())
        return d

    def test_opensAsNeeded(self) -> None:
        """
        Connections are opened when asked for, up to the size; after that
        whoever asks waits for one given back, in the order they asked.
        """
        first, second, third, fourth = (self.pool.acquire() for _ in range(4))
        self.assertEqual(len(self.opening), 2)
        for d in self.opening:
            d.callback(None)
        a = self.successResultOf(first)
        b = self.successResultOf(second)
        self.assertIsNot(a, b)
        self.assertEqual(len(self.pool), 2)
        self.assertNoResult(third)
        self.pool.release(b)
        self.assertIs(self.successResultOf(third), b)
        self.pool.release(a)
        self.assertIs(self.successResultOf(fourth), a)
        self.pool.release(a)
        self.assertIs(self.successResultOf(self.pool.acquire()), a)
        self.assertEqual(len(self.opening), 2)

    def test_waitingCancelled(self) -> None:
        """
        One who gives up waiting leaves the queue: the connection released
        next goes to whoever waits after, or to the idle.
        """
        first = self.pool.acquire()
        self.opening[0].callback(None)
        a = self.successResultOf(first)
        second = self.pool.acquire()
        self.opening[1].callback(None)
        b = self.successResultOf(second)
        gaveUp, waiting = self.pool.acquire(), self.pool.acquire()
        gaveUp.cancel()
        self.failureResultOf(gaveUp, CancelledError)
        self.pool.release(a)
        self.assertIs(self.successResultOf(waiting), a)
        self.pool.release(b)
        self.assertIs(self.successResultOf(self.pool.acquire()), b)

    def test_openFails(self) -> None:
        """
        A connection that cannot be opened fails whoever waits longest; the
        next to ask opens another.
        """
        d = self.pool.acquire()
        self.opening[0].errback(ConnectionRefusedError("no server"))
        self.failureResultOf(d, ConnectionRefusedError)
        self.assertEqual(len(self.pool), 0)
        waiting = self.pool.acquire()
        self.assertEqual(len(self.opening), 2)
        self.pool.close()
        self.failureResultOf(waiting, ConnectionClosed)

    def test_openFailsForAll(self) -> None:
        """
        When a connection cannot be opened and none is open or being
        opened, everyone waiting hears why (none would be given one).
        """
        pool = ReactorConnections(self.reactor, FakeConnection, 1, self.inThread)
        first, second = pool.acquire(), pool.acquire()
        self.assertEqual(len(self.opening), 1)
        self.opening[0].errback(ConnectionRefusedError("no server"))
        self.failureResultOf(first, ConnectionRefusedError)
        self.failureResultOf(second, ConnectionRefusedError)

    def test_openFailsWhileOthersOpen(self) -> None:
        """
        When one of two connections being opened fails, the one who waits
        longest hears why, and the other waits for the other connection.
        """
        first, second = self.pool.acquire(), self.pool.acquire()
        self.opening[0].errback(ConnectionRefusedError("no server"))
        self.failureResultOf(first, ConnectionRefusedError)
        self.assertNoResult(second)
        self.opening[1].callback(None)
        self.successResultOf(second)

    def test_unusable(self) -> None:
        """
        A connection opened but unusable (no socket to watch) is closed, and
        counts as one that could not be opened.
        """

        def broken() -> FakeConnection:
            connection = FakeConnection()
            connection.pgconn.socket = -1
            self.broken.append(connection)
            return connection

        self.broken: list[FakeConnection] = []
        pool = ReactorConnections(self.reactor, broken, 1, self.inThread)
        waiting = pool.acquire()
        self.opening[0].callback(None)
        self.failureResultOf(waiting, OSError)
        self.assertTrue(self.broken[0].closed)
        self.assertEqual(len(pool), 0)

    def test_brokenReplaced(self) -> None:
        """
        A connection that breaks is forgotten, and one opened in its place
        for whoever waits.
        """
        first, second, third = (self.pool.acquire() for _ in range(3))
        for d in self.opening:
            d.callback(None)
        a = self.successResultOf(first)
        a.close()
        self.pool.release(a)
        self.assertEqual(len(self.pool), 1)
        self.assertEqual(len(self.opening), 3)
        self.opening[2].callback(None)
        self.assertIsNot(self.successResultOf(third), a)

    def test_idle(self) -> None:
        """
        L{ReactorConnections.idle} hands out a connection given back, at
        once, and None when there is none (opening nothing), it broke, or
        the connections are closed.
        """
        self.assertIsNone(self.pool.idle())
        self.assertEqual(self.opening, [])
        d = self.pool.acquire()
        self.opening[0].callback(None)
        a = self.successResultOf(d)
        self.assertIsNone(self.pool.idle())
        self.pool.release(a)
        self.assertIs(self.pool.idle(), a)
        self.assertIsNone(self.pool.idle())
        self.pool.release(a)
        a.close()
        self.assertIsNone(self.pool.idle())
        d = self.pool.acquire()
        self.opening[1].callback(None)
        b = self.successResultOf(d)
        self.pool.release(b)
        self.pool.close()
        self.assertIsNone(self.pool.idle())

    def test_brokenIdleSkipped(self) -> None:
        """
        An idle connection that broke is not handed out.
        """
        d = self.pool.acquire()
        self.opening[0].callback(None)
        a = self.successResultOf(d)
        self.pool.release(a)
        a.close()
        self.assertEqual(len(self.pool), 0)
        waiting = self.pool.acquire()
        self.assertNoResult(waiting)
        self.pool.close()
        self.failureResultOf(waiting, ConnectionClosed)

    def test_close(self) -> None:
        """
        Closing closes every connection and fails whoever waits; asking
        after that fails at once, and a connection opened meanwhile is
        closed.
        """
        first, second, third = (self.pool.acquire() for _ in range(3))
        self.opening[0].callback(None)
        a = self.successResultOf(first)
        self.pool.close()
        self.assertTrue(a.broken)
        self.failureResultOf(third, ConnectionClosed)
        self.failureResultOf(second, ConnectionClosed)
        self.failureResultOf(self.pool.acquire(), ConnectionClosed)
        late = self.opening[1]
        late.callback(None)
        self.assertEqual(len(self.pool), 0)
