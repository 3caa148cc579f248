"""The objects of the embedded store: contents named by their SHA-512.

Layout: ``objects/<hh>/<hh>/<124 hex>``. An object is written in ``tmp/``
(see ``files``) and installed with ``link``, which never overwrites, so two
threads storing the same content cannot both report it as added. Objects
stored with ``sync=False`` (the scanner's) are made durable by one
``syncfs`` in :meth:`ObjectStore.flush`, which the image records call before
they write a record referencing them.

:class:`ObjectStore` is synchronous and thread-safe; it is part of
``LocalImageStore``.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from typing import BinaryIO

from imaginator.store.base import HashMismatchError, MissingObjectError, StoreError
from imaginator.store.files import NewFile, TempArea, fsync_dir, syncfs, write_all
from imaginator.store.names import check_hash

__all__ = ["BLOCK_SIZE", "IncomingObject", "ObjectStore"]

BLOCK_SIZE = 1 << 20
"""Bytes copied at a time when a file is copied in."""


class ObjectStore:
    """The ``objects/`` directory of a store; ``sync_path`` is the store's root
    (the file-system :meth:`flush` syncs)."""

    def __init__(self, objects_dir: str, temp: TempArea, sync_path: str) -> None:
        self.objects_dir = objects_dir
        self._temp = temp
        self._sync_path = sync_path
        self._sync_lock = threading.Lock()
        self._unsynced = False
        self._known_dirs: set[str] = set()
        self._thread_local = threading.local()

    def object_path(self, hash_hex: str) -> str:
        """Where the object with this id lives (whether or not it exists)."""
        h = check_hash(hash_hex)
        return f"{self.objects_dir}/{h[:2]}/{h[2:4]}/{h[4:]}"

    def has_object(self, hash_hex: str) -> bool:
        """Whether the object is stored."""
        return os.path.exists(self.object_path(hash_hex))

    def open_object(self, hash_hex: str) -> BinaryIO:
        """Open an object for reading; ``MissingObjectError`` if absent."""
        try:
            return open(self.object_path(hash_hex), "rb")
        except FileNotFoundError:
            raise MissingObjectError(f"object: {hash_hex} is not available") from None

    def read_object(self, hash_hex: str) -> bytes:
        """The whole content of an object."""
        with self.open_object(hash_hex) as f:
            return f.read()

    def put_object_bytes(self, data: bytes, *, sync: bool = True) -> str:
        """Store ``data`` (non-empty) and return its hex id.

        With ``sync=False`` the object is not fsynced now; ``flush`` (called
        by ``add_image``) makes it durable.
        """
        hash_hex = hashlib.sha512(data).hexdigest()
        self.put_hashed_bytes(data, hash_hex, sync=sync)
        return hash_hex

    def put_hashed_bytes(self, data: bytes, hash_hex: str, *, sync: bool = True) -> bool:
        """Store ``data`` as object ``hash_hex``, which the caller has just
        computed from these very bytes (the scanner does, for small files);
        returns whether it was added."""
        if not data:
            raise StoreError("zero-length objects cannot be stored")
        final = self.object_path(hash_hex)
        if os.path.exists(final):
            return False
        with self._temp.new_file() as new:
            write_all(new.fd, data)
            return self._install_object(new, final, sync)

    def put_object_file(self, path: str, hash_hex: str, *, sync: bool = True) -> bool:
        """Copy the file at ``path`` in as object ``hash_hex`` unless that
        object is already stored; returns whether it was added.

        The content is hashed while it is copied; ``HashMismatchError`` if it
        does not have the expected hash (nothing is stored then).
        """
        if self.has_object(hash_hex):
            return False
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            return self._copy_in(fd, hash_hex, sync)[2]
        finally:
            os.close(fd)

    def put_object_fd(self, fd: int, *, sync: bool = True) -> tuple[str, int, bool]:
        """Copy the content of the open file ``fd`` in (read with ``pread``
        from offset 0, hashing on the way); returns ``(hex id, size, added)``."""
        return self._copy_in(fd, None, sync)

    def import_object_file(self, path: str, *, sync: bool = True) -> tuple[str, int, bool]:
        """Copy the file at ``path`` in, hashing it on the way; returns
        ``(hex id, size, added)``."""
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            return self._copy_in(fd, None, sync)
        finally:
            os.close(fd)

    def link_object_fd(self, fd: int, hash_hex: str) -> bool:
        """Make the open file ``fd``, whose content the caller has just hashed
        to ``hash_hex``, object ``hash_hex`` by linking its inode in (no copy);
        returns whether it was added. Durable after :meth:`flush`.

        Only for files nothing will write again (a finished build tree): the
        object *is* that file. ``OSError`` when it cannot be linked (another
        file-system: ``EXDEV``); the caller copies instead.
        """
        final = self.object_path(hash_hex)
        if os.path.exists(final):
            return False
        directory = os.path.dirname(final)
        self._ensure_object_dir(directory)
        try:
            _link_fd(fd, final)
        except FileExistsError:
            return False
        except FileNotFoundError:  # the directory was removed meanwhile
            self._known_dirs.discard(directory)
            self._ensure_object_dir(directory)
            try:
                _link_fd(fd, final)
            except FileExistsError:
                return False
        with self._sync_lock:
            self._unsynced = True
        return True

    def receive_object(self, hash_hex: str) -> IncomingObject:
        """Start writing object ``hash_hex`` whose content arrives in pieces
        (downloaded); see :class:`IncomingObject`."""
        return IncomingObject(self, self._temp, check_hash(hash_hex))

    def flush(self) -> None:
        """Make every object stored with ``sync=False`` durable."""
        with self._sync_lock:
            if not self._unsynced:
                return
            self._unsynced = False
            syncfs(self._sync_path)

    def object_files(self) -> Iterator[tuple[str, str]]:
        """``(hex id, path)`` of every stored object (for garbage collection)."""
        for top in sorted(os.listdir(self.objects_dir)):
            first = os.path.join(self.objects_dir, top)
            if not os.path.isdir(first):
                continue
            for middle in sorted(os.listdir(first)):
                second = os.path.join(first, middle)
                for rest in os.listdir(second):
                    yield top + middle + rest, os.path.join(second, rest)

    def _copy_in(self, fd: int, expected: str | None, sync: bool) -> tuple[str, int, bool]:
        buffer = self._buffer()
        view = memoryview(buffer)
        hasher = hashlib.sha512()
        size = 0
        with self._temp.new_file() as new:
            while n := os.preadv(fd, [buffer], size):
                hasher.update(view[:n])
                write_all(new.fd, view[:n])
                size += n
            if size == 0:
                raise StoreError("zero-length objects cannot be stored")
            computed = hasher.hexdigest()
            if expected is not None and computed != expected:
                raise HashMismatchError(f"hash mismatch. Computed={computed}, expected={expected}")
            return computed, size, self._install_object(new, self.object_path(computed), sync)

    def _install_object(self, new: NewFile, final: str, sync: bool) -> bool:
        """Link the finished file in as ``final``; False if it exists."""
        if sync:
            os.fsync(new.fd)
        directory = os.path.dirname(final)
        created = self._ensure_object_dir(directory)
        try:
            new.link(final)
        except FileExistsError:
            return False
        except FileNotFoundError:  # the directory was removed meanwhile
            self._known_dirs.discard(directory)
            created = self._ensure_object_dir(directory)
            try:
                new.link(final)
            except FileExistsError:
                return False
        if not sync:
            self._unsynced = True
            return True
        fsync_dir(directory)
        if created:
            fsync_dir(os.path.dirname(directory))
            fsync_dir(self.objects_dir)
        return True

    def _ensure_object_dir(self, directory: str) -> bool:
        """Make ``objects/<hh>/<hh>``; returns whether it had to be created."""
        if directory in self._known_dirs:
            return False
        created = True
        try:
            os.mkdir(directory)
        except FileExistsError:
            created = False
        except FileNotFoundError:
            os.makedirs(directory, exist_ok=True)
        self._known_dirs.add(directory)
        return created

    def _buffer(self) -> bytearray:
        buffer = getattr(self._thread_local, "buffer", None)
        if buffer is None:
            buffer = self._thread_local.buffer = bytearray(BLOCK_SIZE)
        return buffer


class IncomingObject:
    """An object whose content arrives in pieces (e.g. from an imageserver):
    written to ``tmp/`` and hashed on the way, installed by :meth:`commit`
    only if it has the SHA-512 it was announced with. Blocking, like the
    rest of the store; each method is called from one thread at a time."""

    def __init__(self, objects: ObjectStore, temp: TempArea, hash_hex: str) -> None:
        self.hash_hex = hash_hex
        self._objects = objects
        self._temp = temp
        self._hasher = hashlib.sha512()
        self._new: NewFile | None = temp.open_file()
        self.size = 0

    def write(self, data: bytes) -> None:
        """Append ``data``."""
        if self._new is None:
            raise StoreError(f"object: {self.hash_hex}: already finished")
        write_all(self._new.fd, data)
        self._hasher.update(data)
        self.size += len(data)

    def commit(self, *, sync: bool = True) -> bool:
        """Install the object if its content has the expected hash (else
        ``HashMismatchError``, and nothing is stored); returns whether it
        was added (False: it was stored meanwhile)."""
        new = self._new
        if new is None:
            raise StoreError(f"object: {self.hash_hex}: already finished")
        try:
            if self.size == 0:
                raise StoreError("zero-length objects cannot be stored")
            computed = self._hasher.hexdigest()
            if computed != self.hash_hex:
                raise HashMismatchError(
                    f"hash mismatch. Computed={computed}, expected={self.hash_hex}"
                )
            return self._objects._install_object(new, self._objects.object_path(computed), sync)
        finally:
            self.abort()

    def abort(self) -> None:
        """Give the object up (nothing is stored); harmless after :meth:`commit`."""
        new, self._new = self._new, None
        if new is not None:
            self._temp.discard(new)


def _link_fd(fd: int, path: str) -> None:
    """Link the inode open as ``fd`` in as ``path`` (``linkat`` following the
    descriptor's magic link: the very inode, whatever its path has become)."""
    fds = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.link(str(fd), path, src_dir_fd=fds, follow_symlinks=True)
    finally:
        os.close(fds)
