"""
Restarting a process: what its services committed but had not published
reaches every consumer, including those in the same process.
"""

import os
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from txplatform.database import SQLiteDatabase
from txplatform.localbus import LocalBus
from txplatform.recordid import newRecordId, recordIdTime
from txplatform_plugins._lifecycle import ReadinessGate
from txplatform_services.account.service import AccountService
from txplatform_services.notify import api as notify
from txplatform_services.notify.service import NotifyService
from txplatform_services.post.service import PostService
from txplatform_services.post.store import PostRow

from ..support import eventually
from .harness import cheapPasswords


class RestartTests(TestCase):
    def platform(self, directory: str) -> tuple[MultiService, LocalBus, list[Any]]:
        """
        The three services on a new in-process bus, started as the
        all-in-one process starts them.
        """
        top = MultiService()
        bus = LocalBus(reactor)
        bus.setServiceParent(top)
        services = [
            AccountService(
                bus,
                SQLiteDatabase(os.path.join(directory, "account.sqlite")),
                reactor,
                cheapPasswords(),
            ),
            PostService(bus, SQLiteDatabase(os.path.join(directory, "post.sqlite")), reactor),
            NotifyService(bus, SQLiteDatabase(os.path.join(directory, "notify.sqlite")), reactor),
        ]
        for service in services:
            service.setServiceParent(top)
        ReadinessGate(reactor, services, Service(), whenReady=lambda: None).setServiceParent(top)
        return top, bus, services

    @inlineCallbacks
    def test_leftoversReachTheSameProcess(self) -> Any:
        """
        A post committed just before the process died, its event still in
        the outbox, notifies the account it mentions once the process
        starts again: the relay waits until every service subscribed.
        """
        directory = self.mktemp()
        top, bus, (accounts, posts, _) = self.platform(directory)
        top.startService()
        yield eventually(
            lambda: all(s.whenStarted().called for s in top if hasattr(s, "whenStarted"))
        )
        bob = yield bus.call(
            accounts.serviceId,
            "register",
            {"username": "bob", "email": "bob@example.com", "password": "correct horse"},
        )
        postId = newRecordId(reactor)
        # What create_post commits; the process "dies" before publishing.
        yield posts.store.create(
            PostRow(postId, "01aaaaaaaaaaaaaaaaaaaaaaaa", "alice", "hi @bob", recordIdTime(postId))
        )
        yield accounts.outbox.flush()
        yield top.stopService()

        top, bus, _ = self.platform(directory)
        top.startService()
        self.addCleanup(top.stopService)

        def bobsNotifications() -> Any:
            d = bus.call(notify.SERVICE_ID, "list_notifications", {"account_id": bob["id"]})
            return d.addCallbacks(lambda page: page["items"], lambda f: [])

        [notification] = yield eventually(bobsNotifications)
        self.assertEqual((notification["post_id"], notification["kind"]), (postId, "mention"))
