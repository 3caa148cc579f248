"""Build roots as overlay mounts over a cache of pristine unpacked source trees.

Writing the whole source image (160 to 200 MB, thousands of files) into every
build root costs seconds. Instead each source image is materialised once into
``<cache>/<image name, / → _>/tree`` and every build that starts from it
mounts an overlay at its build root: that tree as the (never written) lower
layer, a fresh upper and work directory in the daemon's temporary directory.
Scripts copy up what they change, deletions become whiteouts, and since all
layers live on one file-system the merged tree reports the lower inode
numbers and ctimes of untouched files, so the scanner reuses their hashes
from the tree cache saved next to the tree.

A slot is complete once its ``tree-cache.json`` exists: the tree is
materialised under a temporary name, renamed into place, handed to the build
that asked for it, and only after the file-system has been synced is the
saved tree cache written, so neither a crash nor a power cut leaves a half
tree that looks complete. The ``used`` file names the image and its mtime
says when the tree was last used: the cache keeps the most recently used
trees, and drops trees of images the store no longer has first.

A bootstrap build's own tree can become its image's entry without any
unpacking (:meth:`SourceTrees.adopt`, ``FastPaths.ReuseBootstrapTrees``):
conformed to the image (``treeconform``), it is renamed into a slot and
completed like a materialised one.

Mounts are made and removed with ``mount(2)``/``umount2(2)`` from pool threads
in the daemon's own mount namespace; a busy mount is detached lazily. Every
blocking call here runs in the thread pool.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from twisted.internet.defer import Deferred, DeferredLock
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from imaginator.goformats.units import format_bytes, format_duration
from imaginator.image.model import Image
from imaginator.image.scan import CacheEntry, TreeCache
from imaginator.image.unpack import ObjectFiles, UnpackError, materialise
from imaginator.pipeline.treeconform import TreeMismatch, conform_tree
from imaginator.runtime.mounts import (
    TreeCacheUnavailable,
    mount_overlay,
    syncfs,
    unmount,
    unmount_all_under,
)
from imaginator.store.base import StoreError, Transferred

_T = TypeVar("_T")

TREE = "tree"
CACHE_FILE = "tree-cache.json"
USED_FILE = "used"
_FORMAT = 1
_STAGING = ".new-"
_REMOVING = ".old-"
_PROBE = ".probe-"

_log = Logger()


class _NoLog:
    def line(self, text: str = "") -> None:
        pass


# ---------------------------------------------------------------------- the tree cache


@dataclass
class SourceTree:
    """A cached tree leased to a build: the overlay's lower layer."""

    name: str
    slot: str
    path: str
    tree_cache: TreeCache
    reused: bool
    duration: float  # materialising it (0 when reused)


@dataclass(frozen=True)
class _Known:
    name: str
    created_on: int
    tree_cache: TreeCache


def slot_name(image_name: str) -> str:
    """The directory of an image's tree in the cache: its name, ``/`` → ``_``."""
    return image_name.replace("/", "_")


def encode_tree_cache(name: str, image: Image, cache: TreeCache) -> bytes:
    return json.dumps(
        {
            "Format": _FORMAT,
            "Image": name,
            "CreatedOn": image.created_on,
            "Entries": {
                path: [e.ino, e.ctime_ns, e.size, e.hash.hex()] for path, e in cache.items()
            },
        },
        separators=(",", ":"),
    ).encode()


def decode_tree_cache(data: bytes) -> tuple[str, int, TreeCache]:
    """(image name, its ``created_on``, the tree cache); ``ValueError`` if bad."""
    try:
        document = json.loads(data)
        if document.get("Format") != _FORMAT:
            raise ValueError("unknown format")
        cache = {
            path: CacheEntry(int(ino), int(ctime), int(size), bytes.fromhex(digest))
            for path, (ino, ctime, size, digest) in document["Entries"].items()
        }
        return str(document["Image"]), int(document["CreatedOn"]), cache
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"malformed tree cache: {exc}") from None


class LineLog(Protocol):
    """Where progress is reported (a build's ``BuildLog``)."""

    def line(self, text: str = "") -> None: ...


class SourceImages(Protocol):
    """What unpacking needs of the image store (``ImageStore``)."""

    async def image_exists(self, name: str) -> bool: ...

    async def fetch_objects(self, hashes: Collection[bytes]) -> Transferred: ...


async def fetch_source_objects(images: SourceImages, image: Image, log: LineLog) -> None:
    """Have the image's objects in the local object store before it is
    materialised: a remote store downloads what its cache lacks (logged),
    the embedded store has them all. ``UnpackError`` if they cannot be had."""
    fs = image.file_system
    if fs is None:
        raise UnpackError("image has no file-system")
    started = time.monotonic()
    try:
        fetched = await images.fetch_objects(fs.object_hashes())
    except StoreError as exc:
        raise UnpackError(str(exc)) from None
    if fetched.objects:
        took = max(time.monotonic() - started, 1e-9)
        log.line(
            f"Downloaded {fetched.objects} objects ({format_bytes(fetched.bytes)}) in "
            f"{format_duration(took)} ({format_bytes(int(fetched.bytes / took))}/s)"
        )


class SourceTrees:
    """Pristine unpacked source trees, kept for the ``keep`` most recently
    used images, leased to builds as overlay lower layers.

    Bookkeeping (locks, leases) happens in the reactor thread, file work in
    ``threadpool``. A tree is never removed while leased; a lock per image
    makes concurrent builds from one source materialise it once. ``store``
    is the local object store the trees are written from, ``images`` the
    image store (which images still exist, objects to fetch first).
    """

    def __init__(
        self,
        directory: str,
        *,
        keep: int = 4,
        reactor: IReactorFromThreads,
        threadpool: ThreadPool,
        store: ObjectFiles,
        images: SourceImages,
    ) -> None:
        self.directory = os.path.abspath(directory)
        self.keep = max(1, keep)
        self._reactor = reactor
        self._threadpool = threadpool
        self._store = store  # the local object store, read from threads
        self._images = images
        self._locks: dict[str, DeferredLock] = {}
        self._in_use: dict[str, int] = {}
        self._known: dict[str, _Known] = {}
        self._prepare_lock = DeferredLock()
        self._unusable: str | None = None
        self._prepared = False
        self._pending = 0  # durability jobs still running
        self._settled_waiters: list[Deferred] = []

    async def _in_thread(self, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        return await deferToThreadPool(self._reactor, self._threadpool, fn, *args, **kwargs)

    # -- leases --------------------------------------------------------------------

    async def acquire(
        self, name: str, image: Image, build_dir: str, log: LineLog | None = None
    ) -> SourceTree:
        """The tree of image ``name``, materialised now if the cache lacks it
        (its objects fetched first, reported to ``log``), leased until
        ``release``. ``build_dir`` is where the build's overlay directories go
        (it must share the cache's file-system).

        Raises ``TreeCacheUnavailable`` when overlay roots cannot work here,
        and ``UnpackError`` when the image cannot be materialised at all.
        """
        await self._prepare()
        if self._unusable is not None:
            raise TreeCacheUnavailable(self._unusable)
        slot = slot_name(name)
        if not slot or slot.startswith("."):
            raise TreeCacheUnavailable(f"no cache slot for image name {name!r}")
        await self._in_thread(self._check_same_file_system, build_dir)
        lock = self._locks.setdefault(slot, DeferredLock())
        await lock.acquire()
        try:
            known = self._known.get(slot)
            if known is None:
                known = await self._in_thread(self._load, slot)
                if known is not None:
                    self._known[slot] = known
            if known is not None and (known.name, known.created_on) == (name, image.created_on):
                self._lease(slot)
                await self._in_thread(self._touch, slot)
                return SourceTree(name, slot, self._tree(slot), known.tree_cache, True, 0.0)
            if self._in_use.get(slot):
                raise TreeCacheUnavailable(f"cache slot {slot} holds another image in use")
            await self._make_room(slot)
            await fetch_source_objects(self._images, image, log or _NoLog())
            started = time.monotonic()
            cache = await self._in_thread(self._materialise, slot, name, image)
            took = time.monotonic() - started
            self._known[slot] = _Known(name, image.created_on, cache)
            self._lease(slot)
            self._lease(slot)  # the lease of the durability job below
            self._finish_in_background(slot, name, image, cache)
            return SourceTree(name, slot, self._tree(slot), cache, False, took)
        finally:
            lock.release()

    async def adopt(self, name: str, image: Image, tree: str) -> bool:
        """Make the finished build tree ``tree`` the cache entry of image
        ``name`` (just published from it), so no build has to unpack it.

        The tree is conformed to the image first (``treeconform``). Returns
        whether it was taken; if not (the image has its entry already, the
        cache cannot be used, the tree is on another file-system or does not
        match), the tree, if still there, stays the caller's to remove.
        """
        slot = slot_name(name)
        if not slot or slot.startswith("."):
            return False
        # The slot's lock first (taken at once when free, before anything
        # waits): a build asking for this image from now on waits for the tree.
        lock = self._locks.setdefault(slot, DeferredLock())
        await lock.acquire()
        try:
            await self._prepare()
            if self._unusable is not None or self._in_use.get(slot) or slot in self._known:
                return False
            if await self._in_thread(self._load, slot) is not None:
                return False
            await self._make_room(slot)
            cache = await self._in_thread(self._adopt, slot, name, image, tree)
        except (OSError, TreeCacheUnavailable, TreeMismatch) as exc:
            _log.warn(
                "Source tree cache: not keeping the build tree of {name}: {error}",
                name=name,
                error=describe(exc),
            )
            return False
        else:
            self._known[slot] = _Known(name, image.created_on, cache)
            self._lease(slot)  # the durability job's
            self._finish_in_background(slot, name, image, cache)
            return True
        finally:
            lock.release()

    def release(self, tree: SourceTree) -> None:
        """End a lease (after the overlay using the tree is unmounted)."""
        self._unlease(tree.slot)

    def _lease(self, slot: str) -> None:
        self._in_use[slot] = self._in_use.get(slot, 0) + 1

    def _unlease(self, slot: str) -> None:
        left = self._in_use.get(slot, 0) - 1
        if left > 0:
            self._in_use[slot] = left
        else:
            self._in_use.pop(slot, None)

    async def settled(self) -> None:
        """Wait until every materialised tree is durably marked complete."""
        if self._pending:
            waiter: Deferred = Deferred()
            self._settled_waiters.append(waiter)
            await waiter

    def _finish_in_background(self, slot: str, name: str, image: Image, cache: TreeCache) -> None:
        self._pending += 1

        async def finish() -> None:
            try:
                await self._in_thread(self._write_tree_cache, slot, name, image, cache)
            except Exception as exc:
                # The tree stays usable in this process; a restart unpacks it again.
                _log.warn(
                    "Source tree cache: cannot save the tree cache of {name}: {error}",
                    name=name,
                    error=str(exc),
                )
            finally:
                self._unlease(slot)
                self._pending -= 1
                if not self._pending:
                    waiters, self._settled_waiters = self._settled_waiters, []
                    for waiter in waiters:
                        waiter.callback(None)

        Deferred.fromCoroutine(finish())

    # -- blocking parts --------------------------------------------------------------

    def _tree(self, slot: str) -> str:
        return os.path.join(self.directory, slot, TREE)

    def _check_same_file_system(self, build_dir: str) -> None:
        if os.stat(build_dir).st_dev != os.stat(self.directory).st_dev:
            raise TreeCacheUnavailable(
                f"{build_dir} and {self.directory} are on different file-systems"
            )

    def _load(self, slot: str) -> _Known | None:
        """The complete tree in ``slot``, or ``None`` (missing or incomplete)."""
        try:
            with open(os.path.join(self.directory, slot, CACHE_FILE), "rb") as handle:
                name, created_on, cache = decode_tree_cache(handle.read())
        except (OSError, ValueError):
            return None
        if not os.path.isdir(self._tree(slot)):
            return None
        return _Known(name, created_on, cache)

    def _touch(self, slot: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.utime(os.path.join(self.directory, slot, USED_FILE))

    def _materialise(self, slot: str, name: str, image: Image) -> TreeCache:
        return self._install(slot, name, lambda tree: materialise(image, self._store, tree))

    def _adopt(self, slot: str, name: str, image: Image, tree: str) -> TreeCache:
        if os.lstat(tree).st_dev != os.stat(self.directory).st_dev:
            raise TreeCacheUnavailable(f"{tree} is not on the file-system of {self.directory}")
        cache = conform_tree(image, tree)

        def move_in(staged: str) -> TreeCache:
            os.rename(tree, staged)
            return cache

        return self._install(slot, name, move_in)

    def _install(self, slot: str, name: str, fill: Callable[[str], TreeCache]) -> TreeCache:
        """Put ``fill``'s tree for image ``name`` in ``slot``: made in a staging
        directory and renamed into place, so a slot is either whole or absent."""
        final = os.path.join(self.directory, slot)
        if os.path.lexists(final):  # incomplete, or another image's
            self._remove(slot)
        staging = tempfile.mkdtemp(prefix=f"{_STAGING}{slot}.", dir=self.directory)
        try:
            cache = fill(os.path.join(staging, TREE))
            with open(os.path.join(staging, USED_FILE), "w", encoding="utf-8") as handle:
                handle.write(name + "\n")
            os.chmod(staging, 0o755)
            os.rename(staging, final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return cache

    def _write_tree_cache(self, slot: str, name: str, image: Image, cache: TreeCache) -> None:
        """Make the tree durable, then mark it complete with its saved tree cache."""
        directory = os.path.join(self.directory, slot)
        syncfs(directory)
        data = encode_tree_cache(name, image, cache)
        fd, temp = tempfile.mkstemp(prefix=".tree-cache.", dir=directory)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.rename(temp, os.path.join(directory, CACHE_FILE))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _remove(self, slot: str) -> None:
        """Take a tree out of the cache (first out of its name, so a crash
        halfway leaves only a leftover that ``_prepare`` removes)."""
        path = os.path.join(self.directory, slot)
        doomed = tempfile.mkdtemp(prefix=f"{_REMOVING}{slot}.", dir=self.directory)
        os.rename(path, os.path.join(doomed, "slot"))
        shutil.rmtree(doomed, ignore_errors=True)

    def _survey(self) -> list[tuple[str, float, str]]:
        """(slot, last use, image name or "") of every tree in the cache."""
        found = []
        for slot in os.listdir(self.directory):
            if slot.startswith("."):
                continue
            used = os.path.join(self.directory, slot, USED_FILE)
            try:
                with open(used, encoding="utf-8") as handle:
                    name = handle.read().strip()
                mtime = os.stat(used).st_mtime
            except OSError:
                name, mtime = "", 0.0
            found.append((slot, mtime, name))
        return found

    async def _image_gone(self, name: str) -> bool:
        """Whether the store no longer has the image (unknown if it cannot say: kept)."""
        if not name:
            return True
        try:
            return not await self._images.image_exists(name)
        except StoreError as exc:
            _log.warn("Source tree cache: {error}", error=str(exc))
            return False

    # -- making room -------------------------------------------------------------------

    async def _make_room(self, keep_slot: str) -> None:
        """Before adding a tree: drop trees of images that are gone, then the
        least recently used ones beyond ``keep - 1``; leased trees stay."""
        survey = [
            (slot, mtime, await self._image_gone(name))
            for slot, mtime, name in await self._in_thread(self._survey)
        ]
        others = sorted((mtime, slot, stale) for slot, mtime, stale in survey if slot != keep_slot)
        count = len(others)
        for _mtime, slot, stale in others:
            if not stale and count < self.keep:
                continue
            lock = self._locks.setdefault(slot, DeferredLock())
            if self._in_use.get(slot) or lock.locked:
                continue
            await lock.acquire()  # free: checked just above, in the reactor thread
            try:
                self._known.pop(slot, None)
                await self._in_thread(self._remove, slot)
                count -= 1
            except OSError as exc:
                _log.warn(
                    "Source tree cache: cannot remove {slot}: {error}", slot=slot, error=str(exc)
                )
            finally:
                lock.release()

    # -- once per process ----------------------------------------------------------------

    async def _prepare(self) -> None:
        if self._prepared:
            return
        await self._prepare_lock.acquire()
        try:
            if not self._prepared:
                try:
                    await self._in_thread(self._clean_leftovers)
                    await self._in_thread(probe_overlay, self.directory)
                except (OSError, TreeCacheUnavailable) as exc:
                    self._unusable = f"overlay roots unavailable: {describe(exc)}"
                self._prepared = True
        finally:
            self._prepare_lock.release()

    def _clean_leftovers(self) -> None:
        os.makedirs(self.directory, mode=0o755, exist_ok=True)
        for name in os.listdir(self.directory):
            if name.startswith((_STAGING, _REMOVING, _PROBE)):
                path = os.path.join(self.directory, name)
                unmount_all_under(path)
                shutil.rmtree(path, ignore_errors=True)


def describe(exc: BaseException) -> str:
    """An error for a log line: an ``OSError`` as "path: reason"."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    return str(exc)


def probe_overlay(directory: str) -> None:
    """Mount a tiny overlay in ``directory`` to learn whether overlay roots
    work there, and keep inode numbers and one device; raises
    ``TreeCacheUnavailable`` or ``OSError`` if not. Blocking."""
    scratch = tempfile.mkdtemp(prefix=_PROBE, dir=directory)
    try:
        lower, upper, work, merged = (
            os.path.join(scratch, name) for name in ("lower", "upper", "work", "merged")
        )
        for path in (lower, upper, work, merged):
            os.mkdir(path)
        with open(os.path.join(lower, "file"), "wb") as handle:
            handle.write(b"probe\n")
        expected = os.lstat(os.path.join(lower, "file")).st_ino
        mount_overlay(lower, upper, work, merged)
        try:
            root_st = os.lstat(merged)
            file_st = os.lstat(os.path.join(merged, "file"))
        finally:
            unmount(merged)
        if file_st.st_dev != root_st.st_dev or file_st.st_ino != expected:
            raise TreeCacheUnavailable("the overlay does not keep inode numbers")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
