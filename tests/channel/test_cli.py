"""
Tests for L{txplatform.channel.cli}: C{txplatform-channel}.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from txplatform.catalogue import installedServices
from txplatform.channel.cli import run
from txplatform.channel.identity import encodeKey, readIdentity, readTrust

KEY = encodeKey(bytes(range(32)))


class CommandTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.stderr = io.StringIO()
        self.patch(sys, "stderr", self.stderr)
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)

    def path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    def command(self, *argv: str) -> tuple[int, str]:
        out = io.StringIO()
        return run(list(argv), out), out.getvalue()

    def errors(self) -> list[str]:
        return self.stderr.getvalue().splitlines()

    def notText(self, name: str) -> str:
        path = self.path(name)
        with open(path, "wb") as f:
            f.write(b"\xff\xfe\x00")
        os.chmod(path, 0o600)
        return path

    def test_keygenTrustShow(self) -> None:
        """
        keygen writes an identity and adds it to a trust file; show prints
        its service and public key.
        """
        identity, trust = self.path("post.json"), self.path("trust.json")
        status, out = self.command("keygen", identity, "--service", "post", "--trust", trust)
        self.assertEqual((status, self.errors()), (0, []))
        written = readIdentity(identity)
        self.assertTrue(readTrust(trust).allows(written.public, written.serviceId))
        status, out = self.command("show", identity)
        self.assertEqual(status, 0)
        self.assertIn(f"public key {encodeKey(written.public)}", out)

    def test_usage(self) -> None:
        """
        No command, an unknown one, or a service that is neither hex nor
        installed: exit status 2, one line each, the last naming the
        installed services.
        """
        for argv in [[], ["bogus"], ["keygen", self.path("x.json"), "--service", "nosuch"]]:
            self.assertEqual(self.command(*argv), (2, ""))
        names = ", ".join([*installedServices().names(), "gateway"])
        self.assertEqual(
            self.errors(),
            [
                "txplatform-channel: the following arguments are required: command"
                " (see txplatform-channel --help)",
                "txplatform-channel: argument command: invalid choice: 'bogus' (choose from"
                " 'keygen', 'trust', 'show') (see txplatform-channel --help)",
                "txplatform-channel keygen: argument --service: 'nosuch' is neither six hex"
                f" digits nor an installed service ({names}) (see txplatform-channel keygen"
                " --help)",
            ],
        )
        self.assertFalse(os.path.exists(self.path("x.json")))

    def test_trustNotText(self) -> None:
        """
        A trust file that is not UTF-8 text: exit status 1, one line.
        """
        path = self.notText("trust.json")
        self.assertEqual(self.command("trust", path, "--service", "post", "--key", KEY), (1, ""))
        self.assertEqual(
            self.errors(),
            [f"txplatform-channel: the trust file {path} is not UTF-8 text"],
        )

    def test_identityNotText(self) -> None:
        """
        An identity file that is not UTF-8 text: exit status 1, one line.
        """
        path = self.notText("post.json")
        self.assertEqual(self.command("show", path), (1, ""))
        self.assertEqual(
            self.errors(),
            [f"txplatform-channel: the identity file {path} is not UTF-8 text"],
        )

    def test_keygenUnusableTrust(self) -> None:
        """
        keygen with a trust file it cannot read writes no identity (one
        that nothing would trust).
        """
        identity, trust = self.path("post.json"), self.notText("trust.json")
        status, _ = self.command("keygen", identity, "--service", "post", "--trust", trust)
        self.assertEqual(status, 1)
        self.assertEqual(len(self.errors()), 1)
        self.assertFalse(os.path.exists(identity))

    def test_keygenTrustNotWritten(self) -> None:
        """
        keygen whose trust file cannot be written leaves no identity behind
        (the same command works once the trust file can be written).
        """
        identity = self.path("post.json")
        trust = os.path.join(self.path("missing"), "trust.json")
        status, out = self.command("keygen", identity, "--service", "post", "--trust", trust)
        self.assertEqual((status, out), (1, ""))
        [error] = self.errors()
        self.assertTrue(
            error.startswith(f"txplatform-channel: cannot write the trust file {trust}")
        )
        self.assertFalse(os.path.exists(identity))
        os.makedirs(self.path("missing"))
        status, _ = self.command("keygen", identity, "--service", "post", "--trust", trust)
        self.assertEqual(status, 0)

    def test_cannotWrite(self) -> None:
        """
        A file that cannot be written is named in one line, exit status 1.
        """
        blocker = self.path("a-file")
        with open(blocker, "w") as f:
            f.write("not a directory")
        identity, trust = os.path.join(blocker, "post.json"), os.path.join(blocker, "trust.json")
        self.assertEqual(self.command("keygen", identity, "--service", "post")[0], 1)
        self.assertEqual(self.command("trust", trust, "--service", "post", "--key", KEY)[0], 1)
        [first, second] = self.errors()
        self.assertTrue(
            first.startswith(f"txplatform-channel: cannot write the identity file {identity}: ")
        )
        self.assertTrue(
            second.startswith(f"txplatform-channel: cannot write the trust file {trust}: ")
        )


class MainTests(SynchronousTestCase):
    """
    C{txplatform-channel} run as a process.
    """

    def channel(self, *argv: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-c", "from txplatform.channel.cli import main; main()", *argv],
            capture_output=True,
            text=True,
            timeout=60,
        )

    def test_statuses(self) -> None:
        """
        Exit status 2 for the command line, 1 for what failed; one line on
        stderr, never a traceback.
        """
        missing = os.path.abspath(self.mktemp())
        for argv, status in [([], 2), (["show"], 2), (["show", missing], 1)]:
            result = self.channel(*argv)
            self.assertEqual((result.returncode, result.stdout), (status, ""), argv)
            self.assertEqual(len(result.stderr.splitlines()), 1, result.stderr)
