"""Pushing an exported image (and its SBOM) to an OCI distribution registry.

Every blob is looked for first (``HEAD``) and uploaded only when the
registry does not have it, so pushing an image again, or an image whose
source image was pushed before, sends only what is new. The image manifest
is put under the reference's tag; the SBOM artifact manifest under its
digest, and, for a registry without the OCI 1.1 referrers API (it does not
answer with ``OCI-Subject``), it is listed in the referrers tag schema's
index ``sha256-<manifest digest hex>`` as OCI distribution-spec 1.1 says.
Blocking: call from a thread.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from imaginator.export.oci import (
    INDEX_MEDIA_TYPE,
    MANIFEST_MEDIA_TYPE,
    ExportedImage,
    ExportOptions,
    Layout,
    canonical_json,
    export_image,
)
from imaginator.export.registry import Reference, RegistryClient, RegistryError
from imaginator.export.source import ImageReader

Log = Callable[[str], None]


@dataclass(frozen=True)
class PushResult:
    """Where the image went and what it took: blobs sent and already there."""

    reference: str
    manifest_digest: str
    blobs_sent: int
    blobs_present: int
    bytes_sent: int
    sbom_digest: str = ""


def push_image(
    reader: ImageReader,
    name: str,
    target: Reference,
    client: RegistryClient,
    *,
    options: ExportOptions | None = None,
    work_directory: str | None = None,
    log: Log | None = None,
) -> PushResult:
    """Export image ``name`` into a temporary layout (under
    ``work_directory``, default the system's) and push it to ``target``."""
    with tempfile.TemporaryDirectory(prefix="imaginator-push-", dir=work_directory) as directory:
        exported = export_image(reader, name, directory, options)
        return push_layout(Layout(directory), exported, target, client, log=log)


def push_layout(
    layout: Layout,
    exported: ExportedImage,
    target: Reference,
    client: RegistryClient,
    *,
    log: Log | None = None,
) -> PushResult:
    """Push ``exported`` from ``layout`` to ``target`` (and its SBOM)."""
    say = log or (lambda _line: None)
    repository = target.repository
    digest = exported.manifest["digest"]
    if target.digest and target.digest != digest:
        raise RegistryError(f"{target}: the image's manifest is {digest}")
    manifest_bytes = layout.read_blob(digest)
    manifest = json.loads(manifest_bytes)
    counts = _Counts()
    for blob in [manifest["config"], *manifest["layers"]]:
        _push_blob(layout, client, repository, blob, counts, say)
    headers = client.put_manifest(
        repository, target.tag or digest, MANIFEST_MEDIA_TYPE, manifest_bytes
    )
    _check_digest(headers.get("Docker-Content-Digest"), digest, target)
    say(f"Pushed manifest {digest} as {target}")
    sbom_digest = ""
    if exported.sbom is not None:
        sbom_digest = exported.sbom["digest"]
        sbom_bytes = layout.read_blob(sbom_digest)
        sbom = json.loads(sbom_bytes)
        for blob in [sbom["config"], *sbom["layers"]]:
            _push_blob(layout, client, repository, blob, counts, say)
        headers = client.put_manifest(repository, sbom_digest, MANIFEST_MEDIA_TYPE, sbom_bytes)
        _check_digest(headers.get("Docker-Content-Digest"), sbom_digest, target)
        if not headers.get("OCI-Subject"):
            _add_referrer(client, repository, digest, exported.sbom)
        say(f"Pushed SBOM {sbom_digest} for {digest}")
    return PushResult(
        str(target), digest, counts.sent, counts.present, counts.bytes_sent, sbom_digest
    )


@dataclass
class _Counts:
    sent: int = 0
    present: int = 0
    bytes_sent: int = 0


def _push_blob(
    layout: Layout,
    client: RegistryClient,
    repository: str,
    blob: dict[str, Any],
    counts: _Counts,
    say: Log,
) -> None:
    digest, size = blob["digest"], blob["size"]
    if client.blob_exists(repository, digest):
        counts.present += 1
        say(f"Blob {digest} is already there")
        return
    path = layout.blob_path(digest)
    if os.path.getsize(path) != size:
        raise RegistryError(f"{path}: not {size} bytes")
    client.upload_blob(repository, digest, size, path)
    counts.sent += 1
    counts.bytes_sent += size
    say(f"Sent blob {digest} ({size} bytes)")


def _check_digest(returned: str | None, expected: str, target: Reference) -> None:
    if returned and returned != expected:
        raise RegistryError(
            f"{target}: registry stored manifest as {returned}, expected {expected}"
        )


def _add_referrer(
    client: RegistryClient, repository: str, subject: str, referrer: dict[str, Any]
) -> None:
    """List ``referrer`` in the index tagged ``sha256-<subject hex>``."""
    tag = subject.replace(":", "-")
    found = client.get_manifest(repository, tag, INDEX_MEDIA_TYPE)
    index: dict[str, Any] = {"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": []}
    if found is not None:
        try:
            index = json.loads(found[1])
        except ValueError:
            index = {}
        if not isinstance(index, dict) or not isinstance(index.get("manifests"), list):
            raise RegistryError(f"{repository}:{tag}: not an image index")
    if any(
        isinstance(m, dict) and m.get("digest") == referrer["digest"] for m in index["manifests"]
    ):
        return
    index["manifests"].append(referrer)
    client.put_manifest(repository, tag, INDEX_MEDIA_TYPE, canonical_json(index))
