"""
Tests for L{txplatform.filestamp}.
"""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from txplatform.filestamp import fileStamp


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
