"""
Tests for L{txplatform.crypto.cli}: C{txplatform-keys}.
"""

from __future__ import annotations

import io
import os
import re
import sqlite3
import stat
import subprocess
import sys
import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from txplatform.crypto.cli import run
from txplatform.crypto.codecs import SealedFieldCodec
from txplatform.crypto.keyfile import keyringFromSource, newKeyFile, readKeySource, writeKeyFile
from txplatform.crypto.sealing import Sealer
from txplatform.database import databaseFromURL
from txplatform.localbus import LocalBus
from txplatform_services.account import api
from txplatform_services.account.service import AccountService

from ..services.harness import ShiftedClock, cheapPasswords
from ..support import POSTGRES_URL, newPostgresSchema

PASSWORD = "correct horse"


def keyDirectory(testCase: Any) -> str:
    directory = testCase.mktemp()
    os.makedirs(directory)
    return directory


def newKeyPath(testCase: Any, name: str = "account") -> str:
    """
    A fresh key file of version 1 for C{name}, as C{init} makes one.
    """
    path = os.path.join(keyDirectory(testCase), f"{name}.json")
    writeKeyFile(path, newKeyFile(name))
    return path


class OfflineCommandTests(SynchronousTestCase):
    """
    Commands that need no database, on a memory reactor.
    """

    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.stderr = io.StringIO()
        self.patch(sys, "stderr", self.stderr)

    def command(self, *argv: str) -> tuple[int, str]:
        """
        Run C{txplatform-keys argv}: its exit status and output.
        """
        out = io.StringIO()
        status = self.successResultOf(run(self.clock, list(argv), out))
        return status, out.getvalue()

    def test_init(self) -> None:
        """
        init writes a key file of version 1 with the given name, period and
        maximum age, readable by its owner only.
        """
        path = os.path.join(keyDirectory(self), "keys", "bus.json")
        status, out = self.command(
            "init", path, "--name", "bus", "--period", "60", "--max-age", "604800"
        )
        self.assertEqual((status, self.stderr.getvalue()), (0, ""))
        self.assertIn(f"wrote {path}", out)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        keyFile = readKeySource(path)
        self.assertEqual(
            (keyFile.name, keyFile.period, keyFile.maxAge, keyFile.minDecryptVersion),
            ("bus", 60.0, 604800.0, 1),
        )
        self.assertEqual([m.version for m in keyFile.versions], [1])
        self.assertEqual(len(keyFile.versions[0].secret), 32)

    def test_initDefaults(self) -> None:
        """
        Without --period and --max-age, epochs last an hour and data has no
        age limit.
        """
        path = os.path.join(keyDirectory(self), "account.json")
        status, _ = self.command("init", path, "--name", "account")
        self.assertEqual(status, 0)
        keyFile = readKeySource(path)
        self.assertEqual((keyFile.period, keyFile.maxAge), (3600.0, None))

    def test_initRefusesToOverwrite(self) -> None:
        """
        init never overwrites a key file: it says so on stderr and exits
        with 1, leaving the file as it was.
        """
        path = newKeyPath(self)
        with open(path) as f:
            before = f.read()
        status, out = self.command("init", path, "--name", "account")
        self.assertEqual((status, out), (1, ""))
        self.assertIn(f"{path} exists: a key file is never overwritten", self.stderr.getvalue())
        with open(path) as f:
            self.assertEqual(f.read(), before)

    def test_rotate(self) -> None:
        """
        rotate adds version 2, active --activate-in seconds from now; the
        file keeps version 1 and its mode.
        """
        path = newKeyPath(self)
        [first] = readKeySource(path).versions
        status, out = self.command("rotate", path, "--activate-in", "120")
        self.assertEqual(status, 0)
        self.assertIn("version 2 added", out)
        self.assertIn("(in 120s)", out)
        keyFile = readKeySource(path)
        self.assertEqual([m.version for m in keyFile.versions], [1, 2])
        self.assertEqual(keyFile.versions[0], first)
        self.assertNotEqual(keyFile.versions[1].secret, first.secret)
        self.assertLess(abs(keyFile.versions[1].activatesAt - (time.time() + 120)), 5)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)

    def test_rotateMissingFile(self) -> None:
        status, _ = self.command("rotate", os.path.join(keyDirectory(self), "none.json"))
        self.assertEqual(status, 1)
        self.assertIn("cannot read the key file", self.stderr.getvalue())

    def test_status(self) -> None:
        """
        status shows the versions and which one is current on the reactor's
        clock.
        """
        path = newKeyPath(self)
        writeKeyFile(path, readKeySource(path).rotated(activatesAt=1000.0))
        status, out = self.command("status", path)
        self.assertEqual(status, 0)
        self.assertIn("keys of 'account': period 3600s, current version 1, readable [2, 1]", out)
        self.assertIn("  version 1: active from", out)
        self.assertIn("  version 2: active from", out)
        self.clock.advance(1000)
        _, out = self.command("status", path)
        self.assertIn("current version 2", out)

    def test_statusServiceWithoutDatabase(self) -> None:
        """
        status --service needs --db, and the other way round.
        """
        path = newKeyPath(self)
        for extra in (["--service", "account"], ["--db", "sqlite::memory:"]):
            status, _ = self.command("status", path, *extra)
            self.assertEqual(status, 1)
        self.assertEqual(self.stderr.getvalue().count("--service and --db go together"), 2)

    def test_anyStoringService(self) -> None:
        """
        --service takes any installed service that stores data; another
        name is a usage error listing those that do.
        """
        from txplatform.catalogue import installedServices

        path = newKeyPath(self)
        for command in (["status", path], ["reencrypt", "--keys", path, "--db", "sqlite::memory:"]):
            for wrong in ("nosuch", "parser"):
                status, _ = self.command(*command, "--service", wrong)
                self.assertEqual(status, 2)
        storing = ", ".join(d.name for d in installedServices() if d.stores())
        self.assertIn(
            f"'parser' is not an installed service that stores data ({storing})",
            self.stderr.getvalue(),
        )

    def test_retireWithoutCheckRefused(self) -> None:
        """
        retire without --service and --db refuses unless --force is given,
        and leaves the key file alone.
        """
        path = newKeyPath(self)
        writeKeyFile(path, readKeySource(path).rotated(activatesAt=0.0))
        status, _ = self.command("retire", path, "--below", "2")
        self.assertEqual(status, 1)
        self.assertIn("give --service and --db", self.stderr.getvalue())
        self.assertEqual([m.version for m in readKeySource(path).versions], [1, 2])

    def test_retireServiceWithoutDatabase(self) -> None:
        path = newKeyPath(self)
        writeKeyFile(path, readKeySource(path).rotated(activatesAt=0.0))
        status, _ = self.command("retire", path, "--below", "2", "--service", "account")
        self.assertEqual(status, 1)
        self.assertIn("--service and --db go together", self.stderr.getvalue())
        self.assertEqual([m.version for m in readKeySource(path).versions], [1, 2])

    def test_retireForced(self) -> None:
        """
        retire --force drops the versions below --below and refuses them
        from then on.
        """
        path = newKeyPath(self)
        writeKeyFile(path, readKeySource(path).rotated(activatesAt=0.0))
        status, out = self.command("retire", path, "--below", "2", "--force")
        self.assertEqual(status, 0)
        self.assertIn("versions below 2 retired; kept [2]", out)
        keyFile = readKeySource(path)
        self.assertEqual([m.version for m in keyFile.versions], [2])
        self.assertEqual(keyFile.minDecryptVersion, 2)

    def test_retireEverythingRefused(self) -> None:
        path = newKeyPath(self)
        status, _ = self.command("retire", path, "--below", "2", "--force")
        self.assertEqual(status, 1)
        self.assertIn("would leave none", self.stderr.getvalue())
        self.assertEqual([m.version for m in readKeySource(path).versions], [1])

    def test_reencryptWrongKeyFile(self) -> None:
        """
        reencrypt refuses the key file of another purpose before touching
        the database.
        """
        path = newKeyPath(self, "post")
        status, _ = self.command(
            "reencrypt", "--service", "account", "--keys", path, "--db", "sqlite::memory:"
        )
        self.assertEqual(status, 1)
        self.assertIn("holds the keys of 'post', not of 'account'", self.stderr.getvalue())

    def test_usage(self) -> None:
        """
        Bad arguments exit with 2, as argparse does, said in one line (no
        usage text before it).
        """
        self.assertEqual(self.command()[0], 2)
        self.assertEqual(self.command("reencrypt", "--service", "account")[0], 2)
        self.assertEqual(
            self.stderr.getvalue().splitlines(),
            [
                "txplatform-keys: the following arguments are required: command"
                " (see txplatform-keys --help)",
                "txplatform-keys reencrypt: the following arguments are required: --keys, --db"
                " (see txplatform-keys reencrypt --help)",
            ],
        )

    def test_initNames(self) -> None:
        """
        init makes key files for the bus and for the installed services that
        store data; another name is a usage error naming those, and nothing
        is written.
        """
        from txplatform.catalogue import installedServices

        storing = [d.name for d in installedServices() if d.stores()]
        directory = keyDirectory(self)
        for name in ["bus", *storing]:
            status, _ = self.command("init", os.path.join(directory, name), "--name", name)
            self.assertEqual(status, 0, name)
        for wrong in ["nosuch", "parser", "gateway", "Account"]:
            status, out = self.command("init", os.path.join(directory, wrong), "--name", wrong)
            self.assertEqual((status, out), (2, ""))
            self.assertFalse(os.path.exists(os.path.join(directory, wrong)))
        errors = self.stderr.getvalue().splitlines()
        self.assertEqual(len(errors), 4)
        self.assertIn(
            "'nosuch' is neither bus nor an installed service that stores data"
            f" ({', '.join(storing)})",
            errors[0],
        )

    def test_initNumbers(self) -> None:
        """
        An epoch and a maximum age are positive: a key file with another
        would be refused by every process.
        """
        path = os.path.join(keyDirectory(self), "bus.json")
        for option, wrong in [("--period", "0"), ("--max-age", "-1"), ("--period", "soon")]:
            status, _ = self.command("init", path, "--name", "bus", option, wrong)
            self.assertEqual(status, 2)
        self.assertFalse(os.path.exists(path))
        self.assertIn("a positive number, not 'soon'", self.stderr.getvalue())

    def test_initUnwritable(self) -> None:
        """
        A path that cannot be written is an error in one line, exit status
        1, no traceback.
        """
        blocker = os.path.join(keyDirectory(self), "a-file")
        with open(blocker, "w") as f:
            f.write("not a directory")
        path = os.path.join(blocker, "bus.json")
        status, out = self.command("init", path, "--name", "bus")
        self.assertEqual((status, out), (1, ""))
        [error] = self.stderr.getvalue().splitlines()
        self.assertTrue(
            error.startswith(f"txplatform-keys: cannot write the key file {path}: "), error
        )

    def test_notText(self) -> None:
        """
        A file that is not UTF-8 text is no key file.
        """
        path = os.path.join(keyDirectory(self), "binary.json")
        with open(path, "wb") as f:
            f.write(b"\xff\xfe\x00")
        os.chmod(path, 0o600)
        status, _ = self.command("status", path)
        self.assertEqual(status, 1)
        self.assertEqual(
            self.stderr.getvalue(),
            f"txplatform-keys: the key file {path} is not UTF-8 text\n",
        )

    def test_databaseURL(self) -> None:
        """
        A --db that names no database we know, or a SQLite file that is not
        there (which opening would make, empty), is a usage error
        (L{DatabaseCommandTests.test_notADatabase}: one that cannot be
        opened).
        """
        path = newKeyPath(self)
        blocker = os.path.join(keyDirectory(self), "a-file")
        with open(blocker, "w") as f:
            f.write("not a directory")
        missing = os.path.join(keyDirectory(self), "account.sqlite")
        for url, expected in [
            ("mysql://x", 2),
            ("postgresql://x@127.0.0.1/db?pool=many", 2),
            (f"sqlite:{missing}", 2),
            (f"sqlite:{blocker}/account.sqlite", 2),
        ]:
            status, _ = self.command("status", path, "--service", "account", "--db", url)
            self.assertEqual(status, expected, url)
        self.assertFalse(os.path.exists(missing))
        errors = self.stderr.getvalue().splitlines()
        self.assertEqual(len(errors), 4, errors)
        self.assertIn("'mysql://x' is not sqlite:PATH or postgresql://", errors[0])
        self.assertEqual(
            errors[1],
            "txplatform-keys: --db: pool must be a number in"
            " 'postgresql://x@127.0.0.1/db?pool=many'",
        )
        self.assertIn(f"no database file at {missing!r}", errors[2])
        self.assertIn(f"no database file at '{blocker}/account.sqlite'", errors[3])


class MainTests(SynchronousTestCase):
    """
    The C{txplatform-keys} command, run as a process: each mistake is one
    line on stderr and a non-zero exit status.
    """

    def keys(self, *argv: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-c", "from txplatform.crypto.cli import main; main()", *argv],
            capture_output=True,
            text=True,
            timeout=60,
        )

    def assertFailsInOneLine(self, status: int, argv: list[str], expected: str) -> None:
        result = self.keys(*argv)
        self.assertEqual((result.returncode, result.stdout), (status, ""), result.stderr)
        [line] = result.stderr.splitlines()
        self.assertTrue(line.startswith("txplatform-keys"), line)
        self.assertIn(expected, line)

    def test_usage(self) -> None:
        """
        No command, or one that does not exist: exit status 2.
        """
        self.assertFailsInOneLine(2, [], "the following arguments are required: command")
        self.assertFailsInOneLine(2, ["bogus"], "invalid choice: 'bogus'")
        self.assertFailsInOneLine(2, ["init", "x.json", "--name", "nosuch"], "'nosuch' is neither")

    def test_failed(self) -> None:
        """
        A key file that exists, or cannot be read: exit status 1.
        """
        path = newKeyPath(self)
        self.assertFailsInOneLine(
            1, ["init", path, "--name", "account"], "exists: a key file is never overwritten"
        )
        directory = keyDirectory(self)
        self.assertFailsInOneLine(
            1, ["rotate", directory], f"cannot read the key file {directory}: Is a directory"
        )

    def test_succeeds(self) -> None:
        """
        A command that worked: exit status 0.
        """
        result = self.keys("status", newKeyPath(self))
        self.assertEqual((result.returncode, result.stderr), (0, ""))
        self.assertIn("keys of 'account'", result.stdout)


class DatabaseCommandTests(TestCase):
    """
    Commands that read an Account service's database, populated through
    the service, on the real reactor.
    """

    def setUp(self) -> Any:
        self.stderr = io.StringIO()
        self.patch(sys, "stderr", self.stderr)
        self.keys = newKeyPath(self)
        self.url = "sqlite:" + os.path.join(keyDirectory(self), "account.sqlite")
        self.clock = ShiftedClock()
        self.bus = LocalBus(reactor, defaultTimeout=5.0, retryDelays=(0.05, 0.1, 0.2))
        self.bus.startService()
        self.addCleanup(self.bus.stopService)

    @inlineCallbacks
    def command(self, *argv: str) -> Any:
        out = io.StringIO()
        status = yield run(reactor, list(argv), out)
        return status, out.getvalue()

    @inlineCallbacks
    def test_notADatabase(self) -> Any:
        """
        A --db that cannot be opened (a file that is not a database) fails
        in one line, exit status 1.
        """
        path = os.path.join(keyDirectory(self), "notes.txt")
        with open(path, "w") as f:
            f.write("not a database, but long enough to look like a file header" * 4)
        status, _ = yield self.command(
            "status", self.keys, "--service", "account", "--db", f"sqlite:{path}"
        )
        self.assertEqual(status, 1)
        [line] = self.stderr.getvalue().splitlines()
        self.assertIn(f"the database: cannot open sqlite:{path}:", line)

    @inlineCallbacks
    def withService(self, work: Any) -> Any:
        """
        Run an Account service on the database, with the keys the key file
        holds now, while C{work()} runs.
        """
        codec = SealedFieldCodec(Sealer(keyringFromSource(self.keys, reactor, "account")))
        service = AccountService(
            self.bus, databaseFromURL(self.url, reactor), self.clock, cheapPasswords(), codec
        )
        service.startService()
        try:
            yield service.whenStarted()
            service.startPublishing()
            return (yield work())
        finally:
            yield service.stopService()

    def register(self, *usernames: str) -> Any:
        @inlineCallbacks
        def work() -> Any:
            for username in usernames:
                yield self.bus.call(
                    api.SERVICE_ID,
                    "register",
                    {
                        "username": username,
                        "email": f"{username}@example.com",
                        "password": PASSWORD,
                        "display_name": f"{username.capitalize()} Smith",
                    },
                )

        return self.withService(work)

    def profiles(self, *usernames: str) -> Any:
        @inlineCallbacks
        def work() -> Any:
            found = []
            for username in usernames:
                profile = yield self.bus.call(api.SERVICE_ID, "get_profile", {"username": username})
                found.append(profile["display_name"])
                yield self.bus.call(
                    api.SERVICE_ID, "login", {"username": username, "password": PASSWORD}
                )
            return found

        return self.withService(work)

    def rotateNow(self) -> None:
        writeKeyFile(self.keys, readKeySource(self.keys).rotated(activatesAt=time.time()))

    def database(self) -> str:
        return self.url[len("sqlite:") :]

    @inlineCallbacks
    def test_statusCounts(self) -> Any:
        """
        status with --service and --db also shows, per table, how many
        stored values each version holds.
        """
        yield self.register("alice", "bob", "carol")
        status, out = yield self.command(
            "status", self.keys, "--service", "account", "--db", self.url
        )
        self.assertEqual((status, self.stderr.getvalue()), (0, ""))
        self.assertIn("  accounts: v1: 9\n", out)
        self.assertIn("  account_replies: v1: 3\n", out)
        self.assertRegex(out, r"  account_outbox: (empty|v1: \d+)\n")

    @inlineCallbacks
    def test_reencrypt(self) -> Any:
        """
        reencrypt rewrites the service's rows under the current version in
        batches, printing its progress, and says where they moved.
        """
        yield self.register("alice", "bob", "carol")
        self.rotateNow()
        status, out = yield self.command(
            "reencrypt", "--service", "account", "--keys", self.keys, "--db", self.url,
            "--batch", "2",
        )  # fmt: skip
        self.assertEqual((status, self.stderr.getvalue()), (0, ""))
        self.assertIn("accounts: 2/3 rows read, 2 rewritten, 0 unreadable\n", out)
        self.assertIn("accounts: 3/3 rows read, 3 rewritten, 0 unreadable (done)\n", out)
        self.assertIn("account_replies: 3/3 rows read, 3 rewritten, 0 unreadable (done)\n", out)
        moved = re.search(r"moved to version 2: (\d+) rows rewritten, 0 unreadable\n$", out)
        self.assertIsNotNone(moved, out)
        self.assertGreaterEqual(int(moved.group(1)), 6)

        _, out = yield self.command("status", self.keys, "--service", "account", "--db", self.url)
        self.assertIn("  accounts: v2: 9\n", out)
        self.assertIn("  account_replies: v2: 3\n", out)

    @inlineCallbacks
    def test_reencryptUnreadable(self) -> Any:
        """
        reencrypt exits with 2 when rows could not be read, and counts them.
        """
        yield self.register("alice", "bob")
        with sqlite3.connect(self.database()) as connection:
            connection.execute(
                "UPDATE accounts SET email = substr(email, 1, length(email) - 1)"
                " WHERE rowid = (SELECT min(rowid) FROM accounts)"
            )
        connection.close()
        self.rotateNow()
        status, out = yield self.command(
            "reencrypt", "--service", "account", "--keys", self.keys, "--db", self.url
        )
        self.assertEqual(status, 2)
        self.assertIn("accounts: 2/2 rows read, 1 rewritten, 1 unreadable (done)\n", out)
        self.assertRegex(out, r"moved to version 2: \d+ rows rewritten, 1 unreadable\n$")

    @inlineCallbacks
    def test_retireChecksDatabase(self) -> Any:
        """
        retire with --db refuses while stored rows still use a version it
        would drop; after reencrypt it drops them, raising the minimum
        version, and the service reads every account with the new key file
        alone.
        """
        yield self.register("alice", "bob")
        self.rotateNow()
        retire = ["retire", self.keys, "--below", "2", "--service", "account", "--db", self.url]
        status, out = yield self.command(*retire)
        self.assertEqual((status, out), (1, ""))
        self.assertIn("rows still need versions below 2", self.stderr.getvalue())
        self.assertIn("'accounts': 6", self.stderr.getvalue())
        self.assertIn("run reencrypt first", self.stderr.getvalue())
        self.assertEqual([m.version for m in readKeySource(self.keys).versions], [1, 2])

        status, _ = yield self.command(
            "reencrypt", "--service", "account", "--keys", self.keys, "--db", self.url
        )
        self.assertEqual(status, 0)
        status, out = yield self.command(*retire)
        self.assertEqual(status, 0)
        self.assertIn("versions below 2 retired; kept [2]", out)
        keyFile = readKeySource(self.keys)
        self.assertEqual([m.version for m in keyFile.versions], [2])
        self.assertEqual(keyFile.minDecryptVersion, 2)

        names = yield self.profiles("alice", "bob")
        self.assertEqual(names, ["Alice Smith", "Bob Smith"])

    @inlineCallbacks
    def test_reencryptPostgres(self) -> Any:
        """
        reencrypt and status work on PostgreSQL, in the schema the URL names.
        """
        schema = newPostgresSchema(self)
        self.url = f"{POSTGRES_URL}?schema={schema}"
        yield self.register("alice", "bob", "carol")
        self.rotateNow()
        status, out = yield self.command(
            "reencrypt", "--service", "account", "--keys", self.keys, "--db", self.url,
            "--batch", "2",
        )  # fmt: skip
        self.assertEqual((status, self.stderr.getvalue()), (0, ""))
        self.assertIn("accounts: 3/3 rows read, 3 rewritten, 0 unreadable (done)\n", out)
        _, out = yield self.command("status", self.keys, "--service", "account", "--db", self.url)
        self.assertIn("  accounts: v2: 9\n", out)
        writeKeyFile(self.keys, readKeySource(self.keys).retired(2))
        names = yield self.profiles("alice", "bob", "carol")
        self.assertEqual(names, ["Alice Smith", "Bob Smith", "Carol Smith"])
