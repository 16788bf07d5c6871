"""
Tests for L{txplatform.testing.buscontract}: the bus contract, run against
the in-process bus, the AMQP bus on the local RabbitMQ, and the direct bus
(secure channels on loopback, events on RabbitMQ as in production).
"""

from __future__ import annotations

import random
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks, succeed
from twisted.trial.unittest import TestCase

from txplatform.amqp.bus import AMQPBus
from txplatform.amqp.url import BrokerURL
from txplatform.channel.identity import Identity, Peer, TrustStore
from txplatform.channel.protocol import ChannelSettings
from txplatform.direct.addresses import AddressBook
from txplatform.direct.bus import DirectBus
from txplatform.localbus import LocalBus
from txplatform.serviceid import ServiceId
from txplatform.testing.buscontract import BusContract, BusPair

from ..amqp.harness import BrokerTestCase
from ..direct.test_bus import freePort, sealedCodec

#: Retry failed events soon, so the contract's retry tests stay short.
RETRY_DELAYS = (0.05, 0.1)


def testServiceIds(count: int) -> list[ServiceId]:
    """
    C{count} different service ids in the range left to tests (0xf0xxxx),
    which on the direct bus are loopback addresses 127.240.x.y.
    """
    values = random.sample(range(0xF00001, 0xF0FFFF), count)
    return [ServiceId.fromInt(value) for value in values]


class LocalBusContractTests(BusContract, TestCase):
    """
    The contract, on one in-process bus: the caller and the server are the
    same bus.
    """

    durablePublish = False

    def makeBuses(self) -> Any:
        bus = LocalBus(reactor, retryDelays=RETRY_DELAYS)
        bus.startService()
        self.addCleanup(bus.stopService)
        service, caller, unserved = testServiceIds(3)
        return succeed(BusPair(bus, bus, service, caller, unserved, reactor))


class AMQPBusContractTests(BusContract, BrokerTestCase):
    """
    The contract, on two AMQP buses (two processes) on the local RabbitMQ;
    the queues each test made are deleted after it.
    """

    # The broker keeps groups' queues: the harness's names, to delete them.
    newGroup = BrokerTestCase.newGroup

    @inlineCallbacks
    def makeBuses(self) -> Any:
        callerService = ServiceId.fromInt(0xF00000 | random.getrandbits(20))
        server = yield self.makeBus()
        caller = yield self.makeBus(caller=callerService)
        return BusPair(
            caller, server, self.newServiceId(), callerService, self.newServiceId(), reactor
        )


class DirectBusContractTests(BusContract, BrokerTestCase):
    """
    The contract, on two direct buses (two processes) that trust each
    other: calls over secure channels to the 127.x.y.z address of the
    service's id, payloads sealed with a bus key, events on RabbitMQ.
    """

    newGroup = BrokerTestCase.newGroup

    #: The channel authenticates the caller: its identity is the caller.
    callerFromOrigin = False

    @inlineCallbacks
    def makeBuses(self) -> Any:
        service, callerService, unserved = testServiceIds(3)
        serverIdentity = Identity.generate(service)
        callerIdentity = Identity.generate(callerService)
        trust = TrustStore(
            [Peer(service, serverIdentity.public), Peer(callerService, callerIdentity.public)]
        )
        probe = AddressBook("127.0.0.0/8")
        addresses = AddressBook("127.0.0.0/8", freePort(probe.derivedHost(service)))
        buses = []
        for identity in [callerIdentity, serverIdentity]:
            # Each process has its codec and its own connection for events.
            events = AMQPBus(
                reactor,
                BrokerURL.parse(self.brokerURL),
                codec=sealedCodec(),
                caller=identity.serviceId,
                retryDelays=RETRY_DELAYS,
            )
            bus = DirectBus(
                reactor,
                ChannelSettings(identity, trust, reactor),
                addresses,
                codec=sealedCodec(),
                events=events,
            )
            bus.startService()  # and the event bus with it
            self.addCleanup(bus.stopService)
            yield events.whenConnected()
            buses.append(bus)
        caller, server = buses
        return BusPair(caller, server, service, callerService, unserved, reactor)
