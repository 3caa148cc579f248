"""The embedded, content-addressed image store under ``<stateDir>/store``.

Layout::

    objects/<hh>/<hh>/<124 hex>     object contents, named by their SHA-512 (``objects``)
    images/<stream>/<datestamp>     image records, Go model JSON on one line (``records``)
    tmp/                            files being written (``files``)

Readers only ever see complete files, a crash leaves at most named temporary
files (removed when the next ``LocalImageStore`` opens), nothing is ever
overwritten by ``link``, and an image record is written only after every
object it references is present and durable; the modules named above say
how. Names are checked in ``names``, garbage collection is in ``garbage``.

``LocalImageStore`` puts these together behind one synchronous, thread-safe
object: the daemon calls it from its thread pool (directly while scanning, or
through ``AsyncImageStore``, defined in ``asyncstore`` and importable from
here) and ``imagetool`` calls it directly.
"""

from __future__ import annotations

import os
from typing import BinaryIO

from imaginator.image.model import Image
from imaginator.store import garbage
from imaginator.store.asyncstore import AsyncImageStore
from imaginator.store.base import StoreError, TagsToMatch
from imaginator.store.files import TempArea
from imaginator.store.objects import IncomingObject, ObjectStore
from imaginator.store.records import ImageRecords

__all__ = ["AsyncImageStore", "LocalImageStore"]


class LocalImageStore:
    """Images and objects in a directory tree (see the module docstring).

    ``objects``, ``records`` and ``temp`` are the parts; every method here
    hands over to one of them.
    """

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
        self.temp = TempArea(self.tmp_dir)
        self.objects = ObjectStore(self.objects_dir, self.temp, self.path)
        self.records = ImageRecords(self.path, self.images_dir, self.temp, self.objects)
        self.temp.recover()

    # ------------------------------------------------------------------ objects

    def object_path(self, hash_hex: str) -> str:
        """See ``ObjectStore.object_path``."""
        return self.objects.object_path(hash_hex)

    def has_object(self, hash_hex: str) -> bool:
        """See ``ObjectStore.has_object``."""
        return self.objects.has_object(hash_hex)

    def open_object(self, hash_hex: str) -> BinaryIO:
        """See ``ObjectStore.open_object``."""
        return self.objects.open_object(hash_hex)

    def read_object(self, hash_hex: str) -> bytes:
        """See ``ObjectStore.read_object``."""
        return self.objects.read_object(hash_hex)

    def put_object_bytes(self, data: bytes, *, sync: bool = True) -> str:
        """See ``ObjectStore.put_object_bytes``."""
        return self.objects.put_object_bytes(data, sync=sync)

    def put_hashed_bytes(self, data: bytes, hash_hex: str, *, sync: bool = True) -> bool:
        """See ``ObjectStore.put_hashed_bytes``."""
        return self.objects.put_hashed_bytes(data, hash_hex, sync=sync)

    def put_object_file(self, path: str, hash_hex: str, *, sync: bool = True) -> bool:
        """See ``ObjectStore.put_object_file``."""
        return self.objects.put_object_file(path, hash_hex, sync=sync)

    def put_object_fd(self, fd: int, *, sync: bool = True) -> tuple[str, int, bool]:
        """See ``ObjectStore.put_object_fd``."""
        return self.objects.put_object_fd(fd, sync=sync)

    def link_object_fd(self, fd: int, hash_hex: str) -> bool:
        """See ``ObjectStore.link_object_fd``."""
        return self.objects.link_object_fd(fd, hash_hex)

    def import_object_file(self, path: str, *, sync: bool = True) -> tuple[str, int, bool]:
        """See ``ObjectStore.import_object_file``."""
        return self.objects.import_object_file(path, sync=sync)

    def receive_object(self, hash_hex: str) -> IncomingObject:
        """See ``ObjectStore.receive_object``."""
        return self.objects.receive_object(hash_hex)

    def flush(self) -> None:
        """See ``ObjectStore.flush``."""
        self.objects.flush()

    # ------------------------------------------------------------------ images

    def image_file(self, name: str) -> str:
        """See ``ImageRecords.image_file``."""
        return self.records.image_file(name)

    def get_image(self, name: str) -> Image | None:
        """See ``ImageRecords.get_image``."""
        return self.records.get_image(name)

    def add_image(self, name: str, image: Image) -> Image:
        """See ``ImageRecords.add_image``."""
        return self.records.add_image(name, image)

    def change_image_expiration(self, name: str, expires_at_ns: int) -> bool:
        """See ``ImageRecords.change_image_expiration``."""
        return self.records.change_image_expiration(name, expires_at_ns)

    def delete_image(self, name: str) -> None:
        """See ``ImageRecords.delete_image``."""
        self.records.delete_image(name)

    def delete_expired_images(self, now_ns: int | None = None) -> list[str]:
        """See ``ImageRecords.delete_expired_images``."""
        return self.records.delete_expired_images(now_ns)

    def list_images(self) -> list[str]:
        """See ``ImageRecords.list_images``."""
        return self.records.list_images()

    def list_directories(self) -> list[str]:
        """See ``ImageRecords.list_directories``."""
        return self.records.list_directories()

    def find_latest_image(
        self,
        directory: str,
        build_commit_id: str = "",
        tags_to_match: TagsToMatch | None = None,
        *,
        now_ns: int | None = None,
    ) -> str | None:
        """See ``ImageRecords.find_latest_image``."""
        return self.records.find_latest_image(
            directory, build_commit_id, tags_to_match, now_ns=now_ns
        )

    def reserve_image_name(self, stream: str, epoch: float) -> str:
        """See ``ImageRecords.reserve_image_name``."""
        return self.records.reserve_image_name(stream, epoch)

    # ------------------------------------------------------- garbage collection

    def referenced_objects(self) -> set[str]:
        """See ``garbage.referenced_objects``."""
        return garbage.referenced_objects(self.records)

    def collect_garbage(self) -> tuple[int, int]:
        """Delete every object no image references; returns (objects, bytes) freed.

        The caller must make sure no image is being written meanwhile (a
        build's objects are unreferenced until its record is added): the
        daemon runs this only while no build runs.
        """
        return garbage.collect_garbage(self.records, self.objects)
