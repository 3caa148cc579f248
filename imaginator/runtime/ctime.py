"""Calibrating the file-system's inode change-time (ctime) resolution.

The scanner reuses a source file's hash when its inode, size and ctime are
unchanged since unpacking. That is only sound if a later change always moves
the ctime, so after unpacking a build waits one ctime "tick" (reference
§1.4, §5.2.2). Linux updates ctime from a coarse clock, so the tick is
measured, not assumed.
"""

from __future__ import annotations

import os
import tempfile
import time

MAXIMUM = 1.0


def measure_ctime_resolution(directory: str | None = None) -> float:
    """Seconds between distinct ctimes of a file changed repeatedly (blocking).

    Changes a temporary file's mode in a tight loop until its ctime moves,
    a few times, and returns the largest step observed (at most one second).
    """
    handle, path = tempfile.mkstemp(prefix=".ctime-probe", dir=directory)
    os.close(handle)
    try:
        largest = 0.0
        for _ in range(3):
            before = os.stat(path).st_ctime_ns
            deadline = time.monotonic() + MAXIMUM
            mode = 0o600
            while True:
                mode ^= 0o040
                os.chmod(path, mode)
                after = os.stat(path).st_ctime_ns
                if after != before:
                    break
                if time.monotonic() > deadline:
                    return MAXIMUM
            # The next change must land in a later tick than ``after``.
            start = after
            while True:
                mode ^= 0o040
                os.chmod(path, mode)
                after = os.stat(path).st_ctime_ns
                if after != start:
                    largest = max(largest, (after - start) / 1e9)
                    break
                if time.monotonic() > deadline:
                    return MAXIMUM
        return min(largest, MAXIMUM)
    finally:
        os.unlink(path)
