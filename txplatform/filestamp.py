# -*- test-case-name: tests.test_filestamp -*-
"""
Whether a file changed, for the services that read a file again while the
process runs (key files, the trust file, the direct transport's address
table): compared by a stamp taken with one C{stat}, not by reading it.
"""

from __future__ import annotations

import os

__all__ = ["fileStamp"]


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
