"""Git transports with time limits: every fetch over the network ends.

dulwich's clients have no limit of their own: a remote that accepts a
connection and never answers (or answers a byte a minute) would hold the
thread doing the fetch, and with it the daemon's thread pool, forever. Every
fetch over http(s) or ssh is therefore watched by a :class:`FetchWatch`
with two limits:

- a **stall limit** (``stall_timeout``): no read waits longer than that for
  data. Over http(s) it is urllib3's connect and read timeout; over ssh each
  read of the ``ssh`` child's output waits at most that long, then the child
  is killed.
- a **deadline** for the whole transfer (``fetch_timeout``): when it passes,
  a timer thread shuts down every socket the fetch opened and kills its
  ``ssh`` children, so whatever the fetching thread is blocked in returns at
  once and the fetch fails.

Over ``git://`` dulwich opens and reads the socket itself, with no hook for
a caller: while a watched client connects, the socket it makes (through
:class:`_SocketModule`, which dulwich's client module sees as ``socket``) gets
the stall limit as its timeout and is registered for the deadline.

Either limit ends the fetch with a reason that says which one (see
:func:`describe`). Local repositories (paths, ``file://``) have no network
and need no limit.

:func:`make_client` makes the dulwich client for a URL with the credentials
passed explicitly and the watch installed. Nothing here reads a git
configuration (no credential helpers, no ``insteadOf``).
"""

from __future__ import annotations

import os
import select
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import suppress
from typing import IO, Any

import dulwich.client
from dulwich.client import (
    GitClient,
    HTTPProxyUnauthorized,
    HTTPUnauthorized,
    SSHGitClient,
    SubprocessSSHVendor,
    SubprocessWrapper,
    TCPGitClient,
    default_urllib3_manager,
    get_transport_and_path,
)
from dulwich.errors import GitProtocolError, HangupException, NotGitRepository
from urllib3 import PoolManager, ProxyManager
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import MaxRetryError
from urllib3.exceptions import TimeoutError as Urllib3Timeout

from imaginator.goformats.units import format_duration

__all__ = [
    "DEFAULT_FETCH_TIMEOUT",
    "DEFAULT_STALL_TIMEOUT",
    "FetchTimeout",
    "FetchWatch",
    "describe",
    "make_client",
]

DEFAULT_STALL_TIMEOUT = 120.0
"""Seconds a connect or read over the network may wait for the remote."""

DEFAULT_FETCH_TIMEOUT = 600.0
"""Seconds the whole transfer of one fetch may take."""

_READ_SIZE = 65536


class FetchTimeout(Exception):
    """A limit of :class:`FetchWatch` ended the transfer; ``str()`` says which."""


class FetchWatch:
    """The time limits of one fetch (see the module docstring).

    Use it as a context manager around the transfer: entering starts the
    deadline's timer, leaving stops it and releases what it holds. The
    transports register every socket (:meth:`add_socket`) and ``ssh`` child
    (:meth:`add_process`) they open; :meth:`expire` (called by the timer, or
    by anyone who wants the fetch to end now) shuts them all down.
    """

    def __init__(self, fetch_timeout: float, stall_timeout: float) -> None:
        if fetch_timeout <= 0 or stall_timeout <= 0:
            raise ValueError("git fetch time limits must be positive")
        self.fetch_timeout = fetch_timeout
        self.stall_timeout = stall_timeout
        self._lock = threading.Lock()
        self._expired = False
        # Duplicates of the fetch's sockets: shutting one down ends the
        # connection whatever wraps the original (TLS takes over its
        # descriptor), and a duplicate cannot be closed under us.
        self._sockets: list[socket.socket] = []
        self._processes: list[subprocess.Popen[bytes]] = []
        self._timer = threading.Timer(fetch_timeout, self.expire)
        self._timer.daemon = True
        self._timer.name = "git fetch deadline"

    def __enter__(self) -> FetchWatch:
        self._timer.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._timer.cancel()
        # Under the lock: a timer that fired just now must not shut down a
        # descriptor number that is closed here and reused elsewhere.
        with self._lock:
            for sock in self._sockets:
                sock.close()
            self._sockets = []
            self._processes = []

    @property
    def expired(self) -> bool:
        """Whether the deadline has passed (or :meth:`expire` was called)."""
        return self._expired

    def expire(self) -> None:
        """End the transfer now: shut down its sockets and kill its ``ssh`` children."""
        with self._lock:
            self._expired = True
            for sock in self._sockets:
                _shutdown(sock)
            for process in self._processes:
                _kill(process)

    def check(self) -> None:
        """Raise the deadline's :class:`FetchTimeout` if it has passed."""
        if self._expired:
            raise self.deadline_error()

    def deadline_error(self) -> FetchTimeout:
        """The error of a transfer that went past the deadline."""
        return FetchTimeout(
            f"timed out: the fetch took longer than {format_duration(self.fetch_timeout)}"
        )

    def stall_error(self) -> FetchTimeout:
        """The error of a read that waited longer than the stall limit."""
        return FetchTimeout(
            f"timed out: no answer from the remote for {format_duration(self.stall_timeout)}"
        )

    def add_socket(self, sock: socket.socket) -> socket.socket:
        """Watch a socket the transfer opened; returns it."""
        duplicate = sock.dup()
        with self._lock:
            self._sockets.append(duplicate)
            if self._expired:
                _shutdown(duplicate)
        return sock

    def add_process(self, process: subprocess.Popen[bytes]) -> None:
        """Watch an ``ssh`` child the transfer started."""
        with self._lock:
            self._processes.append(process)
            if self._expired:
                _kill(process)


def _shutdown(sock: socket.socket) -> None:
    with suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def _kill(process: subprocess.Popen[bytes]) -> None:
    with suppress(OSError):
        process.kill()


# ---------------------------------------------------------------- http(s)


def _pool_manager(clean_url: str, watch: FetchWatch) -> PoolManager:
    """dulwich's urllib3 pool manager for ``clean_url`` with every socket watched.

    The connection classes are made per fetch so that each knows its watch
    (urllib3 has no per-connection hook that could carry it).
    """

    class WatchedHTTPConnection(HTTPConnection):
        def _new_conn(self) -> socket.socket:
            watch.check()
            return watch.add_socket(super()._new_conn())

    class WatchedHTTPSConnection(HTTPSConnection):
        def _new_conn(self) -> socket.socket:
            watch.check()
            return watch.add_socket(super()._new_conn())

    class WatchedHTTPPool(HTTPConnectionPool):
        ConnectionCls = WatchedHTTPConnection

    class WatchedHTTPSPool(HTTPSConnectionPool):
        ConnectionCls = WatchedHTTPSConnection

    pools = {"http": WatchedHTTPPool, "https": WatchedHTTPSPool}

    class WatchedPoolManager(PoolManager):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.pool_classes_by_scheme = pools

    class WatchedProxyManager(ProxyManager):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.pool_classes_by_scheme = pools

    # dulwich's stub adds its AuthCallbackPoolManager to the union, returned
    # only when an auth callback is given (never here).
    return default_urllib3_manager(  # type: ignore[return-value]
        None,
        pool_manager_cls=WatchedPoolManager,
        proxy_manager_cls=WatchedProxyManager,
        base_url=clean_url,
        timeout=watch.stall_timeout,
    )


# ---------------------------------------------------------------------- ssh


class _WatchedPipes:
    """The ``ssh`` child as dulwich talks to it, with the stall limit on every read.

    Reads go straight to the child's stdout descriptor (not through a
    buffer), each after waiting at most ``stall_timeout`` for data.
    """

    def __init__(self, wrapper: SubprocessWrapper, watch: FetchWatch) -> None:
        assert wrapper.proc.stdout is not None
        self.proc = wrapper.proc
        self.write = wrapper.write
        self.can_read = wrapper.can_read
        self.close = wrapper.close
        self._wrapper = wrapper
        self._watch = watch
        self._fd = wrapper.proc.stdout.fileno()

    @property
    def stderr(self) -> IO[bytes] | None:
        return self._wrapper.stderr

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes (all until EOF if negative); short only at EOF."""
        chunks = []
        remaining = size
        while remaining != 0:
            self._wait_for_data()
            chunk = os.read(self._fd, _READ_SIZE if remaining < 0 else remaining)
            if not chunk:
                break
            chunks.append(chunk)
            if remaining > 0:
                remaining -= len(chunk)
        return b"".join(chunks)

    def _wait_for_data(self) -> None:
        poller = select.poll()
        poller.register(self._fd, select.POLLIN | select.POLLHUP | select.POLLERR)
        if not poller.poll(self._watch.stall_timeout * 1000):
            _kill(self.proc)
            raise self._watch.stall_error()


class _WatchedSSHVendor(SubprocessSSHVendor):
    """dulwich's ``ssh`` child, watched: killed at the deadline, reads stall-limited."""

    def __init__(self, watch: FetchWatch) -> None:
        self._watch = watch

    # dulwich types the result as its SubprocessWrapper but uses only the
    # pipe parts (read, write, can_read, close, stderr, proc), which _WatchedPipes has.
    def run_command(  # type: ignore[override]
        self,
        host: str,
        command: bytes,
        username: str | None = None,
        port: int | None = None,
        password: str | None = None,
        key_filename: str | None = None,
        ssh_command: str | None = None,
        protocol_version: int | None = None,
    ) -> _WatchedPipes:
        self._watch.check()
        wrapper = super().run_command(
            host,
            command,
            username=username,
            port=port,
            password=password,
            key_filename=key_filename,
            ssh_command=ssh_command,
            protocol_version=protocol_version,
        )
        self._watch.add_process(wrapper.proc)
        return _WatchedPipes(wrapper, self._watch)


# ------------------------------------------------------------------ git://

_connecting = threading.local()


class _SocketModule:
    """The ``socket`` module as dulwich's client module sees it.

    Everything is the real module's, except that a socket made while this
    thread connects a watched ``git://`` client (:func:`_watch_tcp_client`)
    gets the watch's stall limit as its timeout and is registered for its
    deadline. Other threads, and dulwich's other transports, see no change.
    """

    def __getattr__(self, name: str) -> Any:
        return getattr(socket, name)

    def socket(self, *args: Any, **kwargs: Any) -> socket.socket:
        sock = socket.socket(*args, **kwargs)
        watch: FetchWatch | None = getattr(_connecting, "watch", None)
        if watch is not None:
            try:
                watch.check()
                sock.settimeout(watch.stall_timeout)
                watch.add_socket(sock)
            except BaseException:
                sock.close()
                raise
        return sock


dulwich.client.socket = _SocketModule()  # type: ignore[assignment]


def _watch_tcp_client(client: TCPGitClient, watch: FetchWatch) -> None:
    """Make ``client`` connect (and so make its socket) under ``watch``."""
    connect: Callable[..., Any] = client._connect

    def watched_connect(*args: Any, **kwargs: Any) -> Any:
        _connecting.watch = watch
        try:
            return connect(*args, **kwargs)
        finally:
            _connecting.watch = None

    client._connect = watched_connect  # type: ignore[method-assign]


# ------------------------------------------------------------------ clients


def make_client(
    clean_url: str, username: str | None, password: str | None, watch: FetchWatch
) -> tuple[GitClient, str]:
    """A dulwich client for ``clean_url`` with credentials passed explicitly.

    No git configuration is read (``config=None``): no credential helpers,
    no ``insteadOf`` rewriting; the fetch uses exactly what it is given.
    http(s), ssh and ``git://`` clients are watched by ``watch``.
    """
    pool_manager = None
    if clean_url.startswith(("http://", "https://")):
        pool_manager = _pool_manager(clean_url, watch)
    client, path = get_transport_and_path(
        clean_url,
        config=None,
        username=username,
        password=password,
        pool_manager=pool_manager,
    )
    if isinstance(client, SSHGitClient):
        client.ssh_vendor = _WatchedSSHVendor(watch)
    elif isinstance(client, TCPGitClient):
        _watch_tcp_client(client, watch)
    return client, path


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what led to it (causes, contexts, urllib3's retry reasons)."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        reason = current.reason if isinstance(current, MaxRetryError) else None
        pending.extend((current.__cause__, current.__context__, reason))


def _timed_out(exc: BaseException) -> bool:
    return any(isinstance(e, TimeoutError | Urllib3Timeout) for e in _causes(exc))


def describe(exc: BaseException, have_credentials: bool, watch: FetchWatch | None = None) -> str:
    """A user-facing reason for a transport or repository failure.

    ``watch`` is given for a failure of the transfer it watched: then a
    passed deadline or a timed-out read is reported as such.
    """
    if isinstance(exc, FetchTimeout):
        return str(exc)
    if watch is not None and watch.expired:
        return str(watch.deadline_error())
    if watch is not None and _timed_out(exc):
        return str(watch.stall_error())
    if isinstance(exc, HTTPUnauthorized):
        if have_credentials:
            return "authentication failed (HTTP 401)"
        return "authentication required (HTTP 401)"
    if isinstance(exc, HTTPProxyUnauthorized):
        return "proxy authentication required (HTTP 407)"
    if isinstance(exc, NotGitRepository):
        return "not a git repository (or it does not exist)"
    if isinstance(exc, HangupException):
        text = str(exc).strip()
        return f"remote end hung up: {text}" if text else "remote end hung up"
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, GitProtocolError):
        return text
    if isinstance(exc, OSError):
        return text
    return f"{type(exc).__name__}: {text}"
