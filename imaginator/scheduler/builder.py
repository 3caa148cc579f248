"""The builder: runs builds of streams and remembers what happened.

One build per stream runs at a time; a request identical to a running one joins
it and gets the same result; a global semaphore bounds how many builds run at
once. Every build has a ``BuildLog`` that pages and RPC clients can follow
while it runs, and a ``BuildResult`` kept as the stream's last result.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, DeferredLock, DeferredSemaphore
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from imaginator.config.main import BootstrapStream, MainConfig
from imaginator.config.streams import StreamConfig, StreamsDocument
from imaginator.config.streams import lookup as lookup_stream
from imaginator.goformats.jsonc import ConfigError
from imaginator.goformats.units import format_duration
from imaginator.image.filter import Filter
from imaginator.image.model import Image
from imaginator.pipeline.caches import PackageCaches
from imaginator.pipeline.freshness import Freshness, inputs_digest
from imaginator.pipeline.manifest_build import NeedSourceImage, NormalBuild
from imaginator.pipeline.outcome import KeptTree, Publication, TreesInFlight, publish
from imaginator.pipeline.pack import BuildEnv, BuildError, LocalObjects
from imaginator.pipeline.report import BuildReport
from imaginator.pipeline.rootfs import SourceTrees
from imaginator.runtime.buildlog import BuildLog
from imaginator.runtime.process import ProcessRunner
from imaginator.runtime.reactors import IReactorTimeAndThreads
from imaginator.scheduler.results import (
    DAY,
    REAL_PIPELINE,
    BuilderSettings,
    BuildOptions,
    BuildResult,
    BuildSecrets,
    CurrentBuild,
    Pipeline,
    StreamsSource,
    UnknownStream,
    build_deadline_seconds,
    observe,
)
from imaginator.store.base import ImageStore, StoreError

_log = Logger()

_T = TypeVar("_T")


@dataclass
class _Running:
    current: CurrentBuild
    options: BuildOptions
    waiters: list[Deferred] = field(default_factory=list)


class _NoStreams:
    """The streams registry when no ``ImageStreamsUrl`` is configured."""

    def current(self) -> StreamsDocument:
        return StreamsDocument()

    async def ensure_known(self, name: str, is_known: Callable[[StreamsDocument], bool]) -> bool:
        return is_known(self.current())


class Builder:
    """Runs builds against the image store and keeps current/last build state.

    ``streams`` is the registry of normal streams (``current()`` and
    ``ensure_known(name, predicate)``, which reloads once for an unknown name);
    ``secrets`` gives the variables builds expand with (``values()``), those
    that must not be shown (``secret_values()``) and removes them from text
    (``redact(text)``).
    """

    def __init__(
        self,
        *,
        reactor: IReactorTimeAndThreads,
        threadpool: ThreadPool,
        config: MainConfig,
        store: ImageStore,
        local_store: LocalObjects,
        runner: ProcessRunner,
        settings: BuilderSettings,
        streams: StreamsSource | None = None,
        secrets: BuildSecrets | None = None,
        pipeline: Pipeline = REAL_PIPELINE,
    ) -> None:
        self._reactor = reactor
        self._pipeline = pipeline
        self._threadpool = threadpool
        self.config = config
        self._store = store
        self._local_store = local_store
        self._runner = runner
        self._settings = settings
        self._streams = streams if streams is not None else _NoStreams()
        self._secrets = secrets
        self._mtimes_filter = (
            Filter(config.mtimes_copy_filter_lines) if config.mtimes_copy_filter_lines else None
        )
        self._stream_locks: dict[str, DeferredLock] = {}
        limit = settings.maximum_concurrent_builds
        self._slots = DeferredSemaphore(limit) if limit > 0 else None
        self._running: dict[str, _Running] = {}
        self._last: dict[str, BuildResult] = {}
        self._build_requests_disabled_until: float | None = None
        self._listeners: list[Callable[[BuildResult], object]] = []
        self._active = 0
        self._idle_waiters: list[Deferred] = []
        self._paused: Deferred | None = None
        self.shutting_down = False
        self.source_trees = (
            SourceTrees(
                settings.tree_cache_dir,
                keep=settings.tree_cache_images,
                reactor=reactor,
                threadpool=threadpool,
                store=local_store,
                images=store,
            )
            if settings.tree_cache_dir
            else None
        )
        self._trees_in_flight = TreesInFlight(self.source_trees, self._in_thread)
        caches = config.fast_paths.package_caches
        self.package_caches = (
            PackageCaches(caches, settings.package_cache_dir, self._in_thread)
            if caches and settings.package_cache_dir
            else None
        )
        self._freshness = Freshness(config, self.source_trees, self.package_caches, settings.tmpdir)

    # -- state for pages and RPC -------------------------------------------------

    def current_builds(self) -> list[CurrentBuild]:
        return [self._running[s].current for s in sorted(self._running)]

    def current_build(self, stream: str) -> CurrentBuild | None:
        running = self._running.get(stream)
        return running.current if running else None

    def last_results(self) -> list[BuildResult]:
        return [self._last[s] for s in sorted(self._last)]

    def last_result(self, stream: str) -> BuildResult | None:
        return self._last.get(stream)

    def normal_streams(self) -> Mapping[str, StreamConfig]:
        return self._streams.current().streams

    def stream_names(self) -> list[str]:
        return sorted(set(self.config.bootstrap_streams) | set(self.normal_streams()))

    def auto_rebuild_streams(self) -> frozenset[str]:
        return frozenset(self.config.image_streams_to_auto_rebuild)

    def build_requests_disabled_until(self) -> float | None:
        until = self._build_requests_disabled_until
        if until is not None and until <= self._reactor.seconds():
            return None
        return until

    def disable_build_requests(self, duration: float) -> float | None:
        """Refuse RPC build requests for ``duration`` seconds (0 re-enables, 24 h at most)."""
        if duration > DAY:
            raise BuildError("cannot disable build requests for more than: 24h0m0s")
        if duration <= 0:
            self._build_requests_disabled_until = None
            return None
        self._build_requests_disabled_until = self._reactor.seconds() + duration
        return self._build_requests_disabled_until

    def add_listener(self, callback: Callable[[BuildResult], object]) -> None:
        """Call ``callback(result)`` after every finished build (for the log archive)."""
        self._listeners.append(callback)

    def running_count(self) -> int:
        return self._active

    async def exclusive(self, work: Callable[[], Awaitable[_T]]) -> _T:
        """Run ``work()`` while no build runs (new builds wait until it is done).

        Used for garbage collection: a running build's objects are not yet
        referenced by any image, so they must not be collected meanwhile.
        """
        while self._paused is not None:
            await observe(self._paused)
        paused: Deferred = Deferred()
        self._paused = paused
        try:
            while self._active:
                waiter: Deferred = Deferred()
                self._idle_waiters.append(waiter)
                await waiter
            return await work()
        finally:
            self._paused = None
            paused.callback(None)

    async def shutdown(self, timeout: float = 60.0) -> None:
        """Kill running builds' processes and wait until they are recorded as failed."""
        self.shutting_down = True
        await self._runner.kill_all("daemon shutting down")
        while self._active:
            waiter: Deferred = Deferred()
            self._idle_waiters.append(waiter)
            waiter.addTimeout(timeout, self._reactor)
            try:
                await waiter
            except Exception:
                _log.warn("Builds still running at shutdown: {count}", count=self._active)
                return

    def _enter(self) -> None:
        self._active += 1

    def _leave(self) -> None:
        self._active -= 1
        if not self._active:
            waiters, self._idle_waiters = self._idle_waiters, []
            for waiter in waiters:
                if not waiter.called:
                    waiter.callback(None)

    def redact(self, text: str) -> str:
        return self._secrets.redact(text) if self._secrets is not None else text

    def secret_values(self) -> Mapping[str, str]:
        """The values redacted from build logs."""
        return self._secrets.secret_values() if self._secrets is not None else {}

    def variable_values(self) -> Mapping[str, str]:
        """The variables files' values (plain and secret), for expansion."""
        return self._secrets.values() if self._secrets is not None else {}

    # -- building ----------------------------------------------------------------

    def new_log(self) -> BuildLog:
        return BuildLog(self.secret_values)

    async def lookup(self, stream: str) -> BootstrapStream | StreamConfig:
        """The stream's configuration (reloading the streams once if unknown)."""
        bootstrap = self.config.bootstrap_streams.get(stream)
        if bootstrap is not None:
            return bootstrap

        def known(document: StreamsDocument) -> bool:
            return lookup_stream(document, stream, self.config.bootstrap_streams) is not None

        try:
            if await self._streams.ensure_known(stream, known):
                found = lookup_stream(
                    self._streams.current(), stream, self.config.bootstrap_streams
                )
                if found is not None:
                    return found
        except ConfigError as exc:
            raise BuildError(str(exc)) from None
        raise UnknownStream(stream)

    async def build(
        self,
        stream: str,
        options: BuildOptions,
        requestor: str = "",
        log: BuildLog | None = None,
        *,
        _chain: tuple[str, ...] = (),
    ) -> BuildResult:
        """Build ``stream``; never raises for build failures (see ``BuildResult.error``).

        If an identical build of the stream is running, this joins it. Otherwise
        it waits for the stream's previous build and, unless it is a source
        build for another build (which already holds one), for a free slot.
        """
        running = self._running.get(stream)
        if running is not None and running.options == options and not _chain:
            waiter: Deferred = Deferred()
            running.waiters.append(waiter)
            if log is None:
                return await waiter
            shared = running.current.log
            log.line(f"Joining the running build of {stream}")
            log.write(shared.getvalue())
            stop = shared.subscribe(log.write)
            try:
                return await waiter
            finally:
                stop()
        lock = self._stream_locks.setdefault(stream, DeferredLock())
        await lock.acquire()
        try:
            slots = self._slots if not _chain else None
            if slots is not None:
                await slots.acquire()
            try:
                return await self._build_now(
                    stream,
                    options,
                    requestor,
                    log if log is not None else self.new_log(),
                    (*_chain, stream),
                )
            finally:
                if slots is not None:
                    slots.release()
        finally:
            lock.release()

    async def _build_now(
        self,
        stream: str,
        options: BuildOptions,
        requestor: str,
        log: BuildLog,
        chain: tuple[str, ...],
    ) -> BuildResult:
        if self.shutting_down:
            return self._refused(stream, options, requestor, log, "daemon shutting down")
        while self._paused is not None and len(chain) == 1:
            await observe(self._paused)
        self._enter()
        try:
            return await self._build_counted(stream, options, requestor, log, chain)
        finally:
            self._leave()

    def _refused(
        self, stream: str, options: BuildOptions, requestor: str, log: BuildLog, error: str
    ) -> BuildResult:
        log.line(f"Error building image: {stream}: {error}")
        log.close()
        now = self._reactor.seconds()
        return BuildResult(stream, "", now, now, log.getvalue(), error, requestor)

    async def _build_counted(
        self,
        stream: str,
        options: BuildOptions,
        requestor: str,
        log: BuildLog,
        chain: tuple[str, ...],
    ) -> BuildResult:
        started = self._reactor.seconds()
        started_mono = time.monotonic()
        current = CurrentBuild(stream, started, log, requestor, options.auto)
        running = _Running(current, options)
        self._running[stream] = running
        image_name, error, image, need, identical = "", "", None, None, False
        kept, skipped = KeptTree(), ""
        try:
            digest = await self._inputs_digest(stream, options)
            unchanged = await self._unchanged(stream, options, log, digest)
            if unchanged is not None:
                (image_name, skipped), identical = unchanged, True
            else:
                image = await self._make_image_recursively(stream, options, log, chain, kept)
                current.report.begin("store")
                now = self._reactor.seconds()
                image_name, identical, record = await publish(
                    self._store,
                    self._in_thread,
                    Publication(stream, now, options.expires_in, requestor, options.return_image),
                    image,
                    log,
                    started_mono,
                )
                if kept.path is not None and record is not None:
                    self._trees_in_flight.adopt(image_name, record, kept.take())
            self._freshness.record(stream, image_name, digest, kept.package_index)
        except NeedSourceImage as exc:
            error, need = str(exc), exc
        except (BuildError, StoreError) as exc:
            error = str(exc)
        except Exception as exc:  # a bug must fail the build, not the daemon
            _log.failure("Unexpected error building {stream}", stream=stream)
            error = f"internal error: {exc}"
        current.report.finish(failed=bool(error))
        if kept.path is not None:
            self._trees_in_flight.remove(kept.take())
        if error and self.shutting_down:
            error = f"daemon shutting down ({error})"
        if error:
            self._freshness.forget(stream)
            log.line(f"Error building image: {stream}: {error}")
            error = self.redact(error)
            _log.info("Error building image: {stream}: {error}", stream=stream, error=error)
        else:
            duration = format_duration(self._reactor.seconds() - started)
            if skipped:
                text = "Skipped {stream}: nothing could change ({reason}): kept {name} ({duration})"
            elif identical:
                text = "Identical to {name}: no new image published ({duration})"
            else:
                text = "Built image: {name} in {duration}"
            _log.info(text, stream=stream, reason=skipped, name=image_name, duration=duration)
        result = BuildResult(
            stream=stream,
            image_name=image_name,
            started_at=started,
            finished_at=self._reactor.seconds(),
            log=log.getvalue(),
            error=error,
            requestor=requestor,
            identical=identical,
            skipped=skipped,
            image=image if options.return_image and not error else None,
            need_source_image=need is not None,
            source_image=need.source_image if need else "",
            source_image_git_commit_id=need.git_commit_id if need else "",
            source_image_build_variables=dict(need.build_variables) if need else {},
            stages=current.report.stages.stages(),
            manifest=current.report.manifest,
        )
        del self._running[stream]
        self._last[stream] = replace(result, image=None)
        log.close()
        for waiter in running.waiters:
            waiter.callback(result)
        for listener in self._listeners:
            try:
                listener(result)
            except Exception:
                _log.failure("Build result listener failed")
        return result

    def _env(self, log: BuildLog, options: BuildOptions, report: BuildReport) -> BuildEnv:
        env = BuildEnv(
            reactor=self._reactor,
            threadpool=self._threadpool,
            runner=self._runner,
            store=self._store,
            local_store=self._local_store,
            log=log,
            deadline_seconds=build_deadline_seconds(
                self._settings.maximum_build_duration, options.maximum_build_duration
            ),
            nosync=self.config.fast_paths.no_fsync_in_builds,
            report=report,
        )
        env.start_deadline()
        return env

    async def _make_image_recursively(
        self,
        stream: str,
        options: BuildOptions,
        log: BuildLog,
        chain: tuple[str, ...],
        kept: KeptTree,
    ) -> Image:
        """Build; on a missing or stale source image build the source first, then retry once."""
        try:
            return await self._make_image(stream, options, log, kept)
        except NeedSourceImage as need:
            if options.disable_recursive_build:
                raise
            source = need.source_image
            if source in chain:
                raise BuildError(
                    f"circular source image dependency: {' -> '.join((*chain, source))}"
                ) from None
            variables = {**need.build_variables}
            variables.update({k: v for k, v in options.variables if v})
            source_options = BuildOptions.make(
                variables,
                expires_in=options.expires_in or 3600.0,
                git_branch=need.git_commit_id,
                max_source_age=options.max_source_age,
                maximum_build_duration=options.maximum_build_duration,
            )
            log.line(f"Building source image: {source} ({need})")
            self._report(stream).begin("build source image")
            inner = self.new_log()
            stop = inner.subscribe(log.write)
            try:
                result = await self.build(source, source_options, "", inner, _chain=chain)
            finally:
                stop()
            if result.error:
                raise BuildError(result.error) from None
            log.line(f"Built source image: {result.image_name}, building: {stream}")
        return await self._make_image(stream, options, log, kept)

    async def _make_image(
        self, stream: str, options: BuildOptions, log: BuildLog, kept: KeptTree
    ) -> Image:
        config = await self.lookup(stream)
        env = self._env(log, options, self._report(stream))
        if isinstance(config, BootstrapStream):
            packager = self.config.packager_types.get(config.packager_type)
            if packager is None:
                raise BuildError(f'packager type: "{config.packager_type}" unknown')
            variables = {**self.variable_values(), **config.variables, **dict(options.variables)}
            return await self._pipeline.bootstrap(
                env,
                config,
                packager,
                variables=variables,
                mtimes_filter=self._mtimes_filter,
                tmpdir=self._settings.tmpdir,
                keep_tree=kept.offer if self._reuse_trees() else None,
                package_caches=self.package_caches,
            )
        image = await self._pipeline.normal(env, self._normal_request(stream, config, options))
        kept.package_index = env.package_index
        return image

    def _normal_request(
        self, stream: str, config: StreamConfig, options: BuildOptions
    ) -> NormalBuild:
        return NormalBuild(
            stream=stream,
            config=config,
            main=self.config,
            arch=self._settings.arch,
            git_branch=options.git_branch,
            max_source_age=options.max_source_age,
            request_variables=dict(options.variables),
            secrets=self.variable_values(),
            tmpdir=self._settings.tmpdir,
            ctime_resolution=self._settings.ctime_resolution,
            source_trees=self.source_trees,
            package_caches=self.package_caches,
        )

    def _report(self, stream: str) -> BuildReport:
        """The report of the running build of ``stream`` (a throw-away one if none runs)."""
        running = self._running.get(stream)
        return running.current.report if running is not None else BuildReport()

    # -- skipping what cannot change ---------------------------------------------------

    async def _inputs_digest(self, stream: str, options: BuildOptions) -> str:
        config = await self.lookup(stream)
        packager = None
        if isinstance(config, BootstrapStream):
            packager = self.config.packager_types.get(config.packager_type)
        request = (options.git_branch, options.variables)
        return inputs_digest(
            config, self.config, packager=packager, secrets=self.variable_values(), request=request
        )

    async def _unchanged(
        self, stream: str, options: BuildOptions, log: BuildLog, digest: str
    ) -> tuple[str, str] | None:
        """For a cycle's build with ``SkipUnchangedBuilds``: ``(latest image,
        reason)`` when nothing could change (the image is extended), else ``None``."""
        if not (options.auto and self.config.fast_paths.skip_unchanged_builds):
            return None
        config = await self.lookup(stream)
        request = (
            None
            if isinstance(config, BootstrapStream)
            else self._normal_request(stream, config, options)
        )
        expires_at = int((self._reactor.seconds() + options.expires_in) * 1e9)
        env = self._env(log, options, self._report(stream))
        return await self._freshness.skip(env, stream, digest, request, expires_at)

    # -- the bootstrap tree as a source tree ----------------------------------------

    def _in_thread(self, fn: Callable[..., Any], *args: Any) -> Deferred[Any]:
        return deferToThreadPool(self._reactor, self._threadpool, fn, *args)

    def _reuse_trees(self) -> bool:
        return self.source_trees is not None and self.config.fast_paths.reuse_bootstrap_trees

    async def settled(self) -> None:
        """Wait until kept bootstrap trees are adopted (or removed) and durable."""
        await self._trees_in_flight.settled()
