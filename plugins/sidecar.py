# -*- test-case-name: tests.plugins.test_sidecar -*-
"""
C{twistd sidecar --for SERVICE}: the sidecar of one service replica
(L{txplatform.sidecar}).
"""

from __future__ import annotations

from typing import Any

from twisted.python import usage

from ._common import OneLineUsage, checkEndpoints


class Options(OneLineUsage, usage.Options):
    command = "sidecar"
    synopsis = "--for SERVICE --identity PATH --trust PATH --forward unix:PATH [options]"
    longdesc = (
        "Run beside one replica of a service (started with --bus direct:... and"
        " --sidecar-socket PATH): end the secure channels of its callers at the"
        " service's address and forward them to its socket, and serve /healthz,"
        " /readyz and /metrics (Prometheus) for orchestrators."
    )
    optParameters = [
        ["for", None, None, "The service beside which this runs (an installed service's name)."],
        [
            "identity",
            None,
            None,
            "The service's channel identity file (the sidecar speaks for it).",
        ],
        ["trust", None, None, "The trust file: the callers' keys accepted."],
        [
            "bus",
            None,
            "direct:127.0.0.0/8",
            "The direct transport's range and port: the sidecar listens at the address the"
            " service's id gives there.",
        ],
        ["listen", None, None, "Listen on this endpoint instead of the derived address."],
        [
            "forward",
            None,
            None,
            "The service's socket (its --sidecar-socket), as unix:PATH.",
        ],
        ["http", None, "tcp:9100", "Endpoint of /healthz, /readyz and /metrics."],
        [
            "health-file",
            None,
            None,
            "The service's --health-file: /healthz fails when it is older than --health-max-age.",
        ],
        ["health-max-age", None, 15.0, "Seconds.", float],
        [
            "trust-reload",
            None,
            10.0,
            "Seconds between checks of the trust file: keys removed are refused and their"
            " channels closed.",
            float,
        ],
    ]

    def postOptions(self) -> None:
        from txplatform.catalogue import CatalogueError, installedServices
        from txplatform.channel.identity import IdentityError, readIdentity, readTrust
        from txplatform.direct.addresses import AddressBook, AddressError, parseDirectURL

        from ._common import catalogueRefusal

        try:
            catalogue = installedServices()
        except CatalogueError as e:
            raise catalogueRefusal("sidecar", str(e)) from None
        installed = ", ".join(catalogue.names())
        if self["for"] is None:
            raise usage.UsageError(f"--for is required: one of {installed}")
        if self["for"] not in catalogue:
            raise catalogueRefusal(
                "sidecar", f"--for: no service is named {self['for']!r} (installed: {installed})"
            )
        for name in ("identity", "trust", "forward"):
            if self[name] is None:
                raise usage.UsageError(f"--{name} is required")
        try:
            identity = readIdentity(self["identity"])
            readTrust(self["trust"])
        except IdentityError as e:
            raise usage.UsageError(str(e)) from None
        serviceId = catalogue.get(self["for"]).serviceId
        if identity.serviceId != serviceId:
            raise usage.UsageError(
                f"--identity speaks for service {identity.serviceId.hex},"
                f" not {self['for']} ({serviceId.hex})"
            )
        try:
            network, port, _ = parseDirectURL(self["bus"])
            book = AddressBook(network, port)
        except AddressError as e:
            raise usage.UsageError(f"--bus: {e}") from None
        if self["listen"] is None:
            self["listen"] = f"tcp:{port}:interface={book.derivedHost(serviceId)}"
        checkEndpoints(self, "listen", "http")
        checkEndpoints(self, "forward", client=True)
        for name in ("health-max-age", "trust-reload"):
            if self[name] <= 0:
                raise usage.UsageError(f"--{name} must be positive")


def makeService(options: Options, reactor: Any = None) -> Any:
    if reactor is None:
        from twisted.internet import reactor
    from txplatform.channel.identity import TrustFileService, readIdentity, readTrust
    from txplatform.channel.protocol import ChannelSettings
    from txplatform.sidecar import Sidecar

    from ._lifecycle import exitOnFailure

    trust = readTrust(options["trust"])
    sidecar = Sidecar(
        reactor,
        options["for"],
        ChannelSettings(readIdentity(options["identity"]), trust, reactor),
        options["listen"],
        options["forward"],
        options["http"],
        healthFile=options["health-file"],
        healthMaxAge=options["health-max-age"],
        cannotListen=lambda failure, what: exitOnFailure(reactor, failure, what),
    )
    TrustFileService(options["trust"], trust, options["trust-reload"]).setServiceParent(sidecar)
    return sidecar
