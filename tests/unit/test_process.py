"""ProcessRunner driven by a fake reactor: timers, signals and results, no real processes."""

from __future__ import annotations

import signal
from collections.abc import Sequence
from typing import Any

import pytest
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.internet.protocol import ProcessProtocol

from imaginator.runtime.buildlog import BuildLog
from imaginator.runtime.process import (
    DEADLINE_EXCEEDED,
    CommandError,
    ProcessResult,
    ProcessRunner,
    describe_wait_status,
)
from tests.support.fakes import PID, FakeReactor, FakeTransport, exit_reason, fired


class Harness:
    """A runner on a fake reactor, with the signals it sent."""

    def __init__(self, kill_grace: float = 5.0) -> None:
        self.reactor = FakeReactor()
        self.signals: list[tuple[int, int]] = []
        self.runner = ProcessRunner(
            self.reactor, kill_grace, setsid="/usr/bin/setsid", killpg=self._killpg
        )

    def _killpg(self, pgid: int, sig: int) -> None:
        self.signals.append((pgid, sig))

    def start(self, argv: Sequence[str] = ("prog", "arg"), **kwargs: Any) -> Deferred[Any]:
        kwargs.setdefault("log", None)
        kwargs.setdefault("env", {})
        return ensureDeferred(self.runner.run(argv, **kwargs))

    @property
    def protocol(self) -> ProcessProtocol:
        return self.reactor.spawned[-1]["protocol"]

    @property
    def transport(self) -> FakeTransport:
        return self.reactor.spawned[-1]["transport"]

    def finish(self, status: int) -> None:
        """The child exits with wait status ``status`` and its pipes close."""
        reason = exit_reason(status)
        self.protocol.processExited(reason)
        self.protocol.childConnectionLost(1)
        self.protocol.childConnectionLost(2)
        self.protocol.processEnded(reason)


def _exit(code: int) -> int:
    return code << 8


def test_spawns_through_setsid_with_exact_env_and_cwd() -> None:
    h = Harness()
    h.start(["/bin/echo", "hi"], env={"A": "b"}, cwd="/tmp")
    spawned = h.reactor.spawned[0]
    assert spawned["executable"] == "/usr/bin/setsid"
    assert spawned["args"] == ["/usr/bin/setsid", "/bin/echo", "hi"]
    assert spawned["env"] == {"A": "b"}
    assert spawned["path"] == "/tmp"
    assert h.runner.running() == 1


def test_stdin_written_then_closed() -> None:
    h = Harness()
    h.start(stdin=b"input")
    assert h.transport.stdin == [b"input"]
    assert h.transport.stdin_closed


def test_no_stdin_means_eof() -> None:
    h = Harness()
    h.start()
    assert h.transport.stdin == []
    assert h.transport.stdin_closed


def test_success_returns_result_and_forgets_child() -> None:
    h = Harness()
    d = h.start()
    h.finish(0)
    assert fired(d) == ProcessResult(0, b"", b"")
    assert h.runner.running() == 0


def test_output_cut_into_lines_in_arrival_order() -> None:
    log = BuildLog()
    chunks: list[bytes] = []
    log.subscribe(chunks.append)
    h = Harness()
    d = h.start(log=log)
    h.protocol.childDataReceived(1, b"he")
    assert chunks == []
    h.protocol.childDataReceived(1, b"llo\nwor")
    h.protocol.childDataReceived(2, b"err one\nerr")
    h.protocol.childDataReceived(1, b"ld\nthree\nfour\npart")
    h.finish(0)
    fired(d)
    assert chunks == [
        b"hello\n",
        b"err one\n",
        b"world\n",
        b"three\n",
        b"four\n",
        b"part",
        b"err",
    ]


def test_captured_stdout_is_returned_not_logged() -> None:
    log = BuildLog()
    h = Harness()
    d = h.start(log=log, capture_stdout=True)
    h.protocol.childDataReceived(1, b"out\npartial")
    h.protocol.childDataReceived(2, b"err\n")
    h.finish(0)
    assert fired(d) == ProcessResult(0, b"out\npartial", b"")
    assert log.getvalue() == b"err\n"


def test_captured_stderr() -> None:
    log = BuildLog()
    h = Harness()
    d = h.start(log=log, capture_stderr=True)
    h.protocol.childDataReceived(2, b"oops")
    h.finish(_exit(1))
    with pytest.raises(CommandError) as info:
        fired(d)
    assert info.value.stderr == b"oops"
    assert log.getvalue() == b""


def test_endless_line_is_passed_on_in_pieces() -> None:
    log = BuildLog()
    h = Harness()
    h.start(log=log)
    h.protocol.childDataReceived(1, b"x" * (70 * 1024))
    assert len(log) == 70 * 1024


@pytest.mark.parametrize(
    ("status", "text"),
    [
        (_exit(1), "exit status 1"),
        (_exit(255), "exit status 255"),
        (signal.SIGKILL, "signal: killed"),
        (signal.SIGTERM, "signal: terminated"),
        (signal.SIGSEGV | 0x80, "signal: segmentation fault (core dumped)"),
        (40, "signal: signal 40"),
    ],
)
def test_go_exit_error_text(status: int, text: str) -> None:
    assert describe_wait_status(status) == text
    h = Harness()
    d = h.start(step="1_fail")
    h.finish(status)
    with pytest.raises(CommandError) as info:
        fired(d)
    assert str(info.value) == text
    assert info.value.reason == text
    assert info.value.step == "1_fail"
    assert info.value.killed_because is None
    assert f"error running script: 1_fail: {info.value}" == f"error running script: 1_fail: {text}"


def test_exit_code_and_signal_on_error() -> None:
    h = Harness()
    d = h.start()
    h.finish(_exit(3))
    with pytest.raises(CommandError) as info:
        fired(d)
    assert (info.value.exit_code, info.value.signal) == (3, None)


def test_deadline_terms_then_kills_the_group() -> None:
    h = Harness(kill_grace=5)
    d = h.start(deadline=10.0, step="script")
    h.reactor.advance(9.9)
    assert h.signals == []
    h.reactor.advance(0.1)
    assert h.signals == [(PID, signal.SIGTERM)]
    h.reactor.advance(4.9)
    assert h.signals == [(PID, signal.SIGTERM)]
    h.reactor.advance(0.1)
    assert h.signals == [(PID, signal.SIGTERM), (PID, signal.SIGKILL)]
    h.finish(signal.SIGKILL)
    with pytest.raises(CommandError) as info:
        fired(d)
    assert str(info.value) == "signal: killed"
    assert info.value.killed_because == DEADLINE_EXCEEDED
    assert info.value.step == "script"


def test_deadline_reports_what_actually_killed_it() -> None:
    h = Harness()
    d = h.start(deadline=1.0)
    h.reactor.advance(1.0)
    h.finish(signal.SIGTERM)
    with pytest.raises(CommandError, match=r"^signal: terminated$"):
        fired(d)
    # The leader's exit killed the rest of the group; no more timers.
    assert h.signals == [(PID, signal.SIGTERM), (PID, signal.SIGKILL)]
    assert h.reactor.getDelayedCalls() == []


def test_clean_exit_after_deadline_still_fails() -> None:
    h = Harness()
    d = h.start(deadline=1.0)
    h.reactor.advance(1.0)
    h.finish(0)
    with pytest.raises(CommandError, match=r"^context deadline exceeded$"):
        fired(d)


def test_deadline_already_passed_spawns_nothing() -> None:
    h = Harness()
    h.reactor.advance(100)
    d = h.start(deadline=50.0)
    with pytest.raises(CommandError, match=r"^context deadline exceeded$"):
        fired(d)
    assert h.reactor.spawned == []


def test_exit_before_deadline_cancels_timers_and_kills_stragglers() -> None:
    h = Harness()
    d = h.start(deadline=10.0)
    h.finish(0)
    fired(d)
    assert h.signals == [(PID, signal.SIGKILL)]
    assert h.reactor.getDelayedCalls() == []
    h.reactor.advance(100)
    assert h.signals == [(PID, signal.SIGKILL)]


def test_no_signal_after_the_leader_was_reaped() -> None:
    h = Harness(kill_grace=2)
    h.start(deadline=10.0)
    h.protocol.processExited(exit_reason(0))
    assert h.signals == [(PID, signal.SIGKILL)]
    h.reactor.advance(10)
    # The group id may belong to someone else by now: never signalled again.
    assert h.signals == [(PID, signal.SIGKILL)]


def test_pipes_held_open_by_escaped_process_are_closed_after_grace() -> None:
    h = Harness(kill_grace=2)
    d = h.start()
    h.protocol.processExited(exit_reason(0))
    h.reactor.advance(1.9)
    assert not h.transport.lost
    h.reactor.advance(0.1)
    assert h.transport.lost
    h.protocol.childConnectionLost(1)
    h.protocol.childConnectionLost(2)
    h.protocol.processEnded(exit_reason(0))
    assert fired(d).exit_code == 0


def test_exit_reported_during_spawn_is_handled() -> None:
    """Twisted may reap a fast child before spawnProcess returns."""
    h = Harness()

    def spawn_and_exit(protocol: ProcessProtocol, *args: Any, **kwargs: Any) -> Any:
        transport = FakeReactor.spawnProcess(h.reactor, protocol, *args, **kwargs)
        protocol.processExited(exit_reason(_exit(2)))
        return transport

    h.reactor.spawnProcess = spawn_and_exit  # type: ignore[method-assign]
    d = h.start()
    assert h.signals == [(PID, signal.SIGKILL)]
    h.protocol.childConnectionLost(1)
    h.protocol.childConnectionLost(2)
    h.protocol.processEnded(exit_reason(_exit(2)))
    with pytest.raises(CommandError, match=r"^exit status 2$"):
        fired(d)


def test_kill_all_kills_every_group_and_waits_for_them() -> None:
    h = Harness()
    first = h.start(step="a")
    first_protocol = h.protocol
    second = h.start(step="b")
    assert h.runner.running() == 2
    done = h.runner.kill_all("daemon stopping")
    assert sorted(h.signals) == [(PID, signal.SIGKILL), (PID + 1, signal.SIGKILL)]
    assert not done.called
    h.finish(signal.SIGKILL)
    assert not done.called
    for name in ("processExited", "processEnded"):
        getattr(first_protocol, name)(exit_reason(signal.SIGKILL))
    assert done.called
    assert h.runner.running() == 0
    for d in (first, second):
        with pytest.raises(CommandError, match=r"^signal: killed$") as info:
            fired(d)
        assert info.value.killed_because == "daemon stopping"


def test_kill_all_with_nothing_running() -> None:
    h = Harness()
    assert h.runner.kill_all("stop").called


def test_cancelling_the_caller_kills_the_child() -> None:
    h = Harness()
    d = h.start()
    d.cancel()
    with pytest.raises(CancelledError):
        fired(d)
    assert h.signals == [(PID, signal.SIGKILL)]
    assert h.runner.running() == 1
    h.finish(signal.SIGKILL)
    assert h.runner.running() == 0


def test_empty_argv_rejected() -> None:
    h = Harness()
    with pytest.raises(ValueError):
        fired(h.start([]))
