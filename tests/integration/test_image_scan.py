"""Scanning real trees into file-systems and objects."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat

import pytest
import pytest_twisted
from twisted.python.threadpool import ThreadPool

from imaginator.image.filter import Filter
from imaginator.image.model import (
    ZERO_HASH,
    DirectoryInode,
    RegularInode,
    SpecialInode,
    SymlinkInode,
)
from imaginator.image.scan import (
    CacheEntry,
    ScanError,
    _Batches,
    _FileToHash,
    hash_file,
)
from imaginator.store.local import LocalImageStore
from tests.integration.crafted_tree import (
    BIG,
    EXPECTED_PATHS,
    MTIME_NS,
    ORDER_NAMES,
    SHARED,
    TOOL,
    make_tree,
    mounted,
    scan,
)

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (owners, device nodes)")
SCAN_FILTER = Filter(("/skipme", "/var/log/.*"))


def sha512(data: bytes) -> bytes:
    return hashlib.sha512(data).digest()


def stored_objects(store: LocalImageStore) -> set[str]:
    found = set()
    for directory, _, files in os.walk(store.objects_dir):
        prefix = "".join(os.path.relpath(directory, store.objects_dir).split(os.sep))
        found.update(prefix + name for name in files)
    return found


@needs_root
@pytest_twisted.ensureDeferred
async def test_scan_of_every_inode_kind(tmp_path, threadpool, store):
    root = tmp_path / "root"
    make_tree(root)
    result = await scan(root, threadpool, store, scan_filter=SCAN_FILTER)
    fs = result.file_system
    inodes = {path: (inum, inode) for path, inum, inode in fs.walk()}
    assert set(inodes) == EXPECTED_PATHS

    for path, (inum, _) in inodes.items():
        assert inum == os.lstat(f"{root}{path}").st_ino
    assert fs.root == DirectoryInode(fs.root.entries, os.lstat(root).st_mode, 0, 0)
    assert [name for name, _ in fs.root.entries] == [
        "bin",
        "data",
        "dev",
        "link",
        "order",
        "sticky",
        "var",
    ]
    assert [name for name, _ in inodes["/order"][1].entries] == ORDER_NAMES

    seconds, nanoseconds = divmod(MTIME_NS, 10**9)
    assert inodes["/bin/tool"][1] == RegularInode(
        stat.S_IFREG | 0o4755, 0, 0, seconds, nanoseconds, len(TOOL), sha512(TOOL)
    )
    assert inodes["/bin/sgid"][1].mode == stat.S_IFREG | 0o2711
    assert inodes["/bin/sgid"][1].gid == 50
    assert inodes["/data"][1].mode == stat.S_IFDIR | 0o750
    assert (inodes["/data"][1].uid, inodes["/data"][1].gid) == (1234, 5678)
    assert inodes["/data/big"][1] == RegularInode(
        stat.S_IFREG | 0o644, 1234, 5678, seconds, nanoseconds, len(BIG), sha512(BIG)
    )
    assert inodes["/data/empty"][1] == RegularInode(
        stat.S_IFREG | 0o600, 1234, 5678, seconds, nanoseconds, 0, ZERO_HASH
    )
    hard = {inodes[f"/data/hard{n}"][0] for n in (1, 2, 3)}
    assert len(hard) == 1 and inodes["/data/dup"][0] not in hard
    assert inodes["/data/hard1"][1].hash == inodes["/data/dup"][1].hash == sha512(SHARED)
    assert inodes["/dev/null"][1] == SpecialInode(
        stat.S_IFCHR | 0o666, 0, 0, seconds, nanoseconds, os.makedev(1, 3)
    )
    assert inodes["/dev/loop0"][1] == SpecialInode(
        stat.S_IFBLK | 0o660, 0, 6, seconds, nanoseconds, os.makedev(7, 0)
    )
    assert inodes["/dev/fifo"][1] == SpecialInode(
        stat.S_IFIFO | 0o640, 0, 0, seconds, nanoseconds, 0
    )
    assert inodes["/link"][1] == SymlinkInode(1234, 5678, "data/big")
    assert inodes["/sticky"][1].mode == stat.S_IFDIR | 0o1777
    assert inodes["/var/log"][1].entries == []

    regular = [i for i in fs.inode_table.values() if isinstance(i, RegularInode)]
    assert len(fs.inode_table) == len(EXPECTED_PATHS) - 2  # two extra hard links
    assert fs.num_regular_inodes == len(regular)
    assert fs.total_data_bytes == sum(i.size for i in regular)
    assert fs.directory_count == 1 + sum(
        isinstance(i, DirectoryInode) for i in fs.inode_table.values()
    )

    contents = [TOOL, b"sgid", BIG, SHARED, b"kept"]
    contents += [name.encode("utf-8", "surrogateescape") for name in ORDER_NAMES]
    assert stored_objects(store) == {sha512(c).hex() for c in contents}
    assert result.objects_added == len(contents)
    assert result.bytes_added == sum(len(c) for c in contents)
    assert (result.objects_skipped, result.bytes_skipped) == (0, 0)
    assert result.duration > 0

    again = await scan(root, threadpool, store, scan_filter=SCAN_FILTER)
    assert again.objects_added == 0 and again.bytes_added == 0
    assert again.file_system == fs


@needs_root
@pytest_twisted.ensureDeferred
async def test_tree_cache_skips_unchanged_files_without_reading_them(tmp_path, threadpool, store):
    root = tmp_path / "root"
    make_tree(root)
    first = await scan(root, threadpool, store)
    inodes = {path: inode for path, _, inode in first.file_system.walk()}

    def entry(path: str, **changes) -> CacheEntry:
        st = os.lstat(f"{root}{path}")
        values = {"ino": st.st_ino, "ctime_ns": st.st_ctime_ns, "size": st.st_size}
        values["hash"] = inodes[path].hash
        values.update(changes)
        return CacheEntry(**values)

    bogus = sha512(b"never read")
    cache = {
        "/data/big": entry("/data/big"),
        # Same identity: the bogus hash is taken, which proves nothing was read.
        "/bin/tool": entry("/bin/tool", hash=bogus),
        # Different inode, size or ctime: read and hashed again.
        "/bin/sgid": entry("/bin/sgid", ino=1, hash=bogus),
        "/data/dup": entry("/data/dup", size=1, hash=bogus),
        "/data/.subd/keep": entry("/data/.subd/keep", ctime_ns=1, hash=bogus),
        "/data/hard1": entry("/data/hard1"),
    }
    (root / "data" / "hard2").write_bytes(b"changed through another link")
    cache["/data/hard2"] = CacheEntry(0, 0, 0, bogus)

    result = await scan(root, threadpool, store, tree_cache=cache)
    after = {path: inode for path, _, inode in result.file_system.walk()}
    assert after["/data/big"].hash == sha512(BIG)
    assert after["/bin/tool"].hash == bogus
    assert after["/bin/sgid"].hash == sha512(b"sgid")
    assert after["/data/dup"].hash == sha512(SHARED)
    assert after["/data/.subd/keep"].hash == sha512(b"kept")
    assert after["/data/hard1"].hash == sha512(b"changed through another link")
    assert after["/data/hard3"].hash == after["/data/hard1"].hash
    assert result.objects_skipped == 2
    assert result.bytes_skipped == len(BIG) + len(TOOL)
    assert result.objects_added == 1  # only the changed content is new


@pytest_twisted.ensureDeferred
async def test_many_files_hashed_in_parallel_chunks(tmp_path, threadpool, store):
    root = tmp_path / "root"
    root.mkdir()
    sizes = [n * 997 + (1 << 20 if n % 7 == 1 else 0) for n in range(60)]
    contents = {f"f{n:03d}": os.urandom(size) for n, size in enumerate(sizes)}
    for name, data in contents.items():
        (root / name).write_bytes(data)
    result = await scan(root, threadpool, store, workers=2)
    table = result.file_system.inode_table
    for name, inum in result.file_system.root.entries:
        assert table[inum].hash == (sha512(contents[name]) if contents[name] else ZERO_HASH)
    assert result.objects_added == len(contents) - 1  # f000 is empty
    assert result.bytes_added == sum(len(d) for d in contents.values())


@pytest_twisted.ensureDeferred
async def test_a_single_thread_pool_does_not_deadlock(tmp_path, store):
    root = tmp_path / "root"
    root.mkdir()
    for n in range(600):  # more than one batch
        (root / f"f{n}").write_bytes(b"%d" % n)
    pool = ThreadPool(minthreads=1, maxthreads=1, name="test-one")
    pool.start()
    try:
        result = await scan(root, pool, store, workers=3)
    finally:
        pool.stop()
    assert result.objects_added == 600
    assert result.file_system.num_regular_inodes == 600


def test_batches_are_bounded_and_every_worker_is_released():
    batches = _Batches(3, batch_bytes=100, batch_files=4)
    sizes = [60, 50, 1, 1, 1, 1, 1, 1, 200, 7]
    for n, size in enumerate(sizes):
        batches.add(_FileToHash(n, f"/f{n}", f"/x/f{n}", size))
    batches.close()
    taken = [[f.inum for f in batch] for batch in batches]
    assert taken == [[0, 1], [2, 3, 4, 5], [6, 7, 8], [9]]
    assert list(batches) == [] and list(batches) == []  # the other workers' sentinels


def test_hash_file_reads_large_files(tmp_path):
    path = tmp_path / "f"
    data = os.urandom((3 << 20) + 17)
    path.write_bytes(data)
    assert hash_file(str(path)) == (sha512(data), len(data))


class SideEffectFilter:
    """A filter that removes paths while the scan runs (as a build might)."""

    def __init__(self, root, actions):
        self.root = root
        self.actions = actions

    def match(self, path: str) -> bool:
        for victim in self.actions.pop(path, ()):
            full = f"{self.root}{victim}"
            if os.path.isdir(full):
                shutil.rmtree(full)
            else:
                os.unlink(full)
        return False


@pytest_twisted.ensureDeferred
async def test_entries_vanishing_during_the_scan_are_skipped(tmp_path, threadpool, store):
    root = tmp_path / "root"
    (root / "adir").mkdir(parents=True)
    (root / "adir" / "inner").write_bytes(b"inner")
    for name in ("afile", "bfile", "cfile", "zfile"):
        (root / name).write_bytes(name.encode())
    scan_filter = SideEffectFilter(
        root,
        {
            # Matched before /bfile is examined: /bfile is gone when lstat'ed.
            "/afile": ["/bfile"],
            # After /adir and /afile were examined: the directory vanishes
            # before it is listed and the file before it is hashed.
            "/zfile": ["/adir", "/afile"],
        },
    )
    result = await scan(root, threadpool, store, scan_filter=scan_filter)
    fs = result.file_system
    assert [name for name, _ in fs.root.entries] == ["cfile", "zfile"]
    assert len(fs.inode_table) == 2
    assert fs.num_regular_inodes == 2
    assert result.objects_added == 2


@pytest_twisted.ensureDeferred
async def test_scan_errors(tmp_path, threadpool, store):
    with pytest.raises(ScanError, match="not a directory"):
        (tmp_path / "file").write_bytes(b"x")
        await scan(tmp_path / "file", threadpool, store)
    with pytest.raises(ScanError, match="No such file"):
        await scan(tmp_path / "missing", threadpool, store)


@needs_root
@pytest_twisted.ensureDeferred
async def test_directory_hard_links_and_root_loops_are_errors(tmp_path, threadpool, store):
    root = tmp_path / "root"
    (root / "a" / "sub").mkdir(parents=True)
    (root / "b").mkdir()
    (root / "c").mkdir()
    try:
        with mounted("--bind", str(root / "a"), str(root / "b")):
            with pytest.raises(ScanError, match="/b: hard-linked directory"):
                await scan(root, threadpool, store)
        with mounted("--bind", str(root), str(root / "c")):
            with pytest.raises(ScanError, match="/c: same inode as the root directory"):
                await scan(root, threadpool, store)
    except OSError as exc:
        pytest.skip(f"cannot bind-mount here: {exc}")


@needs_root
@pytest_twisted.ensureDeferred
async def test_other_file_systems_are_skipped(tmp_path, threadpool, store):
    root = tmp_path / "root"
    (root / "mnt").mkdir(parents=True)
    (root / "kept").write_bytes(b"kept")
    try:
        with mounted("-t", "tmpfs", "tmpfs", str(root / "mnt")):
            (root / "mnt" / "other").write_bytes(b"elsewhere")
            result = await scan(root, threadpool, store)
    except OSError as exc:
        pytest.skip(f"cannot mount tmpfs here: {exc}")
    assert [name for name, _ in result.file_system.root.entries] == ["kept"]


class ReplacingFilter:
    """Swaps files for others after the walk has examined them."""

    def __init__(self, root, trigger, replace):
        self.root, self.trigger, self.replace = root, trigger, replace

    def match(self, path: str) -> bool:
        if path == self.trigger:
            for victim, make in self.replace.items():
                make(f"{self.root}{victim}")
        return False


def replace_with(make):
    """Make the new file first, so it cannot reuse the old inode number."""

    def replace(path):
        make(path + ".new")
        os.replace(path + ".new", path)

    return replace


@pytest_twisted.ensureDeferred
async def test_files_swapped_after_the_walk_are_not_followed(tmp_path, threadpool, store):
    root = tmp_path / "root"
    root.mkdir()
    secret = tmp_path / "secret"
    secret.write_bytes(b"outside the tree")
    for name in ("a", "b", "c", "z"):
        (root / name).write_bytes(b"original " + name.encode())
    scan_filter = ReplacingFilter(
        root,
        "/z",
        {
            "/a": replace_with(lambda p: os.symlink(str(secret), p)),
            "/b": replace_with(os.mkfifo),
            "/c": replace_with(lambda p: open(p, "wb").close()),
        },
    )
    result = await scan(root, threadpool, store, scan_filter=scan_filter)
    assert [name for name, _ in result.file_system.root.entries] == ["z"]
    assert sha512(b"outside the tree").hex() not in stored_objects(store)


@pytest_twisted.ensureDeferred
async def test_a_failing_worker_fails_the_scan(tmp_path, threadpool, store, monkeypatch):
    root = tmp_path / "root"
    root.mkdir()
    for n in range(1000):
        (root / f"f{n}").write_bytes(b"%d" % n)

    def broken(*_args, **_kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store, "put_hashed_bytes", broken)
    with pytest.raises(ScanError, match=r"/f[0-9]+: No space left on device"):
        await scan(root, threadpool, store)
    assert stored_objects(store) == set()


def _object_inode(store: LocalImageStore, digest: bytes) -> int:
    return os.stat(store.objects.object_path(digest.hex())).st_ino


@pytest_twisted.ensureDeferred
async def test_linked_files_become_the_objects_themselves(tmp_path, threadpool, store):
    root = tmp_path / "tree"
    root.mkdir()
    small, big, setuid = root / "small", root / "big", root / "setuid"
    small.write_bytes(b"a small file\n")
    big.write_bytes(os.urandom(3 << 20))  # read and hashed in blocks
    setuid.write_bytes(b"#!/bin/sh\necho I run as root\n")
    setuid.chmod(0o4755)
    result = await scan(root, threadpool, store, link_files=True)
    files = {path: inode for path, _inum, inode in result.file_system.walk()}
    assert result.objects_added == 3
    # The two plain files are their objects (one inode, two names)...
    for path in (small, big):
        assert _object_inode(store, files[f"/{path.name}"].hash) == path.stat().st_ino
        assert path.stat().st_nlink == 2
    # ...a set-id program is copied: it gets no second name in the store.
    assert _object_inode(store, files["/setuid"].hash) != setuid.stat().st_ino
    assert setuid.stat().st_nlink == 1
    # The contents are right, and durable once flushed.
    assert store.read_object(files["/big"].hash.hex()) == big.read_bytes()
    store.objects.flush()

    # Without link_files (any tree a build may still write to) contents are copied.
    other = tmp_path / "other"
    other.mkdir()
    (other / "plain").write_bytes(b"copied, not linked\n")
    copied = await scan(other, threadpool, store)
    (inode,) = [i for _p, _n, i in copied.file_system.walk() if isinstance(i, RegularInode)]
    assert _object_inode(store, inode.hash) != (other / "plain").stat().st_ino


@needs_root
@pytest_twisted.ensureDeferred
async def test_linking_across_file_systems_falls_back_to_copying(tmp_path, threadpool):
    other_fs = tmp_path / "mnt"
    other_fs.mkdir()
    with mounted("-t", "tmpfs", "tmpfs", str(other_fs)):
        store = LocalImageStore(str(other_fs / "store"))
        root = tmp_path / "tree"
        root.mkdir()
        (root / "file").write_bytes(b"on another file-system than the store\n")
        result = await scan(root, threadpool, store, link_files=True)
        (inode,) = [i for _p, _n, i in result.file_system.walk() if isinstance(i, RegularInode)]
        assert store.read_object(inode.hash.hex()) == (root / "file").read_bytes()
    assert result.objects_added == 1
    assert (root / "file").stat().st_nlink == 1
