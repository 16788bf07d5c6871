"""
Tests for L{txplatform_gateway.webclient}: the web client's files, served
at C{/} beside the API, with a strict Content-Security-Policy.
"""

from __future__ import annotations

import os
import re

from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from txplatform.testing import ServiceHarness
from txplatform_gateway.testing import GatewayClient
from txplatform_gateway.webclient import (
    CONTENT_SECURITY_POLICY,
    StaticFile,
    WebClient,
    staticFiles,
)

STATIC = os.path.join(os.path.dirname(staticFiles.__code__.co_filename), "static")


class ServedTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.harness = ServiceHarness(self.mktemp())
        self.addCleanup(self.harness.stop)
        self.harness.startService("account", argon2_time_cost=1, argon2_memory_cost=8)
        self.client = GatewayClient(self.harness, webClient=True)

    def test_index(self) -> None:
        """
        C{/} is the client's index.html, with the strict policy, no
        sniffing, no referrer, no framing, and revalidated on each use.
        """
        response = self.client.get("/")
        self.assertEqual(response.status, 200)
        self.assertEqual(response.header("Content-Type"), "text/html; charset=utf-8")
        self.assertIn(b'<script type="module" src="app.js">', response.body)
        self.assertEqual(response.header("Content-Security-Policy"), CONTENT_SECURITY_POLICY)
        self.assertEqual(response.header("X-Content-Type-Options"), "nosniff")
        self.assertEqual(response.header("Referrer-Policy"), "no-referrer")
        self.assertEqual(response.header("X-Frame-Options"), "DENY")
        self.assertEqual(response.header("Cache-Control"), "no-cache")
        self.assertEqual(response.body, self.client.get("/index.html").body)

    def test_policy(self) -> None:
        """
        The policy allows nothing but this origin's scripts, styles, images
        and connections: no inline script, no other origin, no frame.
        """
        directives = dict(
            d.strip().split(" ", 1) for d in CONTENT_SECURITY_POLICY.split(";") if d.strip()
        )
        self.assertEqual(directives.pop("default-src"), "'none'")
        self.assertEqual(directives.pop("base-uri"), "'none'")
        self.assertEqual(directives.pop("frame-ancestors"), "'none'")
        self.assertEqual(set(directives.values()), {"'self'"})
        self.assertEqual(
            set(directives),
            {"script-src", "style-src", "img-src", "connect-src", "form-action"},
        )

    def test_assets(self) -> None:
        """
        Each file is served with the content type of its kind, the same
        headers, and an ETag.
        """
        for path, kind in [
            ("/app.js", "text/javascript; charset=utf-8"),
            ("/api.js", "text/javascript; charset=utf-8"),
            ("/stream.js", "text/javascript; charset=utf-8"),
            ("/dom.js", "text/javascript; charset=utf-8"),
            ("/style.css", "text/css; charset=utf-8"),
            ("/favicon.svg", "image/svg+xml"),
        ]:
            response = self.client.get(path)
            self.assertEqual(response.status, 200, path)
            self.assertEqual(response.header("Content-Type"), kind, path)
            self.assertEqual(
                response.header("Content-Security-Policy"), CONTENT_SECURITY_POLICY, path
            )
            self.assertRegex(response.header("ETag") or "", r'^"[0-9a-f]{32}"$')
            with open(os.path.join(STATIC, path[1:]), "rb") as f:
                self.assertEqual(response.body, f.read())

    def test_notModified(self) -> None:
        """
        A browser that has the file (its ETag) gets 304 without a body; a
        changed file (another tag) is sent again.
        """
        etag = self.client.get("/app.js").header("ETag")
        again = self.client.get("/app.js", headers={"If-None-Match": f"W/{etag}"})
        self.assertEqual((again.status, again.body), (304, b""))
        changed = self.client.get("/app.js", headers={"If-None-Match": '"stale"'})
        self.assertEqual(changed.status, 200)

    def test_head(self) -> None:
        """
        HEAD gives the headers of GET, without the body.
        """
        response = self.client.request("HEAD", "/style.css")
        self.assertEqual(response.status, 200)
        self.assertEqual(response.body, b"")
        self.assertEqual(response.header("Content-Type"), "text/css; charset=utf-8")

    def test_api(self) -> None:
        """
        The API is served as before: its routes, and problem details for a
        path under /v1/ it does not know, without the web client's headers.
        """
        health = self.client.get("/healthz")
        self.assertEqual(health.json, {"status": "ok"})
        self.assertIsNone(health.header("Content-Security-Policy"))
        missing = self.client.get("/v1/nothing-here")
        self.assertEqual(missing.status, 404)
        self.assertEqual(missing.header("Content-Type"), "application/problem+json")
        self.assertEqual(self.client.get("/v1/openapi.json").status, 200)
        self.assertEqual(self.client.get("/v1/index.html").status, 404)

    def test_otherMethods(self) -> None:
        """
        Only GET and HEAD reach the files: anything else is the API's to
        refuse, with problem details.
        """
        response = self.client.post("/", json={})
        self.assertIn(response.status, (404, 405))
        self.assertEqual(response.header("Content-Type"), "application/problem+json")

    def test_onlyItsFiles(self) -> None:
        """
        Paths outside the set of files, those that climb out of the folder
        among them, are unknown paths: problem details, 404.
        """
        for path in [
            "/nothing.js",
            "/static/app.js",
            "/webclient.py",
            "/../app.py",
            "/%2e%2e/app.py",
            "/..%2fapp.py",
            "/app.js/",
            "/app.js%00",
        ]:
            response = self.client.get(path)
            self.assertEqual(response.status, 404, path)
            self.assertEqual(response.header("Content-Type"), "application/problem+json", path)

    def test_noCookie(self) -> None:
        """
        The API authenticates by header only: a cookie, which a browser
        would send on another site's behalf, counts for nothing.
        """
        response = self.client.get("/v1/me", headers={"Cookie": "token=" + "a" * 43})
        self.assertEqual(response.status, 401)

    def test_withoutWebClient(self) -> None:
        """
        A gateway told not to serve the web client answers / as any unknown
        path.
        """
        client = GatewayClient(self.harness)
        response = client.get("/")
        self.assertEqual(response.status, 404)
        self.assertEqual(response.header("Content-Type"), "application/problem+json")
        self.assertEqual(client.get("/app.js").status, 404)


class WebClientTests(SynchronousTestCase):
    def test_rawPaths(self) -> None:
        """
        Whatever a raw path says, only a name in the set is served: nothing
        is ever looked up on disk.
        """

        class API:
            def render(self, request: DummyRequest) -> bytes:
                return b"api"

        files = {b"/": StaticFile.fromBytes("index.html", b"x")}
        web = WebClient(API(), files)  # type: ignore[arg-type]
        for raw in [b"/../gateway/app.py", b"/./", b"//", b"/index.html", b"/etc/passwd"]:
            request = DummyRequest([])
            request.path = raw
            self.assertEqual(web.render(request), b"api", raw)
        request = DummyRequest([])
        request.path = b"/"
        self.assertEqual(web.render(request), b"x")

    def test_kinds(self) -> None:
        """
        A file of a kind the client does not serve is refused when the set
        is made, not served with a guessed type.
        """
        self.assertRaises(ValueError, StaticFile.fromBytes, "notes.txt", b"")
        self.assertEqual(StaticFile.fromBytes("a.JS", b"").contentType[:15], "text/javascript")


class FilesTests(SynchronousTestCase):
    """
    The files themselves keep to the policy.
    """

    def read(self, name: str) -> str:
        with open(os.path.join(STATIC, name), encoding="utf-8") as f:
            return f.read()

    def test_everyFileServed(self) -> None:
        """
        Every file of the folder is served, at its name.
        """
        self.assertEqual(
            {p.decode() for p in staticFiles()} - {"/"},
            {"/" + name for name in os.listdir(STATIC)},
        )

    def test_referencesExist(self) -> None:
        """
        What the page and the modules load (src, href, import) is one of
        the files.
        """
        names = set(os.listdir(STATIC))
        page = self.read("index.html")
        for found in re.findall(r'(?:src|href)="([^"#/][^"]*)"', page):
            self.assertIn(found, names)
        for name in names:
            if name.endswith(".js"):
                for found in re.findall(r'from "\./([^"]+)"', self.read(name)):
                    self.assertIn(found, names, name)

    def test_nothingInlineNorElsewhere(self) -> None:
        """
        No inline script or style, no handler attribute, and nothing loaded
        from another origin (no CDN); user text is never parsed as HTML.
        """
        page = self.read("index.html")
        self.assertNotRegex(page, r"<script(?![^>]*\bsrc=)[^>]*>")
        self.assertNotRegex(page, r"<style|\sstyle=|\son[a-z]+=")
        for name in os.listdir(STATIC):
            # An SVG's namespace is a name, not a place anything is loaded from.
            text = self.read(name).replace('xmlns="http://www.w3.org/2000/svg"', "")
            self.assertNotRegex(text, r"(?<![\w.])(?:https?:)?//[a-z0-9.-]+\.[a-z]", name)
            if name.endswith(".js"):
                self.assertNotRegex(
                    text, r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|eval\(", name
                )


class WheelTests(SynchronousTestCase):
    def test_shipped(self) -> None:
        """
        The wheel built from the checkout holds every file of the web
        client (package data: a gateway installed from it serves them).
        """
        import subprocess
        import sys
        import zipfile

        from ..processes import CHECKOUT

        directory = os.path.abspath(self.mktemp())
        result = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", directory, CHECKOUT],
            capture_output=True,
            text=True,
            timeout=300,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        [wheel] = [n for n in os.listdir(directory) if n.endswith(".whl")]
        with zipfile.ZipFile(os.path.join(directory, wheel)) as archive:
            shipped = set(archive.namelist())
        for name in os.listdir(STATIC):
            self.assertIn(f"txplatform_gateway/static/{name}", shipped)
