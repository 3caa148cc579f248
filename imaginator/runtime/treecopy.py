"""Copying host trees into an image root without ever leaving it (reference §5.2, §5.4).

The build copies manifest trees into the image root (``files/``,
``post-install-files/``, ``post-scripts-files/``, ``tests/``; §5.4), appends
``*.append`` trees (§4.2), makes and removes bind mount points (§5.2 b, n)
and stages scripts in ``/.scripts`` (§5.2.3). Every destination is resolved
chroot-style with the rules and primitives of ``inroot`` (no symlink in the
image is followed by the kernel, a replaced file is written beside and
renamed over its destination, an existing file is only opened once it is
known to be a regular one); deletions are in ``treedelete``.

Source trees (manifest directories on the host) are walked without following
symlinks; a symlink in a source tree is copied as a symlink, never read
through.

Every function here blocks; callers run them in the reactor's thread pool.
Every failure is a :class:`~imaginator.runtime.inroot.TreeCopyError`
(re-exported here for the callers of these functions).
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import suppress
from dataclasses import dataclass

from imaginator.goformats.units import format_duration
from imaginator.runtime.inroot import (
    CHUNK_SIZE,
    O_DIR,
    O_NEW,
    O_SOURCE,
    TreeCopyError,
    chown_root,
    error_text,
    failing,
    lstat_at,
    make_dir,
    normalise_image_path,
    open_image_dir,
    open_root,
    read_chunks,
    reopen_regular,
    replace_file,
    replace_symlink,
    resolve_location,
    show,
    split_path,
    write_all,
)
from imaginator.runtime.treedelete import remove_entry

__all__ = [
    "SCRIPTS_DIR",
    "TreeCopyError",
    "append_tree",
    "copy_tree",
    "make_bind_mount_points",
    "remove_bind_mount_points",
    "remove_staged_scripts",
    "stage_scripts",
]

LogFunc = Callable[[str], None]

SCRIPTS_DIR = "/.scripts"
"""Where :func:`stage_scripts` puts a scripts directory inside the image."""

_SCRIPTS_NAME = SCRIPTS_DIR.lstrip("/")

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
        raise TreeCopyError(f"{show(label)}: not a directory")
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
    fd = os.open(host_path, O_SOURCE)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise TreeCopyError(f"unsupported file type: {shown}")
    return fd


def _same_contents(source_fd: int, dir_fd: int, name: str) -> bool:
    """Whether ``name`` in ``dir_fd`` is a regular file with the source's contents."""
    st = lstat_at(dir_fd, name)
    if st is None or not stat.S_ISREG(st.st_mode):
        return False
    if st.st_size != os.fstat(source_fd).st_size:
        return False
    dest_fd = reopen_regular(dir_fd, name, os.O_RDONLY)
    if dest_fd is None:
        return False
    try:
        offset = 0
        while True:
            expected = os.pread(source_fd, CHUNK_SIZE, offset)
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
        replace_file(dir_fd, entry.name, read_chunks(source_fd), mode)
    finally:
        os.close(source_fd)


def _copy_symlink(dir_fd: int, entry: _SourceEntry) -> None:
    """§5.4 symlink: recreate unless the image already has the same link."""
    target = os.readlink(entry.host_path)
    existing = lstat_at(dir_fd, entry.name)
    if existing is not None and stat.S_ISLNK(existing.st_mode):
        if os.readlink(entry.name, dir_fd=dir_fd) == target:
            return
    replace_symlink(dir_fd, entry.name, target)


def _copy_entry(dir_fd: int, entry: _SourceEntry, label: str, log: LogFunc) -> None:
    shown = show(f"{label}/{entry.relative}")
    with failing(f"error copying {shown}"):
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
    root_fd = open_root(root)
    try:
        for relative, entries in _source_dirs(source_dir):
            image_dir = posixpath.join(dest, relative) if relative else dest
            with failing(f"error copying {show(f'{label}/{relative}')}"):
                dir_fd, _ = open_image_dir(root_fd, image_dir, create=True)
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
        fd = os.open(name, O_NEW, 0o600, dir_fd=dir_fd)
    except FileExistsError:
        existing = reopen_regular(dir_fd, name, os.O_WRONLY | os.O_APPEND)
        if existing is None:
            raise TreeCopyError(f"{show(image_path)} is not a regular file") from None
        return existing
    try:
        chown_root(fd)
        os.fchmod(fd, mode)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _append_file(root_fd: int, image_path: str, entry: _SourceEntry, shown: str) -> None:
    """Append one source file to ``image_path`` (a final symlink is followed in the root)."""
    source_fd = _open_source_file(entry.host_path, shown)
    try:
        location = resolve_location(root_fd, image_path, follow_final=True, create=True)
        try:
            if location.name is None:
                raise TreeCopyError(f"{show(location.image_path)} is not a regular file")
            mode = os.fstat(source_fd).st_mode & 0o777
            dest_fd = _open_for_append(location.dir_fd, location.name, mode, location.image_path)
            try:
                for chunk in read_chunks(source_fd):
                    write_all(dest_fd, chunk)
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
    root_fd = open_root(root)
    try:
        for relative, entries in _source_dirs(source_dir):
            image_dir = "/" + relative
            with failing(f"error appending {show(f'{label}/{relative}')}"):
                os.close(open_image_dir(root_fd, image_dir, create=True)[0])
            for entry in entries:
                shown = show(f"{label}/{entry.relative}")
                if stat.S_ISLNK(entry.mode):
                    raise TreeCopyError(f"symlinks are not supported: {shown}")
                if not stat.S_ISREG(entry.mode):
                    raise TreeCopyError(f"unsupported file type: {shown}")
                with failing(f"error appending {shown}"):
                    _append_file(root_fd, "/" + entry.relative, entry, shown)
    finally:
        os.close(root_fd)


# -------------------------------------------------------------- mount points


def _depth(image_path: str) -> int:
    return len(split_path(image_path))


def _remove_dirs(root_fd: int, created: Sequence[str]) -> TreeCopyError | None:
    """Remove the (empty) directories ``created``, deepest first; the first error."""
    first_error: TreeCopyError | None = None
    for path in sorted(created, key=_depth, reverse=True):
        try:
            location = resolve_location(root_fd, path, follow_final=False)
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
    reason = error_text(exc) if isinstance(exc, OSError) else str(exc)
    return TreeCopyError(f"error removing {show(path)}: {reason}")


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
            log(f"Making bind mount point: {show(image_path)}")
        else:
            log(f"Making intermediate directory for bind mount: {show(image_path)}")

    root_fd = open_root(root)
    try:
        for target in targets:
            path = normalise_image_path(target)
            with failing(f"error making bind mount point {show(path)}"):
                os.close(open_image_dir(root_fd, path, create=True, on_create=on_create)[0])
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
    root_fd = open_root(root)
    try:
        error = _remove_dirs(root_fd, created)
    finally:
        os.close(root_fd)
    if error is not None:
        raise error


# ------------------------------------------------------------------- scripts


def _check_script_name(name: str) -> None:
    if name in ("", ".", "..") or "/" in name or "\0" in name:
        raise TreeCopyError(f"invalid script name: {show(name)!r}")


def _stage_script(scripts_fd: int, source_dir: str, name: str) -> None:
    """Copy one script (a regular file, never a symlink) into ``/.scripts``, mode 0755."""
    _check_script_name(name)
    shown = show(name)
    try:
        source_fd = os.open(os.path.join(source_dir, name), O_SOURCE)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise TreeCopyError(f"script {shown}: symlinks are not supported") from exc
        raise
    try:
        if not stat.S_ISREG(os.fstat(source_fd).st_mode):
            raise TreeCopyError(f"script {shown}: not a regular file")
        dest_fd = os.open(name, O_NEW, 0o600, dir_fd=scripts_fd)
        try:
            for chunk in read_chunks(source_fd):
                write_all(dest_fd, chunk)
            chown_root(dest_fd)
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
    root_fd = open_root(root)
    try:
        try:
            make_dir(root_fd, _SCRIPTS_NAME, 0o755)
        except FileExistsError:
            raise TreeCopyError(f"{SCRIPTS_DIR} already exists") from None
        except OSError as exc:
            raise TreeCopyError(f"error creating {SCRIPTS_DIR}: {error_text(exc)}") from exc
        try:
            with failing(f"error staging scripts in {SCRIPTS_DIR}"):
                scripts_fd = os.open(_SCRIPTS_NAME, O_DIR, dir_fd=root_fd)
                try:
                    for name in names:
                        _stage_script(scripts_fd, source_dir, name)
                finally:
                    os.close(scripts_fd)
        except BaseException:
            with suppress(OSError):
                remove_entry(root_fd, _SCRIPTS_NAME)
            raise
    finally:
        os.close(root_fd)
    return SCRIPTS_DIR


def remove_staged_scripts(root: str) -> None:
    """Remove ``/.scripts`` and whatever is in it (nothing is followed); missing is fine."""
    root_fd = open_root(root)
    try:
        with failing(f"error removing {SCRIPTS_DIR}"):
            remove_entry(root_fd, _SCRIPTS_NAME)
    finally:
        os.close(root_fd)
