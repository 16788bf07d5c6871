# -*- test-case-name: tests.gateway.test_webclient,tests.web.test_browser -*-
"""
The web client: the static files of the browser application (in this
package's C{static/} folder, shipped in the wheel), served at C{/} beside
the API.

Only the files of that folder are served, each at C{/NAME} (C{index.html}
also at C{/}): the set is read once, when the gateway is made, so no path a
client sends is ever joined to a directory (nothing to traverse), and every
other path, C{/v1/...} first of all, is the API's, which answers what it
does not know with problem details.

Every file goes with a strict Content-Security-Policy (scripts, styles,
images and connections from this origin only; no inline script; no
framing), and with C{Cache-Control: no-cache} and a strong C{ETag}: there is
no build step to version file names, and the modules import each other by
plain names, so a browser revalidates each file (a 304 without a body when
it has not changed) rather than ever running a stale mix of two versions.
"""

from __future__ import annotations

import hashlib
from importlib import resources
from typing import Any

from attrs import frozen
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource

__all__ = ["CONTENT_SECURITY_POLICY", "StaticFile", "WebClient", "staticFiles"]

#: What a page of the web client may load and do: nothing from any other
#: origin, no inline script or style, no plugin, no frame around it.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self';"
    " connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)

_TYPES = {
    "html": "text/html; charset=utf-8",
    "js": "text/javascript; charset=utf-8",
    "css": "text/css; charset=utf-8",
    "svg": "image/svg+xml",
    "png": "image/png",
    "ico": "image/x-icon",
    "json": "application/json",
}


@frozen
class StaticFile:
    """
    One file of the web client, held in memory.
    """

    body: bytes
    contentType: str
    etag: bytes

    @classmethod
    def fromBytes(cls, name: str, body: bytes) -> StaticFile:
        """
        @raise ValueError: C{name}'s extension is not one the web client
            serves.
        """
        extension = name.rpartition(".")[2].lower()
        if extension not in _TYPES:
            raise ValueError(f"the web client serves no .{extension} file ({name})")
        digest = hashlib.sha256(body).hexdigest()[:32]
        return cls(body, _TYPES[extension], b'"' + digest.encode("ascii") + b'"')


def staticFiles() -> dict[bytes, StaticFile]:
    """
    The web client's files, by the path each is served at.
    """
    folder = resources.files(__package__).joinpath("static")
    files = {}
    for entry in folder.iterdir():
        name = entry.name
        if not entry.is_file() or name.startswith(".") or name.rpartition(".")[2] not in _TYPES:
            continue
        files[b"/" + name.encode("ascii")] = StaticFile.fromBytes(name, entry.read_bytes())
    files[b"/"] = files[b"/index.html"]
    return files


class WebClient(Resource):
    """
    Serves the web client's files to C{GET} and C{HEAD} at their paths,
    and hands every other request to C{api}.
    """

    isLeaf = True

    def __init__(self, api: Resource, files: dict[bytes, StaticFile] | None = None) -> None:
        super().__init__()
        self._api = api
        self.files = staticFiles() if files is None else files

    def render(self, request: IRequest) -> Any:
        found = self.files.get(request.path)
        if found is None or request.method not in (b"GET", b"HEAD"):
            return self._api.render(request)
        request.setHeader(b"Content-Security-Policy", CONTENT_SECURITY_POLICY.encode("ascii"))
        request.setHeader(b"X-Content-Type-Options", b"nosniff")
        request.setHeader(b"Referrer-Policy", b"no-referrer")
        request.setHeader(b"X-Frame-Options", b"DENY")
        request.setHeader(b"Cache-Control", b"no-cache")
        request.setHeader(b"ETag", found.etag)
        request.setHeader(b"Content-Type", found.contentType.encode("ascii"))
        tags = _etags(request.getHeader(b"if-none-match"))
        if found.etag in tags or b"*" in tags:
            request.setResponseCode(304)
            return b""
        # To HEAD, Twisted answers with the length of this body, and no body.
        return found.body


def _etags(header: bytes | None) -> list[bytes]:
    """
    The entity tags of an C{If-None-Match} header (weak ones compared as
    strong: a file's tag is the same either way).
    """
    if header is None:
        return []
    return [tag.strip().removeprefix(b"W/") for tag in header.split(b",")]
