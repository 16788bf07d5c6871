"""
The Account service's contract: its identifier, the messages its methods
take, and the events it publishes.  Callers import this module only.
"""

from __future__ import annotations

import re

from txplatform.errors import NotFound
from txplatform.messages import (
    RECORD_ID,
    cursorField,
    limitField,
    message,
    request,
    string,
    stringList,
    usernameField,
)
from txplatform.serviceid import ServiceId

SERVICE_NAME = "account"
SERVICE_ID = ServiceId.fromHex("010001")

ACCOUNT_CREATED = "account.created"
ACCOUNT_UPDATED = "account.updated"
ACCOUNT_DELETED = "account.deleted"
ACCOUNT_FOLLOWED = "account.followed"
ACCOUNT_UNFOLLOWED = "account.unfollowed"


#: The most authors one L{Audiences} call asks about.
MAX_AUDIENCES = 100

_USERNAME = re.compile(r"^[a-z0-9_]{3,32}\Z")

#: The schema of a username in a URL path: any case (they match
#: case-insensitively); another is a 404.
USERNAME_IN_PATH = {
    "type": "string",
    "pattern": "^[A-Za-z0-9_]{3,32}$",
    "description": "A username, in any case.",
}


def usernameFromPath(username: str) -> str:
    """
    A username from a URL path: they match case-insensitively, and one that
    cannot exist is simply not found.

    @raise NotFound: No account can have that name.
    """
    username = username.lower()
    if not _USERNAME.match(username):
        raise NotFound(f"no account is named {username!r}")
    return username


def usernameLookupField(**kwargs):
    """
    A username to look up: matched case-insensitively, so any case passes.
    """
    return string(
        minLength=1,
        maxLength=64,
        description="A username, matched case-insensitively.",
        **kwargs,
    )


def emailField(**kwargs):
    return string(
        maxLength=254, format="email", visible=True, description="An email address.", **kwargs
    )


def passwordField(description: str = "At least 10 characters.", **kwargs):
    return string(minLength=10, maxLength=1024, description=description, **kwargs)


def displayNameField(**kwargs):
    return string(
        minLength=1,
        maxLength=64,
        visible=True,
        description="Shown instead of the username.",
        **kwargs,
    )


def accountIdField(**kwargs):
    return string(pattern=RECORD_ID, hint="an account id", description="An account id.", **kwargs)


# Methods


@request(SERVICE_ID, "register")
class Register:
    username: str = usernameField()
    email: str = emailField()
    password: str = passwordField()
    display_name: str | None = displayNameField(default=None)


@request(SERVICE_ID, "get_profile")
class GetProfile:
    username: str = usernameLookupField()


@request(SERVICE_ID, "get_account")
class GetAccount:
    account_id: str = accountIdField()


@request(SERVICE_ID, "resolve_usernames")
class ResolveUsernames:
    usernames: tuple[str, ...] = stringList(usernameLookupField(), maxItems=1000)


@request(SERVICE_ID, "update_account")
class UpdateAccount:
    account_id: str = accountIdField()
    session_id: str | None = string(maxLength=64, default=None)
    email: str | None = emailField(default=None)
    display_name: str | None = displayNameField(default=None)
    password: str | None = passwordField(default=None)
    current_password: str | None = string(minLength=1, maxLength=1024, default=None)


@request(SERVICE_ID, "delete_account")
class DeleteAccount:
    account_id: str = accountIdField()
    password: str = string(minLength=1, maxLength=1024)


@message
class Login:
    username: str = usernameLookupField()
    password: str = string(minLength=1, maxLength=1024)


@request(SERVICE_ID, "login")
class LoginAttempt:
    """
    A login as the gateway sends it: with the client's address, which the
    Account service throttles failures by.
    """

    username: str = usernameLookupField()
    password: str = string(minLength=1, maxLength=1024)
    client: str | None = string(maxLength=64, default=None)


@request(SERVICE_ID, "logout")
class Logout:
    session_id: str = string(minLength=1, maxLength=64)


@request(SERVICE_ID, "verify_token")
class VerifyToken:
    token: str = string(minLength=1, maxLength=256)


@request(SERVICE_ID, "verify_session")
class VerifySession:
    """
    Whether a session (by id) still holds: what a long-lived stream checks.
    """

    session_id: str = string(minLength=1, maxLength=64)


@request(SERVICE_ID, "issue_ticket")
class IssueTicket:
    """
    A short-lived, single-use ticket standing for a session where a bearer
    token cannot be sent (a browser's EventSource sends no headers).
    """

    session_id: str = string(minLength=1, maxLength=64)


@request(SERVICE_ID, "redeem_ticket")
class RedeemTicket:
    ticket: str = string(minLength=1, maxLength=256)


@request(SERVICE_ID, "follow")
class Follow:
    account_id: str = accountIdField()
    username: str = usernameLookupField()


@request(SERVICE_ID, "unfollow")
class Unfollow:
    account_id: str = accountIdField()
    username: str = usernameLookupField()


@request(SERVICE_ID, "list_following")
class ListFollowing:
    account_id: str = accountIdField()
    limit: int = limitField()
    cursor: str | None = cursorField()


@request(SERVICE_ID, "list_followers")
class ListFollowers:
    account_id: str = accountIdField()
    limit: int = limitField(maximum=1000, default=500)
    cursor: str | None = cursorField()


@request(SERVICE_ID, "audience")
class Audience:
    """
    Who a post reaches, in one call: the accounts among C{mentioned} (any
    case) that exist, and the first page of the author's followers (the
    rest from L{ListFollowers}, with the cursor).  Notify asks
    L{Audiences} now; this stays for Notify replicas of earlier releases
    while a deployment is upgraded.
    """

    author_id: str = accountIdField()
    mentioned: tuple[str, ...] = stringList(usernameLookupField(), maxItems=1000)
    limit: int = limitField(maximum=1000, default=500)


@request(SERVICE_ID, "audiences")
class Audiences:
    """
    Who several posts reach, in one call: the accounts among C{mentioned}
    (any case, the mentions of all of them) that exist, and the first page
    of each author's followers (the rest from L{ListFollowers}, with the
    author's cursor).
    """

    author_ids: tuple[str, ...] = stringList(accountIdField(), maxItems=MAX_AUDIENCES)
    mentioned: tuple[str, ...] = stringList(usernameLookupField(), maxItems=1000)
    limit: int = limitField(maximum=1000, default=500)


# Events


@message
class AccountCreated:
    account_id: str = accountIdField()
    username: str = usernameField()


@message
class AccountUpdated:
    account_id: str = accountIdField()
    changed: tuple[str, ...] = stringList(string(maxLength=32), maxItems=8)


@message
class AccountDeleted:
    account_id: str = accountIdField()
    username: str = usernameField()


@message
class AccountFollowed:
    follower_id: str = accountIdField()
    followee_id: str = accountIdField()


@message
class AccountUnfollowed:
    follower_id: str = accountIdField()
    followee_id: str = accountIdField()
