"""The image records of the embedded store: ``images/<stream>/<datestamp>``.

A record is the image in the Go model's JSON, on one line. It is written in
``tmp/`` and linked into place (a new record; ``link`` never overwrites, so a
name cannot be taken twice) or renamed over the old one (a changed expiry),
and only after every object it references is present and durable.

Queries (``find_latest_image``, expiry) read only the top-level fields of a
record and cache them while the file is unchanged, so they do not parse file
systems. :class:`ImageRecords` is synchronous and thread-safe; it is part of
``LocalImageStore``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import stat
import threading
import time
from dataclasses import dataclass
from typing import Any

from imaginator.image.model import (
    Image,
    ImageFormatError,
    dumps_image,
    image_from_json,
    loads_image,
)
from imaginator.store.base import (
    ImageExistsError,
    ImageNotFoundError,
    MissingObjectError,
    StoreError,
    TagsToMatch,
)
from imaginator.store.files import TempArea, fsync_dir, write_all
from imaginator.store.names import (
    DATESTAMP_FORMAT,
    check_directory_name,
    check_image_name,
    check_new_image_name,
)
from imaginator.store.objects import ObjectStore

__all__ = ["CREATED_BY", "ImageRecords"]

CREATED_BY = "imaginator"
"""``CreatedBy`` of a stored image that does not name its creator."""


@dataclass(frozen=True, slots=True)
class _Summary:
    """The fields of an image record that ``find_latest_image`` needs."""

    created_on: int
    expires_at: int
    build_commit_id: str
    build_branch: str
    tags: dict[str, str]


class ImageRecords:
    """The ``images/`` directory of the store at ``root``.

    ``lock`` is held while a record is written, changed or removed and while
    a name is reserved; garbage collection holds it too, so no record appears
    while it decides which objects are unreferenced.
    """

    def __init__(self, root: str, images_dir: str, temp: TempArea, objects: ObjectStore) -> None:
        self.lock = threading.Lock()
        self.images_dir = images_dir
        self._root = root
        self._temp = temp
        self._objects = objects
        self._reserved: dict[str, set[str]] = {}
        self._summaries: dict[str, tuple[tuple[int, int, int], _Summary | None]] = {}

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
        self._objects.flush()
        stored = dataclasses.replace(
            image,
            created_on=image.created_on or time.time_ns(),
            created_by=image.created_by or CREATED_BY,
        )
        data = _encode_record(stored)
        with self.lock:
            self._make_dirs(os.path.dirname(final), sync=True)
            with self._temp.new_file() as new:
                write_all(new.fd, data)
                os.fsync(new.fd)
                try:
                    new.link(final)
                except FileExistsError:
                    raise ImageExistsError(f"image: {name} already exists") from None
            fsync_dir(os.path.dirname(final))
        return stored

    def change_image_expiration(self, name: str, expires_at_ns: int) -> bool:
        """Lengthen the image's life to ``expires_at_ns`` (ns since the epoch, 0 = never).

        An expiry is only ever lengthened: a request for an earlier time than
        the image already has (or any time, for an image that never expires)
        changes nothing. Returns whether the record changed.
        """
        with self.lock:
            image = self.get_image(name)
            if image is None:
                raise ImageNotFoundError(f"image not found: {name}")
            current = image.expires_at
            if current == 0 or (expires_at_ns != 0 and expires_at_ns <= current):
                return False
            data = _encode_record(dataclasses.replace(image, expires_at=expires_at_ns))
            final = self.image_file(name)
            with self._temp.new_file(named=True) as new:
                write_all(new.fd, data)
                os.fsync(new.fd)
                assert new.path is not None
                os.replace(new.path, final)
            fsync_dir(os.path.dirname(final))
            return True

    def delete_image(self, name: str) -> None:
        """Remove an image record (its objects stay)."""
        final = self.image_file(name)
        with self.lock:
            try:
                os.unlink(final)
            except (FileNotFoundError, IsADirectoryError):
                raise ImageNotFoundError(f"image not found: {name}") from None
            self._summaries.pop(name, None)
            fsync_dir(os.path.dirname(final))

    def delete_expired_images(self, now_ns: int | None = None) -> list[str]:
        """Delete every image whose expiry time has passed; returns the names."""
        now = time.time_ns() if now_ns is None else now_ns
        deleted = []
        for name in self.list_images():
            summary = self._summary(name)
            if summary is not None and 0 < summary.expires_at <= now:
                try:
                    self.delete_image(name)
                except ImageNotFoundError:
                    continue
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
        with self.lock:
            reserved = self._reserved.setdefault(stream, set())
            while True:
                name = f"{stream}/{time.strftime(DATESTAMP_FORMAT, time.localtime(second))}"
                if name not in reserved and not os.path.lexists(self.image_file(name)):
                    reserved.add(name)
                    return name
                second += 1

    def _check_objects(self, image: Image) -> None:
        has_object = self._objects.has_object
        missing = sorted(h.hex() for h in image.object_hashes() if not has_object(h.hex()))
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

    def _make_dirs(self, directory: str, sync: bool) -> None:
        if os.path.isdir(directory):
            return
        try:
            os.makedirs(directory, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as exc:
            raise StoreError(f"cannot create directory {directory}: {exc}") from None
        if sync:
            parent = directory
            while parent not in (self._root, os.path.dirname(parent)):
                parent = os.path.dirname(parent)
                fsync_dir(parent)


def _tags_match(tags: dict[str, str], tags_to_match: TagsToMatch | None) -> bool:
    for key, values in (tags_to_match or {}).items():
        if key not in tags or tags[key] not in values:
            return False
    return True


def _encode_record(image: Image) -> bytes:
    # surrogateescape keeps file names that are not UTF-8 byte-exact.
    return dumps_image(image).encode("utf-8", "surrogateescape") + b"\n"


def _decode_json(data: bytes) -> Any:
    return json.loads(data.decode("utf-8", "surrogateescape"))
