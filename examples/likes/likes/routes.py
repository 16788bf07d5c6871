"""
The likes service's HTTP operations, served by the gateway.
"""

from functools import partial

from txplatform.context import Priority
from txplatform.messages import PageQuery
from txplatform.routes import CURSOR_RULE, route
from txplatform.schemas import RECORD_ID_SCHEMA, TIMESTAMP, objectSchema, pageOf

from . import api

LIKE = objectSchema({"id": RECORD_ID_SCHEMA, "username": {"type": "string"}, "liked_at": TIMESTAMP})
LIKES = objectSchema({**pageOf(LIKE)["properties"], "count": {"type": "integer"}})
likes = partial(route, tag="likes", parameters={"post_id": RECORD_ID_SCHEMA})


class LikeRoutes:
    def __init__(self, parts):
        pass

    @likes("PUT", "/v1/posts/{post_id}/like", "Like a post", auth=True, status=204, errors=(404,))
    def like(self, exchange, principal, post_id):
        me = {"account_id": principal.account_id, "username": principal.username}
        return exchange.call(api.Like(post_id=post_id, **me))

    @likes("DELETE", "/v1/posts/{post_id}/like", "Stop liking a post", auth=True, status=204)
    def unlike(self, exchange, principal, post_id):
        return exchange.call(api.Unlike(post_id=post_id, account_id=principal.account_id))

    @likes(
        "GET",
        "/v1/posts/{post_id}/likes",
        "Who liked a post, newest first, and how many",
        query=PageQuery,
        response=LIKES,
        rules=CURSOR_RULE,
        priority=Priority.LOW,
    )
    def list(self, exchange, post_id, query):
        return exchange.call(api.ListLikes(post_id=post_id, limit=query.limit, cursor=query.cursor))
