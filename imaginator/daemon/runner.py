"""The service twistd runs.

:class:`DaemonRunner` keeps the recent-log ring, installs the SIGINT and
SIGTERM handlers, runs :func:`create_daemon` and turns a start-up failure
into one line on standard error and a non-zero exit status.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from types import FrameType

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger, globalLogPublisher
from twisted.python.failure import Failure

from imaginator.config.main import ConfigError
from imaginator.daemon.assembly import THREADS, Daemon, Options, create_daemon
from imaginator.lifecycle import (
    StartupError,
)
from imaginator.runtime.logbuffer import LogRing
from imaginator.runtime.reactors import IDaemonReactor
from imaginator.runtime.threads import make_thread_pool
from imaginator.sources.documents import FetchError
from imaginator.web.access import AccessLogError

_log = Logger()


# ================================================================ the process


def check_process_environment() -> None:
    """Refuse to run unless root with umask 022 (builds create files owned by root)."""
    if os.geteuid() != 0:
        raise SystemExit("imaginator: Must run the Image Builder as root")
    previous = os.umask(0o022)
    os.umask(previous)
    if previous != 0o022:
        raise SystemExit(
            f"imaginator: umask is {previous:03o}, must be 022 (the imaginator command sets it)"
        )


class DaemonRunner(Service):
    """What twistd runs: the log ring, the signal handlers, start-up and its failure.

    ``set_exit_status(code)`` records the status the process exits with
    (1 after a start-up failure).
    """

    def __init__(
        self,
        options: Options,
        reactor: IDaemonReactor,
        *,
        set_exit_status: Callable[[int], None],
    ) -> None:
        self.options = options
        self.reactor = reactor
        self._set_exit_status = set_exit_status
        self.log_ring = LogRing(options["logbufLines"])
        self.daemon: Daemon | None = None
        self.ready: Deferred[Daemon] = Deferred()
        self._starting: Deferred[Daemon] | None = None
        self._stopping = False

    def startService(self) -> None:
        super().startService()
        globalLogPublisher.addObserver(self.log_ring)
        self.reactor.callWhenRunning(self.install_signal_handlers)
        pool = make_thread_pool("imaginator", THREADS)
        self._starting = Deferred.fromCoroutine(
            create_daemon(self.options, self.reactor, pool, log_ring=self.log_ring)
        )
        self._starting.addCallbacks(self._started, self._fatal)

    def install_signal_handlers(self) -> None:
        """SIGINT and SIGTERM stop the daemon cleanly, whatever they were before
        (a shell starting the daemon in the background leaves SIGINT ignored)."""
        for number in (signal.SIGINT, signal.SIGTERM):
            signal.signal(number, self._on_signal)

    def _on_signal(self, number: int, _frame: FrameType | None) -> None:
        # Called between two bytecodes of the main thread: only hand over.
        self.reactor.callFromThread(self._stop_on_signal, signal.Signals(number).name)

    def _stop_on_signal(self, name: str) -> None:
        if self._stopping or not self.reactor.running:
            _log.info("Received {signal}: already stopping", signal=name)
            return
        self._stopping = True
        _log.info("Received {signal}: stopping", signal=name)
        self.reactor.stop()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self._stopping = True
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        try:
            starting = self._starting
            if starting is not None and self.daemon is None:
                # Stopped during start-up: cancelled, create_daemon stops what
                # it started (each step bounded) before this fires.
                starting.cancel()
                await starting
            elif self.daemon is not None:
                await self.daemon.services.stopService()
        finally:
            globalLogPublisher.removeObserver(self.log_ring)

    def _started(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.ready.callback(daemon)

    def _fatal(self, failure: Failure) -> None:
        if failure.check(CancelledError):
            return
        if failure.check(ConfigError, FetchError, StartupError, AccessLogError, SystemExit):
            message = str(failure.value)
        else:
            message = f"start-up failed: {failure.getErrorMessage()}"
            _log.failure("start-up failed", failure)
        # twistd turns sys.stderr into a logger: write to the real standard error.
        os.write(2, f"imaginator: {message}\n".encode("utf-8", errors="replace"))
        self._set_exit_status(1)
        self.ready.errback(failure)
        self.ready.addErrback(lambda _failure: None)
        if self.reactor.running:
            self.reactor.stop()
        else:
            self.reactor.callWhenRunning(self.reactor.stop)
