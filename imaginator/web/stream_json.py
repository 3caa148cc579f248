"""The JSON answers of ``/showImageStreams?format=json`` and ``/showImageStream?S&format=json``.

Field names and formats follow ``web.views`` (README "Web pages" lists them).
Configuration is shown as the stream pages show it: manifest URLs with a
password replaced by ``***``, locations expanded with the stream's own
environment only (never with the variables file), bootstrap commands
unexpanded; build errors and manifest snapshots were redacted by the builder.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from imaginator.config.main import BootstrapStream
from imaginator.config.streams import StreamConfig, public_manifest_location
from imaginator.config.urls import redact_url
from imaginator.image.model import Image
from imaginator.pipeline.report import ManifestSnapshot
from imaginator.web.views import Result, current_json, result_json, rfc3339

_NS = 1_000_000_000


class StreamRowLike(Protocol):
    """A row of ``/showImageStreams`` (``stream_pages.StreamRow``, frozen)."""

    @property
    def name(self) -> str: ...

    @property
    def auto(self) -> bool: ...

    @property
    def normal(self) -> bool: ...

    @property
    def manifest_url(self) -> str: ...

    @property
    def manifest_directory(self) -> str: ...

    @property
    def expanded_directory(self) -> str: ...


class ImageRowLike(Protocol):
    """An image of a stream (``stream_pages.ImageRow``)."""

    name: str
    created_on: int
    expires_at: int
    expired: bool
    read: bool


class RunningLike(Protocol):
    """A running build (``scheduler.CurrentBuild``)."""

    stream: str
    started_at: float
    requestor: str


def _time_ns(value: int) -> str | None:
    return rfc3339(value / _NS) if value else None


def streams_json(rows: Iterable[StreamRowLike]) -> dict[str, Any]:
    return {
        "Streams": [
            {
                "Name": row.name,
                "Kind": "manifest" if row.normal else "bootstrap",
                "AutoRebuild": row.auto,
                "ManifestUrl": row.manifest_url,
                "ManifestDirectory": row.manifest_directory,
                "ExpandedManifestDirectory": row.expanded_directory,
            }
            for row in rows
        ]
    }


def bootstrap_json(stream: BootstrapStream) -> dict[str, Any]:
    return {
        "Kind": "bootstrap",
        "BootstrapCommand": list(stream.bootstrap_command),
        "FilterLines": list(stream.filter_lines),
        "PackagerType": stream.packager_type,
        "Variables": dict(stream.variables),
    }


def normal_json(name: str, stream: StreamConfig, arch: str) -> dict[str, Any]:
    url, directory = public_manifest_location(name, stream, arch)
    return {
        "Kind": "manifest",
        "ManifestUrl": redact_url(stream.manifest_url),
        "ExpandedManifestUrl": redact_url(url),
        "ManifestDirectory": stream.manifest_directory,
        "ExpandedManifestDirectory": directory,
        "BuilderGroups": list(stream.builder_groups),
        "BuilderUsers": list(stream.builder_users),
        "Variables": dict(stream.variables),
    }


def manifest_json(snapshot: ManifestSnapshot | None) -> dict[str, Any] | None:
    if snapshot is None:
        return None
    return {
        "Files": {f.name: f.text for f in snapshot.files},
        "TruncatedFiles": [f.name for f in snapshot.files if f.truncated],
        "TreeSize": snapshot.tree_size,
        "FetchLog": snapshot.fetch_log,
    }


def stream_json(
    name: str,
    config: dict[str, Any],
    *,
    latest_name: str,
    latest: Image | None,
    images: Iterable[ImageRowLike],
    building: RunningLike | None,
    stage: tuple[str, float] | None,
    last: Result | None,
    manifest: ManifestSnapshot | None,
    auto: bool,
    now: float,
) -> dict[str, Any]:
    """One stream: its configuration (``bootstrap_json`` or ``normal_json``), latest
    image, running build, last build (with the manifest it read) and images."""
    return {
        "Name": name,
        "AutoRebuild": auto,
        "Configuration": config,
        "LatestImage": None
        if latest is None
        else {
            "Name": latest_name,
            "CreatedOn": _time_ns(latest.created_on),
            "ExpiresAt": _time_ns(latest.expires_at),
            "SourceImage": latest.source_image,
            "BuildCommitId": latest.build_commit_id,
            "BuildBranch": latest.build_branch,
            "BuildGitUrl": latest.build_git_url,
        },
        "Building": None
        if building is None
        else current_json(
            building.stream, building.started_at, building.requestor, auto, stage, now
        ),
        "LastBuild": None
        if last is None
        else {**result_json(last), "Manifest": manifest_json(manifest)},
        "Images": [
            {
                "Name": row.name,
                "CreatedOn": _time_ns(row.created_on) if row.read else None,
                "ExpiresAt": _time_ns(row.expires_at) if row.read else None,
                "Expired": row.expired if row.read else None,
            }
            for row in images
        ],
    }
