"""
The Notify service's contract.
"""

from __future__ import annotations

from txplatform.messages import boolean, cursorField, limitField, recordIdField, request, string
from txplatform.serviceid import ServiceId

from ..account.api import accountIdField

SERVICE_NAME = "notify"
SERVICE_ID = ServiceId.fromHex("010003")

MENTION = "mention"
FOLLOWED_POST = "followed_post"

#: Published for new notifications, in batches of at most EVENT_BATCH:
#: C{{"notifications": [{"recipient_id", "id", "kind", "actor", "post_id",
#: "created_at", "read"}, ...]}}.  What live streams deliver.
NOTIFICATION_CREATED = "notification.created"
EVENT_BATCH = 500


@request(SERVICE_ID, "notify")
class Notify:
    """
    Tell an account that something happened, from any service: it is
    listed among the account's notifications and streamed to it live.
    Notify stores it as it is, knowing nothing of what it means, and makes
    one per recipient, C{kind} and C{topic}: asking again is harmless.
    Nothing is made about a deleted post, or for or by a deleted account.
    """

    recipient_id: str = accountIdField()
    kind: str = string(
        minLength=1,
        maxLength=32,
        pattern="[a-z][a-z0-9_]*",
        hint="a lowercase word such as liked",
        description="What happened, in one word the clients know.",
    )
    actor_id: str = accountIdField()
    actor_username: str = string(minLength=1, maxLength=64, description="Who did it.")
    post_id: str = recordIdField("the post it is about")
    topic: str = string(
        minLength=1,
        maxLength=200,
        description="What it is about: one notification per recipient, kind and topic.",
    )


def notificationIdField(**kwargs):
    return string(
        pattern="[0-9a-hjkmnp-tv-z]{26}",
        hint="a notification id",
        description="A notification id.",
        **kwargs,
    )


@request(SERVICE_ID, "list_notifications")
class ListNotifications:
    account_id: str = accountIdField()
    unread: bool | None = boolean(
        default=None, description="true: unread only; false: read only; absent: all."
    )
    limit: int = limitField()
    cursor: str | None = cursorField()


@request(SERVICE_ID, "mark_read")
class MarkRead:
    account_id: str = accountIdField()
    notification_id: str = notificationIdField()
