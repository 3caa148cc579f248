"""The caches a manifest build mounts: the stream's own and the shared package caches.

The per-stream ``Cache`` of the main configuration is a host directory per
stream, mounted read-write at its ``MountPoint`` for the whole build and
trimmed to ``SizeLimit`` after a good one (:func:`bind_mounts_for`,
:func:`trim_cache`).

Package downloads are shared by all builds (``FastPaths.PackageCaches``).
Every Debian build downloads the same ``.deb`` files again into its own
``/var/cache/apt/archives``, and cleans them away before the image is
scanned. A package cache is one host directory per mount point
(``<stateDir>/package-cache/var_cache_apt_archives`` unless the
configuration names one) that is bind-mounted read-write at that mount point
for the package steps of a manifest build (update, upgrade, install), so a
package downloaded once is found by every later build. It is not mounted for
anything else: scripts, cleaning (``apt-get clean`` would empty it) and the
scan see the root's own directory, so nothing of the cache gets into an
image.

Builds that share a cache take turns: a lock per cache is held from the
first package step to the last, so two package managers never write into
one directory at once (apt's own lock in the directory would make the second
fail, not wait). A root without the mount point (another distribution) does
not use that cache. After its turn a build trims the cache to its size limit,
oldest files first.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from twisted.internet.defer import DeferredLock

from imaginator.config.main import MainConfig, PackageCache
from imaginator.goformats.units import format_bytes
from imaginator.runtime.buildlog import BuildLog
from imaginator.runtime.inroot import TreeCopyError, resolve_in_root
from imaginator.runtime.sandbox import BindMount
from imaginator.runtime.treecopy import copy_tree

__all__ = ["PackageCaches", "bind_mounts_for", "trim_cache"]


def bind_mounts_for(main: MainConfig, stream: str) -> tuple[BindMount, ...]:
    """``BindMounts`` (read-only) and the stream's ``Cache`` directory (created). Blocking."""
    mounts = [BindMount(path, path) for path in main.bind_mounts if path]
    cache = main.cache
    if cache and cache.base_directory and cache.mount_point:
        host = os.path.join(cache.base_directory, os.path.normpath(stream).lstrip("/"))
        os.makedirs(host, mode=0o755, exist_ok=True)
        mounts.append(BindMount(host, cache.mount_point, writable=True))
    return tuple(mounts)


def trim_cache(directory: str, size_limit: int) -> list[tuple[str, int]]:
    """Delete the oldest regular files until the cache is under ``size_limit``
    bytes; returns the (path, size) of each file deleted. Blocking."""
    if size_limit <= 0 or not os.path.isdir(directory):
        return []
    files = []
    for base, _dirs, names in os.walk(directory):
        for name in names:
            path = os.path.join(base, name)
            info = os.lstat(path)
            if os.path.isfile(path) and not os.path.islink(path):
                files.append((info.st_mtime, info.st_size, path))
    files.sort()
    total = sum(size for _mtime, size, _path in files)
    deleted = []
    for _mtime, size, path in files:
        if total < size_limit:
            break
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
            deleted.append((path, size))
        total -= size
    return deleted


class PackageCaches:
    """The configured caches, their host directories and their locks.

    ``directory`` holds the caches that do not name their own; ``in_thread``
    runs blocking work in the pool.
    """

    def __init__(
        self,
        caches: tuple[PackageCache, ...],
        directory: str,
        in_thread: Callable[..., Awaitable[Any]],
    ) -> None:
        self._caches = caches
        self._directory = directory
        self._in_thread = in_thread
        self._locks: dict[str, DeferredLock] = {}

    def host_directory(self, cache: PackageCache) -> str:
        """Where the cache lives on the host."""
        if cache.directory:
            return cache.directory
        name = cache.mount_point.strip("/").replace("/", "_")
        return os.path.join(self._directory, name)

    @contextlib.asynccontextmanager
    async def lease(
        self, root: str, log: BuildLog, *, keep: bool = True
    ) -> AsyncIterator[tuple[BindMount, ...]]:
        """The bind mounts of the caches this root can use, while they are this build's.

        Waits for builds using them to finish their turn (and says so in
        ``log``); after a turn that went well (and with ``keep``) copies the
        ``KeepInRoot`` caches into the root; trims the caches and lets the
        next build in on the way out.
        """
        usable = await self._in_thread(self._usable, root)
        for cache, _mount in usable:
            lock = self._locks.setdefault(self.host_directory(cache), DeferredLock())
            if lock.locked:
                log.line(f"Package cache {cache.mount_point}: waiting for another build")
            await lock.acquire()
        try:
            for cache, _mount in usable:
                log.line(f"Package cache {cache.mount_point}: shared")
            yield tuple(mount for _cache, mount in usable)
            for cache, mount in usable:
                if keep and cache.keep_in_root:
                    await self._in_thread(_copy_into, mount, root)
                    log.line(f"Package cache {cache.mount_point}: copied into the root")
        finally:
            try:
                for cache, _mount in usable:
                    if cache.size_limit > 0:
                        host = self.host_directory(cache)
                        freed = await self._in_thread(trim_cache, host, cache.size_limit)
                        if freed:
                            log.line(
                                f"Package cache {cache.mount_point}: removed {len(freed)} old "
                                f"files ({format_bytes(sum(size for _path, size in freed))})"
                            )
            finally:
                for cache, _mount in reversed(usable):
                    self._locks[self.host_directory(cache)].release()

    async def index(self, mounts: tuple[BindMount, ...]) -> str | None:
        """A digest of what the ``KeepInRoot`` caches among ``mounts`` hold (apt's
        lists: the package index an update left), ``None`` if there are none.

        Small files (an index's signed release file, which names the hashes of
        the rest) count by content, big ones by size and modification time.
        """
        kept = {self.host_directory(c) for c in self._caches if c.keep_in_root}
        directories = sorted(m.source for m in mounts if m.source in kept)
        if not directories:
            return None
        return await self._in_thread(_index_digest, directories)

    async def seed(self, root: str, log: BuildLog) -> None:
        """Fill each empty ``KeepInRoot`` cache with what a bootstrap build left at
        its mount point (``debootstrap`` leaves apt's lists: the first derived
        build's update then fetches only what they lack). Called before the
        bootstrap tree is cleaned, which removes those files from it."""
        for cache, mount in await self._in_thread(self._usable, root):
            if not cache.keep_in_root:
                continue
            lock = self._locks.setdefault(mount.source, DeferredLock())
            await lock.acquire()
            try:
                inside = os.path.join(root, mount.target.lstrip("/"))
                count = await self._in_thread(_seed, mount.source, inside)
            finally:
                lock.release()
            if count:
                log.line(f"Package cache {cache.mount_point}: {count} files from the new tree")

    def _usable(self, root: str) -> list[tuple[PackageCache, BindMount]]:
        """The caches whose mount point is a directory in the root (sorted by
        host directory, the order their locks are taken in), with their mounts."""
        found = []
        for cache in self._caches:
            try:
                inside = resolve_in_root(root, cache.mount_point)
            except TreeCopyError:
                continue
            if not os.path.isdir(inside) or os.path.islink(inside):
                continue
            host = self.host_directory(cache)
            os.makedirs(host, mode=0o755, exist_ok=True)
            relative = os.path.relpath(inside, root)
            if relative.startswith(".."):
                continue
            target = "/" if relative == "." else "/" + relative
            found.append((cache, BindMount(host, target, writable=True)))
        return sorted(found, key=lambda pair: pair[1].source)


def _copy_into(mount: BindMount, root: str) -> None:
    """What the cache holds now, copied into the root where it was mounted. Blocking."""
    copy_tree(
        mount.source, root, label=f"package cache {mount.target}", log=_quiet, dest=mount.target
    )


_SMALL = 1 << 20


def _index_digest(directories: list[str]) -> str:
    """Blocking part of :meth:`PackageCaches.index`."""
    digest = hashlib.sha256()
    for directory in directories:
        for base, dirs, names in os.walk(directory):
            dirs.sort()
            for name in sorted(names):
                path = os.path.join(base, name)
                st = os.lstat(path)
                if not stat.S_ISREG(st.st_mode) or name == "lock":
                    continue
                digest.update(f"{os.path.relpath(path, directory)}\0{st.st_size}\0".encode())
                if st.st_size <= _SMALL:
                    with open(path, "rb") as handle:
                        digest.update(hashlib.sha256(handle.read()).digest())
                else:
                    digest.update(str(st.st_mtime_ns).encode())
    return digest.hexdigest()


def _seed(cache: str, tree_directory: str) -> int:
    """Link (or copy) the regular files of ``tree_directory`` into ``cache`` if it
    has none; returns how many. Blocking."""
    with os.scandir(cache) as entries:
        if any(e.is_file(follow_symlinks=False) and e.name != "lock" for e in entries):
            return 0
    count = 0
    with os.scandir(tree_directory) as entries:
        for entry in entries:
            if entry.name == "lock" or not entry.is_file(follow_symlinks=False):
                continue
            target = os.path.join(cache, entry.name)
            try:
                os.link(entry.path, target, follow_symlinks=False)
            except FileExistsError:
                continue
            except OSError:
                shutil.copyfile(entry.path, target, follow_symlinks=False)
            count += 1
    return count


def _quiet(_line: str) -> None:
    """``copy_tree``'s per-file lines are not worth a build log line each."""
