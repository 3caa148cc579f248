"""twistd plugin: the imaginator's options and the wiring of its services.

This is the only module that imports the global reactor and the only place
where the parts are put together. Start-up is asynchronous (the main
configuration may come from an http(s) URL): a failure to load it is printed
as one line naming the file and the key, and the process exits non-zero.
"""

from __future__ import annotations

import os
import shutil
import socket

from twisted.application.service import MultiService, Service
from twisted.internet import endpoints
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger, globalLogPublisher
from twisted.python import usage
from twisted.python.threadpool import ThreadPool
from twisted.web.server import Site

from imaginator import __version__
from imaginator.autobuild import AutoBuilder
from imaginator.config.main import ConfigError, load_main_config
from imaginator.deps import DependencyGenerator, dependency_order
from imaginator.flags import FLAGS, FlagError
from imaginator.goformats.units import format_bytes, format_duration, go_arch, image_datestamp
from imaginator.pipeline.rootfs import unmount_all_under
from imaginator.rpc.service import PUBLIC_METHODS, ExpirationLimits, ImaginatorService
from imaginator.runtime.archive import BuildInfo, BuildLogArchive, archive_enabled, archive_name
from imaginator.runtime.ctime import measure_ctime_resolution
from imaginator.runtime.logbuffer import LogRing
from imaginator.runtime.poller import Poller
from imaginator.runtime.process import ProcessRunner
from imaginator.runtime.sandbox import base_environment
from imaginator.scheduler import Builder, BuilderSettings
from imaginator.sources.documents import FetchError, fetch_url
from imaginator.sources.streams import StreamsRegistry, VariablesFile
from imaginator.srpc.identity import Authoriser
from imaginator.srpc.server import MethodRegistry
from imaginator.srpc.site import SrpcSite
from imaginator.srpc.tls import make_server_tls_options
from imaginator.store.local import AsyncImageStore, LocalImageStore
from imaginator.web.archive_pages import ArchivePages, quote_query
from imaginator.web.graph_pages import GraphPages
from imaginator.web.pages import StatusPages
from imaginator.web.stream_pages import StreamPages

THREADS = 4
BUILD_NICENESS = 10
GC_INTERVAL = 3600.0
DOT_TIMEOUT = 60.0
_log = Logger()

# The exit status the ``imaginator`` command returns once the reactor stops.
exit_status = [0]


def _coerce(flag):
    def coerce(text: str):
        try:
            return flag.parse(text)
        except FlagError as exc:
            raise ValueError(str(exc)) from None

    coerce.coerceDoc = ""
    return coerce


class Options(usage.Options):
    """The Go imaginator's flags (see ``imaginator.flags``)."""

    synopsis = "[options]"
    longdesc = "Build OS and OS+application images from manifests; see README.md."
    optParameters = [
        [flag.name, None, flag.parse(flag.default), flag.help, _coerce(flag)] for flag in FLAGS
    ]


class _ThreadPoolService(Service):
    def __init__(self, pool: ThreadPool) -> None:
        self.pool = pool

    def startService(self) -> None:
        super().startService()
        self.pool.start()

    def stopService(self) -> None:
        super().stopService()
        self.pool.stop()


def _fresh_directory(path: str) -> list[str]:
    """Create ``path`` empty: whatever an earlier, killed daemon left there goes,
    mounts (overlay build roots) first. Returns the mount points detached."""
    detached = []
    if os.path.isdir(path):
        detached = unmount_all_under(path)
        shutil.rmtree(path)
    os.makedirs(path, mode=0o755)
    return detached


def check_process_environment() -> None:
    """Refuse to run unless root with umask 022 (builds create files owned by root)."""
    if os.geteuid() != 0:
        raise SystemExit("imaginator: Must run the Image Builder as root")
    previous = os.umask(0o022)
    os.umask(previous)
    if previous != 0o022:
        raise SystemExit(
            f"imaginator: umask is {previous:03o}, must be 022 (the imaginator command sets it)"
        )


class Daemon(MultiService):
    """The whole imaginator; its children are added once the configuration is loaded."""

    def __init__(self, options: Options, reactor) -> None:
        super().__init__()
        self.options = options
        self.reactor = reactor
        self.pool = ThreadPool(minthreads=0, maxthreads=THREADS, name="imaginator")
        _ThreadPoolService(self.pool).setServiceParent(self)
        self.runner = ProcessRunner(reactor, niceness=BUILD_NICENESS)
        self.log_ring = LogRing(options["logbufLines"])
        self.port = None
        self.builder: Builder | None = None
        self.auto: AutoBuilder | None = None
        self.site: SrpcSite | None = None
        self._collector: Poller | None = None
        self.ready: Deferred = Deferred()

    def startService(self) -> None:
        globalLogPublisher.addObserver(self.log_ring)
        super().startService()
        Deferred.fromCoroutine(self._start()).addErrback(self._fatal)

    def stopService(self):
        return Deferred.fromCoroutine(self._stop()).addErrback(
            lambda failure: _log.failure("Error while stopping", failure)
        )

    async def _stop(self) -> None:
        """Kill running builds (recorded as failed), stop every service, stop listening."""
        try:
            collected = self._collector.stop() if self._collector is not None else None
            # The cycle in flight ends once its build is killed: stop its timer
            # first, kill the builds, then wait (bounded) for it and the collector.
            cycle = maybeDeferred(self.auto.stopService) if self.auto is not None else None
            if self.builder is not None:
                await self.builder.shutdown()
            else:
                await self.runner.kill_all("daemon shutting down")
            for pending in (cycle, collected):
                if pending is not None:
                    await pending
            if self.port is not None:
                await self.port.stopListening()
                self.port = None
            if self.site is not None:
                self.site.abort_connections()
        finally:
            await super().stopService()
            globalLogPublisher.removeObserver(self.log_ring)

    def _fatal(self, failure) -> None:
        if failure.check(ConfigError, FetchError, SystemExit):
            message = str(failure.value)
        else:
            message = f"start-up failed: {failure.getErrorMessage()}"
            _log.failure("start-up failed", failure)
        # twistd turns sys.stderr into a logger: write to the real standard error.
        os.write(2, f"imaginator: {message}\n".encode("utf-8", errors="replace"))
        exit_status[0] = 1
        if self.reactor.running:
            self.reactor.stop()
        else:
            self.reactor.callWhenRunning(self.reactor.stop)

    async def _in_thread(self, fn, *args):
        return await deferToThreadPool(self.reactor, self.pool, fn, *args)

    async def _fetch(self, url: str) -> bytes:
        return await fetch_url(url, reactor=self.reactor, threadpool=self.pool)

    async def _start(self) -> None:
        options = self.options
        if options["imageServerHostname"]:
            raise SystemExit(
                "remote imageservers are not supported yet: leave -imageServerHostname empty "
                "to use the embedded image store"
            )
        state_dir = options["stateDir"]
        os.makedirs(state_dir, mode=0o755, exist_ok=True)
        config = await load_main_config(
            options["configurationUrl"], fetch=self._fetch, arch=go_arch()
        )
        if not config.bootstrap_streams:
            _log.warn("No bootstrap streams configured: some operations degraded")
        variables = VariablesFile(
            options["variablesFile"], reactor=self.reactor, clock=self.reactor, threadpool=self.pool
        )
        await self._in_thread(variables.load_initial)
        variables.setServiceParent(self)
        streams = StreamsRegistry(
            source_url=config.image_streams_url,
            state_dir=state_dir,
            arch=go_arch(),
            reactor=self.reactor,
            clock=self.reactor,
            threadpool=self.pool,
            check_interval=config.image_streams_check_interval,
            secrets=variables.values,
        )
        streams.setServiceParent(self)
        self.streams = streams
        local_store = LocalImageStore(os.path.join(state_dir, "store"))
        store = AsyncImageStore(local_store, self.reactor, self.pool)
        self.store = store
        tmpdir = os.path.join(state_dir, "tmp")
        for mount_point in await self._in_thread(_fresh_directory, tmpdir):
            _log.info("Unmounted leftover mount: {path}", path=mount_point)
        resolution = await self._in_thread(measure_ctime_resolution, tmpdir)
        _log.info("Inode Ctime resolution: {resolution}", resolution=format_duration(resolution))
        self.builder = Builder(
            reactor=self.reactor,
            threadpool=self.pool,
            config=config,
            store=store,
            local_store=local_store,
            runner=self.runner,
            settings=BuilderSettings(
                maximum_build_duration=options["maximumBuildDuration"],
                maximum_concurrent_builds=options["maximumConcurrentBuilds"],
                tmpdir=tmpdir,
                arch=go_arch(),
                ctime_resolution=resolution,
                tree_cache_dir=os.path.join(state_dir, "trees"),
            ),
            streams=streams,
            secrets=variables,
        )
        archive = await self._start_archive()
        deps = DependencyGenerator(
            reactor=self.reactor,
            clock=self.reactor,
            threadpool=self.pool,
            streams=streams,
            bootstrap_streams=tuple(config.bootstrap_streams),
            secrets=variables.values,
            arch=go_arch(),
            tmpdir=tmpdir,
        )
        deps.setServiceParent(self)
        self.deps = deps
        started_at = self.reactor.seconds()
        pages = StatusPages(
            source=self.builder,
            clock=self.reactor,
            started_at=started_at,
            hostname=socket.gethostname(),
            version=__version__,
            log_ring=self.log_ring,
            image_link=lambda name: f"showImage?{quote_query(name)}",
            archive_enabled=archive is not None,
        )
        StreamPages(
            self.builder, store, self.reactor, go_arch(), __version__, started_at=started_at
        ).install(pages.app)
        if archive is not None:
            ArchivePages(archive, self._in_thread, self.reactor).install(pages.app)
        GraphPages(
            deps,
            self.reactor,
            config.relationships_quick_links,
            self._run_dot,
            auto_rebuild=lambda: config.image_streams_to_auto_rebuild,
            version=__version__,
        ).install(pages.app)
        site = self._rpc_site(Site(pages.resource()), config, streams)
        endpoint = endpoints.TCP4ServerEndpoint(self.reactor, options["portNum"])
        self.port = await endpoint.listen(site)
        _log.info("imaginator listening on port {port}", port=self.port.getHost().port)
        self.auto = AutoBuilder(
            clock=self.reactor,
            build=self.builder.build,
            streams=lambda: config.image_streams_to_auto_rebuild,
            interval=options["imageRebuildInterval"],
            store=store,
            order=self._dependency_order,
            source_of=self._source_of,
            streams_loaded=lambda: streams.loaded,
        )
        self.auto.setServiceParent(self)
        self.service.auto = self.auto
        self._collector = Poller(
            "garbage collection", self._collect_garbage, clock=self.reactor, interval=GC_INTERVAL
        )
        self._collector.start()
        self.ready.callback(self)

    def _rpc_site(self, http_site: Site, config, streams) -> SrpcSite:
        """The listening factory: SRPC (TLS client certificates) and the pages on one port."""
        options = self.options
        tls_options = None
        try:
            tls_options = make_server_tls_options(
                options["CAfile"], options["certFile"], options["keyFile"]
            )
        except Exception as exc:
            _log.warn(
                "RPC over TLS disabled: cannot use {ca}, {cert}, {key}: {error} "
                "(imaginator-certs init creates them)",
                ca=options["CAfile"],
                cert=options["certFile"],
                key=options["keyFile"],
                error=str(exc),
            )
        registry = MethodRegistry()
        self.service = ImaginatorService(
            builder=self.builder,
            auto=None,
            deps=self.deps,
            clock=self.reactor,
            limits=ExpirationLimits.normalised(
                options["minimumExpirationDuration"],
                options["maximumExpirationDuration"],
                options["maximumExpirationDurationPrivileged"],
            ),
            streams_loaded=lambda: streams.loaded,
            per_user_limit=options["maximumConcurrentBuildsPerUser"],
        )
        self.service.register(registry)
        authoriser = Authoriser(
            trusted_users=frozenset(options["srpcTrustedUsers"]),
            trusted_groups=frozenset(options["srpcTrustedGroups"]),
            public_methods=PUBLIC_METHODS,
        )
        self.site = SrpcSite(
            http_site,
            registry,
            authoriser,
            tls_options,
            reactor=self.reactor,
            permit_insecure=options["permitInsecureMode"],
        )
        return self.site

    async def _start_archive(self) -> BuildLogArchive | None:
        top, quota = self.options["buildLogDir"], self.options["buildLogQuota"]
        if not archive_enabled(top, quota):
            return None
        archive = BuildLogArchive(top, quota)
        await self._in_thread(archive.load)

        def archive_result(result) -> None:
            name = archive_name(result, image_datestamp(result.finished_at))
            d = deferToThreadPool(
                self.reactor,
                self.pool,
                archive.add,
                name,
                BuildInfo.from_result(result),
                result.log,
            )
            d.addErrback(
                lambda failure: _log.warn(
                    "Error archiving build log: {error}", error=failure.getErrorMessage()
                )
            )

        self.builder.add_listener(archive_result)
        return archive

    def _dependency_order(self, streams):
        data = self.deps.current()
        if data is None or not data.has_data:
            return list(streams)
        return dependency_order(list(streams), data.stream_to_source)

    def _source_of(self, stream: str) -> str | None:
        data = self.deps.current()
        return data.stream_to_source.get(stream) if data is not None else None

    async def _run_dot(self, dot: str) -> bytes:
        result = await self.runner.run(
            ["dot", "-Tsvg"],
            log=None,
            env=base_environment(),
            stdin=dot.encode("utf-8"),
            capture_stdout=True,
            capture_stderr=True,
            deadline=self.reactor.seconds() + DOT_TIMEOUT,
            step="dot",
        )
        return result.stdout

    async def _collect_garbage(self) -> None:
        """Remove expired images, then objects no image references (between builds).

        A failure is logged by the poller, which tries again an hour later.
        """
        store = self.store
        expired = await store.delete_expired_images()
        for name in expired:
            _log.info("Deleted expired image: {name}", name=name)
        removed, freed = await self.builder.exclusive(store.collect_garbage)
        if removed:
            _log.info(
                "Collected {count} unreferenced objects ({size})",
                count=removed,
                size=format_bytes(freed),
            )


def makeService(options: Options) -> Daemon:
    check_process_environment()
    from twisted.internet import reactor

    return Daemon(options, reactor)
