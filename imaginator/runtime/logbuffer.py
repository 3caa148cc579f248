"""A ring buffer of recent daemon log lines, shown at the bottom of the status page.

The Go imaginator keeps its recent log lines in memory and shows them on the
status page; ``LogRing`` is the same thing for ``twisted.logger``: add it as an
observer (next to the file or stdout observer) and the pages read ``lines()``.
"""

from __future__ import annotations

import re
import threading
import time
from collections import deque

from twisted.logger import ILogObserver, LogEvent, LogLevel, formatEvent
from zope.interface import implementer

DEFAULT_SIZE = 1024

# What Twisted says about its own machinery: factories starting and stopping,
# ports opening and closing. Nothing an operator of the imaginator acts on.
_TWISTED_NOISE = re.compile(
    r"^(Starting|Stopping) factory |^\S+ starting on \d+$|^\(\w+ Port \S+ Closed\)$"
)


def is_twisted_noise(event: LogEvent) -> bool:
    """Whether ``event`` is Twisted announcing a factory or port starting or stopping."""
    namespace = str(event.get("log_namespace", ""))
    if namespace.startswith("imaginator."):
        return False
    try:
        text = formatEvent(event)
    except Exception:
        return False
    return bool(_TWISTED_NOISE.search(text))


def format_log_line(event: LogEvent) -> str:
    """``YYYY/MM/DD HH:MM:SS <formatted event>`` in local time, like Go's ``log`` package.

    A failure attached to the event (``log.failure(...)``) adds its type and
    message, so the line says what went wrong without a multi-line traceback.
    """
    stamp = time.strftime("%Y/%m/%d %H:%M:%S ", time.localtime(event.get("log_time", time.time())))
    text = formatEvent(event)
    failure = event.get("log_failure")
    if failure is not None:
        try:
            detail = f"{failure.type.__name__}: {failure.getErrorMessage()}"
        except Exception:
            detail = "unformattable failure"
        text = f"{text}: {detail}" if text else detail
    return stamp + text


@implementer(ILogObserver)
class LogRing:
    """Keeps the last ``size`` formatted log lines (events below ``min_level``
    and Twisted's factory and port announcements are left out).

    Observers may be called from any thread that logs, so appends and reads
    take a lock; both are O(1)/O(size) and never block on I/O.
    """

    def __init__(self, size: int = DEFAULT_SIZE, *, min_level: LogLevel = LogLevel.info) -> None:
        if size < 1:
            raise ValueError("LogRing size must be at least 1")
        self._lines: deque[str] = deque(maxlen=size)
        self._min_level = min_level
        self._lock = threading.Lock()

    def __call__(self, event: LogEvent) -> None:
        level = event.get("log_level")
        if isinstance(level, type(LogLevel.info)) and level < self._min_level:
            return
        if is_twisted_noise(event):
            return
        line = format_log_line(event)
        with self._lock:
            self._lines.append(line)

    def lines(self) -> list[str]:
        """The retained lines, oldest first (a copy)."""
        with self._lock:
            return list(self._lines)
