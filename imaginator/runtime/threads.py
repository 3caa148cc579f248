"""The daemon's thread pool, and stopping it without blocking the reactor.

``ThreadPool.stop()`` joins every worker thread: called on the reactor thread
it blocks the reactor until the slowest job ends, and forever if a job hangs
(a dulwich fetch on a dead network). Here the joining happens on a helper
thread; the reactor waits for it at most ``timeout`` seconds, then logs which
jobs it gave up on and carries on. Worker threads are daemon threads, so a
thread still stuck after that cannot keep the process from exiting either.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import partial
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

_log = Logger()

DEFAULT_STOP_TIMEOUT = 30.0


class DelayedCall(Protocol):
    def active(self) -> bool: ...

    def cancel(self) -> None: ...


class ThreadedClock(Protocol):
    """What stopping a pool needs of the reactor."""

    def callLater(self, delay: float, f: Callable[..., Any], /, *args: Any) -> DelayedCall: ...

    def callFromThread(self, f: Callable[..., Any], /, *args: Any) -> None: ...


class DaemonThreadPool(ThreadPool):
    """A ``ThreadPool`` whose workers are daemon threads (see the module docstring)."""

    # Twisted types threadFactory as the Thread class; ThreadPool only calls it.
    threadFactory = partial(threading.Thread, daemon=True)  # type: ignore[assignment]


def make_thread_pool(name: str, maxthreads: int) -> DaemonThreadPool:
    """The bounded pool that every blocking job of the daemon runs in (not started)."""
    return DaemonThreadPool(minthreads=0, maxthreads=maxthreads, name=name)


def stop_thread_pool(
    pool: ThreadPool, clock: ThreadedClock, timeout: float = DEFAULT_STOP_TIMEOUT
) -> Deferred[bool]:
    """Stop ``pool`` without joining its threads on the calling (reactor) thread.

    Fires with True once every worker has ended, or with False after
    ``timeout`` seconds, having logged how many jobs were still running.
    Never fails.
    """
    done: Deferred[bool] = Deferred()
    if not pool.started:
        pool.stop()  # no threads to join: only marks the pool stopped
        done.callback(True)
        return done

    def joined() -> None:
        if timer.active():
            timer.cancel()
        if not done.called:
            done.callback(True)

    def join_in_helper() -> None:
        try:
            pool.stop()
        finally:
            clock.callFromThread(joined)

    def give_up() -> None:
        if done.called:
            return
        busy = len(pool.working)
        _log.warn(
            "Stopping the thread pool: gave up after {timeout}s waiting for {count} jobs "
            "still running",
            timeout=timeout,
            count=busy,
        )
        done.callback(False)

    timer = clock.callLater(timeout, give_up)
    threading.Thread(
        target=join_in_helper, name=f"stop {pool.name or 'thread pool'}", daemon=True
    ).start()
    return done
