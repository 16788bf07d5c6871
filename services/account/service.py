# -*- test-case-name: tests.services.test_account -*-
"""
The Account service: registration, profiles, sessions and follows.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Any, Callable

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure

from txplatform.context import CallContext
from txplatform.database import IntegrityError
from txplatform.errors import InvalidArgument, NotFound, PermissionDenied, Unauthenticated
from txplatform.fields import SealedTable
from txplatform.interfaces import IBus, IDatabase, IFieldCodec, ITransaction
from txplatform.pagination import decodeCursor, page
from txplatform.recordid import newRecordId
from txplatform.service import DatabaseService, rpc
from txplatform.timestamps import formatMillis, nowMillis

from . import api
from .passwords import PasswordHasher
from .store import MIGRATIONS, NORMALISE, AccountRow, AccountStore, Credentials, SessionRow
from .throttle import LoginThrottle

__all__ = ["AccountService"]

_BAD_LOGIN = "wrong username or password"


def hashToken(token: str) -> bytes:
    """
    Sessions are stored by the SHA-256 of their token: a token has 256
    random bits, so a fast hash is enough, and a leaked table holds nothing
    a client could present.
    """
    return hashlib.sha256(token.encode("utf-8")).digest()


def _sessionReply(session: SessionRow) -> dict[str, Any]:
    return {
        "account_id": session.account_id,
        "username": session.username,
        "session_id": session.id,
        "expires_at": formatMillis(session.expires_at),
    }


class AccountService(DatabaseService):
    """
    @param sessionLifetime: Seconds a session lasts from login.
    @param sessionIdle: Seconds a session lasts unused (C{None}: until its
        lifetime ends).  Use is noted at most once per C{touchEvery}
        seconds per session, so the idle timeout is that much coarse, and
        checking a token costs a write at most once a minute.
    @ivar ticketLifetime: Seconds a stream ticket can be redeemed in: enough
        for a browser to open its stream, little for a leaked URL.
    """

    ticketLifetime = 60.0
    touchEvery = 60.0
    name = api.SERVICE_NAME
    serviceId = api.SERVICE_ID
    migrations = MIGRATIONS
    sealed = [
        SealedTable(
            "accounts",
            "id",
            ["username", "email", "display_name"],
            {
                "username": ("username_index", NORMALISE["username"]),
                "email": ("email_index", NORMALISE["email"]),
            },
        )
    ]

    def __init__(
        self,
        bus: IBus,
        database: IDatabase,
        clock: IReactorTime,
        passwords: PasswordHasher,
        fields: IFieldCodec | None = None,
        sessionLifetime: float = 24 * 3600,
        sessionIdle: float | None = 8 * 3600,
        sweepInterval: float = 600,
    ) -> None:
        super().__init__(bus, database, clock, fields)
        self.store = AccountStore(database, self.fields, self.outbox)
        self.throttle = LoginThrottle(database, self.fields, clock)
        self.passwords = passwords
        self.sessionLifetime = sessionLifetime
        self.sessionIdle = sessionIdle
        self._sweeper = LoopingCall(self.sweepSessions)
        self._sweeper.clock = clock
        self._sweepInterval = sweepInterval

    @inlineCallbacks
    def prepare(self) -> Any:
        yield super().prepare()
        self._sweeper.start(self._sweepInterval, now=False)

    def cleanup(self) -> Any:
        if self._sweeper.running:
            self._sweeper.stop()
        self.passwords.stop()
        return super().cleanup()

    def sweepSessions(self) -> Any:
        """
        Delete expired sessions (they are refused anyway; this keeps the
        table small).
        """
        now = nowMillis(self.clock)
        unusedSince = None if self.sessionIdle is None else now - int(self.sessionIdle * 1000)
        d = self.store.deleteExpiredSessions(now, unusedSince)
        d.addCallback(lambda _: self.throttle.sweep())
        d.addErrback(lambda f: self.log.failure("Could not sweep expired sessions", f))
        return d

    @inlineCallbacks
    def _ownAccount(self, accountId: str) -> Any:
        account = yield self.store.byId(accountId)
        if account is None:
            raise NotFound("your account no longer exists")
        return account

    # Accounts

    @rpc(api.Register, idempotent=False)
    @inlineCallbacks
    def register(self, request: api.Register, context: CallContext) -> Any:
        passwordHash = yield self.passwords.hash(request.password)
        now = nowMillis(self.clock)
        account = AccountRow(
            id=newRecordId(self.clock),
            username=request.username,
            email=request.email,
            display_name=request.display_name or request.username,
            password_hash=passwordHash,
            created_at=now,
        )
        yield self.store.create(account, self.replies.recorder(context, AccountRow.private))
        self.outbox.flush()
        return account.private()

    @rpc(api.GetProfile)
    @inlineCallbacks
    def get_profile(self, request: api.GetProfile, context: CallContext) -> Any:
        account = yield self.store.byUsername(request.username)
        if account is None:
            raise NotFound(f"no account is named {request.username.lower()!r}")
        return account.public()

    @rpc(api.GetAccount)
    @inlineCallbacks
    def get_account(self, request: api.GetAccount, context: CallContext) -> Any:
        account = yield self._ownAccount(request.account_id)
        return account.private()

    @rpc(api.ResolveUsernames)
    @inlineCallbacks
    def resolve_usernames(self, request: api.ResolveUsernames, context: CallContext) -> Any:
        accounts = yield self.store.resolve(request.usernames)
        return {"accounts": [{"id": a.id, "username": a.username} for a in accounts]}

    @rpc(api.Audience)
    def audience(self, request: api.Audience, context: CallContext) -> Any:
        return self.store.audience(request.author_id, request.mentioned, request.limit)

    @rpc(api.Audiences)
    def audiences(self, request: api.Audiences, context: CallContext) -> Any:
        return self.store.audiences(request.author_ids, request.mentioned, request.limit)

    @rpc(api.UpdateAccount, idempotent=False)
    @inlineCallbacks
    def update_account(self, request: api.UpdateAccount, context: CallContext) -> Any:
        if request.email is None and request.display_name is None and request.password is None:
            raise InvalidArgument.forFields(
                [("", "give at least one of email, display_name and password")]
            )
        passwordHash = None
        if request.password is not None:
            if request.current_password is None:
                raise InvalidArgument.forFields(
                    [("current_password", "is required to change the password")]
                )
            account = yield self._ownAccount(request.account_id)
            matches = yield self.passwords.verify(account.password_hash, request.current_password)
            if not matches:
                raise PermissionDenied("the current password is wrong")
            passwordHash = yield self.passwords.hash(request.password)
        elif request.current_password is not None:
            raise InvalidArgument.forFields(
                [("current_password", "is only used to change the password")]
            )
        account = yield self.store.update(
            request.account_id,
            nowMillis(self.clock),
            email=request.email,
            displayName=request.display_name,
            passwordHash=passwordHash,
            keepSession=request.session_id,
            record=self.replies.recorder(context, AccountRow.private),
        )
        self.outbox.flush()
        return account.private()

    @rpc(api.DeleteAccount, idempotent=False)
    @inlineCallbacks
    def delete_account(self, request: api.DeleteAccount, context: CallContext) -> Any:
        account = yield self._ownAccount(request.account_id)
        matches = yield self.passwords.verify(account.password_hash, request.password)
        if not matches:
            raise PermissionDenied("the password is wrong")
        deleted = yield self.store.delete(account, self.replies.recorder(context, lambda _: {}))
        if not deleted:
            raise NotFound("your account no longer exists")
        self.outbox.flush()
        return {}

    # Sessions

    @rpc(api.LoginAttempt)
    def login(self, request: api.LoginAttempt, context: CallContext) -> Deferred[Any]:
        keys = self.throttle.keys(request.username, request.client)
        token = secrets.token_urlsafe(32)
        now = nowMillis(self.clock)
        expiresAt = now + int(self.sessionLifetime * 1000)
        sessionId = newRecordId(self.clock)

        def lookup(t: ITransaction) -> Callable[[], Credentials | None]:
            return self.store.credentialsQuery(t, request.username)

        def settle(t: ITransaction, checked: tuple[Credentials, bool]) -> Credentials:
            account = checked[0]
            self.store.addSession(t, sessionId, hashToken(token), account.id, now, expiresAt)
            return account

        def loggedIn(checked: Any) -> Any:
            if not isinstance(checked, Credentials):
                raise Unauthenticated(_BAD_LOGIN)
            reply = {
                "token": token,
                "expires_at": formatMillis(expiresAt),
                "account_id": checked.id,
                "session_id": sessionId,
            }
            if not self.passwords.needsRehash(checked.password_hash):
                return reply
            rehashed = self.passwords.hash(request.password)
            rehashed.addCallback(lambda newHash: self.store.rehash(checked.id, newHash))
            return rehashed.addCallback(lambda _: reply)

        def deleted(reason: Failure) -> None:
            reason.trap(IntegrityError)
            # Deleted while we checked the password: as if it never was.
            raise Unauthenticated(_BAD_LOGIN)

        # Counted before any password work (in the transaction that looks
        # the account up), and refused at once when the address is
        # blocked: a blocked brute force costs one transaction, not an
        # argon2id hash.  A success is settled, and its session made, in
        # one more.
        checked = self.throttle.check(
            keys,
            lookup,
            lambda account: self._checkPassword(account, request.password),
            matched=lambda checked: checked[1],
            settle=settle,
        )
        return checked.addCallbacks(loggedIn, deleted)

    def _checkPassword(self, account: Credentials | None, password: str) -> Deferred[Any]:
        """
        C{(account, whether password is its password)}; an unknown
        username costs a hash as well, and matches nothing.
        """
        if account is None:
            return self.passwords.verifyNothing(password).addCallback(lambda _: (None, False))
        checked = self.passwords.verify(account.password_hash, password)
        return checked.addCallback(lambda matches: (account, matches))

    def _holds(self, session: SessionRow | None, now: int) -> bool:
        """
        Whether C{session} holds at C{now}: not expired, not idle too long.
        """
        if session is None or session.expires_at <= now:
            return False
        if self.sessionIdle is not None:
            return session.last_used_at > now - int(self.sessionIdle * 1000)
        return True

    @inlineCallbacks
    def _use(self, session: SessionRow | None, refusal: str, now: int | None = None) -> Any:
        """
        C{session} if it holds at C{now} (by default, now), noting its use;
        otherwise L{Unauthenticated} with C{refusal}.
        """
        now = nowMillis(self.clock) if now is None else now
        if session is None or not self._holds(session, now):
            raise Unauthenticated(refusal)
        if self.sessionIdle is not None:
            if now - session.last_used_at >= self.touchEvery * 1000:
                try:
                    yield self.store.touchSession(session.id, now)
                except Exception:
                    # The session holds; only its idle clock was not reset.
                    self.log.failure("Could not note the use of session {id}", id=session.id)
        return _sessionReply(session)

    @rpc(api.VerifyToken)
    @inlineCallbacks
    def verify_token(self, request: api.VerifyToken, context: CallContext) -> Any:
        session = yield self.store.session(hashToken(request.token))
        return (yield self._use(session, "the token is invalid, expired or revoked"))

    @rpc(api.VerifySession)
    @inlineCallbacks
    def verify_session(self, request: api.VerifySession, context: CallContext) -> Any:
        session = yield self.store.sessionById(request.session_id)
        return (yield self._use(session, "the session ended, expired or was revoked"))

    @rpc(api.IssueTicket)
    @inlineCallbacks
    def issue_ticket(self, request: api.IssueTicket, context: CallContext) -> Any:
        # Redelivered, this issues a second ticket: the first one's holder
        # never got it, and it lapses unused.
        ticket = secrets.token_urlsafe(32)
        now = nowMillis(self.clock)
        expiresAt = now + int(self.ticketLifetime * 1000)
        created = yield self.store.createTicket(
            hashToken(ticket), request.session_id, now, expiresAt
        )
        if not created:
            raise Unauthenticated("the session ended, expired or was revoked")
        return {"ticket": ticket, "expires_at": formatMillis(expiresAt)}

    @rpc(api.RedeemTicket, idempotent=False)
    @inlineCallbacks
    def redeem_ticket(self, request: api.RedeemTicket, context: CallContext) -> Any:
        # A ticket is used up by its first redemption: a copy of the call
        # delivered or sent again (its first reply lost with a connection)
        # finds it gone, and is answered the reply on record instead.
        now = nowMillis(self.clock)
        recorder = self.replies.recorder(context, _sessionReply)

        def record(t: ITransaction, session: SessionRow) -> None:
            if recorder is not None and self._holds(session, now):
                recorder(t, session)

        session = yield self.store.redeemTicket(hashToken(request.ticket), now, record)
        return (
            yield self._use(session, "the stream ticket is invalid, expired or already used", now)
        )

    @rpc(api.Logout)
    @inlineCallbacks
    def logout(self, request: api.Logout, context: CallContext) -> Any:
        yield self.store.deleteSession(request.session_id)
        return {}

    # Follows

    @rpc(api.Follow)
    @inlineCallbacks
    def follow(self, request: api.Follow, context: CallContext) -> Any:
        followee = yield self.store.follow(
            request.account_id, request.username, nowMillis(self.clock)
        )
        self.outbox.flush()
        return followee.public()

    @rpc(api.Unfollow)
    @inlineCallbacks
    def unfollow(self, request: api.Unfollow, context: CallContext) -> Any:
        followee = yield self.store.unfollow(request.account_id, request.username)
        self.outbox.flush()
        return followee.public()

    @rpc(api.ListFollowing)
    @inlineCallbacks
    def list_following(self, request: api.ListFollowing, context: CallContext) -> Any:
        after = decodeCursor(request.cursor, int, str) if request.cursor else None
        rows = yield self.store.following(request.account_id, request.limit + 1, after)
        items, nextCursor = page(rows, request.limit, lambda r: (r[1], r[0].id))
        return {"items": [account.public() for account, _ in items], "next": nextCursor}

    @rpc(api.ListFollowers)
    @inlineCallbacks
    def list_followers(self, request: api.ListFollowers, context: CallContext) -> Any:
        after = decodeCursor(request.cursor, str)[0] if request.cursor else None
        ids = yield self.store.followers(request.account_id, request.limit + 1, after)
        items, nextCursor = page(ids, request.limit, lambda i: (i,))
        return {"items": items, "next": nextCursor}
