# -*- test-case-name: tests.test_filewatch -*-
"""
Files read again while the process runs (the key files, the trust file,
the direct transport's address table): whether one changed, told by a
stamp taken with one C{stat} rather than by reading it, and a service that
reads a changed file again.
"""

from __future__ import annotations

import os
from typing import Generic, TypeVar

from twisted.application.internet import TimerService
from twisted.logger import Logger

__all__ = ["FileWatchService", "fileStamp"]

_Content = TypeVar("_Content")


def fileStamp(path: str) -> tuple[int, int, int] | None:
    """
    What changes when C{path} is written or replaced: its modification
    time, size and inode (an editor's or Kubernetes' atomic replace makes a
    new inode even within the same nanosecond); None if it cannot be
    examined (gone, meanwhile).
    """
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class FileWatchService(TimerService, Generic[_Content]):
    """
    Every C{interval} seconds, read the file at C{path} again if it
    changed, and take what it holds.  A file that cannot be read, or holds
    nothing usable, is logged and what is in use kept.

    Subclasses say what the file is (L{what}), how to read it (L{read},
    raising one of L{refused}) and what to do with it (L{take}).
    """

    log = Logger()

    #: What the file is, for the log ("the trust file").
    what = "the file"
    #: What L{read} raises for a file it cannot use.
    refused: tuple[type[Exception], ...] = (ValueError,)

    def __init__(self, path: str, interval: float = 10.0) -> None:
        super().__init__(interval, self.check)
        self.path = path
        self._seen = fileStamp(path)

    def read(self) -> _Content:
        raise NotImplementedError

    def take(self, fresh: _Content) -> str:
        """
        Use C{fresh}; return what it holds, in a few words for the log.
        """
        raise NotImplementedError

    def check(self) -> bool:
        """
        @return: Whether what the file holds was taken anew.
        """
        stamp = fileStamp(self.path)
        if stamp == self._seen:
            return False
        self._seen = stamp
        try:
            fresh = self.read()
        except self.refused as e:
            self.log.error("Keeping {what} in use: {error}", what=self.what, error=str(e))
            return False
        held = self.take(fresh)
        self.log.info("Read {what} {path} again: {held}", what=self.what, path=self.path, held=held)
        return True
