"""
The Post service's contract: identifier, messages and events.
"""

from __future__ import annotations

from txplatform.messages import (
    cursorField,
    integer,
    limitField,
    message,
    request,
    string,
    usernameField,
)
from txplatform.serviceid import ServiceId

from ..account.api import accountIdField

SERVICE_NAME = "post"
SERVICE_ID = ServiceId.fromHex("010002")

POST_CREATED = "post.created"
POST_DELETED = "post.deleted"
#: Every post of an author is gone (their account was deleted); published
#: after the rows are deleted.
POSTS_PURGED = "post.purged"

BODY_MAX = 5000


def bodyField(**kwargs):
    return string(
        minLength=1,
        maxLength=BODY_MAX,
        multiline=True,
        pattern=r"[\s\S]*\S[\s\S]*",
        hint="more than white space",
        description=f"1-{BODY_MAX} characters; mention someone with @username.",
        **kwargs,
    )


def postIdField(**kwargs):
    return string(
        pattern="[0-9a-hjkmnp-tv-z]{26}", hint="a post id", description="A post id.", **kwargs
    )


@request(SERVICE_ID, "create_post")
class CreatePost:
    author_id: str = accountIdField()
    author_username: str = usernameField()
    body: str = bodyField()


@request(SERVICE_ID, "get_post")
class GetPost:
    post_id: str = postIdField()


@request(SERVICE_ID, "list_posts")
class ListPosts:
    author_id: str = accountIdField()
    limit: int = limitField()
    cursor: str | None = cursorField()


@request(SERVICE_ID, "delete_post")
class DeletePost:
    post_id: str = postIdField()
    account_id: str = accountIdField()


@message
class PostCreated:
    post_id: str = postIdField()
    author_id: str = accountIdField()
    author_username: str = usernameField()
    body: str = bodyField()
    created_at: int = integer(minimum=0, description="Milliseconds since the epoch.")


@message
class PostDeleted:
    post_id: str = postIdField()
    author_id: str = accountIdField()


@message
class PostsPurged:
    author_id: str = accountIdField()
