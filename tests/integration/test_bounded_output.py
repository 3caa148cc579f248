"""Output the daemon reads from real children is bounded: image tests, ``dot``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor

from imaginator.pipeline.pack import TEST_OUTPUT_LIMIT, BuildEnv, _run_test
from imaginator.runtime.buildlog import BuildLog
from imaginator.runtime.process import CommandError, ProcessRunner
from imaginator.web.graph_pages import DotError, spawn_dot

ENV = {"PATH": "/usr/bin:/bin"}


def script(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


class HostEnv(BuildEnv):
    """Runs an image test's file on the host instead of in the sandbox, and
    records how much output the runner handed back."""

    def __init__(self) -> None:
        super().__init__(reactor, None, ProcessRunner(reactor), None, None, BuildLog())
        self.captured: list[int] = []

    async def run_in_root(self, root: str, argv: list[str], *, step: str, **kwargs: Any):
        try:
            result = await self.runner.run([argv[-1]], log=self.log, env=ENV, step=step, **kwargs)
        except CommandError as exc:
            self.captured.append(len(exc.stdout) + len(exc.stderr))
            raise
        self.captured.append(len(result.stdout) + len(result.stderr))
        return result


@pytest_twisted.ensureDeferred
async def test_test_output_is_bounded_while_it_is_captured(tmp_path: Path) -> None:
    flood = script(tmp_path, "flood", "head -c 8000000 /dev/zero | tr '\\0' x\necho end >&2\n")
    env = HostEnv()
    text, error, _took = await _run_test(env, "/", str(flood))
    assert error == ""
    assert text == "x" * TEST_OUTPUT_LIMIT + f"\n[output truncated at {TEST_OUTPUT_LIMIT} bytes]\n"
    # Never more than the limit per stream was held, not 8 MB.
    assert env.captured and max(env.captured) <= 2 * TEST_OUTPUT_LIMIT


@pytest_twisted.ensureDeferred
async def test_failing_test_output_is_bounded_too(tmp_path: Path) -> None:
    flood = script(tmp_path, "fails", "head -c 1000000 /dev/zero | tr '\\0' y\nexit 3\n")
    env = HostEnv()
    text, error, _took = await _run_test(env, "/", str(flood))
    assert error == "exit status 3"
    assert text.startswith("y" * TEST_OUTPUT_LIMIT + "\n[output truncated")
    assert max(env.captured) <= 2 * TEST_OUTPUT_LIMIT


@pytest_twisted.ensureDeferred
async def test_dot_output_over_the_cap_is_an_error(tmp_path: Path) -> None:
    fake = script(tmp_path, "dot", "cat >/dev/null\nhead -c 100000 /dev/zero\n")
    run_dot = spawn_dot(reactor, str(fake), output_limit=1024)
    with pytest.raises(DotError, match=r"dot: stdout larger than 1 KiB$"):
        await run_dot("digraph all {}\n")


@pytest_twisted.ensureDeferred
async def test_dot_that_hangs_is_stopped_at_its_deadline(tmp_path: Path) -> None:
    fake = script(tmp_path, "dot", "exec sleep 1000\n")
    runner = ProcessRunner(reactor, kill_grace=0.2)
    run_dot = spawn_dot(reactor, str(fake), runner=runner, timeout=0.3)
    with pytest.raises(DotError, match=r"dot: signal: terminated$"):
        await run_dot("digraph all {}\n")
    assert runner.running() == 0
