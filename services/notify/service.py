# -*- test-case-name: tests.services.test_notify -*-
"""
The Notify service: turns posts into notifications for the accounts they
mention and for their author's followers, and stores those other services
ask for (L{api.Notify}).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import inlineCallbacks

from txplatform.context import CallContext, EventContext
from txplatform.errors import NotFound
from txplatform.fields import SealedTable
from txplatform.pagination import decodeCursor, page
from txplatform.recordid import newRecordId
from txplatform.service import DatabaseService, handles, rpc
from txplatform.timestamps import nowMillis

from ..account import api as account
from ..post import api as post
from . import api
from .mentions import mentionedUsernames
from .store import MIGRATIONS, NotificationRow, NotifyStore

__all__ = ["NotifyService"]


class NotifyService(DatabaseService):
    name = api.SERVICE_NAME
    serviceId = api.SERVICE_ID
    migrations = MIGRATIONS
    sealed = [SealedTable("notifications", "id", ["actor_username"])]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.store = NotifyStore(self.database, self.fields, self.outbox)

    @rpc(api.ListNotifications)
    @inlineCallbacks
    def list_notifications(self, request: api.ListNotifications, context: CallContext) -> Any:
        before = decodeCursor(request.cursor, str)[0] if request.cursor else None
        rows = yield self.store.forRecipient(
            request.account_id, request.unread, request.limit + 1, before
        )
        items, nextCursor = page(rows, request.limit, lambda n: (n.id,))
        return {"items": [n.view() for n in items], "next": nextCursor}

    @rpc(api.MarkRead)
    @inlineCallbacks
    def mark_read(self, request: api.MarkRead, context: CallContext) -> Any:
        found = yield self.store.markRead(request.account_id, request.notification_id)
        if not found:
            raise NotFound("no such notification")
        return {}

    @rpc(api.Notify)
    @inlineCallbacks
    def notify(self, request: api.Notify, context: CallContext) -> Any:
        row = NotificationRow(
            id=newRecordId(self.clock),
            recipient_id=request.recipient_id,
            kind=request.kind,
            actor_id=request.actor_id,
            actor_username=request.actor_username,
            post_id=request.post_id,
            created_at=nowMillis(self.clock),
            read=False,
            topic=f"{request.kind}:{request.topic}",
        )
        added = yield self.store.add([row])
        if added:
            self.outbox.flush()
        return {"notified": bool(added)}

    @handles(post.POST_CREATED, post.PostCreated)
    @inlineCallbacks
    def post_created(self, event: post.PostCreated, context: EventContext) -> Any:
        # A post deleted meanwhile is found out where the notifications are
        # stored (under a lock the deletion takes too): asking first would
        # cost every post a transaction for the few that go at once.
        recipients: dict[str, str] = {}
        mentioned = [
            name for name in mentionedUsernames(event.body) if name != event.author_username
        ]
        # One call for the mentions and the first page of followers: what
        # nearly every post needs.
        audience = yield self.call(
            account.Audience(author_id=event.author_id, mentioned=mentioned[:1000], limit=500),
            context,
            idempotent=True,
        )
        for entry in audience["mentioned"]:
            recipients.setdefault(entry["id"], api.MENTION)
        for start in range(1000, len(mentioned), 1000):
            found = yield self.call(
                account.ResolveUsernames(usernames=mentioned[start : start + 1000]),
                context,
                idempotent=True,
            )
            for entry in found["accounts"]:
                recipients.setdefault(entry["id"], api.MENTION)
        followers = {"items": audience["followers"], "next": audience["next"]}
        while True:
            for followerId in followers["items"]:
                recipients.setdefault(followerId, api.FOLLOWED_POST)
            cursor = followers["next"]
            if cursor is None:
                break
            followers = yield self.call(
                account.ListFollowers(account_id=event.author_id, limit=500, cursor=cursor),
                context,
                idempotent=True,
            )
        recipients.pop(event.author_id, None)
        now = nowMillis(self.clock)
        # Mentions first: they win when a follower is also mentioned.
        ordered = sorted(recipients.items(), key=lambda item: item[1] != api.MENTION)
        notifications = [
            NotificationRow(
                id=newRecordId(self.clock),
                recipient_id=recipient,
                kind=kind,
                actor_id=event.author_id,
                actor_username=event.author_username,
                post_id=event.post_id,
                created_at=now,
                read=False,
            )
            for recipient, kind in ordered
        ]
        added = yield self.store.add(notifications)
        if added:
            self.outbox.flush()

    @handles(post.POST_DELETED, post.PostDeleted)
    def post_deleted(self, event: post.PostDeleted, context: EventContext) -> Any:
        return self.store.postDeleted(event.post_id, nowMillis(self.clock))

    @handles(account.ACCOUNT_DELETED, account.AccountDeleted)
    def account_deleted(self, event: account.AccountDeleted, context: EventContext) -> Any:
        return self.store.accountDeleted(event.account_id, nowMillis(self.clock))
