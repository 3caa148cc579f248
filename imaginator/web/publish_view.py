"""Publishing as the pages show it: a block of the stream page and metric families.

The publisher (``imaginator.publish.publisher``) keeps each stream's state
in memory; this module turns it into the stream page's ``publish`` context
(rendered by ``_publish.html``) and the ``imaginator_publish_*`` gauges of
``/metrics``. Kept apart from ``stream_pages`` and ``metrics``, which only
call in, so that publishing stays one small, separate addition to them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from imaginator.goformats.units import format_bytes, format_duration, format_time
from imaginator.publish.publisher import PublishStatus, PushedImage, PushFailure

__all__ = ["PublishState", "publish_context", "publish_families"]

Outcome = PushedImage | PushFailure
#: ``(name, help, [(stream label, value)])`` of one gauge.
Family = tuple[str, str, list[tuple[str, float]]]


class PublishState(Protocol):
    """What the pages read from the publisher (cheap, in memory)."""

    def publish_status(self, stream: str) -> PublishStatus | None: ...

    def last_outcomes(self) -> Sequence[tuple[str, Outcome, PushedImage | None]]: ...


def _success(pushed: PushedImage, now: float) -> dict[str, Any]:
    return {
        "ok": True,
        "image_name": pushed.image_name,
        "reference": pushed.reference,
        "tags": ", ".join(pushed.tags),
        "finished": format_time(pushed.finished_at),
        "ago": format_duration(max(0.0, now - pushed.finished_at)),
        "sent": pushed.blobs_sent,
        "size": format_bytes(pushed.bytes_sent),
        "present": pushed.blobs_present,
    }


def _outcome(outcome: Outcome, now: float) -> dict[str, Any]:
    if isinstance(outcome, PushedImage):
        return _success(outcome, now)
    retry = outcome.next_retry_at
    return {
        "ok": False,
        "image_name": outcome.image_name,
        "error": outcome.error,
        "attempt": outcome.attempt,
        "attempts": outcome.attempts,
        "finished": format_time(outcome.finished_at),
        "ago": format_duration(max(0.0, now - outcome.finished_at)),
        "retry_at": format_time(retry) if retry is not None else "",
    }


def publish_context(state: PublishState | None, stream: str, now: float) -> dict[str, Any] | None:
    """The stream page's ``publish`` block; ``None`` when the stream is not
    published (and was not since the daemon started)."""
    status = state.publish_status(stream) if state is not None else None
    if status is None:
        return None
    last = _outcome(status.last, now) if status.last is not None else None
    earlier = None
    if status.last_success is not None and status.last is not status.last_success:
        earlier = _success(status.last_success, now)
    return {
        "target": status.target,
        "tags": ", ".join(status.tags),
        "target_error": status.target_error,
        "pushing": status.pushing,
        "attempt": status.attempt,
        "attempts": status.attempts,
        "queued": status.queued,
        "last": last,
        "last_success": earlier,
    }


def publish_families(state: PublishState | None) -> list[Family]:
    """The ``imaginator_publish_*`` gauges (none without a publisher)."""
    if state is None:
        return []
    outcomes = state.last_outcomes()
    return [
        (
            "imaginator_publish_last_success",
            "Whether the stream's last push attempt succeeded (1) or failed (0).",
            [(s, 1 if isinstance(last, PushedImage) else 0) for s, last, _ in outcomes],
        ),
        (
            "imaginator_publish_last_timestamp_seconds",
            "When the stream's last push attempt ended (Unix time).",
            [(s, last.finished_at) for s, last, _ in outcomes],
        ),
        (
            "imaginator_publish_last_success_timestamp_seconds",
            "When the stream's last successful push ended (Unix time).",
            [(s, ok.finished_at) for s, _, ok in outcomes if ok is not None],
        ),
    ]
