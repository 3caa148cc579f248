"""Running child processes: the only way the daemon starts one.

Every child leads a new session and process group (it is exec'd through
util-linux ``setsid``), gets exactly the environment it is given, and has its
stdout and stderr cut into lines that go into the build log as they arrive.
A deadline, when given, is enforced on the whole process group: SIGTERM when
it passes, SIGKILL ``kill_grace`` seconds later. When the child itself exits,
whatever is left of its process group is killed, so a build step never leaves
processes behind (the sandbox's PID namespace catches those that escape the
group).

Every wait is bounded: a child that has not ended ``kill_wait`` seconds after
its SIGKILL (stuck in the kernel, in D state) is given up on, and its
:meth:`ProcessRunner.run` fails with "did not exit after SIGKILL";
:meth:`ProcessRunner.kill_all` returns within its timeout. Captured output is
bounded too (``capture_limit``): past it the child is killed and the run
fails, or, with ``truncate_capture``, the rest is counted and dropped.

Failures are raised as :class:`CommandError`, whose text is what Go's
``exec`` package says (``exit status 1``, ``signal: killed``), so callers can
reproduce the reference error messages ("error running script: 1_fail: exit
status 1").

Nothing here blocks the reactor: the child is spawned with
``reactor.spawnProcess`` and every timer is a ``reactor.callLater``, so unit
tests can drive it all with a ``Clock``.
"""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IDelayedCall, IProcessTransport
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from imaginator.goformats.units import format_bytes
from imaginator.goformats.waitstatus import describe_wait_status, signal_description
from imaginator.runtime.buildlog import BuildLog

SETSID = shutil.which("setsid") or "/usr/bin/setsid"
"""util-linux ``setsid``: exec's its arguments as the leader of a new session."""

DEADLINE_EXCEEDED = "context deadline exceeded"
"""Go's text for a deadline that passed (used when the child's own status says nothing)."""

# A line longer than this is passed on in pieces, so a child that never
# writes a newline (a progress bar) cannot make us buffer without bound.
MAX_PENDING_LINE = 64 * 1024

MAX_CAPTURED_OUTPUT = 16 << 20
"""Default bound on one captured stream (stdout or stderr) of a command whose
output the daemon reads (package lists, ``dot``'s SVG): 16 MiB."""

KILL_WAIT = 10.0
"""Seconds a child may take to end after SIGKILL before the runner gives up on it."""

_ABANDONED = -1
"""The wait status a job's waiter gets when the runner gave up on the child."""

_log = Logger()

__all__ = [
    "DEADLINE_EXCEEDED",
    "KILL_WAIT",
    "MAX_CAPTURED_OUTPUT",
    "MAX_PENDING_LINE",
    "SETSID",
    "CommandError",
    "ProcessReactor",
    "ProcessResult",
    "ProcessRunner",
    "describe_wait_status",
    "signal_description",
]


class ProcessReactor(Protocol):
    """What the runner needs from a reactor: processes and timers."""

    def spawnProcess(
        self,
        processProtocol: ProcessProtocol,
        executable: str,
        args: Sequence[str],
        env: Mapping[str, str] | None = None,
        path: str | None = None,
    ) -> IProcessTransport: ...

    def callLater(
        self, delay: float, callable: Callable[..., Any], *args: object, **kw: object
    ) -> IDelayedCall: ...

    def seconds(self) -> float: ...


@dataclass(frozen=True)
class ProcessResult:
    """What a successful child left: its exit code and any captured output."""

    exit_code: int
    stdout: bytes = b""
    stderr: bytes = b""
    dropped: int = 0
    """Captured bytes beyond ``capture_limit`` that were dropped (``truncate_capture``)."""


class CommandError(Exception):
    """A child that did not exit with status 0.

    ``str(err)`` is ``reason``, Go's text for the failure: ``exit status N``,
    ``signal: killed``, ``signal: terminated`` … For a child the runner killed
    that still managed to exit 0, it is ``killed_because`` (``context deadline
    exceeded`` for the deadline).
    ``step`` names the build step, for callers that build messages from it.
    ``killed_because`` says why the runner killed the child (the deadline, or
    the reason given to ``kill_all``); it is ``None`` when the child failed by
    itself. Captured output is kept, since it often explains the failure
    (``dropped`` counts the captured bytes beyond the capture limit).
    """

    def __init__(
        self,
        step: str,
        reason: str,
        *,
        exit_code: int | None = None,
        signal: int | None = None,
        killed_because: str | None = None,
        stdout: bytes = b"",
        stderr: bytes = b"",
        dropped: int = 0,
    ) -> None:
        super().__init__(reason)
        self.step = step
        self.reason = reason
        self.exit_code = exit_code
        self.signal = signal
        self.killed_because = killed_because
        self.stdout = stdout
        self.stderr = stderr
        self.dropped = dropped

    def __str__(self) -> str:
        return self.reason


_PIPE_ATOMIC = 4096  # POSIX PIPE_BUF on Linux: written at once into an empty pipe


def _input_pipes(inputs: Mapping[int, bytes]) -> dict[int, int]:
    """A pipe per input, already filled and closed for writing: child fd → read end.

    The data fits the empty pipe's buffer, so writing never blocks the reactor.
    """
    pipes: dict[int, int] = {}
    try:
        for child_fd, data in inputs.items():
            if child_fd < 3 or len(data) > _PIPE_ATOMIC:
                raise ValueError(f"input for fd {child_fd}: fd under 3 or over {_PIPE_ATOMIC} B")
            read_end, write_end = os.pipe()
            pipes[child_fd] = read_end
            try:
                os.write(write_end, data)
            finally:
                os.close(write_end)
    except BaseException:
        for fd in pipes.values():
            os.close(fd)
        raise
    return pipes


def _wait_status(reason: Failure) -> int:
    """The raw wait status inside Twisted's ``ProcessDone``/``ProcessTerminated``."""
    value = reason.value
    status = getattr(value, "status", None)
    if isinstance(status, int):
        return status
    sig = getattr(value, "signal", None)
    if isinstance(sig, int):
        return sig
    code = getattr(value, "exitCode", 0)
    return (code or 0) << 8


class _OutputStream:
    """One output pipe of a child: cut into lines for the log, or captured.

    A captured stream is returned to the caller and not logged; it keeps at
    most ``limit`` bytes and counts the rest (``overflowed`` fires once, with
    the pipe, when the limit is first passed). Otherwise each complete line is
    written to the log as its own chunk as soon as it arrives, and a trailing
    partial line when the pipe closes; all of it through one
    :class:`~imaginator.runtime.buildlog.LogStream`, so a secret or a UTF-8
    character split between two pieces of an endless line is still whole.
    """

    def __init__(
        self,
        log: BuildLog | None,
        capture: bool,
        limit: int = MAX_CAPTURED_OUTPUT,
        overflowed: Callable[[], None] = lambda: None,
    ) -> None:
        self._stream = None if capture or log is None else log.stream()
        self._capture = capture
        self._captured: list[bytes] = []
        self._kept = 0
        self._limit = limit
        self._overflowed = overflowed
        self.dropped = 0
        self._pending = bytearray()

    def feed(self, data: bytes) -> None:
        if self._capture:
            self._keep(data)
            return
        if self._stream is None:
            return
        self._pending += data
        end = self._pending.rfind(b"\n")
        if end >= 0:
            complete = bytes(self._pending[: end + 1])
            del self._pending[: end + 1]
            for line in complete.split(b"\n")[:-1]:
                self._stream.write(line + b"\n")
        if len(self._pending) >= MAX_PENDING_LINE:
            self._stream.write(bytes(self._pending))
            self._pending.clear()

    def _keep(self, data: bytes) -> None:
        room = self._limit - self._kept
        if len(data) > room:
            if not self.dropped:
                self._overflowed()
            self.dropped += len(data) - max(room, 0)
            data = data[: max(room, 0)]
        if data:
            self._captured.append(data)
            self._kept += len(data)

    def flush(self) -> None:
        """The pipe closed: write out a partial line and what the log held back."""
        if self._stream is not None:
            if self._pending:
                self._stream.write(bytes(self._pending))
            self._stream.close()
        self._pending.clear()

    def captured(self) -> bytes:
        return b"".join(self._captured)


class _ChildProtocol(ProcessProtocol):
    """Feeds stdin, routes output, and reports the child's exit and end."""

    def __init__(
        self,
        stdin: bytes | None,
        outputs: Mapping[int, _OutputStream],
        on_started: Callable[[IProcessTransport], None],
        on_exited: Callable[[], None],
        on_ended: Callable[[int], None],
    ) -> None:
        self._stdin = stdin
        self._outputs = outputs
        self._on_started = on_started
        self._on_exited = on_exited
        self._on_ended = on_ended

    def connectionMade(self) -> None:
        assert self.transport is not None
        # Before spawnProcess returns, Twisted may already report the exit:
        # the job must know its process group from here on.
        self._on_started(self.transport)
        if self._stdin:
            self.transport.write(self._stdin)
        self.transport.closeStdin()

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        stream = self._outputs.get(childFD)
        if stream is not None:
            stream.feed(data)

    def childConnectionLost(self, childFD: int) -> None:
        stream = self._outputs.get(childFD)
        if stream is not None:
            stream.flush()

    def processExited(self, reason: Failure) -> None:
        self._on_exited()

    def processEnded(self, reason: Failure) -> None:
        for stream in self._outputs.values():
            stream.flush()
        self._on_ended(_wait_status(reason))


@dataclass(eq=False)
class _Job:
    """The runner's record of one live child (its process group is ``pgid``)."""

    argv: tuple[str, ...]
    step: str = ""
    transport: IProcessTransport | None = None
    pgid: int = 0
    exited: bool = False
    killed_because: str | None = None
    overflow: str | None = None
    abandoned: str | None = None
    timers: list[IDelayedCall] = field(default_factory=list)
    backup: IDelayedCall | None = None
    waiter: Deferred[int] = field(default_factory=Deferred)
    finished: Deferred[None] = field(default_factory=Deferred)

    def started(self, transport: IProcessTransport) -> None:
        """The child exists: with ``setsid`` its pid is its process group id."""
        self.transport = transport
        self.pgid = transport.pid or 0

    def cancel_timers(self) -> None:
        for timer in self.timers:
            if timer.active():
                timer.cancel()
        self.timers.clear()

    def cancel_backup(self) -> None:
        if self.backup is not None and self.backup.active():
            self.backup.cancel()
        self.backup = None


class ProcessRunner:
    """Runs child processes for the daemon (see the module docstring).

    ``kill_grace`` is the time between SIGTERM and SIGKILL when a deadline
    passes, and also how long the runner waits, after the child has exited,
    for its output pipes to close before closing them itself (a process that
    left the process group may still hold them). ``kill_wait`` is how long it
    waits for a child to end after SIGKILL before giving up on it. ``setsid``
    and ``killpg`` are injectable so that unit tests can run without real
    processes.
    """

    def __init__(
        self,
        reactor: ProcessReactor,
        kill_grace: float = 5.0,
        *,
        kill_wait: float = KILL_WAIT,
        setsid: str = SETSID,
        killpg: Callable[[int, int], None] = os.killpg,
        niceness: int = 0,
    ) -> None:
        self._reactor = reactor
        # Children run at a lower CPU priority, so the daemon (its pages, RPC
        # and log streaming) stays responsive while builds keep the cores busy.
        self._prefix = ("nice", "-n", str(niceness)) if niceness else ()
        self._kill_grace = kill_grace
        self._kill_wait = kill_wait
        self._setsid = setsid
        self._killpg = killpg
        self._jobs: set[_Job] = set()

    def running(self) -> int:
        """How many children have been started and have not yet ended."""
        return len(self._jobs)

    async def run(
        self,
        argv: Sequence[str],
        *,
        log: BuildLog | None,
        env: Mapping[str, str],
        cwd: str = "/",
        stdin: bytes | None = None,
        deadline: float | None = None,
        capture_stdout: bool = False,
        capture_stderr: bool = False,
        capture_limit: int = MAX_CAPTURED_OUTPUT,
        truncate_capture: bool = False,
        step: str = "",
        inputs: Mapping[int, bytes] | None = None,
    ) -> ProcessResult:
        """Run ``argv`` to completion; raise :class:`CommandError` unless it exits 0.

        ``env`` is the child's whole environment. ``stdin`` is written to the
        child and then closed (with ``None`` the child reads EOF at once).
        ``inputs`` maps further file descriptors of the child (3 and up) to
        small data (under 4 KiB) it can read there, e.g. ``bwrap --seccomp 3``.
        Output goes line by line to ``log`` (``None``: discarded), except a
        captured stream, which is returned in the result instead. A captured
        stream keeps at most ``capture_limit`` bytes: beyond that the child is
        killed and the run fails ("stdout larger than 16 MiB"), or, with
        ``truncate_capture``, the rest is dropped and counted in ``dropped``.
        ``deadline`` is an absolute ``reactor.seconds()`` time; ``step`` is
        copied into the error.
        """
        if not argv:
            raise ValueError("empty argv")
        if deadline is not None and deadline <= self._reactor.seconds():
            raise CommandError(step, DEADLINE_EXCEEDED, killed_because=DEADLINE_EXCEEDED)
        started: list[_Job] = []

        def overflowed(name: str) -> Callable[[], None]:
            def kill() -> None:
                if truncate_capture or not started:
                    return
                job = started[0]
                if job.overflow is None:
                    job.overflow = f"{name} larger than {format_bytes(capture_limit)}"
                    self._kill_group(job, signal.SIGKILL, job.overflow)

            return kill

        outputs = {
            1: _OutputStream(log, capture_stdout, capture_limit, overflowed("stdout")),
            2: _OutputStream(log, capture_stderr, capture_limit, overflowed("stderr")),
        }
        job = self._start(
            tuple(argv), outputs, env=env, cwd=cwd, stdin=stdin, step=step, inputs=inputs
        )
        started.append(job)
        if deadline is not None:
            delay = deadline - self._reactor.seconds()
            job.timers.append(
                self._reactor.callLater(delay, self._terminate, job, DEADLINE_EXCEEDED)
            )
        status = await job.waiter
        stdout, stderr = outputs[1].captured(), outputs[2].captured()
        dropped = outputs[1].dropped + outputs[2].dropped
        if job.abandoned is not None or job.overflow is not None:
            reason = job.abandoned or job.overflow or ""
            if job.abandoned is not None and job.killed_because is not None:
                reason = f"{job.killed_because}: {reason}"
            raise CommandError(
                step,
                reason,
                killed_because=job.killed_because,
                stdout=stdout,
                stderr=stderr,
                dropped=dropped,
            )
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0 and job.killed_because is None:
            return ProcessResult(0, stdout, stderr, dropped)
        error = _command_error(step, status, job.killed_because, stdout, stderr)
        error.dropped = dropped
        raise error

    def kill_all(self, reason: str, timeout: float | None = None) -> Deferred[None]:
        """SIGKILL every running process group (daemon shutdown).

        Each pending :meth:`run` fails with a :class:`CommandError` whose
        ``killed_because`` is ``reason``. The returned Deferred fires once every
        child has ended, and at the latest after ``timeout`` seconds (default:
        the runner's ``kill_wait``): the runner gives up on the children still
        there then (their runs fail with "did not exit after SIGKILL").
        """
        jobs = list(self._jobs)
        for job in jobs:
            self._kill_group(job, signal.SIGKILL, reason)
        pending = [job for job in jobs if not job.finished.called]
        done: Deferred[None] = Deferred()
        if not pending:
            done.callback(None)
            return done

        def expire() -> None:
            for job in pending:
                self._give_up(job)

        timer = self._reactor.callLater(self._kill_wait if timeout is None else timeout, expire)

        def all_ended(_: object) -> None:
            if timer.active():
                timer.cancel()
            done.callback(None)

        ended: Deferred[Any] = gatherResults([job.finished for job in pending])
        ended.addCallback(all_ended)
        return done

    def _start(
        self,
        argv: tuple[str, ...],
        outputs: Mapping[int, _OutputStream],
        *,
        env: Mapping[str, str],
        cwd: str,
        stdin: bytes | None,
        step: str = "",
        inputs: Mapping[int, bytes] | None = None,
    ) -> _Job:
        job = _Job(argv, step)
        # Cancelling the caller's Deferred kills the child rather than leaving it behind.
        job.waiter = Deferred(lambda _: self._kill_group(job, signal.SIGKILL, "cancelled"))
        protocol = _ChildProtocol(
            stdin,
            outputs,
            on_started=lambda transport: job.started(transport),
            on_exited=lambda: self._leader_exited(job),
            on_ended=lambda status: self._ended(job, status),
        )
        self._jobs.add(job)
        extra: dict[str, Any] = {}
        pipes = _input_pipes(inputs or {})
        if pipes:
            extra["childFDs"] = {0: "w", 1: "r", 2: "r", **pipes}
        try:
            self._reactor.spawnProcess(
                protocol,
                self._setsid,
                [self._setsid, *self._prefix, *argv],
                env=dict(env),
                path=cwd,
                **extra,
            )
        except BaseException:
            self._jobs.discard(job)
            raise
        finally:
            for fd in pipes.values():  # the child has its copies
                os.close(fd)
        return job

    def _terminate(self, job: _Job, because: str) -> None:
        """The deadline passed: SIGTERM the group now, SIGKILL it after the grace time."""
        self._kill_group(job, signal.SIGTERM, because)
        job.timers.append(
            self._reactor.callLater(
                self._kill_grace, self._kill_group, job, signal.SIGKILL, because
            )
        )

    def _kill_group(self, job: _Job, sig: int, because: str) -> None:
        if job.exited:
            # The group was killed when its leader exited; its id may be reused now.
            return
        if job.killed_because is None:
            job.killed_because = because
        self._signal(job.pgid, sig)
        if sig == signal.SIGKILL and job.backup is None and job.abandoned is None:
            # A child in D state ignores even SIGKILL until the kernel lets it
            # go, which may be never: bound the wait for it.
            job.backup = self._reactor.callLater(self._kill_wait, self._give_up, job)

    def _give_up(self, job: _Job) -> None:
        """The child did not end in time after SIGKILL: stop waiting for it.

        Its run fails, it no longer counts as running, and its pipes are
        closed; if it ends some day, Twisted still reaps it.
        """
        job.cancel_backup()
        if job.finished.called:
            return
        what = (
            "did not close its output after SIGKILL" if job.exited else "did not exit after SIGKILL"
        )
        job.abandoned = f"process {job.pgid} {what}"
        _log.error(
            "{step}: {problem}; no longer waiting for it",
            step=job.step or "child",
            problem=job.abandoned,
        )
        job.cancel_timers()
        self._jobs.discard(job)
        transport = job.transport
        if transport is not None:
            try:
                transport.loseConnection()
            except Exception:
                _log.failure("Error closing the pipes of a child given up on")
        if not job.waiter.called:
            job.waiter.callback(_ABANDONED)
        job.finished.callback(None)

    def _signal(self, pgid: int, sig: int) -> None:
        if pgid <= 1:
            # Never killpg(0, …): that is our own process group.
            return
        try:
            self._killpg(pgid, sig)
        except ProcessLookupError:
            pass

    def _leader_exited(self, job: _Job) -> None:
        """The child was reaped: kill what is left of its group, bound the pipe wait.

        This runs in the same reactor turn as the reaping, before any other
        child can be started, so the group id cannot yet belong to anyone else.
        """
        self._signal(job.pgid, signal.SIGKILL)
        job.exited = True
        job.cancel_timers()
        # From here on the wait for the pipes is bounded by the timer below.
        job.cancel_backup()
        transport = job.transport
        if transport is not None:
            job.timers.append(self._reactor.callLater(self._kill_grace, transport.loseConnection))

    def _ended(self, job: _Job, status: int) -> None:
        """Exited and all pipes closed: forget the job, wake the caller."""
        job.exited = True
        job.cancel_timers()
        job.cancel_backup()
        self._jobs.discard(job)
        if job.finished.called:
            # Given up on earlier; it has ended after all.
            _log.info("{step}: process {pid} ended at last", step=job.step or "child", pid=job.pgid)
            return
        if not job.waiter.called:
            job.waiter.callback(status)
        job.finished.callback(None)


def _command_error(
    step: str, status: int, killed_because: str | None, stdout: bytes, stderr: bytes
) -> CommandError:
    """The error for a child that ended with ``status`` (or was killed by us)."""
    exit_code: int | None = None
    sig: int | None = None
    if os.WIFEXITED(status):
        exit_code = os.WEXITSTATUS(status)
    elif os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
    if exit_code == 0:
        # It survived our SIGTERM and exited cleanly, but too late.
        reason = killed_because or DEADLINE_EXCEEDED
    else:
        reason = describe_wait_status(status)
    return CommandError(
        step,
        reason,
        exit_code=exit_code,
        signal=sig,
        killed_because=killed_because,
        stdout=stdout,
        stderr=stderr,
    )
