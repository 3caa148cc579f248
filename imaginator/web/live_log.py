"""``/followBuildLog``: one build's log streamed to one reader while the build runs.

A browser (``Accept: text/html``) gets an HTML page that grows as the build
writes: the page's head, the log in a ``<pre>`` (HTML-escaped chunk by chunk,
as it arrives), and, when the build ends, its result with links to the image
and to the last build log. ``static/livelog.js`` keeps the newest line in view
unless the reader scrolled up. Any other client (``curl``, scripts) gets the
log as plain text, exactly as the build wrote it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest

from imaginator.runtime.buildlog import BuildLog
from imaginator.runtime.follower import FOLLOWER_BUFFER_LIMIT, Consumer, LogPump

#: How often a live log follower checks whether its build is still running
#: (in case ``BuildLog.on_close`` is not called, e.g. the build was replaced).
FOLLOW_POLL_SECONDS = 2.0

#: Where the streamed log goes in the rendered follow page: the page is
#: rendered whole, the part before this is sent first, the part after it last.
LOG_MARKER = "\x00log\x00"

_log = Logger()


class StreamedRequest(Consumer, Protocol):
    """A request whose response is written as it is made
    (``twisted.web.server.Request``, which Klein passes to the pages)."""

    def write(self, data: bytes, /) -> None: ...

    def notifyFinish(self) -> Deferred[None]: ...


def wants_html(request: IRequest) -> bool:
    """Whether the client asked for HTML (a browser's navigation does)."""
    accept = request.getHeader(b"accept") or b""
    return b"text/html" in accept.lower()


def escape_html(data: bytes) -> bytes:
    """``data`` (UTF-8 text, possibly cut anywhere) with ``&``, ``<`` and ``>`` escaped.

    Byte-wise is safe: these are ASCII and never part of a multi-byte sequence.
    """
    return data.replace(b"&", b"&amp;").replace(b"<", b"&lt;").replace(b">", b"&gt;")


class LogFollower:
    """Streams one build's log to one HTTP client while the build runs.

    Sends what the log holds, then every chunk as ``BuildLog`` delivers it,
    at the client's pace (a :class:`~imaginator.runtime.follower.LogPump`
    registered on the request), each passed through ``encode`` first: a
    client more than ``buffer_limit`` bytes behind gets
    ``[log follower too slow: N bytes dropped; reload]`` and the response
    ends. The response also ends when the build is over: when
    ``BuildLog.on_close`` (if the log has it) reports so, or when
    ``still_running()`` turns false, checked after every chunk and every
    ``poll_seconds`` on ``clock``. ``on_end()`` is called then, before the
    response is finished (to write the build's result). A client that goes
    away is unsubscribed at once.

    ``start()`` returns a Deferred that fires (with ``None``) when the
    response should be finished; Klein then finishes the request. Cancelling
    it (Klein does so when the client disconnects) stops following.
    ``ended`` fires when following stops, for any reason.
    """

    def __init__(
        self,
        request: StreamedRequest,
        log: BuildLog,
        still_running: Callable[[], bool],
        clock: IReactorTime,
        poll_seconds: float = FOLLOW_POLL_SECONDS,
        buffer_limit: int = FOLLOWER_BUFFER_LIMIT,
        *,
        encode: Callable[[bytes], bytes] | None = None,
        on_end: Callable[[], None] | None = None,
    ) -> None:
        self._request = request
        self._log = log
        self._still_running = still_running
        self._clock = clock
        self._poll_seconds = poll_seconds
        self._on_end = on_end
        send = request.write if encode is None else (lambda data: request.write(encode(data)))
        self._pump = LogPump(log, request, send, limit=buffer_limit, on_dropped=self._end)
        self._unsubscribe: Callable[[], object] | None = None
        self._close_unsubscribe: Callable[[], object] | None = None
        self._timer: IDelayedCall | None = None
        self._stopped = False
        self._ending = False
        self.done: Deferred[None] = Deferred(lambda _d: self._stop())
        self.ended: Deferred[None] = Deferred()

    @property
    def following(self) -> bool:
        return not self._stopped

    @property
    def buffered(self) -> int:
        """Bytes of log waiting here for the client."""
        return self._pump.buffered

    def start(self) -> Deferred[None]:
        self._request.notifyFinish().addErrback(self._client_gone)
        self._pump.start()
        if self._stopped:  # dropped while sending what the log holds
            return self.done
        self._unsubscribe = self._log.subscribe(self._on_chunk)
        on_close = getattr(self._log, "on_close", None)
        if callable(on_close):
            undo = on_close(self._on_close)
            if callable(undo):
                self._close_unsubscribe = undo
        if not self._stopped:
            self._check()
        if not self._stopped:
            self._timer = self._clock.callLater(self._poll_seconds, self._tick)
        return self.done

    def _on_chunk(self, _data: bytes) -> None:
        # The pump has sent the chunk (it subscribed first); only check here.
        if not self._stopped:
            self._check()

    def _on_close(self, *_args: object) -> None:
        self._end()

    def _tick(self) -> None:
        self._timer = None
        if self._stopped:
            return
        self._check()
        if not self._stopped:
            self._timer = self._clock.callLater(self._poll_seconds, self._tick)

    def _check(self) -> None:
        try:
            running = self._still_running()
        except Exception:
            _log.failure("Error checking whether a followed build still runs")
            running = False
        if not running:
            self._end()

    def _end(self) -> None:
        # Re-entered when the pump drops the reader while finishing: end once.
        if self._stopped or self._ending:
            return
        self._ending = True
        self._pump.finish()
        if self._on_end is not None:
            try:
                self._on_end()
            except Exception:
                _log.failure("Error writing the end of a followed build log")
        self._stop()
        self.done.callback(None)

    def _client_gone(self, _failure: Failure) -> None:
        self._stop()

    def _stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._pump.stop()
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._close_unsubscribe is not None:
            try:
                self._close_unsubscribe()
            except Exception:
                _log.failure("Error removing a build log close callback")
            self._close_unsubscribe = None
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self.ended.callback(None)
