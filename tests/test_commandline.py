"""
Tests for L{txplatform.commandline}: what the command-line tools share.
"""

from __future__ import annotations

import io
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from txplatform.commandline import USAGE, OneLineParser, oneLine


class OneLineParserTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.stderr = io.StringIO()
        self.patch(sys, "stderr", self.stderr)
        self.parser = OneLineParser(prog="tool")
        commands = self.parser.add_subparsers(dest="command", required=True)
        sub = commands.add_parser("sub")
        sub.add_argument("--count", type=int, required=True)

    def test_error(self) -> None:
        """
        A mistake is one line on stderr, naming the (sub)command and where
        help is, and exit status 2; no usage text.
        """
        for argv, expected in [
            ([], "tool: the following arguments are required: command (see tool --help)"),
            (["sub"], "tool sub: the following arguments are required: --count"),
            (["sub", "--count", "x"], "tool sub: argument --count: invalid int value: 'x'"),
        ]:
            self.stderr.truncate(0)
            self.stderr.seek(0)
            error = self.assertRaises(SystemExit, self.parser.parse_args, argv)
            self.assertEqual(error.code, USAGE)
            [line] = self.stderr.getvalue().splitlines()
            self.assertTrue(line.startswith(expected), line)

    def test_help(self) -> None:
        """
        --help still shows the usage, and exits 0.
        """
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        error = self.assertRaises(SystemExit, self.parser.parse_args, ["sub", "--help"])
        self.assertEqual(error.code, 0)
        self.assertIn("usage: tool sub", out.getvalue())


class OneLineTests(SynchronousTestCase):
    def test_oneLine(self) -> None:
        """
        A message over several lines (libpq's) becomes one.
        """
        self.assertEqual(
            oneLine('FATAL:  database "x"\n  does not exist\n'),
            'FATAL: database "x" does not exist',
        )


class ReactWithStatusTests(SynchronousTestCase):
    def test_status(self) -> None:
        """
        The process exits with the status the command's Deferred fires
        with (Twisted's react would exit 0).
        """
        script = (
            "from twisted.internet.defer import succeed\n"
            "from txplatform.commandline import reactWithStatus\n"
            "reactWithStatus(lambda reactor, argv: succeed(int(argv[0])))\n"
        )
        for status in (0, 1, 2):
            result = subprocess.run(
                [sys.executable, "-c", script, str(status)], capture_output=True, timeout=60
            )
            self.assertEqual((result.returncode, result.stderr), (status, b""))
