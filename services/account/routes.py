# -*- test-case-name: tests.gateway.test_app -*-
"""
The Account service's HTTP operations: accounts, the caller's own account,
follows and login sessions; and how the gateway authenticates requests
(L{AccountRoutes} is the platform's L{IAuthenticator}).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks
from zope.interface import implementer

from txplatform.context import Priority
from txplatform.messages import PageQuery, message, string
from txplatform.routes import (
    CURSOR_RULE,
    IAuthenticator,
    IExchange,
    Principal,
    RouteParts,
    route,
)
from txplatform.schemas import RECORD_ID_SCHEMA, TIMESTAMP, objectSchema, pageOf

from . import api

__all__ = ["AccountRoutes", "ACCOUNT", "OWN_ACCOUNT", "SESSION"]

ACCOUNT = objectSchema(
    {
        "id": RECORD_ID_SCHEMA,
        "username": {"type": "string"},
        "display_name": {"type": "string"},
        "created_at": TIMESTAMP,
    }
)

OWN_ACCOUNT = objectSchema({**ACCOUNT["properties"], "email": {"type": "string"}})

SESSION = objectSchema(
    {
        "token": {"type": "string", "description": "Send as `Authorization: Bearer <token>`."},
        "expires_at": TIMESTAMP,
    }
)


@message(
    # What the Account service's update_account refuses otherwise.
    atLeastOne=("email", "display_name", "password"),
    requires={"password": ("current_password",), "current_password": ("password",)},
)
class UpdateMe:
    email: str | None = api.emailField(default=None)
    display_name: str | None = api.displayNameField(default=None)
    password: str | None = api.passwordField(
        description="The new password (at least 10 characters); needs current_password.",
        default=None,
    )
    current_password: str | None = string(
        minLength=1, maxLength=1024, description="Required to change the password.", default=None
    )


@message
class DeleteMe:
    password: str = string(minLength=1, maxLength=1024, description="The account's password.")


def _principal(session: dict[str, Any]) -> Principal:
    return Principal(session["account_id"], session["username"], session["session_id"])


@implementer(IAuthenticator)
class AccountRoutes:
    def __init__(self, parts: RouteParts) -> None:
        pass

    # How the gateway knows who calls

    def authenticate(self, exchange: IExchange, token: str) -> Deferred[Principal]:
        d = exchange.call(api.VerifyToken(token=token), idempotent=True)
        return d.addCallback(_principal)

    def redeem(self, exchange: IExchange, ticket: str) -> Deferred[Principal]:
        # Not idempotent: sent again after a lost reply, the ticket would be
        # refused as used; the client asks for another.
        d = exchange.call(api.RedeemTicket(ticket=ticket), idempotent=False)
        return d.addCallback(_principal)

    # Accounts

    @route(
        "POST",
        "/v1/accounts",
        "Register an account",
        tag="accounts",
        status=201,
        body=api.Register,
        response=OWN_ACCOUNT,
        errors={409: "The username or the email is taken."},
    )
    @inlineCallbacks
    def register(self, exchange: IExchange, body: api.Register) -> Any:
        created = yield exchange.call(body)
        exchange.request.setHeader("Location", f"/v1/accounts/{created['username']}")
        return created

    @route(
        "GET",
        "/v1/accounts/{username}",
        "Read a public profile",
        tag="accounts",
        response=ACCOUNT,
        errors=(404,),
        parameters={"username": api.USERNAME_IN_PATH},
        priority=Priority.LOW,
    )
    def profile(self, exchange: IExchange, username: str) -> Any:
        return exchange.call(api.GetProfile(username=api.usernameFromPath(username)))

    # The caller's own account

    @route(
        "GET",
        "/v1/me",
        "Read your account",
        tag="me",
        auth=True,
        response=OWN_ACCOUNT,
        errors=(404,),
    )
    def me(self, exchange: IExchange, principal: Principal) -> Any:
        return exchange.call(api.GetAccount(account_id=principal.account_id))

    @route(
        "PATCH",
        "/v1/me",
        "Change your email, display name or password",
        tag="me",
        endsSessions=True,
        auth=True,
        body=UpdateMe,
        response=OWN_ACCOUNT,
        errors={403: "The current password is wrong.", 404: "", 409: "The email is taken."},
        description="Changing the password needs `current_password` (403 if wrong) and"
        " ends every other session.",
    )
    def updateMe(self, exchange: IExchange, principal: Principal, body: UpdateMe) -> Any:
        return exchange.call(
            api.UpdateAccount(
                account_id=principal.account_id,
                session_id=principal.session_id,
                email=body.email,
                display_name=body.display_name,
                password=body.password,
                current_password=body.current_password,
            ),
        )

    @route(
        "DELETE",
        "/v1/me",
        "Delete your account, its posts and notifications",
        tag="me",
        endsSessions=True,
        auth=True,
        status=204,
        body=DeleteMe,
        errors={403: "The password is wrong.", 404: ""},
    )
    def deleteMe(self, exchange: IExchange, principal: Principal, body: DeleteMe) -> Any:
        return exchange.call(
            api.DeleteAccount(account_id=principal.account_id, password=body.password),
        )

    @route(
        "GET",
        "/v1/me/following",
        "List the accounts you follow, most recent first",
        tag="me",
        auth=True,
        query=PageQuery,
        response=pageOf(ACCOUNT),
        rules=CURSOR_RULE,
        priority=Priority.LOW,
    )
    def following(self, exchange: IExchange, principal: Principal, query: PageQuery) -> Any:
        return exchange.call(
            api.ListFollowing(
                account_id=principal.account_id, limit=query.limit, cursor=query.cursor
            ),
        )

    @route(
        "PUT",
        "/v1/me/following/{username}",
        "Follow an account",
        tag="me",
        auth=True,
        status=204,
        errors=(404,),
        rules={"username": "is your own (you cannot follow yourself)"},
        parameters={"username": api.USERNAME_IN_PATH},
        description="Following twice is harmless; following yourself is a 400.",
    )
    def follow(self, exchange: IExchange, principal: Principal, username: str) -> Any:
        return exchange.call(
            api.Follow(account_id=principal.account_id, username=api.usernameFromPath(username)),
        )

    @route(
        "DELETE",
        "/v1/me/following/{username}",
        "Stop following an account",
        tag="me",
        auth=True,
        status=204,
        errors=(404,),
        parameters={"username": api.USERNAME_IN_PATH},
    )
    def unfollow(self, exchange: IExchange, principal: Principal, username: str) -> Any:
        return exchange.call(
            api.Unfollow(account_id=principal.account_id, username=api.usernameFromPath(username)),
        )

    # Sessions

    @route(
        "POST",
        "/v1/sessions",
        "Log in: trade a username and password for a token",
        tag="sessions",
        status=201,
        body=api.Login,
        response=SESSION,
        priority=Priority.HIGH,
        errors={401: "", 429: "Too many failed logins: try again after `Retry-After` seconds."},
    )
    @inlineCallbacks
    def login(self, exchange: IExchange, body: api.Login) -> Any:
        exchange.request.setHeader("Cache-Control", "no-store")
        attempt = api.LoginAttempt(
            username=body.username, password=body.password, client=exchange.clientAddress()
        )
        session = yield exchange.call(attempt)
        return {"token": session["token"], "expires_at": session["expires_at"]}

    @route(
        "DELETE",
        "/v1/sessions/current",
        "Log out: revoke the token used",
        tag="sessions",
        endsSessions=True,
        auth=True,
        status=204,
        priority=Priority.HIGH,
    )
    def logout(self, exchange: IExchange, principal: Principal) -> Any:
        return exchange.call(api.Logout(session_id=principal.session_id))
