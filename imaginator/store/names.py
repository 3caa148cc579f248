"""Names in the embedded store: image and directory names, object ids.

Image names follow the Dominator convention ``<stream>/<YYYY-MM-DD:HH:MM:SS>``
(a stream name may itself contain ``/``); object ids are SHA-512 digests as
128 lowercase hex characters. Every name that becomes a path below the store
goes through one of these checks first, so none can climb out of it.
"""

from __future__ import annotations

import re

from imaginator.store.base import InvalidNameError, StoreError

__all__ = [
    "DATESTAMP_FORMAT",
    "check_directory_name",
    "check_hash",
    "check_image_name",
    "check_new_image_name",
]

DATESTAMP_FORMAT = "%Y-%m-%d:%H:%M:%S"
"""``time.strftime`` format of the last component of a new image's name."""

_DATESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}:\d{2}:\d{2}:\d{2}")
_HEX_HASH = re.compile(r"[0-9a-f]{128}")


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


def check_hash(hash_hex: str) -> str:
    """Validate an object id (128 lowercase hex characters); returns it unchanged."""
    if not isinstance(hash_hex, str) or not _HEX_HASH.fullmatch(hash_hex):
        raise StoreError(f"bad object id: {hash_hex!r}")
    return hash_hex
