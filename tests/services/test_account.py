"""
Tests for the Account service, on SQLite and on PostgreSQL.
"""

import hashlib
from typing import Any

from argon2 import extract_parameters
from twisted.internet.defer import DeferredList, inlineCallbacks

from txplatform.errors import Conflict, InvalidArgument, NotFound, PermissionDenied, Unauthenticated
from txplatform.recordid import isRecordId
from txplatform_services.account import api
from txplatform_services.account.passwords import Argon2Parameters, PasswordHasher
from txplatform_services.account.service import hashToken

from ..support import PostgresMixin, SQLiteMixin, eventually
from .harness import ServiceTestCase, deliver

PASSWORD = "correct horse"


def fields(error: InvalidArgument) -> list[str]:
    return [e["field"] for e in error.details["errors"]]


class AccountTestsMixin:
    @inlineCallbacks
    def setUp(self) -> Any:
        yield super().setUp()
        self.service = yield self.startAccount()

    def call(self, method: str, **payload: Any) -> Any:
        return self.bus.call(api.SERVICE_ID, method, payload)

    def register(self, username: str, **extra: Any) -> Any:
        extra.setdefault("email", f"{username}@example.com")
        extra.setdefault("password", PASSWORD)
        return self.call("register", username=username, **extra)

    @inlineCallbacks
    def login(self, username: str, password: str = PASSWORD) -> Any:
        return (yield self.call("login", username=username, password=password))

    # Registration and profiles

    @inlineCallbacks
    def test_register(self) -> Any:
        """
        Registering gives the account with its email; the display name
        defaults to the username; account.created is published.
        """
        account = yield self.register("alice")
        self.assertTrue(isRecordId(account["id"]))
        self.assertEqual(
            {k: account[k] for k in ("username", "display_name", "email")},
            {"username": "alice", "display_name": "alice", "email": "alice@example.com"},
        )
        self.assertTrue(account["created_at"].endswith("Z"))
        [event] = yield self.recorder.waitFor(api.ACCOUNT_CREATED)
        self.assertEqual(event, {"account_id": account["id"], "username": "alice"})

    @inlineCallbacks
    def test_redeliveredRegister(self) -> Any:
        """
        A registration delivered again answers with the account it created,
        not "username taken"; the reply on record holds no password.
        """
        payload = {"username": "alice", "email": "alice@example.com", "password": PASSWORD}
        first = yield deliver(self.service, "register", payload, "reg-1", False)
        again = yield deliver(self.service, "register", payload, "reg-1", True)
        self.assertEqual(again, first)
        rows = yield self.service.database.runQuery(
            f"SELECT reply FROM {self.service.replies.table}"
        )
        self.assertNotIn(PASSWORD.encode(), b"".join(bytes(r[0]) for r in rows))
        yield self.assertFailure(
            deliver(self.service, "register", payload, "reg-2", True), Conflict
        )

    @inlineCallbacks
    def test_redeliveredPasswordChange(self) -> Any:
        """
        A password change delivered again answers as the first time did,
        although the current password it carries is no longer current.
        """
        alice = yield self.register("alice")
        payload = {
            "account_id": alice["id"],
            "password": "a new password",
            "current_password": PASSWORD,
        }
        first = yield deliver(self.service, "update_account", payload, "upd-1", False)
        again = yield deliver(self.service, "update_account", payload, "upd-1", True)
        self.assertEqual(again, first)

    @inlineCallbacks
    def test_displayName(self) -> Any:
        """
        A display name given at registration is kept.
        """
        account = yield self.register("bob", display_name="Bob B.")
        self.assertEqual(account["display_name"], "Bob B.")

    @inlineCallbacks
    def test_registerInvalid(self) -> Any:
        """
        Usernames are 3-32 of a-z, 0-9 and _; emails look like emails;
        passwords have at least 10 characters.
        """
        for username in ["ab", "Alice", "a" * 33, "al-ice", "al ice"]:
            error = yield self.assertFailure(
                self.register(username, email="someone@example.com"), InvalidArgument
            )
            self.assertEqual(fields(error), ["username"])
        error = yield self.assertFailure(
            self.register("carol", email="carol", password="short"), InvalidArgument
        )
        self.assertEqual(fields(error), ["email", "password"])
        yield self.register("a" * 32)
        yield self.register("a_1", password="x" * 10)

    @inlineCallbacks
    def test_usernameTaken(self) -> Any:
        """
        A username is registered once.
        """
        yield self.register("alice")
        error = yield self.assertFailure(
            self.register("alice", email="other@example.com"), Conflict
        )
        self.assertEqual(error.details, {"field": "username"})

    @inlineCallbacks
    def test_emailTaken(self) -> Any:
        """
        An email is registered once, whatever its case.
        """
        yield self.register("alice", email="Alice@Example.com")
        error = yield self.assertFailure(
            self.register("alice2", email="alice@example.COM"), Conflict
        )
        self.assertEqual(error.details, {"field": "email"})
        # Full width, a capital I with a dot, a ligature: the same address.
        for n, same in enumerate(
            ["ａｌｉｃｅ@example.com", "ALİCE@example.com", "alice@exam\ufb01le.com"]
        ):
            if "\ufb01" in same:
                yield self.register(f"fi{n}", email="alice@examfile.com")
            error = yield self.assertFailure(self.register(f"alice{n + 3}", email=same), Conflict)
            self.assertEqual(error.details, {"field": "email"})

    @inlineCallbacks
    def test_emailsReindexed(self) -> Any:
        """
        Migration 5 computes the email indexes again under NFKC-casefold:
        an address stored under the old rule (casefold only) is found under
        the new one; of two that now fold alike, the one holding the index
        keeps it and the other keeps its old one (logged).
        """
        from txplatform.fields import fold

        fields, database = self.service.fields, self.service.database
        carol = yield self.register("carol", email="carol@example.com")
        bob = yield self.register("bob", email="bob@example.com")
        dave = yield self.register("dave", email="dave@example.com")

        def legacy(t: Any, accountId: str, email: str) -> None:
            t.execute(
                "UPDATE accounts SET email = ?, email_index = ? WHERE id = ?",
                (
                    fields.seal("accounts", "email", accountId, email),
                    fields.index("accounts", "email", email.casefold()),
                    accountId,
                ),
            )

        def before(t: Any) -> None:
            legacy(t, bob["id"], "ｃａｒｏｌ@example.com")
            legacy(t, dave["id"], "ＤＡＶＥ@example.com")
            t.execute(
                "DELETE FROM schema_migrations WHERE component = ? AND version = 5", ("account",)
            )

        yield database.runInteraction(before)
        applied = yield database.migrate("account", self.service.migrations, self.service._reindex)
        self.assertEqual(applied, [5])
        error = yield self.assertFailure(self.register("dave2", email="dave@example.com"), Conflict)
        self.assertEqual(error.details, {"field": "email"})
        rows = dict((yield database.runQuery("SELECT id, email_index FROM accounts")))
        self.assertEqual(
            bytes(rows[carol["id"]]), fields.index("accounts", "email", fold("carol@example.com"))
        )
        self.assertEqual(
            bytes(rows[bob["id"]]),
            fields.index("accounts", "email", "ｃａｒｏｌ@example.com".casefold()),
        )
        self.assertEqual(
            bytes(rows[dave["id"]]), fields.index("accounts", "email", "dave@example.com")
        )

    @inlineCallbacks
    def test_profile(self) -> Any:
        """
        A profile is public (no email), found whatever the case of the name.
        """
        account = yield self.register("alice")
        profile = yield self.call("get_profile", username="ALICE")
        self.assertEqual(
            profile,
            {k: account[k] for k in ("id", "username", "display_name", "created_at")},
        )
        yield self.assertFailure(self.call("get_profile", username="nobody"), NotFound)

    @inlineCallbacks
    def test_ownAccount(self) -> Any:
        """
        The owner's view includes the email; a missing account is not found.
        """
        account = yield self.register("alice")
        own = yield self.call("get_account", account_id=account["id"])
        self.assertEqual(own, account)
        yield self.assertFailure(self.call("get_account", account_id="0" * 26), NotFound)

    @inlineCallbacks
    def test_resolve(self) -> Any:
        """
        Resolving usernames gives the ids of those that exist.
        """
        alice = yield self.register("alice")
        bob = yield self.register("bob")
        found = yield self.call("resolve_usernames", usernames=["alice", "BOB", "nobody"])
        self.assertEqual(
            sorted((a["username"], a["id"]) for a in found["accounts"]),
            [("alice", alice["id"]), ("bob", bob["id"])],
        )

    @inlineCallbacks
    def test_passwordStorage(self) -> Any:
        """
        Only an argon2id hash of the password is stored.
        """
        account = yield self.register("alice")
        [[stored]] = yield self.service.database.runQuery(
            "SELECT password_hash FROM accounts WHERE id = ?", (account["id"],)
        )
        self.assertNotIn(PASSWORD, stored)
        self.assertEqual(extract_parameters(stored).type.name, "ID")

    # Updates

    @inlineCallbacks
    def test_update(self) -> Any:
        """
        The email and display name change; account.updated says which fields.
        """
        account = yield self.register("alice")
        updated = yield self.call(
            "update_account", account_id=account["id"], email="new@example.com", display_name="Al"
        )
        self.assertEqual((updated["email"], updated["display_name"]), ("new@example.com", "Al"))
        events = yield self.recorder.waitFor(api.ACCOUNT_UPDATED)
        self.assertEqual(
            events[0], {"account_id": account["id"], "changed": ["email", "display_name"]}
        )
        yield self.register("alice2", email="alice@example.com")

    @inlineCallbacks
    def test_updateConflict(self) -> Any:
        """
        An email already registered to another account is refused; keeping
        one's own is fine.
        """
        alice = yield self.register("alice")
        yield self.register("bob")
        yield self.assertFailure(
            self.call("update_account", account_id=alice["id"], email="BOB@example.com"), Conflict
        )
        yield self.call("update_account", account_id=alice["id"], email="ALICE@example.com")

    @inlineCallbacks
    def test_updateNothing(self) -> Any:
        """
        An update must change something.
        """
        alice = yield self.register("alice")
        yield self.assertFailure(
            self.call("update_account", account_id=alice["id"]), InvalidArgument
        )

    @inlineCallbacks
    def test_changePassword(self) -> Any:
        """
        Changing the password needs the current one; afterwards only the new
        one logs in, and every other session is over.
        """
        alice = yield self.register("alice")
        current = yield self.login("alice")
        other = yield self.login("alice")
        error = yield self.assertFailure(
            self.call("update_account", account_id=alice["id"], password="brand new password"),
            InvalidArgument,
        )
        self.assertEqual(fields(error), ["current_password"])
        yield self.assertFailure(
            self.call(
                "update_account",
                account_id=alice["id"],
                password="brand new password",
                current_password="wrong password",
            ),
            PermissionDenied,
        )
        yield self.call(
            "update_account",
            account_id=alice["id"],
            session_id=current["session_id"],
            password="brand new password",
            current_password=PASSWORD,
        )
        yield self.assertFailure(self.login("alice"), Unauthenticated)
        yield self.login("alice", "brand new password")
        yield self.call("verify_token", token=current["token"])
        yield self.assertFailure(self.call("verify_token", token=other["token"]), Unauthenticated)

    @inlineCallbacks
    def test_currentPasswordAlone(self) -> Any:
        """
        C{current_password} without a new password is a mistake worth saying.
        """
        alice = yield self.register("alice")
        yield self.assertFailure(
            self.call(
                "update_account", account_id=alice["id"], display_name="A", current_password="x"
            ),
            InvalidArgument,
        )

    # Deletion

    @inlineCallbacks
    def test_delete(self) -> Any:
        """
        Deleting needs the password; it removes the account, its sessions
        and follows, frees the username and publishes account.deleted.
        """
        alice = yield self.register("alice")
        bob = yield self.register("bob")
        session = yield self.login("alice")
        yield self.call("follow", account_id=bob["id"], username="alice")
        yield self.assertFailure(
            self.call("delete_account", account_id=alice["id"], password="wrong password"),
            PermissionDenied,
        )
        yield self.call("delete_account", account_id=alice["id"], password=PASSWORD)
        yield self.assertFailure(self.call("get_profile", username="alice"), NotFound)
        yield self.assertFailure(self.call("verify_token", token=session["token"]), Unauthenticated)
        following = yield self.call("list_following", account_id=bob["id"])
        self.assertEqual(following["items"], [])
        [event] = yield self.recorder.waitFor(api.ACCOUNT_DELETED)
        self.assertEqual(event, {"account_id": alice["id"], "username": "alice"})
        again = yield self.register("alice")
        self.assertNotEqual(again["id"], alice["id"])
        yield self.assertFailure(
            self.call("delete_account", account_id=alice["id"], password=PASSWORD), NotFound
        )

    # Sessions

    @inlineCallbacks
    def test_login(self) -> Any:
        """
        Logging in gives a random token of at least 256 bits and its expiry;
        the token verifies as the account.
        """
        alice = yield self.register("alice")
        session = yield self.login("ALICE")
        self.assertGreaterEqual(len(session["token"]), 43)
        self.assertEqual(session["account_id"], alice["id"])
        verified = yield self.call("verify_token", token=session["token"])
        self.assertEqual(
            verified,
            {
                "account_id": alice["id"],
                "username": "alice",
                "session_id": session["session_id"],
                "expires_at": session["expires_at"],
            },
        )
        other = yield self.login("alice")
        self.assertNotEqual(other["token"], session["token"])

    @inlineCallbacks
    def test_badLogin(self) -> Any:
        """
        A wrong password and an unknown user fail alike.
        """
        yield self.register("alice")
        wrong = yield self.assertFailure(self.login("alice", "wrong password"), Unauthenticated)
        unknown = yield self.assertFailure(self.login("nobody"), Unauthenticated)
        self.assertEqual(wrong.message, unknown.message)

    @inlineCallbacks
    def test_tokensStoredHashed(self) -> Any:
        """
        The database holds only SHA-256 hashes of tokens.
        """
        yield self.register("alice")
        session = yield self.login("alice")
        rows = yield self.service.database.runQuery("SELECT token_hash FROM account_sessions")
        self.assertEqual(
            [bytes(r[0]) for r in rows], [hashlib.sha256(session["token"].encode()).digest()]
        )

    @inlineCallbacks
    def test_loginOpensNothingSealed(self) -> Any:
        """
        A login reads the account's id and password hash only: none of its
        sealed fields (username, email, display name) is decrypted for it.
        """
        yield self.register("alice")
        fields = self.service.store._fields
        opened: list[tuple[str, str]] = []
        real = fields.open

        def recording(table: str, column: str, rowId: str, data: bytes) -> str:
            opened.append((table, column))
            return real(table, column, rowId, data)

        self.patch(fields, "open", recording)
        session = yield self.login("alice")
        self.assertEqual(opened, [])
        yield self.assertFailure(self.login("alice", "wrong password"), Unauthenticated)
        self.assertEqual(opened, [])
        profile = yield self.call("get_account", account_id=session["account_id"])
        self.assertEqual(profile["username"], "alice")
        self.assertIn(("accounts", "username"), opened)

    @inlineCallbacks
    def test_sessionForDeletedAccount(self) -> Any:
        """
        A session for an account deleted meanwhile is refused cleanly, not
        with a database error.
        """
        yield self.register("alice")
        real = self.service.passwords.verify
        database = self.service.database

        def verifyWhileDeleted(*args: Any) -> Any:
            # The account goes while its password is being checked.
            d = database.runOperation("DELETE FROM accounts WHERE username_index IS NOT NULL")
            return d.addCallback(lambda _: real(*args))

        self.patch(self.service.passwords, "verify", verifyWhileDeleted)
        error = yield self.assertFailure(self.login("alice"), Unauthenticated)
        self.assertIn("username or password", error.message)

    @inlineCallbacks
    def test_logout(self) -> Any:
        """
        Logging out revokes that token and no other.
        """
        yield self.register("alice")
        first = yield self.login("alice")
        second = yield self.login("alice")
        yield self.call("logout", session_id=first["session_id"])
        yield self.assertFailure(self.call("verify_token", token=first["token"]), Unauthenticated)
        yield self.call("verify_token", token=second["token"])

    @inlineCallbacks
    def test_expiry(self) -> Any:
        """
        A token stops working when its session expires, and the sweeper
        removes the expired session.
        """
        yield self.register("alice")
        session = yield self.login("alice")
        self.clock.offset = self.service.sessionLifetime + 1
        yield self.assertFailure(self.call("verify_token", token=session["token"]), Unauthenticated)
        yield self.service.sweepSessions()
        rows = yield self.service.database.runQuery("SELECT id FROM account_sessions")
        self.assertEqual(rows, [])

    @inlineCallbacks
    def lastUsed(self, sessionId: str) -> Any:
        [[at]] = yield self.service.database.runQuery(
            "SELECT last_used_at FROM account_sessions WHERE id = ?", (sessionId,)
        )
        return at

    @inlineCallbacks
    def test_idle(self) -> Any:
        """
        A session unused for C{sessionIdle} seconds is refused, by token,
        by id and through a ticket, and swept; each use (noted at most once
        per C{touchEvery}) starts the idle time again.
        """
        self.service.sessionIdle = idle = 3600
        yield self.register("alice")
        session = yield self.login("alice")
        issued = yield self.call("issue_ticket", session_id=session["session_id"])
        created = yield self.lastUsed(session["session_id"])
        self.clock.offset = 10
        yield self.call("verify_token", token=session["token"])
        self.assertEqual((yield self.lastUsed(session["session_id"])), created)
        self.clock.offset = idle - 10
        yield self.call("verify_session", session_id=session["session_id"])
        used = yield self.lastUsed(session["session_id"])
        self.assertLess(abs((used - created) / 1000 - (idle - 10)), 1)
        self.clock.offset = 2 * idle - 30
        yield self.call("verify_token", token=session["token"])
        self.clock.offset = 3 * idle  # still within its lifetime
        yield self.assertFailure(self.call("verify_token", token=session["token"]), Unauthenticated)
        yield self.assertFailure(
            self.call("verify_session", session_id=session["session_id"]), Unauthenticated
        )
        yield self.service.sweepSessions()
        rows = yield self.service.database.runQuery("SELECT id FROM account_sessions")
        self.assertEqual(rows, [])
        # (Its ticket went with it; an idle session's live ticket is refused too.)
        yield self.assertFailure(
            self.call("redeem_ticket", ticket=issued["ticket"]), Unauthenticated
        )

    @inlineCallbacks
    def test_idleMigration(self) -> Any:
        """
        Sessions from before the idle timeout count as last used when they
        were created.
        """
        from txplatform_services.account.store import MIGRATIONS

        database = self.makeDatabase("older")
        yield database.migrate("account", MIGRATIONS[:3])
        yield database.runOperation(
            "INSERT INTO accounts (id, username_index, username, email_index, email,"
            " display_name, password_hash, created_at, updated_at)"
            " VALUES ('a', ?, ?, ?, ?, ?, 'x', 1, 1)",
            (b"u", b"u", b"e", b"e", b"d"),
        )
        yield database.runOperation(
            "INSERT INTO account_sessions (id, token_hash, account_id, created_at, expires_at)"
            " VALUES ('s', ?, 'a', 1234, 5678)",
            (b"h",),
        )
        applied = yield database.migrate("account", MIGRATIONS[:4])
        self.assertEqual(applied, [4])
        rows = yield database.runQuery("SELECT last_used_at FROM account_sessions")
        self.assertEqual(rows, [(1234,)])

    @inlineCallbacks
    def test_idleTicket(self) -> Any:
        """
        A ticket of a session that went idle after it was issued opens
        nothing.
        """
        yield self.register("alice")
        session = yield self.login("alice")
        self.service.ticketLifetime = 3 * self.service.sessionIdle
        issued = yield self.call("issue_ticket", session_id=session["session_id"])
        self.clock.offset = self.service.sessionIdle + 1
        yield self.assertFailure(
            self.call("redeem_ticket", ticket=issued["ticket"]), Unauthenticated
        )

    @inlineCallbacks
    def test_idleOff(self) -> Any:
        """
        Without an idle timeout a session lasts its lifetime, however long
        unused.
        """
        self.service.sessionIdle = None
        yield self.register("alice")
        session = yield self.login("alice")
        self.clock.offset = self.service.sessionLifetime - 1
        yield self.call("verify_token", token=session["token"])
        yield self.service.sweepSessions()
        self.clock.offset = self.service.sessionLifetime + 1
        yield self.assertFailure(self.call("verify_token", token=session["token"]), Unauthenticated)

    @inlineCallbacks
    def test_verifySession(self) -> Any:
        """
        A session checks by its id as by its token, until it ends: logged
        out, expired, or its account deleted.
        """
        alice = yield self.register("alice")
        session = yield self.login("alice")
        other = yield self.login("alice")
        verified = yield self.call("verify_session", session_id=session["session_id"])
        self.assertEqual(verified, (yield self.call("verify_token", token=session["token"])))
        yield self.call("logout", session_id=session["session_id"])
        yield self.assertFailure(
            self.call("verify_session", session_id=session["session_id"]), Unauthenticated
        )
        yield self.call("verify_session", session_id=other["session_id"])
        self.clock.offset = self.service.sessionLifetime + 1
        yield self.assertFailure(
            self.call("verify_session", session_id=other["session_id"]), Unauthenticated
        )
        self.clock.offset = 0
        yield self.call("delete_account", account_id=alice["id"], password=PASSWORD)
        yield self.assertFailure(
            self.call("verify_session", session_id=other["session_id"]), Unauthenticated
        )

    @inlineCallbacks
    def test_ticket(self) -> Any:
        """
        A stream ticket is random, stored only hashed, and redeems once, as
        its session; a second redemption, or one after a minute, fails.
        """
        alice = yield self.register("alice")
        session = yield self.login("alice")
        issued = yield self.call("issue_ticket", session_id=session["session_id"])
        self.assertGreaterEqual(len(issued["ticket"]), 43)
        self.assertNotEqual(issued["ticket"], session["token"])
        rows = yield self.service.database.runQuery(
            "SELECT ticket_hash FROM account_stream_tickets"
        )
        self.assertEqual([bytes(r[0]) for r in rows], [hashToken(issued["ticket"])])
        redeemed = yield self.call("redeem_ticket", ticket=issued["ticket"])
        self.assertEqual(
            redeemed,
            {
                "account_id": alice["id"],
                "username": "alice",
                "session_id": session["session_id"],
                "expires_at": session["expires_at"],
            },
        )
        yield self.assertFailure(
            self.call("redeem_ticket", ticket=issued["ticket"]), Unauthenticated
        )
        late = yield self.call("issue_ticket", session_id=session["session_id"])
        self.clock.offset = self.service.ticketLifetime + 1
        yield self.assertFailure(self.call("redeem_ticket", ticket=late["ticket"]), Unauthenticated)
        yield self.assertFailure(self.call("redeem_ticket", ticket="made-up"), Unauthenticated)
        yield self.service.sweepSessions()
        rows = yield self.service.database.runQuery("SELECT * FROM account_stream_tickets")
        self.assertEqual(rows, [])

    @inlineCallbacks
    def test_ticketOfEndedSession(self) -> Any:
        """
        No ticket for a session that ended; a ticket dies with its session.
        """
        yield self.register("alice")
        session = yield self.login("alice")
        issued = yield self.call("issue_ticket", session_id=session["session_id"])
        yield self.call("logout", session_id=session["session_id"])
        yield self.assertFailure(
            self.call("redeem_ticket", ticket=issued["ticket"]), Unauthenticated
        )
        yield self.assertFailure(
            self.call("issue_ticket", session_id=session["session_id"]), Unauthenticated
        )
        rows = yield self.service.database.runQuery("SELECT * FROM account_stream_tickets")
        self.assertEqual(rows, [])

    @inlineCallbacks
    def test_ticketRedeemedOnce(self) -> Any:
        """
        Of many redeeming one ticket at once, exactly one gets the session.
        """
        yield self.register("alice")
        session = yield self.login("alice")
        issued = yield self.call("issue_ticket", session_id=session["session_id"])
        attempts = [self.call("redeem_ticket", ticket=issued["ticket"]) for _ in range(8)]
        results = yield DeferredList(attempts, consumeErrors=True)
        won = [r for ok, r in results if ok]
        lost = [r for ok, r in results if not ok]
        self.assertEqual(len(won), 1)
        self.assertEqual(won[0]["session_id"], session["session_id"])
        self.assertTrue(all(f.check(Unauthenticated) for f in lost))

    @inlineCallbacks
    def test_redeliveredTicket(self) -> Any:
        """
        A redemption delivered again, its ticket used up by the first copy,
        answers as the first did rather than "already used"; a ticket whose
        session no longer holds records nothing, and its copy is refused
        too.
        """
        yield self.register("alice")
        session = yield self.login("alice")
        issued = yield self.call("issue_ticket", session_id=session["session_id"])
        payload = {"ticket": issued["ticket"]}
        first = yield deliver(self.service, "redeem_ticket", payload, "redeem-1", False)
        self.assertEqual(first["session_id"], session["session_id"])
        again = yield deliver(self.service, "redeem_ticket", payload, "redeem-1", True)
        self.assertEqual(again, first)
        yield self.assertFailure(
            deliver(self.service, "redeem_ticket", payload, "redeem-2", True), Unauthenticated
        )
        # What is on record is the session, which again was answered from.
        self.assertEqual(set(first), {"account_id", "username", "session_id", "expires_at"})

        self.service.ticketLifetime = 3 * self.service.sessionIdle
        idle = yield self.call("issue_ticket", session_id=session["session_id"])
        self.clock.offset = self.service.sessionIdle + 1
        payload = {"ticket": idle["ticket"]}
        yield self.assertFailure(
            deliver(self.service, "redeem_ticket", payload, "redeem-3", False), Unauthenticated
        )
        yield self.assertFailure(
            deliver(self.service, "redeem_ticket", payload, "redeem-3", True), Unauthenticated
        )
        rows = yield self.service.database.runQuery(
            f"SELECT message_id FROM {self.service.replies.table} WHERE message_id LIKE 'redeem-%'"
        )
        self.assertEqual([tuple(row) for row in rows], [("redeem-1",)])

    @inlineCallbacks
    def test_rehashOnLogin(self) -> Any:
        """
        A password hashed with old parameters is rehashed with the current
        ones at the next login.
        """
        alice = yield self.register("alice")
        self.service.passwords = PasswordHasher(
            self.service.passwords._reactor,
            Argon2Parameters(timeCost=1, memoryCost=16, parallelism=1),
        )
        yield self.login("alice")
        [[stored]] = yield self.service.database.runQuery(
            "SELECT password_hash FROM accounts WHERE id = ?", (alice["id"],)
        )
        self.assertEqual(extract_parameters(stored).memory_cost, 16)
        yield self.login("alice")

    # Follows

    @inlineCallbacks
    def test_follow(self) -> Any:
        """
        Following is idempotent and announced once; unfollowing likewise.
        """
        alice = yield self.register("alice")
        bob = yield self.register("bob")
        yield self.call("follow", account_id=bob["id"], username="Alice")
        yield self.call("follow", account_id=bob["id"], username="alice")
        following = yield self.call("list_following", account_id=bob["id"])
        self.assertEqual([a["username"] for a in following["items"]], ["alice"])
        self.assertNotIn("email", following["items"][0])
        followers = yield self.call("list_followers", account_id=alice["id"])
        self.assertEqual(followers, {"items": [bob["id"]], "next": None})
        yield self.call("unfollow", account_id=bob["id"], username="alice")
        yield self.call("unfollow", account_id=bob["id"], username="alice")
        following = yield self.call("list_following", account_id=bob["id"])
        self.assertEqual(following["items"], [])
        yield self.recorder.waitFor(api.ACCOUNT_UNFOLLOWED)
        self.assertEqual(
            self.recorder.named(api.ACCOUNT_FOLLOWED),
            [{"follower_id": bob["id"], "followee_id": alice["id"]}],
        )
        self.assertEqual(len(self.recorder.named(api.ACCOUNT_UNFOLLOWED)), 1)

    @inlineCallbacks
    def test_followErrors(self) -> Any:
        """
        Following nobody is not found; following oneself is invalid.
        """
        alice = yield self.register("alice")
        yield self.assertFailure(
            self.call("follow", account_id=alice["id"], username="nobody"), NotFound
        )
        yield self.assertFailure(
            self.call("unfollow", account_id=alice["id"], username="nobody"), NotFound
        )
        error = yield self.assertFailure(
            self.call("follow", account_id=alice["id"], username="alice"), InvalidArgument
        )
        self.assertEqual(fields(error), ["username"])

    @inlineCallbacks
    def test_followingPages(self) -> Any:
        """
        The accounts one follows come most recent first, page by page, each
        exactly once.
        """
        me = yield self.register("me_")
        names = [f"user{n:02d}" for n in range(7)]
        for name in names:
            yield self.register(name)
            yield self.call("follow", account_id=me["id"], username=name)
        seen = []
        cursor = None
        while True:
            request = {"account_id": me["id"], "limit": 3}
            if cursor:
                request["cursor"] = cursor
            result = yield self.call("list_following", **request)
            seen += [a["username"] for a in result["items"]]
            cursor = result["next"]
            if cursor is None:
                break
        self.assertEqual(seen, list(reversed(names)))
        yield self.assertFailure(
            self.call("list_following", account_id=me["id"], cursor="bogus"), InvalidArgument
        )

    @inlineCallbacks
    def test_followersPages(self) -> Any:
        """
        Followers page through in id order.
        """
        star = yield self.register("star")
        ids = []
        for n in range(5):
            fan = yield self.register(f"fan{n}")
            ids.append(fan["id"])
            yield self.call("follow", account_id=fan["id"], username="star")
        first = yield self.call("list_followers", account_id=star["id"], limit=3)
        second = yield self.call(
            "list_followers", account_id=star["id"], limit=3, cursor=first["next"]
        )
        self.assertEqual(first["items"] + second["items"], sorted(ids))
        self.assertIsNone(second["next"])

    @inlineCallbacks
    def test_audience(self) -> Any:
        """
        One call gives the mentioned accounts that exist and the first page
        of the author's followers, whose cursor goes on with list_followers.
        """
        star = yield self.register("star")
        bob = yield self.register("bob")
        ids = []
        for n in range(5):
            fan = yield self.register(f"fan{n}")
            ids.append(fan["id"])
            yield self.call("follow", account_id=fan["id"], username="star")
        reached = yield self.call(
            "audience", author_id=star["id"], mentioned=["BOB", "nobody"], limit=3
        )
        self.assertEqual(reached["mentioned"], [{"id": bob["id"], "username": "bob"}])
        rest = yield self.call(
            "list_followers", account_id=star["id"], limit=3, cursor=reached["next"]
        )
        self.assertEqual(reached["followers"] + rest["items"], sorted(ids))
        alone = yield self.call("audience", author_id=bob["id"], mentioned=[])
        self.assertEqual(alone, {"mentioned": [], "followers": [], "next": None})

    @inlineCallbacks
    def test_audiences(self) -> Any:
        """
        One call gives the mentioned accounts that exist and the first page
        of each author's followers, in follower id order, whose cursors go
        on with list_followers; an author without followers has an empty
        page.
        """
        star = yield self.register("star")
        comet = yield self.register("comet")
        bob = yield self.register("bob")
        fansOf: dict[str, list[str]] = {star["id"]: [], comet["id"]: []}
        for n in range(5):
            fan = yield self.register(f"fan{n}")
            for idol, name in [(star, "star"), (comet, "comet")][: 2 if n < 2 else 1]:
                fansOf[idol["id"]].append(fan["id"])
                yield self.call("follow", account_id=fan["id"], username=name)
        reached = yield self.call(
            "audiences",
            author_ids=[star["id"], comet["id"], bob["id"], star["id"]],
            mentioned=["BOB", "nobody", "star"],
            limit=3,
        )
        self.assertEqual(
            sorted(reached["mentioned"], key=lambda a: a["username"]),
            [{"id": bob["id"], "username": "bob"}, {"id": star["id"], "username": "star"}],
        )
        self.assertEqual(set(reached["followers"]), {star["id"], comet["id"], bob["id"]})
        first = reached["followers"][star["id"]]
        self.assertEqual(first["items"], sorted(fansOf[star["id"]])[:3])
        rest = yield self.call(
            "list_followers", account_id=star["id"], limit=3, cursor=first["next"]
        )
        self.assertEqual(first["items"] + rest["items"], sorted(fansOf[star["id"]]))
        self.assertEqual(
            reached["followers"][comet["id"]],
            {"items": sorted(fansOf[comet["id"]]), "next": None},
        )
        self.assertEqual(reached["followers"][bob["id"]], {"items": [], "next": None})

    @inlineCallbacks
    def test_eventsOnce(self) -> Any:
        """
        Each change publishes exactly one event, even with the outbox timer
        running.
        """
        yield self.register("alice")
        yield self.recorder.waitFor(api.ACCOUNT_CREATED)
        yield self.service.outbox.flush()
        yield eventually(lambda: True)
        self.assertEqual(len(self.recorder.named(api.ACCOUNT_CREATED)), 1)


class SQLiteAccountTests(SQLiteMixin, AccountTestsMixin, ServiceTestCase):
    pass


class PostgresAccountTests(PostgresMixin, AccountTestsMixin, ServiceTestCase):
    pass
