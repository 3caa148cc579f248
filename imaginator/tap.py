"""twistd plugin: the imaginator's options and the wiring of its services.

This is the only module that imports the global reactor and the only place
where the parts are put together. Start-up is asynchronous (the main
configuration may come from an http(s) URL): a failure to load it is printed
as one line naming the file and the key, and the process exits non-zero.
"""

from __future__ import annotations

import os
import socket

from twisted.application.service import MultiService, Service
from twisted.internet import endpoints
from twisted.internet.defer import Deferred
from twisted.logger import Logger, globalLogPublisher
from twisted.python import usage
from twisted.python.threadpool import ThreadPool
from twisted.web.server import Site

from imaginator import __version__
from imaginator.autobuild import AutoBuilder
from imaginator.build.process import ProcessRunner
from imaginator.builder import Builder, BuilderSettings
from imaginator.config.loader import FetchError, fetch_url
from imaginator.config.main import ConfigError, load_main_config
from imaginator.config.units import go_arch
from imaginator.config.variables import make_redactor, parse_variables
from imaginator.flags import FLAGS, FlagError
from imaginator.logbuffer import LogRing
from imaginator.store.local import AsyncImageStore, LocalImageStore
from imaginator.web.pages import StatusPages

THREADS = 4
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
        self.runner = ProcessRunner(reactor)
        self.log_ring = LogRing(options["logbufLines"])
        self.port = None
        self.builder: Builder | None = None
        self.ready: Deferred = Deferred()

    def startService(self) -> None:
        globalLogPublisher.addObserver(self.log_ring)
        super().startService()
        Deferred.fromCoroutine(self._start()).addErrback(self._fatal)

    def stopService(self):
        self.runner.kill_all("daemon shutting down")
        globalLogPublisher.removeObserver(self.log_ring)
        stopped = super().stopService()
        if self.port is not None:
            self.port.stopListening()
            self.port = None
        return stopped

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
        secrets: dict[str, str] = {}
        if options["variablesFile"]:
            path = options["variablesFile"]
            secrets = parse_variables(await self._fetch(path), path)
            _log.info("Loaded variables")
        redactor = make_redactor(secrets)
        local_store = LocalImageStore(os.path.join(state_dir, "store"))
        store = AsyncImageStore(local_store, self.reactor, self.pool)
        tmpdir = os.path.join(state_dir, "tmp")
        os.makedirs(tmpdir, mode=0o755, exist_ok=True)
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
            ),
            secret_variables=lambda: secrets,
            redactor=redactor,
        )
        pages = StatusPages(
            source=self.builder,
            clock=self.reactor,
            started_at=self.reactor.seconds(),
            hostname=socket.gethostname(),
            version=__version__,
            log_ring=self.log_ring,
        )
        endpoint = endpoints.TCP4ServerEndpoint(self.reactor, options["portNum"])
        self.port = await endpoint.listen(Site(pages.resource()))
        _log.info("imaginator listening on port {port}", port=self.port.getHost().port)
        AutoBuilder(
            clock=self.reactor,
            build=self.builder.build,
            streams=lambda: config.image_streams_to_auto_rebuild,
            interval=options["imageRebuildInterval"],
        ).setServiceParent(self)
        self.ready.callback(self)


def makeService(options: Options) -> Daemon:
    check_process_environment()
    from twisted.internet import reactor

    return Daemon(options, reactor)
