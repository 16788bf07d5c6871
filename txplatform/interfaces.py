"""
The seams of the platform: the bus, the payload codec, the database and the
codec for stored fields.  Each has several implementations (in-process and
AMQP buses; SQLite and PostgreSQL; plain and encrypted codecs), chosen when a
process starts, so services never name one.
"""

from __future__ import annotations

from zope.interface import Attribute, Interface

__all__ = [
    "IBus",
    "ISubscription",
    "IPayloadCodec",
    "IDatabase",
    "ITransaction",
    "IRows",
    "IFieldCodec",
]


class ISubscription(Interface):
    """
    A running consumer: the handlers one replica serves for a service, or
    one event handler of a group.
    """

    def stop():
        """
        Take no new work; fire the returned Deferred once the work already
        taken is finished (or handed back to the bus).
        """


class IBus(Interface):
    """
    Calls between services (RPC) and events they publish.

    Semantics every implementation shares:
      - Replicas serving the same service, or subscribing with the same
        group, are competing consumers: each message goes to one of them.
      - Every group whose pattern matches an event gets its own copy.
      - A call has a deadline; a call not answered by then fails with
        L{txplatform.errors.DeadlineExceeded}, and a call still waiting in
        the queue when its deadline passes is dropped, not executed late.
      - A handler's L{txplatform.errors.ServiceError} reaches the caller as
        the same typed error (code, message, details).
      - Pending calls are taken in priority order (higher first), then in
        arrival order.
      - An event is acknowledged only after its handler succeeded; failures
        are retried a bounded number of times, then dead-lettered; a
        malformed event is dead-lettered at once.
    """

    def call(service, method, payload, timeout=None, priority=None, origin=None, idempotent=False):
        """
        Call C{method} of the service with L{ServiceId} C{service}.

        @param payload: A JSON-compatible dict.
        @param timeout: Seconds to wait for the answer (the bus has a
            default); the origin's deadline caps it.
        @param priority: A L{txplatform.context.Priority}.
        @param origin: A L{txplatform.context.Origin}: caller, trace id and
            the deadline inherited from an outer call.
        @param idempotent: Whether doing the call twice is harmless: if the
            bus loses a call it sent (a broken connection), it sends it again
            rather than failing it.  A bus that can say a call is a second
            copy (the AMQP and direct buses) sends the others again too,
            marked so: the service takes such a copy as a redelivered call,
            which a method that must not run twice answers from its reply
            log.  Either is sent again once; lost a second time, it fails.
        @return: A Deferred firing with the result payload, or failing with a
            L{txplatform.errors.ServiceError}.
        """

    def publish(event, payload, origin=None, messageId=None):
        """
        Publish event C{event} (a dotted name such as C{post.created}).

        @param messageId: Stable id for the event, so a republished event
            is recognised as the same one; a new id is made when omitted.
        @return: A Deferred firing once the bus holds the event (for a broker:
            once it confirmed it).
        """

    def serve(service, handlers, prefetch=None):
        """
        Serve calls to C{service}.

        @param handlers: Maps method names to callables taking
            C{(payload, CallContext)} and returning the result payload or a
            Deferred of it.
        @param prefetch: At most this many calls in progress at once.
        @return: A Deferred firing with an L{ISubscription}.
        """

    def subscribe(pattern, handler, group=None, prefetch=None, onGap=None):
        """
        Handle events matching C{pattern} (AMQP topic syntax: C{*} is one
        word, C{#} zero or more) as a member of C{group}.

        @param handler: A callable taking C{(payload, EventContext)}.
        @param group: The consumer group whose members share the events; its
            queue lasts while members come and go.  C{None} makes a private
            subscription instead: it gets every matching event published
            while it exists (each replica its own copy, as for cache
            invalidation), and its queue goes when it stops.
        @param onGap: For a private subscription: called when it was set up
            again after the bus lost its connection, and may have missed
            events meanwhile (a cache should then forget everything).
        @return: A Deferred firing with an L{ISubscription}.
        """


class IPayloadCodec(Interface):
    """
    Turns payloads into the bytes a bus carries, and back.

    C{binding} names the message the payload belongs to (kind, addresses,
    method or event, message id); a codec that authenticates payloads binds
    it in, so a payload moved to another message is rejected.
    """

    def encode(payload, binding):
        """
        @return: bytes
        """

    def decode(data, binding):
        """
        @return: the payload
        @raise txplatform.errors.MalformedMessage: C{data} is not a payload
            for that binding.
        """


class IRows(Interface):
    """
    The rows of a statement given to L{ITransaction.query}; read them
    before the transaction ends.
    """

    def fetchone():
        """
        The first row, or C{None} if there is none.
        """

    def fetchall():
        """
        Every row, as a list of tuples.
        """


class ITransaction(Interface):
    """
    A cursor inside a database transaction; SQL uses C{?} placeholders
    whatever the database.
    """

    def execute(sql, params=()):
        """
        Run one statement; returns the transaction itself.  Its failure (a
        constraint's: L{txplatform.database.IntegrityError}) is raised here,
        as is that of any statement sent before it.
        """

    def send(sql, params=()):
        """
        Run one statement whose outcome nothing reads (no rows, no
        C{rowcount}), such as an INSERT that cannot be expected to fail:
        on PostgreSQL it goes to the server with the next statement that is
        executed, or with the COMMIT, in one round trip; in order, and in
        this transaction, as if executed.  Its failure is raised by that
        next C{execute} or by the commit, and fails the transaction as any
        other.  Use C{execute} for a statement whose failure the caller
        catches.
        """

    def query(sql, params=()):
        """
        Run one statement whose rows are read later, and return an
        L{IRows} of them: on PostgreSQL it goes to the server with the next
        statement that is waited for (an C{execute}, the first read of any
        query's rows, or the COMMIT), so that several reads whose
        statements do not depend on each other's rows share one round
        trip.  In order with every other statement of the transaction, as
        if executed; its failure is raised by whichever of those sends it.
        """

    def fetchone():
        pass

    def fetchall():
        pass

    def lock(*names):
        """
        Hold the named locks until the transaction ends: the statements
        after this call, in transactions that lock a common name, run one
        transaction after the other.  For check-then-write sequences (a
        tombstone, then an insert) that must not interleave with another
        transaction's write-then-delete.  The locks are sent as by C{send}:
        taken before the next statement runs, not when this returns.
        """

    traceParent = Attribute(
        "The W3C traceparent of this transaction's span (L{txplatform.traces}), or"
        " None: what the outbox stores with the events it stages, so that their"
        " publication joins the trace of the change they announce."
    )

    traceState = Attribute(
        "The W3C tracestate that goes with traceParent (the trace's vendor entries),"
        " or None when it is empty: the outbox stores it beside traceParent."
    )

    correlationId = Attribute(
        "The correlation id of the call or event whose handler started this"
        " transaction (L{txplatform.context.handling}), or None: the events the"
        " outbox stages in it carry it, so they are traced to the request that"
        " caused them."
    )

    def afterCommit(f):
        """
        Call C{f} (with no arguments, in the reactor's thread) once this
        transaction has committed, before the Deferred of its interaction
        fires; never if it rolls back.  A caller who cancels that Deferred
        while the transaction runs hears C{CancelledError} at once; if the
        transaction then commits, C{f} is called all the same.
        """

    rowcount = Attribute("Rows changed by the last statement.")


class IDatabase(Interface):
    """
    A relational database.  SQLite's transactions run in the reactor's
    thread (short ones: a transaction blocks the reactor while it runs);
    PostgreSQL's in a thread pool, but for batches (L{runBatch}), which it
    sends from the reactor.
    """

    dialect = Attribute("C{'sqlite'} or C{'postgresql'}.")

    def start():
        """
        Make ready to run transactions: start the pool of threads where
        the dialect has one (PostgreSQL); SQLite's connection opens with
        its first transaction.
        """

    def runInteraction(interaction, *args, **kwargs):
        """
        Run C{interaction(transaction, *args, **kwargs)} in one transaction,
        committed when it returns and rolled back if it raises: in a thread
        on PostgreSQL, in the caller's (the reactor's) on SQLite, after any
        transaction of the same database under way there.

        @return: A Deferred of its result.
        """

    def runBatch(interaction, *args, **kwargs):
        """
        Run C{interaction(transaction, *args, **kwargs)}, an interaction that
        says everything before it hears anything: it sends, queries, locks
        and asks to be called after the commit, and returns what reads its
        queries' rows, read once the transaction has committed.  The rest
        (C{execute}, C{executemany}, C{fetchone}, C{fetchall},
        C{rowcount}, and reading a query's rows before it has returned)
        raises C{TypeError}, on every database.

        On PostgreSQL it runs in the reactor's thread, once a connection is
        free, and the transaction goes as one message through libpq's
        non-blocking API, its answer read when it comes: no thread waits
        for it.  On SQLite it runs as L{runInteraction}, in the reactor's
        thread.

        @return: A Deferred of its result, fired once committed.
        """

    def runQuery(sql, params=()):
        """
        @return: A Deferred of all rows, as tuples.
        """

    def runOperation(sql, params=()):
        """
        @return: A Deferred firing when the statement has run.
        """

    def migrate(component, migrations, reindex=None):
        """
        Apply the L{txplatform.database.Migration}s of C{component} not yet
        applied, in order, in one transaction, holding a lock so replicas
        starting together apply each one once.

        @param reindex: Called with the transaction and a table's name for
            each table a migration re-indexes (L{Migration.reindex}); needed
            when one does.

        @return: A Deferred of the list of versions applied.
        """

    def close():
        """
        Close every connection.

        @return: A Deferred.
        """


class IFieldCodec(Interface):
    """
    Turns the user fields a service stores into column values, and back.

    Stores call it for every user field (names, emails, texts), naming the
    table, column and row, so an encrypting codec can bind each value to
    its place; lookups go through L{index}.
    """

    def seal(table, column, rowId, value):
        """
        @param value: text
        @return: bytes to store
        """

    def open(table, column, rowId, data):
        """
        @return: the text
        @raise txplatform.errors.ServiceError: C{data} is not a valid value
            for that place.
        """

    def index(table, column, value):
        """
        The lookup key for an already-normalised C{value}: equal values give
        equal keys.

        @return: bytes
        """

    def indexes(table, column, value):
        """
        Every lookup key C{value} may be stored under (one per readable key
        version): what to look for.

        @return: a non-empty list of bytes
        """
