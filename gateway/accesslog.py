# -*- test-case-name: tests.gateway.test_accesslog -*-
"""
The gateway's access log: a line per request.

Sent to the log one event per request, the access log cost a quarter of the
CPU of a small request: twistd's text log formats a time stamp and writes
to its file for every event.  So by default the lines of up to a tenth of
a second go out together, as one event: one time stamp, one write.  The
lines keep the request's fields in a fixed order (client, request line,
status, bytes sent, request id); an operator whose log observers want
those as fields of their own (a JSON log) asks for one structured event
per request instead (C{--access-log=events}).
"""

from __future__ import annotations

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

__all__ = ["AccessLog", "ACCESS_LOG_MODES"]

#: What --access-log takes.
ACCESS_LOG_MODES = ("batched", "events", "off")

# At module level: a Logger read from a class takes the class's name.
_log = Logger(namespace="txplatform_gateway.access")


class AccessLog:
    """
    @param mode: C{batched} (lines gathered for up to C{interval} seconds,
        or C{maxLines}, then logged as one event), C{events} (one event per
        request, its fields kept) or C{off}.
    """

    def __init__(
        self,
        clock: IReactorTime,
        mode: str = "batched",
        interval: float = 0.1,
        maxLines: int = 1000,
    ) -> None:
        if mode not in ACCESS_LOG_MODES:
            raise ValueError(
                f"the access log is one of {', '.join(ACCESS_LOG_MODES)}, not {mode!r}"
            )
        self._clock = clock
        self.mode = mode
        self.interval = interval
        self.maxLines = maxLines
        self._lines: list[str] = []
        self._flushing: IDelayedCall | None = None

    def request(
        self, client: str, method: str, uri: str, status: int, length: int, requestId: str
    ) -> None:
        """
        Note one request answered.
        """
        if self.mode == "batched":
            self._lines.append(f'{client} "{method} {uri}" {status} {length} {requestId}')
            if len(self._lines) >= self.maxLines:
                self.flush()
            elif self._flushing is None:
                self._flushing = self._clock.callLater(self.interval, self.flush)
        elif self.mode == "events":
            _log.info(
                '{client} "{method} {uri}" {status} {length} {requestId}',
                client=client,
                method=method,
                uri=uri,
                status=status,
                length=length,
                requestId=requestId,
            )

    def flush(self) -> None:
        """
        Log the lines gathered so far, as one event.
        """
        if self._flushing is not None:
            if self._flushing.active():
                self._flushing.cancel()
            self._flushing = None
        if not self._lines:
            return
        lines, self._lines = self._lines, []
        _log.info("{requests}", requests="\n".join(lines), count=len(lines))

    def __repr__(self) -> str:
        return f"<AccessLog {self.mode}>"
