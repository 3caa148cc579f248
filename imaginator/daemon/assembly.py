"""The daemon assembled from services.

:func:`create_daemon` builds every part from the flags (the main
configuration may come from an http(s) URL, so it is asynchronous) and
returns them as a :class:`Daemon`; every long-lived part is a named child of
one ``lifecycle.DaemonServices``, which stops them in order, each step
bounded. Dependencies go into constructors; nothing is patched in later.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from imaginator.autobuild import AutoBuilder
from imaginator.config.main import MainConfig, load_main_config
from imaginator.daemon.pages import install_pages
from imaginator.deps import DependencyGenerator, dependency_order
from imaginator.goformats.units import format_bytes, format_duration, go_arch, image_datestamp
from imaginator.lifecycle import (
    AUTO,
    BUILDS,
    COLLECTOR,
    DEPS,
    IMAGESERVER,
    PLAIN_VARIABLES,
    POOL,
    PUBLISH,
    STREAMS,
    VARIABLES,
    WEB,
    BuildsService,
    DaemonServices,
    ImageServerService,
    ListeningService,
    ThreadPoolService,
    check_flags,
    imageserver_tls_options,
    registry_settings,
    server_tls_options,
    tls_disabled_warning,
)
from imaginator.publish.publisher import Publisher, PublishJob, target_lookup
from imaginator.publish.push import PushOutcome, push_to_registry
from imaginator.rpc.service import PUBLIC_METHODS, ExpirationLimits, ImaginatorService
from imaginator.runtime.archive import BuildInfo, BuildLogArchive, archive_enabled, archive_name
from imaginator.runtime.ctime import measure_ctime_resolution
from imaginator.runtime.logbuffer import LogRing
from imaginator.runtime.mounts import unmount_all_under
from imaginator.runtime.poller import Poller, PollerService
from imaginator.runtime.process import ProcessRunner
from imaginator.runtime.reactors import IDaemonReactor
from imaginator.scheduler import Builder, BuilderSettings, BuildResult
from imaginator.sources.documents import fetch_url
from imaginator.sources.streams import StreamsRegistry
from imaginator.sources.variables import BuildVariables, VariablesFile
from imaginator.srpc.identity import Authoriser
from imaginator.srpc.pool import SrpcPool
from imaginator.srpc.server import MethodRegistry
from imaginator.srpc.site import SrpcSite
from imaginator.srpc.tls import ClientTlsOptions
from imaginator.store.imageserver import (
    ImageServerAddress,
    ImageServerStore,
    make_dial,
    open_cache,
)
from imaginator.store.local import AsyncImageStore, LocalImageStore
from imaginator.web.access import AccessLog, PagesSite
from imaginator.web.pages import StatusPages

THREADS = 4
BUILD_NICENESS = 10
GC_INTERVAL = 3600.0
#: Under ``-stateDir``: the object cache in front of a remote imageserver.
OBJECT_CACHE = "object-cache"

_log = Logger()

Options = Mapping[str, Any]

# ================================================================ assembly


@dataclass
class Core:
    """The parts every build needs (shared by the daemon and the test harness).

    ``store`` is the image store (embedded or on an imageserver),
    ``local_store`` the local object store the pipeline reads and writes
    files in (the embedded store itself, or the imageserver's object cache).
    """

    config: MainConfig
    variables: BuildVariables
    streams: StreamsRegistry
    local_store: LocalImageStore
    store: AsyncImageStore | ImageServerStore
    builder: Builder


@dataclass(frozen=True)
class ImageServerSettings:
    """The remote image store: where it is and the TLS of its connections."""

    address: ImageServerAddress
    tls_options: ClientTlsOptions


@dataclass
class Daemon:
    """The assembled daemon (see :func:`create_daemon`)."""

    services: DaemonServices
    pool: ThreadPool
    runner: ProcessRunner
    core: Core
    deps: DependencyGenerator
    auto: AutoBuilder
    rpc: ImaginatorService
    pages: StatusPages
    site: SrpcSite
    web: ListeningService
    archive: BuildLogArchive | None
    access_log: AccessLog | None
    port: int
    publisher: Publisher | None = None

    @property
    def builder(self) -> Builder:
        return self.core.builder


def start_services(reactor: IDaemonReactor, pool: ThreadPool) -> DaemonServices:
    """A running :class:`DaemonServices` holding (and starting) ``pool``."""
    services = DaemonServices(reactor)
    pool_service = ThreadPoolService(pool, reactor)
    pool_service.setName(POOL)
    pool_service.setServiceParent(services)
    services.startService()
    return services


def _add(services: DaemonServices, name: str, service: Service) -> None:
    """Add a named child; the parent runs, so it starts at once."""
    service.setName(name)
    service.setServiceParent(services)


async def assemble_core(
    services: DaemonServices,
    *,
    config: MainConfig,
    reactor: IDaemonReactor,
    pool: ThreadPool,
    state_dir: str,
    variables_file: str,
    settings: BuilderSettings,
    plain_variables_file: str = "",
    runner: ProcessRunner,
    image_server: ImageServerSettings | None = None,
) -> Core:
    """Variables, image streams, the image store (embedded, or on
    ``image_server``) and the builder, as children of ``services``."""

    def in_thread(f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        return deferToThreadPool(reactor, pool, f, *args)

    secret = VariablesFile(variables_file, reactor=reactor, clock=reactor, threadpool=pool)
    await in_thread(secret.load_initial)
    _add(services, VARIABLES, secret)
    plain = None
    if plain_variables_file:
        plain = VariablesFile(
            plain_variables_file, secret=False, reactor=reactor, clock=reactor, threadpool=pool
        )
        await in_thread(plain.load_initial)
        _add(services, PLAIN_VARIABLES, plain)
    variables = BuildVariables(secret, plain)
    streams = StreamsRegistry(
        source_url=config.image_streams_url,
        state_dir=state_dir,
        arch=settings.arch,
        reactor=reactor,
        clock=reactor,
        threadpool=pool,
        check_interval=config.image_streams_check_interval,
        secrets=variables.values,
        redact_values=variables.secret_values,
    )
    _add(services, STREAMS, streams)
    store: AsyncImageStore | ImageServerStore
    if image_server is None:
        local_store = await in_thread(LocalImageStore, os.path.join(state_dir, "store"))
        store = AsyncImageStore(local_store, reactor, pool)
    else:
        local_store = await in_thread(open_cache, os.path.join(state_dir, OBJECT_CACHE))
        address = image_server.address
        connections = SrpcPool(
            make_dial(address, image_server.tls_options, reactor=reactor, in_thread=in_thread)
        )
        store = ImageServerStore(
            address, connections, local_store, reactor=reactor, threadpool=pool
        )

        def stream_names() -> list[str]:
            return [*config.bootstrap_streams, *streams.current().streams]

        _add(
            services,
            IMAGESERVER,
            ImageServerService(store, stream_names, streams.subscribe, reactor),
        )
        _log.info("Images are stored on imageserver {address}", address=str(address))
    builder = Builder(
        reactor=reactor,
        threadpool=pool,
        config=config,
        store=store,
        local_store=local_store,
        runner=runner,
        settings=settings,
        streams=streams,
        secrets=variables,
    )
    _add(services, BUILDS, BuildsService(builder))
    return Core(config, variables, streams, local_store, store, builder)


def fresh_directory(path: str) -> list[str]:
    """Create ``path`` empty: whatever an earlier, killed daemon left there goes,
    mounts (overlay build roots) first. Returns the mount points detached. Blocking."""
    detached = []
    if os.path.isdir(path):
        detached = unmount_all_under(path)
        shutil.rmtree(path)
    os.makedirs(path, mode=0o755)
    return detached


async def create_daemon(
    options: Options, reactor: IDaemonReactor, pool: ThreadPool, *, log_ring: LogRing | None = None
) -> Daemon:
    """Assemble and start the whole daemon from its flags.

    ``pool`` (started here if need be) becomes the daemon's: stopping the
    daemon stops it. Raises ``StartupError``, ``ConfigError``, ``FetchError``
    or ``AccessLogError`` with one line naming the flag or file; what was
    started by then is stopped again first.
    """
    services = start_services(reactor, pool)
    try:
        return await _assemble(services, options, reactor, pool, log_ring)
    except BaseException:
        await services.stopService()
        raise


async def _assemble(
    services: DaemonServices,
    options: Options,
    reactor: IDaemonReactor,
    pool: ThreadPool,
    log_ring: LogRing | None,
) -> Daemon:
    def in_thread(f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        return deferToThreadPool(reactor, pool, f, *args)

    async def fetch(url: str) -> bytes:
        return await fetch_url(url, reactor=reactor, threadpool=pool)

    for warning in check_flags(options):
        _log.warn("{warning}", warning=warning)
    registry_files = await in_thread(registry_settings, options)
    image_server = None
    if options["imageServerHostname"]:
        image_server = ImageServerSettings(
            ImageServerAddress(options["imageServerHostname"], options["imageServerPortNum"]),
            await in_thread(imageserver_tls_options, options),
        )
    tls_options = await in_thread(server_tls_options, options)
    if tls_options is None:
        _log.warn("{warning}", warning=tls_disabled_warning(options))
    access_log = None
    if options["accessLogFile"]:
        access_log = AccessLog(options["accessLogFile"], in_thread)
        await access_log.open()
    state_dir = options["stateDir"]
    await in_thread(lambda: os.makedirs(state_dir, mode=0o755, exist_ok=True))
    arch = go_arch()
    config = await load_main_config(options["configurationUrl"], fetch=fetch, arch=arch)
    if not config.bootstrap_streams:
        _log.warn("No bootstrap streams configured: some operations degraded")
    tmpdir = os.path.join(state_dir, "tmp")
    for mount_point in await in_thread(fresh_directory, tmpdir):
        _log.info("Unmounted leftover mount: {path}", path=mount_point)
    resolution = await in_thread(measure_ctime_resolution, tmpdir)
    _log.info("Inode Ctime resolution: {resolution}", resolution=format_duration(resolution))
    runner = ProcessRunner(reactor, niceness=BUILD_NICENESS)
    core = await assemble_core(
        services,
        config=config,
        reactor=reactor,
        pool=pool,
        state_dir=state_dir,
        variables_file=options["variablesFile"],
        plain_variables_file=options["plainVariablesFile"],
        settings=BuilderSettings(
            maximum_build_duration=options["maximumBuildDuration"],
            maximum_concurrent_builds=options["maximumConcurrentBuilds"],
            tmpdir=tmpdir,
            arch=arch,
            ctime_resolution=resolution,
            tree_cache_dir=os.path.join(state_dir, "trees"),
            package_cache_dir=os.path.join(state_dir, "package-cache"),
        ),
        runner=runner,
        image_server=image_server,
    )
    builder, streams = core.builder, core.streams
    archive = await _start_archive(options, builder, reactor, pool)

    def push(job: PublishJob, cancelled: threading.Event) -> Deferred[PushOutcome]:
        return in_thread(
            lambda: push_to_registry(
                core.local_store,
                job.image_name,
                job.target,
                registry_files,
                work_directory=tmpdir,
                cancelled=cancelled,
            )
        )

    publisher = Publisher(
        clock=reactor,
        target_of=target_lookup(config.bootstrap_streams, streams.current, arch),
        push=push,
        redact=core.variables.redact,
        retry_delay=options["publishRetryDelay"],
    )
    builder.add_listener(publisher.on_build)
    _add(services, PUBLISH, publisher)
    deps = DependencyGenerator(
        reactor=reactor,
        clock=reactor,
        threadpool=pool,
        streams=streams,
        bootstrap_streams=tuple(config.bootstrap_streams),
        secrets=core.variables.values,
        redact_values=core.variables.secret_values,
        arch=arch,
        tmpdir=tmpdir,
    )
    _add(services, DEPS, deps)

    def ordered(names: Any) -> list[str]:
        data = deps.current()
        if data is None or not data.has_data:
            return list(names)
        return dependency_order(list(names), data.stream_to_source)

    def source_of(stream: str) -> str | None:
        data = deps.current()
        return data.stream_to_source.get(stream) if data is not None else None

    auto = AutoBuilder(
        clock=reactor,
        build=builder.build,
        streams=lambda: config.image_streams_to_auto_rebuild,
        interval=options["imageRebuildInterval"],
        store=core.store,
        order=ordered,
        source_of=source_of,
        streams_loaded=lambda: streams.loaded,
    )
    rpc = ImaginatorService(
        builder=builder,
        auto=auto,
        deps=deps,
        clock=reactor,
        limits=ExpirationLimits.normalised(
            options["minimumExpirationDuration"],
            options["maximumExpirationDuration"],
            options["maximumExpirationDurationPrivileged"],
        ),
        streams_loaded=lambda: streams.loaded,
        per_user_limit=options["maximumConcurrentBuildsPerUser"],
    )
    pages = install_pages(core, deps, archive, publisher, runner, reactor, in_thread, log_ring)
    registry = MethodRegistry()
    rpc.register(registry)
    site = SrpcSite(
        PagesSite(pages.resource(), clock=reactor, access_log=access_log),
        registry,
        Authoriser(
            trusted_users=frozenset(options["srpcTrustedUsers"]),
            trusted_groups=frozenset(options["srpcTrustedGroups"]),
            public_methods=PUBLIC_METHODS,
        ),
        tls_options,
        reactor=reactor,
        permit_insecure=options["permitInsecureMode"],
    )
    web = ListeningService(reactor, options["portNum"], site, access_log)
    _add(services, WEB, web)
    port = await web.listen()
    _log.info("imaginator listening on port {port}", port=port)
    _add(services, AUTO, auto)

    async def collect_garbage() -> None:
        await _collect_garbage(core)

    collector = Poller("garbage collection", collect_garbage, clock=reactor, interval=GC_INTERVAL)
    _add(services, COLLECTOR, PollerService(collector))
    return Daemon(
        services,
        pool,
        runner,
        core,
        deps,
        auto,
        rpc,
        pages,
        site,
        web,
        archive,
        access_log,
        port,
        publisher=publisher,
    )


async def _start_archive(
    options: Options, builder: Builder, reactor: IReactorFromThreads, pool: ThreadPool
) -> BuildLogArchive | None:
    """The build log archive (``-buildLogDir``), fed by every finished build."""
    top, quota = options["buildLogDir"], options["buildLogQuota"]
    if not archive_enabled(top, quota):
        return None
    archive = BuildLogArchive(top, quota)
    await deferToThreadPool(reactor, pool, archive.load)

    def archive_result(result: BuildResult) -> None:
        name = archive_name(result, image_datestamp(result.finished_at))
        d = deferToThreadPool(
            reactor, pool, archive.add, name, BuildInfo.from_result(result), result.log
        )
        d.addErrback(
            lambda failure: _log.warn(
                "Error archiving build log: {error}", error=failure.getErrorMessage()
            )
        )

    builder.add_listener(archive_result)
    return archive


async def _collect_garbage(core: Core) -> None:
    """Remove expired images, then objects no image references (between
    builds). On an imageserver (which collects its own), empty the object cache.

    A failure is logged by the poller, which tries again an hour later.
    """
    store = core.store
    expired = await store.delete_expired_images()
    for name in expired:
        _log.info("Deleted expired image: {name}", name=name)
    removed, freed = await core.builder.exclusive(store.collect_garbage)
    if removed:
        _log.info(
            "Collected {count} {what} ({size})",
            count=removed,
            what="cached objects"
            if isinstance(store, ImageServerStore)
            else "unreferenced objects",
            size=format_bytes(freed),
        )
