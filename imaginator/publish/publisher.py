"""The publisher: new images of configured streams pushed to their registries.

The :class:`Publisher` is a builder listener and a child service of the
daemon. A **new** image of a stream with a ``Publish`` setting is queued for
that stream; failed builds, identical results (the latest image extended)
and images not stored (``ReturnImage``) are not. The one exception: an
identical result whose image this publisher gave up pushing (every attempt
failed) is queued again, so that a registry that was down gets the stream's
latest image at the next rebuild.

Each stream has one lane: one push at a time, and a newer image replaces
whatever waits in the lane (newest wins: an older image is never pushed after
a newer one, and a newer image ends the retries of an older one). A failed
push is retried after ``retry_delay`` seconds, doubling each time, up to
``attempts`` attempts in all. Pushes run through ``push`` (the daemon's
runs :func:`~imaginator.publish.push.push_to_registry` in the thread pool),
at most ``max_pushing`` at once over all streams, so that publishing never
holds more of the pool's threads than that; builds never wait for it.

The last outcome of each stream (the pushed reference and digest, or the
error, with its time) is kept for the stream's page and ``/metrics``; every
push attempt and its outcome is a line of the daemon log. Stopping cancels
the waits for retries, drops what is queued, asks the push in flight to stop
between two blobs and waits for it (the daemon bounds the wait).
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, DeferredSemaphore, gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger

from imaginator.config.environment import environment_of
from imaginator.config.main import BootstrapStream, ConfigError
from imaginator.config.publish import PublishTarget, resolve
from imaginator.config.streams import StreamsDocument
from imaginator.config.streams import lookup as lookup_stream
from imaginator.export.registry import RegistryError
from imaginator.export.source import ExportError
from imaginator.goformats.units import format_bytes, format_duration
from imaginator.publish.push import PushCancelled, PushOutcome
from imaginator.scheduler import BuildResult, observe
from imaginator.store.base import StoreError

__all__ = [
    "ATTEMPTS",
    "PublishJob",
    "PublishStatus",
    "Publisher",
    "PushFailure",
    "PushedImage",
    "target_lookup",
]

#: Attempts of one image's push (the first and the retries).
ATTEMPTS = 5
#: Seconds before the first retry (doubling after each further failure).
RETRY_DELAY = 60.0

_log = Logger()
_EXPECTED_ERRORS = (RegistryError, ExportError, StoreError, OSError, PushCancelled, ConfigError)


@dataclass(frozen=True)
class PublishJob:
    """One image to push to a stream's target."""

    stream: str
    image_name: str
    target: PublishTarget


@dataclass(frozen=True)
class PushedImage:
    """A successful push: ``reference`` is ``host/repository@digest``."""

    image_name: str
    reference: str
    digest: str
    tags: tuple[str, ...]
    finished_at: float
    blobs_sent: int = 0
    blobs_present: int = 0
    bytes_sent: int = 0


@dataclass(frozen=True)
class PushFailure:
    """A failed attempt; ``next_retry_at`` is ``None`` when no retry follows
    (the last attempt, a newer image queued, the daemon stopping)."""

    image_name: str
    target: str
    error: str
    finished_at: float
    attempt: int
    attempts: int
    next_retry_at: float | None = None


@dataclass(frozen=True)
class PublishStatus:
    """What the stream's page and ``/metrics`` show of a stream's publishing.

    ``target`` is where the stream's images go now (empty when it is no
    longer configured, or its setting cannot be used: ``target_error``);
    ``pushing`` the image being pushed now (attempt ``attempt``), ``queued``
    the image waiting behind it; ``last`` the last finished attempt (a
    failure says when it is retried) and ``last_success`` the last
    successful push.
    """

    stream: str
    target: str
    tags: tuple[str, ...] = ()
    target_error: str = ""
    pushing: str = ""
    attempt: int = 0
    attempts: int = ATTEMPTS
    queued: str = ""
    last: PushedImage | PushFailure | None = None
    last_success: PushedImage | None = None


TargetOf = Callable[[str], PublishTarget | None]
Push = Callable[[PublishJob, threading.Event], Awaitable[PushOutcome]]


def target_lookup(
    bootstrap_streams: Mapping[str, BootstrapStream],
    streams: Callable[[], StreamsDocument],
    arch: str,
) -> TargetOf:
    """The ``Publish`` target of a stream by name, from the configuration in
    force (``None``: not published). ``ConfigError`` when a stream pattern's
    setting does not give a usable reference for this stream."""

    def target_of(stream: str) -> PublishTarget | None:
        bootstrap = bootstrap_streams.get(stream)
        if bootstrap is not None:
            config, variables, where = bootstrap.publish, bootstrap.variables, "BootstrapStreams"
        else:
            normal = lookup_stream(streams(), stream, bootstrap_streams)
            if normal is None:
                return None
            config, variables, where = normal.publish, normal.variables, "image streams"
        if config is None:
            return None
        environment = environment_of(stream, variables, arch)
        return resolve(config, environment.get, f"{where}: {stream}.Publish")

    return target_of


@dataclass
class _Lane:
    """One stream's queue and history."""

    stream: str
    pending: PublishJob | None = None
    current: PublishJob | None = None
    attempt: int = 0
    working: bool = False
    worker: Deferred[None] | None = None
    sleeping: Deferred[None] | None = None
    last: PushedImage | PushFailure | None = None
    last_success: PushedImage | None = None
    #: The image whose every attempt failed (an identical rebuild queues it again).
    gave_up_on: str = ""


class Publisher(Service):
    """Pushes new images of configured streams (see the module docstring).

    ``target_of(stream)`` gives a stream's target (``target_lookup``),
    ``push(job, cancelled)`` pushes one image, ``redact`` removes secrets
    from error texts.
    """

    def __init__(
        self,
        *,
        clock: IReactorTime,
        target_of: TargetOf,
        push: Push,
        redact: Callable[[str], str] = lambda text: text,
        attempts: int = ATTEMPTS,
        retry_delay: float = RETRY_DELAY,
        max_pushing: int = 1,
    ) -> None:
        self._clock = clock
        self._target_of = target_of
        self._push = push
        self._redact = redact
        self._attempts = max(1, attempts)
        self._retry_delay = retry_delay
        self._slots = DeferredSemaphore(max(1, max_pushing))
        self._lanes: dict[str, _Lane] = {}
        self._cancelled = threading.Event()

    # -- the builder's listener ------------------------------------------------------

    def on_build(self, result: BuildResult) -> None:
        """Queue the result's image if it is a new image of a published stream."""
        if not self.running or result.error or not result.image_name or result.image is not None:
            return
        lane = self._lanes.get(result.stream)
        if result.identical and (lane is None or lane.gave_up_on != result.image_name):
            return
        try:
            target = self._target_of(result.stream)
        except ConfigError as exc:
            self._target_failed(result, self._redact(str(exc)))
            return
        if target is not None:
            self.enqueue(PublishJob(result.stream, result.image_name, target))

    def enqueue(self, job: PublishJob) -> None:
        """Put ``job`` in its stream's lane, replacing what waits there."""
        lane = self._lanes.setdefault(job.stream, _Lane(job.stream))
        lane.pending = job
        if lane.sleeping is not None:
            lane.sleeping.cancel()  # a newer image ends the older one's retries
        if not lane.working:
            lane.working = True
            worker = Deferred.fromCoroutine(self._work(lane))
            worker.addErrback(
                lambda failure: _log.failure(
                    "Publisher of {stream} failed", failure, stream=lane.stream
                )
            )
            if lane.working:  # not already finished
                lane.worker = worker

    def _target_failed(self, result: BuildResult, error: str) -> None:
        lane = self._lanes.setdefault(result.stream, _Lane(result.stream))
        lane.last = PushFailure(
            result.image_name, "", error, self._clock.seconds(), 0, self._attempts
        )
        _log.warn("Error publishing {image}: {error}", image=result.image_name, error=error)

    # -- pushing -----------------------------------------------------------------------

    async def _work(self, lane: _Lane) -> None:
        try:
            while lane.pending is not None and self.running:
                job, lane.pending = lane.pending, None
                await self._push_with_retries(lane, job)
        finally:
            lane.working = False
            lane.worker = None

    async def _push_with_retries(self, lane: _Lane, job: PublishJob) -> None:
        for attempt in range(1, self._attempts + 1):
            outcome = await self._attempt(lane, job, attempt)
            if outcome is None:
                return  # stopped before it could start
            now = self._clock.seconds()
            if isinstance(outcome, PushOutcome):
                self._succeeded(lane, job, outcome, now)
                return
            retry = attempt < self._attempts and lane.pending is None and bool(self.running)
            delay = self._retry_delay * 2 ** (attempt - 1)
            failure = PushFailure(
                job.image_name,
                str(job.target),
                outcome,
                now,
                attempt,
                self._attempts,
                now + delay if retry else None,
            )
            lane.last = failure
            self._log_failure(failure, retry, delay, newer=lane.pending is not None)
            if not retry:
                if lane.pending is None:
                    lane.gave_up_on = job.image_name
                return
            lane.sleeping = deferLater(self._clock, delay)
            try:
                await lane.sleeping
            except CancelledError:
                lane.last = replace(failure, next_retry_at=None)
                return
            finally:
                lane.sleeping = None

    async def _attempt(
        self, lane: _Lane, job: PublishJob, attempt: int
    ) -> PushOutcome | str | None:
        """One push: its outcome, the error text, or ``None`` if stopped first."""
        await self._slots.acquire()
        try:
            if not self.running:
                return None
            lane.current, lane.attempt = job, attempt
            _log.info(
                "Publishing {image} to {target} (attempt {attempt} of {attempts})",
                image=job.image_name,
                target=str(job.target),
                attempt=attempt,
                attempts=self._attempts,
            )
            try:
                return await self._push(job, self._cancelled)
            except _EXPECTED_ERRORS as exc:
                return self._redact(str(exc) or type(exc).__name__)
            except Exception as exc:  # a bug fails the push, not the daemon
                _log.failure("Unexpected error publishing {image}", image=job.image_name)
                return self._redact(f"internal error: {exc}")
        finally:
            lane.current = None
            self._slots.release()

    def _succeeded(self, lane: _Lane, job: PublishJob, outcome: PushOutcome, now: float) -> None:
        pushed = PushedImage(
            job.image_name,
            outcome.reference,
            outcome.digest,
            outcome.tags,
            now,
            outcome.blobs_sent,
            outcome.blobs_present,
            outcome.bytes_sent,
        )
        lane.last = lane.last_success = pushed
        lane.gave_up_on = ""
        _log.info(
            "Published {image} as {reference} (tags {tags}; {sent} blobs sent, {size}, "
            "{present} already there)",
            image=job.image_name,
            reference=outcome.reference,
            tags=", ".join(outcome.tags),
            sent=outcome.blobs_sent,
            size=format_bytes(outcome.bytes_sent),
            present=outcome.blobs_present,
        )

    def _log_failure(self, failure: PushFailure, retry: bool, delay: float, newer: bool) -> None:
        if retry:
            then = f"retrying in {format_duration(delay)}"
        elif newer:
            then = "a newer image is queued"
        elif not self.running:
            then = "stopping"
        else:
            then = "giving up"
        _log.warn(
            "Error publishing {image} to {target} (attempt {attempt} of {attempts}): "
            "{error}; {then}",
            image=failure.image_name,
            target=failure.target,
            attempt=failure.attempt,
            attempts=failure.attempts,
            error=failure.error,
            then=then,
        )

    # -- state for the pages -------------------------------------------------------------

    def publish_status(self, stream: str) -> PublishStatus | None:
        """The stream's publishing state; ``None`` if it is not published and
        never was since the daemon started."""
        target, error = None, ""
        try:
            target = self._target_of(stream)
        except ConfigError as exc:
            error = self._redact(str(exc))
        lane = self._lanes.get(stream)
        if lane is None and target is None and not error:
            return None
        status = PublishStatus(
            stream,
            str(target) if target is not None else "",
            target.tags if target is not None else (),
            target_error=error,
            attempts=self._attempts,
        )
        if lane is None:
            return status
        return replace(
            status,
            pushing=lane.current.image_name if lane.current is not None else "",
            attempt=lane.attempt if lane.current is not None else 0,
            queued=lane.pending.image_name if lane.pending is not None else "",
            last=lane.last,
            last_success=lane.last_success,
        )

    def last_outcomes(self) -> list[tuple[str, PushedImage | PushFailure, PushedImage | None]]:
        """``(stream, last finished attempt, last success)`` of every stream
        with a finished attempt, by stream name (for ``/metrics``)."""
        return [
            (name, lane.last, lane.last_success)
            for name, lane in sorted(self._lanes.items())
            if lane.last is not None
        ]

    # -- the service -----------------------------------------------------------------------

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self._cancelled.set()
        workers = []
        for lane in self._lanes.values():
            lane.pending = None
            if lane.sleeping is not None:
                lane.sleeping.cancel()
            if lane.worker is not None:
                workers.append(observe(lane.worker))
        return gatherResults(workers).addCallback(lambda _: None)
