"""Tests for imaginator.image.compare: when may a rebuild be dropped for the latest image?"""

from __future__ import annotations

import dataclasses

from imaginator.image.compare import same_build, same_content
from imaginator.image.model import DirectoryInode, FileSystem, Image, RegularInode


def image(**fields) -> Image:
    file = RegularInode(
        mode=0o100644, uid=0, gid=0, mtime_seconds=1, mtime_nanoseconds=0, size=3, hash=b"\x01" * 64
    )
    fs = FileSystem(inode_table={2: file}, root=DirectoryInode(entries=[("motd", 2)]))
    base = {
        "file_system": fs,
        "build_commit_id": "a" * 40,
        "build_branch": "main",
        "source_image": "bootstrap/x/2026-12-03:10:00:00",
    }
    return Image(**{**base, **fields})


def test_the_same_build_is_identical():
    assert same_build(image(), image())


def test_a_new_commit_with_the_same_content_is_a_new_build():
    new = image(build_commit_id="b" * 40)
    assert same_content(new, image())
    assert not same_build(new, image())


def test_a_new_branch_or_source_image_is_a_new_build():
    assert not same_build(image(build_branch="release"), image())
    assert not same_build(image(source_image="bootstrap/x/2026-12-03:11:00:00"), image())


def test_changed_content_is_a_new_build():
    changed = image()
    inode = changed.file_system.inode_table[2]
    changed.file_system.inode_table[2] = dataclasses.replace(inode, hash=b"\x02" * 64)
    assert not same_content(changed, image())
    assert not same_build(changed, image())
