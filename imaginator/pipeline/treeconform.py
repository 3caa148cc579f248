"""Making a build's own tree exactly what unpacking its image would give.

A bootstrap build leaves a tree on disk that its image was scanned from.
Kept as the image's entry in the source-tree cache (``rootfs``), it saves
the first derived build an unpack of the whole image, but only if nothing
distinguishes it from what :func:`imaginator.image.unpack.materialise`
writes: so everything the image does not have goes (paths the scan filter
left out, sockets, extended attributes), regular files and device nodes get
the image's modification times (which may come from the stream's previous
image, where the content did not change), and the tree cache is taken after
that, from the files as they now are.

Blocking; runs in a pool thread on a tree nothing else is using.
"""

from __future__ import annotations

import contextlib
import errno
import os

from imaginator.image.model import (
    ComputedRegularInode,
    DirectoryInode,
    Image,
    Inode,
    RegularInode,
    SpecialInode,
    SymlinkInode,
)
from imaginator.image.scan import CacheEntry, TreeCache
from imaginator.runtime.treedelete import delete_matching

__all__ = ["TreeMismatch", "conform_tree"]


class TreeMismatch(Exception):
    """The tree is not the one the image was scanned from: it cannot stand for it."""


def conform_tree(image: Image, root: str) -> TreeCache:
    """Turn ``root`` into ``image``'s materialisation and return its tree cache."""
    fs = image.file_system
    if fs is None:
        raise TreeMismatch("image has no file-system")
    entries = list(fs.walk())
    paths = {path for path, _inum, _inode in entries}
    delete_matching(root, lambda path: path not in paths)
    cache: TreeCache = {}
    for path, _inum, inode in entries:
        host = root + path
        st = os.lstat(host)
        if isinstance(inode, ComputedRegularInode):
            raise TreeMismatch(f"{path}: a computed file has no content in the image")
        if _kind(st.st_mode) != _kind_of(inode):
            raise TreeMismatch(f"{path}: not the kind of file the image has")
        if not isinstance(inode, SymlinkInode):
            _drop_xattrs(host)
        if isinstance(inode, RegularInode | SpecialInode):
            wanted = inode.mtime_seconds * 10**9 + inode.mtime_nanoseconds
            if st.st_mtime_ns != wanted:
                os.utime(host, ns=(wanted, wanted), follow_symlinks=False)
    _drop_xattrs(root)
    # Only now: the changes above moved the ctimes the scanner will compare.
    for path, _inum, inode in entries:
        if isinstance(inode, RegularInode):
            st = os.lstat(root + path)
            if st.st_size != inode.size:
                raise TreeMismatch(f"{path}: size changed since the scan")
            cache[path] = CacheEntry(st.st_ino, st.st_ctime_ns, st.st_size, inode.hash)
    return cache


def _kind(mode: int) -> int:
    return mode & 0o170000


def _kind_of(inode: Inode) -> int:
    if isinstance(inode, DirectoryInode):
        return 0o040000
    if isinstance(inode, SymlinkInode):
        return 0o120000
    if isinstance(inode, SpecialInode):
        return _kind(inode.mode)
    return 0o100000


def _drop_xattrs(path: str) -> None:
    """Extended attributes are not part of an image (``materialise`` writes none)."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return
        raise
    for name in names:
        with contextlib.suppress(FileNotFoundError):
            os.removexattr(path, name, follow_symlinks=False)
