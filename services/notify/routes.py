# -*- test-case-name: tests.gateway.test_app -*-
"""
The Notify service's HTTP operations: the caller's notifications, listed,
marked read, and streamed live (L{NotificationStreams}).
"""

from __future__ import annotations

import re
from typing import Any

from txplatform.context import Priority
from txplatform.errors import InvalidArgument
from txplatform.messages import RECORD_ID, boolean, cursorField, limitField, message
from txplatform.routes import CURSOR_RULE, IExchange, Principal, RouteParts, pathRecordId, route
from txplatform.schemas import RECORD_ID_SCHEMA, TIMESTAMP, objectSchema, pageOf

from ..account import api as account
from . import api
from .streams import NotificationStreams

__all__ = ["NotifyRoutes", "NOTIFICATION"]

_NOTIFICATION_ID = re.compile(f"^{RECORD_ID}\\Z")

NOTIFICATION = objectSchema(
    {
        "id": RECORD_ID_SCHEMA,
        "kind": {
            "type": "string",
            "description": f"What happened: `{api.MENTION}`, `{api.FOLLOWED_POST}`, or a kind"
            " another service notifies of (such as `liked`).",
        },
        "actor": {"type": "string", "description": "Username of who did it."},
        "post_id": RECORD_ID_SCHEMA,
        "created_at": TIMESTAMP,
        "read": {"type": "boolean"},
    }
)

STREAM_TICKET = objectSchema(
    {
        "ticket": {
            "type": "string",
            "description": "Open `/v1/notifications/stream?ticket=<ticket>` with it, once.",
        },
        "expires_at": TIMESTAMP,
    }
)


@message
class StreamQuery:
    last_event_id: str | None = api.notificationIdField(default=None)


@message
class NotificationQuery:
    unread: bool | None = boolean(
        default=None, description="true: only unread; false: only read; absent: all."
    )
    limit: int = limitField()
    cursor: str | None = cursorField()


class NotifyRoutes:
    def __init__(self, parts: RouteParts) -> None:
        self.streams = NotificationStreams(parts.bus, parts.clock, parts.heartbeat)

    @route(
        "GET",
        "/v1/notifications",
        "List your notifications, newest first",
        tag="notifications",
        auth=True,
        query=NotificationQuery,
        response=pageOf(NOTIFICATION),
        rules=CURSOR_RULE,
        priority=Priority.LOW,
    )
    def notifications(
        self, exchange: IExchange, principal: Principal, query: NotificationQuery
    ) -> Any:
        return exchange.call(
            api.ListNotifications(
                account_id=principal.account_id,
                unread=query.unread,
                limit=query.limit,
                cursor=query.cursor,
            ),
        )

    @route(
        "POST",
        "/v1/notifications/{notification_id}/read",
        "Mark a notification read",
        parameters={"notification_id": RECORD_ID_SCHEMA},
        tag="notifications",
        auth=True,
        status=204,
        errors=(404,),
    )
    def markRead(self, exchange: IExchange, principal: Principal, notification_id: str) -> Any:
        return exchange.call(
            api.MarkRead(
                account_id=principal.account_id,
                notification_id=pathRecordId(notification_id, "notification"),
            ),
        )

    @route(
        "GET",
        "/v1/notifications/stream",
        "Receive your new notifications as they arrive",
        tag="notifications",
        auth=True,
        ticket=True,
        query=StreamQuery,
        response=NOTIFICATION,
        priority=Priority.LOW,
        streaming=True,
        rules={"Last-Event-ID": "(the header) is not a notification id"},
        errors={429: "The account, or the address, has as many streams open as it may."},
        description="Server-Sent Events: each new notification is an event"
        " `notification` whose `id` is the notification's id and whose `data` is the"
        " notification (JSON). Reconnect with `Last-Event-ID` to get what was missed"
        " first. A comment every 15 seconds keeps the stream alive; the stream ends"
        " when the session does. A browser's `EventSource`, which cannot send a token,"
        " passes a ticket instead: `?ticket=` from `POST /v1/notifications/stream/tickets`."
        " A ticket opens one stream: to resume after an error, open a new `EventSource` with"
        " a new ticket and `&last_event_id=` (the last `id` received), which stands for the"
        " header.",
    )
    def notificationStream(
        self, exchange: IExchange, principal: Principal, query: StreamQuery
    ) -> Any:
        request = exchange.request
        last = request.getHeader("last-event-id")
        if last is None:
            # A new EventSource (as after a ticket was used up) cannot send
            # the header: it may say where it was in the query instead.
            last = query.last_event_id
        elif not _NOTIFICATION_ID.match(last):
            raise InvalidArgument.forFields([("Last-Event-ID", "is not a notification id")])
        return self.streams.open(
            request,
            principal.account_id,
            principal.session_id,
            exchange.requestId,
            last,
            exchange.clientAddress(),
        )

    @route(
        "POST",
        "/v1/notifications/stream/tickets",
        "Get a ticket to open your notification stream with",
        tag="notifications",
        auth=True,
        status=201,
        response=STREAM_TICKET,
        description="For clients that cannot send the Authorization header, such as a"
        " browser's `EventSource`: open `/v1/notifications/stream?ticket=<ticket>` within a"
        " minute. A ticket opens one stream, once, and stands for the session that asked"
        " for it: the stream ends when that session does. Each reconnection needs a new"
        " ticket.",
    )
    def streamTicket(self, exchange: IExchange, principal: Principal) -> Any:
        return exchange.call(
            account.IssueTicket(session_id=principal.session_id),
            idempotent=False,
        )
