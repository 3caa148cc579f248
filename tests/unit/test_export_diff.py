"""Image diffs (imaginator.export.diff) on crafted images."""

from __future__ import annotations

import pytest

from imaginator.export.diff import (
    FileChange,
    FileEntry,
    ValueChange,
    VersionChange,
    compare_versions,
    diff_images,
    diff_to_json,
    inode_changes,
    render_text,
)
from imaginator.image.model import Package, RegularInode, SymlinkInode
from tests.support.export_images import DERIVED, SOURCE, make_store


@pytest.fixture
def diff(tmp_path):
    store = make_store(tmp_path / "store")
    return diff_images(SOURCE, store.get_image(SOURCE), DERIVED, store.get_image(DERIVED))


def test_files(diff):
    assert [f.path for f in diff.files_added] == ["/bin/new"]
    assert diff.files_added[0].description.startswith("file 0644 0:0 4 bytes sha512:")
    assert [f.path for f in diff.files_removed] == [
        "/etc/gone",
        "/etc/type/child",
        "/olddir",
        "/olddir/a",
        "/olddir/sub",
        "/olddir/sub/b",
    ]
    changed = {c.path: c.changes for c in diff.files_changed}
    assert changed == {
        "/etc/link": ("content",),
        "/etc/mode": ("mode",),
        "/etc/owner": ("owner",),
        "/etc/passwd": ("content",),
        "/etc/type": ("type",),
        "/pair1": ("content",),
        "/pair2": ("content",),
        "/var/comp": ("type",),
    }
    link = next(c for c in diff.files_changed if c.path == "/etc/link")
    assert (link.old, link.new) == ("symlink 0:0 -> passwd", "symlink 0:0 -> group")
    mode = next(c for c in diff.files_changed if c.path == "/etc/mode")
    assert "0644" in mode.old and "0600" in mode.new


def test_packages_tags_filter_triggers_metadata(diff):
    assert diff.packages_added == [Package("hello", 50, "2.10-3")]
    assert diff.packages_removed == [Package("gone-pkg", 10, "1.0")]
    assert diff.packages_upgraded == [VersionChange("less", "590-2", "590-3")]
    assert diff.packages_downgraded == [
        VersionChange("zlib1g", "1:1.2.13.dfsg-1", "1:1.2.13.dfsg-0")
    ]
    assert diff.tags_added == {"Team": "ops"}
    assert diff.tags_removed == {}
    assert diff.tags_changed == [ValueChange("Role", "base", "app")]
    assert (diff.filter_added, diff.filter_removed) == (["/var/cache/.*"], ["/tmp/.*"])
    assert [t["Service"] for t in diff.triggers_added] == ["sshd"]
    assert [t["Service"] for t in diff.triggers_removed] == ["ssh"]
    assert [v.key for v in diff.metadata] == ["SourceImage", "BuildGitUrl", "BuildCommitId"]
    assert not diff.empty


def test_text_rendering(diff):
    text = render_text(diff)
    lines = text.splitlines()
    assert lines[:2] == [f"--- {SOURCE}", f"+++ {DERIVED}"]
    assert "Files: 1 added, 6 removed, 8 changed" in lines
    assert "Packages: 1 added, 1 removed, 1 upgraded, 1 downgraded" in lines
    assert "  ^ less 590-2 -> 590-3" in lines
    assert "  + hello 2.10-3" in lines
    assert "  ~ Role: base -> app" in lines
    assert "  - /tmp/.*" in lines
    assert any(line.startswith("  ~ /etc/mode: mode (file 0644") for line in lines)
    assert text.endswith("\n")


def test_json_rendering(diff):
    value = diff_to_json(diff)
    assert value["OldImage"] == SOURCE and value["NewImage"] == DERIVED
    assert value["Packages"]["Upgraded"] == [
        {"Name": "less", "OldVersion": "590-2", "NewVersion": "590-3"}
    ]
    assert value["Files"]["Changed"][0] == {
        "Path": "/etc/link",
        "Changes": ["content"],
        "Old": "symlink 0:0 -> passwd",
        "New": "symlink 0:0 -> group",
    }
    assert value["Tags"] == {
        "Added": {"Team": "ops"},
        "Removed": {},
        "Changed": [{"Key": "Role", "Old": "base", "New": "app"}],
    }


def test_an_image_against_itself(tmp_path):
    store = make_store(tmp_path / "store")
    image = store.get_image(SOURCE)
    same = diff_images(SOURCE, image, SOURCE, image)
    assert same.empty
    assert render_text(same).splitlines()[-1] == "No differences"


def test_only_the_changed_package_shows_between_two_base_images(tmp_path):
    store = make_store(tmp_path / "store")
    old = store.get_image(SOURCE)
    new = store.get_image(SOURCE)
    new.packages = tuple(
        Package(p.name, p.size, "590-3") if p.name == "less" else p for p in old.packages
    )
    diff = diff_images("a", old, "b", new)
    assert diff.packages_upgraded == [VersionChange("less", "590-2", "590-3")]
    assert not (diff.packages_added or diff.packages_removed or diff.files_changed)


def test_multiarch_duplicates_are_added_and_removed():
    from imaginator.image.model import Image

    old = Image(packages=(Package("libc6", 1, "2.36"), Package("libc6", 1, "2.36")))
    new = Image(packages=(Package("libc6", 1, "2.37"),))
    diff = diff_images("a", old, "b", new)
    assert diff.packages_added == [Package("libc6", 1, "2.37")]
    assert diff.packages_removed == [Package("libc6", 1, "2.36")] * 2


def test_inode_changes_ignore_mtimes():
    a = RegularInode(0o100644, 0, 0, 1, 0, 3, b"x" * 64)
    b = RegularInode(0o100644, 0, 0, 2, 5, 3, b"x" * 64)
    assert inode_changes(a, b) == ()
    assert inode_changes(a, SymlinkInode(0, 0, "x")) == ("type",)
    assert inode_changes(a, RegularInode(0o100755, 1, 0, 1, 0, 4, b"y" * 64)) == (
        "content",
        "mode",
        "owner",
    )
    assert FileEntry("/x", "d") != FileChange("/x", (), "", "")


@pytest.mark.parametrize(
    ("a", "b", "order"),
    [
        ("1.0", "1.0", 0),
        ("1.0", "1.1", -1),
        ("1.10", "1.9", 1),
        ("1.0~rc1", "1.0", -1),
        ("1.0", "1.0+b1", -1),
        ("1:0.9", "2.0", 1),
        ("590-2", "590-10", -1),
        ("2.36-9+deb12u4", "2.36-9+deb12u10", -1),
        ("1.0a", "1.0", 1),
        ("1.0-1", "1.0", 1),
        ("0:1.0", "1.0", 0),
        ("1.001", "1.1", 0),
    ],
)
def test_debian_version_order(a, b, order):
    assert compare_versions(a, b) == order
    assert compare_versions(b, a) == -order
