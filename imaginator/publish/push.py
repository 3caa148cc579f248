"""One push of one image to its stream's registry: the blocking half of publishing.

:func:`push_to_registry` exports the image into a temporary OCI layout
(layers following its ``SourceImage`` chain, the SPDX SBOM attached) and
pushes it with the export room's registry client: under the image's own tag
(:func:`image_tag`), then under each configured tag. Blobs the repository
has already (an earlier push, or the source image's layers pushed to the same
repository) are not sent again. It runs in the daemon's thread pool; a set
``cancelled`` event stops it between two blobs (at shutdown).

The credentials file (``-registryCredentials``) is read at every push, so a
replaced file takes effect without a restart; neither its values nor tokens
appear in a result, an error or a log line.
"""

from __future__ import annotations

import re
import ssl
import tempfile
import threading
from dataclasses import dataclass

from imaginator.config.publish import PublishTarget
from imaginator.export.oci import MANIFEST_MEDIA_TYPE, Layout, export_image
from imaginator.export.push import push_layout
from imaginator.export.registry import (
    Reference,
    RegistryClient,
    RegistryError,
    load_credentials,
)
from imaginator.export.source import ImageReader

__all__ = [
    "PushCancelled",
    "PushOutcome",
    "RegistrySettings",
    "check_registry_file",
    "image_tag",
    "push_to_registry",
]

_DATESTAMP = re.compile(r"(\d{4}-\d{2}-\d{2}):(\d{2}):(\d{2}):(\d{2})")
_TAG_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass(frozen=True)
class RegistrySettings:
    """The daemon's ``-registryCredentials`` and ``-registryCA`` (empty: none,
    the system's CAs)."""

    credentials_file: str = ""
    ca_file: str = ""


@dataclass(frozen=True)
class PushOutcome:
    """A finished push: ``reference`` is ``host/repository@digest``; ``tags``
    every tag the manifest was put under, the image's own first."""

    reference: str
    digest: str
    tags: tuple[str, ...]
    blobs_sent: int
    blobs_present: int
    bytes_sent: int
    sbom_digest: str = ""


class PushCancelled(Exception):
    """The push was stopped between two blobs (the daemon is stopping)."""


def image_tag(image_name: str) -> str:
    """The tag an image is pushed under: its name's last component made a
    valid tag, ``stream/2024-05-01:12:30:00`` -> ``2024-05-01_12-30-00``."""
    leaf = image_name.rsplit("/", 1)[-1]
    match = _DATESTAMP.fullmatch(leaf)
    if match:
        return f"{match.group(1)}_{match.group(2)}-{match.group(3)}-{match.group(4)}"
    tag = _TAG_UNSAFE.sub("-", leaf).lstrip(".-")[:128]
    return tag or "image"


def check_registry_file(flag: str, path: str) -> None:
    """Check the file of ``-registryCredentials`` or ``-registryCA`` at start-up
    (blocking); ``RegistryError`` naming the file and what is wrong, never a
    value in it."""
    if flag == "registryCredentials":
        load_credentials(path, "")
        return
    try:
        ssl.create_default_context(cafile=path)
    except ssl.SSLError:  # an OSError too: first
        raise RegistryError(f"{path}: no usable PEM certificate in the file") from None
    except OSError as exc:
        raise RegistryError(f"{path}: {exc.strerror or exc}") from None


def push_to_registry(
    reader: ImageReader,
    image_name: str,
    target: PublishTarget,
    settings: RegistrySettings,
    *,
    work_directory: str | None = None,
    cancelled: threading.Event | None = None,
) -> PushOutcome:
    """Export ``image_name`` and push it to ``target`` under its own tag and
    ``target.tags`` (blocking). Raises ``RegistryError``, ``ExportError``,
    ``StoreError``, ``OSError`` or ``PushCancelled``."""
    stop = cancelled or threading.Event()

    def check(_progress: str = "") -> None:
        if stop.is_set():
            raise PushCancelled("daemon shutting down")

    own_tag = image_tag(image_name)
    credentials = None
    if settings.credentials_file:
        credentials = load_credentials(settings.credentials_file, target.registry)
    client = RegistryClient(
        target.registry, credentials=credentials, ca_file=settings.ca_file or None
    )
    with tempfile.TemporaryDirectory(prefix="imaginator-publish-", dir=work_directory) as directory:
        check()
        exported = export_image(reader, image_name, directory)
        check()
        layout = Layout(directory)
        reference = Reference(target.registry, target.repository, own_tag)
        result = push_layout(layout, exported, reference, client, log=check)
        manifest = layout.read_blob(result.manifest_digest)
        tags = [own_tag]
        for tag in target.tags:
            if tag in tags:
                continue
            check()
            client.put_manifest(target.repository, tag, MANIFEST_MEDIA_TYPE, manifest)
            tags.append(tag)
    return PushOutcome(
        reference=f"{target}@{result.manifest_digest}",
        digest=result.manifest_digest,
        tags=tuple(tags),
        blobs_sent=result.blobs_sent,
        blobs_present=result.blobs_present,
        bytes_sent=result.bytes_sent,
        sbom_digest=result.sbom_digest,
    )
