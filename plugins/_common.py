# -*- test-case-name: tests.plugins.test_options -*-
"""
Options the commands share, and building the pieces they name.
"""

from __future__ import annotations

from typing import Any, ClassVar

from twisted.python import usage

from txplatform.buses import busFromURL, checkBusURL
from txplatform.catalogue import ServiceParts
from txplatform.database import databaseFromURL
from txplatform.options import checkPositive

__all__ = [
    "BUS",
    "DIRECT",
    "BUS_KEYS",
    "KEYS",
    "KEY_RELOAD",
    "checkKeys",
    "loadKeys",
    "DRAIN_TIMEOUT",
    "HEALTH_FILE",
    "METRICS",
    "OTLP",
    "checkOTLP",
    "fromFile",
    "checkBus",
    "checkDatabase",
    "checkEndpoints",
    "checkPositive",
    "catalogueRefusal",
    "OneLineUsage",
    "makeBus",
    "makeDatabase",
    "serviceProcess",
]

BUS = [
    "bus",
    None,
    None,
    "The message bus, through which this process works with the others. Required:"
    " amqp://user:password@host:5672/vhost (amqps:// for TLS; ?cafile=PATH to trust a"
    " CA, ?heartbeat=SECONDS; the nodes of a cluster as their URLs separated by commas,"
    " with ?queue_type=quorum), or direct:RANGE[?port=7300&table=PATH] for calls straight"
    " to each service over the secure channel, at the address its id gives in RANGE"
    " (127.0.0.0/8 on one host). (local:, in-process, reaches no other process: the"
    " whole platform in one process is twistd txplatform.)",
]
DIRECT = [
    [
        "identity",
        None,
        None,
        "With --bus direct:..., this process's channel identity file (mode 0600, or"
        " env:NAME): make one with txplatform-channel keygen PATH --service NAME.",
    ],
    [
        "trust",
        None,
        None,
        "With --bus direct:..., the trust file: the keys of the peers accepted, each for"
        " its service.",
    ],
    [
        "event-bus",
        None,
        None,
        "With --bus direct:..., the bus that carries events (amqp://...); without one,"
        " publishing and subscribing fail.",
    ],
    [
        "direct-listen",
        None,
        None,
        "With --bus direct:..., listen on this endpoint instead of the service's derived"
        " address (replicas sharing a host; list them in the address table).",
    ],
    [
        "sidecar-socket",
        None,
        None,
        "With --bus direct:..., take calls from this replica's sidecar (twistd sidecar) on"
        " this UNIX socket (mode 0600) instead of ending the secure channels here.",
    ],
]
HEALTH_FILE = [
    "health-file",
    None,
    None,
    "Write the time (epoch seconds) to this file every 5 s while the process is"
    " healthy (its bus connected, its services started): for container health checks.",
]
METRICS = [
    "metrics",
    None,
    None,
    "Serve /healthz, /readyz (its bus connected, its services serving) and /metrics"
    " (Prometheus) on this endpoint, e.g. tcp:9100. Default: none.",
]
OTLP = [
    "otlp",
    None,
    None,
    "Record traces (OpenTelemetry spans of each operation, call, handler, transaction and"
    " event) and export them over OTLP/HTTP to this URL, e.g."
    " http://127.0.0.1:4318/v1/traces. Needs the otlp extra: pip install 'txplatform[otlp]'."
    " Default: no traces.",
]
DRAIN_TIMEOUT = [
    "drain-timeout",
    None,
    10.0,
    "On SIGTERM, seconds to finish the work in hand before handing it back to the bus.",
    float,
]

KEYS = [
    "keys",
    None,
    None,
    "This service's key file: its data at rest is encrypted with it. A path (mode 0600),"
    " or env:NAME for the file's JSON in an environment variable. Required; make one"
    " with: txplatform-keys init PATH --name SERVICE.",
]
BUS_KEYS = [
    "bus-keys",
    None,
    None,
    "The cluster's bus key file, the same for every process: every payload on the bus"
    " is encrypted with it. A path or env:NAME. Required; make one with:"
    " txplatform-keys init PATH --name bus --max-age 604800.",
]
KEY_RELOAD = [
    "key-reload",
    None,
    10.0,
    "Seconds between checks of the key files for changes (rotations), and with --bus"
    " direct:... of the trust file (keys removed are refused and their channels closed)"
    " and of the address table (?table=).",
    float,
]


def fromFile(options: usage.Options, name: str) -> None:
    """
    An option given as C{@PATH} takes its value from that file (its first
    line): how secrets such as passwords in URLs come from Docker or
    Kubernetes secret files rather than the command line.
    """
    value = options[name]
    if isinstance(value, str) and value.startswith("@"):
        try:
            with open(value[1:], encoding="utf-8") as f:
                options[name] = f.readline().strip()
        except OSError as e:
            raise usage.UsageError(f"--{name}: cannot read {value[1:]}: {e.strerror}") from None


def checkOTLP(options: usage.Options) -> None:
    """
    C{--otlp} is an http(s) URL, and the exporter it needs is installed.
    """
    url = options.get("otlp")
    if url is None:
        return
    if not url.startswith(("http://", "https://")):
        raise usage.UsageError(f"--otlp takes an http:// or https:// URL, not {url!r}")
    try:
        import opentelemetry.exporter.otlp.proto.http.trace_exporter  # noqa: F401
    except ImportError:
        raise usage.UsageError(
            "--otlp needs the OTLP exporter: pip install 'txplatform[otlp]'"
        ) from None


def checkEndpoints(options: usage.Options, *names: str, client: bool = False) -> None:
    """
    Each named option, where given, is an endpoint description Twisted can
    read (C{tcp:8080}, C{unix:PATH}, ...): a wrong one is refused here, with
    Twisted's reason, instead of failing once the process is up.  Read
    against a memory reactor: nothing listens or connects yet.

    @param client: The options name client endpoints (C{clientFromString}),
        not server ones.
    """
    from twisted.internet.endpoints import clientFromString, serverFromString
    from twisted.internet.testing import MemoryReactor

    parse = clientFromString if client else serverFromString
    for name in names:
        description = options.get(name)
        if description is None:
            continue
        try:
            parse(MemoryReactor(), description)
        except Exception as e:  # ValueError, TypeError, OSError (ssl: files): all say why
            example = "unix:/run/txplatform/post.sock" if client else "tcp:8080:interface=127.0.0.1"
            raise usage.UsageError(
                f"--{name}: {description!r} is not an endpoint ({e}), such as {example}"
            ) from None


def checkBus(options: usage.Options, serviceId: Any = None) -> None:
    """
    Check --bus, and for the direct transport its identity, trust and event
    bus: the identity must speak for C{serviceId}, this process's service.
    There is no default: a process of the gateway or of one service can
    only work with the others, and an in-process bus reaches none of them.
    """
    if options["bus"] is None:
        raise usage.UsageError(
            "--bus is required: this process works with the others through it"
            " (amqp://user:password@host:5672/ or direct:RANGE)"
        )
    fromFile(options, "bus")
    try:
        checkBusURL(options["bus"])
    except ValueError as e:
        raise usage.UsageError(f"--bus: {e}") from None
    if not options["bus"].startswith("direct:"):
        for name in ("identity", "trust", "event-bus", "direct-listen", "sidecar-socket"):
            if options.get(name) is not None:
                raise usage.UsageError(f"--{name} goes with --bus direct:...")
        return
    from txplatform.channel.identity import IdentityError, readIdentity, readTrust
    from txplatform.direct.addresses import AddressBook, AddressError, parseDirectURL

    for name in ("identity", "trust"):
        if options[name] is None:
            raise usage.UsageError(f"--{name} is required with --bus direct:...")
    if options.get("sidecar-socket") is not None and options.get("direct-listen") is not None:
        raise usage.UsageError("--sidecar-socket and --direct-listen: one or the other")
    checkEndpoints(options, "direct-listen")
    try:
        identity = readIdentity(options["identity"])
        readTrust(options["trust"])
    except IdentityError as e:
        raise usage.UsageError(str(e)) from None
    if serviceId is not None and identity.serviceId != serviceId:
        raise usage.UsageError(
            f"--identity: {options['identity']} speaks for service {identity.serviceId.hex},"
            f" this process is {serviceId.hex}"
        )
    try:
        network, port, table = parseDirectURL(options["bus"])
        AddressBook.withTableFile(network, port, table)
    except AddressError as e:
        raise usage.UsageError(f"--bus: {e}") from None
    if options["event-bus"] is not None:
        fromFile(options, "event-bus")
        if options["event-bus"].startswith("direct:"):
            raise usage.UsageError("--event-bus: events need a broker (amqp://...) or local:")
        try:
            checkBusURL(options["event-bus"])
        except ValueError as e:
            raise usage.UsageError(f"--event-bus: {e}") from None


def checkDatabase(options: usage.Options, name: str = "db") -> None:
    fromFile(options, name)
    url = options[name]
    if not url.startswith(("sqlite:", "postgresql://", "postgres://")):
        raise usage.UsageError(
            f"--{name}: {url!r} is not sqlite:PATH or postgresql://user@host:port/dbname"
        )


def checkKeys(options: usage.Options, service: str | None) -> None:
    """
    A production process refuses to start without its keys: the bus key
    file, and C{service}'s own unless it is C{None} (the gateway stores
    nothing).
    """
    from txplatform.crypto.keyfile import KeyFileError, readKeySource

    checkPositive(options, "key-reload")
    wanted = [("bus-keys", "bus")] + ([("keys", service)] if service is not None else [])
    for name, purpose in wanted:
        if options[name] is None:
            raise usage.UsageError(f"--{name} is required: the platform encrypts everything")
        try:
            keyFile = readKeySource(options[name])
        except KeyFileError as e:
            raise usage.UsageError(f"--{name}: {e}") from None
        if keyFile.name != purpose:
            raise usage.UsageError(
                f"--{name}: {options[name]} holds the keys of {keyFile.name!r}, not of {purpose!r}"
            )


def loadKeys(options: usage.Options, name: str, purpose: str, reactor: Any) -> Any:
    from txplatform.crypto.keyfile import KeyFileError
    from txplatform.crypto.keys import Keys

    try:
        return Keys(options[name], reactor, purpose, options["key-reload"])
    except KeyFileError as e:
        raise usage.UsageError(f"--{name}: {e}") from None


def makeBus(options: usage.Options, reactor: Any, caller: Any, name: str, keys: Any) -> Any:
    codec = keys.payloadCodec()
    if not options["bus"].startswith("direct:"):
        return busFromURL(options["bus"], reactor, caller=caller, name=name, codec=codec)
    from txplatform.channel.identity import TrustFileService, readIdentity, readTrust
    from txplatform.channel.protocol import ChannelSettings
    from txplatform.direct.addresses import AddressBook, AddressTableService, parseDirectURL
    from txplatform.direct.bus import DirectBus

    network, port, table = parseDirectURL(options["bus"])
    events = None
    if options["event-bus"] is not None:
        events = busFromURL(options["event-bus"], reactor, caller=caller, name=name, codec=codec)
    trust = readTrust(options["trust"])
    book = AddressBook.withTableFile(network, port, table)
    bus = DirectBus(
        reactor,
        ChannelSettings(readIdentity(options["identity"]), trust, reactor),
        book,
        codec=codec,
        events=events,
        listen=(
            f"unix:{options['sidecar-socket']}:mode=600"
            if options.get("sidecar-socket")
            else options.get("direct-listen")
        ),
        behindSidecar=bool(options.get("sidecar-socket")),
    )
    # Trust changes (a key added, or removed: its channels close) are taken
    # while running.
    TrustFileService(options["trust"], trust, options["key-reload"]).setServiceParent(bus)
    if table:
        # So is a changed address table (replicas moved or added).
        AddressTableService(table, book, options["key-reload"]).setServiceParent(bus)
    return bus


class OneLineUsage:
    """
    Options (mixed in before L{usage.Options}) whose mistakes, under twistd,
    end the process with the reason in one line on stderr and exit status
    1.  twistd itself prints its whole usage text above a L{UsageError
    <usage.UsageError>}, burying the reason.  Parsed on their own (a test,
    another program), the options raise L{usage.UsageError} as usual: only
    under a parent (twistd's own options) is the error the process's end.

    @cvar command: The command's name, as twistd lists it.
    """

    command: ClassVar[str]

    def parseOptions(self, options: list[str] | None = None) -> None:
        try:
            super().parseOptions(options)  # type: ignore[misc]
        except usage.UsageError as e:
            if getattr(self, "parent", None) is None:
                raise
            raise SystemExit(
                f"twistd {self.command}: {e} (twistd {self.command} --help lists the options)"
            ) from None


def catalogueRefusal(command: str, reason: str) -> SystemExit:
    """
    The end of a twistd command that cannot be put together from the
    installed services (two claim one name or id, one fails to load, a
    service chosen is not installed), while twistd parses its options: the
    reason in one line on stderr, exit status 1.  (Raised as a UsageError,
    twistd would print the whole usage text first, burying the reason.)

        raise catalogueRefusal("txplatform", str(error)) from None
    """
    return SystemExit(f"twistd {command}: {reason}")


def makeDeclared(declaration: Any, parts: ServiceParts) -> Any:
    """
    The service C{declaration} makes; a process stops with the reason, no
    traceback, if it cannot be made as declared.
    """
    from txplatform.catalogue import CatalogueError

    try:
        return declaration.make(parts)
    except CatalogueError as e:
        raise SystemExit(f"txplatform: {e}") from None


def makeDatabase(url: str, reactor: Any) -> Any:
    return databaseFromURL(url, reactor=reactor)


#: The service processes' flag (the all-in-one has its own wording).
LOG_CALLS = [
    "log-calls",
    None,
    "Log every call served, with its trace id (the request's X-Request-Id); by default only"
    " the calls that fail, the gateway logging every request.",
]


def serviceProcess(options: usage.Options, reactor: Any, declaration: Any, stores: bool) -> Any:
    """
    The services of a process running one service: its key files' watchers,
    the bus, the service the declaration makes, and a gate that ends the
    process if the service cannot start.

    @param stores: Whether the service keeps data: it then has a database
        (C{--db}) and a key file of its own (C{--keys}).
    """
    from twisted.application.service import Service

    from ._lifecycle import ReadinessGate, StopInOrder, addProbes, startTracing

    startTracing(options, reactor, declaration.name)
    top = StopInOrder()
    busKeys = loadKeys(options, "bus-keys", "bus", reactor)
    busKeys.service.setServiceParent(top)
    database = fields = None
    if stores:
        keys = loadKeys(options, "keys", declaration.name, reactor)
        keys.service.setServiceParent(top)
        fields = keys.fieldCodec()
    bus = makeBus(options, reactor, declaration.serviceId, declaration.name, busKeys)
    bus.drainTimeout = options["drain-timeout"]
    bus.setServiceParent(top)
    if stores:
        database = makeDatabase(options["db"], reactor)
    service = makeDeclared(declaration, ServiceParts(bus, reactor, options, database, fields))
    service.drainTimeout = options["drain-timeout"]
    service.logCalls = options["log-calls"]
    service.setServiceParent(top)
    ReadinessGate(reactor, [service], Service()).setServiceParent(top)
    if options["health-file"]:
        from ._lifecycle import HealthFile

        HealthFile(reactor, options["health-file"], bus, [service]).setServiceParent(top)
    addProbes(top, options, reactor, bus, [service])
    return top
