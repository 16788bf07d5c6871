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


class PostRoutes:
    def __init__(self, parts: RouteParts) -> None:
        pass

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
        return exchange.call(api.GetPost(post_id=pathRecordId(post_id, "post")))

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
        return exchange.call(
            api.DeletePost(post_id=pathRecordId(post_id, "post"), account_id=principal.account_id),
        )

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
