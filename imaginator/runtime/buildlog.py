"""The log of one build: an append-only byte buffer that live readers can follow.

Everything a build says (its own progress lines and its commands' output) goes
through one ``BuildLog``. Secrets are removed on the way in, so nothing that
reads the log later (pages, RPC streams, the stored log object, the archive)
can see them.
"""

from __future__ import annotations

from collections.abc import Callable

Redactor = Callable[[str], str]


def _no_redaction(text: str) -> str:
    return text


class BuildLog:
    """An in-memory build log.

    ``write`` appends text; every write is delivered, as one chunk, to the
    subscribers registered with ``subscribe`` (an RPC client streaming the
    build, a browser following the live log). A subscriber that raises is
    dropped, so a broken reader never breaks the build.
    """

    def __init__(self, redact: Redactor = _no_redaction) -> None:
        self._chunks: list[bytes] = []
        self._size = 0
        self._redact = redact
        self._subscribers: list[Callable[[bytes], None]] = []
        self._close_callbacks: list[Callable[[], None]] = []
        self.closed = False

    def write(self, text: str | bytes) -> None:
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        if not text:
            return
        data = self._redact(text).encode("utf-8")
        self._chunks.append(data)
        self._size += len(data)
        for subscriber in list(self._subscribers):
            try:
                subscriber(data)
            except Exception:
                self.unsubscribe(subscriber)

    def line(self, text: str = "") -> None:
        """Append ``text`` followed by a newline (one chunk)."""
        self.write(text + "\n")

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
        return lambda: callback in self._close_callbacks and self._close_callbacks.remove(callback)

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
                pass

    def getvalue(self) -> bytes:
        if len(self._chunks) > 1:
            self._chunks = [b"".join(self._chunks)]
        return self._chunks[0] if self._chunks else b""

    def __len__(self) -> int:
        return self._size
