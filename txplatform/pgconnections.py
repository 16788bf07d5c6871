# -*- test-case-name: tests.test_pgconnections -*-
"""
PostgreSQL connections the reactor drives, through libpq's non-blocking
API (psycopg's C{pq} layer): for the transactions that say everything
before they hear anything (L{txplatform.database.PostgresDatabase.runBatch}),
which are one message and one answer, and need no thread to wait in.

Handing a transaction to a thread of a pool and its outcome back costs
more than the transaction itself when it is one round trip: a thread
wakes, takes the GIL from the reactor, blocks in C{recv}, wakes again and
hands back (measured in docs/benchmarks.md).  Here the reactor sends the
batch as one simple query and reads its results when the socket is
readable; nothing else runs for it in between.

Opening a connection is blocking (libpq's connect, with its DNS lookup and
authentication) and is done in a thread, once per connection.
"""

from __future__ import annotations

import os
from collections import deque
from typing import Any, Callable

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorFDSet, IReadDescriptor, IWriteDescriptor
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

__all__ = ["ReactorConnection", "ReactorConnections", "ConnectionClosed"]


class ConnectionClosed(Exception):
    """
    The connection was lost or closed before the batch's answer came: the
    batch may or may not have committed.
    """


@implementer(IReadDescriptor, IWriteDescriptor)
class ReactorConnection:
    """
    One libpq connection, in non-blocking mode, read and written when the
    reactor says its socket is ready.  One simple query at a time.

    @ivar connection: The psycopg connection it came from: what adapts
        values to and from PostgreSQL's text for it (its own I/O methods
        are never called once this holds it).
    @ivar pgconn: Its libpq connection (C{psycopg.pq.PGconn}).
    @ivar broken: Whether it failed or was closed: no more queries go on it.
    """

    log = Logger()

    def __init__(self, reactor: IReactorFDSet, connection: Any, pgconn: Any = None) -> None:
        self._reactor = reactor
        self.connection = connection
        self.pgconn = pgconn if pgconn is not None else connection.pgconn
        self.pgconn.nonblocking = 1
        self.broken = False
        # What binds values into text and reads rows out of results for
        # this connection, made when first needed (by its user).
        self.binder: Any = None
        self.loader: Any = None
        # The reactor watches a duplicate of libpq's socket: libpq closes
        # its own when it finds the connection lost, before this can take
        # it out of the reactor's poller (which then could not).
        self._fileno = os.dup(self.pgconn.socket)
        self._waiting: Deferred[list[Any]] | None = None
        self._results: list[Any] = []
        self._writing = False
        self.lost: Callable[[ReactorConnection], None] = lambda connection: None
        # Read while idle too: a server that ends the connection (a restart,
        # an idle timeout) is seen at once, not by the next batch.
        reactor.addReader(self)

    def logPrefix(self) -> str:
        return "postgresql"

    def fileno(self) -> int:
        return self._fileno if not self.broken else -1

    def query(self, text: str) -> Deferred[list[Any]]:
        """
        Send C{text} (statements separated by C{;}) as one simple query.

        @return: A Deferred of its results (C{psycopg.pq.PGresult}), one
            per statement run: a failed statement's is the last, the rest
            of the text not run.  L{ConnectionClosed} if the connection
            ended before they all came.
        """
        if self.broken:
            return fail(ConnectionClosed("the connection to PostgreSQL is closed"))
        if self._waiting is not None:
            raise RuntimeError("one query at a time on a connection")
        try:
            self.pgconn.send_query(text.encode("utf-8"))
        except Exception as e:
            self._break(e)
            return fail(ConnectionClosed(f"PostgreSQL connection lost: {_oneLine(e)}"))
        self._waiting = Deferred()
        self._results = []
        waiting = self._waiting
        self.doWrite()
        return waiting

    def doWrite(self) -> None:
        # libpq keeps what the socket did not take: flush() says 1 while some
        # is left, and the reactor says when the socket takes more.
        try:
            left = self.pgconn.flush()
        except Exception as e:
            self._break(e)
            return
        if left and not self._writing:
            self._writing = True
            self._reactor.addWriter(self)
        elif not left and self._writing:
            self._writing = False
            self._reactor.removeWriter(self)

    def doRead(self) -> None:
        try:
            self.pgconn.consume_input()
        except Exception as e:
            self._break(e)
            return
        if self._waiting is None:
            # Idle: nothing should come but the end of the connection (a
            # notice, or a parameter's new value, is taken and forgotten).
            if self.pgconn.status != _OK:
                self._break(ConnectionClosed("the server ended the connection"))
            return
        while not self.pgconn.is_busy():
            result = self.pgconn.get_result()
            if result is None:
                waiting, self._waiting = self._waiting, None
                results, self._results = self._results, []
                waiting.callback(results)
                return
            self._results.append(result)

    def connectionLost(self, reason: Failure) -> None:
        self._break(reason.value)

    def _break(self, why: BaseException) -> None:
        if self.broken:
            return
        self._reactor.removeReader(self)
        if self._writing:
            self._writing = False
            self._reactor.removeWriter(self)
        self.broken = True
        os.close(self._fileno)
        try:
            self.connection.close()
        except Exception:
            self.log.failure("Closing a broken PostgreSQL connection failed")
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.errback(ConnectionClosed(f"PostgreSQL connection lost: {_oneLine(why)}"))
        self.lost(self)

    def close(self) -> None:
        """
        Close the connection; a query waiting fails with L{ConnectionClosed}.
        """
        self._break(ConnectionClosed("the connection to PostgreSQL was closed"))


def _oneLine(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


# psycopg.pq.ConnStatus.OK, without importing psycopg where this is read.
_OK = 0


class ReactorConnections:
    """
    At most C{size} L{ReactorConnection}s, opened as they are needed and
    kept; a batch waits for one in the order it asked.

    @param connect: Opens a psycopg connection (blocking).
    @param inThread: Calls a function in a thread, and returns a Deferred
        of its result: where C{connect} runs.
    """

    def __init__(
        self,
        reactor: Any,
        connect: Callable[[], Any],
        size: int,
        inThread: Callable[[Callable[[], Any]], Deferred[Any]],
    ) -> None:
        self._reactor = reactor
        self._connect = connect
        self._inThread = inThread
        self.size = size
        self._idle: list[ReactorConnection] = []
        self._all: set[ReactorConnection] = set()
        self._opening = 0
        self._waiting: deque[Deferred[ReactorConnection]] = deque()
        self._closed = False

    def __len__(self) -> int:
        """
        How many are open (in use or idle).
        """
        return len(self._all)

    def idle(self) -> ReactorConnection | None:
        """
        An idle connection, of one's own until L{release}d, if there is one
        now; else None (and L{acquire} waits for one).
        """
        while self._idle and not self._closed:
            connection = self._idle.pop()
            if not connection.broken:
                return connection
        return None

    def acquire(self) -> Deferred[ReactorConnection]:
        """
        A connection of one's own until L{release}d: an idle one, a new one
        if there are fewer than C{size}, else the next one released.
        """
        if self._closed:
            return fail(ConnectionClosed("the database is closed"))
        connection = self.idle()
        if connection is not None:
            return succeed(connection)
        # One who gives up waiting (a caller that cancels) leaves the queue:
        # a connection released is not handed to nobody.
        waiting: Deferred[ReactorConnection] = Deferred(self._waiting.remove)
        self._waiting.append(waiting)
        if len(self._all) + self._opening < self.size:
            self._open()
        return waiting

    def _open(self) -> None:
        self._opening += 1

        def made(connection: Any) -> ReactorConnection:
            try:
                return ReactorConnection(self._reactor, connection)
            except BaseException:
                connection.close()
                raise

        def opened(connection: ReactorConnection) -> None:
            self._opening -= 1
            if self._closed:
                connection.close()
                return
            connection.lost = self._lost
            self._all.add(connection)
            self.release(connection)

        def failed(reason: Failure) -> None:
            self._opening -= 1
            # Whoever waits longest hears why.  The others wait on for a
            # connection released, unless there is none to release and none
            # being opened: then they hear the same.
            if self._waiting:
                self._waiting.popleft().errback(reason)
            if not self._all and not self._opening:
                while self._waiting:
                    self._waiting.popleft().errback(reason)

        self._inThread(self._connect).addCallback(made).addCallbacks(opened, failed)

    def release(self, connection: ReactorConnection) -> None:
        """
        Give C{connection} back: to whoever waits longest, or to the idle.
        """
        if connection.broken:
            self._lost(connection)
            return
        if self._waiting:
            self._waiting.popleft().callback(connection)
        else:
            self._idle.append(connection)

    def _lost(self, connection: ReactorConnection) -> None:
        if connection in self._all:
            self._all.discard(connection)
            if connection in self._idle:
                self._idle.remove(connection)
        # One that waits gets a connection opened in its place.
        if self._waiting and not self._closed and len(self._all) + self._opening < self.size:
            self._open()

    def close(self) -> None:
        """
        Close every connection; batches waiting for one fail with
        L{ConnectionClosed}.
        """
        self._closed = True
        waiting, self._waiting = self._waiting, deque()
        for d in waiting:
            d.errback(ConnectionClosed("the database is closed"))
        for connection in list(self._all):
            connection.close()
        self._idle = []
