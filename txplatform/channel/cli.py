# -*- test-case-name: tests.channel.test_cli -*-
"""
C{txplatform-channel}: identity keys for the secure channel, and the trust
file that lists the keys accepted.

    txplatform-channel keygen PATH --service post [--trust TRUST]  # 0600
    txplatform-channel trust TRUST --service post --key BASE64
    txplatform-channel show PATH                                  # public
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Sequence, TextIO

from ..commandline import FAILED, OneLineParser
from ..serviceid import ServiceId
from .identity import (
    Identity,
    IdentityError,
    Peer,
    TrustStore,
    decodeKey,
    encodeKey,
    readIdentity,
    readTrust,
    writeIdentity,
    writeTrust,
)

__all__ = ["main", "run"]


def serviceIdFrom(text: str) -> ServiceId:
    """
    A service id from its six hex digits or the name of one of the
    installed services.
    """
    try:
        return ServiceId.fromHex(text)
    except ValueError:
        pass
    from txplatform.catalogue import CatalogueError, installedServices
    from txplatform.serviceid import UnknownService

    try:
        catalogue = installedServices()
        return catalogue.registry().idFor(text)
    except CatalogueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    except (UnknownService, ValueError):
        names = ", ".join([*catalogue.names(), "gateway"])
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither six hex digits nor an installed service ({names})"
        ) from None


def parser() -> argparse.ArgumentParser:
    top = OneLineParser(
        prog="txplatform-channel", description="Identity keys and trust for the secure channel."
    )
    commands = top.add_subparsers(dest="command", required=True)

    keygen = commands.add_parser("keygen", help="write a new identity file (mode 0600)")
    keygen.add_argument("path")
    keygen.add_argument("--service", required=True, type=serviceIdFrom, help="name or hex id")
    keygen.add_argument("--trust", help="also add its public key to this trust file")
    keygen.add_argument("--comment", default="", help="for the trust file's entry")

    trust = commands.add_parser("trust", help="add a public key to a trust file")
    trust.add_argument("path")
    trust.add_argument("--service", required=True, type=serviceIdFrom, help="name or hex id")
    trust.add_argument("--key", required=True, help="the public key, base64")
    trust.add_argument("--comment", default="")

    show = commands.add_parser("show", help="print an identity's service and public key")
    show.add_argument("path")
    return top


def _trustFile(path: str) -> TrustStore:
    return readTrust(path) if os.path.exists(path) else TrustStore()


def _addTrusted(path: str, store: TrustStore, peer: Peer) -> None:
    if store.allows(peer.key, peer.serviceId):
        return
    store.add(peer)
    _writing("trust file", path, writeTrust, store)


def _writing(what: str, path: str, write: Any, contents: Any) -> None:
    # The OSError names the temporary file written first: name the file.
    try:
        write(path, contents)
    except OSError as e:
        raise IdentityError(f"cannot write the {what} {path}: {e.strerror or e}") from None


def run(argv: Sequence[str], out: TextIO = sys.stdout) -> int:
    """
    Run one command; returns the exit status.
    """
    try:
        options = parser().parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    try:
        if options.command == "keygen":
            if os.path.exists(options.path):
                raise IdentityError(f"{options.path} exists: an identity is never overwritten")
            # Read first: a trust file we cannot use stops us before an
            # identity nobody trusts is written.
            store = _trustFile(options.trust) if options.trust else None
            identity = Identity.generate(options.service)
            _writing("identity file", options.path, writeIdentity, identity)
            if store is not None:
                peer = Peer(options.service, identity.public, options.comment)
                try:
                    _addTrusted(options.trust, store, peer)
                except IdentityError:
                    # Nothing half done: an identity nobody trusts would
                    # only be refused, and would stop the next try.
                    os.remove(options.path)
                    raise
            print(
                f"wrote {options.path}: service {identity.serviceId.hex},"
                f" public key {encodeKey(identity.public)}",
                file=out,
            )
            if store is not None:
                print(f"{options.trust}: trusts it for {options.service.hex}", file=out)
        elif options.command == "trust":
            key = decodeKey(options.key, "--key")
            peer = Peer(options.service, key, options.comment)
            _addTrusted(options.path, _trustFile(options.path), peer)
            print(f"{options.path}: trusts {options.key} for {options.service.hex}", file=out)
        else:
            identity = readIdentity(options.path)
            print(f"service {identity.serviceId.hex}", file=out)
            print(f"public key {encodeKey(identity.public)}", file=out)
    except (IdentityError, OSError) as e:
        print(f"txplatform-channel: {e}", file=sys.stderr)
        return FAILED
    return 0


def main() -> None:
    sys.exit(run(sys.argv[1:]))
