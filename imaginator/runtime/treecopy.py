"""Changing an image root from the host without ever leaving it (reference §5.2, §5.4).

The build copies manifest trees into the image root (``files/``,
``post-install-files/``, ``post-scripts-files/``, ``tests/``; §5.4), appends
``*.append`` trees (§4.2), makes and removes bind mount points (§5.2 b, n),
stages scripts in ``/.scripts`` (§5.2.3), deletes paths matching clean
patterns (§5.2 k) and writes ``/bin/generic-packager`` (§5.8). All of that
runs on the host, as root, against a tree that earlier build steps (package
scripts, manifest scripts, the source image) filled with whatever they liked,
so every path inside the image is resolved **as if chrooted at the root**:

- an absolute symlink target restarts at the root, ``..`` never climbs above
  it, and at most :data:`MAX_SYMLINKS` symlinks are followed per path;
- resolution works one component at a time on directory file descriptors
  opened with ``O_NOFOLLOW``, so a symlink can never be followed by the
  kernel behind our back, and ``..`` is handled by re-opening the chain of
  real directory names from the root rather than by opening ``..``;
- the final component of a destination we replace is never followed: a new
  file or symlink is written to ``<name>~`` (after unlinking whatever was
  there) and renamed over ``<name>``, which replaces a symlink rather than
  writing through it;
- an existing file is only ever read or appended to after checking, on an
  ``O_PATH`` descriptor, that it is a regular file, and then re-opening that
  very inode through ``/proc/self/fd`` (so a device node or FIFO planted in
  the image is never opened).

Source trees (manifest directories on the host) are walked without following
symlinks; a symlink in a source tree is copied as a symlink, never read
through.

Paths shown in log lines and errors have control characters escaped (a file
name with a newline cannot forge a log line); paths returned to callers are
the real ones.

Every function here blocks; callers run them in the reactor's thread pool.
Every failure is a :class:`TreeCopyError`.
"""

from __future__ import annotations

import errno
import itertools
import os
import posixpath
import stat
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field

from imaginator.goformats.units import format_duration

__all__ = [
    "MAX_SYMLINKS",
    "SCRIPTS_DIR",
    "TreeCopyError",
    "append_tree",
    "copy_tree",
    "delete_matching",
    "make_bind_mount_points",
    "normalise_image_path",
    "open_dir_in_root",
    "remove_bind_mount_points",
    "remove_staged_scripts",
    "resolve_in_root",
    "stage_scripts",
    "write_file_in_root",
]

LogFunc = Callable[[str], None]

MAX_SYMLINKS = 40
"""Symlinks followed while resolving one path before giving up (as Linux)."""

SCRIPTS_DIR = "/.scripts"
"""Where :func:`stage_scripts` puts a scripts directory inside the image."""

_SCRIPTS_NAME = SCRIPTS_DIR.lstrip("/")
_CHUNK = 1 << 20

_O_ROOT = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_O_DIR = _O_ROOT | os.O_NOFOLLOW
_O_PATH = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
_O_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_O_SOURCE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


class TreeCopyError(Exception):
    """A tree could not be copied into, or changed inside, an image root."""


# ------------------------------------------------------------------ helpers


def _show(text: str) -> str:
    """``text`` with non-printable characters escaped, for logs and errors."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


def _image_path(parts: Iterable[str]) -> str:
    return "/" + "/".join(parts)


def _split(path: str) -> list[str]:
    """The components of ``path`` without empty and ``.`` ones (``..`` kept)."""
    return [part for part in path.split("/") if part not in ("", ".")]


def _strerror(exc: OSError) -> str:
    return exc.strerror or str(exc)


@contextmanager
def _failing(context: str) -> Iterator[None]:
    """Turn an ``OSError`` raised inside the block into a :class:`TreeCopyError`."""
    try:
        yield
    except OSError as exc:
        raise TreeCopyError(f"{context}: {_strerror(exc)}") from exc


def _not_found(path: str) -> FileNotFoundError:
    return FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)


def normalise_image_path(path: str) -> str:
    """``path`` as a clean absolute path inside the image (``..`` removed lexically)."""
    return posixpath.normpath("/" + path.lstrip("/"))


def _open_root(root: str) -> int:
    """Open the image root itself (a trusted host path, so symlinks in it are fine)."""
    with _failing(f"error opening image root {_show(root)}"):
        return os.open(root, _O_ROOT)


def _reopen(dir_fd: int) -> int:
    """A new, independent descriptor for the directory ``dir_fd``."""
    return os.open(".", _O_ROOT, dir_fd=dir_fd)


def open_chain(base_fd: int, parts: Sequence[str | bytes]) -> int:
    """Open the real directories ``parts`` below ``base_fd``, never following a link."""
    fd = _reopen(base_fd)
    try:
        for part in parts:
            next_fd = os.open(part, _O_DIR, dir_fd=fd)
            os.close(fd)
            fd = next_fd
    except BaseException:
        os.close(fd)
        raise
    return fd


def _lstat(dir_fd: int, name: str) -> os.stat_result | None:
    """``lstat`` of ``name`` in ``dir_fd``; ``None`` if it does not exist."""
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _make_dir(dir_fd: int, name: str, mode: int) -> None:
    """``mkdir`` with exactly ``mode`` (the umask does not apply)."""
    os.mkdir(name, mode, dir_fd=dir_fd)
    fd = os.open(name, _O_DIR, dir_fd=dir_fd)
    try:
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def _chown_root(fd: int) -> None:
    """Make ``fd``'s file owned by root (when we are root; otherwise it is ours)."""
    if os.geteuid() == 0:
        os.fchown(fd, 0, 0)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _chunks(fd: int) -> Iterator[bytes]:
    """The contents of the file ``fd`` from offset 0."""
    offset = 0
    while chunk := os.pread(fd, _CHUNK, offset):
        yield chunk
        offset += len(chunk)


def _reopen_regular(dir_fd: int, name: str, flags: int) -> int | None:
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


def _unlink_if_exists(dir_fd: int, name: str) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass


def _replace_file(dir_fd: int, name: str, chunks: Iterable[bytes], mode: int) -> None:
    """Write ``<name>~`` (owner root, ``mode``) and rename it over ``name``."""
    temp = name + "~"
    _unlink_if_exists(dir_fd, temp)
    fd = os.open(temp, _O_NEW, 0o600, dir_fd=dir_fd)
    try:
        try:
            for chunk in chunks:
                _write_all(fd, chunk)
            _chown_root(fd)
            os.fchmod(fd, mode)
        finally:
            os.close(fd)
        os.rename(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        _unlink_if_exists(dir_fd, temp)
        raise


def _replace_symlink(dir_fd: int, name: str, target: str) -> None:
    """Create the symlink ``<name>~`` → ``target`` and rename it over ``name``."""
    temp = name + "~"
    _unlink_if_exists(dir_fd, temp)
    os.symlink(target, temp, dir_fd=dir_fd)
    try:
        if os.geteuid() == 0:
            os.chown(temp, 0, 0, dir_fd=dir_fd, follow_symlinks=False)
        os.rename(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        _unlink_if_exists(dir_fd, temp)
        raise


def _list_dir(dir_fd: int) -> list[tuple[str, bool]]:
    """Name-sorted entries of ``dir_fd`` with whether each is a real directory."""
    with os.scandir(dir_fd) as entries:
        listing = [(entry.name, entry.is_dir(follow_symlinks=False)) for entry in entries]
    return sorted(listing)


def _free_name(dir_fd: int, counter: Iterator[int]) -> str:
    """A name that does not exist in ``dir_fd``."""
    while True:
        name = f".treecopy-remove-{next(counter)}"
        if _lstat(dir_fd, name) is None:
            return name


def _empty_into(top_fd: int, name: str, counter: Iterator[int]) -> None:
    """Empty the directory ``name`` in ``top_fd``: unlink its non-directories and
    move its subdirectories up into ``top_fd`` (to be emptied in a later pass)."""
    fd = os.open(name, _O_DIR, dir_fd=top_fd)
    try:
        for child, is_dir in _list_dir(fd):
            if is_dir:
                os.rename(child, _free_name(top_fd, counter), src_dir_fd=fd, dst_dir_fd=top_fd)
            else:
                os.unlink(child, dir_fd=fd)
    finally:
        os.close(fd)


def _remove_tree(parent_fd: int, name: str) -> None:
    """Remove the directory ``name`` in ``parent_fd`` and everything below it.

    Links are unlinked, never followed, and directories are opened with
    ``O_NOFOLLOW``. Subdirectories are flattened into the directory being
    removed as they are found, so no more than two directories are open at a
    time and a deep hostile tree costs neither stack, descriptors nor
    quadratic time.
    """
    top_fd = os.open(name, _O_DIR, dir_fd=parent_fd)
    try:
        counter = itertools.count()
        while listing := _list_dir(top_fd):
            for child, is_dir in listing:
                if is_dir:
                    _empty_into(top_fd, child, counter)
                    os.rmdir(child, dir_fd=top_fd)
                else:
                    os.unlink(child, dir_fd=top_fd)
    finally:
        os.close(top_fd)
    os.rmdir(name, dir_fd=parent_fd)


def _remove_entry(dir_fd: int, name: str) -> None:
    """Remove ``name`` in ``dir_fd``: a directory with its contents, anything else itself."""
    st = _lstat(dir_fd, name)
    if st is None:
        return
    if stat.S_ISDIR(st.st_mode):
        _remove_tree(dir_fd, name)
    else:
        os.unlink(name, dir_fd=dir_fd)


# --------------------------------------------------------------- resolution

_OnCreate = Callable[[str, bool], None]
"""Called with the image path of each directory created, and whether it is the final one."""


@dataclass
class _Location:
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
        return _image_path(self.parts)


class _Walk:
    """The state of one chroot-style resolution: a directory fd and its real path."""

    def __init__(self, root_fd: int, path: str) -> None:
        self.root_fd = root_fd
        self.path = path
        self.pending: deque[str] = deque(_split(path))
        self.parts: list[str] = []
        self.virtual: list[str] = []
        self.links = 0
        self.fd = _reopen(root_fd)

    def image_path(self, name: str) -> str:
        return _image_path([*self.parts, name])

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
            raise TreeCopyError(f"{_show(self.path)}: too many levels of symbolic links")
        target = os.readlink(name, dir_fd=self.fd)
        if target.startswith("/"):
            self.parts = []
            self._switch(_reopen(self.root_fd))
        self.pending.extendleft(reversed(_split(target)))

    def descend(self, name: str) -> None:
        """Enter the real directory ``name``."""
        try:
            fd = os.open(name, _O_DIR, dir_fd=self.fd)
        except OSError as exc:
            if exc.errno in (errno.ENOTDIR, errno.ELOOP):
                raise TreeCopyError(f"{_show(self.image_path(name))} is not a directory") from exc
            raise
        self._switch(fd)
        self.parts.append(name)

    def location(self, name: str | None) -> _Location:
        return _Location(self.fd, self.parts, name, self.virtual)


def _resolve(
    root_fd: int,
    path: str,
    *,
    follow_final: bool,
    create: bool = False,
    mode: int = 0o755,
    on_create: _OnCreate | None = None,
    lexical: bool = False,
) -> _Location:
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
            st = _lstat(walk.fd, name)
            if st is not None and stat.S_ISLNK(st.st_mode) and (follow_final or not final):
                walk.follow(name)
            elif final:
                return walk.location(name)
            elif st is None and create:
                _make_dir(walk.fd, name, mode)
                if on_create is not None:
                    on_create(walk.image_path(name), False)
                walk.descend(name)
            elif st is None and lexical:
                walk.virtual.append(name)
            elif st is None:
                raise _not_found(walk.image_path(name))
            elif not stat.S_ISDIR(st.st_mode):
                raise TreeCopyError(f"{_show(walk.image_path(name))} is not a directory")
            else:
                walk.descend(name)
        return walk.location(None)
    except BaseException:
        os.close(walk.fd)
        raise


def _open_dir(
    root_fd: int,
    path: str,
    *,
    create: bool = False,
    mode: int = 0o755,
    on_create: _OnCreate | None = None,
) -> tuple[int, str]:
    """Open the directory ``path`` (following every symlink chroot-style).

    Returns the descriptor and the directory's real image path.
    """
    location = _resolve(
        root_fd, path, follow_final=True, create=create, mode=mode, on_create=on_create
    )
    if location.name is None:
        return location.dir_fd, location.image_path
    try:
        parent_fd = location.dir_fd
        if _lstat(parent_fd, location.name) is None:
            if not create:
                raise _not_found(location.image_path)
            _make_dir(parent_fd, location.name, mode)
            if on_create is not None:
                on_create(location.image_path, True)
        try:
            fd = os.open(location.name, _O_DIR, dir_fd=parent_fd)
        except OSError as exc:
            if exc.errno in (errno.ENOTDIR, errno.ELOOP):
                raise TreeCopyError(f"{_show(location.image_path)} is not a directory") from exc
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
    root_fd = _open_root(root)
    try:
        with _failing(f"error resolving {_show(path)}"):
            location = _resolve(root_fd, path, follow_final=follow_final, lexical=True)
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
    root_fd = _open_root(root)
    try:
        with _failing(f"error opening {_show(path)}"):
            fd, _ = _open_dir(root_fd, path, create=create, mode=mode)
        return fd
    finally:
        os.close(root_fd)


# ---------------------------------------------------------------- copy trees


@dataclass(frozen=True)
class _SourceEntry:
    """One non-directory entry of a source tree."""

    relative: str
    name: str
    host_path: str
    mode: int


def _source_top(source_dir: str, label: str) -> bool:
    """Whether the source tree exists; it must be a real directory if it does."""
    try:
        st = os.lstat(source_dir)
    except FileNotFoundError:
        return False
    if not stat.S_ISDIR(st.st_mode):
        raise TreeCopyError(f"{_show(label)}: not a directory")
    return True


def _source_dirs(source_dir: str) -> Iterator[tuple[str, list[_SourceEntry]]]:
    """Top-down, name-sorted walk of a host tree that never follows symlinks.

    Yields each directory's path relative to ``source_dir`` (``""`` for the
    top) with its non-directory entries.
    """
    stack = [""]
    while stack:
        relative = stack.pop()
        host_dir = os.path.join(source_dir, relative) if relative else source_dir
        with os.scandir(host_dir) as iterator:
            entries = sorted(
                ((entry.name, entry.stat(follow_symlinks=False).st_mode) for entry in iterator),
                key=lambda item: item[0],
            )
        others = []
        subdirs = []
        for name, mode in entries:
            child = posixpath.join(relative, name) if relative else name
            if stat.S_ISDIR(mode):
                subdirs.append(child)
            else:
                others.append(_SourceEntry(child, name, os.path.join(host_dir, name), mode))
        yield relative, others
        stack.extend(reversed(subdirs))


def _open_source_file(host_path: str, shown: str) -> int:
    """Open a regular source file without following a symlink."""
    fd = os.open(host_path, _O_SOURCE)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise TreeCopyError(f"unsupported file type: {shown}")
    return fd


def _same_contents(source_fd: int, dir_fd: int, name: str) -> bool:
    """Whether ``name`` in ``dir_fd`` is a regular file with the source's contents."""
    st = _lstat(dir_fd, name)
    if st is None or not stat.S_ISREG(st.st_mode):
        return False
    if st.st_size != os.fstat(source_fd).st_size:
        return False
    dest_fd = _reopen_regular(dir_fd, name, os.O_RDONLY)
    if dest_fd is None:
        return False
    try:
        offset = 0
        while True:
            expected = os.pread(source_fd, _CHUNK, offset)
            actual = os.pread(dest_fd, len(expected) or 1, offset)
            if expected != actual:
                return False
            if not expected:
                return True
            offset += len(expected)
    finally:
        os.close(dest_fd)


def _copy_file(dir_fd: int, entry: _SourceEntry, shown: str, log: LogFunc) -> None:
    """§5.4 regular file: skip identical contents, else write ``<dest>~`` and rename."""
    source_fd = _open_source_file(entry.host_path, shown)
    try:
        if _same_contents(source_fd, dir_fd, entry.name):
            log(f"Same contents for: {shown}")
            return
        mode = os.fstat(source_fd).st_mode & 0o777
        _replace_file(dir_fd, entry.name, _chunks(source_fd), mode)
    finally:
        os.close(source_fd)


def _copy_symlink(dir_fd: int, entry: _SourceEntry) -> None:
    """§5.4 symlink: recreate unless the image already has the same link."""
    target = os.readlink(entry.host_path)
    existing = _lstat(dir_fd, entry.name)
    if existing is not None and stat.S_ISLNK(existing.st_mode):
        if os.readlink(entry.name, dir_fd=dir_fd) == target:
            return
    _replace_symlink(dir_fd, entry.name, target)


def _copy_entry(dir_fd: int, entry: _SourceEntry, label: str, log: LogFunc) -> None:
    shown = _show(f"{label}/{entry.relative}")
    with _failing(f"error copying {shown}"):
        if stat.S_ISREG(entry.mode):
            _copy_file(dir_fd, entry, shown, log)
        elif stat.S_ISLNK(entry.mode):
            _copy_symlink(dir_fd, entry)
        else:
            raise TreeCopyError(f"unsupported file type: {shown}")


def copy_tree(
    source_dir: str,
    root: str,
    *,
    label: str,
    log: LogFunc,
    dest: str = "/",
) -> None:
    """Copy the host tree ``source_dir`` into the image at ``dest`` (§5.4 rules).

    Directories are created 0755 if missing (existing ones keep mode and
    owner; symlinks to directories in the image are followed chroot-style).
    A regular file with the same contents as the existing destination is
    skipped ("Same contents for: <label>/<path>"); otherwise ``<dest>~`` is
    written (owner root, permission bits ``& 0o777``) and renamed over the
    destination. A symlink is recreated unless the image already has the same
    link. Anything else is an error. A missing ``source_dir`` is a no-op.
    ``dest`` (default ``/``) is created if missing (§5.2 step 9 copies
    ``tests/`` to ``/tests/<stream>``).
    """
    started = time.monotonic()
    if not _source_top(source_dir, label):
        return
    root_fd = _open_root(root)
    try:
        for relative, entries in _source_dirs(source_dir):
            image_dir = posixpath.join(dest, relative) if relative else dest
            with _failing(f"error copying {_show(f'{label}/{relative}')}"):
                dir_fd, _ = _open_dir(root_fd, image_dir, create=True)
            try:
                for entry in entries:
                    _copy_entry(dir_fd, entry, label, log)
            finally:
                os.close(dir_fd)
    finally:
        os.close(root_fd)
    log(f"Copied {label} tree in {format_duration(time.monotonic() - started)}")


def _open_for_append(dir_fd: int, name: str, mode: int, image_path: str) -> int:
    """Open ``name`` for appending; create it (owner root, ``mode``) if missing."""
    try:
        fd = os.open(name, _O_NEW, 0o600, dir_fd=dir_fd)
    except FileExistsError:
        existing = _reopen_regular(dir_fd, name, os.O_WRONLY | os.O_APPEND)
        if existing is None:
            raise TreeCopyError(f"{_show(image_path)} is not a regular file") from None
        return existing
    try:
        _chown_root(fd)
        os.fchmod(fd, mode)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _append_file(root_fd: int, image_path: str, entry: _SourceEntry, shown: str) -> None:
    """Append one source file to ``image_path`` (a final symlink is followed in the root)."""
    source_fd = _open_source_file(entry.host_path, shown)
    try:
        location = _resolve(root_fd, image_path, follow_final=True, create=True)
        try:
            if location.name is None:
                raise TreeCopyError(f"{_show(location.image_path)} is not a regular file")
            mode = os.fstat(source_fd).st_mode & 0o777
            dest_fd = _open_for_append(location.dir_fd, location.name, mode, location.image_path)
            try:
                for chunk in _chunks(source_fd):
                    _write_all(dest_fd, chunk)
            finally:
                os.close(dest_fd)
        finally:
            os.close(location.dir_fd)
    finally:
        os.close(source_fd)


def append_tree(source_dir: str, root: str, *, label: str, log: LogFunc) -> None:
    """Append the host tree ``source_dir`` to files in the image (``files.append``, §4.2).

    Directories are created 0755 if missing. Each regular file's contents are
    appended to the destination, which is created with the source's
    permission bits if missing; an existing destination must be a regular
    file (a symlink there is followed inside the root). A symlink in the
    source is an error ("symlinks are not supported"), as is any other
    non-regular file ("unsupported file type"). A missing ``source_dir`` logs
    "No <label> directory".
    """
    if not _source_top(source_dir, label):
        log(f"No {label} directory")
        return
    root_fd = _open_root(root)
    try:
        for relative, entries in _source_dirs(source_dir):
            image_dir = "/" + relative
            with _failing(f"error appending {_show(f'{label}/{relative}')}"):
                os.close(_open_dir(root_fd, image_dir, create=True)[0])
            for entry in entries:
                shown = _show(f"{label}/{entry.relative}")
                if stat.S_ISLNK(entry.mode):
                    raise TreeCopyError(f"symlinks are not supported: {shown}")
                if not stat.S_ISREG(entry.mode):
                    raise TreeCopyError(f"unsupported file type: {shown}")
                with _failing(f"error appending {shown}"):
                    _append_file(root_fd, "/" + entry.relative, entry, shown)
    finally:
        os.close(root_fd)


# -------------------------------------------------------------- mount points


def _depth(image_path: str) -> int:
    return len(_split(image_path))


def _remove_dirs(root_fd: int, created: Sequence[str]) -> TreeCopyError | None:
    """Remove the (empty) directories ``created``, deepest first; the first error."""
    first_error: TreeCopyError | None = None
    for path in sorted(created, key=_depth, reverse=True):
        try:
            location = _resolve(root_fd, path, follow_final=False)
        except FileNotFoundError:
            continue
        except (OSError, TreeCopyError) as exc:
            first_error = first_error or _removal_error(path, exc)
            continue
        try:
            if location.name is not None:
                os.rmdir(location.name, dir_fd=location.dir_fd)
        except FileNotFoundError:
            pass
        except OSError as exc:
            first_error = first_error or _removal_error(path, exc)
        finally:
            os.close(location.dir_fd)
    return first_error


def _removal_error(path: str, exc: Exception) -> TreeCopyError:
    reason = _strerror(exc) if isinstance(exc, OSError) else str(exc)
    return TreeCopyError(f"error removing {_show(path)}: {reason}")


def make_bind_mount_points(root: str, targets: Sequence[str], log: LogFunc) -> list[str]:
    """Create the missing directories for bind mount ``targets`` (§5.2 step b).

    Each target is normalised to an absolute image path and resolved
    chroot-style; missing directories are created (0755), logging "Making
    bind mount point: <path>" for the target itself and "Making intermediate
    directory for bind mount: <path>" for its parents. An existing
    non-directory raises ``TreeCopyError("<path> is not a directory")``; the
    directories already created are then removed again. Returns the real
    image paths of the created directories, in creation order.
    """
    created: list[str] = []

    def on_create(image_path: str, final: bool) -> None:
        created.append(image_path)
        if final:
            log(f"Making bind mount point: {_show(image_path)}")
        else:
            log(f"Making intermediate directory for bind mount: {_show(image_path)}")

    root_fd = _open_root(root)
    try:
        for target in targets:
            path = normalise_image_path(target)
            with _failing(f"error making bind mount point {_show(path)}"):
                os.close(_open_dir(root_fd, path, create=True, on_create=on_create)[0])
    except BaseException:
        _remove_dirs(root_fd, created)
        raise
    finally:
        os.close(root_fd)
    return created


def remove_bind_mount_points(root: str, created: Sequence[str]) -> None:
    """Remove the directories :func:`make_bind_mount_points` made, deepest first.

    They must be empty. Ones already gone are ignored. Every directory is
    tried; the first failure is raised at the end.
    """
    root_fd = _open_root(root)
    try:
        error = _remove_dirs(root_fd, created)
    finally:
        os.close(root_fd)
    if error is not None:
        raise error


# ------------------------------------------------------------------- scripts


def _check_script_name(name: str) -> None:
    if name in ("", ".", "..") or "/" in name or "\0" in name:
        raise TreeCopyError(f"invalid script name: {_show(name)!r}")


def _stage_script(scripts_fd: int, source_dir: str, name: str) -> None:
    """Copy one script (a regular file, never a symlink) into ``/.scripts``, mode 0755."""
    _check_script_name(name)
    shown = _show(name)
    try:
        source_fd = os.open(os.path.join(source_dir, name), _O_SOURCE)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise TreeCopyError(f"script {shown}: symlinks are not supported") from exc
        raise
    try:
        if not stat.S_ISREG(os.fstat(source_fd).st_mode):
            raise TreeCopyError(f"script {shown}: not a regular file")
        dest_fd = os.open(name, _O_NEW, 0o600, dir_fd=scripts_fd)
        try:
            for chunk in _chunks(source_fd):
                _write_all(dest_fd, chunk)
            _chown_root(dest_fd)
            os.fchmod(dest_fd, 0o755)
        finally:
            os.close(dest_fd)
    finally:
        os.close(source_fd)


def stage_scripts(source_dir: str, root: str, names: Sequence[str]) -> str:
    """Copy the scripts ``names`` from ``source_dir`` into ``/.scripts`` (§5.2.3).

    ``/.scripts`` is created with mode 0755 and must not exist already (in
    any form, a symlink included). Each script is copied with mode 0755.
    On failure ``/.scripts`` is removed again. Returns ``"/.scripts"``.
    """
    root_fd = _open_root(root)
    try:
        try:
            _make_dir(root_fd, _SCRIPTS_NAME, 0o755)
        except FileExistsError:
            raise TreeCopyError(f"{SCRIPTS_DIR} already exists") from None
        except OSError as exc:
            raise TreeCopyError(f"error creating {SCRIPTS_DIR}: {_strerror(exc)}") from exc
        try:
            with _failing(f"error staging scripts in {SCRIPTS_DIR}"):
                scripts_fd = os.open(_SCRIPTS_NAME, _O_DIR, dir_fd=root_fd)
                try:
                    for name in names:
                        _stage_script(scripts_fd, source_dir, name)
                finally:
                    os.close(scripts_fd)
        except BaseException:
            with suppress(OSError):
                _remove_entry(root_fd, _SCRIPTS_NAME)
            raise
    finally:
        os.close(root_fd)
    return SCRIPTS_DIR


def remove_staged_scripts(root: str) -> None:
    """Remove ``/.scripts`` and whatever is in it (nothing is followed); missing is fine."""
    root_fd = _open_root(root)
    try:
        with _failing(f"error removing {SCRIPTS_DIR}"):
            _remove_entry(root_fd, _SCRIPTS_NAME)
    finally:
        os.close(root_fd)


# ------------------------------------------------------------------ deleting


_FD_DEPTH = 128
"""Directory levels of :func:`delete_matching`'s walk that keep a descriptor open."""


@dataclass
class _Frame:
    """A directory of the deletion walk whose subdirectories are still to be visited."""

    parts: list[str]
    fd: int | None
    subdirs: list[str]

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _scan_for_deletion(
    root_fd: int,
    parent: _Frame | None,
    name: str | None,
    match: Callable[[str], bool],
    deleted: list[str],
) -> _Frame:
    """Open one directory, delete its matching entries; the frame of what is left.

    The directory is opened from its parent's descriptor (or, past
    :data:`_FD_DEPTH` levels, again from the root), never through a link.
    """
    if parent is None or name is None:
        parts: list[str] = []
        fd = _reopen(root_fd)
    else:
        parts = [*parent.parts, name]
        if parent.fd is None:
            fd = open_chain(root_fd, parts)
        else:
            fd = os.open(name, _O_DIR, dir_fd=parent.fd)
    try:
        subdirs = []
        for child, is_dir in _list_dir(fd):
            image_path = _image_path([*parts, child])
            if match(image_path):
                _remove_entry(fd, child)
                deleted.append(image_path)
            elif is_dir:
                subdirs.append(child)
    except BaseException:
        os.close(fd)
        raise
    frame = _Frame(parts, fd, subdirs[::-1])
    if len(parts) >= _FD_DEPTH:
        frame.close()
    return frame


def delete_matching(root: str, match: Callable[[str], bool]) -> list[str]:
    """Delete every image path for which ``match`` is true; return those paths.

    The tree is walked from the root in name order without following
    symlinks (a matched symlink is removed itself, never its target; a
    symlink to a directory is never descended into). A matched directory is
    removed with everything below it. The root itself is never matched.
    """
    deleted: list[str] = []
    stack: list[_Frame] = []
    root_fd = _open_root(root)
    try:
        with _failing("error deleting in /"):
            stack.append(_scan_for_deletion(root_fd, None, None, match, deleted))
        while stack:
            frame = stack[-1]
            if not frame.subdirs:
                stack.pop().close()
                continue
            name = frame.subdirs.pop()
            with _failing(f"error deleting in {_show(_image_path([*frame.parts, name]))}"):
                stack.append(_scan_for_deletion(root_fd, frame, name, match, deleted))
    finally:
        for frame in stack:
            frame.close()
        os.close(root_fd)
    return deleted


# ------------------------------------------------------------------- writing


def write_file_in_root(root: str, path: str, data: bytes, mode: int) -> None:
    """Atomically replace the file ``path`` in the image with ``data`` (owner root, ``mode``).

    Parent directories are resolved chroot-style and created 0755 if missing;
    the final component is never followed (a symlink there is replaced).
    """
    root_fd = _open_root(root)
    try:
        with _failing(f"error writing {_show(path)}"):
            location = _resolve(root_fd, path, follow_final=False, create=True)
            try:
                if location.name is None:
                    raise TreeCopyError(f"{_show(location.image_path)} is a directory")
                _replace_file(location.dir_fd, location.name, [data], mode & 0o7777)
            finally:
                os.close(location.dir_fd)
    finally:
        os.close(root_fd)
