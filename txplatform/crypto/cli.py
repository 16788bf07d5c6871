# -*- test-case-name: tests.crypto.test_cli -*-
"""
C{txplatform-keys}: make, rotate and retire key files, and move stored data
to the newest key.

    txplatform-keys init PATH --name account          # a new key file
    txplatform-keys rotate PATH --activate-in 60      # a new master version
    txplatform-keys reencrypt --service account --keys PATH --db URL
    txplatform-keys status PATH [--service account --db URL]
    txplatform-keys retire PATH --below 2 --service account --db URL
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, Sequence, TextIO

from twisted.internet.defer import inlineCallbacks

from ..commandline import FAILED, USAGE, OneLineParser, oneLine, positive, reactWithStatus
from .keyfile import KeyFile, KeyFileError, newKeyFile, readKeySource, writeKeyFile

__all__ = ["main", "run"]


class _UsageError(Exception):
    """
    A mistake on the command line found after parsing it (exit status 2).
    """


def _keyName(name: str) -> str:
    """
    What C{init --name} takes: C{bus}, or an installed service that stores
    data (the only key files anything reads; see docs/security.md), for
    argparse.  A key file under another name would be refused by every
    process it is given to.
    """
    if name == "bus":
        return name
    return _storingService(name, "is neither bus nor an installed service that stores data")


def _databaseURL(url: str) -> str:
    # The scheme here, and that a SQLite file exists (opening one that does
    # not would make an empty database, and report on that): opening the
    # database is the command's work.
    if not url.startswith(("sqlite:", "postgresql://", "postgres://")):
        raise argparse.ArgumentTypeError(
            f"{url!r} is not sqlite:PATH or postgresql://user@host:port/dbname"
        )
    if url.startswith("sqlite:"):
        path = url[len("sqlite:") :]
        if path != ":memory:" and not os.path.isfile(path):
            raise argparse.ArgumentTypeError(f"{url!r}: no database file at {path!r}")
    return url


def _storingService(
    name: str, refusal: str = "is not an installed service that stores data"
) -> str:
    """
    The name of an installed service that stores data (and so has a key
    file of its own), for argparse; otherwise C{refusal}, and the names.
    """
    from ..catalogue import CatalogueError, installedServices

    try:
        catalogue = installedServices()
    except CatalogueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if name not in catalogue or not catalogue.get(name).stores():
        storing = ", ".join(d.name for d in catalogue if d.stores()) or "none"
        raise argparse.ArgumentTypeError(f"{name!r} {refusal} ({storing})")
    return name


def _serviceClass(name: str) -> Any:
    from ..catalogue import installedServices

    return installedServices().get(name).serviceClass()


def _databaseErrors() -> tuple[type[BaseException], ...]:
    import sqlite3

    import psycopg

    from ..database import DatabaseUnavailable

    return (sqlite3.Error, psycopg.Error, DatabaseUnavailable)


def parser() -> argparse.ArgumentParser:
    top = OneLineParser(
        prog="txplatform-keys", description="Key files: make, rotate, re-encrypt, retire."
    )
    commands = top.add_subparsers(dest="command", required=True)

    init = commands.add_parser("init", help="write a new key file (mode 0600)")
    init.add_argument("path")
    init.add_argument(
        "--name",
        required=True,
        type=_keyName,
        help="bus, or the name of the service whose data the keys encrypt",
    )
    init.add_argument(
        "--period", type=positive(float), default=3600.0, help="epoch length, seconds"
    )
    init.add_argument(
        "--max-age",
        type=positive(float),
        default=None,
        help="refuse data from epochs older than this (seconds); for the bus keys",
    )

    rotate = commands.add_parser("rotate", help="add a new master version")
    rotate.add_argument("path")
    rotate.add_argument(
        "--activate-in",
        type=float,
        default=60.0,
        help="seconds until replicas encrypt with it: longer than they take to see the file",
    )

    status = commands.add_parser("status", help="the versions, and what the data is under")
    status.add_argument("path")
    status.add_argument("--service", type=_storingService)
    status.add_argument("--db", type=_databaseURL)

    reencrypt = commands.add_parser(
        "reencrypt", help="rewrite stored rows under the current version (resumable)"
    )
    reencrypt.add_argument("--service", type=_storingService, required=True)
    reencrypt.add_argument("--keys", required=True, help="the service's key file")
    reencrypt.add_argument("--db", required=True, type=_databaseURL)
    reencrypt.add_argument("--batch", type=positive(int), default=200)

    retire = commands.add_parser("retire", help="delete the versions below a version")
    retire.add_argument("path")
    retire.add_argument("--below", type=int, required=True)
    retire.add_argument("--service", type=_storingService)
    retire.add_argument(
        "--db", type=_databaseURL, help="check first that no stored data needs them"
    )
    retire.add_argument("--force", action="store_true", help="retire without checking the database")
    return top


@inlineCallbacks
def _withDatabase(reactor: Any, url: str, work: Any) -> Any:
    from ..database import databaseFromURL

    try:
        database = databaseFromURL(url, reactor=reactor)
    except ValueError as e:
        raise _UsageError(f"--db: {e}") from None
    database.start()
    try:
        result = yield work(database)
    finally:
        yield database.close()
    return result


def _codec(source: str, service: str, reactor: Any) -> Any:
    from .codecs import SealedFieldCodec
    from .keyfile import keyringFromSource
    from .sealing import Sealer

    return SealedFieldCodec(Sealer(keyringFromSource(source, reactor, service)))


@inlineCallbacks
def run(reactor: Any, argv: Sequence[str], out: TextIO = sys.stdout) -> Any:
    """
    Run one command; fires with the exit status.
    """
    try:
        options = parser().parse_args(argv)
    except SystemExit as e:
        return e.code
    try:
        if options.command == "init":
            if os.path.exists(options.path):
                raise KeyFileError(f"{options.path} exists: a key file is never overwritten")
            _write(options.path, newKeyFile(options.name, options.period, options.max_age))
            print(f"wrote {options.path}: keys of {options.name!r}, version 1", file=out)
        elif options.command == "rotate":
            keyFile = readKeySource(options.path)
            activatesAt = time.time() + options.activate_in
            rotated = keyFile.rotated(activatesAt)
            _write(options.path, rotated)
            newest = rotated.versions[-1].version
            print(
                f"{options.path}: version {newest} added; replicas encrypt with it from"
                f" {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(activatesAt))}"
                f" (in {options.activate_in:g}s); then run reencrypt",
                file=out,
            )
        elif options.command == "status":
            yield _status(reactor, options, out)
        elif options.command == "reencrypt":
            return (yield _reencrypt(reactor, options, out))
        elif options.command == "retire":
            return (yield _retire(reactor, options, out))
    except _UsageError as e:
        print(f"txplatform-keys: {e}", file=sys.stderr)
        return USAGE
    except KeyFileError as e:
        print(f"txplatform-keys: {e}", file=sys.stderr)
        return FAILED
    except _databaseErrors() as e:
        print(f"txplatform-keys: the database: {oneLine(e)}", file=sys.stderr)
        return FAILED
    except OSError as e:
        # Opening an SQLite file whose directory cannot be made, say.
        print(f"txplatform-keys: {e}", file=sys.stderr)
        return FAILED
    return 0


def _write(path: str, keyFile: KeyFile) -> None:
    try:
        writeKeyFile(path, keyFile)
    except OSError as e:
        raise KeyFileError(f"cannot write the key file {path}: {e.strerror or e}") from None


def _needsDatabase(options: Any) -> bool:
    if (options.db is None) != (options.service is None):
        raise KeyFileError("--service and --db go together")
    return options.db is not None


@inlineCallbacks
def _status(reactor: Any, options: Any, out: TextIO) -> Any:
    keyFile = readKeySource(options.path)
    keyring = keyFile.keyring(reactor)
    print(
        f"keys of {keyFile.name!r}: period {keyFile.period:g}s, current version"
        f" {keyring.currentVersion()}, readable {keyring.versions}",
        file=out,
    )
    for master in keyFile.versions:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(master.activatesAt))
        print(f"  version {master.version}: active from {when}", file=out)
    if _needsDatabase(options):
        counts = yield _counts(reactor, options.path, options.service, options.db)
        for table, byVersion in counts.items():
            ordered = sorted(byVersion.items(), key=lambda kv: (kv[0] is None, kv[0] or 0))
            shown = ", ".join(f"v{v}: {n}" for v, n in ordered)
            print(f"  {table}: {shown or 'empty'}", file=out)


def _counts(reactor: Any, source: str, service: str, url: str) -> Any:
    from .reencrypt import versionCounts

    codec = _codec(source, service, reactor)
    tables = _serviceClass(service).sealedTables()
    return _withDatabase(reactor, url, lambda db: versionCounts(db, codec, tables))


@inlineCallbacks
def _reencrypt(reactor: Any, options: Any, out: TextIO) -> Any:
    from .reencrypt import Reencryption

    codec = _codec(options.keys, options.service, reactor)
    tables = _serviceClass(options.service).sealedTables()

    def report(progress: Any) -> None:
        print(
            f"{progress.table}: {progress.seen}/{progress.total} rows read,"
            f" {progress.rewritten} rewritten, {progress.unreadable} unreadable"
            + (" (done)" if progress.complete else ""),
            file=out,
            flush=True,
        )

    def work(database: Any) -> Any:
        return Reencryption(database, codec, tables, options.batch, report).run()

    results = yield _withDatabase(reactor, options.db, work)
    unreadable = sum(p.unreadable for p in results)
    changed = sum(p.changed for p in results)
    print(
        f"moved to version {codec.keyring.currentVersion()}:"
        f" {sum(p.rewritten for p in results)} rows rewritten, {unreadable} unreadable",
        file=out,
    )
    if changed:
        print(f"{changed} rows changed while being rewritten: run reencrypt again", file=out)
        return 3
    return 2 if unreadable else 0


@inlineCallbacks
def _retire(reactor: Any, options: Any, out: TextIO) -> Any:
    keyFile = readKeySource(options.path)
    if _needsDatabase(options):
        counts = yield _counts(reactor, options.path, options.service, options.db)
        left = {
            table: n
            for table, byVersion in counts.items()
            if (n := sum(c for v, c in byVersion.items() if v is not None and v < options.below))
        }
        if left:
            raise KeyFileError(
                f"rows still need versions below {options.below}: {left}; run reencrypt first"
            )
    elif not options.force:
        raise KeyFileError(
            "give --service and --db to check that no stored data needs the versions"
            " retired (or --force)"
        )
    retired = keyFile.retired(options.below)
    _write(options.path, retired)
    print(
        f"{options.path}: versions below {options.below} retired; kept"
        f" {[m.version for m in retired.versions]}",
        file=out,
    )
    return 0


def main() -> None:
    reactWithStatus(run)
