"""
Tests for the twistd plugins: the dropin and each command's options.
"""

import json
import os
import stat
from typing import Any

from twisted.application.service import IService, IServiceMaker, MultiService
from twisted.internet.testing import MemoryReactorClock
from twisted.plugin import IPlugin, getPlugins
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from txplatform.catalogue import installedServices
from txplatform.serviceid import ServiceId
from txplatform_plugins import allinone, gateway
from txplatform_plugins import service as serviceCommand
from txplatform_plugins.commands import ServiceCommand

from ..support import keyArguments, keyFiles


class _Command:
    """
    A service's twistd command, shaped like the maker modules of the other
    commands (C{Options}, C{makeService}), so the tests treat all alike.
    """

    def __init__(self, name: str) -> None:
        self.command = ServiceCommand(name)
        self.__name__ = f"txplatform_plugins.{name}"

    @property
    def Options(self):
        return self.command.options

    def makeService(self, options, reactor=None):
        return serviceCommand.makeService(options, reactor)


account, post, notify, parser = (_Command(n) for n in ("account", "post", "notify", "parser"))

COMMANDS = {
    "txplatform": allinone,
    "gateway": gateway,
    "account": account,
    "post": post,
    "notify": notify,
    "parser": parser,
}


class DropinTests(SynchronousTestCase):
    def test_everyCommand(self) -> None:
        """
        twistd finds a service maker for every command, each naming its module.
        """
        makers = {m.tapname: m for m in getPlugins(IServiceMaker) if m.tapname in COMMANDS}
        self.assertEqual(set(makers), set(COMMANDS))
        for name, maker in makers.items():
            verifyObject(IServiceMaker, maker)
            self.assertTrue(IPlugin.providedBy(maker))
            if isinstance(COMMANDS[name], _Command):
                self.assertTrue(issubclass(maker.options, serviceCommand.ServiceOptions))
                self.assertEqual(maker.options.declaration.name, name)
            else:
                self.assertEqual(maker.options.__module__, COMMANDS[name].__name__)


#: Options of an in-process bus: for the tests of a command's options and
#: services, which need no other process.
LOCAL_BUS = ["--bus", "local:"]


def processArguments(keys: dict[str, str], command: str) -> list[str]:
    """
    What C{twistd COMMAND} (the gateway or a service) needs: a bus (here
    the in-process one) and its key files.
    """
    return [*LOCAL_BUS, *keyArguments(keys, command)]


def commandOf(module) -> str:
    return next(name for name, m in COMMANDS.items() if m is module)


def identityFiles(directory: str) -> dict[str, str]:
    """
    Identity files for every command, and a trust file trusting them all.
    """
    from txplatform.channel.identity import (
        Identity,
        Peer,
        TrustStore,
        writeIdentity,
        writeTrust,
    )
    from txplatform.serviceid import ServiceId

    os.makedirs(directory)
    paths = {}
    trust = TrustStore()
    for name, hexId in [
        ("account", "010001"),
        ("post", "010002"),
        ("notify", "010003"),
        ("parser", "010004"),
        ("gateway", "010100"),
    ]:
        identity = Identity.generate(ServiceId.fromHex(hexId))
        paths[name] = os.path.join(directory, f"{name}.identity")
        writeIdentity(paths[name], identity)
        trust.add(Peer(identity.serviceId, identity.public))
    paths["trust"] = os.path.join(directory, "trust.json")
    writeTrust(paths["trust"], trust)
    return paths


class OptionsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.keys = keyFiles(self.mktemp())

    def parse(self, module, *args: str, keys: bool = True, bus: bool = True) -> usage.Options:
        """
        Read C{args} as C{module}'s command does, with the key files and
        (but for the all-in-one) an in-process bus unless told otherwise.
        """
        options = module.Options()
        command = commandOf(module)
        extra = keyArguments(self.keys, command) if keys else []
        if bus and command != "txplatform" and "--bus" not in args:
            extra = [*LOCAL_BUS, *extra]
        options.parseOptions([*extra, *args])
        return options

    def test_busRequired(self) -> None:
        """
        The gateway and each service run in processes of their own, which
        work only with the others: without --bus they refuse to start,
        saying what to give.
        """
        for module in [gateway, account, post, notify, parser]:
            error = self.assertRaises(usage.UsageError, self.parse, module, bus=False)
            self.assertEqual(
                str(error),
                "--bus is required: this process works with the others through it"
                " (amqp://user:password@host:5672/ or direct:RANGE)",
            )
            self.assertIn("Required", str(module.Options()))
        self.assertNotIn("--bus=", str(allinone.Options()))

    def test_keysRequired(self) -> None:
        """
        A production process refuses to start without its key files, or
        with unusable ones, saying why.
        """
        for module in [account, post, notify, gateway, parser]:
            error = self.assertRaises(usage.UsageError, self.parse, module, keys=False)
            self.assertIn("--bus-keys is required", str(error))
        error = self.assertRaises(
            usage.UsageError, self.parse, post, "--bus-keys", self.keys["bus"], keys=False
        )
        self.assertIn("--keys is required", str(error))
        error = self.assertRaises(
            usage.UsageError,
            self.parse,
            post,
            "--bus-keys",
            self.keys["bus"],
            "--keys",
            "/nonexistent/keys.json",
            keys=False,
        )
        self.assertIn("cannot read the key file", str(error))
        error = self.assertRaises(
            usage.UsageError,
            self.parse,
            post,
            "--bus-keys",
            self.keys["bus"],
            "--keys",
            self.keys["account"],
            keys=False,
        )
        self.assertIn("holds the keys of 'account', not of 'post'", str(error))

    def test_help(self) -> None:
        """
        Every command describes its options.
        """
        for module in COMMANDS.values():
            text = str(module.Options())
            self.assertIn("--", text)
            self.assertTrue(module.Options.longdesc)

    def test_defaults(self) -> None:
        """
        With no options, each command runs on its embedded defaults.
        """
        self.assertEqual(self.parse(allinone)["listen"], "tcp:8080:interface=127.0.0.1")
        self.assertEqual(self.parse(allinone)["data-dir"], "var")
        self.assertEqual(self.parse(account)["db"], "sqlite:var/account.sqlite")
        self.assertEqual(self.parse(post)["db"], "sqlite:var/post.sqlite")
        self.assertEqual(self.parse(gateway)["call-timeout"], 5.0)
        self.assertEqual(self.parse(gateway)["max-body-size"], 65536)

    def test_defaultInterfaces(self) -> None:
        """
        The embedded default serves this machine only: its listener binds
        127.0.0.1, port 8080; C{--listen tcp:8080} opens it to every
        interface.  A gateway replica (in a container, behind a load
        balancer) binds every interface by default.
        """
        for module, arguments, interface in [
            (allinone, [], "127.0.0.1"),
            (allinone, ["--listen", "tcp:8080"], ""),
            (gateway, [], ""),
        ]:
            reactor = MemoryReactorClock()
            options = self.parse(module, *arguments, "--busy-limit", "0")
            [listening] = list(gateway.gatewayListener(options, reactor, None))
            listening.startService()
            [(port, _, _, bound)] = reactor.tcpServers
            self.assertEqual((port, bound), (8080, interface), (module, arguments))

    def test_databases(self) -> None:
        """
        --db takes SQLite paths and PostgreSQL URLs, and nothing else.
        """
        self.parse(account, "--db", "postgresql://u@h/d")
        self.parse(post, "--db", "sqlite:/tmp/p.sqlite")
        for module in [account, post, notify]:
            error = self.assertRaises(usage.UsageError, self.parse, module, "--db", "mysql://x")
            self.assertIn("sqlite:PATH", str(error))

    def test_bus(self) -> None:
        """
        --bus takes the buses this release has.
        """
        for module in [account, post, notify, gateway, parser]:
            self.parse(module, "--bus", "local:")
            self.assertRaises(usage.UsageError, self.parse, module, "--bus", "carrier-pigeon:")

    def test_clusterBus(self) -> None:
        """
        --bus takes the nodes of a cluster, their URLs separated by commas;
        URLs that differ in more than host and port are refused, saying so.
        """
        nodes = "amqp://u:p@10.0.0.1/v?queue_type=quorum,amqp://u:p@10.0.0.2/v?queue_type=quorum"
        for module in [account, post, notify, gateway, parser]:
            self.parse(module, "--bus", nodes)
            error = self.assertRaises(
                usage.UsageError,
                self.parse,
                module,
                "--bus",
                "amqp://u:p@10.0.0.1/v,amqp://u:p@10.0.0.2/w",
            )
            self.assertIn("differ in host and port only", str(error))

    def test_directBus(self) -> None:
        """
        --bus direct:... needs the process's identity (for its own service)
        and a trust file; an event bus is optional but not direct; the
        channel options go with the direct bus only.
        """
        paths = identityFiles(self.mktemp())
        for module in [account, post, notify, gateway]:
            name = commandOf(module)
            direct = ["--bus", "direct:127.0.0.0/8?port=7300", "--trust", paths["trust"]]
            options = self.parse(
                module, *direct, "--identity", paths[name], "--event-bus", "local:"
            )
            self.assertEqual(options["event-bus"], "local:")
            self.assertRaises(usage.UsageError, self.parse, module, *direct)
            other = "post" if name != "post" else "account"
            error = self.assertRaises(
                usage.UsageError, self.parse, module, *direct, "--identity", paths[other]
            )
            self.assertIn("speaks for service", str(error))
            self.assertRaises(
                usage.UsageError,
                self.parse,
                module,
                *direct,
                "--identity",
                paths[name],
                "--event-bus",
                "direct:",
            )
            error = self.assertRaises(
                usage.UsageError, self.parse, module, "--identity", paths[name]
            )
            self.assertIn("goes with --bus direct:", str(error))
            self.assertRaises(
                usage.UsageError,
                self.parse,
                module,
                "--bus",
                "direct:10.0.0.0/16",
                "--identity",
                paths[name],
                "--trust",
                paths["trust"],
            )

    def test_https(self) -> None:
        """
        --https needs a certificate and its key, and then serves HTTPS only
        unless --listen asks for HTTP too; without it, HTTP on port 8080
        (the all-in-one: of this machine only).
        """
        from ..gateway.test_edge import makeCertificate

        cert, key = makeCertificate(self.mktemp())
        _, otherKey = makeCertificate(self.mktemp())
        for module, default in [(gateway, "tcp:8080"), (allinone, "tcp:8080:interface=127.0.0.1")]:
            options = self.parse(module)
            self.assertEqual((options["listen"], options["https"]), (default, None))
            tls = ["--https", "tcp:0", "--tls-cert", cert, "--tls-key", key]
            options = self.parse(module, *tls)
            self.assertIsNone(options["listen"])
            options = self.parse(module, *tls, "--listen", "tcp:0")
            self.assertEqual(options["listen"], "tcp:0")
            for args, message in [
                (["--https", "tcp:0", "--tls-cert", cert], "--https needs --tls-key"),
                (["--tls-cert", cert], "--tls-cert goes with --https"),
                (["--https", "tcp:0", "--tls-cert", cert, "--tls-key", otherKey], "is not the key"),
                (["--cors-origins", "app.example"], "is not an origin"),
                (["--trusted-proxies", "10.0.0.0/8,nonsense"], "is not an address or range"),
            ]:
                error = self.assertRaises(usage.UsageError, self.parse, module, *args)
                self.assertIn(message, str(error))
            options = self.parse(module, "--cors-origins", "https://a.example, https://b.example")
            self.assertEqual(options.corsOrigins, ["https://a.example", "https://b.example"])
            options = self.parse(module, "--trusted-proxies", "10.0.0.0/8, 127.0.0.1")
            self.assertEqual(options.trustedProxies, ["10.0.0.0/8", "127.0.0.1"])

    def test_endpoints(self) -> None:
        """
        An endpoint option Twisted cannot read is refused when the options
        are read, naming the option and giving Twisted's reason.
        """
        paths = identityFiles(self.mktemp())
        direct = [
            "--bus",
            "direct:127.0.0.0/8",
            "--identity",
            paths["post"],
            "--trust",
            paths["trust"],
        ]
        for module, args, message in [
            (gateway, ["--listen", "bogus:endpoint"], "--listen: 'bogus:endpoint' is not an"),
            (gateway, ["--listen", "bogus:endpoint"], "Unknown endpoint type: 'bogus'"),
            (allinone, ["--listen", "bogus:endpoint"], "Unknown endpoint type: 'bogus'"),
            (allinone, ["--listen", "tcp:http"], "--listen: 'tcp:http' is not an endpoint"),
            (post, [*direct, "--direct-listen", "nowhere"], "--direct-listen: 'nowhere' is not"),
        ]:
            error = self.assertRaises(usage.UsageError, self.parse, module, *args)
            self.assertIn(message, str(error))
            self.assertNotIn("\n", str(error))
        from ..gateway.test_edge import makeCertificate

        cert, key = makeCertificate(self.mktemp())
        error = self.assertRaises(
            usage.UsageError,
            self.parse,
            gateway,
            *["--https", "tcp:https", "--tls-cert", cert, "--tls-key", key],
        )
        self.assertIn("--https: 'tcp:https' is not an endpoint", str(error))
        options = self.parse(post, *direct, "--direct-listen", "tcp:0")
        self.assertEqual(options["direct-listen"], "tcp:0")

    def test_secretsFromFiles(self) -> None:
        """
        --bus and --db given as @PATH take their value from that file, so
        passwords need not be on the command line.
        """
        secret = self.mktemp()
        with open(secret, "w") as f:
            f.write("amqp://svc:s3cret@broker.internal/prod\n")
        database = self.mktemp()
        with open(database, "w") as f:
            f.write("postgresql://svc:pw@db/app\n")
        options = self.parse(account, "--bus", "@" + secret, "--db", "@" + database)
        self.assertEqual(options["bus"], "amqp://svc:s3cret@broker.internal/prod")
        self.assertEqual(options["db"], "postgresql://svc:pw@db/app")
        error = self.assertRaises(
            usage.UsageError, self.parse, post, "--bus", "@/nonexistent/secret"
        )
        self.assertIn("cannot read", str(error))

    def test_positive(self) -> None:
        """
        Durations and sizes must be positive numbers.
        """
        self.assertRaises(usage.UsageError, self.parse, gateway, "--call-timeout", "0")
        self.assertRaises(usage.UsageError, self.parse, gateway, "--max-body-size", "-1")
        self.assertRaises(usage.UsageError, self.parse, account, "--session-lifetime", "0")
        self.assertRaises(usage.UsageError, self.parse, allinone, "--argon2-memory-cost", "0")
        self.assertRaises(usage.UsageError, self.parse, gateway, "--call-timeout", "soon")
        self.assertRaises(usage.UsageError, self.parse, post, "--post-cache-size", "-1")
        self.assertEqual(self.parse(allinone, "--post-cache-size", "0")["post-cache-size"], 0)

    def test_sessionIdle(self) -> None:
        """
        Sessions lapse after 8 idle hours unless told otherwise; 0 turns
        the idle timeout off; it cannot be negative.
        """
        from txplatform_services.account import _sessionIdle as sessionIdle

        self.assertEqual(sessionIdle(self.parse(account)), 8 * 3600.0)
        self.assertEqual(sessionIdle(self.parse(allinone, "--session-idle", "900")), 900.0)
        self.assertIsNone(sessionIdle(self.parse(account, "--session-idle", "0")))
        for module in (account, allinone):
            self.assertRaises(usage.UsageError, self.parse, module, "--session-idle", "-1")

    def test_readCache(self) -> None:
        """
        A gateway keeps what it read for a second unless told otherwise; 0
        keeps nothing; it cannot be negative.
        """
        self.assertEqual(self.parse(gateway)["read-cache"], 1.0)
        self.assertEqual(self.parse(allinone, "--read-cache", "0")["read-cache"], 0.0)
        for module in (gateway, allinone):
            self.assertRaises(usage.UsageError, self.parse, module, "--read-cache", "-1")

    def test_busyLimit(self) -> None:
        """
        The busy limit is a percentage below 100, 0 turning it off; the
        gateway then runs no monitor.
        """
        self.assertEqual(self.parse(gateway)["busy-limit"], 50.0)
        self.assertEqual(self.parse(allinone, "--busy-limit", "70")["busy-limit"], 70.0)
        for wrong in ("100", "-1", "busy"):
            self.assertRaises(usage.UsageError, self.parse, gateway, "--busy-limit", wrong)
        options = self.parse(gateway, "--busy-limit", "0")
        listeners = gateway.gatewayListener(options, MemoryReactorClock(), None)
        self.assertEqual([type(s).__name__ for s in listeners], ["ListeningService"])

    def test_accessLog(self) -> None:
        """
        The access log is batched unless told otherwise; the site gets it.
        """
        self.assertEqual(self.parse(gateway)["access-log"], "batched")
        options = self.parse(allinone, "--access-log", "off")
        self.assertEqual(options["access-log"], "off")
        error = self.assertRaises(usage.UsageError, self.parse, gateway, "--access-log", "loud")
        self.assertIn("batched, events, off", str(error))
        listeners = gateway.gatewayListener(
            self.parse(gateway, "--access-log", "events", "--busy-limit", "0"),
            MemoryReactorClock(),
            None,
        )
        [listening] = list(listeners)
        self.assertEqual(listening._factory.accessLog.mode, "events")

    def test_webClient(self) -> None:
        """
        The gateway and the all-in-one serve the web client at / unless
        given --no-web.
        """
        from txplatform_gateway.webclient import WebClient

        for module in (gateway, allinone):
            for args, served in [((), True), (("--no-web",), False)]:
                options = self.parse(module, "--busy-limit", "0", *args)
                self.assertEqual(options["no-web"], not served)
                [listening] = list(gateway.gatewayListener(options, MemoryReactorClock(), None))
                resource = listening._factory.resource._wrapped
                self.assertEqual(isinstance(resource, WebClient), served, (module, args))

    def test_allInOneDatabases(self) -> None:
        """
        The all-in-one gives each service its own SQLite file, or its own
        schema of one PostgreSQL database.
        """
        options = self.parse(allinone, "--data-dir", "/srv/tx")
        self.assertEqual(options.databaseURL("post"), "sqlite:/srv/tx/post.sqlite")
        options = self.parse(allinone, "--db", "postgresql://u@h/d?sslmode=disable")
        self.assertEqual(
            options.databaseURL("notify"), "postgresql://u@h/d?sslmode=disable&schema=notify"
        )
        options = self.parse(allinone, "--db", "postgresql://u@h/d")
        self.assertEqual(options.databaseURL("account"), "postgresql://u@h/d?schema=account")
        self.assertRaises(usage.UsageError, self.parse, allinone, "--db", "sqlite:x")


class MakeServiceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.keys = keyFiles(self.mktemp())

    def test_allInOne(self) -> None:
        """
        The all-in-one process holds the bus, every installed service and
        the gate that opens the HTTP port once they are ready.
        """
        options = allinone.Options()
        dataDir = self.mktemp()
        options.parseOptions(["--data-dir", dataDir])
        service = allinone.makeService(options, reactor=MemoryReactorClock())
        for purpose in ["bus", "account", "post", "notify"]:
            path = os.path.join(dataDir, "keys", f"{purpose}.json")
            self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        verifyObject(IService, service)
        names = [type(s).__name__ for s in service]
        installed = installedServices()
        storing = [d for d in installed if d.stores()]
        self.assertEqual(
            names,
            [
                *["KeyringService"] * (1 + len(storing)),
                "LocalBus",
                *[d.serviceClass().__name__ for d in installed],
                "ReadinessGate",
            ],
        )
        self.assertLessEqual(
            {"AccountService", "NotifyService", "ParserService", "PostService"}, set(names)
        )
        for child in service:
            if hasattr(child, "database"):
                self.addCleanup(child.database.close)

    def test_someServices(self) -> None:
        """
        C{--services} runs only the services it names, with key files for
        just those; a name not installed is refused, naming those that are.
        """
        options = allinone.Options()
        dataDir = self.mktemp()
        options.parseOptions(["--data-dir", dataDir, "--services", "post,account"])
        service = allinone.makeService(options, reactor=MemoryReactorClock())
        names = [type(s).__name__ for s in service]
        self.assertEqual(names[3:6], ["LocalBus", "PostService", "AccountService"])
        self.assertEqual(
            sorted(os.listdir(os.path.join(dataDir, "keys"))),
            ["account.json", "bus.json", "post.json"],
        )
        for child in service:
            if hasattr(child, "database"):
                self.addCleanup(child.database.close)
        # Not a UsageError: twistd would print its usage text before it.
        error = self.assertRaises(
            SystemExit, allinone.Options().parseOptions, ["--services", "post,nosuch"]
        )
        installed = ", ".join(installedServices().names())
        self.assertEqual(
            error.code,
            f"twistd txplatform: --services: no service is named 'nosuch' (installed: {installed})",
        )

    def test_single(self) -> None:
        """
        A service's own command runs the bus and that service.
        """
        for module, expected in [
            (account, "AccountService"),
            (post, "PostService"),
            (notify, "NotifyService"),
        ]:
            options = module.Options()
            options.parseOptions(
                [
                    *processArguments(self.keys, module.__name__.split(".")[-1]),
                    "--db",
                    f"sqlite:{self.mktemp()}/db.sqlite",
                ]
            )
            service = module.makeService(options, reactor=MemoryReactorClock())
            self.assertIsInstance(service, MultiService)
            children = list(service)
            self.assertEqual(type(children[3]).__name__, expected)
            self.assertFalse(children[3].logCalls)
            self.addCleanup(children[3].database.close)

    def test_logCalls(self) -> None:
        """
        --log-calls has a service process log every call it serves.
        """
        options = post.Options()
        options.parseOptions(
            [
                *processArguments(self.keys, "post"),
                "--db",
                f"sqlite:{self.mktemp()}/db.sqlite",
                "--log-calls",
            ]
        )
        service = list(post.makeService(options, reactor=MemoryReactorClock()))[3]
        self.addCleanup(service.database.close)
        self.assertTrue(service.logCalls)

    def directBus(self, bus: str, *more: str) -> Any:
        """
        The DirectBus of a Post process run with C{--bus bus} and C{more}
        options.
        """
        paths = identityFiles(self.mktemp())
        options = post.Options()
        options.parseOptions(
            [
                *keyArguments(self.keys, "post"),
                "--db",
                f"sqlite:{self.mktemp()}/db.sqlite",
                "--bus",
                bus,
                "--identity",
                paths["post"],
                "--trust",
                paths["trust"],
                "--event-bus",
                "local:",
                *more,
            ]
        )
        children = list(post.makeService(options, reactor=MemoryReactorClock()))
        self.addCleanup(children[3].database.close)
        return children[2]

    def test_direct(self) -> None:
        """
        With --bus direct:..., a service's command runs a DirectBus for its
        identity, with its event bus.
        """
        bus = self.directBus("direct:127.0.0.0/8?port=7300")
        self.assertEqual(type(bus).__name__, "DirectBus")
        self.assertEqual(bus.caller.hex, "010002")
        self.assertEqual(bus.listenAddress(), "tcp:7300:interface=127.1.0.2")
        self.assertEqual([type(s).__name__ for s in bus], ["LocalBus", "TrustFileService"])

    def test_directTable(self) -> None:
        """
        With an address table (C{?table=}), the DirectBus reads it again
        when it changes, every --key-reload seconds.
        """
        table = os.path.abspath(self.mktemp())
        with open(table, "w") as f:
            json.dump({"services": {"010001": ["127.1.0.1:7301"]}}, f)
        bus = self.directBus(f"direct:127.0.0.0/8?port=7300&table={table}", "--key-reload", "3")
        [watcher] = [s for s in bus if type(s).__name__ == "AddressTableService"]
        self.assertEqual((watcher.path, watcher.step), (table, 3.0))
        self.assertIs(watcher.book, bus.addresses)
        self.assertEqual(
            bus.addresses.addressesOf(ServiceId.fromHex("010001")), [("127.1.0.1", 7301)]
        )

    def test_parser(self) -> None:
        """
        A parser replica runs the bus and the service: no database, no keys
        of its own (it stores nothing).
        """
        options = parser.Options()
        options.parseOptions(processArguments(self.keys, "parser"))
        service = parser.makeService(options, reactor=MemoryReactorClock())
        self.assertEqual(
            [type(s).__name__ for s in service],
            ["KeyringService", "LocalBus", "ParserService", "ReadinessGate"],
        )

    def test_parserOver(self) -> None:
        """
        The gateway hands bodies over --parser-over bytes to the parser
        service; by default it parses them all itself.
        """
        options = gateway.Options()
        options.parseOptions(processArguments(self.keys, "gateway"))
        self.assertIsNone(options["parser-over"])
        options = gateway.Options()
        options.parseOptions(["--parser-over", "16384", *processArguments(self.keys, "gateway")])
        self.assertEqual(options["parser-over"], 16384)
        error = self.assertRaises(
            usage.UsageError,
            gateway.Options().parseOptions,
            ["--parser-over", "-1", *processArguments(self.keys, "gateway")],
        )
        self.assertIn("--parser-over must be 0 or more", str(error))

    def test_rateLimit(self) -> None:
        """
        --rate-limit REQUESTS/SECONDS gives the gateway (and the all-in-one)
        a limiter sharing counts on the bus; anything else is refused.
        """
        options = gateway.Options()
        options.parseOptions(
            ["--listen", "tcp:0", "--rate-limit", "600/60", *processArguments(self.keys, "gateway")]
        )
        self.assertEqual(options.rateLimit, (600, 60.0))
        listeners = gateway.gatewayListener(options, MemoryReactorClock(), object())
        [limiter] = [s for s in listeners if type(s).__name__ == "AddressRateLimit"]
        self.assertEqual((limiter.limit, limiter.window), (600, 60.0))
        for bad in ["600", "0/60", "many/60"]:
            error = self.assertRaises(
                usage.UsageError,
                gateway.Options().parseOptions,
                ["--rate-limit", bad, *processArguments(self.keys, "gateway")],
            )
            self.assertIn("--rate-limit", str(error))
        options = allinone.Options()
        options.parseOptions(["--rate-limit", "5/1"])
        self.assertEqual(options.rateLimit, (5, 1.0))
        self.assertIsNone(options.accountRateLimit)

    def test_accountRateLimit(self) -> None:
        """
        --account-rate-limit gives the gateway (and the all-in-one) a
        limiter per account, beside or without the one per address.
        """
        options = gateway.Options()
        options.parseOptions(
            [
                "--listen",
                "tcp:0",
                "--account-rate-limit",
                "1200/60",
                *processArguments(self.keys, "gateway"),
            ]
        )
        listeners = gateway.gatewayListener(options, MemoryReactorClock(), object())
        limiters = {type(s).__name__: s for s in listeners if "RateLimit" in type(s).__name__}
        self.assertEqual(list(limiters), ["AccountRateLimit"])
        self.assertEqual(
            (limiters["AccountRateLimit"].limit, limiters["AccountRateLimit"].window), (1200, 60.0)
        )
        error = self.assertRaises(
            usage.UsageError,
            gateway.Options().parseOptions,
            ["--account-rate-limit", "1200", *processArguments(self.keys, "gateway")],
        )
        self.assertIn("--account-rate-limit", str(error))
        options = allinone.Options()
        options.parseOptions(["--account-rate-limit", "5/1", "--rate-limit", "9/1"])
        self.assertEqual((options.accountRateLimit, options.rateLimit), ((5, 1.0), (9, 1.0)))

    def test_gateway(self) -> None:
        """
        The gateway's command runs the bus and the listener.
        """
        options = gateway.Options()
        options.parseOptions(["--listen", "tcp:0", *processArguments(self.keys, "gateway")])
        service = gateway.makeService(options, reactor=MemoryReactorClock())
        self.assertEqual(
            [type(s).__name__ for s in service], ["KeyringService", "LocalBus", "ReadinessGate"]
        )

    def test_gatewayHTTPS(self) -> None:
        """
        With --https (and --listen), the gateway listens twice, HTTPS over
        TLS.
        """
        from ..gateway.test_edge import makeCertificate

        cert, key = makeCertificate(self.mktemp())
        options = gateway.Options()
        options.parseOptions(
            [
                "--listen",
                "tcp:0",
                "--https",
                "tcp:0",
                "--tls-cert",
                cert,
                "--tls-key",
                key,
                *processArguments(self.keys, "gateway"),
            ]
        )
        listeners = gateway.gatewayListener(options, MemoryReactorClock(), None)
        self.assertEqual(
            [type(s).__name__ for s in listeners],
            ["BusyMonitor", "ListeningService", "ListeningService"],
        )
        http, https = list(listeners)[1:]
        self.assertEqual([http.description, https.description], ["tcp:0", "tcp:0"])
        self.assertEqual(type(https._factory).__name__, "TLSMemoryBIOFactory")


class TracingOptionTests(SynchronousTestCase):
    """
    C{--otlp URL} on every command: traces exported over OTLP/HTTP.
    """

    def setUp(self) -> None:
        self.keys = keyFiles(self.mktemp())

    parse = OptionsTests.parse

    def test_everyCommand(self) -> None:
        """
        The gateway, the all-in-one and each service take an http(s) URL;
        anything else is refused in one line.
        """
        url = "http://127.0.0.1:4318/v1/traces"
        for module in [gateway, allinone, post]:
            self.assertIsNone(self.parse(module)["otlp"])
            self.assertEqual(self.parse(module, "--otlp", url)["otlp"], url)
            error = self.assertRaises(
                usage.UsageError, self.parse, module, "--otlp", "127.0.0.1:4318"
            )
            self.assertIn("--otlp takes an http:// or https:// URL", str(error))
            self.assertNotIn("\n", str(error))

    def test_exporterMissing(self) -> None:
        """
        Without the otlp extra, C{--otlp} is refused with how to install it.
        """
        import sys

        name = "opentelemetry.exporter.otlp.proto.http.trace_exporter"
        # The import system reads the real sys.modules, whatever the name
        # sys.modules is bound to: change its entry, then put it back.
        original = sys.modules.pop(name, None)

        def restore() -> None:
            del sys.modules[name]
            if original is not None:
                sys.modules[name] = original

        self.addCleanup(restore)
        sys.modules[name] = None  # type: ignore[assignment]
        error = self.assertRaises(
            usage.UsageError, self.parse, gateway, "--otlp", "http://127.0.0.1:4318/v1/traces"
        )
        self.assertEqual(
            str(error), "--otlp needs the OTLP exporter: pip install 'txplatform[otlp]'"
        )

    def test_startTracing(self) -> None:
        """
        With C{--otlp}, the process records spans under its service name
        and sends the last of them when the reactor shuts down; without it,
        tracing stays off.
        """
        from opentelemetry import trace

        from txplatform import traces
        from txplatform_plugins._lifecycle import startTracing

        reactor = MemoryReactorClock()
        self.assertIsNone(startTracing(self.parse(gateway), reactor, "gateway"))
        self.assertFalse(traces.enabled())
        installed: list[object] = []
        self.patch(trace, "set_tracer_provider", installed.append)
        options = self.parse(gateway, "--otlp", "http://127.0.0.1:9/v1/traces")
        provider = startTracing(options, reactor, "gateway")
        self.addCleanup(traces.disable)
        self.addCleanup(provider.shutdown)
        self.assertEqual(installed, [provider])
        self.assertTrue(traces.enabled())
        self.assertEqual(provider.resource.attributes["service.name"], "gateway")
        self.assertIn(
            provider.shutdown,
            [t[0] for t in reactor.triggers.get("after", {}).get("shutdown", [])],
        )
