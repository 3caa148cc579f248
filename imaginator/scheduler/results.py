"""What the scheduler's callers pass and get back: build options, results,
the running build, the settings and the pipeline steps it runs."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from twisted.internet.defer import Deferred

from imaginator.config.streams import StreamsDocument
from imaginator.image.model import Image
from imaginator.pipeline.bootstrap import build_bootstrap
from imaginator.pipeline.manifest_build import NormalBuild, build_normal
from imaginator.pipeline.pack import BuildEnv, BuildError
from imaginator.pipeline.report import BuildReport, ManifestSnapshot
from imaginator.runtime.buildlog import BuildLog
from imaginator.runtime.stages import StageTime

DAY = 24 * 3600.0


class StreamsSource(Protocol):
    """The image streams document in force, as the builder reads it
    (``sources.streams.ImageStreams``)."""

    def current(self) -> StreamsDocument: ...

    async def ensure_known(
        self, name: str, is_known: Callable[[StreamsDocument], bool]
    ) -> bool: ...


class BuildSecrets(Protocol):
    """The variables files as builds use them (``sources.variables.BuildVariables``)."""

    def values(self) -> Mapping[str, str]:
        """Every variable, for expansion."""
        ...

    def secret_values(self) -> Mapping[str, str]:
        """The values that must never be shown."""
        ...

    def redact(self, text: str) -> str:
        """``text`` with the secret values taken out."""
        ...


@dataclass
class CurrentBuild:
    """A build in progress (what the status page lists under "Current image builds")."""

    stream: str
    started_at: float
    log: BuildLog
    requestor: str = ""
    auto: bool = False
    #: Stage timings so far and the manifest read (the pipeline reports to it).
    report: BuildReport = field(default_factory=BuildReport)


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
    #: The build changed nothing: ``image_name`` is the stream's latest image, extended.
    identical: bool = False
    #: Why the build was skipped as nothing could change (``identical`` is set too).
    skipped: str = ""
    image: Image | None = None
    need_source_image: bool = False
    source_image: str = ""
    source_image_git_commit_id: str = ""
    source_image_build_variables: Mapping[str, str] = field(default_factory=dict)
    #: How long each stage took (``runtime.stages``), and the manifest as the build read it.
    stages: tuple[StageTime, ...] = ()
    manifest: ManifestSnapshot | None = None


@dataclass(frozen=True)
class BuildOptions:
    """What a build request may ask for (durations in seconds; 0 = not set)."""

    expires_in: float = 0.0
    git_branch: str = ""
    max_source_age: float = 0.0
    maximum_build_duration: float = 0.0
    variables: tuple[tuple[str, str], ...] = ()
    return_image: bool = False
    disable_recursive_build: bool = False
    auto: bool = False

    @classmethod
    def make(cls, variables: Mapping[str, str] | None = None, **kwargs: Any) -> BuildOptions:
        return cls(variables=tuple(sorted((variables or {}).items())), **kwargs)


class UnknownStream(BuildError):
    def __init__(self, stream: str) -> None:
        super().__init__(f"unknown stream: {stream}")


def observe(d: Deferred[Any]) -> Deferred[None]:
    """A Deferred firing (with None) when ``d`` fires, leaving ``d``'s result alone."""
    observer: Deferred[None] = Deferred()

    def fire(result: object) -> object:
        observer.callback(None)
        return result

    d.addBoth(fire)
    return observer


def build_deadline_seconds(flag: float, requested: float) -> float:
    """``min(flag, request)`` where anything under one second means 24 hours."""

    def norm(value: float) -> float:
        return DAY if value < 1 else value

    return min(norm(flag), norm(requested))


@dataclass
class BuilderSettings:
    maximum_build_duration: float = DAY
    maximum_concurrent_builds: int = 2
    tmpdir: str | None = None
    arch: str = "amd64"
    ctime_resolution: float = 0.0
    # Where pristine trees of source images are cached, to mount build roots
    # as overlays over them (None: unpack every source image into its root).
    tree_cache_dir: str | None = None
    tree_cache_images: int = 4
    # Where the shared package caches of FastPaths.PackageCaches live by default.
    package_cache_dir: str | None = None


@dataclass(frozen=True)
class Pipeline:
    """What makes one image: the real build steps, or fakes in unit tests of the scheduling."""

    bootstrap: Callable[..., Awaitable[Image]] = build_bootstrap
    normal: Callable[[BuildEnv, NormalBuild], Awaitable[Image]] = build_normal


#: The real build steps (the default of ``Builder``).
REAL_PIPELINE = Pipeline()
