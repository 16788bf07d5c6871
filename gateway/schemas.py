"""
What the HTTP API takes and gives.

Request bodies and query strings are message classes, checked by the same
code that publishes their schema; they reuse the services' field
definitions, so a limit changes in one place.  Response schemas are written
out here; the tests check every response against them.
"""

from __future__ import annotations

from typing import Any

from services.account.api import (
    cursorField,
    displayNameField,
    emailField,
    limitField,
    passwordField,
)
from services.notify.api import notificationIdField
from services.post.api import bodyField
from txplatform.messages import boolean, message, string

# Bodies (POST /v1/accounts and POST /v1/sessions take the services'
# Register and Login messages as they are).


@message(
    # What the Account service's update_account refuses otherwise.
    atLeastOne=("email", "display_name", "password"),
    requires={"password": ("current_password",), "current_password": ("password",)},
)
class UpdateMe:
    email: str | None = emailField(default=None)
    display_name: str | None = displayNameField(default=None)
    password: str | None = passwordField(
        description="The new password (at least 10 characters); needs current_password.",
        default=None,
    )
    current_password: str | None = string(
        minLength=1, maxLength=1024, description="Required to change the password.", default=None
    )


@message
class DeleteMe:
    password: str = string(minLength=1, maxLength=1024, description="The account's password.")


@message
class NewPost:
    body: str = bodyField()


# Query strings


@message
class PageQuery:
    limit: int = limitField()
    cursor: str | None = cursorField()


@message
class StreamQuery:
    last_event_id: str | None = notificationIdField(default=None)


@message
class NotificationQuery:
    unread: bool | None = boolean(
        default=None, description="true: only unread; false: only read; absent: all."
    )
    limit: int = limitField()
    cursor: str | None = cursorField()


# Responses

_TIMESTAMP = {"type": "string", "format": "date-time", "description": "RFC 3339, UTC."}
_ID = {"type": "string", "pattern": "^[0-9a-hjkmnp-tv-z]{26}$"}

# Path parameters, by name.  A value outside its schema names nothing the
# API serves: it is a 404, as an unknown one is.
PATH_PARAMETERS = {
    "username": {
        "type": "string",
        "pattern": "^[A-Za-z0-9_]{3,32}$",
        "description": "A username, in any case.",
    },
    "post_id": {**_ID, "description": "A post id."},
    "notification_id": {**_ID, "description": "A notification id."},
}


def _object(properties: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": properties,
        "required": list(properties),
    }


ACCOUNT = _object(
    {
        "id": _ID,
        "username": {"type": "string"},
        "display_name": {"type": "string"},
        "created_at": _TIMESTAMP,
    }
)

OWN_ACCOUNT = _object({**ACCOUNT["properties"], "email": {"type": "string"}})

POST = _object(
    {
        "id": _ID,
        "author": {"type": "string", "description": "The author's username."},
        "body": {"type": "string"},
        "created_at": _TIMESTAMP,
    }
)

NOTIFICATION = _object(
    {
        "id": _ID,
        "kind": {"type": "string", "enum": ["mention", "followed_post"]},
        "actor": {"type": "string", "description": "Username of the post's author."},
        "post_id": _ID,
        "created_at": _TIMESTAMP,
        "read": {"type": "boolean"},
    }
)

SESSION = _object(
    {
        "token": {"type": "string", "description": "Send as `Authorization: Bearer <token>`."},
        "expires_at": _TIMESTAMP,
    }
)

STREAM_TICKET = _object(
    {
        "ticket": {
            "type": "string",
            "description": "Open `/v1/notifications/stream?ticket=<ticket>` with it, once.",
        },
        "expires_at": _TIMESTAMP,
    }
)

HEALTH = _object({"status": {"type": "string", "enum": ["ok"]}})


def pageOf(item: dict[str, Any]) -> dict[str, Any]:
    return _object(
        {
            "items": {"type": "array", "items": item},
            "next": {
                "type": ["string", "null"],
                "description": "Cursor of the next page; null on the last one.",
            },
        }
    )


PROBLEM = {
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string", "format": "uri"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "request_id": {"type": "string"},
        "retry_after": {
            "type": "integer",
            "description": "With 429: seconds to wait, as in the Retry-After header.",
        },
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["field", "reason"],
                "properties": {"field": {"type": "string"}, "reason": {"type": "string"}},
            },
        },
    },
}
