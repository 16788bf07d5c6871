# -*- test-case-name: tests.services.test_notify -*-
"""
The Notify service's tables.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

from attrs import frozen
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater

from txplatform.context import Origin
from txplatform.database import Migration
from txplatform.fields import readableRows
from txplatform.interfaces import IDatabase, IFieldCodec, ITransaction
from txplatform.outbox import Outbox
from txplatform.timestamps import formatMillis

from . import api

__all__ = ["MIGRATIONS", "NotificationRow", "NotifyStore"]

MIGRATIONS = [
    Migration(
        1,
        "notifications, and tombstones of deleted posts and accounts",
        (
            # One notification per recipient and post: redelivered events
            # add nothing, and a mention wins over a followed author's post.
            """CREATE TABLE notifications (
                id {id} PRIMARY KEY,
                recipient_id {id} NOT NULL,
                kind TEXT NOT NULL,
                actor_id {id} NOT NULL,
                actor_username {bytes} NOT NULL,
                post_id {id} NOT NULL,
                created_at {bigint} NOT NULL,
                is_read {bool} NOT NULL,
                UNIQUE (recipient_id, post_id)
            )""",
            "CREATE INDEX notifications_by_recipient ON notifications (recipient_id, id)",
            "CREATE INDEX notifications_by_state ON notifications (recipient_id, is_read, id)",
            "CREATE INDEX notifications_by_post ON notifications (post_id)",
            "CREATE INDEX notifications_by_actor ON notifications (actor_id)",
            # Events from different services may arrive out of order: a
            # post.created handled after its post.deleted (or its author's
            # account.deleted) must not resurrect anything.
            """CREATE TABLE notify_tombstones (
                kind TEXT NOT NULL,
                id {id} NOT NULL,
                deleted_at {bigint} NOT NULL,
                PRIMARY KEY (kind, id)
            )""",
        ),
    ),
    Migration(
        2,
        "notifications are unique per recipient and topic, not per post: any service may"
        " notify (api.Notify), several times about one post",
        (
            """CREATE TABLE notifications_by_topic (
                id {id} PRIMARY KEY,
                recipient_id {id} NOT NULL,
                kind TEXT NOT NULL,
                actor_id {id} NOT NULL,
                actor_username {bytes} NOT NULL,
                post_id {id} NOT NULL,
                created_at {bigint} NOT NULL,
                is_read {bool} NOT NULL,
                topic TEXT NOT NULL,
                UNIQUE (recipient_id, topic)
            )""",
            "INSERT INTO notifications_by_topic"
            " SELECT id, recipient_id, kind, actor_id, actor_username, post_id, created_at,"
            " is_read, post_id FROM notifications",
            "DROP TABLE notifications",
            "ALTER TABLE notifications_by_topic RENAME TO notifications",
            "CREATE INDEX notifications_by_recipient ON notifications (recipient_id, id)",
            "CREATE INDEX notifications_by_state ON notifications (recipient_id, is_read, id)",
            "CREATE INDEX notifications_by_post ON notifications (post_id)",
            "CREATE INDEX notifications_by_actor ON notifications (actor_id)",
        ),
    ),
]

_COLUMNS = "id, recipient_id, kind, actor_id, actor_username, post_id, created_at, is_read"


@frozen
class NotificationRow:
    id: str
    recipient_id: str
    kind: str
    actor_id: str
    actor_username: str
    post_id: str
    created_at: int
    read: bool
    #: What it is about: one notification per recipient and topic (the
    #: post, unless the service that asked for it said otherwise).
    topic: str | None = None

    def view(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "actor": self.actor_username,
            "post_id": self.post_id,
            "created_at": formatMillis(self.created_at),
            "read": self.read,
        }


def _portions(
    groups: Sequence[tuple[list[NotificationRow], Origin | None]], size: int
) -> list[list[tuple[list[NotificationRow], Origin | None]]]:
    """
    C{groups} in portions of at most C{size} notifications, a group too
    large for what is left of one split across the next (none for groups
    with no notifications).
    """
    portions: list[list[tuple[list[NotificationRow], Origin | None]]] = [[]]
    room = size
    for rows, origin in groups:
        while rows:
            if not room:
                portions.append([])
                room = size
            taken, rows = rows[:room], rows[room:]
            portions[-1].append((taken, origin))
            room -= len(taken)
    return [portion for portion in portions if portion]


class NotifyStore:
    """
    @ivar perTransaction: The most notifications stored in one
        transaction.  A post to a large audience goes in several, one after
        another, each whole (its notifications with their events): no
        transaction holds its locks (or, on SQLite, the reactor) for long.
        A retried event stores only what is missing, as a recipient's
        notification of a post is stored once.
    """

    perTransaction = 1000

    def __init__(
        self, database: IDatabase, fields: IFieldCodec, outbox: Outbox, clock: IReactorTime
    ) -> None:
        self._database = database
        self._fields = fields
        self._outbox = outbox
        self._clock = clock

    def _notification(self, row: Sequence[Any]) -> NotificationRow:
        nid, recipient, kind, actorId, actorUsername, postId, createdAt, isRead = row
        return NotificationRow(
            id=nid,
            recipient_id=recipient,
            kind=kind,
            actor_id=actorId,
            actor_username=self._fields.open(
                "notifications", "actor_username", nid, bytes(actorUsername)
            ),
            post_id=postId,
            created_at=createdAt,
            read=bool(isRead),
        )

    def _gone(self, t: ITransaction, wanted: dict[str, Iterable[str]]) -> set[tuple[str, str]]:
        """
        Which of C{wanted} ({kind: ids}) were deleted, as C{(kind, id)}: one
        statement for every kind, unless there are very many.
        """
        pairs = sorted({(kind, id) for kind, ids in wanted.items() for id in ids})
        gone: set[tuple[str, str]] = set()
        for start in range(0, len(pairs), 500):
            chunk = pairs[start : start + 500]
            conditions, params = [], []
            for kind in sorted({kind for kind, _ in chunk}):
                ids = [id for k, id in chunk if k == kind]
                conditions.append(f"(kind = ? AND id IN ({', '.join('?' * len(ids))}))")
                params += [kind, *ids]
            t.execute(
                f"SELECT kind, id FROM notify_tombstones WHERE {' OR '.join(conditions)}", params
            )
            gone.update((kind, id) for kind, id in t.fetchall())
        return gone

    def add(
        self, notifications: list[NotificationRow], origin: Origin | None = None
    ) -> Deferred[int]:
        """
        Store C{notifications} (all about one post, by one actor), skipping
        recipients that already have one for the post and anything about a
        deleted post, actor or recipient.

        @param origin: What the notifications' event is published on behalf
            of (by default, what is being handled).
        @return: how many were added.
        """
        return self.addAll([(notifications, origin)])

    def addAll(
        self, groups: Sequence[tuple[list[NotificationRow], Origin | None]]
    ) -> Deferred[int]:
        """
        L{add} several groups of notifications (each about one post, by one
        actor), each group announced by an event of its own on behalf of
        its origin: in one transaction, or in portions of
        L{perTransaction}.

        @return: how many were added in all.
        """
        return self._addPortions(_portions(groups, self.perTransaction))

    @inlineCallbacks
    def _addPortions(
        self, portions: list[list[tuple[list[NotificationRow], Origin | None]]]
    ) -> Any:
        added = 0
        for n, portion in enumerate(portions):
            if n:
                # The reactor serves others in between: on SQLite it runs
                # the transactions.
                yield deferLater(self._clock, 0, lambda: None)
            added += yield self._database.runInteraction(self._addAll, portion)
        return added

    def _addAll(
        self, t: ITransaction, groups: Sequence[tuple[list[NotificationRow], Origin | None]]
    ) -> int:
        groups = [(rows, origin) for rows, origin in groups if rows]
        if not groups:
            return 0
        # With the deletions below: either the tombstone is seen here, or
        # the notification is seen by the deletion.
        t.lock(
            *(f"post:{rows[0].post_id}" for rows, _ in groups),
            *(f"account:{rows[0].actor_id}" for rows, _ in groups),
            *(f"account:{n.recipient_id}" for rows, _ in groups for n in rows),
        )
        gone = self._gone(
            t,
            {
                "post": {rows[0].post_id for rows, _ in groups},
                "account": {n.actor_id for rows, _ in groups for n in rows}
                | {n.recipient_id for rows, _ in groups for n in rows},
            },
        )
        wanted = [
            (rows, origin)
            for rows, origin in groups
            if ("post", rows[0].post_id) not in gone and ("account", rows[0].actor_id) not in gone
        ]
        inserted = self._insert(
            t, [n for rows, _ in wanted for n in rows if ("account", n.recipient_id) not in gone]
        )
        count = 0
        for rows, origin in wanted:
            added = [n for n in rows if n.id in inserted]
            # Announced in the same transaction: live streams hear of exactly
            # the notifications stored.
            for start in range(0, len(added), api.EVENT_BATCH):
                self._outbox.stage(
                    t,
                    api.NOTIFICATION_CREATED,
                    {
                        "notifications": [
                            {"recipient_id": n.recipient_id, **n.view()}
                            for n in added[start : start + api.EVENT_BATCH]
                        ]
                    },
                    origin,
                )
            count += len(added)
        return count

    def _insert(self, t: ITransaction, notifications: list[NotificationRow]) -> set[str]:
        """
        Store C{notifications}, but none a recipient has for its post
        already, in one statement (unless there are very many).

        @return: The ids of those stored.
        """
        inserted: set[str] = set()
        for start in range(0, len(notifications), 500):
            chunk = notifications[start : start + 500]
            # Written in by literals, as what is sent is: not parsed
            # again by psycopg for its parameters.
            added = t.query(
                f"INSERT INTO notifications ({_COLUMNS}, topic) VALUES "
                + ", ".join("(?, ?, ?, ?, ?, ?, ?, ?, ?)" for _ in chunk)
                + " ON CONFLICT DO NOTHING RETURNING id",
                [
                    value
                    for n in chunk
                    for value in (
                        n.id,
                        n.recipient_id,
                        n.kind,
                        n.actor_id,
                        self._fields.seal(
                            "notifications", "actor_username", n.id, n.actor_username
                        ),
                        n.post_id,
                        n.created_at,
                        n.read,
                        n.topic or n.post_id,
                    )
                ],
            )
            inserted.update(row[0] for row in added.fetchall())
        return inserted

    def forRecipient(
        self, recipientId: str, unread: bool | None, limit: int, before: str | None
    ) -> Deferred[list[NotificationRow]]:
        """
        C{recipientId}'s notifications, newest first, older than C{before};
        only unread (C{unread=True}) or only read (C{False}) ones if asked.
        """
        sql = f"SELECT {_COLUMNS} FROM notifications WHERE recipient_id = ?"
        params: list[Any] = [recipientId]
        if unread is not None:
            sql += " AND is_read = ?"
            params.append(not unread)
        if before is not None:
            sql += " AND id < ?"
            params.append(before)
        sql += " ORDER BY id DESC LIMIT ?"
        d = self._database.runQuery(sql, (*params, limit))
        return d.addCallback(readableRows, self._notification)

    def markRead(self, recipientId: str, notificationId: str) -> Deferred[bool]:
        """
        @return: whether C{recipientId} has that notification.
        """
        return self._database.runInteraction(
            lambda t: (
                t.execute(
                    "UPDATE notifications SET is_read = ? WHERE id = ? AND recipient_id = ?",
                    (True, notificationId, recipientId),
                ).rowcount
                > 0
            )
        )

    def postDeleted(self, postId: str, now: int) -> Deferred[int]:
        return self._database.runInteraction(self._postDeleted, postId, now)

    def _postDeleted(self, t: ITransaction, postId: str, now: int) -> int:
        t.lock(f"post:{postId}")
        self._tombstone(t, "post", postId, now)
        return t.execute("DELETE FROM notifications WHERE post_id = ?", (postId,)).rowcount

    def accountDeleted(self, accountId: str, now: int) -> Deferred[int]:
        """
        Remove the account's notifications and every notification it caused.
        """
        return self._database.runInteraction(self._accountDeleted, accountId, now)

    def _accountDeleted(self, t: ITransaction, accountId: str, now: int) -> int:
        t.lock(f"account:{accountId}")
        self._tombstone(t, "account", accountId, now)
        return t.execute(
            "DELETE FROM notifications WHERE recipient_id = ? OR actor_id = ?",
            (accountId, accountId),
        ).rowcount

    @staticmethod
    def _tombstone(t: ITransaction, kind: str, objectId: str, now: int) -> None:
        t.execute(
            "INSERT INTO notify_tombstones (kind, id, deleted_at) VALUES (?, ?, ?)"
            " ON CONFLICT DO NOTHING",
            (kind, objectId, now),
        )
