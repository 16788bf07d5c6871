"""
Tests for L{txplatform.filewatch}.
"""

from __future__ import annotations

import os

from twisted.internet.task import Clock
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from txplatform.filewatch import FileWatchService, fileStamp


class NumberFile(FileWatchService[int]):
    """
    A file holding a number, which it takes into C{taken}.
    """

    what = "the number file"
    refused = (ValueError,)

    def __init__(self, path: str, interval: float) -> None:
        super().__init__(path, interval)
        self.reads = 0
        self.taken: list[int] = []

    def read(self) -> int:
        self.reads += 1
        with open(self.path) as f:
            return int(f.read())

    def take(self, fresh: int) -> str:
        self.taken.append(fresh)
        return f"the number {fresh}"


class FileStampTests(SynchronousTestCase):
    def test_changes(self) -> None:
        """
        The stamp stays while the file does, and changes when it is written
        again or replaced; a missing file has none.
        """
        path = self.mktemp()
        self.assertIsNone(fileStamp(path))
        with open(path, "w") as f:
            f.write("one")
        first = fileStamp(path)
        self.assertIsNotNone(first)
        self.assertEqual(fileStamp(path), first)
        with open(path, "w") as f:
            f.write("three")
        second = fileStamp(path)
        self.assertNotEqual(second, first)
        # Replaced with content of the same size and an mtime set back: the
        # inode still tells.
        replacement = self.mktemp()
        with open(replacement, "w") as f:
            f.write("thre3")
        os.utime(replacement, ns=(second[0], second[0]))  # type: ignore[index]
        os.replace(replacement, path)
        self.assertNotEqual(fileStamp(path), second)


class FileWatchServiceTests(SynchronousTestCase):
    def write(self, path: str, text: str) -> None:
        with open(path + ".new", "w") as f:
            f.write(text)
        os.replace(path + ".new", path)

    def test_changedOnly(self) -> None:
        """
        Every C{interval} seconds the file is read again if it changed, and
        what it holds taken and logged; an unchanged file is not read; one
        that cannot be used is logged and nothing taken.
        """
        path = self.mktemp()
        self.write(path, "1")
        watcher = NumberFile(path, 5)
        clock = Clock()
        watcher.clock = clock
        logged: list[dict] = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        watcher.startService()
        self.addCleanup(watcher.stopService)
        clock.advance(5)
        self.assertEqual((watcher.reads, watcher.taken), (0, []))
        self.write(path, "2")
        clock.advance(5)
        self.assertEqual((watcher.reads, watcher.taken), (1, [2]))
        self.write(path, "three")
        clock.advance(5)
        self.assertEqual((watcher.reads, watcher.taken), (2, [2]))
        clock.advance(5)
        self.assertEqual(watcher.reads, 2)
        lines = [
            (e["log_level"], formatEvent(e)) for e in logged if "number file" in formatEvent(e)
        ]
        self.assertEqual(
            lines[0], (LogLevel.info, f"Read the number file {path} again: the number 2")
        )
        self.assertEqual(lines[1][0], LogLevel.error)
        self.assertIn("Keeping the number file in use: invalid literal", lines[1][1])
