"""
Several hosts on one machine, for tests: Linux network namespaces, each
joined by a veth pair to a bridge in a namespace of its own (a switch), with
the addresses the test gives them.  Nothing is added to the machine's own
namespace: the namespaces are made and removed by the test (C{ip netns}),
and processes in them reach the machine only through UNIX sockets (files:
L{forwarder}, Twisted's port forwarder given endpoints).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from typing import Any

from twisted.internet import reactor
from twisted.internet.endpoints import clientFromString, serverFromString
from twisted.protocols.portforward import ProxyFactory, ProxyServer
from twisted.trial.unittest import TestCase

from ..support import missing


def requireNamespaces() -> None:
    """
    Skip (outside CI) where network namespaces cannot be made: they need
    root and iproute2's C{ip}.
    """
    reason = None
    if shutil.which("ip") is None:
        reason = "iproute2's ip is not installed: the hosts are network namespaces"
    elif os.geteuid() != 0:
        reason = "making network namespaces needs root"
    if reason is not None:
        missing(reason)


def ip(*arguments: str) -> None:
    result = subprocess.run(["ip", *arguments], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(arguments)}: {result.stderr.strip()}")


class Network:
    """
    A switch and the hosts plugged into it, removed when the test ends.
    """

    def __init__(self, case: TestCase) -> None:
        requireNamespaces()
        # Names unique to this test, short enough for an interface (15).
        self._tag = uuid.uuid4().hex[:6]
        self.hosts: dict[str, str] = {}
        self._switch = f"txp{self._tag}sw"
        ip("netns", "add", self._switch)
        case.addCleanup(self.remove)
        ip("-n", self._switch, "link", "add", "br0", "type", "bridge")
        ip("-n", self._switch, "link", "set", "br0", "up")

    def add(self, name: str, *addresses: str) -> list[str]:
        """
        A host named C{name} with C{addresses} (CIDR, such as C{10.1.0.2/8})
        on its C{eth0}, plugged into the switch.

        @return: The command prefix running a program on that host.
        """
        namespace = f"txp{self._tag}{len(self.hosts)}"
        ip("netns", "add", namespace)
        self.hosts[name] = namespace
        ip("-n", namespace, "link", "set", "lo", "up")
        outside, inside = f"v{self._tag}{len(self.hosts)}s", f"v{self._tag}{len(self.hosts)}h"
        # Both ends made in the switch's namespace: none ever in the machine's.
        ip("-n", self._switch, "link", "add", outside, "type", "veth", "peer", "name", inside)
        ip("-n", self._switch, "link", "set", inside, "netns", namespace)
        ip("-n", namespace, "link", "set", inside, "name", "eth0")
        for address in addresses:
            ip("-n", namespace, "addr", "add", address, "dev", "eth0")
        ip("-n", namespace, "link", "set", "eth0", "up")
        ip("-n", self._switch, "link", "set", outside, "master", "br0")
        ip("-n", self._switch, "link", "set", outside, "up")
        return self.on(name)

    def on(self, name: str) -> list[str]:
        """
        The command prefix running a program on host C{name}.
        """
        return ["ip", "netns", "exec", self.hosts[name]]

    def unplug(self, name: str) -> None:
        """
        Take host C{name} off the network, as a pulled cable does: its
        packets stop, nobody is told.
        """
        ip("-n", self.hosts[name], "link", "set", "eth0", "down")

    def plug(self, name: str) -> None:
        """
        Put host C{name} back on the network.
        """
        ip("-n", self.hosts[name], "link", "set", "eth0", "up")

    def remove(self) -> None:
        for namespace in [*self.hosts.values(), self._switch]:
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True, timeout=30)


class _EndpointProxy(ProxyServer):
    """
    Twisted's port forwarder, connecting to an endpoint (a UNIX socket, say)
    rather than only to a TCP port.
    """

    def connectionMade(self) -> None:
        self.transport.pauseProducing()
        client = self.clientProtocolFactory()
        client.setServer(self)
        d = clientFromString(reactor, self.factory.target).connect(client)
        d.addErrback(lambda _: self.transport.loseConnection())


def forwarder(listen: str, target: str) -> Any:
    """
    Listen on C{listen} (a server endpoint string) and forward each
    connection to C{target} (a client endpoint string): a Deferred of the
    listening port.
    """
    factory = ProxyFactory("", 0)  # where to: the target, not a TCP port
    factory.protocol = _EndpointProxy
    factory.target = target
    return serverFromString(reactor, listen).listen(factory)


if __name__ == "__main__":
    # python -m tests.direct.hosts LISTEN TARGET [LISTEN TARGET...]: the
    # forwarders of a host, such as those reaching the machine's RabbitMQ
    # and PostgreSQL through UNIX sockets.
    import sys

    from twisted.internet.defer import gatherResults

    pairs = list(zip(sys.argv[1::2], sys.argv[2::2], strict=True))
    started = gatherResults([forwarder(listen, target) for listen, target in pairs])
    started.addCallback(lambda _: print("forwarding", flush=True))
    started.addErrback(lambda f: (print(f.getErrorMessage(), flush=True), reactor.stop()))
    reactor.run()
