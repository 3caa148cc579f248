"""Following a build log at the reader's pace, without ever holding up the build.

A live log reader (a browser on ``/followBuildLog``, ``builder-tool`` streaming
a build over RPC) may read slower than the build writes, or stop reading.
Writing every chunk to its transport regardless would keep everything it has
not read in the daemon's memory. :class:`LogPump` is a Twisted push producer
registered on the reader's transport: while the transport says "pause", the
log's chunks queue in the pump; when more than ``limit`` bytes are queued the
reader is too slow, and it is dropped with a note. The build never waits.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Protocol

from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

FOLLOWER_BUFFER_LIMIT = 1 << 20
"""Bytes of live log queued for one reader before it is dropped (1 MiB)."""

WRITE_PIECE = 64 * 1024
"""The most written to a transport at once (so that it can push back in time)."""

_log = Logger()


def too_slow_note(dropped: int) -> bytes:
    """What a dropped reader gets last."""
    return f"[log follower too slow: {dropped} bytes dropped; reload]\n".encode()


class Consumer(Protocol):
    """Where the pump registers: a transport, or an HTTP request."""

    def registerProducer(self, producer: IPushProducer, streaming: bool) -> None: ...

    def unregisterProducer(self) -> None: ...


class FollowedLog(Protocol):
    """What the pump reads: a :class:`~imaginator.runtime.buildlog.BuildLog`."""

    def chunks(self) -> list[bytes]: ...

    def subscribe(self, callback: Callable[[bytes], None]) -> Callable[[], None]: ...


@implementer(IPushProducer)
class LogPump:
    """Sends one build log to one reader, as fast as the reader takes it.

    ``send(data)`` writes to the reader (raw bytes, or an RPC message made
    from them); ``consumer`` is the transport (or request) whose buffer
    pushes back: the pump registers on it as a streaming producer. With
    ``snapshot`` the log's content so far goes first (its chunks are shared
    with the log, not copied, and do not count against ``limit``); then every
    new chunk. ``on_dropped()`` is called after a too slow reader was sent
    :func:`too_slow_note` and let go.
    """

    def __init__(
        self,
        log: FollowedLog,
        consumer: Consumer | None,
        send: Callable[[bytes], None],
        *,
        limit: int = FOLLOWER_BUFFER_LIMIT,
        snapshot: bool = True,
        on_dropped: Callable[[], None] = lambda: None,
    ) -> None:
        self._log = log
        self._consumer = consumer
        self._send = send
        self._limit = limit
        self._snapshot = snapshot
        self._on_dropped = on_dropped
        # (data, counts against the limit); data may be a view into a chunk.
        self._queue: deque[tuple[bytes | memoryview, bool]] = deque()
        self._queued = 0
        self._live = 0
        self._paused = False
        self._registered = False
        self._unsubscribe: Callable[[], None] | None = None
        self.active = False
        self.dropped = False

    @property
    def buffered(self) -> int:
        """Bytes waiting in the pump for the reader."""
        return self._queued

    def start(self) -> None:
        """Register on the consumer, queue the snapshot, follow the log."""
        self.active = True
        if self._consumer is not None:
            self._consumer.registerProducer(self, True)
            self._registered = True
        if self._snapshot:
            for chunk in self._log.chunks():
                self._enqueue(chunk, counted=False)
        self._unsubscribe = self._log.subscribe(self._on_chunk)
        self._drain()

    def finish(self) -> None:
        """The log is over: hand the reader what is queued, then let go.

        Nothing may wait for a reader that stopped reading, so what is queued
        is written out now (it is at most the limit), unless it is more than
        that (a snapshot not yet sent), in which case the reader is dropped.
        """
        if not self.active:
            return
        if self._queued > self._limit:
            self._drop(0)
            return
        self._paused = False
        self._drain()
        self.stop()

    def stop(self) -> None:
        """Stop following at once (the reader left, or the follower ended)."""
        if not self.active:
            return
        self.active = False
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self._queue.clear()
        self._queued = self._live = 0
        if self._registered and self._consumer is not None:
            self._registered = False
            try:
                self._consumer.unregisterProducer()
            except Exception:
                _log.failure("Error unregistering a log follower")

    # -- IPushProducer --------------------------------------------------------------

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._drain()

    def stopProducing(self) -> None:
        self.stop()

    # -- internals --------------------------------------------------------------------

    def _on_chunk(self, data: bytes) -> None:
        if not self.active:
            return
        if self._live + len(data) > self._limit:
            self._drop(len(data))
            return
        self._enqueue(data, counted=True)
        self._drain()

    def _enqueue(self, data: bytes, *, counted: bool) -> None:
        if data:
            self._queue.append((data, counted))
            self._queued += len(data)
            if counted:
                self._live += len(data)

    def _drain(self) -> None:
        while self._queue and not self._paused and self.active:
            piece, counted = self._queue.popleft()
            if len(piece) > WRITE_PIECE:
                view = memoryview(piece)
                self._queue.appendleft((view[WRITE_PIECE:], counted))
                piece = view[:WRITE_PIECE]
            self._queued -= len(piece)
            if counted:
                self._live -= len(piece)
            # May pause us (the transport's buffer is full) before it returns.
            self._send(bytes(piece))

    def _drop(self, more: int) -> None:
        dropped = self._queued + more
        self.stop()
        self.dropped = True
        _log.info("Dropped a log follower too slow to read: {dropped} bytes", dropped=dropped)
        self._send(too_slow_note(dropped))
        self._on_dropped()
