"""``/metrics``: the daemon's state in the Prometheus text exposition format.

Gauges: builds running now, each stream's last build (success, duration,
when it finished, and how long each of its stages took), the number of
images in the store and the uptime. Counters (with a :class:`BuildCounters`
fed by the builder's listener): builds finished and builds failed per stream
since the daemon started. The builder's state is in memory; the image count
is read through the ``AsyncImageStore`` (its thread pool), so the handler
never blocks the reactor, and an unreadable store only leaves
``imaginator_images_total`` out. Stream and stage names are label values,
escaped as the format requires.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

from klein import Klein
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IRequest

from imaginator.runtime.stages import StageTime, stage_totals
from imaginator.store.base import StoreError
from imaginator.web.pages import set_security_headers
from imaginator.web.publish_view import PublishState, publish_families

__all__ = ["METRICS_CONTENT_TYPE", "BuildCounters", "MetricsPage", "escape_label"]

METRICS_CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"

_log = Logger()


class LastBuild(Protocol):
    """The fields of a finished build (``BuildResult``) the metrics read."""

    @property
    def stream(self) -> str: ...

    @property
    def image_name(self) -> str: ...

    @property
    def error(self) -> str: ...

    @property
    def started_at(self) -> float: ...

    @property
    def finished_at(self) -> float: ...

    @property
    def stages(self) -> tuple[StageTime, ...]: ...


class BuildState(Protocol):
    """What the metrics read from the builder (all cheap, in-memory)."""

    def running_count(self) -> int: ...

    def last_results(self) -> Sequence[LastBuild]: ...


class ImageList(Protocol):
    """The one store call the metrics make (``AsyncImageStore.list_images``)."""

    async def list_images(self) -> list[str]: ...


def escape_label(value: str) -> str:
    """A Prometheus label value escaped for the text exposition format."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    return str(value) if isinstance(value, int) else repr(float(value))


class BuildCounters:
    """Builds finished and failed per stream since the start (``record`` is a build
    result listener: ``Builder.add_listener(counters.record)``)."""

    def __init__(self) -> None:
        self.finished: dict[str, int] = {}
        self.failed: dict[str, int] = {}

    def record(self, result: LastBuild) -> None:
        stream = result.stream
        self.finished[stream] = self.finished.get(stream, 0) + 1
        failed = bool(result.error) or not result.image_name
        self.failed[stream] = self.failed.get(stream, 0) + int(failed)


Labels = Mapping[str, str]


class _Metrics:
    """Collects the lines of a Prometheus text exposition."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, help_text: str, samples: Iterable[tuple[str, float]]) -> None:
        """One gauge: ``samples`` are ``(stream label or "", value)``."""
        self.labelled(
            name, help_text, (({"stream": s} if s else {}, v) for s, v in samples), "gauge"
        )

    def labelled(
        self, name: str, help_text: str, samples: Iterable[tuple[Labels, float]], kind: str
    ) -> None:
        """One family of type ``kind``: ``samples`` are ``(labels, value)``."""
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            text = ",".join(f'{k}="{escape_label(v)}"' for k, v in labels.items())
            self.lines.append(
                f"{name}{{{text}}} {_number(value)}" if text else f"{name} {_number(value)}"
            )

    def text(self) -> bytes:
        return "".join(line + "\n" for line in self.lines).encode("utf-8")


class MetricsPage:
    """``/metrics``, installed on a Klein app.

    ``builder`` gives the build state (``Builder``), ``store`` the image
    count (``AsyncImageStore``), ``clock`` the time and ``started_at`` the
    daemon's start (for the uptime); ``publishing`` (the publisher) the
    ``imaginator_publish_*`` gauges; ``counters`` (fed by the builder) the
    build counters.
    """

    def __init__(
        self,
        builder: BuildState,
        store: ImageList,
        clock: IReactorTime,
        started_at: float,
        publishing: PublishState | None = None,
        counters: BuildCounters | None = None,
    ) -> None:
        self._builder = builder
        self._store = store
        self._clock = clock
        self._started_at = started_at
        self._publishing = publishing
        self._counters = counters

    def install(self, app: Klein) -> None:
        """Add the route to ``app``."""
        app.route("/metrics", methods=["GET", "HEAD"], endpoint="metrics:/metrics")(self.metrics)

    async def metrics(self, request: IRequest) -> bytes:
        """``/metrics``: build state, image count and uptime in the Prometheus text format."""
        now = self._clock.seconds()
        out = _Metrics()
        out.family(
            "imaginator_builds_running",
            "Builds running now.",
            [("", self._builder.running_count())],
        )
        self._build_metrics(out)
        for name, help_text, samples in publish_families(self._publishing):
            out.family(name, help_text, samples)
        count = await self._image_count()
        if count is not None:
            out.family("imaginator_images_total", "Images in the store.", [("", count)])
        out.family(
            "imaginator_uptime_seconds",
            "Seconds since the daemon started.",
            [("", max(0.0, now - self._started_at))],
        )
        set_security_headers(request)
        request.setResponseCode(200)
        request.setHeader(b"Content-Type", METRICS_CONTENT_TYPE)
        return out.text()

    def _build_metrics(self, out: _Metrics) -> None:
        results = sorted(self._builder.last_results(), key=lambda r: r.stream)
        out.family(
            "imaginator_stream_last_build_success",
            "Whether the stream's last build succeeded (1) or failed (0).",
            [(r.stream, 0 if r.error or not r.image_name else 1) for r in results],
        )
        out.family(
            "imaginator_stream_last_build_duration_seconds",
            "Duration of the stream's last build.",
            [(r.stream, max(0.0, r.finished_at - r.started_at)) for r in results],
        )
        out.family(
            "imaginator_stream_last_build_timestamp_seconds",
            "When the stream's last build finished (Unix time).",
            [(r.stream, r.finished_at) for r in results],
        )
        out.labelled(
            "imaginator_build_stage_seconds",
            "Seconds each stage of the stream's last build took.",
            [
                ({"stream": r.stream, "stage": stage}, seconds)
                for r in results
                for stage, seconds in stage_totals(r.stages).items()
            ],
            "gauge",
        )
        counters = self._counters
        if counters is None:
            return
        streams = sorted(counters.finished)
        out.labelled(
            "imaginator_builds_total",
            "Builds finished since the daemon started.",
            [({"stream": s}, counters.finished[s]) for s in streams],
            "counter",
        )
        out.labelled(
            "imaginator_builds_failed_total",
            "Builds failed since the daemon started.",
            [({"stream": s}, counters.failed.get(s, 0)) for s in streams],
            "counter",
        )

    async def _image_count(self) -> int | None:
        try:
            return len(await self._store.list_images())
        except (StoreError, OSError) as exc:
            _log.warn("Cannot count images: {error}", error=str(exc))
            return None
