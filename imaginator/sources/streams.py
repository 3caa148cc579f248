"""The image streams document in force (``ImageStreamsUrl``, reference §3.1).

:class:`StreamsRegistry` keeps the current :class:`StreamsDocument`: it
parses every new version delivered by its :class:`DocumentSource`, keeps the
last good one in force when a version is bad, caches the last good one in
``<stateDir>/image-streams.json`` and falls back to that cache when the live
source is slow at start-up. Cache reads and writes run in the thread pool.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredLock, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from imaginator.config.expand import expand
from imaginator.config.streams import StreamsDocument, parse_streams
from imaginator.config.variables import make_redactor
from imaginator.goformats.jsonc import ConfigError
from imaginator.runtime.reactors import IReactorTimeTCPAndThreads
from imaginator.sources.documents import HttpClient, redact_url
from imaginator.sources.watch import (
    DEFAULT_LOCAL_POLL,
    DocumentSource,
    Event,
    Fetch,
    InodeOf,
    describe_failure,
)

__all__ = ["CACHE_FILENAME", "DEFAULT_CACHE_GRACE", "StreamsRegistry"]

DEFAULT_CACHE_GRACE = 5.0
"""Seconds to wait for the live streams document before using the cache."""

CACHE_FILENAME = "image-streams.json"

_log = Logger()


def _write_cache(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (``path~`` then rename), mode 0600."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    temporary = path + "~"
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW
    fd = os.open(temporary, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)


def _read_cache(path: str) -> bytes | None:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


class StreamsRegistry(Service):
    """The image streams document in force (reference §3.1), kept up to date.

    ``source_url`` (``ImageStreamsUrl``) is expanded with the secret
    variables once, here; only the unexpanded URL (password redacted) ever
    appears in the log. An empty URL means "no normal streams": the empty
    document is in force and :attr:`loaded` has fired already.

    While running, every new version of the document is parsed; a good one
    replaces the current document at once, is cached in
    ``<state_dir>/image-streams.json`` and is announced to the subscribers;
    a bad one is logged and the previous one stays. If nothing good arrived
    ``cache_grace`` seconds after start, the cached document is used until
    the live source delivers.

    ``fetch``, ``inode_of``, ``local_poll`` and ``http_client`` are passed
    to the :class:`DocumentSource`.
    """

    def __init__(
        self,
        *,
        source_url: str,
        state_dir: str,
        arch: str,
        reactor: IReactorTimeTCPAndThreads,
        clock: IReactorTime,
        threadpool: ThreadPool,
        check_interval: float,
        secrets: Callable[[], Mapping[str, str]],
        redact_values: Callable[[], Mapping[str, str]] | None = None,
        cache_grace: float = DEFAULT_CACHE_GRACE,
        local_poll: float = DEFAULT_LOCAL_POLL,
        fetch: Fetch | None = None,
        inode_of: InodeOf | None = None,
        http_client: HttpClient | None = None,
    ) -> None:
        self.arch = arch
        self.cache_path = os.path.join(state_dir, CACHE_FILENAME)
        self.cache_grace = cache_grace
        self.shown_url = redact_url(source_url)
        self._reactor = reactor
        self._clock = clock
        self._threadpool = threadpool
        self._secrets = secrets
        self._redact_values = redact_values if redact_values is not None else secrets
        self._current = StreamsDocument()
        self._current_hash: bytes | None = None
        self._loaded_at: float | None = None
        self._from_cache = False
        self._parse_error: str | None = None
        self._subscribers: list[Callable[[StreamsDocument], object]] = []
        self._loaded = Event()
        self._cache_lock = DeferredLock()
        self._grace_timer: IDelayedCall | None = None
        expanded = expand(source_url, secrets().get) if source_url else ""
        self.source: DocumentSource | None = None
        if not expanded:
            self._loaded_at = clock.seconds()
            self._loaded.fire()
            return
        self.source = DocumentSource(
            expanded,
            reactor=reactor,
            clock=clock,
            threadpool=threadpool,
            check_interval=check_interval,
            on_document=self._on_document,
            on_error=self._on_error,
            name="image streams",
            local_poll=local_poll,
            shown_url=self.shown_url,
            fetch=fetch,
            inode_of=inode_of,
            http_client=http_client,
        )

    # -------------------------------------------------------------- public

    @property
    def loaded(self) -> Deferred[None]:
        """A new Deferred firing (with None) once a document is in force (live or cached)."""
        return self._loaded.wait()

    @property
    def is_loaded(self) -> bool:
        return self._loaded.fired

    @property
    def loaded_at(self) -> float | None:
        """Clock time at which the current document was put in force, or None."""
        return self._loaded_at

    @property
    def from_cache(self) -> bool:
        """True while the document in force is the one read from the cache file."""
        return self._from_cache

    def current(self) -> StreamsDocument:
        """The document in force (empty until one is loaded)."""
        return self._current

    def last_error(self) -> str | None:
        """The latest problem with the live document (fetch or parse), or None."""
        if self._parse_error is not None:
            return self._parse_error
        return self.source.last_error if self.source is not None else None

    def subscribe(self, callback: Callable[[StreamsDocument], object]) -> Callable[[], None]:
        """Call ``callback(document)`` whenever a new document is put in force.

        It is not called for the document already in force (read
        :meth:`current` for that). Returns a function that unsubscribes.
        """
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

        return unsubscribe

    async def ensure_known(self, name: str, is_known: Callable[[StreamsDocument], bool]) -> bool:
        """Whether ``is_known(current())`` holds, re-reading the document once if not.

        This is the on-demand reload for a build request naming an unknown
        stream: one immediate re-read of the source, then the test again.
        """
        if is_known(self._current):
            return True
        if self.source is None:
            return False
        _log.info("Unknown stream {stream}: re-reading image streams configuration", stream=name)
        await self.source.reload_now()
        return is_known(self._current)

    def cache_flushed(self) -> Deferred[None]:
        """Fires once every cache write started so far has finished."""
        return self._cache_lock.run(lambda: None)

    def startService(self) -> None:
        super().startService()
        if self.source is None:
            return
        if not self._loaded.fired and self._grace_timer is None:
            self._grace_timer = self._clock.callLater(self.cache_grace, self._grace_expired)
        self.source.startService()

    def stopService(self) -> Deferred[None]:
        """No more checks; fires once the check in flight (cancelled) has ended,
        bounded by the source's poller, and every cache write has finished."""
        super().stopService()
        if self._grace_timer is not None and self._grace_timer.active():
            self._grace_timer.cancel()
        self._grace_timer = None
        if self.source is None:
            return succeed(None)
        stopped = self.source.stopService()
        return stopped.addCallback(lambda _: self.cache_flushed())

    # ----------------------------------------------------------- internals

    def _redact(self, text: str) -> str:
        return make_redactor(self._redact_values())(text)

    def _on_error(self, message: str) -> None:
        _log.error(
            "Error fetching image streams configuration: {error}", error=self._redact(message)
        )

    def _on_document(self, data: bytes) -> None:
        digest = hashlib.sha512(data).digest()
        if self._from_cache and digest == self._current_hash:
            # The live source says what the cache said: nothing changes.
            self._from_cache = False
            self._parse_error = None
            _log.info(
                "Image streams configuration from {url} is the cached one", url=self.shown_url
            )
            return
        try:
            document = parse_streams(data, self.shown_url, self.arch)
        except ConfigError as exc:
            self._parse_error = self._redact(str(exc))
            _log.error(
                "Error loading image streams configuration: {error}", error=self._parse_error
            )
            return
        self._parse_error = None
        _log.info(
            "Loaded image streams configuration from {url}: {streams} streams, "
            "{patterns} stream patterns",
            url=self.shown_url,
            streams=len(document.streams),
            patterns=len(document.patterns),
        )
        # Queued before anyone hears of the document, so cache_flushed() covers it.
        self._cache_lock.run(self._write_cache, data).addErrback(self._cache_write_failed)
        self._apply(document, digest, from_cache=False)

    def _write_cache(self, data: bytes) -> Deferred[None]:
        return deferToThreadPool(
            self._reactor, self._threadpool, _write_cache, self.cache_path, data
        )

    def _cache_write_failed(self, failure: Failure) -> None:
        _log.error(
            "Error writing image streams cache {file}: {error}",
            file=self.cache_path,
            error=describe_failure(failure),
        )

    def _apply(self, document: StreamsDocument, digest: bytes, *, from_cache: bool) -> None:
        self._current = document
        self._current_hash = digest
        self._from_cache = from_cache
        self._loaded_at = self._clock.seconds()
        if self._grace_timer is not None and self._grace_timer.active():
            self._grace_timer.cancel()
        self._grace_timer = None
        for callback in list(self._subscribers):
            try:
                callback(document)
            except Exception:
                _log.failure("Error in image streams subscriber {callback!r}", callback=callback)
        self._loaded.fire()

    def _grace_expired(self) -> None:
        self._grace_timer = None
        if self._loaded.fired or not self.running:
            return
        d = deferToThreadPool(self._reactor, self._threadpool, _read_cache, self.cache_path)
        d.addCallbacks(self._use_cache, self._cache_read_failed)

    def _use_cache(self, data: bytes | None) -> None:
        if self._loaded.fired or not self.running:
            return
        if data is None:
            _log.info(
                "No image streams configuration after {grace}s and no cache file {file}",
                grace=self.cache_grace,
                file=self.cache_path,
            )
            return
        try:
            document = parse_streams(data, self.cache_path, self.arch)
        except ConfigError as exc:
            _log.error("Error loading image streams cache: {error}", error=str(exc))
            return
        self._apply(document, hashlib.sha512(data).digest(), from_cache=True)
        _log.info(
            "No image streams configuration after {grace}s: using cached {file}",
            grace=self.cache_grace,
            file=self.cache_path,
        )

    def _cache_read_failed(self, failure: Failure) -> None:
        _log.error(
            "Error reading image streams cache {file}: {error}",
            file=self.cache_path,
            error=describe_failure(failure),
        )
