"""Copy modification times from a stream's previous image (reference §5.7).

Files that a build rewrote with identical content (a package upgrade that
reinstalls the same file, say) would otherwise look changed to dominator only
because of their mtime. For each inode of the new image we take its first path
that the mtimes-copy filter does not exclude and that exists in the old image;
when old and new agree on everything but the mtime, the old mtime is kept.
"""

from __future__ import annotations

from dataclasses import replace

from imaginator.image.model import FileSystem, Inode, RegularInode, SpecialInode
from imaginator.image.scan import PathFilter


def _paths_by_inode(fs: FileSystem) -> dict[int, list[str]]:
    result: dict[int, list[str]] = {}
    for path, inum, _inode in fs.walk():
        result.setdefault(inum, []).append(path)
    return result


def _inode_by_path(fs: FileSystem) -> dict[str, Inode]:
    return {path: inode for path, _inum, inode in fs.walk()}


def _twin(old: Inode, new: RegularInode | SpecialInode) -> RegularInode | SpecialInode | None:
    """``old`` if it agrees with ``new`` on everything but the mtime, else None."""
    if isinstance(old, RegularInode) and isinstance(new, RegularInode):
        same = (
            old.mode == new.mode
            and old.uid == new.uid
            and old.gid == new.gid
            and old.size == new.size
            and (new.size == 0 or old.hash == new.hash)
        )
        return old if same else None
    if isinstance(old, SpecialInode) and isinstance(new, SpecialInode):
        same = (
            old.mode == new.mode
            and old.uid == new.uid
            and old.gid == new.gid
            and old.rdev == new.rdev
        )
        return old if same else None
    return None


def copy_mtimes(old: FileSystem, new: FileSystem, mtimes_filter: PathFilter | None = None) -> int:
    """Give inodes of ``new`` the mtimes of their unchanged twins in ``old``.

    ``mtimes_filter`` is any object with ``match(path) -> bool`` (paths it
    matches are never used). Returns how many inodes took an old mtime.
    """
    old_by_path = _inode_by_path(old)
    copied = 0
    for inum, paths in _paths_by_inode(new).items():
        inode = new.inode_table[inum]
        if not isinstance(inode, RegularInode | SpecialInode):
            continue
        for path in paths:
            if mtimes_filter is not None and mtimes_filter.match(path):
                continue
            old_path_inode = old_by_path.get(path)
            if old_path_inode is None:
                continue
            old_inode = _twin(old_path_inode, inode)
            if old_inode is not None and (
                old_inode.mtime_seconds != inode.mtime_seconds
                or old_inode.mtime_nanoseconds != inode.mtime_nanoseconds
            ):
                new.inode_table[inum] = replace(
                    inode,
                    mtime_seconds=old_inode.mtime_seconds,
                    mtime_nanoseconds=old_inode.mtime_nanoseconds,
                )
                copied += 1
            break
    return copied
