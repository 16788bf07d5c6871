"""
Buses on the local RabbitMQ for tests, each test with its own service ids
and groups, and the queues it made deleted afterwards.
"""

from __future__ import annotations

import random
import uuid
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from txplatform.amqp import frames
from txplatform.amqp.bus import AMQPBus, deadQueue, eventQueue, rpcQueue
from txplatform.amqp.url import BrokerURL
from txplatform.serviceid import ServiceId

from ..support import BROKER_URL, requireBroker


class BrokerTestCase(TestCase):
    timeout = 60
    #: The broker URL the test's buses use.
    brokerURL = BROKER_URL

    def setUp(self) -> None:
        requireBroker()
        self._queues: set[str] = set()
        self._buses: list[AMQPBus] = []
        self.addCleanup(self._deleteQueues)

    def newServiceId(self) -> ServiceId:
        # The 0xf0xxxx range is left to tests.
        serviceId = ServiceId.fromInt(0xF00000 | random.getrandbits(20))
        self._queues.add(rpcQueue(serviceId))
        self._queues.add(deadQueue(f"rpc.{serviceId.hex}"))
        return serviceId

    def newGroup(self, *patterns: str) -> str:
        group = f"test-{uuid.uuid4().hex[:10]}"
        self._queues.add(deadQueue(group))
        for pattern in patterns:
            self._queues.add(eventQueue(group, pattern))
        return group

    def newEvent(self) -> str:
        return f"test{uuid.uuid4().hex[:10]}.happened"

    @inlineCallbacks
    def makeBus(self, **kwargs: Any) -> Any:
        """
        A started bus, connected; stopped after the test.
        """
        kwargs.setdefault("retryDelays", (0.05, 0.1))
        bus = AMQPBus(reactor, BrokerURL.parse(self.brokerURL), **kwargs)
        bus.startService()
        self._buses.append(bus)
        self.addCleanup(bus.stopService)
        yield bus.whenConnected()
        return bus

    @inlineCallbacks
    def _deleteQueues(self) -> Any:
        if not self._queues:
            return
        bus = AMQPBus(reactor, BrokerURL.parse(self.brokerURL))
        bus.startService()
        try:
            yield bus.whenConnected()
            for queue in sorted(self._queues):
                yield bus._channel.queue_delete(queue=queue)
        finally:
            yield bus.stopService()

    @inlineCallbacks
    def deadLetters(self, bus: Any, group: str) -> Any:
        """
        The messages in C{group}'s dead-letter queue, left in place.
        """
        protocol = bus._protocol
        found = []
        while True:
            delivery = yield protocol.get(1, deadQueue(group))
            if delivery is None:
                break
            found.append(delivery)
        if found:
            protocol.transport.write(frames.nack(1, found[-1].deliveryTag, True, True))
        return found
