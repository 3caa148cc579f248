"""The pages' HTTP site and its optional access log (``-accessLogFile``).

Twisted's ``Site`` logs every request, with its User-Agent, into the daemon
log (where it crowded out everything else in the recent-log box on ``/``),
and announces "Starting factory …" whenever the port opens. ``PagesSite`` is
quiet: requests go to the access log file when one is configured, in the
combined log format, and nowhere otherwise.

Lines are written by the thread pool, never on the reactor thread. While a
write is in flight new lines queue; past ``MAX_QUEUED`` queued lines (a disk
that stopped answering) further lines are dropped and counted, and the next
write notes how many were lost.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import Request, combinedLogFormatter, datetimeToLogString
from twisted.web.resource import IResource
from twisted.web.server import Site

_log = Logger()

MAX_QUEUED = 10_000


class AccessLogError(Exception):
    """The access log file cannot be opened (the text names the flag and file)."""


class AccessLog:
    """Appends lines to ``path``; :meth:`open` must succeed before lines are written."""

    def __init__(self, path: str, in_thread: Callable[..., Deferred[Any]]) -> None:
        self.path = path
        self._in_thread = in_thread
        self._fd: int | None = None
        self._queued: list[str] = []
        self._writing: Deferred[None] | None = None
        self._flushed_waiters: list[Deferred[None]] = []
        self.dropped = 0
        self.lines_written = 0

    async def open(self) -> None:
        try:
            self._fd = await self._in_thread(_open_append, self.path)
        except OSError as exc:
            raise AccessLogError(f"-accessLogFile={self.path}: {exc.strerror or exc}") from None

    def write(self, line: str) -> None:
        """Queue one line (without its newline); written soon, off the reactor."""
        if self._fd is None:
            return
        if len(self._queued) >= MAX_QUEUED:
            self.dropped += 1
            return
        self._queued.append(line)
        if self._writing is None:
            self._flush()

    def flushed(self) -> Deferred[None]:
        """Fires once every line queued so far is written (or failed)."""
        if self._writing is None:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._flushed_waiters.append(waiter)
        return waiter

    async def close(self) -> None:
        """Write what is queued, then close the file."""
        await self.flushed()
        fd, self._fd = self._fd, None
        if fd is not None:
            await self._in_thread(os.close, fd)

    def _flush(self) -> None:
        lines, self._queued = self._queued, []
        if self.dropped:
            lines.append(f"# imaginator: {self.dropped} access log lines dropped (writes too slow)")
            self.dropped = 0
        data = "".join(line + "\n" for line in lines).encode("utf-8", errors="replace")
        fd = self._fd
        assert fd is not None
        writing: Deferred[None] = self._in_thread(_write_all, fd, data)

        def done(result: object) -> None:
            self.lines_written += len(lines)
            self._writing = None
            if self._queued and self._fd is not None:
                self._flush()
                return
            waiters, self._flushed_waiters = self._flushed_waiters, []
            for waiter in waiters:
                waiter.callback(None)

        def failed(failure: Failure) -> None:
            _log.warn(
                "Error writing access log {file}: {error}",
                file=self.path,
                error=failure.getErrorMessage(),
            )

        writing.addErrback(failed).addBoth(done)
        self._writing = writing


def _open_append(path: str) -> int:
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class PagesSite(Site):
    """``Site`` that never writes to the daemon log: requests go to ``access_log``
    (combined log format) or nowhere, and opening the port is not announced."""

    noisy = False

    def __init__(
        self, resource: IResource, *, clock: IReactorTime, access_log: AccessLog | None = None
    ) -> None:
        super().__init__(resource, reactor=clock)
        self._clock = clock
        self.access_log = access_log

    def log(self, request: Request) -> None:
        if self.access_log is None:
            return
        stamp = datetimeToLogString(self._clock.seconds())
        self.access_log.write(combinedLogFormatter(stamp, request))
