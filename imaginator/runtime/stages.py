"""How long each stage of one build took: a lap timer the pipeline steps report to.

A build is a sequence of stages (fetch the manifest, unpack the source image,
each script, install packages, scan, tests, store). Each step calls
``begin(name)`` when it starts, which also ends the stage before it, so the
recorded stages are back to back and add up to the build's duration, and a
step needs one line, not a ``with`` block around its body. ``finish()`` ends
the last stage; ``finish(failed=True)`` marks it as the one the build failed
in. The pages show the stages as a table and ``/metrics`` exports them.

Bounded: at most ``MAX_STAGES`` stages are kept (a manifest with thousands of
scripts adds up the rest under ``OTHER``), and names are cut at
``MAX_NAME`` characters.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

MAX_STAGES = 100
"""Stages kept per build; later ones are added up in one stage named ``OTHER``."""

MAX_NAME = 120
"""Characters of a stage name kept."""

OTHER = "(more stages)"


@dataclass(frozen=True)
class StageTime:
    """One finished stage: its name, how long it took, and whether the build failed in it."""

    name: str
    seconds: float
    failed: bool = False


class StageRecorder:
    """Times the consecutive stages of one build (see the module's docstring).

    ``clock`` gives monotonic seconds. Stage names come from the pipeline
    (fixed words, manifest directory and script names), never from secrets.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._stages: list[StageTime] = []
        self._current: str | None = None
        self._current_started = 0.0
        self.finished = False

    def begin(self, name: str) -> None:
        """End the stage in progress (if any) and start ``name``."""
        if self.finished:
            return
        now = self._clock()
        self._end(now, failed=False)
        self._current = name[:MAX_NAME]
        self._current_started = now

    def finish(self, *, failed: bool = False) -> None:
        """End the stage in progress; ``failed``: the build failed in it. Later calls do nothing."""
        if self.finished:
            return
        self._end(self._clock(), failed=failed)
        self.finished = True

    def current(self) -> tuple[str, float] | None:
        """The stage in progress and how long it has run, or ``None``."""
        if self._current is None:
            return None
        return self._current, max(0.0, self._clock() - self._current_started)

    def stages(self) -> tuple[StageTime, ...]:
        """The finished stages, in order."""
        return tuple(self._stages)

    def _end(self, now: float, *, failed: bool) -> None:
        if self._current is None:
            return
        stage = StageTime(self._current, max(0.0, now - self._current_started), failed)
        self._current = None
        if len(self._stages) < MAX_STAGES - 1:
            self._stages.append(stage)
            return
        if len(self._stages) == MAX_STAGES - 1:
            self._stages.append(StageTime(OTHER, 0.0))
        last = self._stages[-1]
        self._stages[-1] = StageTime(
            OTHER, last.seconds + stage.seconds, last.failed or stage.failed
        )


def stage_totals(stages: tuple[StageTime, ...]) -> dict[str, float]:
    """Seconds per stage name (a name that occurs twice, e.g. a stage before and
    after a source build, is added up), in the order of first occurrence."""
    totals: dict[str, float] = {}
    for stage in stages:
        totals[stage.name] = totals.get(stage.name, 0.0) + stage.seconds
    return totals
