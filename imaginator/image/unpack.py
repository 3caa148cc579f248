"""Materialising an image's file-system as a real directory tree.

As the Go imaginator does (imaginator-behaviour.md §5.2.2 step 4), every
non-directory inode is made once in a scratch directory ``<dest>/.inodes``
(content, owner, mode, mtime), the directories are created, and each inode is
then hard-linked into every path that names it (renamed into the last one).
Directory modes and owners are applied last, deepest first, so that a
read-only directory can still be filled. The result is a tree cache for the
regular files written, so a later scan can skip the files nobody touched.

Entry names come from an image record, which may be hostile: names with
``/``, NUL, ``.``, ``..`` or duplicates are refused before anything is
written, and directories are only ever created by us, so no path can pass
through a symlink out of ``dest``.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from dataclasses import dataclass
from typing import Protocol

from imaginator.image.model import (
    ComputedRegularInode,
    DirectoryInode,
    FileSystem,
    Image,
    Inode,
    RegularInode,
    SpecialInode,
    SymlinkInode,
)
from imaginator.image.scan import CacheEntry


class ObjectFiles(Protocol):
    """Where the unpacker reads file contents from: objects as local files
    (``imaginator.store.local.LocalImageStore``)."""

    def object_path(self, hash_hex: str) -> str: ...


_COPY_CHUNK = 1 << 30
_FALLBACK_ERRNOS = {errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EPERM}


class UnpackError(Exception):
    """The image cannot be materialised (hostile names, missing objects…)."""


@dataclass(frozen=True, slots=True)
class _Entry:
    relative: str  # path below dest, without a leading slash
    inum: int
    inode: Inode


def materialise(
    image: Image,
    store: ObjectFiles,
    dest: str,
    *,
    preserve_owners: bool | None = None,
) -> dict[str, CacheEntry]:
    """Create the image's tree in ``dest`` (new or empty) and return the tree
    cache (image path → ``CacheEntry``) of the regular files written.

    Blocking: call it in a thread. Owners are set when ``preserve_owners``
    (default: when running as root). Raises ``UnpackError``.
    """
    fs = image.file_system
    if fs is None:
        raise UnpackError("image has no file-system")
    entries = list_entries(fs)
    _prepare_dest(dest, fs.total_data_bytes)
    owners = os.geteuid() == 0 if preserve_owners is None else preserve_owners
    scratch = os.path.join(dest, _scratch_name(fs.root))
    os.mkdir(scratch, 0o700)
    try:
        _make_inodes(entries, store, scratch, owners)
        _build_tree(entries, dest, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    cache = _tree_cache(entries, dest)
    _apply_directory_metadata(entries, fs.root, dest, owners)
    return cache


def list_entries(fs: FileSystem) -> list[_Entry]:
    """Every entry of the tree in depth-first order (parents first), after
    checking names and structure; ``UnpackError`` for a hostile tree."""
    entries = []
    seen_directories: set[int] = set()
    _check_directory_names(fs.root, "/")
    try:
        for path, inum, inode in fs.walk():
            if isinstance(inode, DirectoryInode):
                if inum in seen_directories:
                    raise UnpackError(f"{path}: directory inode {inum} appears twice")
                seen_directories.add(inum)
                _check_directory_names(inode, path)
            entries.append(_Entry(path[1:], inum, inode))
    except KeyError as exc:
        raise UnpackError(f"entry names unknown inode {exc.args[0]}") from None
    return entries


def _check_directory_names(directory: DirectoryInode, path: str) -> None:
    names: set[str] = set()
    for name, _ in directory.entries:
        if not name or name in (".", "..") or "/" in name or "\0" in name:
            raise UnpackError(f"{path}: bad entry name {name!r}")
        if name in names:
            raise UnpackError(f"{path}: duplicate entry name {name!r}")
        names.add(name)


def _prepare_dest(dest: str, total_bytes: int) -> None:
    try:
        os.makedirs(dest, exist_ok=True)
        if os.listdir(dest):
            raise UnpackError(f"{dest}: not empty")
        fs_stat = os.statvfs(dest)
    except OSError as exc:
        raise UnpackError(f"{dest}: {exc.strerror or exc}") from None
    if total_bytes > fs_stat.f_bavail * fs_stat.f_frsize:
        raise UnpackError("image will not fit on file-system")


def _scratch_name(root: DirectoryInode) -> str:
    """``.inodes``, or a variant that no top-level entry uses."""
    taken = {name for name, _ in root.entries}
    name, n = ".inodes", 0
    while name in taken:
        n += 1
        name = f".inodes.{n}"
    return name


# ---------------------------------------------------------------------- inodes


def _make_inodes(entries: list[_Entry], store: ObjectFiles, scratch: str, owners: bool) -> None:
    made: set[int] = set()
    for entry in entries:
        if isinstance(entry.inode, DirectoryInode) or entry.inum in made:
            continue
        made.add(entry.inum)
        target = os.path.join(scratch, str(entry.inum))
        try:
            _make_inode(entry.inode, store, target, owners)
        except OSError as exc:
            raise UnpackError(f"/{entry.relative}: {exc.strerror or exc}") from None


def _make_inode(inode: Inode, store: ObjectFiles, target: str, owners: bool) -> None:
    match inode:
        case RegularInode():
            _write_regular(inode, store, target)
            _set_metadata(target, inode.mode, inode.uid, inode.gid, owners)
            _set_mtime(target, inode.mtime_seconds, inode.mtime_nanoseconds)
        case ComputedRegularInode():
            os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            _set_metadata(target, inode.mode, inode.uid, inode.gid, owners)
        case SymlinkInode():
            os.symlink(inode.symlink, target)
            if owners:
                os.chown(target, inode.uid, inode.gid, follow_symlinks=False)
        case SpecialInode():
            if stat.S_IFMT(inode.mode) not in (stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO):
                raise UnpackError(f"special inode with mode {inode.mode:o}")
            os.mknod(target, (inode.mode & ~0o7777) | 0o600, inode.rdev)
            _set_metadata(target, inode.mode, inode.uid, inode.gid, owners)
            _set_mtime(target, inode.mtime_seconds, inode.mtime_nanoseconds)


def _write_regular(inode: RegularInode, store: ObjectFiles, target: str) -> None:
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        if inode.size == 0:
            return
        hash_hex = inode.hash.hex()
        try:
            source = open(store.object_path(hash_hex), "rb", buffering=0)
        except FileNotFoundError:
            raise UnpackError(f"object: {hash_hex} is not available") from None
        with source:
            copied = _copy(source.fileno(), fd)
        if copied != inode.size:
            raise UnpackError(f"object: {hash_hex} has {copied} bytes, expected {inode.size}")
    finally:
        os.close(fd)


def _copy(src: int, dst: int) -> int:
    """Copy from ``src`` to ``dst`` (in the kernel when it can; a reflink
    on file-systems that support it); returns the number of bytes."""
    copied = 0
    try:
        while n := os.copy_file_range(src, dst, _COPY_CHUNK):
            copied += n
        return copied
    except OSError as exc:
        if exc.errno not in _FALLBACK_ERRNOS:
            raise
    # File offsets have advanced past what was copied; carry on from there.
    while chunk := os.read(src, 1 << 20):
        view = memoryview(chunk)
        while view:
            view = view[os.write(dst, view) :]
        copied += len(chunk)
    return copied


def _set_metadata(path: str, mode: int, uid: int, gid: int, owners: bool) -> None:
    # chown first: it clears setuid/setgid bits that chmod then sets.
    if owners:
        os.chown(path, uid, gid, follow_symlinks=False)
    os.chmod(path, stat.S_IMODE(mode))


def _set_mtime(path: str, seconds: int, nanoseconds: int) -> None:
    ns = seconds * 10**9 + nanoseconds
    os.utime(path, ns=(ns, ns), follow_symlinks=False)


# ---------------------------------------------------------------------- tree


def _build_tree(entries: list[_Entry], dest: str, scratch: str) -> None:
    remaining: dict[int, int] = {}
    for entry in entries:
        remaining[entry.inum] = remaining.get(entry.inum, 0) + 1
    for entry in entries:
        path = os.path.join(dest, entry.relative)
        try:
            if isinstance(entry.inode, DirectoryInode):
                os.mkdir(path, 0o700)
                continue
            source = os.path.join(scratch, str(entry.inum))
            remaining[entry.inum] -= 1
            if remaining[entry.inum] == 0:
                os.rename(source, path)
            else:
                os.link(source, path, follow_symlinks=False)
        except OSError as exc:
            raise UnpackError(f"/{entry.relative}: {exc.strerror or exc}") from None


def _tree_cache(entries: list[_Entry], dest: str) -> dict[str, CacheEntry]:
    """Inode number and ctime of every regular file, taken after the last
    link so they are what a scan will see."""
    cache = {}
    for entry in entries:
        if isinstance(entry.inode, RegularInode):
            st = os.lstat(os.path.join(dest, entry.relative))
            cache["/" + entry.relative] = CacheEntry(
                st.st_ino, st.st_ctime_ns, st.st_size, entry.inode.hash
            )
    return cache


def _apply_directory_metadata(
    entries: list[_Entry], root: DirectoryInode, dest: str, owners: bool
) -> None:
    directories = [e for e in entries if isinstance(e.inode, DirectoryInode)]
    try:
        for entry in reversed(directories):
            inode = entry.inode
            assert isinstance(inode, DirectoryInode)
            path = os.path.join(dest, entry.relative)
            _set_metadata(path, inode.mode, inode.uid, inode.gid, owners)
        _set_metadata(dest, root.mode, root.uid, root.gid, owners)
    except OSError as exc:
        raise UnpackError(f"{dest}: {exc.strerror or exc}") from None
