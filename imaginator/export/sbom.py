"""Software bills of materials of an image: SPDX 2.3 JSON and CycloneDX 1.5 JSON.

The package list is the image's ``Packages`` (what the packager's list
command reported when the image was built); the distribution comes from the
image's ``/etc/os-release`` and its package database (``/var/lib/dpkg/status``
means Debian packages), and gives each package a package URL
(``pkg:deb/debian/less@590-2?distro=debian-12``).

The documents are deterministic: the creation time is the image's
``CreatedOn`` second (clamped to ``SOURCE_DATE_EPOCH`` when given), the
document namespace and serial number are UUIDs derived from the image's name,
creation time and package list, and packages keep the image's order.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from imaginator import __version__
from imaginator.export.source import ImageReader
from imaginator.image.model import (
    DirectoryInode,
    FileSystem,
    Image,
    Inode,
    RegularInode,
    SymlinkInode,
    format_go_time,
)

SPDX_MEDIA_TYPE = "application/spdx+json"
CYCLONEDX_MEDIA_TYPE = "application/vnd.cyclonedx+json"
FORMATS = ("spdx", "cyclonedx")
IMAGE_SPDX_ID = "SPDXRef-Image"
_OS_RELEASE_PATHS = ("/etc/os-release", "/usr/lib/os-release")
_MAX_OS_RELEASE = 64 << 10
_MAX_SYMLINKS = 16
_SPDX_ID_UNSAFE = re.compile(r"[^A-Za-z0-9.-]")
_PACKAGE_DATABASES = (
    ("/var/lib/dpkg/status", "deb"),
    ("/lib/apk/db/installed", "apk"),
    ("/var/lib/rpm", "rpm"),
    ("/usr/lib/sysimage/rpm", "rpm"),
)


@dataclass(frozen=True, slots=True)
class Distribution:
    """What the image says about its distribution: the package type of its
    package database (``deb``, ``rpm``, ``apk`` or empty) and ``os-release``."""

    package_type: str = ""
    os_id: str = ""
    version_id: str = ""
    pretty_name: str = ""


# ---------------------------------------------------------------------- the image


def resolve(fs: FileSystem, path: str) -> Inode | None:
    """The inode at absolute ``path`` inside the image, following symbolic
    links inside the image (``None`` if absent or a loop)."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    stack: list[DirectoryInode] = [fs.root]
    followed = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if len(stack) > 1:
                stack.pop()
            continue
        inum = next((i for name, i in stack[-1].entries if name == part), None)
        inode = fs.inode_table.get(inum) if inum is not None else None
        if inode is None:
            return None
        if isinstance(inode, SymlinkInode):
            followed += 1
            if followed > _MAX_SYMLINKS:
                return None
            if inode.symlink.startswith("/"):
                stack = [fs.root]
            parts = [p for p in inode.symlink.split("/") if p not in ("", ".")] + parts
            continue
        if not parts:
            return inode
        if not isinstance(inode, DirectoryInode):
            return None
        stack.append(inode)
    return stack[-1]


def os_release_object(fs: FileSystem) -> RegularInode | None:
    """The image's ``os-release`` file, if it has a reasonably small one."""
    for path in _OS_RELEASE_PATHS:
        inode = resolve(fs, path)
        if isinstance(inode, RegularInode) and 0 < inode.size <= _MAX_OS_RELEASE:
            return inode
    return None


def parse_os_release(data: bytes) -> dict[str, str]:
    """``KEY=value`` lines (values may be quoted) of an ``os-release`` file."""
    values = {}
    for line in data.decode("utf-8", "replace").splitlines():
        key, sep, value = line.strip().partition("=")
        if not sep or not key.isidentifier():
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        values[key] = value
    return values


def distribution(fs: FileSystem, os_release: dict[str, str]) -> Distribution:
    """The image's ``Distribution`` from its tree and parsed ``os-release``."""
    package_type = ""
    for path, kind in _PACKAGE_DATABASES:
        if resolve(fs, path) is not None:
            package_type = kind
            break
    return Distribution(
        package_type,
        os_release.get("ID", ""),
        os_release.get("VERSION_ID", ""),
        os_release.get("PRETTY_NAME", ""),
    )


def read_distribution(reader: ImageReader, image: Image) -> Distribution:
    """``distribution`` with ``os-release`` read through ``reader`` (blocking)."""
    fs = image.file_system
    if fs is None:
        return Distribution()
    inode = os_release_object(fs)
    values: dict[str, str] = {}
    if inode is not None:
        with reader.open_object(inode.hash.hex()) as f:
            values = parse_os_release(f.read(_MAX_OS_RELEASE))
    return distribution(fs, values)


# ---------------------------------------------------------------------- documents


def created_seconds(image: Image, source_date_epoch: int | None = None) -> int:
    """The documents' creation time: ``CreatedOn`` (or ``source_date_epoch``
    when the image has none), never later than ``source_date_epoch``."""
    created = image.created_on // 10**9 if image.created_on > 0 else None
    if created is None:
        return source_date_epoch or 0
    return created if source_date_epoch is None else min(created, source_date_epoch)


def rfc3339(seconds: int) -> str:
    return format_go_time(seconds * 10**9) if seconds else "1970-01-01T00:00:00Z"


def package_url(dist: Distribution, name: str, version: str) -> str:
    """The package URL of a package, or ``""`` when the type is unknown."""
    if not dist.package_type:
        return ""
    namespace = f"/{quote(dist.os_id.lower(), safe='')}" if dist.os_id else ""
    purl = f"pkg:{dist.package_type}{namespace}/{quote(name, safe='.-_~')}"
    if version:
        purl += "@" + quote(version, safe=".-_~")
    if dist.os_id and dist.version_id:
        purl += "?distro=" + quote(f"{dist.os_id.lower()}-{dist.version_id}", safe=".-_~")
    return purl


def _document_uuid(name: str, image: Image, created: int) -> uuid.UUID:
    packages = "\n".join(f"{p.name} {p.version} {p.size}" for p in image.packages or ())
    digest = hashlib.sha256(packages.encode("utf-8", "surrogateescape")).hexdigest()
    return uuid.uuid5(uuid.NAMESPACE_URL, f"imaginator:{name}:{created}:{digest}")


def spdx_document(name: str, image: Image, dist: Distribution, created: int) -> dict[str, Any]:
    """The SPDX 2.3 document (a JSON value) of ``image`` called ``name``."""
    image_package: dict[str, Any] = {
        "SPDXID": IMAGE_SPDX_ID,
        "name": name,
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": False,
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": "NOASSERTION",
        "copyrightText": "NOASSERTION",
        "primaryPackagePurpose": "OPERATING-SYSTEM",
        "releaseDate": rfc3339(created),
    }
    if image.build_commit_id:
        image_package["versionInfo"] = image.build_commit_id
    if dist.pretty_name:
        image_package["description"] = dist.pretty_name
    packages = [image_package]
    relationships = [
        {
            "spdxElementId": "SPDXRef-DOCUMENT",
            "relationshipType": "DESCRIBES",
            "relatedSpdxElement": IMAGE_SPDX_ID,
        }
    ]
    for index, package in enumerate(image.packages or (), start=1):
        spdx_id = f"SPDXRef-Package-{index}-{_SPDX_ID_UNSAFE.sub('-', package.name)}"
        entry: dict[str, Any] = {
            "SPDXID": spdx_id,
            "name": package.name,
            "versionInfo": package.version,
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": False,
            "licenseConcluded": "NOASSERTION",
            "licenseDeclared": "NOASSERTION",
            "copyrightText": "NOASSERTION",
            "primaryPackagePurpose": "LIBRARY",
        }
        purl = package_url(dist, package.name, package.version)
        if purl:
            entry["externalRefs"] = [
                {
                    "referenceCategory": "PACKAGE-MANAGER",
                    "referenceType": "purl",
                    "referenceLocator": purl,
                }
            ]
        packages.append(entry)
        relationships.append(
            {
                "spdxElementId": IMAGE_SPDX_ID,
                "relationshipType": "CONTAINS",
                "relatedSpdxElement": spdx_id,
            }
        )
    return {
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": name,
        "documentNamespace": f"urn:uuid:{_document_uuid(name, image, created)}",
        "creationInfo": {
            "created": rfc3339(created),
            "creators": [f"Tool: imaginator-{__version__}"],
        },
        "packages": packages,
        "relationships": relationships,
    }


def cyclonedx_document(name: str, image: Image, dist: Distribution, created: int) -> dict[str, Any]:
    """The CycloneDX 1.5 document (a JSON value) of ``image`` called ``name``."""
    image_component: dict[str, Any] = {"type": "operating-system", "bom-ref": "image", "name": name}
    if image.build_commit_id:
        image_component["version"] = image.build_commit_id
    if dist.pretty_name:
        image_component["description"] = dist.pretty_name
    components = []
    for index, package in enumerate(image.packages or (), start=1):
        component: dict[str, Any] = {
            "type": "library",
            "bom-ref": f"package-{index}",
            "name": package.name,
            "version": package.version,
        }
        purl = package_url(dist, package.name, package.version)
        if purl:
            component["purl"] = purl
        components.append(component)
    return {
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "serialNumber": f"urn:uuid:{_document_uuid(name, image, created)}",
        "version": 1,
        "metadata": {
            "timestamp": rfc3339(created),
            "tools": {
                "components": [
                    {"type": "application", "name": "imaginator", "version": __version__}
                ]
            },
            "component": image_component,
        },
        "components": components,
        "dependencies": [
            {"ref": "image", "dependsOn": [c["bom-ref"] for c in components]},
        ],
    }


def dumps_document(document: dict[str, Any]) -> bytes:
    """The document as UTF-8 JSON, two-space indented, with a final newline."""
    return (json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode(
        "utf-8", "surrogateescape"
    )


def image_sbom(
    reader: ImageReader,
    name: str,
    image: Image,
    *,
    kind: str = "spdx",
    source_date_epoch: int | None = None,
) -> bytes:
    """The SBOM of ``image`` as bytes (``kind``: ``spdx`` or ``cyclonedx``);
    reads ``os-release`` through ``reader`` (blocking)."""
    dist = read_distribution(reader, image)
    created = created_seconds(image, source_date_epoch)
    if kind == "cyclonedx":
        return dumps_document(cyclonedx_document(name, image, dist, created))
    if kind != "spdx":
        raise ValueError(f"unknown SBOM format: {kind}")
    return dumps_document(spdx_document(name, image, dist, created))
