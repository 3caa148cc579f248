"""Real bwrap/unshare sandboxes around a busybox tree, run through ProcessRunner."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor

from imaginator.runtime.buildlog import BuildLog
from imaginator.runtime.process import CommandError, ProcessResult, ProcessRunner
from imaginator.runtime.sandbox import (
    BWRAP,
    BindMount,
    base_environment,
    chroot_argv,
    host_argv,
)
from tests.integration._procfs import matching_processes, wait_until_exited

BUSYBOX = "/usr/bin/busybox"
APPLETS = ("sh", "cat", "echo", "ls", "sleep", "test", "mkdir")

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists(BWRAP) or not os.path.exists(BUSYBOX),
    reason="needs root, bwrap and busybox-static",
)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A tiny image tree: busybox, its applet links, and a marker file."""
    tree = tmp_path / "root"
    for name in ("bin", "etc", "proc", "sys", "dev", "tmp", "mnt"):
        (tree / name).mkdir(parents=True)
    shutil.copy2(BUSYBOX, tree / "bin" / "busybox")
    for applet in APPLETS:
        (tree / "bin" / applet).symlink_to("busybox")
    (tree / "etc" / "marker").write_text("inside the image\n")
    return tree


async def sandboxed(
    root: Path,
    script: str,
    *,
    bind_mounts: tuple[BindMount, ...] = (),
    env: dict[str, str] | None = None,
    deadline: float | None = None,
    runner: ProcessRunner | None = None,
) -> ProcessResult:
    argv = chroot_argv(str(root), ["/bin/sh", "-c", script], bind_mounts=bind_mounts)
    return await (runner or ProcessRunner(reactor)).run(
        argv,
        log=BuildLog(),
        env=base_environment(env),
        capture_stdout=True,
        deadline=deadline,
    )


def mount_points() -> list[str]:
    """Mount points of the daemon's own mount namespace."""
    lines = Path("/proc/self/mountinfo").read_text().splitlines()
    return [line.split()[4] for line in lines]


@pytest_twisted.ensureDeferred
async def test_the_tree_is_the_root(root: Path) -> None:
    result = await sandboxed(root, "cat /etc/marker; ls /; test -e /usr || echo no-usr; pwd")
    lines = result.stdout.decode().splitlines()
    assert lines[0] == "inside the image"
    assert "no-usr" in lines
    assert lines[-1] == "/"


@pytest_twisted.ensureDeferred
async def test_proc_is_the_sandboxs_own(root: Path) -> None:
    script = "for p in /proc/[0-9]*; do echo $p; done; test -c /dev/null && echo dev-null"
    result = await sandboxed(root, script)
    # Only bwrap's init and the shell are visible: a new PID namespace.
    assert result.stdout.decode().split() == ["/proc/1", "/proc/2", "dev-null"]


@pytest_twisted.ensureDeferred
async def test_writes_land_in_the_tree(root: Path) -> None:
    await sandboxed(root, "echo written > /tmp/out; mkdir /newdir")
    assert (root / "tmp" / "out").read_text() == "written\n"
    assert (root / "newdir").is_dir()


@pytest_twisted.ensureDeferred
async def test_environment_is_passed(root: Path) -> None:
    result = await sandboxed(root, 'echo "$FOO|$HOME|$PATH"', env={"FOO": "two words"})
    assert (
        result.stdout
        == b"two words|/|/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"
    )


@pytest_twisted.ensureDeferred
async def test_read_only_bind_mount_cannot_be_written(root: Path, tmp_path: Path) -> None:
    host_dir = tmp_path / "ro"
    host_dir.mkdir()
    (host_dir / "file").write_text("from the host\n")
    mounts = (BindMount(str(host_dir), "/mnt/ro"),)
    result = await sandboxed(root, "cat /mnt/ro/file", bind_mounts=mounts)
    assert result.stdout == b"from the host\n"
    with pytest.raises(CommandError):
        await sandboxed(root, "echo x > /mnt/ro/new", bind_mounts=mounts)
    with pytest.raises(CommandError):
        await sandboxed(root, "echo x > /mnt/ro/file", bind_mounts=mounts)
    assert sorted(os.listdir(host_dir)) == ["file"]
    assert (host_dir / "file").read_text() == "from the host\n"


@pytest_twisted.ensureDeferred
async def test_writable_bind_mount_can_be_written(root: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    mounts = (BindMount(str(cache), "/var/cache/x", writable=True),)
    await sandboxed(root, "echo cached > /var/cache/x/entry", bind_mounts=mounts)
    assert (cache / "entry").read_text() == "cached\n"


@pytest_twisted.ensureDeferred
async def test_background_process_does_not_survive(root: Path) -> None:
    await sandboxed(root, "sleep 987654 >/dev/null 2>&1 & echo started")
    assert await wait_until_exited(matching_processes(b"987654")) == []


@pytest_twisted.ensureDeferred
async def test_deadline_kills_everything_in_the_sandbox(root: Path) -> None:
    runner = ProcessRunner(reactor, kill_grace=0.3)
    script = "trap '' TERM; sleep 876543 & wait; wait"
    with pytest.raises(CommandError) as info:
        await sandboxed(root, script, deadline=reactor.seconds() + 0.5, runner=runner)
    assert str(info.value) in ("signal: terminated", "signal: killed")
    assert await wait_until_exited(matching_processes(b"876543")) == []
    assert runner.running() == 0


@pytest_twisted.ensureDeferred
async def test_no_mount_left_under_the_root(root: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    mounts = (BindMount(str(cache), "/mnt/cache", writable=True),)
    await sandboxed(root, "echo ok", bind_mounts=mounts)
    with pytest.raises(CommandError):
        await sandboxed(root, "exit 1", bind_mounts=mounts)
    assert [m for m in mount_points() if m.startswith(str(root))] == []


@pytest_twisted.ensureDeferred
async def test_host_command_mounts_and_children_do_not_leak(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.mkdir()
    script = (
        f"mount -t tmpfs none {target}; echo made > {target}/file; cat {target}/file;"
        " sleep 765432 >/dev/null 2>&1 & echo $$"
    )
    result = await ProcessRunner(reactor).run(
        host_argv(["/bin/sh", "-c", script]),
        log=None,
        env=base_environment(),
        capture_stdout=True,
    )
    # The tmpfs was there for the command, which is init of its own PID namespace.
    assert result.stdout == b"made\n1\n"
    assert [m for m in mount_points() if m.startswith(str(target))] == []
    assert os.listdir(target) == []
    assert await wait_until_exited(matching_processes(b"765432")) == []
