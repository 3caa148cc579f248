"""The interface every image store offers to the daemon.

Two backends implement it: the embedded store (``imaginator.store.local``,
through ``AsyncImageStore``) and a remote Dominator imageserver
(``imaginator.store.imageserver``). Names follow the Dominator convention
``<stream>/<YYYY-MM-DD:HH:MM:SS>``; object ids are SHA-512 digests as 128
lowercase hex characters.

Either way the pipeline reads and writes file contents as files of a local
object store (``LocalImageStore``: the scanner stores into it, the unpacker
reads ``object_path``): for the embedded backend that *is* the store; for a
remote one it is a cache in front of the server, which ``fetch_objects``
fills before an unpack and ``add_image`` uploads from.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import NamedTuple, Protocol, runtime_checkable

from imaginator.image.model import Image

TagsToMatch = Mapping[str, Sequence[str]]


class StoreError(Exception):
    """A store operation failed; the message is fit for a build log."""


class InvalidNameError(StoreError):
    """An image or directory name is not acceptable."""


class ImageExistsError(StoreError):
    """An image with that name already exists."""


class ImageNotFoundError(StoreError):
    """No image has that name."""


class MissingObjectError(StoreError):
    """An object is not in the store (e.g. one an image refers to)."""


class HashMismatchError(StoreError):
    """Data did not have the SHA-512 it was announced with."""


class Transferred(NamedTuple):
    """How many objects (and bytes) an operation moved."""

    objects: int = 0
    bytes: int = 0


@runtime_checkable
class ImageStore(Protocol):
    """Asynchronous access to images and objects (call from the reactor)."""

    async def find_latest_image(
        self,
        directory: str,
        build_commit_id: str = "",
        tags_to_match: TagsToMatch | None = None,
    ) -> str | None:
        """The name of the newest image (by ``created_on``) directly inside
        ``directory`` whose build commit id or branch equals
        ``build_commit_id`` (if given) and whose tags match (for each key,
        the image's value is one of the listed values); ``None`` if none."""
        ...

    async def get_image(self, name: str) -> Image | None:
        """The image called ``name``, or ``None`` if there is none."""
        ...

    async def image_exists(self, name: str) -> bool:
        """Whether an image called ``name`` exists."""
        ...

    async def get_object(self, hash_hex: str) -> bytes:
        """The content of an object; ``MissingObjectError`` if absent."""
        ...

    async def fetch_objects(self, hashes: Collection[bytes]) -> Transferred:
        """Make every listed object readable in the local object store (the
        remote backend downloads what its cache lacks, checking each SHA-512;
        the embedded store has them already). Returns what was downloaded."""
        ...

    async def add_object(self, data: bytes) -> str:
        """Store ``data`` (non-empty) and return its SHA-512 hex id (the
        remote backend keeps it in its cache until an image that references
        it is added)."""
        ...

    async def has_object(self, hash_hex: str) -> bool:
        """Whether the object is stored."""
        ...

    async def add_image(self, name: str, image: Image) -> None:
        """Store ``image`` as ``name``; every object it references must be
        stored already (the remote backend first uploads those the server
        lacks from its cache). Sets ``created_on``/``created_by`` if unset.
        ``ImageExistsError`` if the name is taken (or, on an imageserver,
        was taken by an image since deleted)."""
        ...

    async def change_image_expiration(self, name: str, expires_at_ns: int) -> bool:
        """Lengthen the image's life to ``expires_at_ns`` (nanoseconds since the
        epoch; 0 = never); an expiry is only ever lengthened. Returns whether
        the expiry changed."""
        ...

    async def list_images(self) -> list[str]:
        """All image names, sorted."""
        ...

    async def list_directories(self) -> list[str]:
        """All directory names (streams and their parents), sorted."""
        ...

    async def delete_image(self, name: str) -> None:
        """Remove an image; ``ImageNotFoundError`` if there is none."""
        ...

    async def reserve_image_name(self, stream: str, epoch: float) -> str:
        """A new, unused name ``<stream>/<YYYY-MM-DD:HH:MM:SS>`` for the
        local time ``epoch`` (seconds), or a later second if taken."""
        ...
