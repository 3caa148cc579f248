"""The automatic rebuild cycle: keeps the listed streams fresh on a timer.

A cycle builds every stream of ``ImageStreamsToAutoRebuild`` in list order,
one after the other. The first cycle starts one second after the service
starts; each later one starts ``interval`` after the previous one started, but
never sooner than one second after it ended, so cycles never overlap. Images
built by the cycle expire after twice the interval (one hour when the timer is
off), so a stream that stops being rebuilt ages out.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from imaginator.builder import BuildOptions, BuildResult
from imaginator.config.units import format_duration

FIRST_CYCLE_DELAY = 1.0
MINIMUM_GAP = 1.0

_log = Logger()


class AutoBuilder(Service):
    """Runs rebuild cycles every ``interval`` seconds (0 disables the timer)."""

    def __init__(
        self,
        *,
        clock,
        build: Callable[[str, BuildOptions], Deferred | object],
        streams: Callable[[], Sequence[str]],
        interval: float,
    ) -> None:
        self._clock = clock
        self._build = build
        self._streams = streams
        self.interval = interval
        self._timer = None
        self._cycle: Deferred | None = None
        self.cycles_completed = 0

    @property
    def image_lifetime(self) -> float:
        return 2 * self.interval if self.interval > 0 else 3600.0

    def startService(self) -> None:
        super().startService()
        if self.interval > 0:
            self._schedule(FIRST_CYCLE_DELAY)

    def stopService(self):
        super().stopService()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def busy(self) -> bool:
        return self._cycle is not None

    def _schedule(self, delay: float) -> None:
        self._timer = self._clock.callLater(delay, self._start_cycle)

    def _start_cycle(self) -> None:
        self._timer = None
        self.run_cycle()

    def run_cycle(self) -> Deferred:
        """Start a cycle now (unless one is running); fires when it ends."""
        if self._cycle is not None:
            return self._cycle
        started = self._clock.seconds()
        self._cycle = Deferred.fromCoroutine(self._run_cycle())

        def finished(result):
            self._cycle = None
            self.cycles_completed += 1
            if self.running and self.interval > 0 and self._timer is None:
                now = self._clock.seconds()
                self._schedule(max(started + self.interval - now, MINIMUM_GAP))
            return result

        return self._cycle.addBoth(finished)

    async def _run_cycle(self) -> list[BuildResult]:
        started = self._clock.seconds()
        _log.info("Starting automatic image build cycle")
        results = []
        for stream in self._streams():
            options = BuildOptions(expires_in=self.image_lifetime, auto=True)
            try:
                results.append(await self._build(stream, options))
            except Exception:
                _log.failure("Error building image: {stream}", stream=stream)
        _log.info(
            "Completed automatic image build cycle in {duration}",
            duration=format_duration(self._clock.seconds() - started),
        )
        return results
