"""What one build reports besides its image: stage timings and the manifest it read.

A :class:`BuildReport` travels with the build (``BuildEnv.report``, and the
builder's ``CurrentBuild``): the pipeline steps call ``begin(stage)``
(:class:`~imaginator.runtime.stages.StageRecorder`), and a manifest build
keeps a :class:`ManifestSnapshot` of its manifest when it reads it: the
contents of ``manifest``, ``package-list`` and ``tags.json``, the size of the
manifest tree and the log of its fetch. The stream page shows that snapshot
(as the Go imaginator shows a live fetch, without fetching anything for a
page view), so it is bounded (``MAX_FILE_BYTES`` per file, ``MAX_FETCH_LOG``
of log) and redacted: what a page shows never holds a secret value.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from imaginator.runtime.stages import StageRecorder

#: The manifest files whose contents are kept, in the order the pages show them.
SNAPSHOT_FILES = ("manifest", "package-list", "tags.json")
MAX_FILE_BYTES = 64 * 1024
"""Bytes of each manifest file kept."""
MAX_FETCH_LOG = 16 * 1024
"""Bytes of the manifest fetch log kept."""


class Subscribable(Protocol):
    """What is captured: a :class:`~imaginator.runtime.buildlog.BuildLog`."""

    def subscribe(self, callback: Callable[[bytes], None]) -> Callable[[], None]: ...


class CapturedLog:
    """What a build log receives (already redacted) between ``start`` and ``stop``,
    at most ``limit`` bytes of it."""

    def __init__(self, limit: int = MAX_FETCH_LOG) -> None:
        self._limit = limit
        self._chunks: list[bytes] = []
        self._size = 0
        self.truncated = False
        self._unsubscribe: Callable[[], None] | None = None

    def start(self, log: Subscribable) -> None:
        self.stop()
        self._unsubscribe = log.subscribe(self._add)

    def stop(self) -> str:
        """Stop capturing; the text so far."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        return b"".join(self._chunks).decode("utf-8", errors="replace")

    def _add(self, data: bytes) -> None:
        room = self._limit - self._size
        if len(data) > room:
            self.truncated = True
            data = data[: max(room, 0)]
        if data:
            self._chunks.append(data)
            self._size += len(data)


@dataclass(frozen=True)
class ManifestFile:
    """One manifest file as read: its text (cut at ``MAX_FILE_BYTES``)."""

    name: str
    text: str
    truncated: bool = False


@dataclass(frozen=True)
class ManifestSnapshot:
    """A manifest as a build read it (see the module's docstring)."""

    files: tuple[ManifestFile, ...] = ()
    tree_size: int = 0
    fetch_log: str = ""
    fetch_log_truncated: bool = False


def read_manifest_snapshot(
    directory: str, fetch_log: str, truncated: bool, redact: Callable[[str], str]
) -> ManifestSnapshot:
    """The snapshot of the manifest tree in ``directory``. Blocking (a tree walk): run it
    in the thread pool. ``redact`` removes the secret values from what is kept."""
    files = []
    for name in SNAPSHOT_FILES:
        path = os.path.join(directory, name)
        if not os.path.isfile(path) or os.path.islink(path):
            continue
        with open(path, "rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
        text = data[:MAX_FILE_BYTES].decode("utf-8", errors="replace")
        files.append(ManifestFile(name, redact(text), len(data) > MAX_FILE_BYTES))
    return ManifestSnapshot(tuple(files), tree_size(directory), redact(fetch_log), truncated)


def tree_size(directory: str) -> int:
    """Bytes of the regular files under ``directory`` (links not followed)."""
    total = 0
    for base, _dirs, names in os.walk(directory):
        for name in names:
            try:
                info = os.lstat(os.path.join(base, name))
            except OSError:
                continue
            if not os.path.islink(os.path.join(base, name)):
                total += info.st_size
    return total


@dataclass
class BuildReport:
    """Stage timings and the manifest snapshot of one build (see the module's docstring)."""

    stages: StageRecorder = field(default_factory=StageRecorder)
    manifest: ManifestSnapshot | None = None
    fetch_log: CapturedLog = field(default_factory=CapturedLog)

    def begin(self, stage: str) -> None:
        """End the stage in progress and start ``stage``."""
        self.stages.begin(stage)

    def finish(self, *, failed: bool) -> None:
        """The build is over: end the last stage and any log capture."""
        self.stages.finish(failed=failed)
        self.fetch_log.stop()
