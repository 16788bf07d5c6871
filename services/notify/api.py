"""
The Notify service's contract.
"""

from __future__ import annotations

from txplatform.messages import boolean, cursorField, limitField, request, string
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
