"""Comparing an unpacked tree with an image record, file by file."""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable
from pathlib import Path

from imaginator.image.model import (
    ComputedRegularInode,
    DirectoryInode,
    Image,
    RegularInode,
    SpecialInode,
    SymlinkInode,
)

#: path -> (kind, mode, uid, gid, content sha512 or symlink target or rdev, mtime ns or None)
Listing = dict[str, tuple]


def tree_listing(root: Path, *, mtimes: bool = True) -> Listing:
    """Every entry under ``root`` (not ``root`` itself), without following links."""
    listing: Listing = {}
    for directory, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            path = os.path.join(directory, name)
            st = os.lstat(path)
            key = "/" + os.path.relpath(path, root)
            mode = stat.S_IMODE(st.st_mode)
            mtime = st.st_mtime_ns if mtimes else None
            if stat.S_ISDIR(st.st_mode):
                listing[key] = ("dir", mode, st.st_uid, st.st_gid, None, None)
            elif stat.S_ISLNK(st.st_mode):
                listing[key] = ("link", None, st.st_uid, st.st_gid, os.readlink(path), None)
            elif stat.S_ISREG(st.st_mode):
                with open(path, "rb") as handle:
                    digest = hashlib.sha512(handle.read()).hexdigest()
                listing[key] = ("file", mode, st.st_uid, st.st_gid, digest, mtime)
            else:
                kind = stat.S_IFMT(st.st_mode)
                listing[key] = (f"special {kind:o}", mode, st.st_uid, st.st_gid, st.st_rdev, mtime)
    return listing


def image_listing(image: Image, read: Callable[[str], bytes], *, mtimes: bool = True) -> Listing:
    """The same for an image record; ``read(hex id)`` gives an object's content."""
    assert image.file_system is not None
    listing: Listing = {}
    for path, _inum, inode in image.file_system.walk():
        if isinstance(inode, DirectoryInode):
            listing[path] = ("dir", stat.S_IMODE(inode.mode), inode.uid, inode.gid, None, None)
        elif isinstance(inode, SymlinkInode):
            listing[path] = ("link", None, inode.uid, inode.gid, inode.symlink, None)
        elif isinstance(inode, RegularInode):
            data = read(inode.hash.hex()) if inode.size else b""
            mtime = inode.mtime_seconds * 10**9 + inode.mtime_nanoseconds if mtimes else None
            listing[path] = (
                "file",
                stat.S_IMODE(inode.mode),
                inode.uid,
                inode.gid,
                hashlib.sha512(data).hexdigest(),
                mtime,
            )
        elif isinstance(inode, ComputedRegularInode):
            empty = hashlib.sha512(b"").hexdigest()
            listing[path] = ("file", stat.S_IMODE(inode.mode), inode.uid, inode.gid, empty, None)
        elif isinstance(inode, SpecialInode):
            kind = stat.S_IFMT(inode.mode)
            mtime = inode.mtime_seconds * 10**9 + inode.mtime_nanoseconds if mtimes else None
            listing[path] = (
                f"special {kind:o}",
                stat.S_IMODE(inode.mode),
                inode.uid,
                inode.gid,
                inode.rdev,
                mtime,
            )
    return listing


def without_computed_mtimes(listing: Listing, image: Image) -> Listing:
    """Computed files have no mtime in the image: drop theirs from a tree listing."""
    assert image.file_system is not None
    computed = {
        path
        for path, _inum, inode in image.file_system.walk()
        if isinstance(inode, ComputedRegularInode)
    }
    return {
        path: (*entry[:5], None) if path in computed else entry for path, entry in listing.items()
    }
