"""
What the likes service takes and publishes: all its callers need.
"""

from txplatform.messages import PageQuery, message, recordIdField, request, string
from txplatform.serviceid import ServiceId

SERVICE_ID = ServiceId.fromHex("020001")
POST_LIKED = "post.liked"


@request(SERVICE_ID, "like")
class Like:
    post_id: str = recordIdField("the post")
    account_id: str = recordIdField("the account that likes it")
    username: str = string(minLength=1, maxLength=64)


@request(SERVICE_ID, "unlike")
class Unlike:
    post_id: str = recordIdField("the post")
    account_id: str = recordIdField("the account that liked it")


@request(SERVICE_ID, "list_likes")
class ListLikes(PageQuery):
    post_id: str = recordIdField("the post")


@message
class PostLiked:
    post_id: str = recordIdField("the post")
    account_id: str = recordIdField("the account that liked it")
    username: str = string(minLength=1, maxLength=64)
    author_username: str = string(minLength=1, maxLength=64)
