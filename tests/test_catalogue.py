"""
Tests for L{txplatform.catalogue}: declarations found through entry points,
and refused when they cannot run together.
"""

from __future__ import annotations

import os
import sys
import textwrap
from importlib.metadata import distributions

from twisted.trial.unittest import SynchronousTestCase

from txplatform.catalogue import (
    ENTRY_POINT_GROUP,
    GATEWAY_ID,
    Catalogue,
    CatalogueError,
    ServiceDeclaration,
    ServiceParts,
    installedServices,
)
from txplatform.serviceid import ServiceId


def declaration(name: str, hexId: str, **kwargs) -> ServiceDeclaration:
    return ServiceDeclaration(
        name=name,
        serviceId=ServiceId.fromHex(hexId),
        service="tests.test_catalogue:Plain",
        summary=f"The {name} service.",
        **kwargs,
    )


class Plain:
    """
    A stand-in service class that stores nothing.
    """

    name = "likes"
    serviceId = ServiceId.fromHex("020001")

    def __init__(self, bus, reactor) -> None:
        self.bus = bus
        self.reactor = reactor


class DeclarationTests(SynchronousTestCase):
    def test_names(self) -> None:
        """
        A service's name is a short identifier, and not one of the names
        txplatform's own commands and key files take.
        """
        for wrong in ["", "Likes", "1likes", "likes-2", "x" * 33, "gateway", "bus", "sidecar"]:
            self.assertRaises(ValueError, declaration, wrong, "020001")
        self.assertEqual(declaration("likes_2", "020001").name, "likes_2")

    def test_defaultBuild(self) -> None:
        """
        Without a build function, a service that stores nothing is made as
        C{Class(bus, reactor)}.
        """
        made = declaration("likes", "020001").make(ServiceParts("bus", "reactor", {}))
        self.assertIsInstance(made, Plain)
        self.assertEqual((made.bus, made.reactor), ("bus", "reactor"))

    def test_build(self) -> None:
        """
        A build function gets the parts, options included.
        """
        built = declaration("likes", "020001", build=lambda parts: Plain(parts.options["size"], 0))
        self.assertEqual(built.make(ServiceParts("bus", "reactor", {"size": 3})).bus, 3)

    def test_madeAsDeclared(self) -> None:
        """
        A service made with another name or id than its declaration's is
        refused: the bus and the key files would not agree.
        """
        for name, hexId in [("stars", "020001"), ("likes", "020002")]:
            error = self.assertRaises(
                CatalogueError, declaration(name, hexId).make, ServiceParts("bus", "reactor", {})
            )
            self.assertIn("is made as 'likes' (020001)", str(error))

    def test_stores(self) -> None:
        """
        A service stores data when its class is a DatabaseService.
        """
        self.assertFalse(declaration("likes", "020001").stores())
        self.assertTrue(installedServices().get("account").stores())


class CatalogueTests(SynchronousTestCase):
    def test_clashes(self) -> None:
        """
        Two services with one name or one id, or a service with the
        gateways' id, cannot be in one catalogue.
        """
        a = declaration("likes", "020001")
        error = self.assertRaises(CatalogueError, Catalogue, [a, declaration("likes", "020002")])
        self.assertEqual(str(error), "two services are named 'likes'")
        error = self.assertRaises(
            CatalogueError,
            Catalogue,
            [a, declaration("stars", "020001")],
            {"likes": "likes 1.0", "stars": "stars 2.0"},
        )
        self.assertEqual(
            str(error),
            "services 'likes' (from likes 1.0) and 'stars' (from stars 2.0) both claim the id"
            " 020001",
        )
        error = self.assertRaises(CatalogueError, Catalogue, [declaration("likes", GATEWAY_ID.hex)])
        self.assertIn("the gateways'", str(error))

    def test_lookups(self) -> None:
        """
        A catalogue finds its services by name, lists them in order, and
        gives a registry of names and ids with the gateways'; an unknown
        name is a KeyError naming those it holds.
        """
        catalogue = Catalogue([declaration("likes", "020001"), declaration("stars", "020002")])
        self.assertEqual(catalogue.names(), ["likes", "stars"])
        self.assertEqual(len(catalogue), 2)
        self.assertIn("stars", catalogue)
        self.assertEqual(catalogue.get("stars").serviceId.hex, "020002")
        error = self.assertRaises(KeyError, catalogue.get, "bookmarks")
        self.assertEqual(error.args[0], "no service is named 'bookmarks' (installed: likes, stars)")
        self.assertEqual(catalogue.registry().idFor("gateway"), GATEWAY_ID)
        self.assertEqual(catalogue.only(["stars"]).names(), ["stars"])
        self.assertRaises(KeyError, catalogue.only, ["bookmarks"])

    def test_installed(self) -> None:
        """
        The platform's own services are found as any package's are, through
        the entry-point group.
        """
        catalogue = installedServices()
        self.assertLessEqual({"account", "post", "notify", "parser"}, set(catalogue.names()))
        self.assertEqual(catalogue.get("account").serviceId.hex, "010001")
        self.assertIn("txplatform", catalogue.origin("account"))


class EntryPointTests(SynchronousTestCase):
    """
    Declarations loaded from the entry points of distributions installed
    in a directory of the test's own.
    """

    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        sys.path.insert(0, self.directory)
        self.addCleanup(sys.path.remove, self.directory)
        self.modules: list[str] = []
        self.addCleanup(lambda: [sys.modules.pop(m, None) for m in self.modules])

    def install(self, distribution: str, module: str, source: str, entries: dict[str, str]):
        """
        Install distribution C{distribution} with one module and these
        entry points of the services group.
        """
        with open(os.path.join(self.directory, f"{module}.py"), "w") as f:
            f.write(textwrap.dedent(source))
        self.modules.append(module)
        info = os.path.join(self.directory, f"{distribution}-1.0.dist-info")
        os.makedirs(info)
        with open(os.path.join(info, "METADATA"), "w") as f:
            f.write(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: 1.0\n")
        with open(os.path.join(info, "entry_points.txt"), "w") as f:
            f.write(f"[{ENTRY_POINT_GROUP}]\n")
            for name, value in entries.items():
                f.write(f"{name} = {value}\n")

    def catalogue(self) -> Catalogue:
        found = [
            entry
            for dist in distributions(path=[self.directory])
            for entry in dist.entry_points
            if entry.group == ENTRY_POINT_GROUP
        ]
        return Catalogue.fromEntryPoints(found)

    DECLARE = """
        from txplatform.catalogue import ServiceDeclaration
        from txplatform.serviceid import ServiceId
        declaration = ServiceDeclaration(
            name={name!r}, serviceId=ServiceId.fromHex({hex!r}),
            service="tests.test_catalogue:Plain", summary="A service.")
    """

    def test_loads(self) -> None:
        """
        Each entry point names a declaration; the catalogue knows which
        distribution installed it.
        """
        self.install(
            "likes-pkg",
            "likes_a",
            self.DECLARE.format(name="likes", hex="020001"),
            {"likes": "likes_a:declaration"},
        )
        catalogue = self.catalogue()
        self.assertEqual(catalogue.names(), ["likes"])
        self.assertEqual(catalogue.origin("likes"), "likes-pkg 1.0")

    def test_clash(self) -> None:
        """
        Two distributions claiming one id are refused with an error naming
        both.
        """
        self.install(
            "likes-pkg",
            "likes_b",
            self.DECLARE.format(name="likes", hex="020001"),
            {"likes": "likes_b:declaration"},
        )
        self.install(
            "stars-pkg",
            "stars_b",
            self.DECLARE.format(name="stars", hex="020001"),
            {"stars": "stars_b:declaration"},
        )
        error = self.assertRaises(CatalogueError, self.catalogue)
        self.assertEqual(
            str(error),
            "services 'likes' (from likes-pkg 1.0) and 'stars' (from stars-pkg 1.0) both"
            " claim the id 020001",
        )

    def test_sameName(self) -> None:
        """
        Two distributions declaring one name are refused, naming both.
        """
        for dist, module in [("likes-pkg", "likes_c"), ("other-likes", "likes_d")]:
            self.install(
                dist,
                module,
                self.DECLARE.format(name="likes", hex="020001"),
                {"likes": f"{module}:declaration"},
            )
        error = self.assertRaises(CatalogueError, self.catalogue)
        self.assertIn("two services are named 'likes'", str(error))
        self.assertIn("likes-pkg 1.0", str(error))
        self.assertIn("other-likes 1.0", str(error))

    def test_broken(self) -> None:
        """
        An entry point that fails to load, names something else than a
        declaration, or a declaration of another name, is refused with the
        distribution's name and the reason.
        """
        self.install(
            "broken-pkg",
            "broken_e",
            "raise ImportError('no such thing')\n",
            {"broken": "broken_e:declaration"},
        )
        error = self.assertRaises(CatalogueError, self.catalogue)
        self.assertIn("'broken' from broken-pkg 1.0 cannot be loaded", str(error))
        self.assertIn("ImportError: no such thing", str(error))

    def test_notADeclaration(self) -> None:
        self.install("odd-pkg", "odd_f", "declaration = 42\n", {"odd": "odd_f:declaration"})
        error = self.assertRaises(CatalogueError, self.catalogue)
        self.assertIn("names int, not a ServiceDeclaration", str(error))

    def test_misnamed(self) -> None:
        self.install(
            "likes-pkg",
            "likes_g",
            self.DECLARE.format(name="likes", hex="020001"),
            {"stars": "likes_g:declaration"},
        )
        error = self.assertRaises(CatalogueError, self.catalogue)
        self.assertIn("'stars' from likes-pkg 1.0 declares a service named 'likes'", str(error))
