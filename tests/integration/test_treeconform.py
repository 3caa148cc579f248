"""A build's own tree, conformed to its image, is what unpacking the image gives."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import stat
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.threads import deferToThreadPool

from imaginator.image.filter import Filter
from imaginator.image.model import Image
from imaginator.image.unpack import materialise
from imaginator.pipeline.treeconform import TreeMismatch, conform_tree
from tests.integration.crafted_tree import make_tree, scan

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (owners, device nodes)")
SCAN_FILTER = Filter(("/skipme", "/var/log/.*"))


def snapshot(root: Path) -> dict[str, tuple]:
    """Everything a build on the tree could see, by path (inode numbers as link groups)."""
    entries: dict[str, tuple] = {}
    groups: dict[int, list[str]] = {}
    for base, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            path = os.path.join(base, name)
            relative = "/" + os.path.relpath(path, root)
            st = os.lstat(path)
            groups.setdefault(st.st_ino, []).append(relative)
            kind = stat.S_IFMT(st.st_mode)
            fields: tuple = (kind, st.st_mode, st.st_uid, st.st_gid)
            if stat.S_ISREG(kind):
                with open(path, "rb") as handle:
                    digest = hashlib.sha256(handle.read()).hexdigest()
                fields += (st.st_size, st.st_mtime_ns, digest)
            elif stat.S_ISLNK(kind):
                fields += (os.readlink(path),)
            elif not stat.S_ISDIR(kind):
                fields += (st.st_rdev, st.st_mtime_ns)
            if not stat.S_ISLNK(kind):
                fields += (tuple(sorted(os.listxattr(path, follow_symlinks=False))),)
            entries[relative] = (fields, st.st_ino)
    return {path: (fields, tuple(sorted(groups[ino]))) for path, (fields, ino) in entries.items()}


async def _conform(image: Image, root: Path, threadpool):
    return await deferToThreadPool(reactor, threadpool, conform_tree, image, str(root))


@needs_root
@pytest_twisted.ensureDeferred
async def test_a_conformed_tree_is_the_unpacked_image(tmp_path, threadpool, store):
    tree = tmp_path / "tree"
    make_tree(tree)
    os.setxattr(tree / "data" / "big", "user.note", b"not in any image")
    fs = (await scan(tree, threadpool, store, scan_filter=SCAN_FILTER)).file_system
    # The stream's previous image had /bin/tool already: its older mtime was carried over.
    paths = {path: inum for path, inum, _inode in fs.walk()}
    tool = fs.inode_table[paths["/bin/tool"]]
    fs.inode_table[paths["/bin/tool"]] = dataclasses.replace(
        tool, mtime_seconds=tool.mtime_seconds - 86400
    )
    image = Image(file_system=fs)

    cache = await _conform(image, tree, threadpool)
    unpacked = tmp_path / "unpacked"
    await deferToThreadPool(reactor, threadpool, materialise, image, store, str(unpacked))

    assert snapshot(tree) == snapshot(unpacked)
    assert not (tree / "skipme").exists() and not (tree / ".subd").exists()
    assert not (tree / "dev" / "sock").exists() and not (tree / "var" / "log" / "junk").exists()
    assert os.listxattr(tree / "data" / "big") == []
    # The tree cache describes the files as they are now (after the new mtimes).
    assert set(cache) == {
        p for p, i in paths.items() if type(fs.inode_table[i]).__name__ == "RegularInode"
    }
    for path, entry in cache.items():
        st = os.lstat(f"{tree}{path}")
        assert (st.st_ino, st.st_ctime_ns, st.st_size) == (entry.ino, entry.ctime_ns, entry.size)


@needs_root
@pytest_twisted.ensureDeferred
async def test_a_tree_that_changed_after_the_scan_is_refused(tmp_path, threadpool, store):
    tree = tmp_path / "tree"
    make_tree(tree)
    image = Image(file_system=(await scan(tree, threadpool, store)).file_system)
    os.unlink(tree / "link")
    (tree / "link").mkdir()
    with pytest.raises(TreeMismatch, match="/link: not the kind of file the image has"):
        await _conform(image, tree, threadpool)
