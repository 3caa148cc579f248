"""Command lines that run build commands in a sandbox (pure functions).

Build commands run under ``bwrap`` (bubblewrap) with the image root as ``/``:
a fresh ``/proc``, a minimal ``/dev``, a read-only ``/sys``, and new mount, PID
and IPC namespaces. The command is PID 1's child in its PID namespace, so every
process it starts (a daemon started by a package's postinst script, a
``sleep &``) dies with it, and its mounts vanish with its mount namespace: no
mount survives a build, even a killed one.

The bootstrap command (``debootstrap`` …) has to run on the host tree; it gets
its own mount and PID namespaces through util-linux ``unshare``.

The environment is never part of these command lines (anyone can read a
process's argv in ``/proc``): :func:`base_environment` builds the mapping that
the caller passes to the process runner as the child's environment.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

BWRAP = shutil.which("bwrap") or "/usr/bin/bwrap"
UNSHARE = shutil.which("unshare") or "/usr/bin/unshare"
SETPRIV = shutil.which("setpriv") or "/usr/bin/setpriv"

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
"""The ``PATH`` every build command gets (reference §5.1.3)."""


@dataclass(frozen=True)
class BindMount:
    """A host directory made visible at ``target`` inside the build root.

    Read-only unless ``writable`` (the per-stream cache is the only writable
    one). ``target`` is an absolute path inside the root.
    """

    source: str
    target: str
    writable: bool = False


def chroot_argv(
    root: str,
    argv: Sequence[str],
    *,
    bind_mounts: Iterable[BindMount] = (),
    with_proc_sys: bool = True,
    seccomp_fd: int | None = None,
    bwrap: str = BWRAP,
) -> list[str]:
    """The ``bwrap`` command line that runs ``argv`` with ``root`` as ``/``.

    ``with_proc_sys=False`` leaves out ``/proc`` and ``/sys``. bwrap creates
    missing mount points (``/proc``, ``/dev``, a bind mount's target) in the
    tree, as the Go daemon's mounts required them to exist. ``seccomp_fd``:
    bwrap loads a seccomp filter program from that descriptor of its own
    (``runtime.nosync``) and applies it to ``argv``.
    """
    if not argv:
        raise ValueError("empty argv")
    command = [bwrap, "--bind", root, "/"]
    if with_proc_sys:
        command += ["--proc", "/proc"]
    command += ["--dev", "/dev"]
    if with_proc_sys:
        command += ["--ro-bind", "/sys", "/sys"]
    command += ["--unshare-pid", "--unshare-ipc", "--die-with-parent", "--new-session"]
    command += ["--chdir", "/"]
    if seccomp_fd is not None:
        command += ["--seccomp", str(seccomp_fd)]
    for mount in bind_mounts:
        command += _bind_mount_args(mount)
    return [*command, "--", *argv]


def _bind_mount_args(mount: BindMount) -> list[str]:
    if not mount.target.startswith("/"):
        raise ValueError(f"bind mount target is not absolute: {mount.target}")
    return ["--bind" if mount.writable else "--ro-bind", mount.source, mount.target]


def host_argv(argv: Sequence[str], *, unshare: str = UNSHARE, setpriv: str = SETPRIV) -> list[str]:
    """The command line that runs ``argv`` on the host tree in new namespaces.

    A private mount namespace (with its own ``/proc``) so nothing it mounts
    leaks to the host, and a PID namespace whose init is ``argv``, so every
    process it starts dies with it; ``--kill-child`` kills that init when
    ``unshare`` itself is killed. ``setpriv --pdeathsig KILL`` kills
    ``unshare`` when the daemon dies, even by ``kill -9``, so a crashed daemon
    leaves no build running.
    """
    if not argv:
        raise ValueError("empty argv")
    return [
        setpriv,
        "--pdeathsig",
        "KILL",
        unshare,
        "--mount",
        "--propagation",
        "private",
        "--pid",
        "--fork",
        "--kill-child",
        "--mount-proc",
        "--",
        *argv,
    ]


def base_environment(
    extra: Mapping[str, str] | None = None, tz: str | None = None
) -> dict[str, str]:
    """The whole environment of a build command (reference §5.1.3).

    ``tz`` is the daemon's own ``TZ`` (pass ``os.environ.get("TZ")``), the only
    variable inherited; ``extra`` (the build variables, for steps that get
    them) goes on top. Sorted by name, as Go sorts the list.
    """
    env: dict[str, str] = {}
    if tz is not None:
        env["TZ"] = tz
    env.update(HOME="/", LOGNAME="root", USER="root", PATH=PATH)
    if extra:
        env.update(extra)
    return dict(sorted(env.items()))
