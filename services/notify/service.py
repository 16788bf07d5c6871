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
from txplatform.errors import NotFound, UnknownMethod
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
    #: Enough events in hand for post.created's batches to fill up when
    #: posts come faster than they are handled.
    eventPrefetch = account.MAX_AUDIENCES

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.store = NotifyStore(self.database, self.fields, self.outbox, self.clock)

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

    @handles(post.POST_CREATED, post.PostCreated, batch=account.MAX_AUDIENCES)
    @inlineCallbacks
    def post_created(self, batch: list[tuple[post.PostCreated, EventContext]]) -> Any:
        """
        Notify whom the posts that arrived together mention, and their
        authors' followers: one call to Account and one transaction for
        them all.
        """
        # A post deleted meanwhile is found out where the notifications are
        # stored (under a lock the deletion takes too): asking first would
        # cost every post a transaction for the few that go at once.
        # Asked on behalf of the event when there is one; a batch's calls
        # are the batch's own.
        asking = batch[0][1] if len(batch) == 1 else None
        mentionsOf = {
            event.post_id: [
                name for name in mentionedUsernames(event.body) if name != event.author_username
            ]
            for event, _ in batch
        }
        mentioned = list(dict.fromkeys(name for names in mentionsOf.values() for name in names))
        # One call for the mentions and the first page of followers of
        # every author: what nearly every post needs.
        authors = list(dict.fromkeys(event.author_id for event, _ in batch))
        try:
            audiences = yield self.call(
                account.Audiences(author_ids=authors, mentioned=mentioned[:1000], limit=500),
                asking,
                idempotent=True,
            )
        except UnknownMethod:
            # An Account replica of an earlier release, while a deployment
            # is upgraded: ask it author by author.
            audiences = yield self._audiencesOneByOne(authors, mentioned[:1000], asking)
        accountOf = {entry["username"]: entry["id"] for entry in audiences["mentioned"]}
        for start in range(1000, len(mentioned), 1000):
            found = yield self.call(
                account.ResolveUsernames(usernames=mentioned[start : start + 1000]),
                asking,
                idempotent=True,
            )
            accountOf.update((entry["username"], entry["id"]) for entry in found["accounts"])
        followersOf: dict[str, list[str]] = {}
        for author, first in audiences["followers"].items():
            followers = followersOf[author] = list(first["items"])
            cursor = first["next"]
            while cursor is not None:
                more = yield self.call(
                    account.ListFollowers(account_id=author, limit=500, cursor=cursor),
                    asking,
                    idempotent=True,
                )
                followers.extend(more["items"])
                cursor = more["next"]
        now = nowMillis(self.clock)
        groups = []
        for event, context in batch:
            recipients: dict[str, str] = {}
            for name in mentionsOf[event.post_id]:
                if name in accountOf:
                    recipients.setdefault(accountOf[name], api.MENTION)
            for followerId in followersOf.get(event.author_id, ()):
                recipients.setdefault(followerId, api.FOLLOWED_POST)
            recipients.pop(event.author_id, None)
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
            groups.append((notifications, context.origin(self.serviceId)))
        added = yield self.store.addAll(groups)
        if added:
            self.outbox.flush()

    @inlineCallbacks
    def _audiencesOneByOne(
        self, authors: list[str], mentioned: list[str], asking: EventContext | None
    ) -> Any:
        """
        What L{account.Audiences} answers, from L{account.Audience} calls:
        one per author, the mentions with the first.
        """
        found: dict[str, Any] = {"mentioned": [], "followers": {}}
        for index, author in enumerate(authors):
            audience = yield self.call(
                account.Audience(
                    author_id=author, mentioned=mentioned if index == 0 else [], limit=500
                ),
                asking,
                idempotent=True,
            )
            if index == 0:
                found["mentioned"] = audience["mentioned"]
            found["followers"][author] = {
                "items": audience["followers"],
                "next": audience["next"],
            }
        return found

    @handles(post.POST_DELETED, post.PostDeleted)
    def post_deleted(self, event: post.PostDeleted, context: EventContext) -> Any:
        return self.store.postDeleted(event.post_id, nowMillis(self.clock))

    @handles(account.ACCOUNT_DELETED, account.AccountDeleted)
    def account_deleted(self, event: account.AccountDeleted, context: EventContext) -> Any:
        return self.store.accountDeleted(event.account_id, nowMillis(self.clock))
