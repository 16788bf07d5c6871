"""
Tests for L{txplatform.crypto.keyfile}.
"""

from __future__ import annotations

import os
import stat

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from txplatform.crypto.keyfile import (
    KeyFile,
    KeyFileError,
    KeyringService,
    ensureKeyFile,
    keyringFromSource,
    newKeyFile,
    readKeySource,
    writeKeyFile,
)


class KeyFileTests(SynchronousTestCase):
    def path(self) -> str:
        directory = self.mktemp()
        os.makedirs(directory)
        return os.path.join(directory, "keys.json")

    def test_ensureCreatesPrivateFile(self) -> None:
        """
        On first start the embedded mode creates a key file only its owner
        can read; the second start reads the same keys.
        """
        path = self.path()
        first = ensureKeyFile(path, "account", period=5)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        second = ensureKeyFile(path, "account")
        self.assertEqual(first.versions, second.versions)
        self.assertEqual(second.period, 5)
        self.assertEqual(len(first.versions[0].secret), 32)

    def test_roundTrip(self) -> None:
        path = self.path()
        keyFile = newKeyFile("bus", period=7, maxAge=86400).rotated(activatesAt=123.0)
        writeKeyFile(path, keyFile)
        read = readKeySource(path)
        self.assertEqual(read.name, "bus")
        self.assertEqual(read.versions, keyFile.versions)
        self.assertEqual((read.period, read.maxAge), (7, 86400))
        self.assertEqual([m.version for m in read.versions], [1, 2])
        self.assertEqual(read.versions[1].activatesAt, 123.0)

    def test_notThroughLinks(self) -> None:
        """
        A key file is written to a file of its own: a link planted where it
        goes is replaced, not followed, and nothing is left beside it.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        elsewhere = os.path.join(directory, "elsewhere")
        with open(elsewhere, "w") as f:
            f.write("untouched")
        path = os.path.join(directory, "account.json")
        os.symlink(elsewhere, path)
        writeKeyFile(path, newKeyFile("account"))
        self.assertFalse(os.path.islink(path))
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        with open(elsewhere) as f:
            self.assertEqual(f.read(), "untouched")
        self.assertEqual(sorted(os.listdir(directory)), ["account.json", "elsewhere"])

    def test_readableByOthers(self) -> None:
        """
        A key file others can read is refused, saying how to fix it.
        """
        path = self.path()
        writeKeyFile(path, newKeyFile("account"))
        os.chmod(path, 0o644)
        error = self.assertRaises(KeyFileError, readKeySource, path)
        self.assertIn("chmod 600", str(error))

    def test_missing(self) -> None:
        error = self.assertRaises(KeyFileError, readKeySource, "/nonexistent/keys.json")
        self.assertIn("cannot read the key file /nonexistent/keys.json", str(error))

    def test_notAKeyFile(self) -> None:
        for text, words in [
            ("nope", "not JSON"),
            ("{}", "not a key file"),
            ('{"format": "txplatform-keys/1", "name": "x"}', "KeyError"),
            (
                '{"format": "txplatform-keys/1", "name": "x", "versions":'
                ' [{"version": 1, "secret": "c2hvcnQ="}]}',
                "32 bytes",
            ),
        ]:
            error = self.assertRaises(KeyFileError, KeyFile.fromJSON, text, "f")
            self.assertIn(words, str(error))

    def test_environment(self) -> None:
        """
        env:NAME reads the key file's JSON from the environment.
        """
        self.patch(os, "environ", {"KEYS": newKeyFile("post").toJSON()})
        self.assertEqual(keyringFromSource("env:KEYS", Clock(), "post").name, "post")
        error = self.assertRaises(KeyFileError, readKeySource, "env:OTHER")
        self.assertIn("OTHER is not set", str(error))

    def test_wrongPurpose(self) -> None:
        path = self.path()
        writeKeyFile(path, newKeyFile("post"))
        error = self.assertRaises(KeyFileError, keyringFromSource, path, Clock(), "account")
        self.assertIn("holds the keys of 'post', not of 'account'", str(error))

    def test_retired(self) -> None:
        keyFile = newKeyFile("account").rotated(0).rotated(0).retired(3)
        self.assertEqual([m.version for m in keyFile.versions], [3])
        self.assertEqual(keyFile.minDecryptVersion, 3)
        self.assertRaises(KeyFileError, newKeyFile("account").retired, 5)


class KeyringServiceTests(SynchronousTestCase):
    def test_reloadOnChange(self) -> None:
        """
        When the key file changes, the running keyring takes the new
        versions on the next check, and the change callback runs.
        """
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, "keys.json")
        keyFile = newKeyFile("account")
        writeKeyFile(path, keyFile)
        clock = Clock()
        ring = keyFile.keyring(clock)
        changes = []
        service = KeyringService(path, ring, clock, onChange=lambda: changes.append(1))
        self.assertFalse(service.check())
        writeKeyFile(path, keyFile.rotated(0))
        self.assertTrue(service.check())
        self.assertEqual(ring.versions, [2, 1])
        self.assertEqual(changes, [1])
        self.assertFalse(service.check())

    def test_badFileKeepsKeys(self) -> None:
        """
        A broken key file is logged and the keys in use are kept.
        """
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, "keys.json")
        keyFile = newKeyFile("account")
        writeKeyFile(path, keyFile)
        ring = keyFile.keyring(Clock())
        service = KeyringService(path, ring, Clock())
        with open(path, "w") as f:
            f.write("garbage")
        self.assertFalse(service.check())
        self.assertEqual(ring.versions, [1])
        self.assertEqual(len(self.flushLoggedErrors()), 0)
