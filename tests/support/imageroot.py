"""Image roots for the tests of ``imaginator.runtime`` tree changes.

Every hostile case plants symlinks in the image that point at a directory
outside the root (``outside``) and checks that nothing there changed and that
the work landed inside the root, where a chroot would have put it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


class Log:
    """Collects log lines."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, line: str) -> None:
        self.lines.append(line)


def new_dir(tmp_path: Path, name: str) -> Path:
    """An empty directory ``name`` in ``tmp_path``."""
    path = tmp_path / name
    path.mkdir()
    return path


def make_outside(tmp_path: Path) -> Path:
    """A host directory outside the root that nothing may touch."""
    path = new_dir(tmp_path, "outside")
    (path / "file").write_bytes(b"host secret\n")
    (path / "sub").mkdir()
    (path / "sub" / "deep").write_bytes(b"deep\n")
    return path


def snapshot(path: Path) -> dict[str, tuple[int, bytes]]:
    """Everything below ``path`` (without following links): mode and contents or target."""
    result: dict[str, tuple[int, bytes]] = {}
    for directory, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            full = os.path.join(directory, name)
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                data = os.fsencode(os.readlink(full))
            elif stat.S_ISREG(st.st_mode):
                data = Path(full).read_bytes()
            else:
                data = b""
            result[os.path.relpath(full, path)] = (st.st_mode, data)
    return result


def inside(root: Path, host_path: Path) -> Path:
    """Where an absolute host path lands when taken as a path inside the image."""
    return root / str(host_path).lstrip("/")


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)
