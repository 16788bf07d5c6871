"""
The likes service and its table.  Who liked is sealed at rest: a blind
index finds an account's likes without storing who it is.
"""

from twisted.internet.defer import inlineCallbacks

from txplatform.database import Migration
from txplatform.errors import NotFound
from txplatform.fields import SealedTable, readableRows
from txplatform.messages import toPayload
from txplatform.pagination import decodeCursor, page
from txplatform.recordid import newRecordId
from txplatform.service import DatabaseService, handles, rpc
from txplatform.timestamps import formatMillis, nowMillis
from txplatform_services.account import api as account
from txplatform_services.notify import api as notify
from txplatform_services.post import api as post

from . import api

TABLE = """CREATE TABLE likes (id {id} PRIMARY KEY, post_id {id} NOT NULL,
    account_id {bytes} NOT NULL, username {bytes} NOT NULL, liker {bytes} NOT NULL,
    created_at {bigint} NOT NULL, UNIQUE (post_id, liker))"""
PAGE = "SELECT id, username, created_at FROM likes WHERE post_id = ? AND id < ?"


class LikesService(DatabaseService):
    name = "likes"
    serviceId = api.SERVICE_ID
    migrations = [Migration(1, "likes", [TABLE, "CREATE INDEX by_liker ON likes (liker)"])]
    sealed = [
        SealedTable("likes", "id", ["account_id", "username"], {"account_id": ("liker", str)})
    ]

    def liker(self, accountId):
        found = self.fields.indexes("likes", "account_id", accountId)
        return f"liker IN ({', '.join('?' * len(found))})", found

    @rpc(api.Like)
    @inlineCallbacks
    def like(self, request, context):
        liked = yield self.call(post.GetPost(post_id=request.post_id), context)
        event = {**toPayload(request), "author_username": liked["author"]}
        yield self.database.runInteraction(self._like, request, event)
        self.outbox.flush()

    def _like(self, t, request, event):
        liker, found = self.liker(request.account_id)
        sql = f"SELECT 1 FROM likes WHERE post_id = ? AND {liker}"
        if not t.execute(sql, (request.post_id, *found)).fetchone():
            id, seal = newRecordId(self.clock), self.fields.seal
            sealed = [seal("likes", c, id, event[c]) for c in ("account_id", "username")]
            values = (id, request.post_id, *sealed, found[0], nowMillis(self.clock))
            t.execute("INSERT INTO likes VALUES (?, ?, ?, ?, ?, ?)", values)
            self.outbox.stage(t, api.POST_LIKED, event)

    @rpc(api.Unlike)
    def unlike(self, request, context):
        liker, found = self.liker(request.account_id)
        sql = f"DELETE FROM likes WHERE post_id = ? AND {liker}"
        return self.database.runOperation(sql, (request.post_id, *found))

    @rpc(api.ListLikes)
    @inlineCallbacks
    def list_likes(self, request, context):
        before = decodeCursor(request.cursor, str)[0] if request.cursor else "~"
        read = yield self.database.runBatch(self._likes, request.post_id, before, request.limit)
        rows, [(count,)] = read()
        items, cursor = page(readableRows(rows, self.view), request.limit, lambda v: (v["id"],))
        return {"count": count, "items": items, "next": cursor}

    def _likes(self, t, postId, before, limit):
        rows = t.query(PAGE + " ORDER BY id DESC LIMIT ?", (postId, before, limit + 1))
        count = t.query("SELECT count(*) FROM likes WHERE post_id = ?", (postId,))
        return lambda: (rows.fetchall(), count.fetchall())

    def view(self, row):
        username = self.fields.open("likes", "username", row[0], bytes(row[1]))
        return {"id": row[0], "username": username, "liked_at": formatMillis(row[2])}

    @handles(api.POST_LIKED, api.PostLiked)
    @inlineCallbacks
    def notify_author(self, event, context):
        try:
            author = yield self.call(account.GetProfile(username=event.author_username), context)
        except NotFound:
            return  # the author is gone: nobody to tell
        if author["id"] != event.account_id:
            notification = notify.Notify(
                recipient_id=author["id"],
                kind="liked",
                actor_id=event.account_id,
                actor_username=event.username,
                post_id=event.post_id,
                topic=f"{event.post_id}/{event.account_id}",
            )
            yield self.call(notification, context)

    @handles(post.POST_DELETED, post.PostDeleted)
    def post_deleted(self, event, context):
        return self.database.runOperation("DELETE FROM likes WHERE post_id = ?", (event.post_id,))

    @handles(account.ACCOUNT_DELETED, account.AccountDeleted)
    def account_deleted(self, event, context):
        liker, found = self.liker(event.account_id)
        return self.database.runOperation(f"DELETE FROM likes WHERE {liker}", found)
