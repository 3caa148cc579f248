"""The image stream dependency graph (reference §7).

Two layers:

* Pure functions over a ``stream → source`` mapping: :func:`classify` sorts
  the sources that are not normal streams into pattern sources and
  unbuildable ones, :func:`select_streams` applies the Excludes and Includes
  of ``GetDirectedGraph``, :func:`graphviz_dot` writes the Graphviz text and
  :func:`dependency_order` puts a list of streams parents-first (the
  auto-rebuild cycle uses it).
* :class:`DependencyGenerator`, a service that (re)generates the mapping by
  reading every normal stream's ``manifest``: on each streams update, on a
  timer, and on demand through :meth:`DependencyGenerator.get`. The reactor
  never blocks: git fetches, temporary directories and manifest reads all
  run in the thread pool, and every timer uses the injected clock.

Secrets (the variables file) are used only to expand ``ManifestUrl`` and
``ManifestDirectory`` for fetching; the fetch log and error texts name
repositories by their public URL and are scrubbed of every secret value.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from twisted.application.service import Service
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from imaginator.config.manifest import ManifestError, read_manifest_file
from imaginator.config.streams import (
    StreamConfig,
    StreamsDocument,
    manifest_location,
    stream_environment,
)
from imaginator.config.variables import make_redactor
from imaginator.goformats.units import format_duration
from imaginator.runtime.poller import Poller
from imaginator.runtime.reactors import IReactorTimeAndThreads
from imaginator.sources.git import fetch_manifest
from imaginator.sources.giturls import public_url

__all__ = [
    "INITIAL_INTERVAL",
    "MIN_INTERVAL",
    "MIN_MAX_AGE",
    "DependencyData",
    "DependencyGenerator",
    "FetchFunc",
    "classify",
    "dependency_order",
    "graphviz_dot",
    "select_streams",
    "stream_matches",
]

INITIAL_INTERVAL = 3600.0
"""Seconds before the first timer-driven generation (the first streams load
normally comes first)."""

MIN_INTERVAL = 10.0
"""Lower bound of the timer between two generations."""

INTERVAL_FETCH_FACTOR = 10.0
"""The timer after a run is this many times the run's cumulative fetch time."""

MIN_MAX_AGE = 2.0
"""The smallest positive ``max_age`` :meth:`DependencyGenerator.get` honours."""

LogFunc = Callable[[str], None]

FetchFunc = Callable[[str, str, LogFunc], object]
"""Fetches the default branch of repository ``url`` into directory ``dest``.

Called as ``fetch(url, dest, log)`` in a pool thread; blocking; raises on
failure (the exception text must not contain secrets); ``log`` takes one
line of fetch output at a time.
"""

_log = Logger()


# ============================================================ pure functions


def stream_matches(pattern: str, name: str) -> bool:
    """Whether an Exclude/Include ``pattern`` names stream ``name``.

    True if they are equal, or if ``pattern`` is a prefix of ``name``
    followed by ``/`` (``users`` matches ``users/fred/base``, not
    ``usersx``).
    """
    if name == pattern:
        return True
    return len(name) > len(pattern) and name.startswith(pattern) and name[len(pattern)] == "/"


def classify(
    stream_to_source: Mapping[str, str],
    normal: Collection[str],
    bootstrap: Collection[str],
    patterns: StreamsDocument,
) -> tuple[frozenset[str], frozenset[str]]:
    """Classify every source that is not itself a normal stream.

    Returns ``(pattern_sources, unbuildable_sources)``. A source that is a
    normal stream (in ``normal`` or a key of ``stream_to_source``) or a
    bootstrap stream is fine and in neither set; one matching exactly one
    of the document's ``StreamPatterns`` is a pattern source; one matching
    none, or several (a lookup error), is unbuildable.
    """
    normal_set = set(normal)
    bootstrap_set = set(bootstrap)
    pattern_sources: set[str] = set()
    unbuildable: set[str] = set()
    for source in set(stream_to_source.values()):
        if source in normal_set or source in stream_to_source or source in bootstrap_set:
            continue
        matches = sum(1 for _key, regex, _config in patterns.patterns if regex.fullmatch(source))
        if matches == 1:
            pattern_sources.add(source)
        else:
            unbuildable.add(source)
    return frozenset(pattern_sources), frozenset(unbuildable)


def _dependents_map(stream_to_source: Mapping[str, str]) -> dict[str, list[str]]:
    dependents: dict[str, list[str]] = {}
    for stream, source in stream_to_source.items():
        dependents.setdefault(source, []).append(stream)
    return dependents


def _closure(start: Iterable[str], step: Callable[[str], Iterable[str]]) -> set[str]:
    """Every name reachable from ``start`` through ``step``, ``start`` included."""
    seen: set[str] = set()
    pending = list(start)
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        pending.extend(step(name))
    return seen


def select_streams(
    stream_to_source: Mapping[str, str],
    excludes: Collection[str],
    includes: Collection[str],
    extra_names: Iterable[str] = (),
) -> frozenset[str]:
    """The names kept in a directed graph after Excludes and Includes (§7.3).

    The names considered are the streams and sources of ``stream_to_source``
    plus ``extra_names`` (bootstrap and auto-rebuilt streams, say).

    * Every name matching an exclude (:func:`stream_matches`), plus all its
      dependents transitively, is excluded.
    * If ``includes`` is not empty, only names matching an include, their
      dependents and their ancestors (source, source's source, …) are
      candidates; everything else is excluded too.

    Returns the names that are not excluded.
    """
    names = set(stream_to_source) | set(stream_to_source.values()) | set(extra_names)
    dependents = _dependents_map(stream_to_source)

    def dependents_of(name: str) -> Iterable[str]:
        return dependents.get(name, ())

    def source_of(name: str) -> Iterable[str]:
        source = stream_to_source.get(name)
        return () if source is None else (source,)

    excluded = _closure(
        (n for n in names if any(stream_matches(p, n) for p in excludes)), dependents_of
    )
    kept = names - excluded
    if includes:
        matched = [n for n in names if any(stream_matches(p, n) for p in includes)]
        wanted = _closure(matched, dependents_of) | _closure(matched, source_of)
        kept &= wanted
    return frozenset(kept)


def _dot_id(name: str) -> str:
    """``name`` as a quoted DOT identifier (quotes, backslashes, newlines escaped)."""
    escaped = name.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def graphviz_dot(
    data: DependencyData,
    excludes: Collection[str],
    includes: Collection[str],
    auto_rebuild: Collection[str],
    *,
    bootstrap: Collection[str] = (),
) -> str:
    """The Graphviz DOT text of ``GetDirectedGraph`` (reference §7.3).

    ``digraph all {``, then one ``"<stream>" -> "<source>"`` edge per kept
    stream sorted by stream name, then ``[fontcolor=grey]`` lines for kept
    pattern sources, ``[fontcolor=red]`` lines for kept unbuildable sources
    and ``[style=bold]`` lines for kept auto-rebuilt streams (each group
    sorted), then ``}``; two-space indent, newline-terminated lines.
    ``bootstrap`` names the bootstrap streams, so that an exclude or include
    naming one that no stream uses is still honoured.
    """
    stream_to_source = data.stream_to_source
    kept = select_streams(
        stream_to_source, excludes, includes, extra_names=[*auto_rebuild, *bootstrap]
    )
    lines = ["digraph all {"]
    for stream in sorted(stream_to_source):
        if stream in kept:
            lines.append(f"  {_dot_id(stream)} -> {_dot_id(stream_to_source[stream])}")
    for names, attribute in (
        (data.pattern_sources, "[fontcolor=grey]"),
        (data.unbuildable_sources, "[fontcolor=red]"),
        (auto_rebuild, "[style=bold]"),
    ):
        for name in sorted(set(names)):
            if name in kept:
                lines.append(f"  {_dot_id(name)} {attribute}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def dependency_order(
    streams: Sequence[str],
    stream_to_source: Mapping[str, str],
    on_cycle: Callable[[list[str]], object] | None = None,
) -> list[str]:
    """``streams`` (duplicates dropped) reordered so that sources come first.

    If a stream's source chain (source, source's source, …, through
    streams not in the list too) reaches another listed stream, that one
    comes earlier; otherwise list order is kept. A cycle in the chain is
    reported once through ``on_cycle(cycle)`` (default: a logged warning)
    with the names in chain order and the first repeated at the end
    (``["a", "b", "a"]``); it never makes this loop, and the streams in it
    keep their list order.
    """
    wanted = set(streams)
    done: set[str] = set()
    result: list[str] = []
    for stream in streams:
        chain: list[str] = []
        on_chain: set[str] = set()
        current: str | None = stream
        while current is not None and current not in done and current not in on_chain:
            chain.append(current)
            on_chain.add(current)
            current = stream_to_source.get(current)
        if current is not None and current in on_chain:
            cycle = [*chain[chain.index(current) :], current]
            if on_cycle is not None:
                on_cycle(cycle)
            else:
                _log.warn("Dependency cycle: {cycle}", cycle=" -> ".join(cycle))
            # Members of a cycle have no first one: keep their list order.
            members = set(cycle)
            for name in streams:
                if name in members and name not in done:
                    done.add(name)
                    result.append(name)
        for name in reversed(chain):
            if name in done:
                continue
            done.add(name)
            if name in wanted:
                result.append(name)
    return result


# ===================================================================== data


@dataclass(frozen=True)
class DependencyData:
    """One generation's result, and the outcome of the latest attempt.

    ``generated_at`` is the clock time of the last *successful* generation
    (0.0 if none succeeded yet: then the mapping and sets are empty);
    ``stream_to_source`` maps every normal stream to its manifest's
    ``SourceImage``. ``fetch_log``, ``last_attempt_at`` and
    ``last_attempt_error`` (empty on success) describe the latest attempt,
    successful or not.
    """

    generated_at: float = 0.0
    stream_to_source: dict[str, str] = field(default_factory=dict)
    unbuildable_sources: frozenset[str] = frozenset()
    pattern_sources: frozenset[str] = frozenset()
    fetch_log: str = ""
    last_attempt_at: float = 0.0
    last_attempt_error: str = ""

    @property
    def has_data(self) -> bool:
        """Whether a generation has ever succeeded (else only attempt details are set)."""
        return self.generated_at > 0.0


# ================================================================ generator


class _GenerationError(Exception):
    """A failed generation; the message is the attempt's error."""


@dataclass(frozen=True)
class _Location:
    """Where one stream's manifest is read from."""

    stream: str
    config: StreamConfig
    url: str  # expanded, may hold secrets: never shown
    directory: str  # expanded
    local_root: str | None  # the path of a dir:// URL, else None (git)


@dataclass
class _FetchOutcome:
    """What one git fetch did (produced in a pool thread)."""

    url: str
    dest: str
    lines: list[str]
    seconds: float
    error: str | None


def _default_fetch(url: str, dest: str, log: LogFunc) -> object:
    """A shallow fetch of the remote's default branch, whole tree, into ``dest``."""
    return fetch_manifest(url, "", dest, log=log)


def _inside(path: str, root: str) -> bool:
    """Whether ``path`` (resolved) is ``root`` (resolved) or below it."""
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    return real == real_root or real.startswith(real_root.rstrip("/") + "/")


class WatchedStreams(Protocol):
    """The image streams document in force and its updates
    (``sources.streams.ImageStreams``; its ``is_loaded``, if it has one, says
    whether the first generation can start at once)."""

    def current(self) -> StreamsDocument: ...

    def subscribe(self, callback: Callable[[StreamsDocument], object]) -> Callable[[], None]: ...


class DependencyGenerator(Service):
    """Keeps the stream dependency data fresh (reference §7.1, §7.2).

    A generation is started by each streams update (``streams.subscribe``;
    updates arriving during a run cause exactly one more run afterwards),
    by a timer (first after :data:`INITIAL_INTERVAL`, then, after each run,
    ``max(10 s, 10 * the run's cumulative fetch time)``), and by
    :meth:`get` callers needing fresh data. Two runs never overlap.

    ``streams`` has ``current() -> StreamsDocument`` and
    ``subscribe(callback) -> unsubscribe``; if it also says ``is_loaded``
    when the service starts, a first run starts at once. ``secrets()``
    returns the variables that expand manifest locations, ``redact_values()``
    (default: the same) those that must not appear in messages. ``tmpdir`` is where git checkouts
    go (default: the system's temporary directory).

    ``fetch`` (see :data:`FetchFunc`) and ``monotonic`` (elapsed-time
    measurements, called in pool threads too) replace the real ones in
    tests.
    """

    def __init__(
        self,
        *,
        reactor: IReactorTimeAndThreads,
        clock: IReactorTime,
        threadpool: ThreadPool,
        streams: WatchedStreams,
        bootstrap_streams: Collection[str],
        secrets: Callable[[], Mapping[str, str]],
        arch: str,
        tmpdir: str | None = None,
        redact_values: Callable[[], Mapping[str, str]] | None = None,
        fetch: FetchFunc | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._reactor = reactor
        self._clock = clock
        self._threadpool = threadpool
        self._streams = streams
        self._bootstrap = frozenset(bootstrap_streams)
        self._secrets = secrets
        self._redact_values = redact_values if redact_values is not None else secrets
        self._arch = arch
        self._tmpdir = tmpdir
        self._fetch: FetchFunc = fetch if fetch is not None else _default_fetch
        self._monotonic = monotonic
        self._data: DependencyData | None = None
        self._poller = Poller(
            "dependency generator",
            self._run_once,
            clock=clock,
            interval=lambda: self.interval,
            after_end=True,
        )
        self._unsubscribe: Callable[[], object] | None = None
        self.runs = 0
        """How many generations have been attempted (for tests and metrics)."""
        self.interval = INITIAL_INTERVAL
        """Seconds the timer is set to (after the next start or run)."""

    # ------------------------------------------------------------- public

    @property
    def bootstrap_streams(self) -> frozenset[str]:
        """The bootstrap stream names (needed by :func:`graphviz_dot`)."""
        return self._bootstrap

    @property
    def busy(self) -> bool:
        """Whether a generation is running now."""
        return self._poller.busy

    def current(self) -> DependencyData | None:
        """The data as they are now, without waiting (None before any attempt)."""
        return self._data

    async def get(self, max_age: float) -> DependencyData | None:
        """The dependency data, fresh enough (reference §7.2).

        With ``max_age <= 0``: whatever is there now (None if no generation
        was ever attempted). Otherwise (``max_age`` raised to at least 2 s)
        wait until the last attempt is younger than ``max_age``, triggering
        a run if none is in progress; a run already in progress answers.
        """
        if max_age <= 0:
            return self._data
        max_age = max(max_age, MIN_MAX_AGE)
        while True:
            data = self._data
            if data is not None and self._clock.seconds() - data.last_attempt_at < max_age:
                return data
            running = self._poller.join()
            await (running if running is not None else self._poller.run_now())

    def trigger(self) -> None:
        """Ask for a run now; if one is in progress, one more after it (coalesced)."""
        self._poller.trigger()

    # ------------------------------------------------------------ service

    def startService(self) -> None:
        super().startService()
        self._unsubscribe = self._streams.subscribe(self._on_streams)
        self._poller.start(first_delay=INITIAL_INTERVAL)
        if getattr(self._streams, "is_loaded", False) is True:
            self.trigger()

    def stopService(self) -> Deferred[None]:
        """No more generations; fires when the one in flight has ended (bounded)."""
        super().stopService()
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        return self._poller.stop()

    # ---------------------------------------------------------- scheduling

    def _on_streams(self, _document: StreamsDocument) -> None:
        self.trigger()

    async def _run_once(self) -> None:
        """One generation; the pause before the next grows with its fetch time."""
        fetch_seconds = await self._attempt()
        self.interval = max(MIN_INTERVAL, INTERVAL_FETCH_FACTOR * fetch_seconds)

    # ---------------------------------------------------------- generation

    async def _attempt(self) -> float:
        """One generation; records the outcome; returns the cumulative fetch time."""
        self.runs += 1
        redact = make_redactor(self._redact_values())
        log: list[str] = []
        fetch_seconds = 0.0
        try:
            result, fetch_seconds = await self._generate(log, redact)
        except Exception as exc:
            message = str(exc) if isinstance(exc, _GenerationError) else f"{exc!r}"
            message = redact(message)
            previous = self._data or DependencyData()
            self._data = replace(
                previous,
                fetch_log=redact("".join(log)),
                last_attempt_at=self._clock.seconds(),
                last_attempt_error=message,
            )
            _log.error("Failed to generate dependencies: {error}", error=message)
            return fetch_seconds
        self._data = result
        return fetch_seconds

    def _locations(self, document: StreamsDocument, secrets: Mapping[str, str]) -> list[_Location]:
        locations = []
        for stream in sorted(document.streams):
            if stream in self._bootstrap:
                continue
            config = document.streams[stream]
            url, directory = manifest_location(stream, config, None, secrets, self._arch)
            local_root = url[len("dir://") :] if url.startswith("dir://") else None
            locations.append(_Location(stream, config, url, directory, local_root))
        return locations

    async def _generate(
        self, log: list[str], redact: Callable[[str], str]
    ) -> tuple[DependencyData, float]:
        """Generate; appends fetch-log lines to ``log``; raises ``_GenerationError``."""
        start = self._monotonic()
        document: StreamsDocument = self._streams.current()
        locations = self._locations(document, self._secrets())
        urls = sorted({loc.url for loc in locations if loc.local_root is None})
        fetch_seconds = 0.0
        workdir: str | None = None
        try:
            outcomes: dict[str, _FetchOutcome] = {}
            if urls:
                workdir = await self._in_thread(
                    tempfile.mkdtemp, prefix="imaginator-deps-", dir=self._tmpdir
                )

                def collect(outcome: _FetchOutcome) -> _FetchOutcome:
                    # Each fetch's lines go to the shared log as one block, in
                    # the order the fetches finish.
                    log.extend(redact(line) + "\n" for line in outcome.lines)
                    return outcome

                fetches = [
                    self._in_thread(
                        self._fetch_one, url, os.path.join(workdir, f"repo-{index}")
                    ).addCallback(collect)
                    for index, url in enumerate(urls)
                ]
                for outcome in await gatherResults(fetches, consumeErrors=True):
                    outcomes[outcome.url] = outcome
                    fetch_seconds += outcome.seconds
            stream_to_source = await self._in_thread(self._read_manifests, locations, outcomes)
        finally:
            if workdir is not None:
                await self._in_thread(shutil.rmtree, workdir, ignore_errors=True)
        log.append(f"Cumulative fetch time: {format_duration(fetch_seconds)}\n")
        normal = [loc.stream for loc in locations]
        pattern_sources, unbuildable = classify(stream_to_source, normal, self._bootstrap, document)
        if self._bootstrap:
            for stream in sorted(stream_to_source):
                source = stream_to_source[stream]
                if source in unbuildable:
                    _log.warn(
                        "stream: {stream} has unbuildable source: {source}",
                        stream=stream,
                        source=source,
                    )
        log.append(f"Generated dependencies in: {format_duration(self._monotonic() - start)}\n")
        now = self._clock.seconds()
        data = DependencyData(
            generated_at=now,
            stream_to_source=stream_to_source,
            unbuildable_sources=unbuildable,
            pattern_sources=pattern_sources,
            fetch_log=redact("".join(log)),
            last_attempt_at=now,
            last_attempt_error="",
        )
        return data, fetch_seconds

    def _in_thread(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred[Any]:
        return deferToThreadPool(self._reactor, self._threadpool, f, *args, **kwargs)

    # ----------------------------------------------------- in pool threads

    def _fetch_one(self, url: str, dest: str) -> _FetchOutcome:
        """Fetch one repository (pool thread); never raises."""
        lines: list[str] = []
        start = self._monotonic()
        error = None
        try:
            self._fetch(url, dest, lines.append)
        except Exception as exc:
            error = str(exc) or type(exc).__name__
            lines.append(f"Error fetching {public_url(url)}: {error}")
        return _FetchOutcome(url, dest, lines, self._monotonic() - start, error)

    def _read_manifests(
        self, locations: list[_Location], outcomes: Mapping[str, _FetchOutcome]
    ) -> dict[str, str]:
        """``stream → SourceImage`` for every location (pool thread).

        Raises ``_GenerationError("stream: X: …")`` for the first stream (by
        name) whose fetch failed or whose manifest cannot be read.
        """
        stream_to_source: dict[str, str] = {}
        for loc in locations:
            try:
                directory = self._manifest_directory(loc, outcomes)
                env = stream_environment(loc.stream, loc.config, self._arch)
                manifest = read_manifest_file(directory, env)
            except (_GenerationError, ManifestError) as exc:
                raise _GenerationError(f"stream: {loc.stream}: {exc}") from None
            stream_to_source[loc.stream] = manifest.source_image
        return stream_to_source

    @staticmethod
    def _manifest_directory(loc: _Location, outcomes: Mapping[str, _FetchOutcome]) -> str:
        if loc.local_root is not None:
            if not loc.local_root.startswith("/"):
                raise _GenerationError(f"missing leading slash: {loc.local_root}")
            return os.path.join(loc.local_root, loc.directory)
        outcome = outcomes[loc.url]
        if outcome.error is not None:
            raise _GenerationError(outcome.error)
        directory = os.path.join(outcome.dest, loc.directory)
        if not _inside(directory, outcome.dest):
            raise _GenerationError(f"{loc.directory} is outside the repository")
        return directory
