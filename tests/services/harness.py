"""
Running services for tests: on the in-process bus and the real reactor,
against SQLite or PostgreSQL.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.trial.unittest import TestCase

from txplatform import testing
from txplatform.crypto.keys import Keys
from txplatform.localbus import LocalBus
from txplatform_services.account.passwords import Argon2Parameters, PasswordHasher
from txplatform_services.account.service import AccountService
from txplatform_services.notify.service import NotifyService
from txplatform_services.post.service import PostService

from ..support import eventually, keyFiles


class ShiftedClock:
    """
    The reactor's clock, moved forward by C{offset} seconds on demand: lets
    tests make sessions expire without waiting.
    """

    def __init__(self) -> None:
        self.offset = 0.0

    def seconds(self) -> float:
        return reactor.seconds() + self.offset

    def callLater(self, delay: float, f: Any, *args: Any, **kwargs: Any) -> Any:
        return reactor.callLater(delay, f, *args, **kwargs)

    def getDelayedCalls(self) -> Any:
        return reactor.getDelayedCalls()


class EventRecorder(testing.EventRecorder):
    """
    txplatform's recorder, waited on with the real reactor.
    """

    def waitFor(self, name: str, count: int = 1) -> Deferred[Any]:
        return eventually(lambda: len(self.named(name)) >= count and self.named(name))


def cheapPasswords() -> PasswordHasher:
    return PasswordHasher(reactor, Argon2Parameters.cheapest())


class ServiceTestCase(TestCase):
    """
    Starts services on one in-process bus and stops them after the test.
    Mix in L{tests.support.SQLiteMixin} or L{tests.support.PostgresMixin}.
    """

    #: When set: encrypt as production does, with key files of this epoch
    #: period (a bus keyring, and one per service).
    keyPeriod: float | None = None

    def setUp(self) -> Any:
        self.clock = ShiftedClock()
        self.keys: dict[str, Keys] = {}
        codec = None
        if self.keyPeriod is not None:
            paths = keyFiles(os.path.abspath(self.mktemp()), self.keyPeriod)
            self.keyPaths = paths
            for purpose, path in paths.items():
                self.keys[purpose] = Keys(path, reactor, purpose, interval=0.1)
                self.keys[purpose].service.startService()
                self.addCleanup(self.keys[purpose].service.stopService)
            codec = self.keys["bus"].payloadCodec()
        self.bus = LocalBus(reactor, defaultTimeout=5.0, retryDelays=(0.05, 0.1, 0.2), codec=codec)
        self.bus.startService()
        self.addCleanup(self.bus.stopService)
        self.recorder = EventRecorder()
        return self.recorder.subscribe(self.bus)

    @inlineCallbacks
    def start(self, service: Any) -> Any:
        """
        Start C{service} as a process does, publishing once it serves.
        """
        service.startService()
        self.addCleanup(service.stopService)
        yield service.whenStarted()
        service.startPublishing()
        return service

    def fields(self, service: str) -> Any:
        """
        The field codec of C{service}: sealed when the test encrypts.
        """
        return self.keys[service].fieldCodec() if self.keys else None

    def startAccount(self, **kwargs: Any) -> Deferred[AccountService]:
        kwargs.setdefault("passwords", cheapPasswords())
        kwargs.setdefault("fields", self.fields("account"))
        return self.start(
            AccountService(self.bus, self.makeDatabase("account"), self.clock, **kwargs)
        )

    def startPost(self, **kwargs: Any) -> Deferred[PostService]:
        return self.start(
            PostService(
                self.bus, self.makeDatabase("post"), self.clock, self.fields("post"), **kwargs
            )
        )

    def startNotify(self) -> Deferred[NotifyService]:
        return self.start(
            NotifyService(self.bus, self.makeDatabase("notify"), self.clock, self.fields("notify"))
        )

    def call(self, service: Any, method: str, **payload: Any) -> Deferred[Any]:
        return self.bus.call(service, method, payload)


def deliver(service: Any, method: str, payload: Any, messageId: str, redelivered: bool) -> Any:
    """
    Hand C{service} a call as the bus does, possibly as a redelivery.
    Every call so handed shares one trace id, as the calls one gateway
    request makes do, distinct from their message ids: what a call is
    recognised by when redelivered is its message id alone.
    """
    from twisted.internet.defer import maybeDeferred

    from txplatform.context import CallContext

    context = CallContext(
        messageId=messageId,
        service=service.serviceId,
        method=method,
        caller=None,
        correlationId="one-request",
        deadline=reactor.seconds() + 10,
        priority=5,
        redelivered=redelivered,
    )
    handler = service._callHandler(service.rpcMethods()[method])
    return maybeDeferred(handler, payload, context)
