"""Crafted images for the export tests: a source image and a derived one
with every kind of change a layer and a diff must carry."""

from __future__ import annotations

import os
import stat

from imaginator.image.model import (
    ComputedRegularInode,
    DirectoryInode,
    FileSystem,
    Image,
    Package,
    RegularInode,
    SpecialInode,
    SymlinkInode,
)
from imaginator.image.triggers import Trigger
from imaginator.store.local import LocalImageStore

SOURCE = "base/test/2026-01-02:03:04:05"
DERIVED = "apps/test/2026-01-02:03:05:00"
MTIME = (1_700_000_000, 123_456_789)
SOURCE_CREATED = 1_767_323_045_000_000_000
DERIVED_CREATED = 1_767_323_100_500_000_000
OS_RELEASE = b'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n'
DIR = stat.S_IFDIR | 0o755
REG = stat.S_IFREG | 0o644


class Tree:
    """Builds a ``FileSystem`` path by path, storing contents in ``store``."""

    def __init__(self, store: LocalImageStore) -> None:
        self.store = store
        self.table: dict = {}
        self.root = DirectoryInode([], DIR)
        self.next = 100
        self.dirs: dict[str, DirectoryInode] = {"": self.root}

    def _add(self, path: str, inode, inum: int | None = None) -> int:
        parent, _, name = path.strip("/").rpartition("/")
        if inum is None:
            inum = self.next
            self.next += 1
            self.table[inum] = inode
        self.dirs[parent].entries.append((name, inum))
        self.dirs[parent].entries.sort(key=lambda e: e[0].encode("utf-8", "surrogateescape"))
        if isinstance(inode, DirectoryInode):
            self.dirs[path.strip("/")] = inode
        return inum

    def dir(self, path: str, mode: int = DIR, uid: int = 0, gid: int = 0) -> int:
        return self._add(path, DirectoryInode([], mode, uid, gid))

    def file(
        self, path: str, data: bytes, mode: int = REG, uid: int = 0, gid: int = 0, mtime=MTIME
    ) -> int:
        digest = bytes.fromhex(self.store.put_object_bytes(data)) if data else bytes(64)
        return self._add(path, RegularInode(mode, uid, gid, *mtime, len(data), digest))

    def link(self, path: str, inum: int) -> None:
        self._add(path, self.table[inum], inum)

    def symlink(self, path: str, target: str, uid: int = 0, gid: int = 0) -> int:
        return self._add(path, SymlinkInode(uid, gid, target))

    def special(self, path: str, mode: int, rdev: int, gid: int = 0) -> int:
        return self._add(path, SpecialInode(mode, 0, gid, *MTIME, rdev))

    def computed(self, path: str, source: str = "filegen:6972") -> int:
        return self._add(path, ComputedRegularInode(REG, 0, 0, source))

    def fs(self) -> FileSystem:
        fs = FileSystem(self.table, self.root)
        fs.recompute_totals()
        return fs


def source_image(store: LocalImageStore) -> Image:
    t = Tree(store)
    t.dir("/bin")
    t.file("/bin/sh", b"#!sh\n" * 100, stat.S_IFREG | 0o755)
    t.file("/bin/keep", b"keep\n")
    t.dir("/etc")
    t.file("/etc/passwd", b"root:x:0:0::/root:/bin/sh\n")
    t.file("/etc/gone", b"gone\n")
    t.file("/etc/mode", b"mode\n")
    t.file("/etc/owner", b"owner\n")
    t.file("/etc/os-release", OS_RELEASE)
    t.dir("/etc/type")
    t.file("/etc/type/child", b"child\n")
    t.symlink("/etc/link", "passwd")
    t.dir("/olddir")
    t.file("/olddir/a", b"a\n")
    t.dir("/olddir/sub")
    t.file("/olddir/sub/b", b"b\n")
    hard = t.file("/hard1", b"shared\n")
    t.link("/hard2", hard)
    pair = t.file("/pair1", b"pair\n")
    t.link("/pair2", pair)
    t.dir("/var")
    t.file("/var/comp", b"was a file\n")
    t.dir("/var/lib")
    t.dir("/var/lib/dpkg")
    t.file("/var/lib/dpkg/status", b"Package: less\n")
    t.dir("/dev")
    t.special("/dev/null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    return Image(
        file_system=t.fs(),
        created_on=SOURCE_CREATED,
        packages=(
            Package("base-files", 100, "12.4+deb12u5"),
            Package("less", 200, "590-2"),
            Package("zlib1g", 300, "1:1.2.13.dfsg-1"),
            Package("gone-pkg", 10, "1.0"),
        ),
        tags={"Role": "base"},
        filter=("/var/log/.*", "/tmp/.*"),
        triggers=(Trigger(("/etc/ssh/.*",), "ssh"),),
    )


def derived_image(store: LocalImageStore) -> Image:
    t = Tree(store)
    t.dir("/bin")
    t.file("/bin/sh", b"#!sh\n" * 100, stat.S_IFREG | 0o755)
    t.file("/bin/keep", b"keep\n")
    t.file("/bin/new", b"new\n")
    t.dir("/etc")
    t.file("/etc/passwd", b"root:x:0:0::/root:/bin/bash\n")
    t.file("/etc/mode", b"mode\n", stat.S_IFREG | 0o600)
    t.file("/etc/owner", b"owner\n", uid=5, gid=6)
    t.file("/etc/os-release", OS_RELEASE)
    t.file("/etc/type", b"now a file\n")
    t.symlink("/etc/link", "group")
    hard = t.file("/hard1", b"shared\n")
    t.link("/hard2", hard)
    pair = t.file("/pair1", b"pair changed\n")
    t.link("/pair2", pair)
    t.dir("/var")
    t.computed("/var/comp")
    t.dir("/var/lib")
    t.dir("/var/lib/dpkg")
    t.file("/var/lib/dpkg/status", b"Package: less\n")
    t.dir("/dev")
    t.special("/dev/null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    return Image(
        file_system=t.fs(),
        created_on=DERIVED_CREATED,
        source_image=SOURCE,
        build_commit_id="0123456789abcdef0123456789abcdef01234567",
        build_git_url="https://git.example.com/manifests.git",
        packages=(
            Package("base-files", 100, "12.4+deb12u5"),
            Package("hello", 50, "2.10-3"),
            Package("less", 200, "590-3"),
            Package("zlib1g", 300, "1:1.2.13.dfsg-0"),
        ),
        tags={"Role": "app", "Team": "ops"},
        filter=("/var/log/.*", "/var/cache/.*"),
        triggers=(Trigger(("/etc/ssh/.*",), "sshd"),),
    )


def make_store(path) -> LocalImageStore:
    """A store holding ``SOURCE`` and ``DERIVED``."""
    store = LocalImageStore(str(path))
    store.add_image(SOURCE, source_image(store))
    store.add_image(DERIVED, derived_image(store))
    return store
