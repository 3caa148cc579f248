"""Writing files into the embedded store so that readers only see complete ones.

Every file is written in the store's ``tmp/`` first (as an unnamed
``O_TMPFILE`` where the kernel allows, else under a temporary name) and then
linked or renamed into place (:class:`TempArea`), so a crash leaves at most
named temporary files, which :meth:`TempArea.recover` removes when the next
store opens. Named temporary files carry the writer's pid and a per-process
token, so files of a live writer are never taken for leftovers.

Also here: the durability helpers (:func:`fsync_dir`, :func:`syncfs`) and
:func:`write_all`. Everything blocks; the daemon calls it from its thread pool.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import itertools
import os
import secrets
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

__all__ = ["PROCESS_TOKEN", "NewFile", "TempArea", "fsync_dir", "syncfs", "write_all"]

PROCESS_TOKEN = secrets.token_hex(4)
"""Distinguishes this process's temporary files from those of an earlier
process that happened to have the same pid (containers reuse pids)."""


@dataclass(frozen=True, slots=True)
class NewFile:
    """A file being written: ``path`` is ``None`` for an unnamed file."""

    fd: int
    path: str | None

    def link(self, final: str) -> None:
        """Give the file the name ``final`` (``FileExistsError`` if taken)."""
        if self.path is None:
            # linkat(AT_SYMLINK_FOLLOW) on /proc/self/fd/N names an O_TMPFILE
            # file. CPython only calls linkat when a dir fd is given; the
            # kernel ignores it because the source path is absolute.
            os.link(f"/proc/self/fd/{self.fd}", final, src_dir_fd=self.fd, follow_symlinks=True)
        else:
            os.link(self.path, final)


class TempArea:
    """The store's ``tmp/`` directory, where every file is born."""

    def __init__(self, tmp_dir: str) -> None:
        self.tmp_dir = tmp_dir
        self.use_tmpfile = hasattr(os, "O_TMPFILE") and os.path.isdir("/proc/self/fd")
        self._counter = itertools.count()

    @contextlib.contextmanager
    def new_file(self, *, named: bool = False) -> Iterator[NewFile]:
        """A new file (mode 0644) in ``tmp/``: unnamed (``O_TMPFILE``) where
        the kernel supports it, so a crash leaves nothing behind; otherwise
        named ``<pid>.<token>.<n>`` and removed on exit unless renamed."""
        new = self.open_file(named=named)
        try:
            yield new
        finally:
            self.discard(new)

    def open_file(self, *, named: bool = False) -> NewFile:
        """A new file as :meth:`new_file` makes, for a writer that cannot
        keep it inside one ``with`` block (data arriving over the network);
        the caller must :meth:`discard` it once it is linked in or given up."""
        return NewFile(*self._open_new(named))

    @staticmethod
    def discard(new: NewFile) -> None:
        """Close a file from :meth:`open_file` and remove its temporary name."""
        os.close(new.fd)
        if new.path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(new.path)

    def _open_new(self, named: bool) -> tuple[int, str | None]:
        if self.use_tmpfile and not named:
            try:
                flags = os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC
                return os.open(self.tmp_dir, flags, 0o644), None
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                    raise
                self.use_tmpfile = False
        path = os.path.join(self.tmp_dir, f"{os.getpid()}.{PROCESS_TOKEN}.{next(self._counter)}")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        return os.open(path, flags, 0o644), path

    def recover(self) -> None:
        """Remove what processes that died while writing left in ``tmp/``."""
        for name in os.listdir(self.tmp_dir):
            if _temp_in_use(name):
                continue
            path = os.path.join(self.tmp_dir, name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)


def write_all(fd: int, data: bytes | memoryview) -> None:
    """Write all of ``data`` to ``fd`` (``os.write`` may write less)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def fsync_dir(directory: str) -> None:
    """Make the entries of ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_libc: Any = None


def syncfs(path: str) -> None:
    """Flush the file-system holding ``path`` (one syscall instead of an
    fsync per file)."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    call = getattr(_libc, "syncfs", None)
    if call is None:
        os.sync()
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if call(fd) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code), path)
    finally:
        os.close(fd)


def _temp_in_use(name: str) -> bool:
    """Whether a temporary file may belong to a live writer: its name starts
    with the pid and process token of the process that made it."""
    pid_text, _, rest = name.partition(".")
    if not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return rest.startswith(PROCESS_TOKEN + ".")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
