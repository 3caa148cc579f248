"""Tree copies into an image root on real files, including hostile image trees.

Every hostile case plants symlinks in the image that point at a directory
outside the root (``outside``) and checks that nothing there changed and that
the work landed inside the root, where a chroot would have put it.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest

from imaginator.runtime.treecopy import (
    TreeCopyError,
    append_tree,
    copy_tree,
    make_bind_mount_points,
    remove_bind_mount_points,
    remove_staged_scripts,
    stage_scripts,
)
from tests.support.imageroot import Log, inside, make_outside, mode_of, new_dir, snapshot

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (file owners)")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return new_dir(tmp_path, "root")


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    return make_outside(tmp_path)


@pytest.fixture
def src(tmp_path: Path) -> Path:
    return new_dir(tmp_path, "src")


@pytest.fixture
def log() -> Log:
    return Log()


# ------------------------------------------------------------------ copy_tree


def test_copy_tree_basic(root: Path, src: Path, log: Log) -> None:
    (src / "etc" / "deep").mkdir(parents=True)
    (src / "etc" / "motd").write_bytes(b"hello\n")
    os.chmod(src / "etc" / "motd", 0o640)
    (src / "etc" / "deep" / "tool").write_bytes(b"#!/bin/sh\n")
    os.chmod(src / "etc" / "deep" / "tool", 0o4755 | 0o1000)
    os.chmod(src / "etc", 0o700)
    os.symlink("motd", src / "etc" / "motd.link")
    (root / "etc").mkdir()
    os.chmod(root / "etc", 0o750)
    copy_tree(str(src), str(root), label="files", log=log)
    assert (root / "etc" / "motd").read_bytes() == b"hello\n"
    assert mode_of(root / "etc" / "motd") == 0o640
    assert mode_of(root / "etc" / "deep" / "tool") == 0o755  # setuid and sticky dropped
    assert mode_of(root / "etc") == 0o750  # existing directory keeps its mode
    assert mode_of(root / "etc" / "deep") == 0o755
    assert os.readlink(root / "etc" / "motd.link") == "motd"
    assert not list(root.rglob("*~"))
    assert len(log.lines) == 1
    assert re.fullmatch(r"Copied files tree in \S+", log.lines[0])


def test_copy_tree_creates_directories_0755_whatever_the_umask(
    root: Path, src: Path, log: Log
) -> None:
    (src / "a" / "b").mkdir(parents=True)
    old = os.umask(0o077)
    try:
        copy_tree(str(src), str(root), label="files", log=log)
    finally:
        os.umask(old)
    assert mode_of(root / "a") == 0o755
    assert mode_of(root / "a" / "b") == 0o755


def test_copy_tree_same_contents_skipped(root: Path, src: Path, log: Log) -> None:
    (src / "etc").mkdir()
    (src / "etc" / "same").write_bytes(b"same\n")
    (src / "etc" / "other").write_bytes(b"new\n")
    (src / "etc" / "empty").write_bytes(b"")
    os.chmod(src / "etc" / "same", 0o755)
    os.chmod(src / "etc" / "other", 0o755)
    (root / "etc").mkdir()
    (root / "etc" / "same").write_bytes(b"same\n")
    (root / "etc" / "other").write_bytes(b"old\n")
    (root / "etc" / "empty").write_bytes(b"")
    for name in ("same", "other"):
        os.chmod(root / "etc" / name, 0o600)
    same_inode = os.lstat(root / "etc" / "same").st_ino
    copy_tree(str(src), str(root), label="files", log=log)
    assert log.lines[:2] == [
        "Same contents for: files/etc/empty",
        "Same contents for: files/etc/same",
    ]
    assert os.lstat(root / "etc" / "same").st_ino == same_inode
    assert mode_of(root / "etc" / "same") == 0o600  # mode NOT updated
    assert (root / "etc" / "other").read_bytes() == b"new\n"
    assert mode_of(root / "etc" / "other") == 0o755


def test_copy_tree_large_file_differing_at_the_end(root: Path, src: Path, log: Log) -> None:
    data = bytes(range(256)) * 20000
    (src / "big").write_bytes(data)
    (root / "big").write_bytes(data[:-1] + b"X")
    copy_tree(str(src), str(root), label="files", log=log)
    assert (root / "big").read_bytes() == data
    assert not any(line.startswith("Same contents") for line in log.lines)


@needs_root
def test_copy_tree_owner_is_root(root: Path, src: Path, log: Log) -> None:
    (src / "file").write_bytes(b"x")
    os.symlink("file", src / "link")
    os.chown(src / "file", 1234, 5678)
    os.chown(src / "link", 1234, 5678, follow_symlinks=False)
    copy_tree(str(src), str(root), label="files", log=log)
    for name in ("file", "link"):
        st = os.lstat(root / name)
        assert (st.st_uid, st.st_gid) == (0, 0)


def test_copy_tree_missing_source_is_noop(root: Path, tmp_path: Path, log: Log) -> None:
    copy_tree(str(tmp_path / "nope"), str(root), label="files", log=log)
    assert log.lines == []
    assert list(root.iterdir()) == []


def test_copy_tree_into_dest(root: Path, src: Path, log: Log) -> None:
    (src / "run-test").write_bytes(b"#!/bin/sh\n")
    copy_tree(str(src), str(root), label="tests", log=log, dest="/tests/base/debian")
    assert (root / "tests" / "base" / "debian" / "run-test").read_bytes() == b"#!/bin/sh\n"
    assert mode_of(root / "tests" / "base") == 0o755
    assert log.lines[-1].startswith("Copied tests tree in ")


def test_copy_tree_image_dir_link_to_outside(
    root: Path, src: Path, outside: Path, log: Log
) -> None:
    before = snapshot(outside)
    (src / "etc" / "sub").mkdir(parents=True)
    (src / "etc" / "file").write_bytes(b"from manifest\n")
    (src / "etc" / "sub" / "deep").write_bytes(b"from manifest\n")
    os.symlink(str(outside), root / "etc")
    copy_tree(str(src), str(root), label="files", log=log)
    assert snapshot(outside) == before
    landed = inside(root, outside)
    assert (landed / "file").read_bytes() == b"from manifest\n"
    assert (landed / "sub" / "deep").read_bytes() == b"from manifest\n"
    assert os.readlink(root / "etc") == str(outside)


def test_copy_tree_replaces_final_link_to_outside(
    root: Path, src: Path, outside: Path, log: Log
) -> None:
    before = snapshot(outside)
    (src / "etc").mkdir()
    (src / "etc" / "motd").write_bytes(b"host secret\n")  # same contents as the target
    (src / "etc" / "issue").write_bytes(b"issue\n")
    (root / "etc").mkdir()
    os.symlink(str(outside / "file"), root / "etc" / "motd")
    os.symlink(str(outside / "file"), root / "etc" / "issue")
    os.symlink(str(outside / "file"), root / "etc" / "issue~")  # temp-name trap
    copy_tree(str(src), str(root), label="files", log=log)
    assert snapshot(outside) == before
    for name, data in (("motd", b"host secret\n"), ("issue", b"issue\n")):
        assert stat.S_ISREG(os.lstat(root / "etc" / name).st_mode)
        assert (root / "etc" / name).read_bytes() == data
    assert not os.path.lexists(root / "etc" / "issue~")
    assert not any(line.startswith("Same contents") for line in log.lines)


def test_copy_tree_dotdot_link(root: Path, src: Path, log: Log) -> None:
    (root / "x").mkdir()
    os.symlink("../../..", root / "x" / "a")
    (src / "x" / "a").mkdir(parents=True)
    (src / "x" / "a" / "escaped").write_bytes(b"no\n")
    copy_tree(str(src), str(root), label="files", log=log)
    assert (root / "escaped").read_bytes() == b"no\n"
    assert not (root.parent / "escaped").exists()


def test_copy_tree_image_loop(root: Path, src: Path, log: Log) -> None:
    os.symlink("etc", root / "etc")
    (src / "etc").mkdir()
    (src / "etc" / "file").write_bytes(b"x")
    with pytest.raises(TreeCopyError, match="too many levels of symbolic links"):
        copy_tree(str(src), str(root), label="files", log=log)


def test_copy_tree_source_link_to_outside_copied_as_link(
    root: Path, src: Path, outside: Path, log: Log
) -> None:
    os.symlink(str(outside / "file"), src / "leak")
    os.symlink(str(outside), src / "leakdir")
    copy_tree(str(src), str(root), label="files", log=log)
    assert os.readlink(root / "leak") == str(outside / "file")
    assert os.readlink(root / "leakdir") == str(outside)
    assert sorted(os.listdir(root)) == ["leak", "leakdir"]


def test_copy_tree_symlink_same_target_kept(root: Path, src: Path, log: Log) -> None:
    os.symlink("target", src / "same")
    os.symlink("new", src / "changed")
    os.symlink("target", root / "same")
    os.symlink("old", root / "changed")
    inode = os.lstat(root / "same").st_ino
    copy_tree(str(src), str(root), label="files", log=log)
    assert os.lstat(root / "same").st_ino == inode
    assert os.readlink(root / "changed") == "new"


def test_copy_tree_symlink_replaces_file(root: Path, src: Path, log: Log) -> None:
    os.symlink("elsewhere", src / "thing")
    (root / "thing").write_bytes(b"file")
    copy_tree(str(src), str(root), label="files", log=log)
    assert os.readlink(root / "thing") == "elsewhere"


def test_copy_tree_file_where_directory_expected(root: Path, src: Path, log: Log) -> None:
    (src / "etc").mkdir()
    (src / "etc" / "x").write_bytes(b"x")
    (root / "etc").write_bytes(b"I am a file")
    with pytest.raises(TreeCopyError, match="/etc is not a directory"):
        copy_tree(str(src), str(root), label="files", log=log)


def test_copy_tree_directory_in_the_way_of_file(root: Path, src: Path, log: Log) -> None:
    (src / "etc").write_bytes(b"x")
    (root / "etc" / "inner").mkdir(parents=True)
    with pytest.raises(TreeCopyError, match=r"^error copying files/etc: "):
        copy_tree(str(src), str(root), label="files", log=log)
    assert (root / "etc" / "inner").is_dir()
    assert not os.path.lexists(root / "etc~")


def test_copy_tree_unsupported_type(root: Path, src: Path, log: Log) -> None:
    (src / "dir").mkdir()
    os.mkfifo(src / "dir" / "fifo")
    with pytest.raises(TreeCopyError, match=r"^unsupported file type: files/dir/fifo$"):
        copy_tree(str(src), str(root), label="files", log=log)


def test_copy_tree_image_fifo_not_opened(root: Path, src: Path, log: Log) -> None:
    (src / "pipe").write_bytes(b"data")
    os.mkfifo(root / "pipe")
    copy_tree(str(src), str(root), label="files", log=log)  # would hang if opened
    assert (root / "pipe").read_bytes() == b"data"


def test_copy_tree_names_with_newlines(root: Path, src: Path, log: Log) -> None:
    name = "evil\nCopied files tree in 0s"
    (src / "dir\nx").mkdir()
    (src / "dir\nx" / name).write_bytes(b"odd\n")
    (root / "dir\nx").mkdir()
    (root / "dir\nx" / name).write_bytes(b"odd\n")
    (src / "new\nname").write_bytes(b"new\n")
    copy_tree(str(src), str(root), label="files", log=log)
    assert (root / "new\nname").read_bytes() == b"new\n"
    assert log.lines[0] == "Same contents for: files/dir\\nx/evil\\nCopied files tree in 0s"
    assert all("\n" not in line for line in log.lines)


def test_copy_tree_source_top_must_be_directory(root: Path, tmp_path: Path, log: Log) -> None:
    (tmp_path / "files").write_bytes(b"")
    with pytest.raises(TreeCopyError, match="files: not a directory"):
        copy_tree(str(tmp_path / "files"), str(root), label="files", log=log)


# ---------------------------------------------------------------- append_tree


def test_append_tree(root: Path, src: Path, log: Log) -> None:
    (src / "etc" / "new").mkdir(parents=True)
    (src / "etc" / "hosts").write_bytes(b"10.0.0.1 x\n")
    (src / "etc" / "new" / "file").write_bytes(b"created\n")
    os.chmod(src / "etc" / "new" / "file", 0o4640)
    (root / "etc").mkdir()
    (root / "etc" / "hosts").write_bytes(b"127.0.0.1 localhost\n")
    os.chmod(root / "etc" / "hosts", 0o600)
    old = os.umask(0o077)
    try:
        append_tree(str(src), str(root), label="files.append", log=log)
    finally:
        os.umask(old)
    assert (root / "etc" / "hosts").read_bytes() == b"127.0.0.1 localhost\n10.0.0.1 x\n"
    assert mode_of(root / "etc" / "hosts") == 0o600
    assert (root / "etc" / "new" / "file").read_bytes() == b"created\n"
    assert mode_of(root / "etc" / "new" / "file") == 0o640
    assert mode_of(root / "etc" / "new") == 0o755
    assert log.lines == []


def test_append_tree_missing(root: Path, tmp_path: Path, log: Log) -> None:
    append_tree(str(tmp_path / "nope"), str(root), label="files.append", log=log)
    assert log.lines == ["No files.append directory"]


def test_append_tree_source_symlink_is_error(
    root: Path, src: Path, outside: Path, log: Log
) -> None:
    os.symlink(str(outside / "file"), src / "leak")
    with pytest.raises(TreeCopyError, match=r"^symlinks are not supported: files.append/leak$"):
        append_tree(str(src), str(root), label="files.append", log=log)
    assert not os.path.lexists(root / "leak")


def test_append_tree_unsupported_type(root: Path, src: Path, log: Log) -> None:
    os.mkfifo(src / "fifo")
    with pytest.raises(TreeCopyError, match=r"^unsupported file type: files.append/fifo$"):
        append_tree(str(src), str(root), label="files.append", log=log)


def test_append_tree_through_image_links(root: Path, src: Path, outside: Path, log: Log) -> None:
    before = snapshot(outside)
    (src / "etc").mkdir()
    (src / "etc" / "motd").write_bytes(b"appended\n")
    (src / "conf").mkdir()
    (src / "conf" / "file").write_bytes(b"appended\n")
    (root / "etc").mkdir()
    os.symlink(str(outside / "file"), root / "etc" / "motd")
    os.symlink(str(outside), root / "conf")
    append_tree(str(src), str(root), label="files.append", log=log)
    assert snapshot(outside) == before
    assert (inside(root, outside) / "file").read_bytes() == b"appended\nappended\n"
    assert os.readlink(root / "etc" / "motd") == str(outside / "file")


def test_append_tree_to_image_fifo_is_error(root: Path, src: Path, log: Log) -> None:
    (src / "pipe").write_bytes(b"data")
    os.mkfifo(root / "pipe")
    with pytest.raises(TreeCopyError, match=r"^/pipe is not a regular file$"):
        append_tree(str(src), str(root), label="files.append", log=log)


# -------------------------------------------------------------- mount points


def test_make_and_remove_bind_mount_points(root: Path, log: Log) -> None:
    (root / "var").mkdir()
    created = make_bind_mount_points(str(root), ["/var/cache/build/", "data", "/var"], log)
    assert created == ["/var/cache", "/var/cache/build", "/data"]
    assert log.lines == [
        "Making intermediate directory for bind mount: /var/cache",
        "Making bind mount point: /var/cache/build",
        "Making bind mount point: /data",
    ]
    assert all(mode_of(root / path.lstrip("/")) == 0o755 for path in created)
    remove_bind_mount_points(str(root), created)
    assert sorted(os.listdir(root)) == ["var"]
    assert os.listdir(root / "var") == []
    remove_bind_mount_points(str(root), created)  # already gone: fine


def test_bind_mount_point_not_a_directory(root: Path, log: Log) -> None:
    (root / "etc").mkdir()
    (root / "etc" / "passwd").write_bytes(b"")
    with pytest.raises(TreeCopyError, match="/etc/passwd is not a directory"):
        make_bind_mount_points(str(root), ["/etc/passwd"], log)
    with pytest.raises(TreeCopyError, match="/etc/passwd is not a directory"):
        make_bind_mount_points(str(root), ["/new/one", "/etc/passwd/x"], log)
    assert sorted(os.listdir(root)) == ["etc"]  # /new and /new/one removed again


def test_bind_mount_point_through_link(root: Path, outside: Path, log: Log) -> None:
    before = snapshot(outside)
    os.symlink(str(outside), root / "mnt")
    created = make_bind_mount_points(str(root), ["/mnt/cache"], log)
    landed = "/" + str(outside).lstrip("/") + "/cache"
    assert created[-1] == landed
    assert log.lines[-1] == f"Making bind mount point: {landed}"
    assert (root / landed.lstrip("/")).is_dir()
    assert snapshot(outside) == before
    remove_bind_mount_points(str(root), created)
    assert os.listdir(root) == ["mnt"]
    assert snapshot(outside) == before


def test_remove_bind_mount_points_not_empty(root: Path, log: Log) -> None:
    created = make_bind_mount_points(str(root), ["/a/full", "/b"], log)
    (root / "a" / "full" / "junk").write_bytes(b"")
    with pytest.raises(TreeCopyError, match=r"^error removing /a/full: "):
        remove_bind_mount_points(str(root), created)
    assert not (root / "b").exists()  # the others were still removed


def test_remove_bind_mount_point_replaced_by_link(root: Path, outside: Path, log: Log) -> None:
    before = snapshot(outside)
    created = make_bind_mount_points(str(root), ["/a/b"], log)
    os.rmdir(root / "a" / "b")
    os.symlink(str(outside / "sub"), root / "a" / "b")
    with pytest.raises(TreeCopyError, match=r"^error removing /a/b: "):
        remove_bind_mount_points(str(root), created)
    assert snapshot(outside) == before


# ------------------------------------------------------------------- scripts


def test_stage_and_remove_scripts(root: Path, src: Path) -> None:
    (src / "10-first").write_bytes(b"#!/bin/sh\necho 1\n")
    (src / "9 second\nline").write_bytes(b"#!/bin/sh\necho 2\n")
    os.chmod(src / "10-first", 0o600)
    staged = stage_scripts(str(src), str(root), ["10-first", "9 second\nline"])
    assert staged == "/.scripts"
    assert mode_of(root / ".scripts") == 0o755
    assert (root / ".scripts" / "10-first").read_bytes() == b"#!/bin/sh\necho 1\n"
    assert mode_of(root / ".scripts" / "10-first") == 0o755
    assert mode_of(root / ".scripts" / "9 second\nline") == 0o755
    with pytest.raises(TreeCopyError, match=r"^/\.scripts already exists$"):
        stage_scripts(str(src), str(root), ["10-first"])
    remove_staged_scripts(str(root))
    assert not os.path.lexists(root / ".scripts")
    remove_staged_scripts(str(root))


def test_stage_scripts_link_at_root_refused(root: Path, src: Path, outside: Path) -> None:
    before = snapshot(outside)
    (src / "s").write_bytes(b"#!/bin/sh\n")
    os.symlink(str(outside), root / ".scripts")
    with pytest.raises(TreeCopyError, match="already exists"):
        stage_scripts(str(src), str(root), ["s"])
    assert snapshot(outside) == before


def test_stage_scripts_symlinked_script_refused(root: Path, src: Path, outside: Path) -> None:
    (src / "ok").write_bytes(b"#!/bin/sh\n")
    os.symlink(str(outside / "file"), src / "leak")
    with pytest.raises(TreeCopyError, match="script leak: symlinks are not supported"):
        stage_scripts(str(src), str(root), ["ok", "leak"])
    assert not os.path.lexists(root / ".scripts")


@pytest.mark.parametrize("name", ["../escape", "..", "a/b", ""])
def test_stage_scripts_bad_names(root: Path, src: Path, name: str) -> None:
    with pytest.raises(TreeCopyError, match="invalid script name"):
        stage_scripts(str(src), str(root), [name])
    assert not os.path.lexists(root / ".scripts")


def test_remove_staged_scripts_with_hostile_contents(root: Path, src: Path, outside: Path) -> None:
    before = snapshot(outside)
    stage_scripts(str(src), str(root), [])
    scripts = root / ".scripts"
    os.symlink(str(outside), scripts / "link")
    (scripts / "d" / "e").mkdir(parents=True)
    os.symlink("../../..", scripts / "d" / "e" / "up")
    (scripts / "d" / "file").write_bytes(b"")
    remove_staged_scripts(str(root))
    assert not os.path.lexists(scripts)
    assert snapshot(outside) == before


def test_remove_staged_scripts_when_link(root: Path, outside: Path) -> None:
    before = snapshot(outside)
    os.symlink(str(outside), root / ".scripts")
    remove_staged_scripts(str(root))
    assert not os.path.lexists(root / ".scripts")
    assert snapshot(outside) == before
