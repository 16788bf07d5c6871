"""
Tests for C{GET /v1/notifications/stream}: Server-Sent Events through real
HTTP, the services behind on the in-process bus.
"""

from __future__ import annotations

import json
from typing import Any

import treq
from twisted.internet.defer import Deferred, inlineCallbacks

from txplatform.context import Priority

from ..support import SQLiteMixin, eventually
from .harness import PlatformTestCase


class EventStream:
    """
    A client reading one stream: its events and comments as they come.
    """

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.comments: list[str] = []
        self.retry: int | None = None
        self._buffer = b""
        self.response: Any = None
        self.ended: Deferred[Any] | None = None

    def feed(self, data: bytes) -> None:
        self._buffer += data
        while b"\n\n" in self._buffer:
            block, self._buffer = self._buffer.split(b"\n\n", 1)
            event: dict[str, Any] = {}
            for line in block.decode().split("\n"):
                field, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if field == "":
                    self.comments.append(value)
                elif field == "retry":
                    self.retry = int(value)
                elif field == "data":
                    event["data"] = json.loads(value)
                else:
                    event[field] = value
            if "data" in event:
                self.events.append(event)

    @property
    def ids(self) -> list[str]:
        return [e["id"] for e in self.events]


class StreamTestCase(SQLiteMixin, PlatformTestCase):
    """
    Alice and Bob, logged in, and a client for their streams.
    """

    heartbeat = 0.2

    @inlineCallbacks
    def setUp(self) -> Any:
        yield super().setUp()
        for name in ("alice", "bob"):
            yield self.register(name)
        self.tokens = {}
        for name in ("alice", "bob"):
            self.tokens[name] = yield self.login(name)

    @inlineCallbacks
    def open(self, who: str, lastEventId: str | None = None, ticket: str | None = None) -> Any:
        """
        Open C{who}'s stream with their token, or with C{ticket} (and no
        header at all, as a browser's EventSource does).
        """
        headers = {"Authorization": [f"Bearer {self.tokens[who]}"]} if ticket is None else {}
        if lastEventId is not None:
            headers["Last-Event-ID"] = [lastEventId]
        url = self.url("/v1/notifications/stream")
        if ticket is not None:
            url += f"?ticket={ticket}"
        response = yield treq.get(url, headers=headers, unbuffered=True, persistent=False)
        stream = EventStream()
        stream.response = response
        stream.ended = treq.collect(response, stream.feed)
        self.addCleanup(self.close, stream)
        return stream

    def close(self, stream: EventStream) -> Any:
        if stream.ended is not None and not stream.ended.called:
            stream.response.original._transport.loseConnection()  # the client goes away
            return stream.ended.addErrback(lambda f: None)
        return None

    @inlineCallbacks
    def endsWithSession(self, stream: EventStream) -> Any:
        """
        Check that Bob's C{stream} beats, and ends once he logs out.
        """
        yield eventually(lambda: "ping" in stream.comments, timeout=5)
        reply = yield self.request("DELETE", "/v1/sessions/current", token=self.tokens["bob"])
        self.assertEqual(reply.status, 204)
        yield stream.ended
        yield eventually(lambda: len(self.streams) == 0)

    def post(self, who: str, body: str) -> Any:
        return self.request("POST", "/v1/posts", json={"body": body}, token=self.tokens[who])


class StreamTests(StreamTestCase):
    @inlineCallbacks
    def test_live(self) -> Any:
        """
        A notification reaches its recipient's open stream as it is made:
        an event with the notification's id and JSON; nobody else's.
        """
        bobs = yield self.open("bob")
        alices = yield self.open("alice")
        self.assertEqual(bobs.response.code, 200)
        self.assertEqual(
            bobs.response.headers.getRawHeaders("content-type"),
            ["text/event-stream; charset=utf-8"],
        )
        yield eventually(lambda: bobs.retry == 3000)
        created = (yield self.post("alice", "hello @bob")).json
        yield eventually(lambda: bobs.events, timeout=10)
        [event] = bobs.events
        self.assertEqual(event["event"], "notification")
        self.assertEqual(event["data"]["id"], event["id"])
        self.assertEqual(
            (event["data"]["kind"], event["data"]["actor"], event["data"]["post_id"]),
            ("mention", "alice", created["id"]),
        )
        self.assertNotIn("recipient_id", event["data"])
        stored = yield self.notificationsOf(self.tokens["bob"])
        self.assertEqual([n["id"] for n in stored], bobs.ids)
        self.assertEqual(alices.events, [])

    @inlineCallbacks
    def test_resume(self) -> Any:
        """
        Reconnecting with Last-Event-ID gives what was missed, oldest first,
        then the live ones, each once.
        """
        stream = yield self.open("bob")
        yield self.post("alice", "one @bob")
        yield eventually(lambda: stream.events, timeout=10)
        first = stream.ids[0]
        yield self.close(stream)
        yield eventually(lambda: len(self.streams) == 0)
        for text in ("two @bob", "three @bob"):
            yield self.post("alice", text)
        yield eventually(
            lambda: self.notificationsOf(self.tokens["bob"]).addCallback(
                lambda items: len(items) == 3
            ),
            timeout=10,
        )
        resumed = yield self.open("bob", lastEventId=first)
        yield eventually(lambda: len(resumed.events) == 2, timeout=10)
        yield self.post("alice", "four @bob")
        yield eventually(lambda: len(resumed.events) == 3, timeout=10)
        stored = yield self.notificationsOf(self.tokens["bob"])
        self.assertEqual(resumed.ids, sorted(n["id"] for n in stored)[1:])
        self.assertEqual(resumed.ids, sorted(resumed.ids))

    @inlineCallbacks
    def test_heartbeatAndLogout(self) -> Any:
        """
        Heartbeats come as comments; once the session ends, the stream does.
        """
        yield self.endsWithSession((yield self.open("bob")))

    @inlineCallbacks
    def test_clientLeaves(self) -> Any:
        """
        When the client goes, its stream is forgotten and its heartbeat
        stops.
        """
        stream = yield self.open("bob")
        yield eventually(lambda: len(self.streams) == 1)
        yield self.close(stream)
        yield eventually(lambda: len(self.streams) == 0)
        self.assertEqual(self.gateway.admission.inFlight, 0)

    @inlineCallbacks
    def test_admitted(self) -> Any:
        """
        Opening a stream is admitted as low-priority work: a replica busy
        enough to refuse listings refuses new streams too (503), while the
        streams already open stay open (they hold no place among the
        requests in flight).
        """
        stream = yield self.open("bob")
        self.assertEqual(stream.response.code, 200)
        admission = self.gateway.admission
        self.gateway.shedDelay = 0
        busy = admission.thresholds[Priority.LOW]
        admission.inFlight += busy
        try:
            reply = yield self.request(
                "GET", "/v1/notifications/stream", token=self.tokens["alice"]
            )
            self.assertProblem(reply, 503, "overloaded")
            self.assertEqual(len(self.streams), 1)
        finally:
            admission.inFlight -= busy
        again = yield self.open("alice")
        self.assertEqual(again.response.code, 200)
        yield eventually(lambda: len(self.streams) == 2)

    @inlineCallbacks
    def test_refused(self) -> Any:
        """
        No token: 401; a Last-Event-ID that is not a notification id: 400.
        """
        reply = yield self.request("GET", "/v1/notifications/stream")
        self.assertProblem(reply, 401)
        reply = yield self.request(
            "GET",
            "/v1/notifications/stream",
            token=self.tokens["bob"],
            headers={"Last-Event-ID": "nope"},
        )
        problem = self.assertProblem(reply, 400, "invalid_argument")
        self.assertEqual(problem["errors"][0]["field"], "Last-Event-ID")


class TicketTests(StreamTestCase):
    """
    Streams opened with a ticket rather than a token: what a browser's
    EventSource, which cannot send headers, does.
    """

    @inlineCallbacks
    def ticket(self, who: str) -> Any:
        reply = yield self.request(
            "POST", "/v1/notifications/stream/tickets", token=self.tokens[who]
        )
        self.assertEqual(reply.status, 201)
        self.assertEqual(sorted(reply.json), ["expires_at", "ticket"])
        return reply.json["ticket"]

    @inlineCallbacks
    def test_ticketStream(self) -> Any:
        """
        A ticket opens its session's stream, which gets that account's
        notifications live; used, it opens nothing more; it stays out of the
        access log.
        """
        from twisted.logger import globalLogPublisher

        logged: list[str] = []

        def observe(event: dict[str, Any]) -> None:
            if event.get("log_namespace") == "txplatform_gateway.access":
                logged.append(event["requests"])

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        ticket = yield self.ticket("bob")
        stream = yield self.open("bob", ticket=ticket)
        self.assertEqual(stream.response.code, 200)
        yield self.post("alice", "hello @bob")
        yield eventually(lambda: stream.events, timeout=10)
        self.assertEqual(stream.events[0]["data"]["actor"], "alice")
        again = yield self.request("GET", f"/v1/notifications/stream?ticket={ticket}")
        self.assertProblem(again, 401)
        self.assertIn("already used", again.json["detail"])
        yield eventually(lambda: "/v1/notifications/stream?ticket=-" in "".join(logged))
        self.assertNotIn(ticket, "".join(logged))

    @inlineCallbacks
    def test_ticketStreamEndsWithSession(self) -> Any:
        """
        A stream opened with a ticket ends when the session that asked for
        the ticket does.
        """
        yield self.endsWithSession((yield self.open("bob", ticket=(yield self.ticket("bob")))))

    @inlineCallbacks
    def test_resumeWithTicket(self) -> Any:
        """
        A browser resuming after its ticket was used up opens a new stream
        with a new ticket and the last id it got in the query: it gets what
        it missed, then the live ones.
        """
        first = yield self.open("bob", ticket=(yield self.ticket("bob")))
        yield self.post("alice", "one @bob")
        yield eventually(lambda: first.events, timeout=10)
        yield self.close(first)
        missed = (yield self.post("alice", "two @bob")).json
        ticket = yield self.ticket("bob")
        second = yield self.open("bob", ticket=f"{ticket}&last_event_id={first.events[-1]['id']}")
        yield eventually(lambda: second.events, timeout=10)
        self.assertEqual([e["data"]["post_id"] for e in second.events], [missed["id"]])
        live = (yield self.post("alice", "three @bob")).json
        yield eventually(lambda: len(second.events) == 2, timeout=10)
        self.assertEqual(second.events[1]["data"]["post_id"], live["id"])
        reply = yield self.request(
            "GET", "/v1/notifications/stream?last_event_id=nope", token=self.tokens["bob"]
        )
        problem = self.assertProblem(reply, 400, "invalid_argument")
        self.assertEqual(problem["errors"][0]["field"], "last_event_id")

    @inlineCallbacks
    def test_badTickets(self) -> Any:
        """
        A made-up ticket, a malformed one, or a ticket anywhere but the
        stream: 401 problem details.  A ticket needs a token to get.
        """
        ticket = yield self.ticket("bob")
        for query in ("ticket=" + "x" * 43, "ticket=%00", "ticket="):
            reply = yield self.request("GET", f"/v1/notifications/stream?{query}")
            self.assertProblem(reply, 401)
        reply = yield self.request("GET", f"/v1/notifications?ticket={ticket}")
        self.assertProblem(reply, 401)
        reply = yield self.request("POST", "/v1/notifications/stream/tickets")
        self.assertProblem(reply, 401)
        # Unused by all that, the ticket still opens the stream.
        stream = yield self.open("bob", ticket=ticket)
        self.assertEqual(stream.response.code, 200)


class StreamLimitTests(StreamTestCase):
    @inlineCallbacks
    def test_perAccount(self) -> Any:
        """
        One account may hold so many streams and no more: the next is
        refused with 429 until one closes; another account is not counted.
        """
        self.streams.perAccount = 2
        first = yield self.open("bob")
        yield self.open("bob")
        yield eventually(lambda: len(self.streams) == 2)
        reply = yield self.request("GET", "/v1/notifications/stream", token=self.tokens["bob"])
        problem = self.assertProblem(reply, 429)
        self.assertIn("2 streams open", problem["detail"])
        yield self.open("alice")
        yield self.close(first)
        yield eventually(lambda: len(self.streams) == 2)
        again = yield self.open("bob")
        self.assertEqual(again.response.code, 200)

    @inlineCallbacks
    def test_perAddress(self) -> Any:
        """
        One client address may hold so many streams, whatever the accounts.
        """
        self.streams.perAddress = 2
        yield self.open("bob")
        yield self.open("alice")
        yield eventually(lambda: len(self.streams) == 2)
        reply = yield self.request("GET", "/v1/notifications/stream", token=self.tokens["bob"])
        problem = self.assertProblem(reply, 429)
        self.assertIn("your address", problem["detail"])
