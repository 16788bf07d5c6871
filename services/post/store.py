# -*- test-case-name: tests.services.test_post -*-
"""
The Post service's tables.
"""

from __future__ import annotations

from typing import Any, Sequence

from attrs import define, frozen
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from txplatform import traces
from txplatform.batching import BatchLoader
from txplatform.context import Origin, handling
from txplatform.database import Migration
from txplatform.errors import NotFound, PermissionDenied, ResourceExhausted
from txplatform.eventbatch import EventBatcher
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


@define
class _Creating:
    """
    A post on its way into a batch of creates, and what became of it.
    """

    post: PostRow
    record: Recorder | None
    # Its call's correlation id and trace, for its event: the batch's
    # transaction is nobody's in particular.
    origin: Origin
    refused: Exception | None = None

    def outcome(self, _: object) -> PostRow:
        if self.refused is not None:
            raise self.refused
        return self.post


class PostStore:
    """
    @ivar rate: At most this many posts per author in C{ratePeriod}
        seconds (0: no limit), counted in the database so that every
        replica (and every gateway) sees the same count.
    """

    rate = 0
    ratePeriod = 60.0

    def __init__(
        self, database: IDatabase, fields: IFieldCodec, outbox: Outbox, clock: IReactorTime
    ) -> None:
        self._database = database
        self._fields = fields
        self._outbox = outbox
        # Posts created together go into one transaction (group commit):
        # those that arrive while transactions are under way wait for one
        # to end, then go together in the next.
        self._creates: EventBatcher[_Creating] = EventBatcher(
            clock,
            self._createBatch,
            size=64,
            concurrency=1 if database.dialect == "sqlite" else 2,
            describe="post.create",
        )
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
        @raise ResourceExhausted: the author is over the rate.
        """
        handled = handling()
        span = None
        if traces.enabled():
            # The post's share of its batch's transaction, in its call's
            # trace, as the transaction's own span would be for one post.
            span = traces.startChildOfCurrent(
                "db.transaction",
                {"db.system.name": self._database.dialect, "code.function.name": "_create"},
            )
        origin = Origin(
            correlationId=handled.correlationId if handled is not None else None,
            traceParent=traces.traceParentOf(span) if span is not None else None,
            traceState=traces.traceStateOf(span) if span is not None else None,
        )
        creating = _Creating(post, record, origin)
        d = self._creates.add(creating).addCallback(creating.outcome)
        if span is not None:
            d.addBoth(traces.endSpan, span)
        return d

    def _createBatch(self, batch: list[_Creating]) -> Deferred[Any]:
        return self._database.runInteraction(self._create, batch)

    def _create(self, t: ITransaction, batch: list[_Creating]) -> None:
        authors = sorted({creating.post.author_id for creating in batch})
        # With _deleteAuthor: either the tombstone is seen, or the post is.
        t.lock(*(f"post-author:{author}" for author in authors))
        gone = t.query(
            "SELECT account_id FROM post_deleted_authors WHERE account_id IN"
            f" ({', '.join('?' * len(authors))})",
            authors,
        )
        # In the tombstones' round trip.
        newest = {author: self._newest(t, author) for author in authors} if self.rate else {}
        deleted = {row[0] for row in gone.fetchall()}
        recent = {author: [row[0] for row in rows.fetchall()] for author, rows in newest.items()}
        accepted = []
        for creating in batch:
            post = creating.post
            creating.refused = None  # a batch that failed is run again alone
            if post.author_id in deleted:
                creating.refused = NotFound("the author's account no longer exists")
                continue
            if self.rate:
                try:
                    self._checkRate(recent[post.author_id], post)
                except ResourceExhausted as refusal:
                    creating.refused = refusal
                    continue
                recent[post.author_id].insert(0, post.created_at)
            accepted.append(creating)
        if not accepted:
            return
        t.send(
            f"INSERT INTO posts ({_COLUMNS}) VALUES "
            + ", ".join("(?, ?, ?, ?, ?)" for _ in accepted),
            [
                value
                for creating in accepted
                for value in (
                    creating.post.id,
                    creating.post.author_id,
                    self._fields.seal(
                        "posts", "author_username", creating.post.id, creating.post.author_username
                    ),
                    self._fields.seal("posts", "body", creating.post.id, creating.post.body),
                    creating.post.created_at,
                )
            ],
        )
        for creating in accepted:
            post = creating.post
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
                creating.origin,
            )
            if creating.record is not None:
                creating.record(t, post)

    def _newest(self, t: ITransaction, author: str) -> IRows:
        """
        The times of the author's C{rate} newest posts, newest first (under
        the author's lock, so concurrent posts count exactly).
        """
        return t.query(
            "SELECT created_at FROM posts WHERE author_id = ? ORDER BY id DESC LIMIT ?",
            (author, self.rate),
        )

    def _checkRate(self, recent: list[int], post: PostRow) -> None:
        """
        Refuse a post beyond the author's rate: the author's C{rate}-th
        newest post (of C{recent}, from L{_newest}, with those accepted
        before it in its batch) is the one that must be older than the
        period.
        """
        if len(recent) < self.rate:
            return
        period = int(self.ratePeriod * 1000)
        wait = (recent[self.rate - 1] + period - post.created_at) / 1000
        if wait > 0:
            raise ResourceExhausted(
                f"at most {self.rate} posts per {self.ratePeriod:g} s:"
                f" try again in {max(1, round(wait))} s",
                {"retry_after": wait},
            )

    def get(self, postId: str) -> Deferred[PostRow | None]:
        return self._loader.get(postId)

    def _getMany(self, postIds: list[str]) -> Deferred[dict[str, PostRow]]:
        marks = ", ".join("?" * len(postIds))
        d = self._database.runQuery(f"SELECT {_COLUMNS} FROM posts WHERE id IN ({marks})", postIds)
        return d.addCallback(self._found)

    def _found(self, rows: list[tuple[Any, ...]]) -> dict[str, PostRow]:
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
        d = self._database.runQuery(sql, (*params, limit))
        return d.addCallback(readableRows, self._post)

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
