"""Deterministic tar layers (imaginator.export.tarlayer): full and diff layers."""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile

import pytest

from imaginator.export.source import ExportError
from imaginator.export.tarlayer import (
    TimePolicy,
    diff_members,
    layer_members,
    write_layer,
)
from imaginator.image.model import DirectoryInode, FileSystem, Image
from tests.support.export_images import (
    DERIVED,
    DERIVED_CREATED,
    MTIME,
    SOURCE,
    Tree,
    make_store,
)


@pytest.fixture
def store(tmp_path):
    return make_store(tmp_path / "store")


def members_of(layer_bytes: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(layer_bytes)), mode="r:") as tar:
        return tar.getmembers()


def layer(store, fs_members, image, path, sde=None):
    times = TimePolicy.for_image(image, sde)
    written = write_layer(fs_members, store, times, str(path))
    return written, path.read_bytes()


def test_a_full_layer_is_byte_identical_every_time(store, tmp_path):
    image = store.get_image(SOURCE)
    first, data1 = layer(store, layer_members(image.file_system), image, tmp_path / "1")
    second, data2 = layer(store, layer_members(image.file_system), image, tmp_path / "2")
    assert data1 == data2 and first == second
    assert first.digest == "sha256:" + hashlib.sha256(data1).hexdigest()
    assert first.size == len(data1)
    assert first.diff_id == "sha256:" + hashlib.sha256(gzip.decompress(data1)).hexdigest()
    # gzip header: no file name, no time, fixed level and OS byte.
    assert data1[:4] == b"\x1f\x8b\x08\x00" and data1[4:8] == bytes(4)


def test_full_layer_entries_sorted_with_numeric_owners_links_and_devices(store, tmp_path):
    image = store.get_image(SOURCE)
    _, data = layer(store, layer_members(image.file_system), image, tmp_path / "l")
    members = members_of(data)
    names = [m.name for m in members]
    assert names[:3] == ["bin", "bin/keep", "bin/sh"]
    assert names == sorted(names, key=lambda n: n.split("/"))
    assert "." not in names  # the root comes from the runtime, not from a layer
    by_name = {m.name: m for m in members}
    assert by_name["hard2"].islnk() and by_name["hard2"].linkname == "hard1"
    assert by_name["hard1"].isreg() and by_name["hard1"].size == len(b"shared\n")
    null = by_name["dev/null"]
    assert null.ischr() and (null.devmajor, null.devminor) == (1, 3) and null.mode == 0o666
    sh = by_name["bin/sh"]
    assert sh.mode == 0o755 and sh.pax_headers["mtime"] == "1700000000.123456789"
    assert all(m.uname == "" and m.gname == "" for m in members)
    # Directories and symlinks have no mtime in the image: its creation second.
    assert by_name["etc"].mtime == by_name["etc/link"].mtime == 1_767_323_045


def test_source_date_epoch_clamps_every_mtime(store, tmp_path):
    image = store.get_image(SOURCE)
    sde = 1_600_000_000
    _, data = layer(store, layer_members(image.file_system), image, tmp_path / "a", sde)
    _, again = layer(store, layer_members(image.file_system), image, tmp_path / "b", sde)
    assert data == again
    members = members_of(data)
    assert {m.mtime for m in members} == {sde}
    assert all("mtime" not in m.pax_headers for m in members)
    # A later epoch leaves earlier times alone.
    _, later = layer(store, layer_members(image.file_system), image, tmp_path / "c", 2 * 10**9)
    assert members_of(later)[2].pax_headers["mtime"] == "1700000000.123456789"


def test_computed_files_are_left_out_of_layers(store):
    derived = store.get_image(DERIVED)
    assert "var/comp" not in [m.path for m in layer_members(derived.file_system)]


def test_diff_layer_against_the_source(store, tmp_path):
    old, new = store.get_image(SOURCE), store.get_image(DERIVED)
    members = diff_members(old.file_system, new.file_system)
    described = [
        (m.path, "whiteout" if m.inode is None else type(m.inode).__name__, m.link_to)
        for m in members
    ]
    assert described == [
        ("olddir", "whiteout", ""),  # one whiteout for a removed tree, before its siblings
        ("bin/new", "RegularInode", ""),
        ("etc/gone", "whiteout", ""),
        ("etc/link", "SymlinkInode", ""),  # new target
        ("etc/mode", "RegularInode", ""),  # new mode
        ("etc/owner", "RegularInode", ""),  # new owner
        ("etc/passwd", "RegularInode", ""),  # new content
        ("etc/type", "RegularInode", ""),  # was a directory: replaces it, no child whiteouts
        ("pair1", "RegularInode", ""),  # a changed hard-link group is carried whole
        ("pair2", "RegularInode", "pair1"),
        ("var/comp", "whiteout", ""),  # a file that became computed has no content here
    ]
    _, data = layer(store, members, new, tmp_path / "diff")
    names = [m.name for m in members_of(data)]
    assert ".wh.olddir" in names and "etc/.wh.gone" in names and "var/.wh.comp" in names
    whiteout = {m.name: m for m in members_of(data)}["etc/.wh.gone"]
    assert whiteout.isreg() and whiteout.size == 0
    assert whiteout.mtime == DERIVED_CREATED // 10**9


def test_diff_of_identical_trees_is_empty(store):
    image = store.get_image(SOURCE)
    assert diff_members(image.file_system, image.file_system) == []


def test_diff_sees_an_mtime_change_and_a_link_group_change(store, tmp_path):
    base = Tree(store)
    a = base.file("/a", b"x")
    base.link("/b", a)
    base.file("/t", b"t")
    changed = Tree(store)
    changed.file("/a", b"x")
    changed.file("/b", b"x")  # same content, no longer the same inode
    changed.file("/t", b"t", mtime=(MTIME[0] + 1, 0))
    members = diff_members(base.fs(), changed.fs())
    assert [(m.path, m.link_to) for m in members] == [("a", ""), ("b", ""), ("t", "")]


def test_a_name_that_reads_as_a_whiteout_is_refused(store):
    t = Tree(store)
    t.file("/.wh.sneaky", b"x")
    with pytest.raises(ExportError, match=r"/\.wh\.sneaky: a name starting with \.wh\."):
        layer_members(t.fs())
    with pytest.raises(ExportError, match=r"\.wh\.sneaky"):
        diff_members(Tree(store).fs(), t.fs())


def test_hostile_names_are_refused(store):
    fs = FileSystem({}, DirectoryInode([("..", 5)]))
    fs.inode_table[5] = DirectoryInode([])
    with pytest.raises(ExportError, match="bad entry name"):
        layer_members(fs)


def test_a_short_object_fails_the_layer(store, tmp_path):
    image = store.get_image(SOURCE)
    passwd = next(i for p, _n, i in image.file_system.walk() if p == "/etc/passwd")
    with open(store.object_path(passwd.hash.hex()), "r+b") as f:
        f.truncate(3)
    with pytest.raises(ExportError, match="does not have 26 bytes"):
        layer(store, layer_members(image.file_system), image, tmp_path / "l")


def test_time_policy_for_an_image_without_creation_time():
    assert TimePolicy.for_image(Image()) == TimePolicy(0, None)
    assert TimePolicy.for_image(Image(created_on=5 * 10**9), 3) == TimePolicy(3, 3)
    assert TimePolicy(10, 7).mtime(8, 1) == (7, 0)
    assert TimePolicy(10, 7).mtime(7, 0) == (7, 0)
    assert TimePolicy(10, None).mtime(8, 1) == (8, 1)
