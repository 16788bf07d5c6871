# -*- test-case-name: tests.test_logs -*-
"""
Structured logs for twistd: C{twistd --logger txplatform.logs.json ...}
writes one JSON object per event to standard output (Twisted's own JSON
form, which keeps every field: C{requestId}, C{trace}, C{method}, C{status},
durations...), for a log collector to index instead of parsing text.
"""

from __future__ import annotations

import sys

from twisted.logger import ILogObserver, jsonFileLogObserver

__all__ = ["json"]


def json() -> ILogObserver:
    """
    A log observer writing JSON lines (record separator first, as
    L{twisted.logger.eventsFromJSONLogFile} reads them) to standard output.
    """
    return jsonFileLogObserver(sys.stdout)
