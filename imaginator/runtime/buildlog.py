"""The log of one build: a bounded byte buffer that live readers can follow.

Everything a build says (its own progress lines and its commands' output) goes
through one ``BuildLog``. Secrets are removed on the way in, so nothing that
reads the log later (pages, RPC streams, the stored log object, the archive)
can see them; output that arrives in pieces goes through a :class:`LogStream`,
which redacts across the pieces.

Memory is bounded: the log keeps its first ``head_limit`` bytes and a rolling
tail of its last ``tail_limit`` bytes; what falls out between them is replaced
by one line ``[… N bytes dropped …]``. Followers still see every chunk as it
is written.
"""

from __future__ import annotations

import codecs
from collections import deque
from collections.abc import Callable, Mapping

from twisted.logger import Logger

from imaginator.runtime.redact import Redactor, StreamRedactor

BUILD_LOG_HEAD_BYTES = 1 << 20
"""The start of a build log that is always kept (1 MiB)."""

BUILD_LOG_TAIL_BYTES = 4 << 20
"""The end of a build log that is kept (4 MiB); older output in between is dropped."""

Secrets = Callable[[], Mapping[str, str]]
"""Gives the current secret variables (their values are redacted)."""

_log = Logger()


def _no_secrets() -> Mapping[str, str]:
    return {}


def dropped_marker(count: int) -> bytes:
    """The line that stands where ``count`` bytes of a log were dropped."""
    return f"[… {count} bytes dropped …]\n".encode()


class BuildLog:
    """An in-memory build log, bounded to its head and tail.

    ``write`` appends text; every write is delivered, as one chunk, to the
    subscribers registered with ``subscribe`` (an RPC client streaming the
    build, a browser following the live log). A subscriber that raises is
    dropped, and the reason logged, so a broken reader never breaks the build.
    ``secrets()`` gives the values to redact; it is asked at every write, so a
    replaced variables file takes effect at once.
    """

    def __init__(
        self,
        secrets: Secrets = _no_secrets,
        *,
        head_limit: int = BUILD_LOG_HEAD_BYTES,
        tail_limit: int = BUILD_LOG_TAIL_BYTES,
    ) -> None:
        self._secrets = secrets
        self._redactor = Redactor()
        self._redactor_key: frozenset[str] = frozenset()
        self._head_limit = head_limit
        self._tail_limit = tail_limit
        self._head: list[bytes] = []
        self._head_size = 0
        self._head_open = True
        self._tail: deque[bytes] = deque()
        self._tail_size = 0
        self._written = 0
        self._value: bytes | None = None
        self._subscribers: list[Callable[[bytes], None]] = []
        self._close_callbacks: list[Callable[[], None]] = []
        self.closed = False

    # -- writing -------------------------------------------------------------------

    def redactor(self) -> Redactor:
        """The redactor for the secrets in force now (rebuilt only when they change)."""
        key = frozenset(value for value in self._secrets().values() if value)
        if key != self._redactor_key:
            self._redactor = Redactor(key)
            self._redactor_key = key
        return self._redactor

    def write(self, text: str | bytes) -> None:
        """Append ``text`` (a complete piece: it is redacted on its own)."""
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        if text:
            self.append_redacted(self.redactor()(text).encode("utf-8"))

    def line(self, text: str = "") -> None:
        """Append ``text`` followed by a newline (one chunk)."""
        self.write(text + "\n")

    def stream(self) -> LogStream:
        """A writer for output that arrives in pieces (one per child's pipe)."""
        return LogStream(self)

    def append_redacted(self, data: bytes) -> None:
        """Append bytes that are already redacted, and deliver them."""
        if not data:
            return
        self._store(data)
        for subscriber in list(self._subscribers):
            try:
                subscriber(data)
            except Exception as exc:
                self.unsubscribe(subscriber)
                _log.warn(
                    "Build log follower dropped: {error}", error=f"{type(exc).__name__}: {exc}"
                )

    def _store(self, data: bytes) -> None:
        self._written += len(data)
        self._value = None
        if self._head_open and self._head_size + len(data) <= self._head_limit:
            self._head.append(data)
            self._head_size += len(data)
            return
        self._head_open = False
        self._tail.append(data)
        self._tail_size += len(data)
        while self._tail_size > self._tail_limit:
            first = self._tail[0]
            excess = self._tail_size - self._tail_limit
            if len(first) <= excess:
                self._tail.popleft()
                self._tail_size -= len(first)
                continue
            cut = _line_start(first, excess)
            self._tail[0] = first[cut:]
            self._tail_size -= cut

    # -- readers ---------------------------------------------------------------------

    def subscribe(self, callback: Callable[[bytes], None]) -> Callable[[], None]:
        """Deliver every future chunk to ``callback``; returns a function to stop."""
        self._subscribers.append(callback)
        return lambda: self.unsubscribe(callback)

    def unsubscribe(self, callback: Callable[[bytes], None]) -> None:
        if callback in self._subscribers:
            self._subscribers.remove(callback)

    def on_close(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` when the build ends (at once if it has); returns a canceller."""
        if self.closed:
            callback()
            return lambda: None
        self._close_callbacks.append(callback)

        def cancel() -> None:
            if callback in self._close_callbacks:
                self._close_callbacks.remove(callback)

        return cancel

    def close(self) -> None:
        """The build is over: no more writes are expected; tell the followers."""
        if self.closed:
            return
        self.closed = True
        callbacks, self._close_callbacks = self._close_callbacks, []
        for callback in callbacks:
            try:
                callback()
            except Exception:
                _log.failure("Error in a build log close callback")

    @property
    def dropped(self) -> int:
        """How many bytes fell out between the kept head and tail."""
        return self._written - self._head_size - self._tail_size

    @property
    def written(self) -> int:
        """How many bytes were written in all (kept or not)."""
        return self._written

    def chunks(self) -> list[bytes]:
        """What the log holds, as the stored chunks (shared, not copied)."""
        dropped = self.dropped
        if not dropped:
            return [*self._head, *self._tail]
        marker = dropped_marker(dropped)
        if self._head and not self._head[-1].endswith(b"\n"):
            marker = b"\n" + marker
        return [*self._head, marker, *self._tail]

    def getvalue(self) -> bytes:
        """The kept log: its head, the dropped-bytes line if any, and its tail."""
        if self._value is None:
            self._value = b"".join(self.chunks())
        return self._value

    def __len__(self) -> int:
        return len(self.getvalue())


def _line_start(data: bytes, at_least: int) -> int:
    """Where to cut ``data`` to drop at least ``at_least`` bytes: a line or character start."""
    newline = data.find(b"\n", at_least, at_least + 4096)
    if newline >= 0:
        return newline + 1
    cut = at_least
    # Never start in the middle of a UTF-8 sequence (continuation bytes are 10xxxxxx).
    while cut < len(data) and data[cut] & 0xC0 == 0x80:
        cut += 1
    return cut


class LogStream:
    """One source of output into a :class:`BuildLog` (a child's stdout or stderr).

    Bytes may be cut anywhere: UTF-8 sequences and secrets split between two
    writes are put together again before they are decoded and redacted, so
    the log gets exactly what one write of the whole output would have given.
    What is not yet decided (the end of a partial line that could be the
    start of a secret) is held back until more arrives or ``close``.
    """

    def __init__(self, log: BuildLog) -> None:
        self._log = log
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._redactor = StreamRedactor(log.redactor)
        self.closed = False

    def write(self, data: bytes) -> None:
        if self.closed or not data:
            return
        text = self._decoder.decode(data)
        if text:
            self._log.append_redacted(self._redactor.feed(text).encode("utf-8"))

    def close(self) -> None:
        """The source ended: write out what was held back."""
        if self.closed:
            return
        self.closed = True
        text = self._redactor.feed(self._decoder.decode(b"", final=True)) + self._redactor.finish()
        self._log.append_redacted(text.encode("utf-8"))
