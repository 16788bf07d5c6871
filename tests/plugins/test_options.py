"""
Tests for the twistd plugins: the dropin and each command's options.
"""

import os
import stat

from twisted.application.service import IService, IServiceMaker, MultiService
from twisted.internet.testing import MemoryReactorClock
from twisted.plugin import IPlugin, getPlugins
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from plugins import account, allinone, gateway, notify, post

from ..support import keyArguments, keyFiles

COMMANDS = {
    "txplatform": allinone,
    "gateway": gateway,
    "account": account,
    "post": post,
    "notify": notify,
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
            self.assertIs(maker.options, COMMANDS[name].Options)


def commandOf(module) -> str:
    return next(name for name, m in COMMANDS.items() if m is module)


class OptionsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.keys = keyFiles(self.mktemp())

    def parse(self, module, *args: str, keys: bool = True) -> usage.Options:
        options = module.Options()
        extra = keyArguments(self.keys, commandOf(module)) if keys else []
        options.parseOptions([*extra, *args])
        return options

    def test_keysRequired(self) -> None:
        """
        A production process refuses to start without its key files, or
        with unusable ones, saying why.
        """
        for module in [account, post, notify, gateway]:
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
        self.assertEqual(self.parse(allinone)["listen"], "tcp:8080")
        self.assertEqual(self.parse(allinone)["data-dir"], "var")
        self.assertEqual(self.parse(account)["db"], "sqlite:var/account.sqlite")
        self.assertEqual(self.parse(post)["db"], "sqlite:var/post.sqlite")
        self.assertEqual(self.parse(notify)["bus"], "local:")
        self.assertEqual(self.parse(gateway)["call-timeout"], 5.0)
        self.assertEqual(self.parse(gateway)["max-body-size"], 65536)

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
        for module in [account, post, notify, gateway]:
            self.parse(module, "--bus", "local:")
            self.assertRaises(usage.UsageError, self.parse, module, "--bus", "carrier-pigeon:")

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
        The all-in-one process holds the bus, the three services and the
        gate that opens the HTTP port once they are ready.
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
        self.assertEqual(
            names,
            [
                *["KeyringService"] * 4,
                "LocalBus",
                "AccountService",
                "PostService",
                "NotifyService",
                "ReadinessGate",
            ],
        )
        for child in list(service)[5:8]:
            self.addCleanup(child.database.close)

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
                    *keyArguments(self.keys, module.__name__.split(".")[-1]),
                    "--db",
                    f"sqlite:{self.mktemp()}/db.sqlite",
                ]
            )
            service = module.makeService(options, reactor=MemoryReactorClock())
            self.assertIsInstance(service, MultiService)
            children = list(service)
            self.assertEqual(type(children[3]).__name__, expected)
            self.addCleanup(children[3].database.close)

    def test_gateway(self) -> None:
        """
        The gateway's command runs the bus and the listener.
        """
        options = gateway.Options()
        options.parseOptions(["--listen", "tcp:0", *keyArguments(self.keys, "gateway")])
        service = gateway.makeService(options, reactor=MemoryReactorClock())
        self.assertEqual(
            [type(s).__name__ for s in service], ["KeyringService", "LocalBus", "ReadinessGate"]
        )
