"""Builds as a service: the :class:`Builder` (``builder.py``) and what its
callers pass and get back (``results.py``)."""

from imaginator.scheduler.builder import Builder
from imaginator.scheduler.results import (
    DAY,
    BuilderSettings,
    BuildOptions,
    BuildResult,
    CurrentBuild,
    Pipeline,
    UnknownStream,
    build_deadline_seconds,
    observe,
)

__all__ = [
    "DAY",
    "BuildOptions",
    "BuildResult",
    "Builder",
    "BuilderSettings",
    "CurrentBuild",
    "Pipeline",
    "UnknownStream",
    "build_deadline_seconds",
    "observe",
]
