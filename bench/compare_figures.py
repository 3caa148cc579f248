"""The pure part of ``compare_go.py``: reading figures out of logs, and printing them.

Neither daemon timestamps the lines of a build log, but both write the same
duration lines into it (``Build time: X`` after the bootstrap command,
``Uploaded NAME in X, total build duration: Y`` at the end) and the same
timestamped lines into their daemon log (``Built image: NAME in X``,
``Completed automatic image build cycle in X``). This module parses those, and
the Go duration syntax they are written in, so the benchmark measures what each
daemon says about its own phases; it also turns the samples into min/median/max
rows with the ratio ours/Go. Nothing here starts a process or reads a file, so
``tests/unit/test_bench_compare.py`` can check all of it.
"""

from __future__ import annotations

import datetime
import re
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

# ------------------------------------------------------------------ Go durations

_UNIT_SECONDS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,  # U+00B5 MICRO SIGN, what Go writes
    "μs": 1e-6,  # U+03BC GREEK SMALL LETTER MU, accepted by Go's parser too
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
    "w": 7 * 86400.0,
    "y": 365.25 * 86400.0,
}
_TERM = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h|d|w|y)")


def parse_go_duration(text: str) -> float:
    """Seconds in a duration as Dominator formats it (``543ms``, ``1m30s``, ``1d2h0m0s``).

    Raises ``ValueError`` for anything else, so a changed log format is noticed
    instead of being read as zero.
    """
    body = text.strip()
    sign = 1.0
    if body.startswith("-"):
        sign, body = -1.0, body[1:]
    if body == "0":
        return 0.0
    total, position = 0.0, 0
    while position < len(body):
        match = _TERM.match(body, position)
        if match is None:
            raise ValueError(f"not a Go duration: {text!r}")
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        position = match.end()
    if position == 0:
        raise ValueError(f"not a Go duration: {text!r}")
    return sign * total


# ------------------------------------------------------------------ build logs

_DURATION = r"([0-9.]+[a-zµμ]+(?:[0-9.]+[a-zµμ]+)*)"
_BUILD_TIME = re.compile(rf"^Build time: {_DURATION}$", re.M)
_UPLOADED = re.compile(rf"^Uploaded (\S+) in {_DURATION}, total build duration: {_DURATION}$", re.M)
_SCANNED = re.compile(r"^Scanned file-system and uploaded (\d+) objects ", re.M)
_IDENTICAL = re.compile(r"^Identical to (\S+): no new image published", re.M)


@dataclass(frozen=True)
class BuildLogFigures:
    """What one build log says about its build (``None``: the log has no such line)."""

    #: ``Build time:`` — the bootstrap command alone.
    command_seconds: float | None
    #: ``total build duration:`` — written only when an image is published.
    total_seconds: float | None
    #: The image published (``Uploaded NAME``), or the one it was identical to.
    image_name: str | None
    #: Sum of the ``uploaded N objects`` of every scan (a recursive build scans twice).
    uploaded_objects: int | None
    #: True when the daemon published nothing because the result equals the latest image.
    identical: bool


def parse_build_log(text: str) -> BuildLogFigures:
    """The figures of a build log (the last ``Build time`` and ``Uploaded`` lines count)."""
    command = _BUILD_TIME.findall(text)
    uploaded = _UPLOADED.findall(text)
    scanned = _SCANNED.findall(text)
    identical = _IDENTICAL.findall(text)
    name = uploaded[-1][0] if uploaded else (identical[-1] if identical else None)
    return BuildLogFigures(
        command_seconds=parse_go_duration(command[-1]) if command else None,
        total_seconds=parse_go_duration(uploaded[-1][2]) if uploaded else None,
        image_name=name,
        uploaded_objects=sum(int(n) for n in scanned) if scanned else None,
        identical=bool(identical),
    )


# ------------------------------------------------------------------ daemon logs

# Go's log package: "2026/12/03 15:04:47.756534 message" (subseconds with -logSubseconds).
_GO_LINE = re.compile(r"^(\d{4})/(\d\d)/(\d\d) (\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))? (.*)$")
# twistd: "2026-12-03T15:05:14+0000 [namespace#level] message".
_TWISTED_LINE = re.compile(
    r"^(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:[.,](\d{1,9}))?(?:[+-]\d{4}|Z)?"
    r" \[[^\]]*\] (.*)$"
)


@dataclass(frozen=True)
class LogEvent:
    """One timestamped line of a daemon log (the timestamp as the daemon wrote it)."""

    at: datetime.datetime
    message: str


def parse_daemon_log(text: str) -> list[LogEvent]:
    """Every timestamped line of either daemon's log, in order; other lines are skipped.

    Continuation lines (a traceback, a multi-line message) carry no timestamp
    and are dropped: the figures this benchmark needs are all one-liners.
    """
    events = []
    for line in text.splitlines():
        match = _GO_LINE.match(line) or _TWISTED_LINE.match(line)
        if match is None:
            continue
        year, month, day, hour, minute, second, fraction, message = match.groups()
        micro = int((fraction or "0").ljust(6, "0")[:6])
        at = datetime.datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second), micro
        )
        events.append(LogEvent(at, message))
    return events


_BUILT = re.compile(rf"^Built image: (\S+) in {_DURATION}$")
# Ours, for a rebuild identical to the stream's latest image (nothing published).
_IDENTICAL_LINE = re.compile(rf"^Identical to (\S+): no new image published \({_DURATION}\)$")
_CYCLE = re.compile(rf"^Completed automatic image build cycle in {_DURATION}$")


def built_images(events: Iterable[LogEvent]) -> list[tuple[str, float]]:
    """``(image name, seconds)`` of every ``Built image: NAME in X`` line."""
    found = []
    for event in events:
        match = _BUILT.match(event.message)
        if match:
            found.append((match.group(1), parse_go_duration(match.group(2))))
    return found


def finished_builds(events: Iterable[LogEvent]) -> list[tuple[str, float]]:
    """``(image name, seconds)`` of every build that ended well: ``Built image: NAME
    in X``, and ours' ``Identical to NAME: no new image published (X)`` (a rebuild
    that kept the latest image, which it names)."""
    found = []
    for event in events:
        match = _BUILT.match(event.message) or _IDENTICAL_LINE.match(event.message)
        if match:
            found.append((match.group(1), parse_go_duration(match.group(2))))
    return found


_SKIPPED = re.compile(r"^Skipped (\S+): nothing could change ")


def skipped_builds(events: Iterable[LogEvent]) -> list[str]:
    """The streams of ours' ``Skipped STREAM: nothing could change …`` lines."""
    return [m.group(1) for e in events if (m := _SKIPPED.match(e.message))]


def build_seconds(events: Iterable[LogEvent], image_name: str) -> float | None:
    """How long the daemon says the build of ``image_name`` took (its last such line,
    published or identical)."""
    matches = [seconds for name, seconds in finished_builds(events) if name == image_name]
    return matches[-1] if matches else None


def cycle_seconds(events: Iterable[LogEvent]) -> float | None:
    """The duration of the last completed automatic cycle in ``events``.

    From the ``Completed … in X`` line when there is one; otherwise from the
    timestamps of ``Starting automatic image build cycle`` and of that line
    (a daemon whose line carried no duration).
    """
    events = list(events)
    for event in reversed(events):
        match = _CYCLE.match(event.message)
        if match:
            return parse_go_duration(match.group(1))
    return span(events, r"^Starting automatic image build cycle", r"^Completed automatic")


def span(events: Sequence[LogEvent], start: str, end: str) -> float | None:
    """Seconds between the first line matching ``start`` and the next one matching ``end``.

    This is the timestamp-based phase: what a log without durations still tells.
    """
    start_re, end_re = re.compile(start), re.compile(end)
    began: datetime.datetime | None = None
    for event in events:
        if began is None:
            if start_re.search(event.message):
                began = event.at
        elif end_re.search(event.message):
            return (event.at - began).total_seconds()
    return None


# ------------------------------------------------------------------ statistics


@dataclass(frozen=True)
class Summary:
    """min/median/max of the samples of one figure."""

    minimum: float
    median: float
    maximum: float
    count: int

    @classmethod
    def of(cls, values: Iterable[float | None]) -> Summary | None:
        """The summary of the values that were measured (``None`` samples are missing ones)."""
        present = [v for v in values if v is not None]
        if not present:
            return None
        return cls(min(present), statistics.median(present), max(present), len(present))


def ratio(ours: Summary | None, go: Summary | None) -> float | None:
    """ours/Go of the medians; ``None`` when a side is missing or Go's median is 0."""
    if ours is None or go is None or go.median == 0:
        return None
    return ours.median / go.median


def format_value(value: float, kind: str) -> str:
    """A figure for the table: ``s`` seconds, ``n`` a count, ``MiB``, ``%``."""
    if kind == "s":
        if abs(value) < 1:
            return f"{value * 1000:.0f} ms"
        if abs(value) < 100:
            return f"{value:.1f} s"
        return f"{value:.0f} s"
    if kind == "n":
        return f"{value:.0f}" if float(value).is_integer() else f"{value:.1f}"
    if kind == "MiB":
        return f"{value:.0f} MiB"
    if kind == "%":
        return f"{value:.0f}%"
    raise ValueError(f"unknown kind of figure: {kind!r}")


def format_summary(summary: Summary | None, kind: str) -> str:
    """``min / median / max`` (one value when they are all equal); ``—`` when missing."""
    if summary is None:
        return "—"
    parts = [format_value(v, kind) for v in (summary.minimum, summary.median, summary.maximum)]
    if parts[0] == parts[2]:
        return parts[1]
    return " / ".join(parts)


def format_ratio(value: float | None) -> str:
    """``0.42x``; ``—`` when there is no ratio."""
    return "—" if value is None else f"{value:.2f}x"


@dataclass(frozen=True)
class Row:
    """One line of the report: a figure's samples for both daemons."""

    label: str
    kind: str
    go: Sequence[float | None]
    ours: Sequence[float | None]


def render_table(rows: Sequence[Row]) -> str:
    """The report as an aligned plain-text table (a header, then one line per row)."""
    header = ("figure", "Go min / median / max", "ours min / median / max", "ours/Go")
    lines = [header]
    for row in rows:
        go, ours = Summary.of(row.go), Summary.of(row.ours)
        lines.append(
            (
                row.label,
                format_summary(go, row.kind),
                format_summary(ours, row.kind),
                format_ratio(ratio(ours, go)),
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for index, line in enumerate(lines):
        cells = [line[0].ljust(widths[0])]
        cells += [cell.rjust(width) for cell, width in zip(line[1:], widths[1:], strict=True)]
        out.append("  ".join(cells).rstrip())
        if index == 0:
            out.append("  ".join("-" * width for width in widths))
    return "\n".join(out) + "\n"
