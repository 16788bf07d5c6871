"""
Tests for C{twistd sidecar}'s options and service.
"""

from __future__ import annotations

import os

from twisted.application.service import IServiceMaker
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, capturedLogs
from twisted.plugin import getPlugins
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from txplatform.catalogue import installedServices
from txplatform_plugins import sidecar

from .test_options import identityFiles


class SidecarOptionsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.paths = identityFiles(self.mktemp())

    def parse(self, *args: str) -> usage.Options:
        options = sidecar.Options()
        options.parseOptions(list(args))
        return options

    def required(self) -> list[str]:
        return [
            "--for",
            "post",
            "--identity",
            self.paths["post"],
            "--trust",
            self.paths["trust"],
            "--forward",
            "unix:/run/post.sock",
        ]

    def test_dropin(self) -> None:
        """
        twistd finds the sidecar command.
        """
        makers = {m.tapname: m for m in getPlugins(IServiceMaker)}
        self.assertIs(makers["sidecar"].options, sidecar.Options)

    def test_derivedAddress(self) -> None:
        """
        The sidecar listens at the address its service's id gives, unless
        told otherwise.
        """
        options = self.parse(*self.required(), "--bus", "direct:10.0.0.0/8?port=7400")
        self.assertEqual(options["listen"], "tcp:7400:interface=10.1.0.2")
        options = self.parse(*self.required(), "--listen", "tcp:9999")
        self.assertEqual(options["listen"], "tcp:9999")

    def test_refusals(self) -> None:
        """
        Missing or mismatched options are refused, saying why.
        """
        base = self.required()
        for args, message in [
            (base[2:], "--for"),
            ([*base[:2], *base[4:]], "--identity is required"),
            (base[:6], "--forward is required"),
            ([*base[:3], self.paths["account"], *base[4:]], "speaks for service 010001"),
            ([*base, "--bus", "direct:10.0.0.0/16"], "--bus"),
            ([*base, "--health-max-age", "0"], "positive"),
            ([*base, "--listen", "bogus:endpoint"], "--listen: 'bogus:endpoint' is not an"),
            ([*base, "--http", "tcp:metrics"], "--http: 'tcp:metrics' is not an endpoint"),
            ([*base[:6], "--forward", "/run/post.sock"], "--forward: '/run/post.sock' is not"),
        ]:
            error = self.assertRaises(usage.UsageError, self.parse, *args)
            self.assertIn(message, str(error))

    def test_unknownService(self) -> None:
        """
        A --for that no installed service has ends twistd in one line (a
        UsageError would come after twistd's usage text), naming those
        installed.
        """
        args = self.required()
        args[1] = "nosuch"
        error = self.assertRaises(SystemExit, self.parse, *args)
        installed = ", ".join(installedServices().names())
        self.assertEqual(
            error.code,
            f"twistd sidecar: --for: no service is named 'nosuch' (installed: {installed})",
        )

    def test_makeService(self) -> None:
        """
        The command runs the sidecar of the service it is for.
        """
        options = self.parse(*self.required())
        service = sidecar.makeService(options, reactor=MemoryReactorClock())
        self.assertEqual(type(service).__name__, "Sidecar")
        self.assertEqual(service.metrics.service, "post")

    def test_cannotListen(self) -> None:
        """
        A port the sidecar cannot have stops the process, which will exit
        1 (not 0, as a sidecar that stopped by itself would).
        """
        reactor = MemoryReactorClock()
        options = self.parse(*self.required(), "--listen", "tcp:0", "--http", "tcp:0")
        service = sidecar.makeService(options, reactor=reactor)
        service._listen = "bogus:endpoint"  # past the options' check: fails on starting
        with capturedLogs() as events:
            service.startService()
        self.assertEqual(reactor.triggers["after"]["shutdown"], [(os._exit, (1,), {})])
        [critical] = [e for e in events if e["log_level"] == LogLevel.critical]
        self.assertIn("Sidecar channel listening on bogus:endpoint", critical["what"])
        service.ports.clear()  # the memory reactor's, which cannot stop listening
        service.stopService()
