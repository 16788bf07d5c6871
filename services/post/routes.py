# -*- test-case-name: tests.gateway.test_app -*-
"""
The Post service's HTTP operations: publish, read and delete posts, and an
author's posts.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import inlineCallbacks

from txplatform.context import Priority
from txplatform.messages import PageQuery, message
from txplatform.routes import CURSOR_RULE, IExchange, Principal, RouteParts, pathRecordId, route
from txplatform.schemas import RECORD_ID_SCHEMA, TIMESTAMP, objectSchema, pageOf

from ..account import api as account
from . import api

__all__ = ["PostRoutes", "POST"]

POST = objectSchema(
    {
        "id": RECORD_ID_SCHEMA,
        "author": {"type": "string", "description": "The author's username."},
        "body": {"type": "string"},
        "created_at": TIMESTAMP,
    }
)


@message
class NewPost:
    body: str = api.bodyField()


def _forgetPost(cache: Any, payload: dict[str, Any]) -> None:
    cache.invalidate(payload["post_id"])


def _forgetAll(cache: Any, payload: dict[str, Any]) -> None:
    # An author's posts purged: the views kept do not say whose they are,
    # and purges are rare (a deleted account).
    cache.clear()


class PostRoutes:
    def __init__(self, parts: RouteParts) -> None:
        # A post never changes, only goes, and reads far outnumber writes:
        # the gateway keeps the views it read, for a moment, forgetting
        # each as soon as its deletion is heard.
        self.posts = parts.cache({api.POST_DELETED: _forgetPost, api.POSTS_PURGED: _forgetAll})

    @route(
        "POST",
        "/v1/posts",
        "Publish a post",
        tag="posts",
        auth=True,
        status=201,
        body=NewPost,
        response=POST,
        errors={404: "", 429: "Too many posts: try again after `Retry-After` seconds."},
    )
    @inlineCallbacks
    def createPost(self, exchange: IExchange, principal: Principal, body: NewPost) -> Any:
        created = yield exchange.call(
            api.CreatePost(
                author_id=principal.account_id,
                author_username=principal.username,
                body=body.body,
            ),
        )
        exchange.request.setHeader("Location", f"/v1/posts/{created['id']}")
        return created

    @route(
        "GET",
        "/v1/posts/{post_id}",
        "Read a post",
        parameters={"post_id": RECORD_ID_SCHEMA},
        tag="posts",
        response=POST,
        errors=(404,),
        priority=Priority.LOW,
    )
    def readPost(self, exchange: IExchange, post_id: str) -> Any:
        postId = pathRecordId(post_id, "post")
        return self.posts.read(postId, lambda: exchange.call(api.GetPost(post_id=postId)))

    @route(
        "DELETE",
        "/v1/posts/{post_id}",
        "Delete your post",
        parameters={"post_id": RECORD_ID_SCHEMA},
        tag="posts",
        auth=True,
        status=204,
        errors={403: "The post is not yours.", 404: ""},
    )
    def deletePost(self, exchange: IExchange, principal: Principal, post_id: str) -> Any:
        postId = pathRecordId(post_id, "post")
        deleted = exchange.call(api.DeletePost(post_id=postId, account_id=principal.account_id))
        # Gone from here at once, before its event comes: whoever deleted it
        # reads it no more through this gateway.
        return deleted.addCallback(self._forget, postId)

    def _forget(self, result: Any, postId: str) -> Any:
        self.posts.cache.invalidate(postId)
        return result

    @route(
        "GET",
        "/v1/accounts/{username}/posts",
        "List an author's posts, newest first",
        tag="posts",
        query=PageQuery,
        response=pageOf(POST),
        errors=(404,),
        rules=CURSOR_RULE,
        parameters={"username": account.USERNAME_IN_PATH},
        priority=Priority.LOW,
    )
    @inlineCallbacks
    def authorPosts(self, exchange: IExchange, username: str, query: PageQuery) -> Any:
        author = yield exchange.call(
            account.GetProfile(username=account.usernameFromPath(username))
        )
        return (
            yield exchange.call(
                api.ListPosts(author_id=author["id"], limit=query.limit, cursor=query.cursor),
            )
        )
