"""The embedded, content-addressed image store under ``<stateDir>/store``.

Layout::

    objects/<hh>/<hh>/<124 hex>     object contents, named by their SHA-512
    images/<stream>/<datestamp>     image records (Go model JSON, one line)
    tmp/                            files being written

Every file is written in ``tmp/`` first (as an unnamed ``O_TMPFILE`` where
the kernel allows, else under a temporary name) and then linked or renamed
into place, so readers only ever see complete files, and a crash leaves at
most named temporary files, which the next ``LocalImageStore`` removes.
Objects and new image records are installed with ``link``, which never
overwrites, so two threads storing the same content cannot both report it as
added. An image record is written only after every object it references is
present and durable: objects stored with ``sync=False`` (the scanner's) are
made durable by one ``syncfs`` before the record is written.

``LocalImageStore`` is synchronous and thread-safe: the daemon calls it from
its thread pool (directly while scanning, or through ``AsyncImageStore``) and
``imagetool`` calls it directly.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import hashlib
import itertools
import json
import os
import re
import secrets
import shutil
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from twisted.internet.threads import deferToThreadPool

from imaginator.image.model import (
    Image,
    ImageFormatError,
    dumps_image,
    image_from_json,
    loads_image,
)
from imaginator.store.base import (
    HashMismatchError,
    ImageExistsError,
    ImageNotFoundError,
    InvalidNameError,
    MissingObjectError,
    StoreError,
    TagsToMatch,
)

BLOCK_SIZE = 1 << 20
DATESTAMP_FORMAT = "%Y-%m-%d:%H:%M:%S"
CREATED_BY = "imaginator"
_DATESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}:\d{2}:\d{2}:\d{2}")
_HEX_HASH = re.compile(r"[0-9a-f]{128}")
# Distinguishes this process's temporary files from those of an earlier
# process that happened to have the same pid (containers reuse pids).
_PROCESS_TOKEN = secrets.token_hex(4)


@dataclass(frozen=True, slots=True)
class _Summary:
    """The fields of an image record that ``find_latest_image`` needs."""

    created_on: int
    expires_at: int
    build_commit_id: str
    build_branch: str
    tags: dict[str, str]


@dataclass(frozen=True, slots=True)
class _NewFile:
    """A file being written: ``path`` is ``None`` for an unnamed file."""

    fd: int
    path: str | None

    def link(self, final: str) -> None:
        """Give the file the name ``final`` (``FileExistsError`` if taken)."""
        if self.path is None:
            # linkat(AT_SYMLINK_FOLLOW) on /proc/self/fd/N names an O_TMPFILE
            # file. CPython only calls linkat when a dir fd is given; the
            # kernel ignores it because the source path is absolute.
            os.link(f"/proc/self/fd/{self.fd}", final, src_dir_fd=self.fd, follow_symlinks=True)
        else:
            os.link(self.path, final)


class LocalImageStore:
    """Images and objects in a directory tree (see the module docstring)."""

    def __init__(self, path: str, *, create: bool = True) -> None:
        """Open the store at ``path``, creating it if ``create`` (otherwise a
        missing store raises ``StoreError``), and remove temporary files left
        by processes that died while writing."""
        self.path = os.path.abspath(path)
        self.objects_dir = os.path.join(self.path, "objects")
        self.images_dir = os.path.join(self.path, "images")
        self.tmp_dir = os.path.join(self.path, "tmp")
        if not create and not os.path.isdir(self.images_dir):
            raise StoreError(f"no image store at {self.path}")
        for directory in (self.objects_dir, self.images_dir, self.tmp_dir):
            os.makedirs(directory, exist_ok=True)
        self._lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self._unsynced = False
        self._reserved: dict[str, set[str]] = {}
        self._summaries: dict[str, tuple[tuple[int, int, int], _Summary | None]] = {}
        self._known_dirs: set[str] = set()
        self._thread_local = threading.local()
        self._counter = itertools.count()
        self._use_tmpfile = hasattr(os, "O_TMPFILE") and os.path.isdir("/proc/self/fd")
        self._recover_tmp()

    # ------------------------------------------------------------------ objects

    def object_path(self, hash_hex: str) -> str:
        """Where the object with this id lives (whether or not it exists)."""
        h = _check_hash(hash_hex)
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
        with self._new_file() as new:
            _write_all(new.fd, data)
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

    def flush(self) -> None:
        """Make every object stored with ``sync=False`` durable."""
        with self._sync_lock:
            if not self._unsynced:
                return
            self._unsynced = False
            _syncfs(self.path)

    def _copy_in(self, fd: int, expected: str | None, sync: bool) -> tuple[str, int, bool]:
        buffer = self._buffer()
        view = memoryview(buffer)
        hasher = hashlib.sha512()
        size = 0
        with self._new_file() as new:
            while n := os.preadv(fd, [buffer], size):
                hasher.update(view[:n])
                _write_all(new.fd, view[:n])
                size += n
            if size == 0:
                raise StoreError("zero-length objects cannot be stored")
            computed = hasher.hexdigest()
            if expected is not None and computed != expected:
                raise HashMismatchError(f"hash mismatch. Computed={computed}, expected={expected}")
            return computed, size, self._install_object(new, self.object_path(computed), sync)

    def _install_object(self, new: _NewFile, final: str, sync: bool) -> bool:
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
        _fsync_dir(directory)
        if created:
            _fsync_dir(os.path.dirname(directory))
            _fsync_dir(self.objects_dir)
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

    # ------------------------------------------------------------------ images

    def image_file(self, name: str) -> str:
        """The path of the record of image ``name`` (validated)."""
        return os.path.join(self.images_dir, check_image_name(name))

    def get_image(self, name: str) -> Image | None:
        """The image called ``name``, or ``None``; ``StoreError`` if the
        record is unreadable."""
        data = self._read_record(name)
        if data is None:
            return None
        try:
            return loads_image(data.decode("utf-8", "surrogateescape"))
        except ImageFormatError as exc:
            raise StoreError(f"image {name}: {exc}") from None

    def add_image(self, name: str, image: Image) -> Image:
        """Store ``image`` as ``name`` and return the stored record.

        ``name`` must be ``<stream>/<YYYY-MM-DD:HH:MM:SS>`` and new. Every
        object the image references must be stored (``MissingObjectError``
        otherwise, and nothing is written). ``created_on`` (now) and
        ``created_by`` (``imaginator``) are filled in if unset.
        """
        final = os.path.join(self.images_dir, check_new_image_name(name))
        if os.path.lexists(final):
            raise ImageExistsError(f"image: {name} already exists")
        if image.file_system is None:
            raise StoreError("nil file-system")
        self._check_objects(image)
        self.flush()
        stored = dataclasses.replace(
            image,
            created_on=image.created_on or time.time_ns(),
            created_by=image.created_by or CREATED_BY,
        )
        data = _encode_record(stored)
        with self._lock:
            self._make_dirs(os.path.dirname(final), sync=True)
            with self._new_file() as new:
                _write_all(new.fd, data)
                os.fsync(new.fd)
                try:
                    new.link(final)
                except FileExistsError:
                    raise ImageExistsError(f"image: {name} already exists") from None
            _fsync_dir(os.path.dirname(final))
        return stored

    def change_image_expiration(self, name: str, expires_at_ns: int) -> bool:
        """Lengthen the image's life to ``expires_at_ns`` (ns since the epoch, 0 = never).

        An expiry is only ever lengthened: a request for an earlier time than
        the image already has (or any time, for an image that never expires)
        changes nothing. Returns whether the record changed.
        """
        with self._lock:
            image = self.get_image(name)
            if image is None:
                raise ImageNotFoundError(f"image not found: {name}")
            current = image.expires_at
            if current == 0 or (expires_at_ns != 0 and expires_at_ns <= current):
                return False
            data = _encode_record(dataclasses.replace(image, expires_at=expires_at_ns))
            final = self.image_file(name)
            with self._new_file(named=True) as new:
                _write_all(new.fd, data)
                os.fsync(new.fd)
                assert new.path is not None
                os.replace(new.path, final)
            _fsync_dir(os.path.dirname(final))
            return True

    def referenced_objects(self) -> set[str]:
        """The hex ids of every object some image record references."""
        referenced: set[str] = set()
        for name in self.list_images():
            image = self.get_image(name)
            if image is not None:
                referenced.update(h.hex() for h in image.object_hashes())
        return referenced

    def collect_garbage(self) -> tuple[int, int]:
        """Delete every object no image references; returns (objects, bytes) freed.

        The caller must make sure no image is being written meanwhile (a
        build's objects are unreferenced until its record is added): the
        daemon runs this only while no build runs.
        """
        with self._lock:
            referenced = self.referenced_objects()
            removed = freed = 0
            for top in sorted(os.listdir(self.objects_dir)):
                first = os.path.join(self.objects_dir, top)
                if not os.path.isdir(first):
                    continue
                for middle in sorted(os.listdir(first)):
                    second = os.path.join(first, middle)
                    for rest in os.listdir(second):
                        if top + middle + rest in referenced:
                            continue
                        path = os.path.join(second, rest)
                        with contextlib.suppress(FileNotFoundError):
                            freed += os.lstat(path).st_size
                            os.unlink(path)
                            removed += 1
            return removed, freed

    def delete_image(self, name: str) -> None:
        """Remove an image record (its objects stay)."""
        final = self.image_file(name)
        with self._lock:
            try:
                os.unlink(final)
            except (FileNotFoundError, IsADirectoryError):
                raise ImageNotFoundError(f"image not found: {name}") from None
            self._summaries.pop(name, None)
            _fsync_dir(os.path.dirname(final))

    def delete_expired_images(self, now_ns: int | None = None) -> list[str]:
        """Delete every image whose expiry time has passed; returns the names."""
        now = time.time_ns() if now_ns is None else now_ns
        deleted = []
        for name in self.list_images():
            summary = self._summary(name)
            if summary is not None and 0 < summary.expires_at <= now:
                with contextlib.suppress(ImageNotFoundError):
                    self.delete_image(name)
                    deleted.append(name)
        return deleted

    def list_images(self) -> list[str]:
        """Every image name, sorted."""
        names = []
        for directory, _, files in os.walk(self.images_dir):
            relative = os.path.relpath(directory, self.images_dir)
            names += [name if relative == "." else f"{relative}/{name}" for name in files]
        return sorted(names)

    def list_directories(self) -> list[str]:
        """Every directory holding images or directories, sorted."""
        names = []
        for directory, subdirs, _ in os.walk(self.images_dir):
            relative = os.path.relpath(directory, self.images_dir)
            names += [name if relative == "." else f"{relative}/{name}" for name in subdirs]
        return sorted(names)

    def find_latest_image(
        self,
        directory: str,
        build_commit_id: str = "",
        tags_to_match: TagsToMatch | None = None,
        *,
        now_ns: int | None = None,
    ) -> str | None:
        """The newest (by ``created_on``) unexpired image directly in
        ``directory`` whose ``build_commit_id`` or ``build_branch`` equals
        ``build_commit_id`` (if given) and whose tags match ``tags_to_match``;
        ``None`` if there is none (or no such directory)."""
        directory = check_directory_name(directory)
        now = time.time_ns() if now_ns is None else now_ns
        try:
            leaves = os.listdir(os.path.join(self.images_dir, directory))
        except (FileNotFoundError, NotADirectoryError):
            return None
        best: tuple[int, str] | None = None
        for leaf in leaves:
            summary = self._summary(f"{directory}/{leaf}")
            if summary is None or 0 < summary.expires_at <= now:
                continue
            if build_commit_id and build_commit_id not in (
                summary.build_commit_id,
                summary.build_branch,
            ):
                continue
            if not _tags_match(summary.tags, tags_to_match):
                continue
            if best is None or (summary.created_on, leaf) > best:
                best = (summary.created_on, leaf)
        return None if best is None else f"{directory}/{best[1]}"

    def reserve_image_name(self, stream: str, epoch: float) -> str:
        """A name ``<stream>/<local time of epoch>`` that no image has and
        that this store has not handed out before; if the second is taken,
        the next free second is used."""
        stream = check_directory_name(stream)
        second = int(epoch // 1)
        with self._lock:
            reserved = self._reserved.setdefault(stream, set())
            while True:
                name = f"{stream}/{time.strftime(DATESTAMP_FORMAT, time.localtime(second))}"
                if name not in reserved and not os.path.lexists(self.image_file(name)):
                    reserved.add(name)
                    return name
                second += 1

    def _check_objects(self, image: Image) -> None:
        missing = sorted(h.hex() for h in image.object_hashes() if not self.has_object(h.hex()))
        if len(missing) == 1:
            raise MissingObjectError(f"object: {missing[0]} is not available")
        if missing:
            raise MissingObjectError(
                f"{len(missing)} objects are not available (first: {missing[0]})"
            )

    def _read_record(self, name: str) -> bytes | None:
        try:
            with open(self.image_file(name), "rb") as f:
                return f.read()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None

    def _summary(self, name: str) -> _Summary | None:
        """The record's summary, cached while the file is unchanged; ``None``
        for records that are missing or cannot be parsed."""
        try:
            st = os.stat(self.image_file(name))
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        cached = self._summaries.get(name)
        if cached is not None and cached[0] == key:
            return cached[1]
        summary = self._parse_summary(name)
        self._summaries[name] = (key, summary)
        return summary

    def _parse_summary(self, name: str) -> _Summary | None:
        data = self._read_record(name)
        try:
            value = _decode_json(data) if data else None
            if not isinstance(value, dict):
                return None
            # Only the top-level fields matter: skip the file-system.
            image = image_from_json({k: v for k, v in value.items() if k != "FileSystem"})
        except (ValueError, ImageFormatError):
            return None
        return _Summary(
            image.created_on,
            image.expires_at,
            image.build_commit_id,
            image.build_branch,
            image.tags or {},
        )

    # ------------------------------------------------------------------ files

    @contextlib.contextmanager
    def _new_file(self, *, named: bool = False) -> Iterator[_NewFile]:
        """A new file (mode 0644) in ``tmp/``: unnamed (``O_TMPFILE``) where
        the kernel supports it, so a crash leaves nothing behind; otherwise
        named ``<pid>.<token>.<n>`` and removed on exit unless renamed."""
        fd, path = self._open_new(named)
        try:
            yield _NewFile(fd, path)
        finally:
            os.close(fd)
            if path is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)

    def _open_new(self, named: bool) -> tuple[int, str | None]:
        if self._use_tmpfile and not named:
            try:
                flags = os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC
                return os.open(self.tmp_dir, flags, 0o644), None
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                    raise
                self._use_tmpfile = False
        path = os.path.join(self.tmp_dir, f"{os.getpid()}.{_PROCESS_TOKEN}.{next(self._counter)}")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        return os.open(path, flags, 0o644), path

    def _make_dirs(self, directory: str, sync: bool) -> None:
        if os.path.isdir(directory):
            return
        try:
            os.makedirs(directory, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as exc:
            raise StoreError(f"cannot create directory {directory}: {exc}") from None
        if sync:
            parent = directory
            while parent not in (self.path, os.path.dirname(parent)):
                parent = os.path.dirname(parent)
                _fsync_dir(parent)

    def _recover_tmp(self) -> None:
        for name in os.listdir(self.tmp_dir):
            if _temp_in_use(name):
                continue
            path = os.path.join(self.tmp_dir, name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)


class AsyncImageStore:
    """The ``ImageStore`` interface over a ``LocalImageStore``: every call
    runs in the thread pool, so the reactor never blocks on the disk."""

    def __init__(self, local: LocalImageStore, reactor: Any, threadpool: Any) -> None:
        self.local = local
        self._reactor = reactor
        self._threadpool = threadpool

    async def _call(self, fn: Any, *args: Any) -> Any:
        return await deferToThreadPool(self._reactor, self._threadpool, fn, *args)

    async def find_latest_image(
        self,
        directory: str,
        build_commit_id: str = "",
        tags_to_match: TagsToMatch | None = None,
    ) -> str | None:
        """See ``LocalImageStore.find_latest_image``."""
        return await self._call(
            self.local.find_latest_image, directory, build_commit_id, tags_to_match
        )

    async def get_image(self, name: str) -> Image | None:
        """See ``LocalImageStore.get_image``."""
        return await self._call(self.local.get_image, name)

    async def get_object(self, hash_hex: str) -> bytes:
        """See ``LocalImageStore.read_object``."""
        return await self._call(self.local.read_object, hash_hex)

    async def add_object(self, data: bytes) -> str:
        """See ``LocalImageStore.put_object_bytes``."""
        return await self._call(self.local.put_object_bytes, data)

    async def has_object(self, hash_hex: str) -> bool:
        """See ``LocalImageStore.has_object``."""
        return await self._call(self.local.has_object, hash_hex)

    async def add_image(self, name: str, image: Image) -> None:
        """See ``LocalImageStore.add_image``."""
        await self._call(self.local.add_image, name, image)

    async def change_image_expiration(self, name: str, expires_at_ns: int) -> bool:
        """See ``LocalImageStore.change_image_expiration``."""
        return await self._call(self.local.change_image_expiration, name, expires_at_ns)

    async def delete_expired_images(self) -> list[str]:
        """See ``LocalImageStore.delete_expired_images``."""
        return await self._call(self.local.delete_expired_images)

    async def collect_garbage(self) -> tuple[int, int]:
        """See ``LocalImageStore.collect_garbage``."""
        return await self._call(self.local.collect_garbage)

    async def list_images(self) -> list[str]:
        """See ``LocalImageStore.list_images``."""
        return await self._call(self.local.list_images)

    async def list_directories(self) -> list[str]:
        """See ``LocalImageStore.list_directories``."""
        return await self._call(self.local.list_directories)

    async def delete_image(self, name: str) -> None:
        """See ``LocalImageStore.delete_image``."""
        await self._call(self.local.delete_image, name)

    async def reserve_image_name(self, stream: str, epoch: float) -> str:
        """See ``LocalImageStore.reserve_image_name``."""
        return await self._call(self.local.reserve_image_name, stream, epoch)


# ---------------------------------------------------------------------- names


def check_directory_name(name: str) -> str:
    """Validate a directory (stream) name: relative, ``/``-separated, with no
    empty, ``.`` or ``..`` components and no NUL. Returns it unchanged."""
    if not isinstance(name, str) or not name:
        raise InvalidNameError(f"invalid name: {name!r}")
    if name.startswith("/") or "\0" in name:
        raise InvalidNameError(f"invalid name: {name!r}")
    if any(part in ("", ".", "..") for part in name.split("/")):
        raise InvalidNameError(f"invalid name: {name!r}")
    return name


def check_image_name(name: str) -> str:
    """Validate an image name: a safe directory name with at least two
    components (``<directory>/<leaf>``)."""
    check_directory_name(name)
    if "/" not in name:
        raise InvalidNameError(f"invalid image name (no directory): {name!r}")
    return name


def check_new_image_name(name: str) -> str:
    """Validate the name of an image to add: ``<stream>/<YYYY-MM-DD:HH:MM:SS>``."""
    check_image_name(name)
    if not _DATESTAMP.fullmatch(name.rsplit("/", 1)[1]):
        raise InvalidNameError(f"invalid image name (expected <stream>/<datestamp>): {name!r}")
    return name


def _check_hash(hash_hex: str) -> str:
    if not isinstance(hash_hex, str) or not _HEX_HASH.fullmatch(hash_hex):
        raise StoreError(f"bad object id: {hash_hex!r}")
    return hash_hex


def _tags_match(tags: dict[str, str], tags_to_match: TagsToMatch | None) -> bool:
    for key, values in (tags_to_match or {}).items():
        if key not in tags or tags[key] not in values:
            return False
    return True


# ---------------------------------------------------------------------- files


def _encode_record(image: Image) -> bytes:
    # surrogateescape keeps file names that are not UTF-8 byte-exact.
    return dumps_image(image).encode("utf-8", "surrogateescape") + b"\n"


def _decode_json(data: bytes) -> Any:
    return json.loads(data.decode("utf-8", "surrogateescape"))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_libc: Any = None


def _syncfs(path: str) -> None:
    """Flush the file-system holding ``path`` (one syscall instead of an
    fsync per file)."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    syncfs = getattr(_libc, "syncfs", None)
    if syncfs is None:
        os.sync()
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if syncfs(fd) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, os.strerror(errno), path)
    finally:
        os.close(fd)


def _temp_in_use(name: str) -> bool:
    """Whether a temporary file may belong to a live writer: its name starts
    with the pid and process token of the process that made it."""
    pid_text, _, rest = name.partition(".")
    if not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return rest.startswith(_PROCESS_TOKEN + ".")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
