"""A directory tree with every kind of inode, for the scan and unpack tests.

Building it needs root (owners, device nodes).
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

from imaginator.image.model import (
    DirectoryInode,
    FileSystem,
    RegularInode,
    SpecialInode,
    SymlinkInode,
)

MTIME_NS = 1_700_000_000_123_456_789
BIG = bytes(range(256)) * (12 << 10)  # 3 MiB
SHARED = b"shared content\n"
TOOL = b"#!/bin/sh\necho tool\n" * 100
ORDER_NAMES = ["B", "Z", "a", "\u00e9", os.fsdecode(b"\xff")]  # bytewise order


def make_tree(root: Path) -> None:
    """Fill ``root`` (which must not exist) with the crafted tree."""
    root.mkdir()
    _make_skipped_entries(root)
    _make_bin(root / "bin")
    _make_data(root / "data")
    _make_dev(root / "dev")
    os.symlink("data/big", root / "link")
    os.chown(root / "link", 1234, 5678, follow_symlinks=False)
    (root / "sticky").mkdir()
    os.chmod(root / "sticky", 0o1777)
    (root / "order").mkdir()
    for name in reversed(ORDER_NAMES):
        (root / "order" / name).write_bytes(name.encode("utf-8", "surrogateescape"))
    (root / "var" / "log").mkdir(parents=True)
    (root / "var" / "log" / "junk").write_bytes(b"filtered")
    for path, _, files in os.walk(root):
        for name in files:
            full = os.path.join(path, name)
            if not stat.S_ISSOCK(os.lstat(full).st_mode):
                os.utime(full, ns=(MTIME_NS, MTIME_NS), follow_symlinks=False)


def _make_skipped_entries(root: Path) -> None:
    (root / ".subd").mkdir()
    (root / ".subd" / "secret").write_bytes(b"not in the image")
    (root / "skipme").mkdir()
    (root / "skipme" / "file").write_bytes(b"filtered")


def _make_bin(path: Path) -> None:
    path.mkdir()
    (path / "tool").write_bytes(TOOL)
    os.chmod(path / "tool", 0o4755)
    (path / "sgid").write_bytes(b"sgid")
    os.chown(path / "sgid", 0, 50)
    os.chmod(path / "sgid", 0o2711)


def _make_data(path: Path) -> None:
    path.mkdir()
    (path / "big").write_bytes(BIG)
    (path / "empty").write_bytes(b"")
    os.chmod(path / "empty", 0o600)
    (path / "hard1").write_bytes(SHARED)
    os.link(path / "hard1", path / "hard2")
    os.link(path / "hard1", path / "hard3")
    (path / "dup").write_bytes(SHARED)  # same content, another inode
    (path / ".subd").mkdir()  # only skipped at the top level
    (path / ".subd" / "keep").write_bytes(b"kept")
    for entry in ("big", "empty", "hard1", "dup", ".subd/keep", ".subd"):
        os.chown(path / entry, 1234, 5678)
    os.chown(path, 1234, 5678)
    os.chmod(path, 0o750)


def _make_dev(path: Path) -> None:
    path.mkdir()
    os.mknod(path / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.chmod(path / "null", 0o666)
    os.mknod(path / "loop0", stat.S_IFBLK | 0o660, os.makedev(7, 0))
    os.chown(path / "loop0", 0, 6)
    os.chmod(path / "loop0", 0o660)
    os.mkfifo(path / "fifo")
    os.chmod(path / "fifo", 0o640)
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path / "sock"))
    sock.close()


EXPECTED_PATHS = {
    "/bin",
    "/bin/sgid",
    "/bin/tool",
    "/data",
    "/data/.subd",
    "/data/.subd/keep",
    "/data/big",
    "/data/dup",
    "/data/empty",
    "/data/hard1",
    "/data/hard2",
    "/data/hard3",
    "/dev",
    "/dev/fifo",
    "/dev/loop0",
    "/dev/null",
    "/link",
    "/order",
    *(f"/order/{name}" for name in ORDER_NAMES),
    "/sticky",
    "/var",
    "/var/log",
}


def describe(fs: FileSystem) -> dict[str, tuple]:
    """Everything about the tree except inode numbers, by path; hard links
    are described by the sorted paths that share the inode."""
    links = {inum: tuple(sorted(paths)) for inum, paths in fs.paths_by_inode().items()}
    result: dict[str, tuple] = {"/": ("dir", fs.root.mode, fs.root.uid, fs.root.gid)}
    for path, inum, inode in fs.walk():
        match inode:
            case DirectoryInode():
                names = tuple(name for name, _ in inode.entries)
                result[path] = ("dir", inode.mode, inode.uid, inode.gid, names)
            case RegularInode() | SpecialInode() | SymlinkInode():
                fields = tuple(getattr(inode, f) for f in inode.__slots__)
                result[path] = (type(inode).__name__, fields, links[inum])
            case _:
                result[path] = (type(inode).__name__, inode, links[inum])
    return result


@contextlib.contextmanager
def mounted(*args: str) -> Iterator[None]:
    """``mount args…`` for the duration (the last argument is the mount
    point); raises ``OSError`` if mounting is not possible here."""
    done = subprocess.run(["mount", *args], capture_output=True, check=False)
    if done.returncode != 0:
        raise OSError(done.stderr.decode(errors="replace").strip() or "mount failed")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", args[-1]], check=False)


async def scan(root, threadpool, store, **kwargs):
    """Scan ``root`` on the real reactor (what the tests of scanning and unpacking share)."""
    from twisted.internet import reactor

    from imaginator.image.scan import scan_tree

    return await scan_tree(str(root), reactor=reactor, threadpool=threadpool, store=store, **kwargs)
