"""The builder: runs builds of streams, one at a time per stream, and remembers results."""

from __future__ import annotations

from dataclasses import dataclass

from imaginator.build.buildlog import BuildLog


@dataclass
class CurrentBuild:
    """A build in progress (what the status page lists under "Current image builds")."""

    stream: str
    started_at: float
    log: BuildLog
    requestor: str = ""
    auto: bool = False


@dataclass(frozen=True)
class BuildResult:
    """A finished build: ``image_name`` is empty and ``error`` set on failure."""

    stream: str
    image_name: str
    started_at: float
    finished_at: float
    log: bytes
    error: str = ""
    requestor: str = ""
