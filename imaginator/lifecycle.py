"""The daemon's life cycle: what start-up refuses, and the order of stopping.

**Stopping.** Every long-lived part of the daemon is a named child service of
one :class:`DaemonServices`, whose ``stopService`` stops them in a fixed
order, each step bounded (``stop_timeout``, logged when it expires), so that
no stop can hang:

1. no new builds are accepted (build requests get "daemon shutting down");
2. the timers and pollers stop (auto-rebuild cycle, garbage collection,
   dependency generator, streams and variables watchers, the publisher's
   retries and its queue);
3. running builds are killed and recorded as failed;
4. the runs in flight of step 2 are waited for (they end with their builds);
5. the port stops listening and open connections are dropped, then the
   access log is flushed and closed; the other services stop (an
   imageserver's directory job and connections);
6. the thread pool stops, its threads joined on a helper thread (a stuck
   dulwich fetch cannot hang the stop or the reactor).

**Certificates** (README "RPC, security and builder-tool"):

- If any of ``-CAfile``, ``-certFile``, ``-keyFile`` is set to something
  other than its default, all three must be usable: a missing, unreadable or
  malformed file, or a key that does not belong to the certificate, stops
  start-up with one line naming the flag, the file and the problem.
- If all three are at their defaults and **none** of the files exists (a
  fresh machine), the daemon runs without TLS: one warning, the pages work
  (and, with ``-permitInsecureMode``, RPC is served without TLS). If some of
  the default files exist but not all, or one is bad, that is an error as
  above: a half-installed PKI is a mistake, not a fresh machine.

**Registry files**: ``-registryCredentials`` and ``-registryCA`` (used when
publishing), when set, must name a readable credentials file and a PEM CA
file; otherwise start-up stops with one line naming the flag and the file.

**Unused flags**: flags accepted (the Go imaginator has them) but not used
yet are reported with one warning each, only when set to something else
than their default (``-imageServerPortNum`` while ``-imageServerHostname``
is empty, too).

**The imageserver** (``-imageServerHostname``): the daemon's certificate is
its client certificate there and ``-CAfile`` checks the server's, so all
three files must be usable; a missing or bad one stops start-up naming the
flag. The imageserver itself may be down at start-up: builds then fail,
naming it, until it answers.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any, cast

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.application.service import IService, MultiService, Service
from twisted.internet import endpoints
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IListeningPort, IReactorTCP, IReactorTime
from twisted.internet.ssl import CertificateOptions
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from imaginator.config.streams import StreamsDocument
from imaginator.export.registry import RegistryError
from imaginator.flags import FLAGS_BY_NAME
from imaginator.publish.push import RegistrySettings, check_registry_file
from imaginator.runtime.poller import Poller
from imaginator.runtime.threads import ThreadedClock, stop_thread_pool
from imaginator.scheduler import Builder
from imaginator.srpc.site import SrpcSite
from imaginator.srpc.tls import ClientTlsOptions, make_client_tls_options, make_server_tls_options
from imaginator.store.imageserver import ImageServerStore
from imaginator.web.access import AccessLog

#: The bound on each step of stopping (see the module docstring).
STOP_TIMEOUT = 60.0

_log = Logger()

TLS_FLAGS = ("CAfile", "certFile", "keyFile")

#: Flags read by nobody yet, and why.
UNUSED_FLAGS = {
    "presentationImageServerHostname": "the pages link to this daemon's own image pages",
    "slaveDriverConfigurationFile": "build slaves are not supported yet",
}


class StartupError(Exception):
    """A flag makes start-up impossible; the text is the one line shown."""


def _is_default(
    options: Mapping[str, Any], name: str, defaults: Mapping[str, Any] | None = None
) -> bool:
    if defaults is not None and name in defaults:
        return bool(options[name] == defaults[name])
    flag = FLAGS_BY_NAME[name]
    return bool(options[name] == flag.parse(flag.default))


def check_flags(options: Mapping[str, Any]) -> list[str]:
    """Return one warning line per flag set but not used."""
    unused = dict(UNUSED_FLAGS)
    if not options["imageServerHostname"]:
        unused = {"imageServerPortNum": "-imageServerHostname is empty (embedded store)", **unused}
    return [
        f"-{name}={options[name]} is ignored: {why}"
        for name, why in unused.items()
        if not _is_default(options, name)
    ]


def _problem(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _check_pem_certificates(name: str, path: str) -> None:
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise StartupError(f"-{name}={path}: {_problem(exc)}") from None
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        certs = []
    if not certs:
        raise StartupError(f"-{name}={path}: no PEM certificate in the file")


def _check_pem_key(name: str, path: str) -> None:
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise StartupError(f"-{name}={path}: {_problem(exc)}") from None
    try:
        serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise StartupError(
            f"-{name}={path}: not an unencrypted PEM private key ({_problem(exc)})"
        ) from None


def server_tls_options(
    options: Mapping[str, Any], defaults: Mapping[str, Any] | None = None
) -> CertificateOptions | None:
    """The server's TLS options under the certificate rule above (reads files: blocking).

    Returns None for a fresh machine (defaults, no file); raises
    :class:`StartupError` otherwise when a file is missing or bad.
    ``defaults`` replaces the flags' defaults (tests).
    """
    paths = {name: options[name] for name in TLS_FLAGS}
    all_default = all(_is_default(options, name, defaults) for name in TLS_FLAGS)
    if all_default and not any(os.path.lexists(path) for path in paths.values()):
        return None
    # The files the operator named are checked first: their problem is the one to show.
    for name in sorted(TLS_FLAGS, key=lambda n: _is_default(options, n, defaults)):
        if name == "keyFile":
            _check_pem_key(name, paths[name])
        else:
            _check_pem_certificates(name, paths[name])
    try:
        return make_server_tls_options(paths["CAfile"], paths["certFile"], paths["keyFile"])
    except Exception as exc:
        raise StartupError(
            f"-certFile={paths['certFile']}, -keyFile={paths['keyFile']}: "
            f"cannot be used together: {_problem(exc)}"
        ) from None


def registry_settings(options: Mapping[str, Any]) -> RegistrySettings:
    """``-registryCredentials`` and ``-registryCA``, their files checked
    (blocking); ``StartupError`` naming the flag and the file."""
    for flag in ("registryCredentials", "registryCA"):
        path = options[flag]
        if not path:
            continue
        try:
            check_registry_file(flag, path)
        except RegistryError as exc:
            problem = str(exc)
            if problem.startswith(path):  # "FILE: x" or "FILE.key: x": the flag names FILE
                problem = problem[len(path) :].lstrip(":. ")
            raise StartupError(f"-{flag}={path}: {problem}") from None
    return RegistrySettings(options["registryCredentials"], options["registryCA"])


def imageserver_tls_options(options: Mapping[str, Any]) -> ClientTlsOptions:
    """The TLS options of the daemon's connections to its imageserver
    (``-imageServerHostname``): its certificate (``-certFile``, ``-keyFile``)
    presented, the server's checked against ``-CAfile`` and for the host's
    name. All three files must be usable, default or not (reads files:
    blocking); :class:`StartupError` naming the flag and file otherwise."""
    host = options["imageServerHostname"]
    for name in TLS_FLAGS:
        path = options[name]
        if not os.path.lexists(path):
            raise StartupError(
                f"-{name}={path}: No such file or directory (needed to talk to the "
                f"imageserver of -imageServerHostname={host})"
            )
        if name == "keyFile":
            _check_pem_key(name, path)
        else:
            _check_pem_certificates(name, path)
    try:
        return make_client_tls_options(
            options["certFile"], options["keyFile"], ca_file=options["CAfile"], hostname=host
        )
    except Exception as exc:
        raise StartupError(
            f"-certFile={options['certFile']}, -keyFile={options['keyFile']}: "
            f"cannot be used together: {_problem(exc)}"
        ) from None


def tls_disabled_warning(options: Mapping[str, Any]) -> str:
    """The one warning of a fresh machine without certificates."""
    files = ", ".join(options[name] for name in TLS_FLAGS)
    text = f"RPC over TLS disabled: none of {files} exists (imaginator-certs init creates them)"
    if options["permitInsecureMode"]:
        return text + "; RPC is served without TLS, to anyone (-permitInsecureMode)"
    return text


# Names of the children of DaemonServices, in the order they are added.
(
    POOL,
    VARIABLES,
    PLAIN_VARIABLES,
    STREAMS,
    IMAGESERVER,
    BUILDS,
    PUBLISH,
    DEPS,
    WEB,
    AUTO,
    COLLECTOR,
) = (
    "thread pool",
    "variables",
    "plain variables",
    "image streams",
    "imageserver",
    "builds",
    "publisher",
    "dependency generator",
    "web",
    "automatic image build cycle",
    "garbage collection",
)
#: Step 2 of the stop: the services whose timers stop before builds are killed
#: (the publisher's retries; its push in flight stops between two blobs).
PERIODIC = (AUTO, COLLECTOR, DEPS, STREAMS, VARIABLES, PLAIN_VARIABLES, PUBLISH)


class ThreadPoolService(Service):
    """Starts the pool; stopping joins its threads off the reactor thread, bounded."""

    def __init__(
        self, pool: ThreadPool, reactor: ThreadedClock, timeout: float = STOP_TIMEOUT
    ) -> None:
        self.pool = pool
        self._reactor = reactor
        self._timeout = timeout

    def startService(self) -> None:
        super().startService()
        if not self.pool.started:
            self.pool.start()

    def stopService(self) -> Deferred[bool]:
        super().stopService()
        return stop_thread_pool(self.pool, self._reactor, self._timeout)


class BuildsService(Service):
    """The builder as a service: stopping kills the running builds and waits
    (bounded) until each is recorded as failed."""

    def __init__(self, builder: Builder, timeout: float = STOP_TIMEOUT) -> None:
        self.builder = builder
        self._timeout = timeout

    def refuse_new_builds(self) -> None:
        self.builder.shutting_down = True

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self.refuse_new_builds()
        return Deferred.fromCoroutine(self.builder.shutdown(self._timeout))


class ListeningService(Service):
    """The one port of the pages and the RPC; stopping closes it, drops the
    open connections and closes the access log."""

    def __init__(
        self, reactor: IReactorTCP, port_number: int, site: SrpcSite, access_log: AccessLog | None
    ) -> None:
        self._reactor = reactor
        self._port_number = port_number
        self.site = site
        self.access_log = access_log
        self.port: IListeningPort | None = None

    async def listen(self) -> int:
        endpoint = endpoints.TCP4ServerEndpoint(self._reactor, self._port_number)
        self.port = port = await endpoint.listen(self.site)
        address = port.getHost()
        assert isinstance(address, IPv4Address)  # a TCP4ServerEndpoint's port
        return address.port

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        port, self.port = self.port, None
        if port is not None:
            stopped = port.stopListening()
            if stopped is not None:
                await stopped
        self.site.abort_connections()
        if self.access_log is not None:
            await self.access_log.close()


class ImageServerService(Service):
    """The imageserver's part of the daemon: a directory on the server for
    every stream (and its parents), made at start and after each new image
    streams document (reference §3.4; a failure is logged and tried again with
    the next document); its connections closed at the end."""

    def __init__(
        self,
        store: ImageServerStore,
        stream_names: Callable[[], Iterable[str]],
        subscribe: Callable[[Callable[[StreamsDocument], object]], Callable[[], None]],
        clock: IReactorTime,
    ) -> None:
        self.store = store
        self._stream_names = stream_names
        self._subscribe = subscribe
        self._unsubscribe: Callable[[], None] | None = None
        self.directories = Poller(
            f"imageserver {store.address} directories",
            self._make_directories,
            clock=clock,
            interval=0,
        )

    async def _make_directories(self) -> list[str]:
        return await self.store.ensure_directories(self._stream_names())

    def startService(self) -> None:
        super().startService()
        self._unsubscribe = self._subscribe(lambda _document: self.directories.trigger())
        self.directories.start()
        self.directories.trigger()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self._unsubscribe is not None:
            self._unsubscribe()
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        await self.directories.stop()
        await self.store.close()


class DaemonServices(MultiService):
    """The parent of every long-lived part; stops them in the documented order."""

    def __init__(self, clock: IReactorTime, stop_timeout: float = STOP_TIMEOUT) -> None:
        super().__init__()
        self._clock = clock
        self.stop_timeout = stop_timeout

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        return Deferred.fromCoroutine(self._stop())

    def _builds(self) -> BuildsService | None:
        # A BuildsService (unit tests put a stand-in with its methods there).
        return cast("BuildsService | None", self.namedServices.get(BUILDS))

    def _stopping(self, service: IService) -> Deferred[None]:
        """``service.stopService()``, bounded; never fails (a failure is logged)."""
        name = service.name or type(service).__name__
        done: Deferred[None] = Deferred()
        stopping = maybeDeferred(service.stopService)

        def give_up() -> None:
            if not done.called:
                _log.warn(
                    "Stopping {name}: gave up waiting after {timeout}s",
                    name=name,
                    timeout=self.stop_timeout,
                )
                done.callback(None)

        timer = self._clock.callLater(self.stop_timeout, give_up)

        def ended(result: object) -> None:
            if isinstance(result, Failure):
                _log.failure("Error stopping {name}", result, name=name)
            if timer.active():
                timer.cancel()
            if not done.called:
                done.callback(None)

        stopping.addBoth(ended)
        return done

    async def _stop(self) -> None:
        builds = self._builds()
        if builds is not None:
            builds.refuse_new_builds()  # 1
        periodic = [self._stopping(s) for s in self._children(PERIODIC)]  # 2
        if builds is not None:
            await self._stopping(builds)  # 3
        for waiting in periodic:
            await waiting  # 4
        named = {POOL, BUILDS, WEB, *PERIODIC}
        others = [s for s in reversed(list(self)) if s.name not in named]
        for service in [*self._children((WEB,)), *others, *self._children((POOL,))]:
            await self._stopping(service)  # 5, 6

    def _children(self, names: tuple[str, ...]) -> list[IService]:
        return [self.namedServices[n] for n in names if n in self.namedServices]
