"""
Tests for L{txplatform_plugins.commands}: a twistd command for every
installed service, listed as soon as the service is installed.
"""

from __future__ import annotations

import importlib
import os
import pickle
import shutil
import subprocess
import sys
import textwrap

from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from txplatform.catalogue import Catalogue, CatalogueError
from txplatform_plugins.commands import ServiceCommand, commands, keepPluginCacheFresh

from ..support import inCI


class ServiceCommandTests(SynchronousTestCase):
    def test_commands(self) -> None:
        """
        There is a command for every installed service, and the fixed ones.
        """
        found = commands()
        for name in ["txplatform", "gateway", "sidecar", "account", "post", "notify", "parser"]:
            self.assertIn(name, found)
        self.assertIsInstance(found["post"], ServiceCommand)

    def test_unloadable(self) -> None:
        """
        A service that cannot be loaded still has a command, described by
        why it cannot be loaded; using it ends twistd with that reason, in
        one line (not after twistd's usage text).
        """

        def broken() -> Catalogue:
            raise CatalogueError("services 'a' (from a 1.0) and 'b' (from b 1.0) both claim")

        command = ServiceCommand("a", broken)
        self.assertIn("cannot be loaded: services 'a'", command.description)
        error = self.assertRaises(SystemExit, lambda: command.options)
        self.assertEqual(
            error.code, "twistd a: services 'a' (from a 1.0) and 'b' (from b 1.0) both claim"
        )

    def test_fresh(self) -> None:
        """
        The dropin is dated after any plugin cache, so Twisted always reads
        it again.
        """
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write("")
        keepPluginCacheFresh(path)
        self.assertGreater(os.stat(path).st_mtime, 4.0e9)
        keepPluginCacheFresh(os.path.join(path, "missing"))  # no error


class PluginCacheTests(SynchronousTestCase):
    """
    Twisted's plugin cache (C{dropin.cache} beside the dropin) is shared by
    every process that lists plugins there, and rewritten by each: whatever
    another process left in it, the dropin's commands are listed.
    """

    def setUp(self) -> None:
        import twisted.plugins.txplatform_dropin as dropin

        directory = os.path.abspath(self.mktemp())
        self.package = os.path.join(directory, "txplatform_cachetest")
        os.makedirs(self.package)
        open(os.path.join(self.package, "__init__.py"), "w").close()
        shutil.copy(dropin.__file__, self.package)
        self.cache = os.path.join(self.package, "dropin.cache")
        self.patch(sys, "path", [directory, *sys.path])
        self.addCleanup(
            lambda: [sys.modules.pop(n) for n in list(sys.modules) if "txplatform_cachetest" in n]
        )

    def listed(self) -> set[str]:
        package = importlib.import_module("txplatform_cachetest")
        return {maker.tapname for maker in getPlugins(IServiceMaker, package)}

    def test_corrupt(self) -> None:
        """
        An unreadable cache (a write cut short) is made again.
        """
        with open(self.cache, "wb") as f:
            f.write(b"\x80\x04garbage")
        self.assertLessEqual({"txplatform", "gateway", "account", "post"}, self.listed())
        with open(self.cache, "rb") as f:
            self.assertIn("txplatform_dropin", pickle.load(f))

    def test_otherEnvironment(self) -> None:
        """
        A cache written by a process that saw other services (another
        virtualenv, a PYTHONPATH with one more service), or none, does not
        stand for this one's.
        """
        self.listed()
        with open(self.cache, "rb") as f:
            cached = pickle.load(f)
        cached["txplatform_dropin"].plugins = []
        with open(self.cache, "wb") as f:
            pickle.dump(cached, f)
        for module in [n for n in sys.modules if "txplatform_cachetest" in n]:
            del sys.modules[module]
        self.assertLessEqual({"txplatform", "gateway", "account", "post"}, self.listed())


DECLARE = """
from txplatform.catalogue import ServiceDeclaration
from txplatform.service import BusService
from txplatform.serviceid import ServiceId


class Service(BusService):
    name = "{name}"
    serviceId = ServiceId.fromHex("{hex}")


declaration = ServiceDeclaration(
    name="{name}",
    serviceId=ServiceId.fromHex("{hex}"),
    service="{name}_declared:Service",
    summary="A service installed after the plugin cache was made.",
)
"""


class InstalledLaterTests(TestCase):
    """
    A service package installed after twistd last ran.
    """

    timeout = 120

    def setUp(self) -> None:
        self.twistd = shutil.which("twistd", path=os.path.dirname(sys.executable))
        if self.twistd is None:
            if inCI():
                raise AssertionError("twistd is not installed here")
            raise SkipTest("twistd is not installed here (pip install . first)")
        self.elsewhere = os.path.abspath(self.mktemp())
        os.makedirs(self.elsewhere)

    def twistdRun(self, *args: str, path: str | None = None) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        if path is not None:
            env["PYTHONPATH"] = path
        return subprocess.run(
            [self.twistd, *args],
            cwd=self.elsewhere,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def install(self, name: str, hexId: str) -> str:
        """
        A directory holding a distribution that declares service C{name}.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(directory, f"{name}_pkg-1.0.dist-info"))
        with open(os.path.join(directory, f"{name}_declared.py"), "w") as f:
            f.write(DECLARE.format(name=name, hex=hexId))
        info = os.path.join(directory, f"{name}_pkg-1.0.dist-info")
        with open(os.path.join(info, "METADATA"), "w") as f:
            f.write(f"Metadata-Version: 2.1\nName: {name}-pkg\nVersion: 1.0\n")
        with open(os.path.join(info, "entry_points.txt"), "w") as f:
            f.write(
                textwrap.dedent(f"""\
                [txplatform.services]
                {name} = {name}_declared:declaration
            """)
            )
        return directory

    def test_listedAtOnce(self) -> None:
        """
        The first twistd run after a service is installed lists its
        command, although Twisted's plugin cache was made before.
        """
        self.assertEqual(self.twistdRun("--help").returncode, 0)
        listing = self.twistdRun("--help", path=self.install("stars", "020002"))
        self.assertEqual(listing.returncode, 0, listing.stderr)
        self.assertRegex(listing.stdout, r"\n\s+stars\s+A service installed after")
        helped = self.twistdRun("stars", "--help", path=self.install("stars", "020002"))
        self.assertIn("Run one replica of the stars service", helped.stdout)

    def test_clash(self) -> None:
        """
        A service claiming a built-in service's id stops twistd txplatform
        (and twistd SERVICE) before anything starts, with an error naming
        both packages, in one line.
        """
        result = self.twistdRun(
            "-n",
            "txplatform",
            "--data-dir",
            os.path.abspath(self.mktemp()),
            path=self.install("stars", "010001"),
        )
        self.assertOneLine(
            result,
            "twistd txplatform: services 'account' (from txplatform 0.1.0) and 'stars'"
            " (from stars-pkg 1.0) both claim the id 010001",
        )
        result = self.twistdRun("-n", "stars", path=self.install("stars", "010001"))
        self.assertOneLine(result, "twistd stars: services 'account' (from txplatform 0.1.0)")

    def assertOneLine(self, result: subprocess.CompletedProcess, expected: str) -> None:
        """
        twistd ended with exit status 1 and one line on stderr, starting
        with C{expected}: no usage text, no traceback.
        """
        self.assertEqual((result.returncode, result.stdout), (1, ""), result.stderr)
        [line] = result.stderr.splitlines()
        self.assertTrue(line.startswith(expected), line)

    def test_unknownService(self) -> None:
        """
        An uninstalled service chosen with twistd txplatform --services
        ends twistd in one line naming the installed ones.
        """
        result = self.twistdRun(
            "-n", "txplatform", "--data-dir", os.path.abspath(self.mktemp()),
            "--services", "post,nosuch",
        )  # fmt: skip
        self.assertOneLine(
            result, "twistd txplatform: --services: no service is named 'nosuch' (installed: "
        )

    def test_routeShadowed(self) -> None:
        """
        A service whose route would shadow another's stops the process
        before it listens, saying which, without a traceback.
        """
        directory = self.install("stars", "020003")
        with open(os.path.join(directory, "stars_routes.py"), "w") as f:
            f.write(
                textwrap.dedent("""\
                    from txplatform.routes import route

                    class Routes:
                        def __init__(self, parts):
                            pass

                        @route("GET", "/v1/posts/{id}", "Mine", tag="stars")
                        def mine(self, exchange, id):
                            return {}
                """)
            )
        with open(os.path.join(directory, "stars_declared.py"), "a") as f:
            f.write(
                "\nimport attrs\ndeclaration = attrs.evolve(declaration, routes='stars_routes:Routes')\n"
            )
        result = self.twistdRun(
            "-n",
            "--pidfile=",
            "txplatform",
            "--listen",
            "tcp:0:interface=127.0.0.1",
            "--data-dir",
            os.path.abspath(self.mktemp()),
            path=directory,
        )
        self.assertNotEqual(result.returncode, 0)
        output = result.stdout + result.stderr
        self.assertIn("GET /v1/posts/{id} of the stars service would shadow", output)
        self.assertNotIn("Traceback", output)
