"""How the export room reads images: a narrow, synchronous protocol.

Exports run in a worker thread (the daemon calls them through
``deferToThreadPool``; ``imagetool`` calls them directly), so the protocol is
blocking. The embedded store (``LocalImageStore``) provides it as it is; a
remote imageserver backend only has to offer the same two calls.
"""

from __future__ import annotations

from typing import BinaryIO, Protocol

from imaginator.image.model import Image


class ImageReader(Protocol):
    """Images by name and objects by SHA-512 (128 lowercase hex digits)."""

    def get_image(self, name: str) -> Image | None:
        """The image called ``name``; ``None`` if there is none (``StoreError``
        for an unreadable record or an impossible name)."""
        ...

    def open_object(self, hash_hex: str) -> BinaryIO:
        """The object's content, open for reading (``MissingObjectError`` if
        absent); the caller closes it."""
        ...


class ExportError(Exception):
    """An image cannot be exported (no file-system, a name a layer cannot
    carry, a missing source…); the message names the image or path."""
