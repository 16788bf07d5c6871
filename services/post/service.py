# -*- test-case-name: tests.services.test_post -*-
"""
The Post service.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.internet.interfaces import IReactorTime

from txplatform.cache import ReadCache
from txplatform.context import CallContext, EventContext
from txplatform.errors import NotFound
from txplatform.fields import SealedTable
from txplatform.interfaces import IBus, IDatabase, IFieldCodec
from txplatform.pagination import decodeCursor, page
from txplatform.recordid import newRecordId, recordIdTime
from txplatform.service import DatabaseService, handles, rpc
from txplatform.timestamps import nowMillis

from ..account import api as account
from . import api
from .store import MIGRATIONS, PostRow, PostStore

__all__ = ["PostService"]


class PostService(DatabaseService):
    """
    @param cacheSize: Post views each replica keeps in memory (0: none).
        Posts are read far more than written and never change, only go:
        the cache forgets a post once its deletion committed, on every
        replica (see L{txplatform.cache}).
    @param cacheTTL: Seconds a cached view may be served.
    """

    name = api.SERVICE_NAME
    serviceId = api.SERVICE_ID
    migrations = MIGRATIONS
    sealed = [SealedTable("posts", "id", ["author_username", "body"])]

    def __init__(
        self,
        bus: IBus,
        database: IDatabase,
        clock: IReactorTime,
        fields: IFieldCodec | None = None,
        cacheSize: int = 4096,
        cacheTTL: float = 60.0,
        postRate: int = 0,
        postRatePeriod: float = 60.0,
    ) -> None:
        """
        @param postRate: Posts an author may create per C{postRatePeriod}
            seconds (0: no limit); more get L{ResourceExhausted}.
        """
        super().__init__(bus, database, clock, fields)
        self.store = PostStore(self.database, self.fields, self.outbox, clock)
        self.store.rate = postRate
        self.store.ratePeriod = postRatePeriod
        self.cache: ReadCache[str, tuple[dict[str, Any], str]] = ReadCache(
            clock, cacheSize, cacheTTL
        )

    @rpc(api.CreatePost, idempotent=False)
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
        yield self.store.create(post, self.replies.recorder(context, PostRow.view))
        self.outbox.flush()
        return post.view()

    @rpc(api.GetPost)
    def get_post(self, request: api.GetPost, context: CallContext) -> Any:
        cached = self.cache.get(request.post_id)
        if cached is not None:
            return cached[0]
        d = self.store.get(request.post_id)
        return d.addCallback(self._read, request.post_id, self.cache.generation)

    def _read(self, post: PostRow | None, postId: str, generation: int) -> dict[str, Any]:
        if post is None:
            raise NotFound("no such post")
        view = post.view()
        self.cache.fill(postId, (view, post.author_id), generation)
        return view

    @rpc(api.ListPosts)
    @inlineCallbacks
    def list_posts(self, request: api.ListPosts, context: CallContext) -> Any:
        before = decodeCursor(request.cursor, str)[0] if request.cursor else None
        posts = yield self.store.byAuthor(request.author_id, request.limit + 1, before)
        items, nextCursor = page(posts, request.limit, lambda p: (p.id,))
        return {"items": [p.view() for p in items], "next": nextCursor}

    @rpc(api.DeletePost, idempotent=False)
    @inlineCallbacks
    def delete_post(self, request: api.DeletePost, context: CallContext) -> Any:
        yield self.store.delete(
            request.post_id, request.account_id, self.replies.recorder(context, lambda _: {})
        )
        # This replica forgets it now; the others when post.deleted arrives.
        self.cache.invalidate(request.post_id)
        self.outbox.flush()
        return {}

    @handles(account.ACCOUNT_DELETED, account.AccountDeleted)
    @inlineCallbacks
    def account_deleted(self, event: account.AccountDeleted, context: EventContext) -> Any:
        count = yield self.store.deleteAuthor(event.account_id, nowMillis(self.clock))
        self.cache.invalidateWhere(lambda entry: entry[1] == event.account_id)
        self.outbox.flush()
        self.log.info(
            "Deleted {count} post(s) of deleted account {account}",
            count=count,
            account=event.account_id,
        )

    # Every replica's cache hears of deletions, after they committed.

    def eventsMissed(self) -> None:
        self.cache.clear()

    @handles(api.POST_DELETED, api.PostDeleted, private=True)
    def forget_post(self, event: api.PostDeleted, context: EventContext) -> None:
        self.cache.invalidate(event.post_id)

    @handles(api.POSTS_PURGED, api.PostsPurged, private=True)
    def forget_author(self, event: api.PostsPurged, context: EventContext) -> None:
        self.cache.invalidateWhere(lambda entry: entry[1] == event.author_id)
