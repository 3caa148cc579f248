"""Scanning a root tree into a ``FileSystem`` and storing its new objects.

The rules are the Go scanner's (imaginator-behaviour.md §5.5 step 3,
srpc-rpc-image-model.md §4.2): entries sorted bytewise, ``.subd`` skipped at
the top, paths the scan filter matches skipped with their subtree, sockets
and entries on other devices skipped, entries that vanish during the scan
skipped, hard links sharing one inode, directory hard links an error.

The walk (``lstat`` of every entry) runs in one pool thread and hands the
regular files, in batches bounded by bytes, to ``workers`` pool threads that
hash them in parallel (``hashlib`` and the system calls release the GIL).
Each file is read once: a small one in a single ``read`` whose bytes go to
the store directly if the store lacks them, a big one in 1 MiB blocks, and
then copied in again from the page cache (the copy is hashed too). Files are
opened without following symlinks and checked to be the inode the walk saw,
so a tree changed during the scan cannot smuggle other files in. A tree cache
from unpacking the source image lets files that were not touched since then
keep their hash without being read at all.

On trees of many small files the per-file Python work (under the GIL) rather
than hashing limits the speed-up of the second worker.
"""

from __future__ import annotations

import errno
import hashlib
import os
import queue
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from twisted.internet.defer import DeferredList
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from imaginator.image.model import (
    ZERO_HASH,
    DirectoryInode,
    FileSystem,
    Inode,
    RegularInode,
    SpecialInode,
    SymlinkInode,
)


class ObjectSink(Protocol):
    """Where the scanner puts file contents it has not seen: the local object
    store (``imaginator.store.local.LocalImageStore``) or a cache in front of a
    remote one. Called from pool threads."""

    def has_object(self, hash_hex: str) -> bool: ...

    def put_hashed_bytes(self, data: bytes, hash_hex: str, *, sync: bool = True) -> bool: ...

    def put_object_fd(self, fd: int, *, sync: bool = True) -> tuple[str, int, bool]: ...


@runtime_checkable
class LinkingSink(ObjectSink, Protocol):
    """A sink that can take a file by linking its inode in (``link_files``)."""

    def link_object_fd(self, fd: int, hash_hex: str) -> bool: ...


BLOCK_SIZE = 1 << 20
# O_NOFOLLOW and O_NONBLOCK: a file swapped for a symlink or a FIFO after the
# walk saw it must not be followed or block the scan (fstat catches the rest).
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_NS_PER_SECOND = 10**9
# Files with these mode bits are copied, never linked into the store: a
# set-id program must not gain a second name that outlives its image.
_NO_LINK_BITS = stat.S_ISUID | stat.S_ISGID
# Why a link can fail where a copy works: another file-system, a store that
# refuses links (protected_hardlinks), too many links, no /proc.
_CANNOT_LINK = (errno.EXDEV, errno.EPERM, errno.EACCES, errno.EMLINK, errno.ENOENT)


class ScanError(Exception):
    """The tree cannot be represented as an image (or could not be read)."""


class PathFilter(Protocol):
    """Anything that says whether a path is excluded (e.g. ``Filter``)."""

    def match(self, path: str) -> bool: ...


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """What is known about a regular file written from an image: its inode
    number, ctime (ns), size and content hash."""

    ino: int
    ctime_ns: int
    size: int
    hash: bytes


TreeCache = dict[str, CacheEntry]


@dataclass(frozen=True, slots=True)
class ScanResult:
    """The scanned file-system and what storing its objects cost."""

    file_system: FileSystem
    objects_added: int
    bytes_added: int
    objects_skipped: int
    bytes_skipped: int
    duration: float


@dataclass(slots=True)
class _FileToHash:
    inum: int
    path: str  # image path, for messages
    os_path: str
    size: int


@dataclass(slots=True)
class _Walk:
    file_system: FileSystem
    objects_skipped: int = 0
    bytes_skipped: int = 0


@dataclass(slots=True)
class _ChunkResult:
    hashes: list[tuple[int, bytes, int]] = field(default_factory=list)
    vanished: list[int] = field(default_factory=list)
    objects_added: int = 0
    bytes_added: int = 0


class _Batches:
    """The work queue from the walker to the hashing workers.

    The walker hands over files in batches of at most ``batch_bytes`` (or
    ``batch_files``) as it finds them, so hashing starts at once; each worker
    takes the next batch when it is done with its last, which keeps the
    workers' shares of bytes equal. After a failure anywhere, ``abort`` makes
    everyone stop early.
    """

    def __init__(
        self,
        workers: int,
        batch_bytes: int = 8 << 20,
        batch_files: int = 256,
        *,
        link: bool = False,
    ) -> None:
        self.workers = workers
        self.link = link
        self.batch_bytes = batch_bytes
        self.batch_files = batch_files
        self.abort = threading.Event()
        self.dev = 0
        self._queue: queue.SimpleQueue[list[_FileToHash] | None] = queue.SimpleQueue()
        self._batch: list[_FileToHash] = []
        self._bytes = 0

    def add(self, item: _FileToHash) -> None:
        """Queue a file (walker side)."""
        self._batch.append(item)
        self._bytes += item.size
        if self._bytes >= self.batch_bytes or len(self._batch) >= self.batch_files:
            self._flush()

    def close(self) -> None:
        """No more files (walker side): wake every worker up."""
        self._flush()
        for _ in range(self.workers):
            self._queue.put(None)

    def __iter__(self) -> Iterator[list[_FileToHash]]:
        """The batches for one worker, until the walker is done."""
        while (batch := self._queue.get()) is not None:
            if not self.abort.is_set():
                yield batch

    def _flush(self) -> None:
        if self._batch:
            self._queue.put(self._batch)
            self._batch, self._bytes = [], 0


async def scan_tree(
    root: str,
    *,
    reactor: IReactorFromThreads,
    threadpool: ThreadPool,
    store: ObjectSink,
    scan_filter: PathFilter | None = None,
    tree_cache: TreeCache | None = None,
    workers: int = 2,
    link_files: bool = False,
) -> ScanResult:
    """Scan the tree at ``root`` into a ``FileSystem``, storing every object
    the store does not have yet (without fsync: ``store.add_image`` makes
    them durable). Raises ``ScanError``.

    With ``link_files`` (a tree the daemon owns and that nothing writes to
    again, like a finished bootstrap tree) new contents are linked into the
    store (``store.link_object_fd``) instead of copied, where the store is on
    the same file-system; set-id files are always copied.

    One thread walks the tree while ``workers`` threads hash and store the
    files it finds. The walk is submitted first, so a pool with fewer
    threads than ``workers + 1`` cannot deadlock (the queue is unbounded).
    """
    started = time.monotonic()
    batches = _Batches(max(1, workers), link=link_files)
    walk_deferred = deferToThreadPool(
        reactor, threadpool, _walk_feeding, root, scan_filter, tree_cache, batches
    )
    hash_deferreds = [
        deferToThreadPool(reactor, threadpool, _hash_batches, batches, store)
        for _ in range(batches.workers)
    ]
    walk, *results = await _all_or_first_error([walk_deferred, *hash_deferreds])
    added, bytes_added = _apply_hashes(walk.file_system, results)
    return ScanResult(
        file_system=walk.file_system,
        objects_added=added,
        bytes_added=bytes_added,
        objects_skipped=walk.objects_skipped,
        bytes_skipped=walk.bytes_skipped,
        duration=time.monotonic() - started,
    )


async def _all_or_first_error(deferreds: list[Any]) -> list[Any]:
    """Wait for every Deferred (so no thread outlives the scan), then raise
    the first failure, if any."""
    outcomes = await DeferredList(deferreds, consumeErrors=True)
    for ok, value in outcomes:
        if not ok:
            value.raiseException()
    return [value for _, value in outcomes]


def _walk_feeding(
    root: str,
    scan_filter: PathFilter | None,
    tree_cache: TreeCache | None,
    batches: _Batches,
) -> _Walk:
    try:
        walker = _Walker(root, scan_filter, tree_cache or {}, batches.add, batches.abort.is_set)
        batches.dev = walker.dev
        return walker.run()
    except BaseException:
        batches.abort.set()
        raise
    finally:
        batches.close()


def _apply_hashes(fs: FileSystem, results: list[_ChunkResult]) -> tuple[int, int]:
    vanished: set[int] = set()
    for result in results:
        for inum, digest, size in result.hashes:
            inode = fs.inode_table[inum]
            assert isinstance(inode, RegularInode)
            inode.hash = digest
            inode.size = size
        vanished.update(result.vanished)
    if vanished:
        _remove_inodes(fs, vanished)
    fs.recompute_totals()
    return sum(r.objects_added for r in results), sum(r.bytes_added for r in results)


def _remove_inodes(fs: FileSystem, inums: set[int]) -> None:
    for inum in inums:
        fs.inode_table.pop(inum, None)
    directories = [fs.root] + [i for i in fs.inode_table.values() if isinstance(i, DirectoryInode)]
    for directory in directories:
        directory.entries = [(n, i) for n, i in directory.entries if i not in inums]


# ---------------------------------------------------------------------- hashing


def _hash_batches(batches: _Batches, store: ObjectSink) -> _ChunkResult:
    """Hash (and store, if new) the files of the batches this worker takes;
    runs in a thread."""
    result = _ChunkResult()
    buffer = bytearray(BLOCK_SIZE)
    try:
        for batch in batches:
            for item in batch:
                _hash_one(item, batches.dev, store, buffer, result, batches.link)
    except BaseException:
        batches.abort.set()
        raise
    return result


def _hash_one(
    item: _FileToHash,
    dev: int,
    store: ObjectSink,
    buffer: bytearray,
    result: _ChunkResult,
    link: bool = False,
) -> None:
    try:
        fd = os.open(item.os_path, _OPEN_FLAGS)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ELOOP):  # gone, or now a symlink
            result.vanished.append(item.inum)
            return
        raise ScanError(f"{item.path}: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_ino != item.inum or st.st_dev != dev:
            result.vanished.append(item.inum)  # replaced since the walk saw it
            return
        link = link and not st.st_mode & _NO_LINK_BITS
        digest, size, added = _hash_and_store(fd, st.st_size, store, buffer, link)
    except OSError as exc:
        raise ScanError(f"{item.path}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    result.hashes.append((item.inum, digest, size))
    if added:
        result.objects_added += 1
        result.bytes_added += size


def _hash_and_store(
    fd: int, size_hint: int, store: ObjectSink, buffer: bytearray, link: bool = False
) -> tuple[bytes, int, bool]:
    """Hash the open file; store its content if the store lacks it: linked
    in with ``link`` where the store can, else small files from the bytes
    just hashed and big ones copied again (from the page cache; if they
    changed in between, the copy wins)."""
    digest, size, data = _read_and_hash(fd, size_hint, buffer)
    if size == 0:
        return ZERO_HASH, 0, False
    hash_hex = digest.hex()
    if store.has_object(hash_hex):
        return digest, size, False
    if link and isinstance(store, LinkingSink):
        try:
            return digest, size, store.link_object_fd(fd, hash_hex)
        except OSError as exc:
            if exc.errno not in _CANNOT_LINK:
                raise
    if data is not None:
        return digest, size, store.put_hashed_bytes(data, hash_hex, sync=False)
    stored_hex, stored_size, added = store.put_object_fd(fd, sync=False)
    if stored_hex != hash_hex:
        return bytes.fromhex(stored_hex), stored_size, added
    return digest, size, added


def _read_and_hash(fd: int, size_hint: int, buffer: bytearray) -> tuple[bytes, int, bytes | None]:
    """Read the file once: in one call if it is small (then its bytes are
    returned too), else in ``BLOCK_SIZE`` blocks."""
    if size_hint < BLOCK_SIZE:
        data = os.read(fd, size_hint + 1)
        hasher = hashlib.sha512(data)
        if len(data) <= size_hint:
            return hasher.digest(), len(data), data
        size = len(data)  # it grew: carry on in blocks
    else:
        hasher = hashlib.sha512()
        size = 0
    view = memoryview(buffer)
    while n := os.readv(fd, [buffer]):
        hasher.update(view[:n])
        size += n
    return hasher.digest(), size, None


def hash_file(path: str) -> tuple[bytes, int]:
    """The SHA-512 digest and length of a file, read once in large blocks."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        digest, size, _ = _read_and_hash(fd, BLOCK_SIZE, bytearray(BLOCK_SIZE))
    finally:
        os.close(fd)
    return digest, size


# ---------------------------------------------------------------------- walking


class _Walker:
    """Builds the file-system; hands each regular file that needs hashing
    to ``on_file``; stops early when ``should_stop`` says so."""

    def __init__(
        self,
        root: str,
        scan_filter: PathFilter | None,
        tree_cache: TreeCache,
        on_file: Callable[[_FileToHash], None],
        should_stop: Callable[[], bool] = lambda: False,
    ) -> None:
        self.root = os.path.abspath(root)
        self.filter = scan_filter
        self.tree_cache = tree_cache
        self.on_file = on_file
        self.should_stop = should_stop
        try:
            st = os.lstat(self.root)
        except OSError as exc:
            raise ScanError(f"{root}: {exc.strerror or exc}") from None
        if not stat.S_ISDIR(st.st_mode):
            raise ScanError(f"{root}: not a directory")
        self.dev = st.st_dev
        self.root_ino = st.st_ino
        root_inode = DirectoryInode([], st.st_mode, st.st_uid, st.st_gid)
        self.walk = _Walk(FileSystem(inode_table={}, root=root_inode))

    def run(self) -> _Walk:
        fs = self.walk.file_system
        # (directory on disk, its image path, its inode, parent inode, name)
        pending: list[tuple[str, str, DirectoryInode, DirectoryInode | None, str]] = [
            (self.root, "", fs.root, None, "")
        ]
        while pending and not self.should_stop():
            os_path, path, directory, parent, name = pending.pop()
            names = self._list(os_path, path or "/", parent is None)
            if names is None:
                assert parent is not None
                _remove_inodes(fs, {self._inum_of(parent, name)})
                continue
            for child_name in names:
                child = self._add_entry(os_path, path, directory, child_name)
                if child is not None:
                    pending.append((*child, directory, child_name))
        return self.walk

    @staticmethod
    def _inum_of(parent: DirectoryInode, name: str) -> int:
        return next(inum for entry, inum in parent.entries if entry == name)

    def _list(self, os_path: str, path: str, is_root: bool) -> list[str] | None:
        """Sorted (bytewise) names in a directory; ``None`` if it vanished."""
        try:
            names = os.listdir(os_path)
        except (FileNotFoundError, NotADirectoryError):
            if is_root:
                raise ScanError(f"{self.root}: vanished during the scan") from None
            return None
        except OSError as exc:
            raise ScanError(f"{path}: {exc.strerror or exc}") from None
        if is_root:
            names = [n for n in names if n != ".subd"]
        return sorted(names, key=os.fsencode)

    def _add_entry(
        self, dir_os_path: str, dir_path: str, directory: DirectoryInode, name: str
    ) -> tuple[str, str, DirectoryInode] | None:
        """Add one entry to ``directory``; returns ``(os path, path, inode)``
        for a new subdirectory to descend into."""
        path = f"{dir_path}/{name}"
        if self.filter is not None and self.filter.match(path):
            return None
        os_path = f"{dir_os_path}/{name}"
        try:
            st = os.lstat(os_path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ScanError(f"{path}: {exc.strerror or exc}") from None
        if st.st_dev != self.dev or stat.S_ISSOCK(st.st_mode):
            return None
        if st.st_ino == self.root_ino:
            raise ScanError(f"{path}: same inode as the root directory")
        table = self.walk.file_system.inode_table
        existing = table.get(st.st_ino)
        if existing is not None:
            if isinstance(existing, DirectoryInode) or stat.S_ISDIR(st.st_mode):
                raise ScanError(f"{path}: hard-linked directory")
            directory.entries.append((name, st.st_ino))
            return None
        inode = self._make_inode(os_path, path, st)
        if inode is None:
            return None
        table[st.st_ino] = inode
        directory.entries.append((name, st.st_ino))
        if isinstance(inode, DirectoryInode):
            return os_path, path, inode
        return None

    def _make_inode(self, os_path: str, path: str, st: os.stat_result) -> Inode | None:
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            return DirectoryInode([], mode, st.st_uid, st.st_gid)
        if stat.S_ISREG(mode):
            return self._regular_inode(os_path, path, st)
        if stat.S_ISLNK(mode):
            try:
                target = os.readlink(os_path)
            except OSError:
                return None  # vanished or replaced meanwhile
            return SymlinkInode(st.st_uid, st.st_gid, target)
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode):
            seconds, nanoseconds = divmod(st.st_mtime_ns, _NS_PER_SECOND)
            return SpecialInode(mode, st.st_uid, st.st_gid, seconds, nanoseconds, st.st_rdev)
        return None

    def _regular_inode(self, os_path: str, path: str, st: os.stat_result) -> RegularInode:
        seconds, nanoseconds = divmod(st.st_mtime_ns, _NS_PER_SECOND)
        inode = RegularInode(
            st.st_mode, st.st_uid, st.st_gid, seconds, nanoseconds, st.st_size, ZERO_HASH
        )
        if st.st_size == 0:
            return inode
        cached = self.tree_cache.get(path)
        if (
            cached is not None
            and cached.ino == st.st_ino
            and cached.size == st.st_size
            and cached.ctime_ns == st.st_ctime_ns
        ):
            inode.hash = cached.hash
            self.walk.objects_skipped += 1
            self.walk.bytes_skipped += st.st_size
        else:
            self.on_file(_FileToHash(st.st_ino, path, os_path, st.st_size))
        return inode
