"""
Real twistd replicas on RabbitMQ and PostgreSQL, each test in a vhost and a
schema of its own.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from twisted.internet import reactor, threads
from twisted.internet.defer import Deferred, inlineCallbacks

from txplatform.amqp.bus import AMQPBus
from txplatform.amqp.url import BrokerURL
from txplatform.crypto.keys import Keys

from ..processes import SERVING, Twistd, TwistdTestCase
from ..support import (
    BROKER_URL,
    POSTGRES_URL,
    keyArguments,
    keyFiles,
    missing,
    newPostgresSchema,
    requireBroker,
)


def rabbitmqctl(*arguments: str) -> Deferred[subprocess.CompletedProcess]:
    return threads.deferToThreadPool(
        reactor,
        reactor.getThreadPool(),
        subprocess.run,
        ["rabbitmqctl", *arguments],
        capture_output=True,
        text=True,
        timeout=60,
    )


class ClusterTestCase(TwistdTestCase):
    timeout = 180

    @inlineCallbacks
    def setUp(self) -> Any:
        requireBroker()
        if shutil.which("rabbitmqctl") is None:
            missing("rabbitmqctl is not on the PATH: cannot make a vhost for the test")
        self.schema = newPostgresSchema(self)
        self.vhost = f"txplatform-test-{uuid.uuid4().hex[:12]}"
        result = yield rabbitmqctl("add_vhost", self.vhost)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.addCleanup(rabbitmqctl, "delete_vhost", self.vhost)
        result = yield rabbitmqctl("set_permissions", "-p", self.vhost, "guest", ".*", ".*", ".*")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.busURL = urlunsplit(urlsplit(BROKER_URL)._replace(path="/" + self.vhost))
        self.databaseURL = f"{POSTGRES_URL}?schema={self.schema}"
        self.keys = keyFiles(os.path.abspath(self.mktemp()))

    def service(self, name: str, *options: str) -> Twistd:
        """
        Start a replica of service C{name}; its C{ready} fires once it serves.
        """
        return self.spawn(
            name,
            "--bus",
            self.busURL,
            "--db",
            self.databaseURL,
            *keyArguments(self.keys, name),
            *options,
            ready=SERVING,
        )

    def gateway(self, *options: str) -> Twistd:
        """
        Start a gateway on an ephemeral loopback port; C{ready} gives it.
        """
        return self.spawn(
            "gateway",
            "--bus",
            self.busURL,
            "--listen",
            "tcp:0:interface=127.0.0.1",
            *keyArguments(self.keys, "gateway"),
            *options,
        )

    @inlineCallbacks
    def bus(self) -> Any:
        """
        A bus client in the test process, on the test's vhost.
        """
        busKeys = Keys(self.keys["bus"], reactor, "bus")
        bus = AMQPBus(reactor, BrokerURL.parse(self.busURL), codec=busKeys.payloadCodec())
        bus.startService()
        self.addCleanup(bus.stopService)
        yield bus.whenConnected()
        return bus

    def query(self, sql: str) -> Deferred[list[tuple[Any, ...]]]:
        """
        Rows from the test's schema (blocking psycopg, in a thread).
        """

        def run() -> list[tuple[Any, ...]]:
            import psycopg

            with psycopg.connect(POSTGRES_URL, options=f"-c search_path={self.schema}") as c:
                return c.execute(sql).fetchall()

        return threads.deferToThreadPool(reactor, reactor.getThreadPool(), run)
