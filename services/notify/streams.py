# -*- test-case-name: tests.gateway.test_streams -*-
"""
Live notification streams: C{GET /v1/notifications/stream}, Server-Sent
Events.

Every gateway replica holds a private subscription to
C{notification.created} (each replica hears every event) and writes each
new notification to the streams open on it for its recipient; so any
replica can serve any user's stream.  A client that reconnects with
C{Last-Event-ID} (the id of the last notification it got; ids are
time-ordered) first gets what it missed, from the Notify service, then the
live ones, each once.  A comment every C{heartbeat} seconds keeps proxies
from closing an idle stream, and checks that the session still holds: a
stream whose session ended, expired or was revoked, ends.  After the bus
lost its connection (events may have been missed), every stream catches
up the same way.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.web.iweb import IRequest

from txplatform.catalogue import GATEWAY_ID
from txplatform.context import Origin, Priority
from txplatform.errors import ResourceExhausted, ServiceError, Unauthenticated, Unavailable
from txplatform.interfaces import IBus
from txplatform.once import Once
from txplatform.service import callRequest

from ..account import api as account
from . import api as notify

__all__ = ["NotificationStreams"]

# How far back a resuming stream looks, in pages of 100.
_CATCH_UP_PAGES = 10


class _Stream:
    """
    One open stream: a response being written, for one account.
    """

    log = Logger()

    def __init__(
        self,
        streams: NotificationStreams,
        request: IRequest,
        accountId: str,
        sessionId: str,
        requestId: str,
        lastEventId: str | None,
    ) -> None:
        self._streams = streams
        self.request = request
        self.accountId = accountId
        # Checked by id, not by token: a stream opened with a ticket has no
        # token, and one opened with a token need not keep it.
        self._sessionId = sessionId
        self._requestId = requestId
        self.lastSent = lastEventId or ""
        self._catchingUp = False
        self._held: list[dict[str, Any]] = []
        self._heartbeat = LoopingCall(self.beat)
        self._heartbeat.clock = streams.clock
        self.done: Deferred[bytes] = Deferred(lambda d: self.close())
        self.closed = False
        self.address = ""

    def start(self, catchUp: bool) -> None:
        request = self.request
        request.setHeader(b"Content-Type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-store")
        request.setHeader(b"X-Accel-Buffering", b"no")  # nginx: do not buffer
        # The headers go now, and the client's reconnection delay with them.
        request.write(b"retry: 3000\n: stream open\n\n")
        self._heartbeat.start(self._streams.heartbeat, now=False)
        if catchUp:
            self.catchUp()

    def _origin(self) -> Origin:
        return Origin(GATEWAY_ID, self._requestId, self._streams.clock.seconds() + 5.0)

    def write(self, notification: dict[str, Any]) -> None:
        """
        Send C{notification} unless it was sent (or is older than what was).
        """
        if self.closed:
            return
        if self._catchingUp:
            self._held.append(notification)
            return
        identifier = notification["id"]
        if identifier <= self.lastSent:
            return
        self.lastSent = identifier
        view = {k: v for k, v in notification.items() if k != "recipient_id"}
        self.request.write(
            b"id: %s\nevent: notification\ndata: %s\n\n"
            % (identifier.encode("ascii"), json.dumps(view, separators=(",", ":")).encode())
        )

    @inlineCallbacks
    def catchUp(self) -> Any:
        """
        Send what was stored after the last notification sent, oldest
        first, holding live ones back meanwhile.
        """
        if self._catchingUp or self.closed:
            return
        self._catchingUp = True
        missed: list[dict[str, Any]] = []
        try:
            cursor = None
            for _ in range(_CATCH_UP_PAGES):
                request = notify.ListNotifications(
                    account_id=self.accountId, limit=100, cursor=cursor
                )
                page = yield callRequest(
                    self._streams.bus,
                    request,
                    priority=Priority.LOW,
                    origin=self._origin(),
                    idempotent=True,
                )
                newer = [n for n in page["items"] if n["id"] > self.lastSent]
                missed += newer
                cursor = page["next"]
                if cursor is None or len(newer) < len(page["items"]):
                    break
        except ServiceError as e:
            self.log.warn(
                "Stream of {account} could not catch up: {error}",
                account=self.accountId,
                error=e.message,
            )
        finally:
            self._catchingUp = False
        held, self._held = self._held, []
        for notification in sorted(missed + held, key=lambda n: n["id"]):
            self.write(notification)

    @inlineCallbacks
    def beat(self) -> Any:
        """
        A heartbeat, after checking that the session still holds.
        """
        try:
            yield callRequest(
                self._streams.bus,
                account.VerifySession(session_id=self._sessionId),
                priority=Priority.HIGH,
                origin=self._origin(),
                idempotent=True,
            )
        except Unauthenticated:
            self.end()
            return
        except ServiceError:
            pass  # the Account service is busy or away: keep the stream
        if not self.closed:
            self.request.write(b": ping\n\n")

    def end(self) -> None:
        """
        End the stream from this side (its session is over).
        """
        if not self.closed:
            self.close()
            self.done.callback(b"")

    def close(self) -> None:
        """
        Forget the stream (the client went, or it ended).
        """
        if self.closed:
            return
        self.closed = True
        if self._heartbeat.running:
            self._heartbeat.stop()
        self._streams.forget(self)


class NotificationStreams:
    """
    The streams open on this gateway replica, and the subscription that
    feeds them.

    @ivar heartbeat: Seconds between heartbeats (and session checks).
    @ivar perAccount: Streams one account may have open on this replica: a
        person's tabs and devices, not a token opening hundreds.
    @ivar perAddress: Streams one client address may have open here.
    @ivar total: Streams this replica holds at most.
    """

    log = Logger()
    perAccount = 8
    perAddress = 32
    total = 10_000

    def __init__(self, bus: IBus, clock: IReactorTime, heartbeat: float = 15.0) -> None:
        self.bus = bus
        self.clock = clock
        self.heartbeat = heartbeat
        self._byAccount: dict[str, set[_Stream]] = {}
        self._byAddress: dict[str, int] = {}
        # Subscribed with the first stream; tried again with the next if
        # that failed.
        self._subscribe = Once(self._startSubscription)

    def __len__(self) -> int:
        return sum(len(streams) for streams in self._byAccount.values())

    def _startSubscription(self) -> Deferred[Any]:
        return self.bus.subscribe(
            notify.NOTIFICATION_CREATED, self._created, group=None, onGap=self._gap
        )

    def _created(self, payload: dict[str, Any], context: Any) -> None:
        for notification in payload.get("notifications", []):
            for stream in list(self._byAccount.get(notification.get("recipient_id"), ())):
                stream.write(notification)

    def _gap(self) -> None:
        self.log.info("Events may have been missed: {count} stream(s) catch up", count=len(self))
        for streams in self._byAccount.values():
            for stream in list(streams):
                stream.catchUp()

    def open(
        self,
        request: IRequest,
        accountId: str,
        sessionId: str,
        requestId: str,
        lastEventId: str | None,
        address: str = "",
    ) -> Deferred[bytes]:
        """
        Serve a stream on C{request}.

        @return: A Deferred that fires when the stream ends from this side,
            and whose cancellation (the client went away) closes it.
        @raise ResourceExhausted: The account or the address has as many
            streams open as it may.
        @raise Unavailable: This replica holds as many streams as it may.
        """
        if len(self._byAccount.get(accountId, ())) >= self.perAccount:
            raise ResourceExhausted(
                f"this account has {self.perAccount} streams open already: close one",
                {"retry_after": 5},
            )
        if self._byAddress.get(address, 0) >= self.perAddress:
            raise ResourceExhausted(
                f"your address has {self.perAddress} streams open already: close one",
                {"retry_after": 5},
            )
        if len(self) >= self.total:
            raise Unavailable("this gateway holds as many streams as it can: try another")
        stream = _Stream(self, request, accountId, sessionId, requestId, lastEventId)
        stream.address = address
        # Counted at once, before the subscription is up: concurrent opens
        # see each other.
        self._byAccount.setdefault(accountId, set()).add(stream)
        self._byAddress[address] = self._byAddress.get(address, 0) + 1
        d = self._subscribe()

        def subscribed(_: Any) -> Deferred[bytes]:
            if stream.closed:
                return stream.done
            stream.start(catchUp=lastEventId is not None)
            return stream.done

        def failed(failure: Any) -> Any:
            self.forget(stream)
            return failure

        return d.addCallbacks(subscribed, failed)

    def forget(self, stream: _Stream) -> None:
        streams = self._byAccount.get(stream.accountId)
        if streams is not None and stream in streams:
            streams.discard(stream)
            if not streams:
                del self._byAccount[stream.accountId]
            left = self._byAddress.get(stream.address, 0) - 1
            if left > 0:
                self._byAddress[stream.address] = left
            else:
                self._byAddress.pop(stream.address, None)
