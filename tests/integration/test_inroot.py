"""Resolving, opening and writing one path inside an image root, on real files.

The hostile cases plant symlinks to a directory outside the root (see
``tests.support.imageroot``).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from imaginator.runtime.inroot import (
    MAX_SYMLINKS,
    TreeCopyError,
    normalise_image_path,
    open_dir_in_root,
    resolve_in_root,
    write_file_in_root,
)
from tests.support.imageroot import inside, make_outside, mode_of, new_dir, snapshot


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return new_dir(tmp_path, "root")


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    return make_outside(tmp_path)


# ------------------------------------------------------------ resolve_in_root


def test_resolve_plain_path(root: Path) -> None:
    (root / "etc").mkdir()
    assert resolve_in_root(str(root), "/etc/passwd") == f"{root}/etc/passwd"
    assert resolve_in_root(str(root), "/") == str(root)
    assert resolve_in_root(str(root), "//etc/./passwd/") == f"{root}/etc/passwd"


def test_resolve_absolute_link_restarts_at_root(root: Path, outside: Path) -> None:
    os.symlink(str(outside), root / "etc")
    assert resolve_in_root(str(root), "/etc/file") == str(inside(root, outside) / "file")
    os.symlink("/etc/shadow", root / "shadow")
    assert resolve_in_root(str(root), "/shadow") == str(inside(root, outside) / "shadow")
    os.symlink("/x/../../../y", root / "up")
    assert resolve_in_root(str(root), "/up") == f"{root}/y"


def test_resolve_dotdot_never_climbs_above_root(root: Path) -> None:
    (root / "x" / "y").mkdir(parents=True)
    os.symlink("../../..", root / "x" / "y" / "a")
    os.symlink("../../..", root / "a")
    assert resolve_in_root(str(root), "/a/etc") == f"{root}/etc"
    assert resolve_in_root(str(root), "/x/y/a/a/etc") == f"{root}/etc"
    assert resolve_in_root(str(root), "/../../../etc") == f"{root}/etc"
    assert resolve_in_root(str(root), "/x/y/..") == f"{root}/x"


def test_resolve_follow_final(root: Path) -> None:
    (root / "usr" / "bin").mkdir(parents=True)
    os.symlink("usr/bin", root / "bin")
    assert resolve_in_root(str(root), "/bin") == f"{root}/usr/bin"
    assert resolve_in_root(str(root), "/bin", follow_final=False) == f"{root}/bin"
    assert resolve_in_root(str(root), "/bin/sh", follow_final=False) == f"{root}/usr/bin/sh"


def test_resolve_dangling_and_missing(root: Path, outside: Path) -> None:
    os.symlink("/nowhere/else", root / "dangling")
    assert resolve_in_root(str(root), "/dangling") == f"{root}/nowhere/else"
    os.symlink(str(outside), root / "etc")
    assert resolve_in_root(str(root), "/missing/../etc/file") == str(inside(root, outside) / "file")
    assert resolve_in_root(str(root), "/missing/more/x") == f"{root}/missing/more/x"


@pytest.mark.parametrize(
    "links",
    [
        {"a": "b", "b": "a"},
        {"a": "a"},
        {"a": "/a/x"},
        {"a": "./a"},
    ],
)
def test_resolve_loops(root: Path, links: dict[str, str]) -> None:
    for name, target in links.items():
        os.symlink(target, root / name)
    with pytest.raises(TreeCopyError, match="too many levels of symbolic links"):
        resolve_in_root(str(root), "/a/file")


def test_resolve_link_limit(root: Path) -> None:
    (root / "target").mkdir()
    for index in range(MAX_SYMLINKS + 1):
        os.symlink(f"l{index + 1}" if index < MAX_SYMLINKS else "target", root / f"l{index}")
    # l1 … l40 is exactly MAX_SYMLINKS links; l0 adds one too many.
    assert resolve_in_root(str(root), "/l1") == f"{root}/target"
    with pytest.raises(TreeCopyError, match="too many levels"):
        resolve_in_root(str(root), "/l0")


def test_resolve_through_file_is_error(root: Path) -> None:
    (root / "file").write_bytes(b"")
    with pytest.raises(TreeCopyError, match=r"^/file is not a directory$"):
        resolve_in_root(str(root), "/file/x")


def test_normalise_image_path() -> None:
    assert normalise_image_path("var/cache/") == "/var/cache"
    assert normalise_image_path("//a/../../b/./c") == "/b/c"
    assert normalise_image_path("") == "/"


# ----------------------------------------------------------- open_dir_in_root


def test_open_dir_creates_through_absolute_link(root: Path, outside: Path) -> None:
    before = snapshot(outside)
    os.symlink(str(outside / "sub"), root / "etc")
    old = os.umask(0o077)
    try:
        fd = open_dir_in_root(str(root), "/etc/new/dir", create=True)
    finally:
        os.umask(old)
    try:
        os.mkdir("marker", dir_fd=fd)
    finally:
        os.close(fd)
    target = inside(root, outside / "sub")
    assert (target / "new" / "dir" / "marker").is_dir()
    assert mode_of(target) == 0o755
    assert mode_of(target / "new" / "dir") == 0o755
    assert snapshot(outside) == before


def test_open_dir_errors(root: Path) -> None:
    (root / "file").write_bytes(b"")
    with pytest.raises(TreeCopyError, match=r"^/file is not a directory$"):
        open_dir_in_root(str(root), "/file", create=True)
    with pytest.raises(TreeCopyError, match="No such file"):
        open_dir_in_root(str(root), "/missing/dir")
    with pytest.raises(TreeCopyError, match="No such file"):
        open_dir_in_root(str(root), "/missing")


# --------------------------------------------------------- write_file_in_root


def test_write_file_in_root(root: Path) -> None:
    (root / "usr" / "bin").mkdir(parents=True)
    os.symlink("usr/bin", root / "bin")
    old = os.umask(0o077)
    try:
        write_file_in_root(str(root), "/bin/generic-packager", b"#! /bin/sh\n", 0o755)
    finally:
        os.umask(old)
    target = root / "usr" / "bin" / "generic-packager"
    assert target.read_bytes() == b"#! /bin/sh\n"
    assert mode_of(target) == 0o755
    write_file_in_root(str(root), "/bin/generic-packager", b"second\n", 0o700)
    assert target.read_bytes() == b"second\n"
    assert mode_of(target) == 0o700
    assert not os.path.lexists(root / "usr" / "bin" / "generic-packager~")


def test_write_file_in_root_creates_parents(root: Path) -> None:
    write_file_in_root(str(root), "/new/dir/file", b"x", 0o644)
    assert (root / "new" / "dir" / "file").read_bytes() == b"x"
    assert mode_of(root / "new") == 0o755


def test_write_file_in_root_hostile_links(root: Path, outside: Path) -> None:
    before = snapshot(outside)
    os.symlink(str(outside), root / "bin")
    (root / "sbin").mkdir()
    os.symlink(str(outside / "file"), root / "sbin" / "tool")
    os.symlink(str(outside / "sub" / "deep"), root / "sbin" / "tool~")
    write_file_in_root(str(root), "/bin/file", b"mine\n", 0o755)
    write_file_in_root(str(root), "/sbin/tool", b"mine\n", 0o755)
    assert snapshot(outside) == before
    assert (inside(root, outside) / "file").read_bytes() == b"mine\n"
    assert stat.S_ISREG(os.lstat(root / "sbin" / "tool").st_mode)
    assert (root / "sbin" / "tool").read_bytes() == b"mine\n"


def test_write_file_in_root_directory(root: Path) -> None:
    (root / "dir").mkdir()
    with pytest.raises(TreeCopyError, match=r"^error writing /dir: "):
        write_file_in_root(str(root), "/dir", b"x", 0o644)
    with pytest.raises(TreeCopyError, match=r"^/ is a directory$"):
        write_file_in_root(str(root), "/", b"x", 0o644)
    assert (root / "dir").is_dir()
