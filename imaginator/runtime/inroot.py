"""Paths inside an image root, resolved as if chrooted there (reference §5.2, §5.4).

The build changes an image root from the host, as root, in a tree that
earlier build steps (package scripts, manifest scripts, the source image)
filled with whatever they liked. This module holds what every such change
stands on: resolving a path inside the image **as if chrooted at the root**
and the primitives that act on what it resolved to.

- an absolute symlink target restarts at the root, ``..`` never climbs above
  it, and at most :data:`MAX_SYMLINKS` symlinks are followed per path;
- resolution works one component at a time on directory file descriptors
  opened with ``O_NOFOLLOW``, so a symlink can never be followed by the
  kernel behind our back, and ``..`` is handled by re-opening the chain of
  real directory names from the root (:func:`open_chain`) rather than by
  opening ``..``;
- the final component of a destination we replace is never followed: a new
  file or symlink is written to ``<name>~`` (after unlinking whatever was
  there) and renamed over ``<name>`` (:func:`replace_file`,
  :func:`replace_symlink`), which replaces a symlink rather than writing
  through it;
- an existing file is only ever read or appended to after checking, on an
  ``O_PATH`` descriptor, that it is a regular file, and then re-opening that
  very inode through ``/proc/self/fd`` (:func:`reopen_regular`; a device
  node or FIFO planted in the image is never opened).

Paths shown in log lines and errors go through :func:`show` (control
characters escaped, so a file name with a newline cannot forge a log line);
paths returned to callers are the real ones.

The entry points for one path are :func:`resolve_in_root`,
:func:`open_dir_in_root` and :func:`write_file_in_root`; copying trees is in
``treecopy``, deleting them in ``treedelete``. Every function here blocks
(callers run them in the reactor's thread pool) and every failure is a
:class:`TreeCopyError`.
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

__all__ = [
    "CHUNK_SIZE",
    "MAX_SYMLINKS",
    "O_DIR",
    "O_NEW",
    "O_SOURCE",
    "Location",
    "OnCreate",
    "TreeCopyError",
    "chown_root",
    "error_text",
    "failing",
    "join_image_path",
    "lstat_at",
    "make_dir",
    "normalise_image_path",
    "not_found",
    "open_chain",
    "open_dir_in_root",
    "open_image_dir",
    "open_root",
    "read_chunks",
    "reopen_dir",
    "reopen_regular",
    "replace_file",
    "replace_symlink",
    "resolve_in_root",
    "resolve_location",
    "show",
    "split_path",
    "unlink_if_exists",
    "write_all",
    "write_file_in_root",
]

MAX_SYMLINKS = 40
"""Symlinks followed while resolving one path before giving up (as Linux)."""

CHUNK_SIZE = 1 << 20
"""Bytes read at a time when copying file contents."""

_O_ROOT = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
O_DIR = _O_ROOT | os.O_NOFOLLOW
_O_PATH = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
O_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
O_SOURCE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


class TreeCopyError(Exception):
    """A tree could not be copied into, or changed inside, an image root."""


# ------------------------------------------------------------------ helpers


def show(text: str) -> str:
    """``text`` with non-printable characters escaped, for logs and errors."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


def join_image_path(parts: Iterable[str]) -> str:
    """The absolute image path made of the components ``parts``."""
    return "/" + "/".join(parts)


def split_path(path: str) -> list[str]:
    """The components of ``path`` without empty and ``.`` ones (``..`` kept)."""
    return [part for part in path.split("/") if part not in ("", ".")]


def error_text(exc: OSError) -> str:
    """The reason of ``exc`` without the path Python adds (for our own messages)."""
    return exc.strerror or str(exc)


@contextmanager
def failing(context: str) -> Iterator[None]:
    """Turn an ``OSError`` raised inside the block into a :class:`TreeCopyError`."""
    try:
        yield
    except OSError as exc:
        raise TreeCopyError(f"{context}: {error_text(exc)}") from exc


def not_found(path: str) -> FileNotFoundError:
    """The error for a missing component ``path`` (a real ``ENOENT``)."""
    return FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)


def normalise_image_path(path: str) -> str:
    """``path`` as a clean absolute path inside the image (``..`` removed lexically)."""
    return posixpath.normpath("/" + path.lstrip("/"))


def open_root(root: str) -> int:
    """Open the image root itself (a trusted host path, so symlinks in it are fine)."""
    with failing(f"error opening image root {show(root)}"):
        return os.open(root, _O_ROOT)


def reopen_dir(dir_fd: int) -> int:
    """A new, independent descriptor for the directory ``dir_fd``."""
    return os.open(".", _O_ROOT, dir_fd=dir_fd)


def open_chain(base_fd: int, parts: Sequence[str | bytes]) -> int:
    """Open the real directories ``parts`` below ``base_fd``, never following a link."""
    fd = reopen_dir(base_fd)
    try:
        for part in parts:
            next_fd = os.open(part, O_DIR, dir_fd=fd)
            os.close(fd)
            fd = next_fd
    except BaseException:
        os.close(fd)
        raise
    return fd


def lstat_at(dir_fd: int, name: str) -> os.stat_result | None:
    """``lstat`` of ``name`` in ``dir_fd``; ``None`` if it does not exist."""
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def make_dir(dir_fd: int, name: str, mode: int) -> None:
    """``mkdir`` with exactly ``mode`` (the umask does not apply)."""
    os.mkdir(name, mode, dir_fd=dir_fd)
    fd = os.open(name, O_DIR, dir_fd=dir_fd)
    try:
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def chown_root(fd: int) -> None:
    """Make ``fd``'s file owned by root (when we are root; otherwise it is ours)."""
    if os.geteuid() == 0:
        os.fchown(fd, 0, 0)


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd`` (``os.write`` may write less)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def read_chunks(fd: int) -> Iterator[bytes]:
    """The contents of the file ``fd`` from offset 0."""
    offset = 0
    while chunk := os.pread(fd, CHUNK_SIZE, offset):
        yield chunk
        offset += len(chunk)


def reopen_regular(dir_fd: int, name: str, flags: int) -> int | None:
    """Open ``name`` with ``flags`` only if it is a regular file (never a link or device).

    The type is checked on an ``O_PATH`` descriptor (opening that has no side
    effects) and the same inode is then re-opened through ``/proc/self/fd``.
    """
    path_fd = os.open(name, _O_PATH, dir_fd=dir_fd)
    try:
        if not stat.S_ISREG(os.fstat(path_fd).st_mode):
            return None
        return os.open(f"/proc/self/fd/{path_fd}", flags | os.O_CLOEXEC)
    finally:
        os.close(path_fd)


def unlink_if_exists(dir_fd: int, name: str) -> None:
    """Unlink ``name`` in ``dir_fd``; a missing one is fine."""
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass


def replace_file(dir_fd: int, name: str, chunks: Iterable[bytes], mode: int) -> None:
    """Write ``<name>~`` (owner root, ``mode``) and rename it over ``name``."""
    temp = name + "~"
    unlink_if_exists(dir_fd, temp)
    fd = os.open(temp, O_NEW, 0o600, dir_fd=dir_fd)
    try:
        try:
            for chunk in chunks:
                write_all(fd, chunk)
            chown_root(fd)
            os.fchmod(fd, mode)
        finally:
            os.close(fd)
        os.rename(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        unlink_if_exists(dir_fd, temp)
        raise


def replace_symlink(dir_fd: int, name: str, target: str) -> None:
    """Create the symlink ``<name>~`` → ``target`` and rename it over ``name``."""
    temp = name + "~"
    unlink_if_exists(dir_fd, temp)
    os.symlink(target, temp, dir_fd=dir_fd)
    try:
        if os.geteuid() == 0:
            os.chown(temp, 0, 0, dir_fd=dir_fd, follow_symlinks=False)
        os.rename(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        unlink_if_exists(dir_fd, temp)
        raise


# --------------------------------------------------------------- resolution

OnCreate = Callable[[str, bool], None]
"""Called with the image path of each directory created, and whether it is the final one."""


@dataclass
class Location:
    """Where a path resolved to: ``name`` inside the open directory ``dir_fd``.

    ``name`` is ``None`` when the path designates ``dir_fd`` itself (``/``,
    ``a/..``). ``virtual`` holds trailing components below a missing
    directory (only in lexical mode). The caller owns ``dir_fd``.
    """

    dir_fd: int
    dir_parts: list[str]
    name: str | None = None
    virtual: list[str] = field(default_factory=list)

    @property
    def parts(self) -> list[str]:
        tail = [] if self.name is None else [self.name]
        return [*self.dir_parts, *self.virtual, *tail]

    @property
    def image_path(self) -> str:
        return join_image_path(self.parts)


class _Walk:
    """The state of one chroot-style resolution: a directory fd and its real path."""

    def __init__(self, root_fd: int, path: str) -> None:
        self.root_fd = root_fd
        self.path = path
        self.pending: deque[str] = deque(split_path(path))
        self.parts: list[str] = []
        self.virtual: list[str] = []
        self.links = 0
        self.fd = reopen_dir(root_fd)

    def image_path(self, name: str) -> str:
        return join_image_path([*self.parts, name])

    def _switch(self, fd: int) -> None:
        os.close(self.fd)
        self.fd = fd

    def up(self) -> None:
        """``..``: one level up, never above the root."""
        if self.virtual:
            self.virtual.pop()
        elif self.parts:
            self.parts.pop()
            self._switch(open_chain(self.root_fd, self.parts))

    def follow(self, name: str) -> None:
        """Replace the symlink ``name`` by its target's components."""
        self.links += 1
        if self.links > MAX_SYMLINKS:
            raise TreeCopyError(f"{show(self.path)}: too many levels of symbolic links")
        target = os.readlink(name, dir_fd=self.fd)
        if target.startswith("/"):
            self.parts = []
            self._switch(reopen_dir(self.root_fd))
        self.pending.extendleft(reversed(split_path(target)))

    def descend(self, name: str) -> None:
        """Enter the real directory ``name``."""
        try:
            fd = os.open(name, O_DIR, dir_fd=self.fd)
        except OSError as exc:
            if exc.errno in (errno.ENOTDIR, errno.ELOOP):
                raise TreeCopyError(f"{show(self.image_path(name))} is not a directory") from exc
            raise
        self._switch(fd)
        self.parts.append(name)

    def location(self, name: str | None) -> Location:
        return Location(self.fd, self.parts, name, self.virtual)


def resolve_location(
    root_fd: int,
    path: str,
    *,
    follow_final: bool,
    create: bool = False,
    mode: int = 0o755,
    on_create: OnCreate | None = None,
    lexical: bool = False,
) -> Location:
    """Resolve ``path`` chroot-style up to (not into) its final component.

    Intermediate symlinks are always followed, the final one only if
    ``follow_final``. A missing intermediate directory is created (``create``),
    kept as a trailing name (``lexical``) or an error (``FileNotFoundError``).
    The final component need not exist.
    """
    walk = _Walk(root_fd, path)
    try:
        while walk.pending:
            name = walk.pending.popleft()
            final = not walk.pending
            if name == "..":
                walk.up()
                continue
            if walk.virtual:
                walk.virtual.append(name)
                continue
            st = lstat_at(walk.fd, name)
            if st is not None and stat.S_ISLNK(st.st_mode) and (follow_final or not final):
                walk.follow(name)
            elif final:
                return walk.location(name)
            elif st is None and create:
                make_dir(walk.fd, name, mode)
                if on_create is not None:
                    on_create(walk.image_path(name), False)
                walk.descend(name)
            elif st is None and lexical:
                walk.virtual.append(name)
            elif st is None:
                raise not_found(walk.image_path(name))
            elif not stat.S_ISDIR(st.st_mode):
                raise TreeCopyError(f"{show(walk.image_path(name))} is not a directory")
            else:
                walk.descend(name)
        return walk.location(None)
    except BaseException:
        os.close(walk.fd)
        raise


def open_image_dir(
    root_fd: int,
    path: str,
    *,
    create: bool = False,
    mode: int = 0o755,
    on_create: OnCreate | None = None,
) -> tuple[int, str]:
    """Open the directory ``path`` (following every symlink chroot-style).

    Returns the descriptor and the directory's real image path.
    """
    location = resolve_location(
        root_fd, path, follow_final=True, create=create, mode=mode, on_create=on_create
    )
    if location.name is None:
        return location.dir_fd, location.image_path
    try:
        parent_fd = location.dir_fd
        if lstat_at(parent_fd, location.name) is None:
            if not create:
                raise not_found(location.image_path)
            make_dir(parent_fd, location.name, mode)
            if on_create is not None:
                on_create(location.image_path, True)
        try:
            fd = os.open(location.name, O_DIR, dir_fd=parent_fd)
        except OSError as exc:
            if exc.errno in (errno.ENOTDIR, errno.ELOOP):
                raise TreeCopyError(f"{show(location.image_path)} is not a directory") from exc
            raise
        return fd, location.image_path
    finally:
        os.close(location.dir_fd)


def resolve_in_root(root: str, path: str, *, follow_final: bool = True) -> str:
    """The host path that ``path`` (absolute inside the image) designates.

    Resolved as if chrooted at ``root``: absolute symlink targets restart at
    ``root``, ``..`` stops at it. The final component is followed only if
    ``follow_final``. Missing components are allowed: they (and what follows
    them) are taken literally. Loops and more than :data:`MAX_SYMLINKS` links
    raise :class:`TreeCopyError`. The answer is only as good as the moment it
    was computed; prefer the descriptor-based functions for changes.
    """
    root_fd = open_root(root)
    try:
        with failing(f"error resolving {show(path)}"):
            location = resolve_location(root_fd, path, follow_final=follow_final, lexical=True)
        os.close(location.dir_fd)
    finally:
        os.close(root_fd)
    return os.path.join(root, *location.parts) if location.parts else root


def open_dir_in_root(root: str, path: str, create: bool = False, mode: int = 0o755) -> int:
    """Open the directory ``path`` inside the image (resolved chroot-style).

    With ``create``, missing directories (including ones a dangling symlink
    points to) are created with exactly ``mode``. The caller closes the
    returned descriptor. A non-directory on the way raises
    ``TreeCopyError("<path> is not a directory")``.
    """
    root_fd = open_root(root)
    try:
        with failing(f"error opening {show(path)}"):
            fd, _ = open_image_dir(root_fd, path, create=create, mode=mode)
        return fd
    finally:
        os.close(root_fd)


# ------------------------------------------------------------------- writing


def write_file_in_root(root: str, path: str, data: bytes, mode: int) -> None:
    """Atomically replace the file ``path`` in the image with ``data`` (owner root, ``mode``).

    Parent directories are resolved chroot-style and created 0755 if missing;
    the final component is never followed (a symlink there is replaced).
    """
    root_fd = open_root(root)
    try:
        with failing(f"error writing {show(path)}"):
            location = resolve_location(root_fd, path, follow_final=False, create=True)
            try:
                if location.name is None:
                    raise TreeCopyError(f"{show(location.image_path)} is a directory")
                replace_file(location.dir_fd, location.name, [data], mode & 0o7777)
            finally:
                os.close(location.dir_fd)
    finally:
        os.close(root_fd)
