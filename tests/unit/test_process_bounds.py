"""ProcessRunner bounds on a fake reactor: stuck children, capture limits, split secrets."""

from __future__ import annotations

import signal

import pytest
from twisted.internet.defer import CancelledError

from imaginator.runtime.buildlog import BuildLog
from imaginator.runtime.process import (
    KILL_WAIT,
    MAX_CAPTURED_OUTPUT,
    MAX_PENDING_LINE,
    CommandError,
    ProcessRunner,
)
from imaginator.runtime.redact import REDACTED, Redactor
from tests.support.fakes import exit_reason as _reason
from tests.support.fakes import fired as result_of
from tests.unit.test_process import PID, Harness, _exit


class BoundedHarness(Harness):
    """The fake-reactor harness with a chosen ``kill_wait``."""

    def __init__(self, kill_grace: float = 5.0, kill_wait: float = 30.0) -> None:
        super().__init__(kill_grace)
        self.runner = ProcessRunner(
            self.reactor,
            kill_grace,
            kill_wait=kill_wait,
            setsid="/usr/bin/setsid",
            killpg=self._killpg,
        )


# -- a child that SIGKILL does not end (D state) ----------------------------------


def test_child_stuck_after_sigkill_fails_the_run_after_the_bound() -> None:
    h = BoundedHarness(kill_grace=5, kill_wait=30)
    d = h.start(deadline=10.0, step="stuck")
    h.reactor.advance(10)
    h.reactor.advance(5)
    assert h.signals == [(PID, signal.SIGTERM), (PID, signal.SIGKILL)]
    h.reactor.advance(29)
    assert not d.called
    h.reactor.advance(1)
    with pytest.raises(CommandError) as info:
        result_of(d)
    assert str(info.value) == (
        f"context deadline exceeded: process {PID} did not exit after SIGKILL"
    )
    assert info.value.step == "stuck"
    assert h.runner.running() == 0
    assert h.transport.lost  # our ends of its pipes are closed
    assert h.reactor.getDelayedCalls() == []
    # If it ends after all, nothing breaks.
    h.finish(signal.SIGKILL)
    assert h.runner.running() == 0


def test_no_backup_timer_left_when_the_child_dies_from_sigkill() -> None:
    h = BoundedHarness(kill_grace=5, kill_wait=30)
    d = h.start(deadline=10.0)
    h.reactor.advance(15)
    h.finish(signal.SIGKILL)
    with pytest.raises(CommandError, match=r"^signal: killed$"):
        result_of(d)
    assert h.reactor.getDelayedCalls() == []


def test_cancelled_run_whose_child_is_stuck_is_forgotten_after_the_bound() -> None:
    h = BoundedHarness(kill_wait=30)
    d = h.start()
    d.cancel()
    with pytest.raises(CancelledError):
        result_of(d)
    assert h.runner.running() == 1
    h.reactor.advance(30)
    assert h.runner.running() == 0


def test_kill_all_returns_within_its_timeout_with_a_stuck_child() -> None:
    h = BoundedHarness(kill_wait=30)
    stuck = h.start(step="a")
    stuck_protocol = h.protocol
    ends = h.start(step="b")
    done = h.runner.kill_all("daemon shutting down", timeout=3)
    h.finish(signal.SIGKILL)  # the second one dies
    assert not done.called
    h.reactor.advance(3)
    assert done.called
    assert h.runner.running() == 0
    with pytest.raises(CommandError, match=r"^signal: killed$"):
        result_of(ends)
    with pytest.raises(CommandError) as info:
        result_of(stuck)
    assert str(info.value) == (f"daemon shutting down: process {PID} did not exit after SIGKILL")
    assert info.value.killed_because == "daemon shutting down"
    stuck_protocol.processExited(_reason(signal.SIGKILL))
    stuck_protocol.processEnded(_reason(signal.SIGKILL))
    assert h.reactor.getDelayedCalls() == []


def test_kill_all_default_bound_is_the_kill_wait() -> None:
    h = BoundedHarness(kill_wait=KILL_WAIT)
    d = h.start()
    done = h.runner.kill_all("stop")
    h.reactor.advance(KILL_WAIT - 0.5)
    assert not done.called
    h.reactor.advance(0.5)
    assert done.called
    with pytest.raises(CommandError, match="did not exit after SIGKILL"):
        result_of(d)


def test_kill_all_fires_at_once_when_the_children_end() -> None:
    h = BoundedHarness()
    h.start()
    done = h.runner.kill_all("stop", timeout=60)
    h.finish(signal.SIGKILL)
    assert done.called
    assert h.reactor.getDelayedCalls() == []


# -- capture limits ------------------------------------------------------------------


def test_captured_output_over_the_limit_kills_the_child_with_a_clear_error() -> None:
    h = BoundedHarness()
    d = h.start(capture_stdout=True, capture_limit=1024, step="list")
    h.protocol.childDataReceived(1, b"p 1.0 3\n" * 100)
    assert h.signals == []
    h.protocol.childDataReceived(1, b"p 1.0 3\n" * 100)
    assert h.signals == [(PID, signal.SIGKILL)]
    h.protocol.childDataReceived(1, b"more" * 1000)  # nothing more is kept
    h.finish(signal.SIGKILL)
    with pytest.raises(CommandError) as info:
        result_of(d)
    assert str(info.value) == "stdout larger than 1 KiB"
    assert len(info.value.stdout) == 1024
    assert info.value.dropped == 1600 - 1024 + 4000


def test_default_capture_limit_bounds_a_flood() -> None:
    h = BoundedHarness()
    d = h.start(capture_stderr=True)
    piece = b"e" * (1 << 20)
    for _ in range(MAX_CAPTURED_OUTPUT // len(piece) + 3):
        h.protocol.childDataReceived(2, piece)
    h.finish(signal.SIGKILL)
    with pytest.raises(CommandError, match=r"^stderr larger than 16 MiB$") as info:
        result_of(d)
    assert len(info.value.stderr) == MAX_CAPTURED_OUTPUT


def test_truncated_capture_keeps_the_start_and_counts_the_rest() -> None:
    h = BoundedHarness()
    d = h.start(capture_stdout=True, capture_stderr=True, capture_limit=10, truncate_capture=True)
    h.protocol.childDataReceived(1, b"0123456789abcdef")
    h.protocol.childDataReceived(2, b"err")
    h.protocol.childDataReceived(1, b"ghij")
    assert h.signals == []
    h.finish(_exit(0))
    result = result_of(d)
    assert (result.stdout, result.stderr, result.dropped) == (b"0123456789", b"err", 10)


# -- redaction of endless lines ------------------------------------------------------

SECRETS = {"A": "hunter2hunter", "B": "r2hun", "C": "pässwörd", "D": "abcab", "E": "bcabc"}
PAYLOADS = ["hunter2hunter", "xhunter2hunter2hunx", "pässwörd", "abcabcabc", "r2hunter2h"]


@pytest.mark.parametrize("payload", PAYLOADS)
def test_secret_across_the_piece_boundary_of_an_endless_line_never_leaks(payload: str) -> None:
    """An endless line is passed on in 64 KiB pieces; a secret straddling the
    boundary, at every byte offset, with a stderr line written in between."""
    data = payload.encode()
    expected = Redactor(SECRETS.values())("x" * 10 + payload + "y\n")
    for k in range(1, len(data)):
        log = BuildLog(lambda: SECRETS)
        chunks: list[bytes] = []
        log.subscribe(chunks.append)
        h = BoundedHarness()
        d = h.start(log=log)
        first = b"x" * (MAX_PENDING_LINE - k) + data[:k]
        h.protocol.childDataReceived(1, first)
        h.protocol.childDataReceived(2, b"interleaved\n")
        h.protocol.childDataReceived(1, data[k:] + b"y\n")
        h.finish(0)
        result_of(d)
        assert b"interleaved\n" in chunks
        stdout = b"".join(c for c in chunks if c != b"interleaved\n").decode()
        assert stdout == "x" * (MAX_PENDING_LINE - k - 10) + expected, k
        for secret in SECRETS.values():
            assert secret not in log.getvalue().decode()
        assert REDACTED in stdout
