"""Garbage collection of the embedded store: objects no image record references.

A build stores its objects before it writes its image record, so between the
two its objects are unreferenced. The daemon therefore collects garbage only
while no build runs, and :func:`collect_garbage` holds the records' lock, so
no record is written while it decides what to delete.
"""

from __future__ import annotations

import contextlib
import os

from imaginator.store.objects import ObjectStore
from imaginator.store.records import ImageRecords

__all__ = ["collect_garbage", "referenced_objects"]


def referenced_objects(records: ImageRecords) -> set[str]:
    """The hex ids of every object some image record references."""
    referenced: set[str] = set()
    for name in records.list_images():
        image = records.get_image(name)
        if image is not None:
            referenced.update(h.hex() for h in image.object_hashes())
    return referenced


def collect_garbage(records: ImageRecords, objects: ObjectStore) -> tuple[int, int]:
    """Delete every object no image references; returns (objects, bytes) freed."""
    with records.lock:
        referenced = referenced_objects(records)
        removed = freed = 0
        for hash_hex, path in objects.object_files():
            if hash_hex in referenced:
                continue
            with contextlib.suppress(FileNotFoundError):
                freed += os.lstat(path).st_size
                os.unlink(path)
                removed += 1
        return removed, freed
