"""
Tests for L{txplatform.keychecks} and what uses it: a service refuses keys
its data was not written with, a reload refuses a changed secret, and the
all-in-one never makes keys for data that exists.
"""

from __future__ import annotations

import base64
import json
import os

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from txplatform.crypto.keyfile import newKeyFile, writeKeyFile
from txplatform.keychecks import KeyMismatch
from txplatform.testing import ServiceHarness


def changeSecret(path: str, version: int = 1) -> None:
    with open(path) as f:
        data = json.load(f)
    for entry in data["versions"]:
        if entry["version"] == version:
            entry["secret"] = base64.b64encode(os.urandom(32)).decode()
    os.chmod(path, 0o600)
    with open(path, "w") as f:
        json.dump(data, f)


class KeyCheckTests(SynchronousTestCase):
    def test_refusedAtStart(self) -> None:
        """
        A service started with a key file whose version 1 is not the one
        its data was written with (made anew, or its secret changed)
        refuses to start, saying why; with the right keys it starts.
        """
        directory = self.mktemp()
        harness = ServiceHarness(directory, encrypted=True)
        harness.startService("notify")
        harness.stop()
        keys = os.path.join(os.path.abspath(directory), "keys", "notify.json")
        writeKeyFile(keys, newKeyFile("notify"))  # made anew
        again = ServiceHarness(directory, encrypted=True)
        self.addCleanup(again.stop)
        error = self.assertRaises(KeyMismatch, again.startService, "notify")
        self.assertIn("not those its data was written with (version 1 differs)", str(error))
        self.flushLoggedErrors(KeyMismatch)

    def test_newVersionsRecorded(self) -> None:
        """
        Versions the database has not seen are recorded; those it has must
        match.
        """
        harness = ServiceHarness(self.mktemp(), encrypted=True)
        self.addCleanup(harness.stop)
        service = harness.startService("notify")
        added = harness.run(service.keyChecks.verify({1: service.fields.checkValues()[1], 2: b"x"}))
        self.assertEqual(added, [2])
        self.assertRaises(KeyMismatch, harness.run, service.keyChecks.verify({2: b"y"}))


class ReloadTests(SynchronousTestCase):
    def test_changedSecretRefused(self) -> None:
        """
        A key file whose existing version's secret changed is not taken on
        reload: the keys in use stay.
        """
        from twisted.internet.task import Clock

        from txplatform.crypto.keys import Keys

        path = os.path.abspath(os.path.join(self.mktemp(), "post.json"))
        writeKeyFile(path, newKeyFile("post"))
        keys = Keys(path, Clock(), "post")
        before = keys.keyring.checkValue(1)
        changeSecret(path)
        self.assertFalse(keys.service.check(force=True))
        self.assertEqual(keys.keyring.checkValue(1), before)


class AllInOneTests(SynchronousTestCase):
    def test_noKeysForExistingData(self) -> None:
        """
        The all-in-one makes key files on first start, but never for a
        service whose database already exists: it says so and stops.
        """
        from txplatform_plugins import allinone

        dataDir = os.path.abspath(self.mktemp())
        allinone.Options().parseOptions(["--data-dir", dataDir])
        with open(os.path.join(dataDir, "account.sqlite"), "wb") as f:
            f.write(b"SQLite format 3\0")
        os.unlink(os.path.join(dataDir, "keys", "account.json"))
        error = self.assertRaises(
            usage.UsageError, allinone.Options().parseOptions, ["--data-dir", dataDir]
        )
        self.assertIn("account.json is missing, but", str(error))
        self.assertFalse(os.path.exists(os.path.join(dataDir, "keys", "account.json")))
