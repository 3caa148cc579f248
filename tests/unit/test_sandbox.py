"""The sandbox command lines and environment (pure functions)."""

from __future__ import annotations

import pytest

from imaginator.runtime.sandbox import (
    PATH,
    BindMount,
    base_environment,
    chroot_argv,
    host_argv,
)


def test_chroot_argv() -> None:
    argv = chroot_argv(
        "/tmp/root",
        ["/bin/generic-packager", "run", "/.scripts/1 x"],
        bind_mounts=[BindMount("/etc/ssl", "/etc/ssl"), BindMount("/c", "/var/cache", True)],
        bwrap="/usr/bin/bwrap",
    )
    assert argv == [
        "/usr/bin/bwrap",
        "--bind", "/tmp/root", "/",
        "--proc", "/proc",
        "--dev", "/dev",
        "--ro-bind", "/sys", "/sys",
        "--unshare-pid", "--unshare-ipc", "--die-with-parent", "--new-session",
        "--chdir", "/",
        "--ro-bind", "/etc/ssl", "/etc/ssl",
        "--bind", "/c", "/var/cache",
        "--",
        "/bin/generic-packager", "run", "/.scripts/1 x",
    ]  # fmt: skip


def test_chroot_argv_without_proc_and_sys() -> None:
    argv = chroot_argv("/r", ["true"], with_proc_sys=False, bwrap="bwrap")
    assert argv == [
        "bwrap",
        "--bind", "/r", "/",
        "--dev", "/dev",
        "--unshare-pid", "--unshare-ipc", "--die-with-parent", "--new-session",
        "--chdir", "/",
        "--", "true",
    ]  # fmt: skip


def test_chroot_argv_with_a_seccomp_filter_from_a_descriptor() -> None:
    argv = chroot_argv("/r", ["true"], seccomp_fd=3, bwrap="bwrap")
    assert argv[argv.index("--seccomp") : argv.index("--seccomp") + 2] == ["--seccomp", "3"]
    assert argv.index("--seccomp") < argv.index("--")
    assert "--seccomp" not in chroot_argv("/r", ["true"], bwrap="bwrap")


def test_chroot_argv_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        chroot_argv("/r", [])
    with pytest.raises(ValueError):
        chroot_argv("/r", ["true"], bind_mounts=[BindMount("/a", "relative")])


def test_bind_mount_defaults_to_read_only() -> None:
    assert BindMount("/a", "/b").writable is False


def test_host_argv() -> None:
    argv = host_argv(
        ["debootstrap", "bookworm", "/tmp/x"],
        unshare="/usr/bin/unshare",
        setpriv="/usr/bin/setpriv",
    )
    assert argv == [
        "/usr/bin/setpriv", "--pdeathsig", "KILL",
        "/usr/bin/unshare",
        "--mount", "--propagation", "private",
        "--pid", "--fork", "--kill-child", "--mount-proc",
        "--",
        "debootstrap", "bookworm", "/tmp/x",
    ]  # fmt: skip
    with pytest.raises(ValueError):
        host_argv([])


def test_base_environment() -> None:
    assert base_environment() == {
        "HOME": "/",
        "LOGNAME": "root",
        "PATH": PATH,
        "USER": "root",
    }
    assert PATH == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def test_base_environment_with_tz_and_variables_sorted() -> None:
    env = base_environment({"ZED": "1", "HOME": "/root", "ARCH": "amd64"}, tz="UTC")
    assert list(env.items()) == [
        ("ARCH", "amd64"),
        ("HOME", "/root"),
        ("LOGNAME", "root"),
        ("PATH", PATH),
        ("TZ", "UTC"),
        ("USER", "root"),
        ("ZED", "1"),
    ]


def test_variable_values_never_on_the_command_line() -> None:
    env = base_environment({"SECRET": "hunter2"})
    argv = chroot_argv("/r", ["sh"]) + host_argv(["sh"])
    assert not any("hunter2" in arg for arg in argv)
    assert env["SECRET"] == "hunter2"
