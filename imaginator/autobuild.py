"""The automatic rebuild cycle: keeps the listed streams fresh on a timer.

A cycle builds every stream of ``ImageStreamsToAutoRebuild`` one after the
other, **parents first** (dependency order; the configured order breaks ties).
The first cycle starts one second after the service starts; each later one
starts ``interval`` after the previous one started, but never sooner than one
second after it ended, so cycles never overlap (``runtime.poller`` keeps that
schedule). Built images expire after
twice the interval (one hour when the timer is off).

When a build fails, or auto builds are disabled, or a stream's source failed
earlier in the same cycle, the stream's latest image is kept alive instead:
its expiry is extended to now + twice the interval.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from imaginator.goformats.units import format_duration, format_go_duration, format_time
from imaginator.pipeline.outcome import LatestImages
from imaginator.runtime.poller import Poller
from imaginator.scheduler import BuildOptions, BuildResult

FIRST_CYCLE_DELAY = 1.0
MINIMUM_GAP = 1.0
STREAMS_WAIT = 300.0
#: How long stopping waits for the cycle in flight (its builds are being killed).
STOP_TIMEOUT = 60.0

_log = Logger()


class AutoBuildError(Exception):
    """A refused auto-build request (the text is the RPC error)."""


class AutoBuilder(Service):
    """Runs rebuild cycles every ``interval`` seconds (0 disables the timer).

    ``build(stream, options)`` builds; ``store`` has ``find_latest_image`` and
    ``change_image_expiration``; ``order(streams)`` returns the streams parents
    first and ``source_of(stream)`` a stream's source stream (both from the
    dependency graph); ``streams_loaded()`` returns a Deferred firing once
    the image streams are known.
    """

    def __init__(
        self,
        *,
        clock: IReactorTime,
        build: Callable[[str, BuildOptions], Awaitable[BuildResult]],
        streams: Callable[[], Sequence[str]],
        interval: float,
        store: LatestImages | None = None,
        order: Callable[[Sequence[str]], Sequence[str]] = list,
        source_of: Callable[[str], str | None] = lambda _stream: None,
        streams_loaded: Callable[[], Deferred] | None = None,
        stop_timeout: float = STOP_TIMEOUT,
    ) -> None:
        self._clock = clock
        self._build = build
        self._streams = streams
        self.interval = interval
        self._store = store
        self._order = order
        self._source_of = source_of
        self._streams_loaded = streams_loaded
        self._poller = Poller(
            "automatic image build cycle",
            self._run_cycle,
            clock=clock,
            interval=interval,
            min_gap=MINIMUM_GAP,
            stop_timeout=stop_timeout,
        )
        self._disabled_until = 0.0
        self.last_cycle: list[tuple[str, str]] = []  # (stream, what happened)

    # -- settings -----------------------------------------------------------------

    @property
    def image_lifetime(self) -> float:
        return 2 * self.interval if self.interval > 0 else 3600.0

    def disable(self, duration: float) -> float:
        """Only extend image lifetimes until now + ``duration``; returns that time.

        Refused beyond four intervals (when the timer runs), so auto builds
        cannot be forgotten in the off position.
        """
        if self.interval > 0 and duration > 4 * self.interval:
            raise AutoBuildError(
                "cannot disable auto building for more than: "
                + format_go_duration(4 * self.interval)
            )
        self._disabled_until = self._clock.seconds() + max(duration, 0.0)
        return self._disabled_until

    def disabled_until(self) -> float | None:
        return self._disabled_until if self._disabled_until > self._clock.seconds() else None

    # -- the timer ------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._poller.start(first_delay=FIRST_CYCLE_DELAY if self.interval > 0 else None)

    def stopService(self) -> Deferred[None]:
        """Stop the timer; fires when the cycle in flight (if any) has ended, bounded."""
        super().stopService()
        return self._poller.stop()

    def busy(self) -> bool:
        return self._poller.busy

    @property
    def cycles_completed(self) -> int:
        return self._poller.runs

    def run_cycle(self) -> Deferred[list[tuple[str, str]]]:
        """Start a cycle now (or join the one running); fires when it ends."""
        running = self._poller.join()
        return running if running is not None else self._poller.run_now()

    async def start(self, *, wait_to_start: bool, wait_for_complete: bool) -> None:
        """``StartAutoBuilds``: run a cycle now.

        A cycle in progress is "auto build busy" unless ``wait_to_start``, in
        which case a new cycle starts when it ends. With ``wait_for_complete``
        this returns when the new cycle has finished.
        """
        if self._poller.busy and not wait_to_start:
            raise AutoBuildError("auto build busy")
        cycle = self._poller.run_now()
        if wait_for_complete:
            await cycle
        else:
            cycle.addErrback(lambda _failure: None)  # logged by the poller

    # -- one cycle --------------------------------------------------------------------

    async def _wait_for_streams(self) -> bool:
        if self._streams_loaded is None:
            return True
        try:
            await self._streams_loaded().addTimeout(STREAMS_WAIT, self._clock)
        except Exception:
            _log.warn("Image streams not loaded: this cycle only extends image lifetimes")
            return False
        return True

    async def _run_cycle(self) -> list[tuple[str, str]]:
        started = self._clock.seconds()
        extend_only = not await self._wait_for_streams()
        _log.info("Starting automatic image build cycle")
        failed: set[str] = set()
        outcome: list[tuple[str, str]] = []
        for stream in self._order(list(self._streams())):
            if not extend_only and self.disabled_until() is not None:
                until = self._disabled_until
                _log.info(
                    "Auto rebuilds disabled until {until} (for {left}), will extend image "
                    "lifetimes",
                    until=format_time(until),
                    left=format_duration(until - self._clock.seconds()),
                )
                extend_only = True
            source = self._failed_source(stream, failed)
            if extend_only or source is not None:
                if source is not None and not extend_only:
                    _log.info(
                        "Not building {stream}: its source {source} failed in this cycle",
                        stream=stream,
                        source=source,
                    )
                    failed.add(stream)
                name = await self._extend(stream)
                outcome.append((stream, f"extended {name}" if name else "no image to extend"))
                continue
            options = BuildOptions(expires_in=self.image_lifetime, auto=True)
            try:
                result = await self._build(stream, options)
            except Exception as exc:
                _log.failure("Error building image: {stream}", stream=stream)
                result = BuildResult(stream, "", 0, 0, b"", error=str(exc))
            if not result.error:
                outcome.append((stream, f"built {result.image_name}"))
                continue
            failed.add(stream)
            name = await self._extend(stream, quiet=True)
            if name:
                _log.info(
                    "Error building image: {stream}: {error}, extended: {name}",
                    stream=stream,
                    error=result.error,
                    name=name,
                )
            outcome.append((stream, f"failed, extended {name}" if name else "failed"))
        _log.info(
            "Completed automatic image build cycle in {duration}",
            duration=format_duration(self._clock.seconds() - started),
        )
        self.last_cycle = outcome
        return outcome

    def _failed_source(self, stream: str, failed: set[str]) -> str | None:
        """The nearest ancestor of ``stream`` that failed in this cycle, if any."""
        seen = {stream}
        source = self._source_of(stream)
        while source is not None and source not in seen:
            if source in failed:
                return source
            seen.add(source)
            source = self._source_of(source)
        return None

    async def _extend(self, stream: str, quiet: bool = False) -> str | None:
        """Keep the stream's latest image alive for another image lifetime.

        A store error is logged with the stream and image and the cycle goes
        on: one unreadable record must not stop every other stream's turn.
        """
        if self._store is None:
            return None
        name = None
        try:
            name = await self._store.find_latest_image(stream)
            if name is None:
                return None
            expires_at = int((self._clock.seconds() + self.image_lifetime) * 1e9)
            await self._store.change_image_expiration(name, expires_at)
        except Exception as exc:
            _log.warn(
                "Failed to extend the latest image of {stream} ({name}): {error}",
                stream=stream,
                name=name or "not found",
                error=str(exc),
            )
            return None
        if not quiet:
            _log.info("Extended expiration for image: {name}", name=name)
        return name
