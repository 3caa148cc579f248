"""Deleting matching paths inside an image root, on real files, hostile trees included."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from imaginator.runtime.treedelete import delete_matching
from tests.support.imageroot import make_outside, new_dir, snapshot


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return new_dir(tmp_path, "root")


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    return make_outside(tmp_path)


# ------------------------------------------------------------ delete_matching


def _matcher(*patterns: str):
    regex = re.compile("|".join(f"(?:{pattern})" for pattern in patterns))
    return lambda path: regex.fullmatch(path) is not None


def test_delete_matching(root: Path) -> None:
    (root / "tmp" / "dir" / "sub").mkdir(parents=True)
    (root / "tmp" / "dir" / "sub" / "f").write_bytes(b"")
    (root / "tmp" / "file").write_bytes(b"")
    (root / "var" / "cache" / "apt").mkdir(parents=True)
    (root / "var" / "cache" / "apt" / "pkg.deb").write_bytes(b"")
    (root / "var" / "cache" / "keep").write_bytes(b"")
    (root / "odd\nname").write_bytes(b"")
    deleted = delete_matching(str(root), _matcher("/tmp/.*", r".*\.deb", "/odd\n.*"))
    assert deleted == ["/odd\nname", "/tmp/dir", "/tmp/file", "/var/cache/apt/pkg.deb"]
    assert os.listdir(root / "tmp") == []
    assert os.listdir(root / "var" / "cache" / "apt") == []
    assert (root / "var" / "cache" / "keep").exists()


def test_delete_matching_never_follows_links(root: Path, outside: Path) -> None:
    before = snapshot(outside)
    (root / "tmp").mkdir()
    os.symlink(str(outside), root / "tmp" / "link")
    os.symlink(str(outside), root / "lnk")
    os.symlink("..", root / "tmp" / "up")
    deleted = delete_matching(str(root), _matcher("/tmp/link", "/lnk/.*", "/tmp/up/.*", "/.*/file"))
    assert deleted == ["/tmp/link"]
    assert snapshot(outside) == before
    assert os.path.islink(root / "lnk")
    assert os.path.islink(root / "tmp" / "up")


def test_delete_matching_root_never_matched(root: Path) -> None:
    (root / "keep").write_bytes(b"")
    assert delete_matching(str(root), lambda path: path == "/") == []
    assert (root / "keep").exists()


def test_delete_matching_deep_tree(root: Path) -> None:
    path = root / "tmp"
    path.mkdir()
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(1500):  # deeper than PATH_MAX and the recursion limit
            os.mkdir("d", dir_fd=fd)
            next_fd = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = next_fd
        os.close(os.open("leaf", os.O_WRONLY | os.O_CREAT, dir_fd=fd))
    finally:
        os.close(fd)
    assert delete_matching(str(root), _matcher("/tmp/d")) == ["/tmp/d"]
    assert os.listdir(root / "tmp") == []


def test_delete_matching_walks_deep_tree(root: Path) -> None:
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(400):  # more levels than the walk keeps descriptors for
            os.mkdir("d", dir_fd=fd)
            next_fd = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = next_fd
        os.close(os.open("leaf", os.O_WRONLY | os.O_CREAT, dir_fd=fd))
        os.close(os.open("keep", os.O_WRONLY | os.O_CREAT, dir_fd=fd))
    finally:
        os.close(fd)
    leaf = "/d" * 400 + "/leaf"
    assert delete_matching(str(root), lambda path: path == leaf) == [leaf]
    assert os.listdir(root / "/".join(["d"] * 400)) == ["keep"]
