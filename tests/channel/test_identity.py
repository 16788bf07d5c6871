"""
Tests for L{txplatform.channel.identity} and C{txplatform-channel}.
"""

from __future__ import annotations

import io
import json
import os
import stat

from twisted.trial.unittest import SynchronousTestCase

from txplatform.channel.cli import run
from txplatform.channel.identity import (
    Identity,
    IdentityError,
    Peer,
    TrustFileService,
    TrustStore,
    decodeKey,
    readIdentity,
    readTrust,
    writeIdentity,
    writeTrust,
)
from txplatform.serviceid import ServiceId

POST = ServiceId.fromHex("010002")
ACCOUNT = ServiceId.fromHex("010001")


class IdentityFileTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = self.mktemp()
        os.makedirs(self.directory)

    def path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    def test_roundTrip(self) -> None:
        """
        An identity written is read back with the same key and service,
        from a file only its owner can read.
        """
        identity = Identity.generate(POST)
        writeIdentity(self.path("post.json"), identity)
        self.assertEqual(stat.S_IMODE(os.stat(self.path("post.json")).st_mode), 0o600)
        again = readIdentity(self.path("post.json"))
        self.assertEqual(again.serviceId, POST)
        self.assertEqual(again.public, identity.public)

    def test_readableByOthers(self) -> None:
        """
        An identity file that others can read is refused.
        """
        writeIdentity(self.path("post.json"), Identity.generate(POST))
        os.chmod(self.path("post.json"), 0o644)
        error = self.assertRaises(IdentityError, readIdentity, self.path("post.json"))
        self.assertIn("readable by others", str(error))

    def test_environment(self) -> None:
        """
        C{env:NAME} reads the identity from the environment.
        """
        identity = Identity.generate(POST)
        self.patch(os, "environ", {"POST_IDENTITY": identity.toJSON()})
        self.assertEqual(readIdentity("env:POST_IDENTITY").public, identity.public)
        self.assertRaises(IdentityError, readIdentity, "env:MISSING")

    def test_malformed(self) -> None:
        """
        Files that are not identities say what is wrong.
        """
        for text, message in [
            ("not json", "is not JSON"),
            ('{"format": "other"}', "is not an identity file"),
            (
                '{"format": "txplatform-identity/1", "service": "xyz", "private": "'
                + "A" * 43
                + '="}',
                "six hex digits",
            ),
            ('{"format": "txplatform-identity/1", "service": "010002", "private": "abc"}', "32"),
        ]:
            error = self.assertRaises(IdentityError, Identity.fromJSON, text, "f.json")
            self.assertIn(message, str(error))


class TrustStoreTests(SynchronousTestCase):
    def test_keyPerService(self) -> None:
        """
        A key is trusted for the services listed with it, and no other.
        """
        key = Identity.generate(POST).public
        store = TrustStore([Peer(POST, key)])
        self.assertTrue(store.allows(key, POST))
        self.assertFalse(store.allows(key, ACCOUNT))
        self.assertFalse(store.allows(bytes(32), POST))
        store.add(Peer(ACCOUNT, key))
        self.assertEqual(store.servicesOf(key), {POST, ACCOUNT})

    def test_roundTrip(self) -> None:
        key = Identity.generate(POST).public
        store = TrustStore([Peer(POST, key, "post 1")])
        again = TrustStore.fromJSON(store.toJSON(), "t.json")
        self.assertEqual(again.peers, [Peer(POST, key, "post 1")])

    def test_malformed(self) -> None:
        for text, message in [
            ("[]", "is not a trust file"),
            ('{"format": "txplatform-trust/1", "peers": {}}', "'peers' is a list"),
            ('{"format": "txplatform-trust/1", "peers": [1]}', "peer 0 is not an object"),
            (
                '{"format": "txplatform-trust/1", "peers": [{"service": "010002", "key": "x"}]}',
                "peer 0: a key is 32 bytes",
            ),
        ]:
            error = self.assertRaises(IdentityError, TrustStore.fromJSON, text, "t.json")
            self.assertIn(message, str(error))


class TrustFileServiceTests(SynchronousTestCase):
    def test_reload(self) -> None:
        """
        A changed trust file replaces the store's peers and tells its
        watchers; an unchanged one does nothing; a broken one keeps the
        trust in use.
        """
        path = self.mktemp()
        first, second = Identity.generate(POST).public, Identity.generate(POST).public
        writeTrust(path, TrustStore([Peer(POST, first)]))
        store = readTrust(path)
        changes: list[int] = []
        stop = store.watch(lambda: changes.append(len(store.peers)))
        service = TrustFileService(path, store)
        self.assertFalse(service.check())
        writeTrust(path, TrustStore([Peer(POST, second), Peer(ACCOUNT, second)]))
        self.assertTrue(service.check())
        self.assertEqual(changes, [2])
        self.assertFalse(store.allows(first, POST))
        self.assertTrue(store.allows(second, ACCOUNT))
        with open(path, "w") as f:
            f.write("broken")
        self.assertFalse(service.check())
        self.assertTrue(store.allows(second, POST))
        self.assertEqual(len(self.flushLoggedErrors()), 0)
        stop()
        writeTrust(path, TrustStore())
        self.assertTrue(service.check())
        self.assertEqual(changes, [2])


class CommandTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = self.mktemp()
        os.makedirs(self.directory)

    def path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    def command(self, *argv: str) -> tuple[int, str]:
        out = io.StringIO()
        return run(list(argv), out), out.getvalue()

    def test_keygen(self) -> None:
        """
        keygen writes an identity for a service named or numbered, adds its
        key to the trust file, and never overwrites an identity.
        """
        status, output = self.command(
            "keygen", self.path("post.json"), "--service", "post", "--trust", self.path("t.json")
        )
        self.assertEqual(status, 0, output)
        identity = readIdentity(self.path("post.json"))
        self.assertEqual(identity.serviceId, POST)
        self.assertTrue(readTrust(self.path("t.json")).allows(identity.public, POST))
        status, _ = self.command(
            "keygen", self.path("a.json"), "--service", "010001", "--trust", self.path("t.json")
        )
        self.assertEqual(status, 0)
        trust = readTrust(self.path("t.json"))
        self.assertEqual(len(trust.peers), 2)
        status, _ = self.command("keygen", self.path("post.json"), "--service", "post")
        self.assertEqual(status, 1)
        self.assertEqual(readIdentity(self.path("post.json")).public, identity.public)

    def test_show(self) -> None:
        self.command("keygen", self.path("post.json"), "--service", "post")
        status, output = self.command("show", self.path("post.json"))
        self.assertEqual(status, 0)
        identity = readIdentity(self.path("post.json"))
        self.assertIn("service 010002", output)
        self.assertIn(json.loads(identity.toJSON())["public"], output)

    def test_trust(self) -> None:
        """
        trust adds a key once, refusing a malformed one.
        """
        key = Identity.generate(POST).toJSON()
        public = json.loads(key)["public"]
        for _ in range(2):
            status, _ = self.command(
                "trust", self.path("t.json"), "--service", "post", "--key", public
            )
            self.assertEqual(status, 0)
        self.assertEqual(len(readTrust(self.path("t.json")).peers), 1)
        self.assertEqual(decodeKey(public, "x"), readTrust(self.path("t.json")).peers[0].key)
        status, _ = self.command("trust", self.path("t.json"), "--service", "post", "--key", "nope")
        self.assertEqual(status, 1)

    def test_unknownService(self) -> None:
        status, _ = self.command("keygen", self.path("x.json"), "--service", "nonesuch")
        self.assertEqual(status, 2)
        self.assertFalse(os.path.exists(self.path("x.json")))
