# -*- test-case-name: tests.test_commandline -*-
"""
What the command-line tools (C{txplatform-keys}, C{txplatform-channel},
C{txplatform-deadletters}) share: a mistake is answered in one line on
stderr with a non-zero exit status, never with a usage screen or a
traceback.

Exit statuses: 0 done, 1 the operation failed, 2 the command line is wrong.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable, NoReturn, Sequence

__all__ = ["FAILED", "USAGE", "OneLineParser", "oneLine", "positive", "reactWithStatus"]

#: The operation failed (a file, the database, the broker said no).
FAILED = 1
#: The command line is wrong.
USAGE = 2


class OneLineParser(argparse.ArgumentParser):
    """
    An argument parser whose errors are one line: argparse prints its usage
    text first, which buries the reason (and wraps it over several lines).
    Its subcommands' parsers are of this class too.
    """

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE, f"{self.prog}: {oneLine(message)} (see {self.prog} --help)\n")


def oneLine(message: object) -> str:
    """
    C{message} on one line: drivers' errors (libpq's, say) span several.
    """
    return " ".join(str(message).split())


def reactWithStatus(
    command: Callable[[Any, Sequence[str]], Any], argv: Sequence[str] | None = None
) -> NoReturn:
    """
    Run C{command(reactor, argv)}, whose Deferred fires with an exit
    status, and exit with that status.  (L{twisted.internet.task.react}
    exits 0 whatever the result is, unless it is a C{SystemExit}.)
    """
    from twisted.internet.task import react

    arguments = list(sys.argv[1:] if argv is None else argv)

    def run(reactor: Any) -> Any:
        def exit(status: int | None) -> None:
            raise SystemExit(status or 0)

        return command(reactor, arguments).addCallback(exit)

    react(run)


def positive(kind: type, what: str = "a positive number") -> Any:
    """
    An argparse C{type} taking a number of C{kind} above zero; anything
    else is refused as C{what}.
    """

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = 0
        if not value > 0:
            raise argparse.ArgumentTypeError(f"{what}, not {text!r}")
        return value

    return parse
