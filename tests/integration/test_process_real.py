"""ProcessRunner with real children on the real reactor."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred

from imaginator.runtime.buildlog import BuildLog
from imaginator.runtime.process import CommandError, ProcessRunner
from tests.integration._procfs import group_members, group_survivors, wait_until_exited

SH = "/bin/sh"


def stat_fields(stat: bytes) -> tuple[int, int, int]:
    """(pid, pgrp, session) from a /proc/<pid>/stat line."""
    text = stat.decode()
    rest = text[text.rindex(")") + 2 :].split()
    return int(text.split()[0]), int(rest[2]), int(rest[3])


@pytest_twisted.ensureDeferred
async def test_output_lines_streamed_in_order() -> None:
    log = BuildLog()
    chunks: list[bytes] = []
    log.subscribe(chunks.append)
    script = 'i=0; while [ $i -lt 300 ]; do echo "line $i"; i=$((i+1)); done; printf tail'
    result = await ProcessRunner(reactor).run([SH, "-c", script], log=log, env={})
    assert result.exit_code == 0
    assert chunks == [f"line {i}\n".encode() for i in range(300)] + [b"tail"]


@pytest_twisted.ensureDeferred
async def test_lines_arrive_while_the_child_runs() -> None:
    runner = ProcessRunner(reactor)
    log = BuildLog()
    seen_while_running: list[tuple[bytes, int]] = []

    def on_chunk(chunk: bytes) -> None:
        seen_while_running.append((chunk, runner.running()))
        runner.kill_all("test is done")

    log.subscribe(on_chunk)
    with pytest.raises(CommandError) as info:
        await runner.run([SH, "-c", "echo first >&2; exec sleep 1000"], log=log, env={})
    assert seen_while_running[0] == (b"first\n", 1)
    assert str(info.value) == "signal: killed"
    assert info.value.killed_because == "test is done"
    assert runner.running() == 0


@pytest_twisted.ensureDeferred
async def test_stdin_fed_and_closed() -> None:
    data = os.urandom(1 << 20)
    result = await ProcessRunner(reactor).run(
        ["/bin/cat"], log=None, env={}, stdin=data, capture_stdout=True
    )
    assert result.stdout == data


@pytest_twisted.ensureDeferred
async def test_inputs_on_further_descriptors() -> None:
    runner = ProcessRunner(reactor)
    result = await runner.run(
        [SH, "-c", "cat <&3; echo; cat <&4"],
        log=None,
        env={},
        inputs={3: b"three", 4: b"four"},
        capture_stdout=True,
    )
    assert result.stdout == b"three\nfour"
    with pytest.raises(ValueError, match="fd 2"):
        await runner.run([SH, "-c", "true"], log=None, env={}, inputs={2: b"x"})


@pytest_twisted.ensureDeferred
async def test_no_stdin_reads_eof() -> None:
    result = await ProcessRunner(reactor).run(["/bin/cat"], log=None, env={}, capture_stdout=True)
    assert result.stdout == b""


@pytest_twisted.ensureDeferred
async def test_exit_status_text() -> None:
    runner = ProcessRunner(reactor)
    with pytest.raises(CommandError) as info:
        await runner.run([SH, "-c", "exit 3"], log=None, env={}, step="1_fail")
    assert f"error running script: {info.value.step}: {info.value}" == (
        "error running script: 1_fail: exit status 3"
    )
    with pytest.raises(CommandError, match=r"^signal: terminated$"):
        await runner.run([SH, "-c", "kill -TERM $$"], log=None, env={})


@pytest_twisted.ensureDeferred
async def test_missing_program() -> None:
    log = BuildLog()
    with pytest.raises(CommandError, match=r"^exit status 127$"):
        await ProcessRunner(reactor).run(["/no/such/program"], log=log, env={})
    assert b"/no/such/program" in log.getvalue()


@pytest_twisted.ensureDeferred
async def test_environment_is_exactly_the_one_given() -> None:
    os.environ.setdefault("IMAGINATOR_TEST_LEAK", "leaked")
    result = await ProcessRunner(reactor).run(
        ["/usr/bin/env"], log=None, env={"ONLY": "this one"}, capture_stdout=True
    )
    assert result.stdout == b"ONLY=this one\n"


@pytest_twisted.ensureDeferred
async def test_cwd(tmp_path: Path) -> None:
    result = await ProcessRunner(reactor).run(
        ["/bin/pwd"], log=None, env={}, cwd=str(tmp_path), capture_stdout=True
    )
    assert result.stdout.decode().strip() == str(tmp_path)


@pytest_twisted.ensureDeferred
async def test_child_leads_a_new_session_and_group() -> None:
    result = await ProcessRunner(reactor).run(
        ["/bin/cat", "/proc/self/stat"], log=None, env={}, capture_stdout=True
    )
    pid, pgrp, session = stat_fields(result.stdout)
    assert pid == pgrp == session
    assert pgrp != os.getpgrp()


@pytest_twisted.ensureDeferred
async def test_deadline_kills_the_whole_group_even_when_term_is_ignored() -> None:
    runner = ProcessRunner(reactor, kill_grace=0.3)
    log = BuildLog()
    # The shell and its background sleep both ignore SIGTERM.
    script = "trap '' TERM; sleep 1000 & echo $$; wait; wait; echo survived"
    with pytest.raises(CommandError) as info:
        await runner.run(
            [SH, "-c", script],
            log=log,
            env={"PATH": "/usr/bin:/bin"},
            deadline=reactor.seconds() + 0.5,
            step="slow",
        )
    assert str(info.value) == "signal: killed"
    assert info.value.step == "slow"
    pgid = int(log.getvalue().split()[0])
    assert b"survived" not in log.getvalue()
    assert await group_survivors(pgid) == []
    assert runner.running() == 0


@pytest_twisted.ensureDeferred
async def test_background_process_dies_with_its_leader() -> None:
    log = BuildLog()
    # The sleep holds the output pipes: the run ends when it has been killed.
    script = "sleep 1000 & echo $$"
    await ProcessRunner(reactor, kill_grace=30).run(
        [SH, "-c", script], log=log, env={"PATH": "/usr/bin:/bin"}
    )
    assert await group_survivors(int(log.getvalue())) == []


@pytest_twisted.ensureDeferred
async def test_children_run_at_the_configured_lower_priority() -> None:
    env = {"PATH": "/usr/bin:/bin"}
    plain = await ProcessRunner(reactor).run(["nice"], log=None, env=env, capture_stdout=True)
    niced = await ProcessRunner(reactor, niceness=10).run(
        ["nice"], log=None, env=env, capture_stdout=True
    )
    assert int(niced.stdout) == int(plain.stdout) + 10


class SigkillHeldBack:
    """A ``killpg`` that delivers every signal but SIGKILL.

    A child stuck in the kernel (D state) cannot be made on purpose; to the
    runner, one whose SIGKILL has no effect looks the same.
    """

    def __init__(self) -> None:
        self.sent: list[int] = []

    def __call__(self, pgid: int, sig: int) -> None:
        self.sent.append(sig)
        if sig != signal.SIGKILL:
            os.killpg(pgid, sig)


async def _really_kill(pgid: int) -> None:
    os.killpg(pgid, signal.SIGKILL)
    assert await wait_until_exited(group_members(pgid)) == []


@pytest_twisted.ensureDeferred
async def test_child_that_sigkill_does_not_end_fails_the_run_after_the_bound() -> None:
    killpg = SigkillHeldBack()
    runner = ProcessRunner(reactor, kill_grace=0.2, kill_wait=0.3, killpg=killpg)
    log = BuildLog()
    # SIGTERM is ignored by the shell and by the sleep it becomes.
    script = "trap '' TERM; echo $$; exec sleep 1000"
    with pytest.raises(CommandError) as info:
        await runner.run(
            [SH, "-c", script],
            log=log,
            env={"PATH": "/usr/bin:/bin"},
            deadline=reactor.seconds() + 0.3,
            step="stuck",
        )
    pgid = int(log.getvalue().split()[0])
    assert str(info.value) == (
        f"context deadline exceeded: process {pgid} did not exit after SIGKILL"
    )
    assert killpg.sent == [signal.SIGTERM, signal.SIGKILL]
    # It survived SIGTERM and is still there: the run ended without it.
    assert group_members(pgid) == [pgid]
    assert runner.running() == 0
    await _really_kill(pgid)


@pytest_twisted.ensureDeferred
async def test_kill_all_returns_within_its_bound_with_a_stuck_child() -> None:
    killpg = SigkillHeldBack()
    runner = ProcessRunner(reactor, kill_wait=3600, killpg=killpg)
    log = BuildLog()
    started = Deferred()
    log.subscribe(lambda chunk: started.called or started.callback(chunk))
    running = Deferred.fromCoroutine(
        runner.run([SH, "-c", "echo $$; exec sleep 1000"], log=log, env={"PATH": "/bin"})
    )
    pgid = int(await started)
    await runner.kill_all("daemon shutting down", timeout=0.3)
    with pytest.raises(CommandError, match="did not exit after SIGKILL"):
        await running
    assert killpg.sent == [signal.SIGKILL]
    assert runner.running() == 0
    await _really_kill(pgid)
