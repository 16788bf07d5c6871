# -*- test-case-name: tests.plugins.test_options -*-
"""
C{twistd gateway}: one replica of the HTTP gateway.
"""

from __future__ import annotations

from typing import Any

from twisted.python import usage

from txplatform.catalogue import GATEWAY_ID

from ._common import (
    BUS,
    BUS_KEYS,
    DIRECT,
    HEALTH_FILE,
    KEY_RELOAD,
    METRICS,
    OTLP,
    OneLineUsage,
    checkBus,
    checkEndpoints,
    checkKeys,
    checkOTLP,
    checkPositive,
    loadKeys,
    makeBus,
)

LISTEN = [
    "listen",
    None,
    None,
    "Where to serve HTTP: a Twisted endpoint string. Default: tcp:8080, unless --https is"
    " given (then HTTPS only).",
]
HTTPS = [
    ["https", None, None, "Where to serve HTTPS (TLS 1.2 at least), e.g. tcp:8443."],
    [
        "tls-cert",
        None,
        None,
        "With --https: the PEM file of the certificate, then any intermediates.",
    ],
    ["tls-key", None, None, "With --https: the PEM file of the certificate's private key."],
    [
        "trusted-proxies",
        None,
        None,
        "Address ranges of the load balancers in front, comma-separated (10.0.0.0/8,"
        " 127.0.0.1): from them the client's address is read from X-Forwarded-For (for"
        " rate limits and logs). Default: none, the peer is the client.",
    ],
    [
        "cors-origins",
        None,
        None,
        "Origins whose browser scripts may call the API, comma-separated (or *): answered"
        " with CORS headers, preflights included. Default: none.",
    ],
]
CALL_TIMEOUT = [
    "call-timeout",
    None,
    5.0,
    "Seconds a request may wait on services before it gets 503.",
    float,
]
MAX_IN_FLIGHT = [
    "max-in-flight",
    None,
    512,
    "Requests one gateway works on at once: low-priority routes (listings, feeds) stop"
    " being admitted at half of it, writes at four fifths, sessions only at the limit;"
    " the refused get 503 with Retry-After.",
    int,
]
BUSY_LIMIT = [
    "busy-limit",
    None,
    50.0,
    "Percent of its time the reactor may be busy before low-priority routes are refused"
    " (halfway from there to 100: writes too), whatever is in flight, keeping the rest for"
    " higher-priority routes while they come; 0 turns it off.",
    float,
]
MAX_BODY_SIZE = [
    "max-body-size",
    None,
    64 * 1024,
    "Largest request body, in bytes (413 above).",
    int,
]
RATE_LIMIT = [
    "rate-limit",
    None,
    None,
    "Requests admitted per client address (IPv6: per /64), as REQUESTS/SECONDS, e.g."
    " 600/60; past it, 429 with Retry-After. Counted across every gateway on the bus."
    " Behind a load balancer, give --trusted-proxies. Default: no limit.",
]
ACCOUNT_RATE_LIMIT = [
    "account-rate-limit",
    None,
    None,
    "Authenticated requests admitted per account, as REQUESTS/SECONDS, e.g. 1200/60,"
    " whatever addresses they come from; past it, 429 with Retry-After. Counted across"
    " every gateway on the bus. Default: no limit.",
]
PARSER_OVER = [
    "parser-over",
    None,
    None,
    "Hand request bodies over this many bytes to the parser service's replicas (twistd"
    " parser) to decode and check, so large bodies do not hold up this process. Default:"
    " every body is parsed here.",
    int,
]
CONNECTION_LIMITS = [
    [
        "header-timeout",
        None,
        10.0,
        "Seconds a request's headers may take to arrive, however slowly they trickle (408 after).",
        float,
    ],
    ["body-timeout", None, 30.0, "Seconds a request's body may take after its headers.", float],
    [
        "max-connections-per-address",
        None,
        256,
        "Connections one client address may hold at once (behind a load balancer, its"
        " own: raise it there); 0: no limit.",
        int,
    ],
]
PRINCIPAL_CACHE = [
    "principal-cache",
    None,
    1.0,
    "Seconds a verified token is taken at its word on this gateway, without asking the"
    " Account service again; a session ended through another gateway still passes here"
    " that long (through this one: at once). 0: ask for every request.",
    float,
]
READ_CACHE = [
    "read-cache",
    None,
    1.0,
    "Seconds this gateway serves an answer it kept of those the services let it keep (a"
    " post, by its id) without asking again; what is deleted through any gateway goes from"
    " here as soon as its event arrives, and at the latest this long after. 0: ask every time.",
    float,
]
ACCESS_LOG = [
    "access-log",
    None,
    "batched",
    "The access log: batched (a line per request, the lines of a tenth of a second logged"
    " as one event: cheap), events (one structured event per request, for JSON logs) or off.",
]
NO_WEB = [
    "no-web",
    None,
    "Serve the API only, without the web client at / (the browser application; see docs/web.md).",
]
API_INFO = [
    ["api-title", None, None, "The title of the OpenAPI document (default: txplatform)."],
    ["api-version", None, None, "The version the OpenAPI document gives the API."],
    ["api-description", None, None, "The description of the API in its OpenAPI document."],
]


class Options(OneLineUsage, usage.Options):
    command = "gateway"
    synopsis = "[options]"
    longdesc = "Run one replica of the HTTP gateway, the platform's only entry point."
    optFlags = [NO_WEB]
    optParameters = [
        BUS,
        *DIRECT,
        BUS_KEYS,
        KEY_RELOAD,
        LISTEN,
        *HTTPS,
        CALL_TIMEOUT,
        MAX_BODY_SIZE,
        PARSER_OVER,
        *CONNECTION_LIMITS,
        ACCESS_LOG,
        PRINCIPAL_CACHE,
        READ_CACHE,
        *API_INFO,
        RATE_LIMIT,
        ACCOUNT_RATE_LIMIT,
        MAX_IN_FLIGHT,
        BUSY_LIMIT,
        HEALTH_FILE,
        METRICS,
        OTLP,
    ]

    def postOptions(self) -> None:
        checkBus(self, GATEWAY_ID)
        checkOTLP(self)
        checkKeys(self, None)
        checkPositive(self, "call-timeout", "max-body-size", "max-in-flight")
        if self["parser-over"] is not None and self["parser-over"] < 0:
            raise usage.UsageError(f"--parser-over must be 0 or more, not {self['parser-over']}")
        checkEdge(self)


def checkEdge(options: usage.Options, defaultListen: str = "tcp:8080") -> None:
    """
    Check the listeners: HTTP where configured (C{defaultListen} when
    nothing is), HTTPS with a certificate and its key, CORS origins.
    """
    if options["https"] is None:
        for name in ("tls-cert", "tls-key"):
            if options[name] is not None:
                raise usage.UsageError(f"--{name} goes with --https")
        if options["listen"] is None:
            options["listen"] = defaultListen
    else:
        from txplatform_gateway.tls import TLSConfigError, serverOptions

        for name in ("tls-cert", "tls-key"):
            if options[name] is None:
                raise usage.UsageError(f"--https needs --{name}")
        try:
            options.tlsOptions = serverOptions(options["tls-cert"], options["tls-key"])
        except TLSConfigError as e:
            raise usage.UsageError(str(e)) from None
    checkEndpoints(options, "listen", "https", "metrics")
    checkPositive(options, "header-timeout", "body-timeout")
    for name in ("principal-cache", "read-cache"):
        if options[name] < 0:
            raise usage.UsageError(f"--{name} cannot be negative")
    from txplatform_gateway.accesslog import ACCESS_LOG_MODES

    if options["access-log"] not in ACCESS_LOG_MODES:
        raise usage.UsageError(
            f"--access-log is one of {', '.join(ACCESS_LOG_MODES)}, not {options['access-log']!r}"
        )
    if options["max-connections-per-address"] < 0:
        raise usage.UsageError("--max-connections-per-address cannot be negative")
    if not 0 <= options["busy-limit"] < 100:
        raise usage.UsageError(
            f"--busy-limit is a percentage below 100 (0: off), not {options['busy-limit']:g}"
        )
    import ipaddress

    proxies = options["trusted-proxies"]
    options.trustedProxies = [p.strip() for p in proxies.split(",") if p.strip()] if proxies else []
    for network in options.trustedProxies:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            raise usage.UsageError(
                f"--trusted-proxies: {network!r} is not an address or range"
            ) from None
    from txplatform_gateway.ratelimit import parseRateLimit

    for name, attribute in [
        ("rate-limit", "rateLimit"),
        ("account-rate-limit", "accountRateLimit"),
    ]:
        setattr(options, attribute, None)
        if options.get(name) is not None:
            try:
                setattr(options, attribute, parseRateLimit(options[name]))
            except ValueError as e:
                raise usage.UsageError(f"--{name}: {e}") from None
    origins = options["cors-origins"]
    options.corsOrigins = [o.strip() for o in origins.split(",") if o.strip()] if origins else []
    for origin in options.corsOrigins:
        if origin != "*" and not origin.startswith(("http://", "https://")):
            raise usage.UsageError(
                f"--cors-origins: {origin!r} is not an origin (scheme://host[:port]) or *"
            )


def gatewayListener(options: usage.Options, reactor: Any, bus: Any) -> Any:
    """
    The gateway's listeners: HTTP and/or HTTPS, as configured.
    """
    from txplatform_gateway import Gateway
    from txplatform_gateway.tls import wrapTLS

    from ._lifecycle import Listeners, ListeningService

    listeners = Listeners()
    accountRateLimit = None
    if getattr(options, "accountRateLimit", None) is not None:
        from txplatform_gateway.ratelimit import AccountRateLimit

        limit, window = options.accountRateLimit
        accountRateLimit = AccountRateLimit(bus, reactor, limit, window)
        accountRateLimit.setServiceParent(listeners)
    rateLimit = None
    if getattr(options, "rateLimit", None) is not None:
        from txplatform_gateway.ratelimit import AddressRateLimit

        limit, window = options.rateLimit
        rateLimit = AddressRateLimit(bus, reactor, limit, window)
        rateLimit.setServiceParent(listeners)
    parser = None
    if options.get("parser-over") is not None:
        from txplatform.catalogue import installedServices

        parser = installedServices().get("parser").serviceId
    info = {
        key: options[f"api-{key}"]
        for key in ("title", "version", "description")
        if options.get(f"api-{key}") is not None
    }
    from txplatform_gateway import RouteConflict

    try:
        gateway = Gateway(
            bus,
            reactor,
            callTimeout=options["call-timeout"],
            principalCache=options["principal-cache"],
            readCache=options["read-cache"],
            maxBodySize=options["max-body-size"],
            corsOrigins=getattr(options, "corsOrigins", []),
            trustedProxies=getattr(options, "trustedProxies", []),
            maxInFlight=options["max-in-flight"],
            parserOver=options.get("parser-over"),
            parser=parser,
            info=info,
            rateLimit=rateLimit,
            accountRateLimit=accountRateLimit,
            webClient=not options.get("no-web"),
        )
    except RouteConflict as e:
        # An installed service's routes clash with another's: no traceback,
        # the reason (naming both) and a failed start.
        raise SystemExit(f"txplatform: cannot serve the installed services' routes: {e}")

    from txplatform_gateway.accesslog import AccessLog

    accessLog = AccessLog(reactor, options["access-log"])

    def site() -> Any:
        return gateway.site(
            accessLog=accessLog,
            headerTimeout=options["header-timeout"],
            bodyTimeout=options["body-timeout"],
            maxConnectionsPerAddress=options["max-connections-per-address"],
        )

    if options["busy-limit"] > 0:
        from txplatform_gateway.admission import BusyMonitor

        monitor = BusyMonitor(reactor)
        gateway.admission.monitor = monitor
        gateway.admission.busyLimit = options["busy-limit"] / 100
        monitor.setServiceParent(listeners)
    if options["listen"] is not None:
        ListeningService(reactor, options["listen"], site(), "Gateway").setServiceParent(listeners)
    if options["https"] is not None:
        ListeningService(
            reactor, options["https"], wrapTLS(options.tlsOptions, site()), "Gateway HTTPS"
        ).setServiceParent(listeners)
    return listeners


def makeService(options: Options, reactor: Any = None) -> Any:
    if reactor is None:
        from twisted.internet import reactor
    from ._lifecycle import ReadinessGate, StopInOrder, startTracing

    startTracing(options, reactor, "gateway")
    top = StopInOrder()
    busKeys = loadKeys(options, "bus-keys", "bus", reactor)
    busKeys.service.setServiceParent(top)
    bus = makeBus(options, reactor, GATEWAY_ID, "gateway", busKeys)
    # On SIGTERM the listener closes first; requests in hand get their
    # answers before the bus goes.
    bus.drainTimeout = options["call-timeout"]
    bus.setServiceParent(top)
    # Listen once the bus is up, so a gateway is only ever reached when it
    # can do something.
    listener = gatewayListener(options, reactor, bus)
    ReadinessGate(reactor, [bus], listener).setServiceParent(top)
    if options["health-file"]:
        from ._lifecycle import HealthFile

        HealthFile(reactor, options["health-file"], bus, [listener]).setServiceParent(top)
    from ._lifecycle import addProbes

    addProbes(top, options, reactor, bus, [listener])
    return top
