"""Materialising images: scan → store → unpack → scan gives the same tree."""

from __future__ import annotations

import os
import stat

import pytest
import pytest_twisted

from imaginator.image.filter import Filter
from imaginator.image.model import (
    ComputedRegularInode,
    DirectoryInode,
    FileSystem,
    Image,
    RegularInode,
    SymlinkInode,
)
from imaginator.image.unpack import UnpackError, materialise
from tests.integration.crafted_tree import describe, make_tree, scan

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (owners, device nodes)")
NAME = "test/stream/2026-11-27:10:53:19"


@needs_root
@pytest_twisted.ensureDeferred
async def test_scan_store_unpack_scan_round_trip(tmp_path, threadpool, store):
    source = tmp_path / "source"
    make_tree(source)
    os.chmod(source, 0o751)
    first = await scan(source, threadpool, store, scan_filter=Filter(("/skipme", "/var/log/.*")))
    store.add_image(NAME, Image(file_system=first.file_system))
    image = store.get_image(NAME)  # through the JSON record and back

    dest = tmp_path / "dest"
    cache = materialise(image, store, str(dest))
    second = await scan(dest, threadpool, store, tree_cache=cache)

    assert describe(second.file_system) == describe(first.file_system)
    assert second.objects_added == 0
    regular = [i for i in first.file_system.inode_table.values() if isinstance(i, RegularInode)]
    non_empty = [i for i in regular if i.size > 0]
    assert second.objects_skipped == len(non_empty)
    assert second.bytes_skipped == sum(i.size for i in non_empty)
    assert not os.path.exists(dest / ".inodes")
    assert stat.S_IMODE(os.lstat(dest).st_mode) == 0o751

    paths = {path for path, _, inode in first.file_system.walk() if isinstance(inode, RegularInode)}
    assert set(cache) == paths
    for path, entry in cache.items():
        st = os.lstat(f"{dest}{path}")
        assert (entry.ino, entry.ctime_ns, entry.size) == (st.st_ino, st.st_ctime_ns, st.st_size)


def tree(entries, table, root_mode=0o40755) -> Image:
    fs = FileSystem(table, DirectoryInode(entries, root_mode, os.getuid(), os.getgid()))
    fs.recompute_totals()
    return Image(file_system=fs)


def test_computed_files_and_read_only_directories(tmp_path, store):
    uid, gid = os.getuid(), os.getgid()
    data = b"inside a read-only directory"
    hash_hex = store.put_object_bytes(data)
    table = {
        2: DirectoryInode([("file", 3), ("computed", 4), ("link", 5)], 0o40555, uid, gid),
        3: RegularInode(0o100444, uid, gid, 1_000_000_000, 5, len(data), bytes.fromhex(hash_hex)),
        4: ComputedRegularInode(0o100640, uid, gid, "filegen:1234"),
        5: SymlinkInode(uid, gid, "../elsewhere"),
    }
    dest = tmp_path / "dest"
    cache = materialise(tree([("ro", 2)], table), store, str(dest))
    assert (dest / "ro" / "file").read_bytes() == data
    assert os.lstat(dest / "ro" / "file").st_mtime_ns == 1_000_000_000_000_000_005
    assert stat.S_IMODE(os.lstat(dest / "ro").st_mode) == 0o555
    computed = os.lstat(dest / "ro" / "computed")
    assert (computed.st_size, stat.S_IMODE(computed.st_mode)) == (0, 0o640)
    assert os.readlink(dest / "ro" / "link") == "../elsewhere"
    assert set(cache) == {"/ro/file"}
    os.chmod(dest / "ro", 0o755)  # so tmp_path can be cleaned up


@pytest.mark.parametrize("bad", ["..", ".", "a/b", "", "nul\0", "../escape"])
def test_hostile_names_are_refused_before_anything_is_written(tmp_path, store, bad):
    table = {2: DirectoryInode([(bad, 3)], 0o40755, 0, 0), 3: SymlinkInode(0, 0, "/etc")}
    dest = tmp_path / "dest"
    with pytest.raises(UnpackError, match="bad entry name"):
        materialise(tree([("d", 2)], table), store, str(dest))
    assert sorted(os.listdir(tmp_path)) == ["store"]


def test_duplicate_names_and_shared_directories_are_refused(tmp_path, store):
    table = {2: SymlinkInode(0, 0, "x"), 3: SymlinkInode(0, 0, "y")}
    with pytest.raises(UnpackError, match="duplicate entry name 'a'"):
        materialise(tree([("a", 2), ("a", 3)], table), store, str(tmp_path / "d1"))
    table = {2: DirectoryInode([], 0o40755, 0, 0)}
    with pytest.raises(UnpackError, match="appears twice"):
        materialise(tree([("a", 2), ("b", 2)], table), store, str(tmp_path / "d2"))
    with pytest.raises(UnpackError, match="unknown inode 9"):
        materialise(tree([("a", 9)], {}), store, str(tmp_path / "d3"))


def test_missing_objects_and_busy_destinations(tmp_path, store):
    table = {2: RegularInode(0o100644, 0, 0, 0, 0, 3, bytes(range(64)))}
    dest = tmp_path / "dest"
    with pytest.raises(UnpackError, match="is not available"):
        materialise(tree([("f", 2)], table), store, str(dest))
    assert not (dest / ".inodes").exists()

    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_bytes(b"")
    with pytest.raises(UnpackError, match="not empty"):
        materialise(tree([], {}), store, str(busy))


def test_scratch_directory_avoids_a_top_level_inodes_entry(tmp_path, store):
    table = {2: DirectoryInode([], 0o40700, os.getuid(), os.getgid())}
    dest = tmp_path / "dest"
    materialise(tree([(".inodes", 2)], table), store, str(dest))
    assert os.listdir(dest) == [".inodes"]
    assert stat.S_IMODE(os.lstat(dest / ".inodes").st_mode) == 0o700


def test_hard_links_are_preserved(tmp_path, store):
    hash_hex = store.put_object_bytes(b"linked")
    uid, gid = os.getuid(), os.getgid()
    table = {
        2: RegularInode(0o100600, uid, gid, 7, 0, 6, bytes.fromhex(hash_hex)),
        3: DirectoryInode([("c", 2)], 0o40755, uid, gid),
    }
    dest = tmp_path / "dest"
    cache = materialise(tree([("a", 2), ("b", 2), ("sub", 3)], table), store, str(dest))
    inos = {os.lstat(dest / p).st_ino for p in ("a", "b", "sub/c")}
    assert len(inos) == 1 and os.lstat(dest / "a").st_nlink == 3
    assert {entry.ino for entry in cache.values()} == inos
