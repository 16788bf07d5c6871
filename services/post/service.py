# -*- test-case-name: tests.services.test_post -*-
"""
The Post service.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import inlineCallbacks

from txplatform.context import CallContext, EventContext
from txplatform.errors import NotFound
from txplatform.pagination import decodeCursor, page
from txplatform.recordid import newRecordId, recordIdTime
from txplatform.service import DatabaseService, handles, rpc
from txplatform.timestamps import nowMillis

from ..account import api as account
from . import api
from .store import MIGRATIONS, PostRow, PostStore

__all__ = ["PostService"]


class PostService(DatabaseService):
    name = api.SERVICE_NAME
    serviceId = api.SERVICE_ID
    migrations = MIGRATIONS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.store = PostStore(self.database, self.fields, self.outbox)

    @rpc(api.CreatePost)
    @inlineCallbacks
    def create_post(self, request: api.CreatePost, context: CallContext) -> Any:
        postId = newRecordId(self.clock)
        post = PostRow(
            id=postId,
            author_id=request.author_id,
            author_username=request.author_username,
            body=request.body,
            created_at=recordIdTime(postId),
        )
        yield self.store.create(post)
        self.outbox.flush()
        return post.view()

    @rpc(api.GetPost)
    @inlineCallbacks
    def get_post(self, request: api.GetPost, context: CallContext) -> Any:
        post = yield self.store.get(request.post_id)
        if post is None:
            raise NotFound("no such post")
        return post.view()

    @rpc(api.ListPosts)
    @inlineCallbacks
    def list_posts(self, request: api.ListPosts, context: CallContext) -> Any:
        before = decodeCursor(request.cursor, str)[0] if request.cursor else None
        posts = yield self.store.byAuthor(request.author_id, request.limit + 1, before)
        items, nextCursor = page(posts, request.limit, lambda p: (p.id,))
        return {"items": [p.view() for p in items], "next": nextCursor}

    @rpc(api.DeletePost)
    @inlineCallbacks
    def delete_post(self, request: api.DeletePost, context: CallContext) -> Any:
        yield self.store.delete(request.post_id, request.account_id)
        self.outbox.flush()
        return {}

    @handles(account.ACCOUNT_DELETED, account.AccountDeleted)
    @inlineCallbacks
    def account_deleted(self, event: account.AccountDeleted, context: EventContext) -> Any:
        count = yield self.store.deleteAuthor(event.account_id, nowMillis(self.clock))
        self.log.info(
            "Deleted {count} post(s) of deleted account {account}",
            count=count,
            account=event.account_id,
        )
