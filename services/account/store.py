# -*- test-case-name: tests.services.test_account -*-
"""
The Account service's tables.

User fields (username, email, display name) go through the service's
L{IFieldCodec}; usernames and emails are found and kept unique through the
codec's index of their normalised form, never by the stored value.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from attrs import frozen
from twisted.internet.defer import Deferred

from txplatform.batching import BatchLoader
from txplatform.database import IntegrityError, Migration, UniqueViolation
from txplatform.errors import Conflict, InvalidArgument, NotFound
from txplatform.fields import fold
from txplatform.interfaces import IDatabase, IFieldCodec, ITransaction
from txplatform.outbox import Outbox
from txplatform.pagination import page
from txplatform.replylog import Recorder
from txplatform.timestamps import formatMillis

from . import api
from .throttle import MIGRATION as THROTTLE_MIGRATION

__all__ = ["MIGRATIONS", "AccountRow", "Credentials", "SessionRow", "AccountStore"]

MIGRATIONS = [
    Migration(
        1,
        "accounts, sessions and follows",
        (
            """CREATE TABLE accounts (
                id {id} PRIMARY KEY,
                username_index {bytes} NOT NULL UNIQUE,
                username {bytes} NOT NULL,
                email_index {bytes} NOT NULL UNIQUE,
                email {bytes} NOT NULL,
                display_name {bytes} NOT NULL,
                password_hash TEXT NOT NULL,
                created_at {bigint} NOT NULL,
                updated_at {bigint} NOT NULL
            )""",
            """CREATE TABLE account_sessions (
                id {id} PRIMARY KEY,
                token_hash {bytes} NOT NULL UNIQUE,
                account_id {id} NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
                created_at {bigint} NOT NULL,
                expires_at {bigint} NOT NULL
            )""",
            "CREATE INDEX account_sessions_by_account ON account_sessions (account_id)",
            "CREATE INDEX account_sessions_by_expiry ON account_sessions (expires_at)",
            """CREATE TABLE account_follows (
                follower_id {id} NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
                followee_id {id} NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
                created_at {bigint} NOT NULL,
                PRIMARY KEY (follower_id, followee_id)
            )""",
            "CREATE INDEX account_follows_by_followee ON account_follows (followee_id, follower_id)",
            "CREATE INDEX account_follows_by_time ON account_follows"
            " (follower_id, created_at, followee_id)",
        ),
    )
]

MIGRATIONS.append(THROTTLE_MIGRATION)

MIGRATIONS.append(
    Migration(
        3,
        "stream tickets: single-use stand-ins for a session's token",
        (
            """CREATE TABLE account_stream_tickets (
                ticket_hash {bytes} PRIMARY KEY,
                session_id {id} NOT NULL REFERENCES account_sessions (id) ON DELETE CASCADE,
                expires_at {bigint} NOT NULL
            )""",
            "CREATE INDEX account_stream_tickets_by_session ON account_stream_tickets (session_id)",
            "CREATE INDEX account_stream_tickets_by_expiry ON account_stream_tickets (expires_at)",
        ),
    )
)

MIGRATIONS.append(
    Migration(
        4,
        "when each session was last used, for the idle timeout",
        (
            "ALTER TABLE account_sessions ADD COLUMN last_used_at {bigint}",
            "UPDATE account_sessions SET last_used_at = created_at",
            "CREATE INDEX account_sessions_by_use ON account_sessions (last_used_at)",
        ),
    )
)

MIGRATIONS.append(
    Migration(
        5,
        "email indexes of NFKC-casefolded addresses (they were casefolded only)",
        (),
        reindex=("accounts",),
    )
)

_COLUMNS = "id, username, email, display_name, password_hash, created_at"
_SESSION_COLUMNS = "s.id, s.account_id, a.username, s.expires_at, s.last_used_at"


#: How each indexed field is normalised before its blind index is taken:
#: the lookups here and the re-encryption job (AccountService.sealed) share it.
#: Usernames are ASCII (api.usernameField); email addresses are not, so
#: their full-width, compatibility and case variants are one address.
NORMALISE = {"username": str.lower, "email": fold}


def _marks(values: Sequence[object]) -> str:
    return ", ".join("?" * len(values))


@frozen
class AccountRow:
    id: str
    username: str
    email: str
    display_name: str
    password_hash: str
    created_at: int

    def public(self) -> dict[str, Any]:
        """
        What anyone may see.
        """
        return {
            "id": self.id,
            "username": self.username,
            "display_name": self.display_name,
            "created_at": formatMillis(self.created_at),
        }

    def private(self) -> dict[str, Any]:
        """
        What the account's owner sees.
        """
        return {**self.public(), "email": self.email}


@frozen
class Credentials:
    """
    What a login checks, and all it reads of an account: nothing sealed is
    opened for it.
    """

    id: str
    password_hash: str


@frozen
class SessionRow:
    id: str
    account_id: str
    username: str
    expires_at: int
    last_used_at: int


class AccountStore:
    def __init__(self, database: IDatabase, fields: IFieldCodec, outbox: Outbox) -> None:
        self._database = database
        self._fields = fields
        self._outbox = outbox
        # Every authenticated request checks a token: concurrent checks
        # share database round trips.
        self._sessions: BatchLoader[bytes, SessionRow] = BatchLoader(
            self._sessionsByHash, maxInFlight=1 if database.dialect == "sqlite" else 4
        )

    # Field handling (runs in the database thread)

    def usernameIndex(self, username: str) -> bytes:
        """
        The index to write: under the current key.
        """
        return self._fields.index("accounts", "username", NORMALISE["username"](username))

    def emailIndex(self, email: str) -> bytes:
        return self._fields.index("accounts", "email", NORMALISE["email"](email))

    def usernameIndexes(self, username: str) -> list[bytes]:
        """
        The indexes to look for: one per readable key version, since rows
        not yet re-encrypted keep the index of the version they were
        written under.
        """
        return self._fields.indexes("accounts", "username", NORMALISE["username"](username))

    def emailIndexes(self, email: str) -> list[bytes]:
        return self._fields.indexes("accounts", "email", NORMALISE["email"](email))

    @staticmethod
    def _claim(column: str, indexes: list[bytes]) -> str:
        # UNIQUE only holds within a key version: during a rotation two
        # writers could use two versions' indexes for one name.  Both lock
        # the oldest version's index, which every replica agrees on.
        return f"accounts.{column}:{indexes[-1].hex()}"

    def _seal(self, column: str, rowId: str, value: str) -> bytes:
        return self._fields.seal("accounts", column, rowId, value)

    def _account(self, row: Sequence[Any]) -> AccountRow:
        accountId, username, email, displayName, passwordHash, createdAt = row
        return AccountRow(
            id=accountId,
            username=self._fields.open("accounts", "username", accountId, bytes(username)),
            email=self._fields.open("accounts", "email", accountId, bytes(email)),
            display_name=self._fields.open(
                "accounts", "display_name", accountId, bytes(displayName)
            ),
            password_hash=passwordHash,
            created_at=createdAt,
        )

    def _one(self, t: ITransaction, where: str, params: Sequence[Any]) -> AccountRow | None:
        row = t.execute(f"SELECT {_COLUMNS} FROM accounts WHERE {where}", params).fetchone()
        return self._account(row) if row is not None else None

    def _byUsername(self, t: ITransaction, username: str) -> AccountRow | None:
        indexes = self.usernameIndexes(username)
        return self._one(t, f"username_index IN ({_marks(indexes)})", indexes)

    # Accounts

    def create(self, account: AccountRow, record: Recorder | None = None) -> Deferred[AccountRow]:
        """
        @param record: Called in the transaction with the account (see
            L{txplatform.replylog}).
        @raise Conflict: the username or the email is taken.
        """
        return self._database.runInteraction(self._create, account, record)

    def _create(self, t: ITransaction, account: AccountRow, record: Recorder | None) -> AccountRow:
        usernameIndexes = self.usernameIndexes(account.username)
        emailIndexes = self.emailIndexes(account.email)
        t.lock(self._claim("username", usernameIndexes), self._claim("email", emailIndexes))
        if t.execute(
            f"SELECT 1 FROM accounts WHERE username_index IN ({_marks(usernameIndexes)})",
            usernameIndexes,
        ).fetchone():
            raise Conflict("that username is taken", {"field": "username"})
        if t.execute(
            f"SELECT 1 FROM accounts WHERE email_index IN ({_marks(emailIndexes)})", emailIndexes
        ).fetchone():
            raise Conflict("that email address is already registered", {"field": "email"})
        usernameIndex = self.usernameIndex(account.username)
        emailIndex = self.emailIndex(account.email)
        try:
            t.execute(
                "INSERT INTO accounts (id, username_index, username, email_index, email,"
                " display_name, password_hash, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    account.id,
                    usernameIndex,
                    self._seal("username", account.id, account.username),
                    emailIndex,
                    self._seal("email", account.id, account.email),
                    self._seal("display_name", account.id, account.display_name),
                    account.password_hash,
                    account.created_at,
                    account.created_at,
                ),
            )
        except UniqueViolation:
            # Another registration won the race between our check and insert.
            raise Conflict("that username or email address was just taken") from None
        self._outbox.stage(
            t,
            api.ACCOUNT_CREATED,
            {"account_id": account.id, "username": account.username},
        )
        if record is not None:
            record(t, account)
        return account

    def byId(self, accountId: str) -> Deferred[AccountRow | None]:
        return self._database.runInteraction(self._one, "id = ?", (accountId,))

    def byUsername(self, username: str) -> Deferred[AccountRow | None]:
        return self._database.runInteraction(self._byUsername, username)

    def credentialsQuery(self, t: ITransaction, username: str) -> Callable[[], Credentials | None]:
        """
        Ask for the L{Credentials} of the account named C{username} in a
        transaction of the caller's, without waiting for the answer (it goes
        with the transaction's next message, its COMMIT perhaps): what this
        returns reads it, once it has come.
        """
        indexes = self.usernameIndexes(username)
        rows = t.query(
            f"SELECT id, password_hash FROM accounts WHERE username_index IN ({_marks(indexes)})",
            indexes,
        )

        def read() -> Credentials | None:
            row = rows.fetchone()
            return Credentials(*row) if row is not None else None

        return read

    def resolve(self, usernames: Sequence[str]) -> Deferred[list[AccountRow]]:
        """
        The accounts among C{usernames} (any case) that exist.
        """
        d = self._database.runBatch(self._resolve, usernames)
        return d.addCallback(lambda read: read())

    def _resolve(self, t: ITransaction, usernames: Sequence[str]) -> Callable[[], list[AccountRow]]:
        """
        Ask for L{resolve}'s accounts in C{t}: what this returns reads
        them, once the transaction has committed.
        """
        indexes = sorted({index for name in usernames for index in self.usernameIndexes(name)})
        chunks = []
        for start in range(0, len(indexes), 500):
            chunk = indexes[start : start + 500]
            marks = ", ".join("?" * len(chunk))
            chunks.append(
                t.query(f"SELECT {_COLUMNS} FROM accounts WHERE username_index IN ({marks})", chunk)
            )
        return lambda: [self._account(row) for rows in chunks for row in rows.fetchall()]

    def update(
        self,
        accountId: str,
        now: int,
        email: str | None = None,
        displayName: str | None = None,
        passwordHash: str | None = None,
        keepSession: str | None = None,
        record: Recorder | None = None,
    ) -> Deferred[AccountRow]:
        """
        Change the given fields.  A new password ends every session but
        C{keepSession}.

        @raise NotFound: no such account.
        @raise Conflict: the email is another account's.
        """
        return self._database.runInteraction(
            self._update, accountId, now, email, displayName, passwordHash, keepSession, record
        )

    def _update(
        self,
        t: ITransaction,
        accountId: str,
        now: int,
        email: str | None,
        displayName: str | None,
        passwordHash: str | None,
        keepSession: str | None,
        record: Recorder | None,
    ) -> AccountRow:
        assignments: list[str] = []
        params: list[Any] = []
        changed: list[str] = []
        if email is not None:
            emailIndexes = self.emailIndexes(email)
            t.lock(self._claim("email", emailIndexes))
            owners = t.execute(
                f"SELECT id FROM accounts WHERE email_index IN ({_marks(emailIndexes)})",
                emailIndexes,
            ).fetchall()
            if any(owner != accountId for (owner,) in owners):
                raise Conflict("that email address is already registered", {"field": "email"})
            emailIndex = self.emailIndex(email)
            assignments += ["email_index = ?", "email = ?"]
            params += [emailIndex, self._seal("email", accountId, email)]
            changed.append("email")
        if displayName is not None:
            assignments.append("display_name = ?")
            params.append(self._seal("display_name", accountId, displayName))
            changed.append("display_name")
        if passwordHash is not None:
            assignments.append("password_hash = ?")
            params.append(passwordHash)
            changed.append("password")
        if not assignments:
            raise InvalidArgument("nothing to change")
        try:
            t.execute(
                f"UPDATE accounts SET {', '.join(assignments)}, updated_at = ? WHERE id = ?",
                (*params, now, accountId),
            )
        except UniqueViolation:
            raise Conflict("that email address was just taken", {"field": "email"}) from None
        if t.rowcount == 0:
            raise NotFound("no such account")
        if passwordHash is not None:
            t.execute(
                "DELETE FROM account_sessions WHERE account_id = ? AND id <> ?",
                (accountId, keepSession or ""),
            )
        self._outbox.stage(t, api.ACCOUNT_UPDATED, {"account_id": accountId, "changed": changed})
        account = self._one(t, "id = ?", (accountId,))
        assert account is not None
        if record is not None:
            record(t, account)
        return account

    def rehash(self, accountId: str, passwordHash: str) -> Deferred[None]:
        """
        Store a password's new hash (same password, new parameters).
        """
        return self._database.runOperation(
            "UPDATE accounts SET password_hash = ? WHERE id = ?", (passwordHash, accountId)
        )

    def delete(self, account: AccountRow, record: Recorder | None = None) -> Deferred[bool]:
        """
        Delete C{account} with its sessions and follows.

        @return: whether it still existed.
        """
        return self._database.runInteraction(self._delete, account, record)

    def _delete(self, t: ITransaction, account: AccountRow, record: Recorder | None) -> bool:
        t.execute("DELETE FROM account_sessions WHERE account_id = ?", (account.id,))
        t.execute(
            "DELETE FROM account_follows WHERE follower_id = ? OR followee_id = ?",
            (account.id, account.id),
        )
        t.execute("DELETE FROM accounts WHERE id = ?", (account.id,))
        if t.rowcount == 0:
            return False
        self._outbox.stage(
            t, api.ACCOUNT_DELETED, {"account_id": account.id, "username": account.username}
        )
        if record is not None:
            record(t, None)
        return True

    # Sessions

    def addSession(
        self,
        t: ITransaction,
        sessionId: str,
        tokenHash: bytes,
        accountId: str,
        now: int,
        expiresAt: int,
    ) -> None:
        """
        A session of C{accountId}'s, in a transaction of the caller's.

        @raise IntegrityError: (by the transaction's next statement or its
            commit) the account was deleted meanwhile.
        """
        t.send(
            "INSERT INTO account_sessions"
            " (id, token_hash, account_id, created_at, expires_at, last_used_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (sessionId, tokenHash, accountId, now, expiresAt, now),
        )

    def session(self, tokenHash: bytes) -> Deferred[SessionRow | None]:
        """
        The session whose token hashes to C{tokenHash}, expired or not.
        """
        return self._sessions.get(tokenHash)

    def _sessionsByHash(self, hashes: list[bytes]) -> Deferred[dict[bytes, SessionRow]]:
        marks = ", ".join("?" * len(hashes))
        d = self._database.runQuery(
            f"SELECT s.token_hash, {_SESSION_COLUMNS}"
            " FROM account_sessions s JOIN accounts a ON a.id = s.account_id"
            f" WHERE s.token_hash IN ({marks})",
            hashes,
        )
        return d.addCallback(lambda rows: {bytes(r[0]): self._sessionRow(r[1:]) for r in rows})

    def _sessionRow(self, row: Sequence[Any]) -> SessionRow:
        sessionId, accountId, username, expiresAt, lastUsedAt = row
        return SessionRow(
            id=sessionId,
            account_id=accountId,
            username=self._fields.open("accounts", "username", accountId, bytes(username)),
            expires_at=expiresAt,
            last_used_at=lastUsedAt,
        )

    def deleteSession(self, sessionId: str) -> Deferred[None]:
        return self._database.runOperation(
            "DELETE FROM account_sessions WHERE id = ?", (sessionId,)
        )

    def sessionById(self, sessionId: str) -> Deferred[SessionRow | None]:
        """
        The session C{sessionId}, expired or not.
        """
        d = self._database.runBatch(self._sessionById, sessionId)
        return d.addCallback(lambda read: read())

    def _sessionById(self, t: ITransaction, sessionId: str) -> Callable[[], SessionRow | None]:
        rows = t.query(
            f"SELECT {_SESSION_COLUMNS}"
            " FROM account_sessions s JOIN accounts a ON a.id = s.account_id"
            " WHERE s.id = ?",
            (sessionId,),
        )

        def read() -> SessionRow | None:
            row = rows.fetchone()
            return None if row is None else self._sessionRow(row)

        return read

    def touchSession(self, sessionId: str, now: int) -> Deferred[None]:
        """
        Note that session C{sessionId} was used at C{now}.
        """
        return self._database.runOperation(
            "UPDATE account_sessions SET last_used_at = ? WHERE id = ? AND last_used_at < ?",
            (now, sessionId, now),
        )

    def createTicket(
        self, ticketHash: bytes, sessionId: str, now: int, expiresAt: int
    ) -> Deferred[bool]:
        """
        Record a stream ticket for C{sessionId}, if that session holds.

        @return: whether it did.
        """
        return self._database.runInteraction(
            self._createTicket, ticketHash, sessionId, now, expiresAt
        )

    def _createTicket(
        self, t: ITransaction, ticketHash: bytes, sessionId: str, now: int, expiresAt: int
    ) -> bool:
        t.execute(
            "INSERT INTO account_stream_tickets (ticket_hash, session_id, expires_at)"
            " SELECT ?, id, ? FROM account_sessions WHERE id = ? AND expires_at > ?",
            (ticketHash, expiresAt, sessionId, now),
        )
        return t.rowcount == 1

    def redeemTicket(
        self,
        ticketHash: bytes,
        now: int,
        record: Recorder | None = None,
    ) -> Deferred[SessionRow | None]:
        """
        The session (expired or not) an unexpired, unused ticket stands
        for; the ticket is used up.  Of two redeeming the same ticket at
        once, one gets the session: the one whose delete took it.

        @param record: Called with the transaction and the session, when
            there is one, before the transaction commits (to record the
            reply of the call that redeemed it).
        """
        return self._database.runInteraction(self._redeemTicket, ticketHash, now, record)

    def _redeemTicket(
        self,
        t: ITransaction,
        ticketHash: bytes,
        now: int,
        record: Recorder | None,
    ) -> SessionRow | None:
        row = t.execute(
            "SELECT session_id, expires_at FROM account_stream_tickets WHERE ticket_hash = ?",
            (ticketHash,),
        ).fetchone()
        if row is None:
            return None
        t.execute("DELETE FROM account_stream_tickets WHERE ticket_hash = ?", (ticketHash,))
        if t.rowcount != 1 or row[1] <= now:
            return None
        # Read in this transaction: the reply recorded in it is the session.
        session = self._sessionById(t, row[0])()
        if session is not None and record is not None:
            record(t, session)
        return session

    def deleteExpiredSessions(self, now: int, unusedSince: int | None = None) -> Deferred[int]:
        """
        Delete expired sessions, those unused since C{unusedSince} if given,
        and expired stream tickets.

        @return: how many sessions.
        """
        return self._database.runInteraction(self._deleteExpired, now, unusedSince)

    @staticmethod
    def _deleteExpired(t: ITransaction, now: int, unusedSince: int | None) -> int:
        t.execute("DELETE FROM account_stream_tickets WHERE expires_at <= ?", (now,))
        if unusedSince is None:
            t.execute("DELETE FROM account_sessions WHERE expires_at <= ?", (now,))
        else:
            t.execute(
                "DELETE FROM account_sessions WHERE expires_at <= ? OR last_used_at <= ?",
                (now, unusedSince),
            )
        return t.rowcount

    # Follows

    def follow(self, followerId: str, username: str, now: int) -> Deferred[AccountRow]:
        """
        Make C{followerId} follow C{username}; following twice is harmless.

        @return: the followed account.
        @raise NotFound: either account does not exist.
        @raise InvalidArgument: an account following itself.
        """
        return self._database.runInteraction(self._follow, followerId, username, now)

    def _follow(self, t: ITransaction, followerId: str, username: str, now: int) -> AccountRow:
        followee = self._byUsername(t, username)
        if followee is None:
            raise NotFound(f"no account is named {username.lower()!r}")
        if followee.id == followerId:
            raise InvalidArgument.forFields([("username", "you cannot follow yourself")])
        if t.execute("SELECT 1 FROM accounts WHERE id = ?", (followerId,)).fetchone() is None:
            raise NotFound("your account no longer exists")
        try:
            t.execute(
                "INSERT INTO account_follows (follower_id, followee_id, created_at)"
                " VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                (followerId, followee.id, now),
            )
        except IntegrityError:
            # One of the two accounts was deleted since the checks above.
            raise NotFound("one of these accounts no longer exists") from None
        if t.rowcount:
            self._outbox.stage(
                t, api.ACCOUNT_FOLLOWED, {"follower_id": followerId, "followee_id": followee.id}
            )
        return followee

    def unfollow(self, followerId: str, username: str) -> Deferred[AccountRow]:
        """
        Stop following C{username}; harmless if not following.

        @raise NotFound: no account is named C{username}.
        """
        return self._database.runInteraction(self._unfollow, followerId, username)

    def _unfollow(self, t: ITransaction, followerId: str, username: str) -> AccountRow:
        followee = self._byUsername(t, username)
        if followee is None:
            raise NotFound(f"no account is named {username.lower()!r}")
        t.execute(
            "DELETE FROM account_follows WHERE follower_id = ? AND followee_id = ?",
            (followerId, followee.id),
        )
        if t.rowcount:
            self._outbox.stage(
                t,
                api.ACCOUNT_UNFOLLOWED,
                {"follower_id": followerId, "followee_id": followee.id},
            )
        return followee

    def following(
        self, accountId: str, limit: int, after: tuple[int, str] | None
    ) -> Deferred[list[tuple[AccountRow, int]]]:
        """
        Accounts C{accountId} follows, most recently followed first, with
        when; C{limit} rows after the key C{(followed_at, account_id)}.
        """
        return self._database.runInteraction(self._following, accountId, limit, after)

    def _following(
        self, t: ITransaction, accountId: str, limit: int, after: tuple[int, str] | None
    ) -> list[tuple[AccountRow, int]]:
        columns = ", ".join(f"a.{c}" for c in _COLUMNS.split(", "))
        sql = (
            f"SELECT {columns}, f.created_at FROM account_follows f"
            " JOIN accounts a ON a.id = f.followee_id WHERE f.follower_id = ?"
        )
        params: list[Any] = [accountId]
        if after is not None:
            sql += " AND (f.created_at < ? OR (f.created_at = ? AND f.followee_id < ?))"
            params += [after[0], after[0], after[1]]
        sql += " ORDER BY f.created_at DESC, f.followee_id DESC LIMIT ?"
        rows = t.execute(sql, (*params, limit)).fetchall()
        return [(self._account(row[:-1]), row[-1]) for row in rows]

    def audience(
        self, authorId: str, mentioned: Sequence[str], limit: int
    ) -> Deferred[dict[str, Any]]:
        """
        The accounts among C{mentioned} that exist and the first C{limit}
        followers of C{authorId}, in one transaction (see L{api.Audience}).
        """
        d = self._database.runBatch(self._audience, authorId, mentioned, limit)
        return d.addCallback(lambda read: read())

    def _audience(
        self, t: ITransaction, authorId: str, mentioned: Sequence[str], limit: int
    ) -> Callable[[], dict[str, Any]]:
        accounts = self._resolve(t, mentioned) if mentioned else list
        rows = t.query(
            "SELECT follower_id FROM account_follows WHERE followee_id = ?"
            " ORDER BY follower_id LIMIT ?",
            (authorId, limit + 1),
        )

        def read() -> dict[str, Any]:
            items, nextCursor = page([row[0] for row in rows.fetchall()], limit, lambda i: (i,))
            return {
                "mentioned": [{"id": a.id, "username": a.username} for a in accounts()],
                "followers": items,
                "next": nextCursor,
            }

        return read

    def audiences(
        self, authorIds: Sequence[str], mentioned: Sequence[str], limit: int
    ) -> Deferred[dict[str, Any]]:
        """
        The accounts among C{mentioned} that exist and the first C{limit}
        followers of each of C{authorIds}, in one transaction (see
        L{api.Audiences}).
        """
        d = self._database.runBatch(self._audiences, authorIds, mentioned, limit)
        return d.addCallback(lambda read: read())

    def _audiences(
        self, t: ITransaction, authorIds: Sequence[str], mentioned: Sequence[str], limit: int
    ) -> Callable[[], dict[str, Any]]:
        accounts = self._resolve(t, mentioned) if mentioned else list
        authors = sorted(set(authorIds))
        rows = None
        if authors:
            # One round trip for every author: each one's first limit + 1
            # followers (the extra one says whether there are more), each
            # read from the index and stopped at its limit, which a window
            # over all of an author's followers would not be.
            each = (
                "SELECT * FROM (SELECT followee_id, follower_id FROM account_follows"
                " WHERE followee_id = ? ORDER BY follower_id LIMIT ?) AS a{}"
            )
            rows = t.query(
                " UNION ALL ".join(each.format(i) for i in range(len(authors))),
                [value for author in authors for value in (author, limit + 1)],
            )

        def read() -> dict[str, Any]:
            found: dict[str, list[str]] = {author: [] for author in authors}
            for followee, follower in rows.fetchall() if rows is not None else ():
                found[followee].append(follower)
            followers = {}
            for author, ids in found.items():
                ids.sort()
                items, nextCursor = page(ids, limit, lambda i: (i,))
                followers[author] = {"items": items, "next": nextCursor}
            return {
                "mentioned": [{"id": a.id, "username": a.username} for a in accounts()],
                "followers": followers,
            }

        return read

    def followers(self, accountId: str, limit: int, after: str | None) -> Deferred[list[str]]:
        """
        Ids of the accounts following C{accountId}, in id order, after C{after}.
        """
        sql = "SELECT follower_id FROM account_follows WHERE followee_id = ?"
        params: list[Any] = [accountId]
        if after is not None:
            sql += " AND follower_id > ?"
            params.append(after)
        sql += " ORDER BY follower_id LIMIT ?"
        d = self._database.runQuery(sql, (*params, limit))
        return d.addCallback(lambda rows: [row[0] for row in rows])
