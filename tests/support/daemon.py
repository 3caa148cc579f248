"""Run the real imaginator daemon as a child process and wait on what it logs."""

from __future__ import annotations

import re
import signal
import sys

from twisted.internet import defer, protocol
from twisted.internet import reactor as global_reactor

from tests.support.configs import REPO, clean_env

STARTUP_TIMEOUT = 60.0


class _Output(protocol.ProcessProtocol):
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self._partial = {1: b"", 2: b""}

    def childDataReceived(self, fd, data):
        buffered = self._partial.get(fd, b"") + data
        *lines, self._partial[fd] = buffered.split(b"\n")
        for line in lines:
            self.daemon._line(fd, line.decode("utf-8", errors="replace"))

    def processEnded(self, reason):
        for fd, rest in self._partial.items():
            if rest:
                self.daemon._line(fd, rest.decode("utf-8", errors="replace"))
        self.daemon._ended(reason.value.exitCode)


class Daemon:
    """An ``imaginator`` process; ``wait_for(regex)`` fires with the first matching line."""

    def __init__(
        self, args: list[str], reactor=global_reactor, *, ignore_sigint: bool = False
    ) -> None:
        self.args = args
        self.ignore_sigint = ignore_sigint
        self.reactor = reactor
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self.exit_code: int | None = None
        self.ended = defer.Deferred()
        self._waiters: list[tuple[re.Pattern, int | None, defer.Deferred]] = []
        self.port: int | None = None
        self.transport = None

    def start(self) -> Daemon:
        argv = [sys.executable, "-m", "imaginator.cli", *self.args]
        if self.ignore_sigint:
            # As a shell starting it in the background does: SIGINT ignored,
            # which exec passes on to the daemon.
            argv = ["/bin/sh", "-c", "trap '' INT; exec \"$@\"", "sh", *argv]
        self.transport = self.reactor.spawnProcess(
            _Output(self), argv[0], argv, env=clean_env(), path=str(REPO)
        )
        return self

    def _line(self, fd: int, line: str) -> None:
        (self.stdout if fd == 1 else self.stderr).append(line)
        for waiter in list(self._waiters):
            pattern, want_fd, d = waiter
            if (want_fd is None or want_fd == fd) and pattern.search(line):
                self._waiters.remove(waiter)
                d.callback(line)

    def _ended(self, code) -> None:
        self.exit_code = code
        for _pattern, _fd, d in self._waiters:
            d.errback(
                AssertionError(
                    f"daemon exited with {code!r} before the expected line;\n{self.output()}"
                )
            )
        self._waiters = []
        self.ended.callback(code)

    def output(self) -> str:
        return "\n".join([*self.stdout, "--- stderr ---", *self.stderr])

    def wait_for(self, pattern: str, timeout: float = STARTUP_TIMEOUT, fd: int | None = None):
        """A Deferred firing with the first future (or past) line matching ``pattern``."""
        regex = re.compile(pattern)
        lines = self.stdout if fd == 1 else self.stderr if fd == 2 else self.stdout + self.stderr
        for line in lines:
            if regex.search(line):
                return defer.succeed(line)
        d = defer.Deferred()
        if self.exit_code is not None:
            return defer.fail(AssertionError(f"daemon already exited;\n{self.output()}"))
        self._waiters.append((regex, fd, d))
        return d.addTimeout(timeout, self.reactor)

    async def wait_listening(self) -> int:
        line = await self.wait_for(r"imaginator listening on port (\d+)")
        self.port = int(re.search(r"listening on port (\d+)", line).group(1))
        return self.port

    async def stop(self, sig=signal.SIGTERM) -> int | None:
        if self.exit_code is None:
            self.transport.signalProcess(sig.name.removeprefix("SIG"))
            await self.ended.addTimeout(60, self.reactor)
        return self.exit_code
