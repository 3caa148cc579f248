"""Writing an image as an OCI image layout (image-spec 1.1).

``export_image`` writes the image into a layout directory (new, empty, or an
existing layout to add to): ``oci-layout``, ``index.json`` and the blobs under
``blobs/sha256/``. The image's layers follow its ``SourceImage`` chain while
the sources are in the store: the oldest ancestor is a full layer and each
later image the diff layer against its source, so a derived image shares its
source's layer blobs byte for byte (in one layout and in a registry). The
config carries the image's tags as labels; the manifest's annotations carry
its name, source image, commit and the computed files its layers leave out.
The SPDX SBOM is attached as an OCI 1.1 artifact whose ``subject`` is the
image manifest, listed in ``index.json`` beside the image.

Blobs are written to a temporary file, hashed on the way and renamed to their
digest; ``index.json`` is replaced atomically. Blocking: call from a thread.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from imaginator.export.sbom import SPDX_MEDIA_TYPE, image_sbom, rfc3339
from imaginator.export.source import ExportError, ImageReader
from imaginator.export.tarlayer import (
    LayerFile,
    Member,
    TimePolicy,
    diff_members,
    layer_members,
    write_layer,
)
from imaginator.goformats.units import go_arch
from imaginator.image.model import ComputedRegularInode, Image
from imaginator.store.base import StoreError

MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
EMPTY_MEDIA_TYPE = "application/vnd.oci.empty.v1+json"
EMPTY_JSON = b"{}"
REF_NAME = "org.opencontainers.image.ref.name"
CREATED = "org.opencontainers.image.created"
IMAGE_NAME = "org.imaginator.image.name"
SOURCE_IMAGE = "org.imaginator.image.source"
COMPUTED_FILES = "org.imaginator.image.computed-files"
LAYOUT_VERSION = "1.0.0"
#: Source images followed at most (a chain this deep is a mistake or a loop).
MAX_LAYERS = 32

Descriptor = dict[str, Any]


@dataclass(frozen=True)
class ExportOptions:
    """``source_date_epoch`` clamps every time written; ``architecture`` is
    the config's (GOARCH name, default this machine's); ``sbom`` attaches the
    SPDX document; ``ref_name`` names the image in ``index.json`` (default:
    the image name)."""

    source_date_epoch: int | None = None
    architecture: str = field(default_factory=go_arch)
    sbom: bool = True
    ref_name: str = ""


@dataclass(frozen=True)
class ExportedImage:
    """What ``export_image`` wrote: the image manifest's descriptor, its
    layers (oldest first) with the image each comes from, and the SBOM
    artifact's descriptor (``None`` without SBOM)."""

    name: str
    manifest: Descriptor
    layers: tuple[tuple[str, LayerFile], ...]
    sbom: Descriptor | None


def canonical_json(value: Any) -> bytes:
    """Compact JSON with sorted keys: the same value always gives the same digest."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8", "surrogateescape"
    )


def descriptor(media_type: str, data: bytes) -> Descriptor:
    return {
        "mediaType": media_type,
        "digest": "sha256:" + hashlib.sha256(data).hexdigest(),
        "size": len(data),
    }


class Layout:
    """An OCI image layout directory, created if new (or empty)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.blobs = os.path.join(directory, "blobs", "sha256")
        marker = os.path.join(directory, "oci-layout")
        try:
            os.makedirs(directory, exist_ok=True)
            if os.path.exists(marker):
                self._check_marker(marker)
            elif os.listdir(directory):
                raise ExportError(f"{directory}: not empty and not an OCI image layout")
            os.makedirs(self.blobs, exist_ok=True)
            if not os.path.exists(marker):
                self._write_atomically(
                    marker, canonical_json({"imageLayoutVersion": LAYOUT_VERSION})
                )
        except OSError as exc:
            raise ExportError(f"{exc.filename or directory}: {exc.strerror or exc}") from None

    @staticmethod
    def _check_marker(marker: str) -> None:
        try:
            with open(marker, "rb") as f:
                value = json.loads(f.read(1 << 16))
        except ValueError:
            raise ExportError(f"{marker}: not JSON") from None
        if not isinstance(value, dict) or value.get("imageLayoutVersion") != LAYOUT_VERSION:
            raise ExportError(f"{marker}: imageLayoutVersion: expected {LAYOUT_VERSION!r}")

    def blob_path(self, digest: str) -> str:
        algorithm, _, hex_digest = digest.partition(":")
        if algorithm != "sha256" or len(hex_digest) != 64:
            raise ExportError(f"unsupported digest: {digest}")
        return os.path.join(self.blobs, hex_digest)

    def add_bytes(self, media_type: str, data: bytes) -> Descriptor:
        """Store ``data`` as a blob (if it is not there yet)."""
        desc = descriptor(media_type, data)
        path = self.blob_path(desc["digest"])
        if not os.path.exists(path):
            self._write_atomically(path, data)
        return desc

    def add_layer(
        self, members: Iterable[Member], reader: ImageReader, times: TimePolicy
    ) -> LayerFile:
        """Write a layer blob; an identical blob already there is kept."""
        fd, temporary = tempfile.mkstemp(prefix=".tmp-layer-", dir=self.blobs)
        os.close(fd)
        try:
            layer = write_layer(members, reader, times, temporary)
            os.chmod(temporary, 0o644)
            os.replace(temporary, self.blob_path(layer.digest))
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
        return layer

    def read_blob(self, digest: str) -> bytes:
        with open(self.blob_path(digest), "rb") as f:
            return f.read()

    def index(self) -> dict[str, Any]:
        """``index.json``, or an empty index for a new layout."""
        path = os.path.join(self.directory, "index.json")
        try:
            with open(path, "rb") as f:
                value = json.loads(f.read())
        except FileNotFoundError:
            return {"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": []}
        except ValueError:
            raise ExportError(f"{path}: not JSON") from None
        if not isinstance(value, dict) or not isinstance(value.get("manifests", []), list):
            raise ExportError(f"{path}: manifests: expected an array")
        value.setdefault("manifests", [])
        return value

    def write_index(self, index: dict[str, Any]) -> None:
        self._write_atomically(os.path.join(self.directory, "index.json"), canonical_json(index))

    def find(self, ref_name: str) -> Descriptor | None:
        """The descriptor of the manifest called ``ref_name`` in ``index.json``."""
        for entry in self.index()["manifests"]:
            if (
                isinstance(entry, dict)
                and (entry.get("annotations") or {}).get(REF_NAME) == ref_name
            ):
                return entry
        return None

    @staticmethod
    def _write_atomically(path: str, data: bytes) -> None:
        fd, temporary = tempfile.mkstemp(prefix=".tmp-", dir=os.path.dirname(path))
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(temporary, 0o644)
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise


def layer_chain(reader: ImageReader, name: str, image: Image) -> list[tuple[str, Image]]:
    """``(name, image)`` from the oldest ancestor still in the store to
    ``image`` itself, following ``SourceImage``."""
    chain = [(name, image)]
    seen = {name}
    current = image
    while current.source_image and len(chain) < MAX_LAYERS:
        source_name = current.source_image
        if source_name in seen:
            break
        try:
            source = reader.get_image(source_name)
        except StoreError:
            source = None
        if source is None or source.file_system is None:
            break
        chain.append((source_name, source))
        seen.add(source_name)
        current = source
    chain.reverse()
    return chain


def export_image(
    reader: ImageReader, name: str, directory: str, options: ExportOptions | None = None
) -> ExportedImage:
    """Write image ``name`` into the OCI layout ``directory``."""
    options = options or ExportOptions()
    image = reader.get_image(name)
    if image is None:
        raise ExportError(f"unknown image: {name}")
    if image.file_system is None:
        raise ExportError(f"image {name} has no file-system")
    layout = Layout(directory)
    sde = options.source_date_epoch
    layers: list[tuple[str, LayerFile]] = []
    history = []
    previous: Image | None = None
    for layer_name, layer_image in layer_chain(reader, name, image):
        fs = layer_image.file_system
        assert fs is not None
        if previous is None:
            members = layer_members(fs)
        else:
            assert previous.file_system is not None
            members = diff_members(previous.file_system, fs)
        times = TimePolicy.for_image(layer_image, sde)
        layers.append((layer_name, layout.add_layer(members, reader, times)))
        history.append(
            {"created": rfc3339(times.default), "created_by": f"imaginator {layer_name}"}
        )
        previous = layer_image
    created = rfc3339(TimePolicy.for_image(image, sde).default)
    config: dict[str, Any] = {
        "created": created,
        "architecture": options.architecture,
        "os": "linux",
        "config": {"Labels": dict(sorted((image.tags or {}).items()))} if image.tags else {},
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for _, layer in layers]},
        "history": history,
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": layout.add_bytes(CONFIG_MEDIA_TYPE, canonical_json(config)),
        "layers": [
            {"mediaType": LAYER_MEDIA_TYPE, "digest": layer.digest, "size": layer.size}
            for _, layer in layers
        ],
        "annotations": _annotations(name, image, created),
    }
    manifest_desc = layout.add_bytes(MANIFEST_MEDIA_TYPE, canonical_json(manifest))
    sbom_desc = None
    if options.sbom:
        document = image_sbom(reader, name, image, kind="spdx", source_date_epoch=sde)
        sbom_desc = _add_sbom(layout, document, manifest_desc, name, created)
    ref_name = options.ref_name or name
    image_entry = {
        **manifest_desc,
        "platform": {"architecture": options.architecture, "os": "linux"},
        "annotations": {IMAGE_NAME: name, REF_NAME: ref_name},
    }
    _update_index(layout, name, ref_name, [image_entry, *([sbom_desc] if sbom_desc else [])])
    return ExportedImage(name, manifest_desc, tuple(layers), sbom_desc)


def _annotations(name: str, image: Image, created: str) -> dict[str, str]:
    annotations = {CREATED: created, IMAGE_NAME: name}
    if image.source_image:
        annotations[SOURCE_IMAGE] = image.source_image
    if image.build_commit_id:
        annotations["org.opencontainers.image.revision"] = image.build_commit_id
    if image.build_git_url:
        annotations["org.opencontainers.image.source"] = image.build_git_url
    assert image.file_system is not None
    computed = [
        {"Path": path, "Source": inode.source}
        for path, _inum, inode in image.file_system.walk()
        if isinstance(inode, ComputedRegularInode)
    ]
    if computed:
        # Their content is made per machine: a layer cannot carry it.
        annotations[COMPUTED_FILES] = json.dumps(computed, sort_keys=True, ensure_ascii=False)
    return annotations


def _add_sbom(
    layout: Layout, document: bytes, subject: Descriptor, name: str, created: str
) -> Descriptor:
    """The SBOM as an OCI 1.1 artifact manifest referring to ``subject``."""
    empty = layout.add_bytes(EMPTY_MEDIA_TYPE, EMPTY_JSON)
    empty["data"] = base64.b64encode(EMPTY_JSON).decode("ascii")
    layer = layout.add_bytes(SPDX_MEDIA_TYPE, document)
    layer["annotations"] = {"org.opencontainers.image.title": "sbom.spdx.json"}
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "artifactType": SPDX_MEDIA_TYPE,
        "config": empty,
        "layers": [layer],
        "subject": subject,
        "annotations": {CREATED: created, IMAGE_NAME: name},
    }
    desc = layout.add_bytes(MANIFEST_MEDIA_TYPE, canonical_json(manifest))
    return {**desc, "artifactType": SPDX_MEDIA_TYPE, "annotations": {IMAGE_NAME: name}}


def _update_index(layout: Layout, name: str, ref_name: str, entries: list[Descriptor]) -> None:
    """Replace this image's entries (and any under the same ref name)."""
    index = layout.index()
    kept = []
    for entry in index["manifests"]:
        annotations = (entry.get("annotations") or {}) if isinstance(entry, dict) else {}
        if annotations.get(IMAGE_NAME) == name or annotations.get(REF_NAME) == ref_name:
            continue
        kept.append(entry)
    index["manifests"] = kept + entries
    index.setdefault("schemaVersion", 2)
    index.setdefault("mediaType", INDEX_MEDIA_TYPE)
    layout.write_index(index)
