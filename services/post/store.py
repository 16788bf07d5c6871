# -*- test-case-name: tests.services.test_post -*-
"""
The Post service's tables.
"""

from __future__ import annotations

from typing import Any, Sequence

from attrs import frozen
from twisted.internet.defer import Deferred

from txplatform.batching import BatchLoader
from txplatform.database import Migration
from txplatform.errors import NotFound, PermissionDenied, ResourceExhausted
from txplatform.fields import CorruptField, readableRows
from txplatform.interfaces import IDatabase, IFieldCodec, IRows, ITransaction
from txplatform.outbox import Outbox
from txplatform.replylog import Recorder
from txplatform.timestamps import formatMillis

from . import api

__all__ = ["MIGRATIONS", "PostRow", "PostStore"]

MIGRATIONS = [
    Migration(
        1,
        "posts, and the authors whose posts must not come back",
        (
            """CREATE TABLE posts (
                id {id} PRIMARY KEY,
                author_id {id} NOT NULL,
                author_username {bytes} NOT NULL,
                body {bytes} NOT NULL,
                created_at {bigint} NOT NULL
            )""",
            "CREATE INDEX posts_by_author ON posts (author_id, id)",
            # account.deleted may overtake a post being created; the
            # tombstone makes the late post fail instead of outliving its
            # author.
            """CREATE TABLE post_deleted_authors (
                account_id {id} PRIMARY KEY,
                deleted_at {bigint} NOT NULL
            )""",
        ),
    )
]

_COLUMNS = "id, author_id, author_username, body, created_at"


@frozen
class PostRow:
    id: str
    author_id: str
    author_username: str
    body: str
    created_at: int

    def view(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "author": self.author_username,
            "body": self.body,
            "created_at": formatMillis(self.created_at),
        }


class PostStore:
    """
    @ivar rate: At most this many posts per author in C{ratePeriod}
        seconds (0: no limit), counted in the database so that every
        replica (and every gateway) sees the same count.
    """

    rate = 0
    ratePeriod = 60.0

    def __init__(self, database: IDatabase, fields: IFieldCodec, outbox: Outbox) -> None:
        self._database = database
        self._fields = fields
        self._outbox = outbox
        # Reading posts is the hot path: concurrent reads share round trips.
        self._loader: BatchLoader[str, PostRow] = BatchLoader(
            self._getMany, maxInFlight=1 if database.dialect == "sqlite" else 4
        )

    def _post(self, row: Sequence[Any]) -> PostRow:
        postId, authorId, authorUsername, body, createdAt = row
        return PostRow(
            id=postId,
            author_id=authorId,
            author_username=self._fields.open(
                "posts", "author_username", postId, bytes(authorUsername)
            ),
            body=self._fields.open("posts", "body", postId, bytes(body)),
            created_at=createdAt,
        )

    def create(self, post: PostRow, record: Recorder | None = None) -> Deferred[PostRow]:
        """
        @param record: Called in the transaction with the post (see
            L{txplatform.replylog}).
        @raise NotFound: the author's account was deleted.
        """
        return self._database.runInteraction(self._create, post, record)

    def _create(self, t: ITransaction, post: PostRow, record: Recorder | None) -> PostRow:
        # With _deleteAuthor: either the tombstone is seen, or the post is.
        t.lock(f"post-author:{post.author_id}")
        gone = t.query("SELECT 1 FROM post_deleted_authors WHERE account_id = ?", (post.author_id,))
        # In the tombstone's round trip.
        newest = self._newest(t, post) if self.rate else None
        if gone.fetchone():
            raise NotFound("the author's account no longer exists")
        if newest is not None:
            self._checkRate(newest.fetchone(), post)
        t.send(
            f"INSERT INTO posts ({_COLUMNS}) VALUES (?, ?, ?, ?, ?)",
            (
                post.id,
                post.author_id,
                self._fields.seal("posts", "author_username", post.id, post.author_username),
                self._fields.seal("posts", "body", post.id, post.body),
                post.created_at,
            ),
        )
        self._outbox.stage(
            t,
            api.POST_CREATED,
            {
                "post_id": post.id,
                "author_id": post.author_id,
                "author_username": post.author_username,
                "body": post.body,
                "created_at": post.created_at,
            },
        )
        if record is not None:
            record(t, post)
        return post

    def _newest(self, t: ITransaction, post: PostRow) -> IRows:
        """
        The author's C{rate}-th newest post's time, if any (under the
        author's lock, so concurrent posts count exactly).
        """
        return t.query(
            "SELECT created_at FROM posts WHERE author_id = ? ORDER BY id DESC LIMIT 1 OFFSET ?",
            (post.author_id, self.rate - 1),
        )

    def _checkRate(self, row: tuple[Any, ...] | None, post: PostRow) -> None:
        """
        Refuse a post beyond the author's rate: the author's C{rate}-th
        newest post (C{row}, from L{_newest}) is the one that must be older
        than the period.
        """
        if row is None:
            return
        period = int(self.ratePeriod * 1000)
        wait = (row[0] + period - post.created_at) / 1000
        if wait > 0:
            raise ResourceExhausted(
                f"at most {self.rate} posts per {self.ratePeriod:g} s:"
                f" try again in {max(1, round(wait))} s",
                {"retry_after": wait},
            )

    def get(self, postId: str) -> Deferred[PostRow | None]:
        return self._loader.get(postId)

    def _getMany(self, postIds: list[str]) -> Deferred[dict[str, PostRow]]:
        return self._database.runInteraction(self._selectMany, postIds)

    def _selectMany(self, t: ITransaction, postIds: list[str]) -> dict[str, PostRow]:
        marks = ", ".join("?" * len(postIds))
        rows = t.execute(f"SELECT {_COLUMNS} FROM posts WHERE id IN ({marks})", postIds).fetchall()
        found: dict[str, PostRow | CorruptField] = {}
        for row in rows:
            try:
                found[row[0]] = self._post(row)
            except CorruptField as e:
                found[row[0]] = e  # for that post's readers only
        return found

    def byAuthor(self, authorId: str, limit: int, before: str | None) -> Deferred[list[PostRow]]:
        """
        C{authorId}'s posts, newest first, older than post C{before}.
        """
        sql = f"SELECT {_COLUMNS} FROM posts WHERE author_id = ?"
        params: list[Any] = [authorId]
        if before is not None:
            sql += " AND id < ?"
            params.append(before)
        sql += " ORDER BY id DESC LIMIT ?"
        return self._database.runInteraction(
            lambda t: readableRows(t.execute(sql, (*params, limit)).fetchall(), self._post)
        )

    def delete(self, postId: str, accountId: str, record: Recorder | None = None) -> Deferred[None]:
        """
        @raise NotFound: no such post.
        @raise PermissionDenied: C{accountId} is not its author.
        """
        return self._database.runInteraction(self._delete, postId, accountId, record)

    def _delete(
        self, t: ITransaction, postId: str, accountId: str, record: Recorder | None
    ) -> None:
        row = t.execute("SELECT author_id FROM posts WHERE id = ?", (postId,)).fetchone()
        if row is None:
            raise NotFound("no such post")
        if row[0] != accountId:
            raise PermissionDenied("only its author can delete a post")
        t.execute("DELETE FROM posts WHERE id = ?", (postId,))
        self._outbox.stage(t, api.POST_DELETED, {"post_id": postId, "author_id": accountId})
        if record is not None:
            record(t, None)

    def deleteAuthor(self, authorId: str, now: int) -> Deferred[int]:
        """
        Forget everything C{authorId} posted, for good.

        @return: how many posts went.
        """
        return self._database.runInteraction(self._deleteAuthor, authorId, now)

    def _deleteAuthor(self, t: ITransaction, authorId: str, now: int) -> int:
        t.lock(f"post-author:{authorId}")
        t.execute(
            "INSERT INTO post_deleted_authors (account_id, deleted_at) VALUES (?, ?)"
            " ON CONFLICT DO NOTHING",
            (authorId, now),
        )
        count = t.execute("DELETE FROM posts WHERE author_id = ?", (authorId,)).rowcount
        self._outbox.stage(t, api.POSTS_PURGED, {"author_id": authorId})
        return count
