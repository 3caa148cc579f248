"""What several pages show of a build, and the JSON forms of the pages.

The HTML pages and their ``?format=json`` answers read the same snapshots
(``BuildResult``, ``CurrentBuild``, stage timings); the functions here turn
those into template values and into JSON values, so a field is named and
formatted once. Nothing here does I/O.

JSON conventions (stable, documented in README "Web pages"): field names in
Go's style (``CamelCase``), times as RFC 3339 UTC strings
(``2026-11-27T10:53:19.5Z``), durations in seconds (float), absent values as
``null`` or an empty string, never a secret (build errors and logs are
redacted by the builder before anything here sees them).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Protocol

from imaginator.goformats.units import format_duration, format_time
from imaginator.runtime.stages import StageTime

JSON = b"application/json; charset=utf-8"


class Result(Protocol):
    """The fields of a finished build (``BuildResult``) the pages read."""

    @property
    def stream(self) -> str: ...

    @property
    def image_name(self) -> str: ...

    @property
    def started_at(self) -> float: ...

    @property
    def finished_at(self) -> float: ...

    @property
    def error(self) -> str: ...

    @property
    def requestor(self) -> str: ...

    @property
    def identical(self) -> bool: ...

    @property
    def stages(self) -> tuple[StageTime, ...]: ...


def succeeded(result: Result) -> bool:
    return not result.error and bool(result.image_name)


def rfc3339(seconds: float) -> str:
    """``seconds`` since the epoch as an RFC 3339 UTC time (``…Z``), for JSON."""
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def result_view(result: Result, now: float) -> dict[str, Any]:
    """A finished build as the templates show it (macro ``result_line``)."""
    return {
        "stream": result.stream,
        "ok": succeeded(result),
        "identical": result.identical,
        "error": result.error,
        "image_name": result.image_name,
        "finished": format_time(result.finished_at),
        "ago": format_duration(max(0.0, now - result.finished_at)),
        "duration": format_duration(max(0.0, result.finished_at - result.started_at)),
    }


def stage_rows(stages: Iterable[StageTime]) -> list[dict[str, Any]]:
    """Rows of the stage table: name, duration, share of the stages' total, failed."""
    stages = list(stages)
    total = sum(s.seconds for s in stages)
    return [
        {
            "name": s.name,
            "duration": format_duration(s.seconds),
            "percent": f"{100.0 * s.seconds / total:.1f}%" if total > 0 else "",
            "failed": s.failed,
        }
        for s in stages
    ]


def stages_json(stages: Iterable[StageTime]) -> list[dict[str, Any]]:
    return [{"Name": s.name, "Seconds": s.seconds, "Failed": s.failed} for s in stages]


def result_json(result: Result) -> dict[str, Any]:
    """A finished build as JSON (``LastBuild`` of the status and stream answers)."""
    return {
        "Stream": result.stream,
        "Succeeded": succeeded(result),
        "Identical": result.identical,
        "ImageName": result.image_name,
        "Error": result.error,
        "Requestor": result.requestor,
        "StartedAt": rfc3339(result.started_at),
        "FinishedAt": rfc3339(result.finished_at),
        "DurationSeconds": max(0.0, result.finished_at - result.started_at),
        "Stages": stages_json(result.stages),
    }


def current_json(
    stream: str,
    started_at: float,
    requestor: str,
    auto: bool,
    stage: tuple[str, float] | None,
    now: float,
) -> dict[str, Any]:
    """A running build as JSON (status ``CurrentBuilds``, a stream's ``Building``)."""
    return {
        "Stream": stream,
        "Requestor": requestor,
        "Auto": auto,
        "StartedAt": rfc3339(started_at),
        "DurationSeconds": max(0.0, now - started_at),
        "Stage": stage[0] if stage else "",
        "StageSeconds": stage[1] if stage else 0.0,
    }


def dumps(value: Any) -> bytes:
    """The JSON answer's body: indented, sorted as given, UTF-8, final newline."""
    return (json.dumps(value, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
