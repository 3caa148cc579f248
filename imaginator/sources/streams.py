"""Watched configuration documents: the image streams file and the variables file.

Reference §3.1 and §3.5. Three pieces:

* :class:`DocumentSource` watches one document and hands each *new* version
  to a callback. Local files (absolute paths, ``file://``) are polled with
  ``os.stat`` and re-read only when the inode number changes (the file was
  replaced by a rename, the way every editor and deploy tool updates it);
  ``http(s)://`` documents are fetched every check interval; documents inside
  a git repository (``git@host:org/repo.git/path``,
  ``https://host/org/repo.git?path``, ``file:///x/repo.git?path``) are
  fetched with a shallow fetch of the default branch every check interval.
  Identical content (by SHA-512) is never delivered twice in a row.
* :class:`StreamsRegistry` keeps the current :class:`StreamsDocument`: it
  parses every new version, keeps the last good one in force when a version
  is bad, caches the last good one in ``<stateDir>/image-streams.json`` and
  falls back to that cache when the live source is slow at start-up.
* :class:`VariablesFile` holds the secret variables and swaps them when the
  file is replaced; it redacts them from any text.

The reactor never blocks here: stat calls, file reads, cache writes and git
fetches all run in the thread pool. Every timer uses the injected clock.
URLs appear in messages only in their redacted form.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal
from urllib.parse import unquote, urlsplit, urlunsplit

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, DeferredLock, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure

from imaginator.config.expand import expand
from imaginator.config.streams import StreamsDocument, parse_streams
from imaginator.config.variables import make_redactor, parse_variables
from imaginator.goformats.jsonc import ConfigError
from imaginator.runtime.poller import Poller
from imaginator.sources.documents import fetch_url, redact_url
from imaginator.sources.git import fetch_manifest
from imaginator.sources.giturls import is_repo_url, public_url, split_repo_url

__all__ = [
    "CACHE_FILENAME",
    "DEFAULT_CACHE_GRACE",
    "DEFAULT_LOCAL_POLL",
    "DocumentLocation",
    "DocumentSource",
    "StreamsRegistry",
    "VariablesFile",
    "locate_document",
    "read_git_document",
]

DEFAULT_LOCAL_POLL = 1.0
"""Seconds between two ``os.stat`` polls of a local document."""

DEFAULT_CACHE_GRACE = 5.0
"""Seconds to wait for the live streams document before using the cache."""

CACHE_FILENAME = "image-streams.json"

Fetch = Callable[[str], Awaitable[bytes]]
"""Fetches a document's content: given the URL (the absolute path for a local
file), returns the bytes or raises an exception whose text names the URL."""

InodeOf = Callable[[str], Awaitable[int]]
"""The inode number of a local file; raises ``OSError`` if it cannot be stat'ed."""

Kind = Literal["local", "http", "git"]

_log = Logger()


# ------------------------------------------------------------------ locations


@dataclass(frozen=True)
class DocumentLocation:
    """Where a document lives.

    ``kind`` is ``"local"`` (``target`` is the absolute file path),
    ``"http"`` (``target`` is the URL) or ``"git"`` (``target`` is the
    repository URL and ``path`` the file's path inside the repository).
    """

    kind: Kind
    target: str
    path: str = ""


def locate_document(url: str) -> DocumentLocation:
    """Classify a document URL (reference §3.1).

    Absolute or relative paths and ``file://`` URLs are local files;
    ``git@host:org/repo.git/path`` and ``http(s)://host/org/repo.git?path``
    name a file in a git repository, and so does ``file:///x/repo.git?path``
    (a local repository, handy for tests and air-gapped hosts); any other
    ``http(s)://`` URL is fetched as is. Anything else raises
    ``ConfigError("unknown scheme: X")``; errors never show a password.
    """
    if url.startswith("git@"):
        try:
            repo, path = split_repo_url(url)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        return DocumentLocation("git", repo, path)
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise ConfigError(f"bad URL {redact_url(url)}: {exc}") from None
    if parts.scheme in ("http", "https"):
        if is_repo_url(url):
            try:
                repo, path = split_repo_url(url)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
            return DocumentLocation("git", repo, path)
        return DocumentLocation("http", url)
    if parts.scheme == "file":
        if parts.path.endswith(".git") and parts.query:
            path = unquote(parts.query).strip("/")
            if not path:
                raise ConfigError(f"missing path in repository in Git URL: {redact_url(url)}")
            repo = urlunsplit(parts._replace(query="", fragment=""))
            return DocumentLocation("git", repo, path)
        return DocumentLocation("local", unquote(parts.path))
    if not parts.scheme:
        return DocumentLocation("local", os.path.abspath(url))
    raise ConfigError(f"unknown scheme: {parts.scheme}")


def read_git_document(
    repo_url: str, path: str, *, log: Callable[[str], None] | None = None
) -> bytes:
    """Read file ``path`` of the default branch of ``repo_url``. Blocking.

    The repository is fetched shallowly (only the directory holding the
    file is checked out) into a temporary directory, which is removed
    before returning. The file must be a regular file: a symlink in the
    repository is refused rather than followed. Raises
    :class:`~imaginator.sources.git.GitFetchError` or ``OSError``;
    messages name the repository by its public URL.
    """
    directory, _, filename = path.strip("/").rpartition("/")
    public = public_url(repo_url)
    if filename in ("", ".", ".."):
        raise OSError(f"{public}: {path}: not a file path")
    scratch = tempfile.mkdtemp(prefix="imaginator-document-")
    try:
        dest = os.path.join(scratch, "tree")
        fetch_manifest(repo_url, "", dest, directory=directory, log=log or (lambda _line: None))
        try:
            fd = os.open(os.path.join(dest, filename), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise OSError(f"{public}: {path} does not exist in repository") from None
        except OSError:
            raise OSError(f"{public}: {path} is not a regular file") from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(f"{public}: {path} is not a regular file")
            with os.fdopen(fd, "rb", closefd=False) as handle:
                return handle.read()
        finally:
            os.close(fd)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _stat_inode(path: str) -> int:
    try:
        return os.stat(path).st_ino
    except OSError as exc:
        raise OSError(f"stat {path}: {exc.strerror or exc}") from None


def _describe(exc: BaseException) -> str:
    """The text of a fetch failure (``FetchError``, ``GitFetchError``, ``OSError``, …)."""
    text = str(exc).strip()
    if isinstance(exc, OSError) and exc.strerror and exc.filename:
        return f"{exc.filename}: {exc.strerror}"
    if isinstance(exc, OSError | ConfigError) or type(exc).__name__.endswith("FetchError"):
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class _Event:
    """Something that happens once; any number of parties can wait for it.

    Each :meth:`wait` returns a new Deferred, so one waiter cancelling (a
    timeout) or consuming the result never affects another.
    """

    def __init__(self) -> None:
        self._waiters: list[Deferred[None]] | None = []

    @property
    def fired(self) -> bool:
        return self._waiters is None

    def fire(self) -> None:
        if self._waiters is None:
            return
        waiters, self._waiters = self._waiters, None
        for waiter in waiters:
            waiter.callback(None)

    def wait(self) -> Deferred[None]:
        if self._waiters is None:
            return succeed(None)
        waiter: Deferred[None] = Deferred(lambda d: self._forget(d))
        self._waiters.append(waiter)
        return waiter

    def _forget(self, waiter: Deferred[None]) -> None:
        if self._waiters is not None and waiter in self._waiters:
            self._waiters.remove(waiter)


# ------------------------------------------------------------- DocumentSource


class DocumentSource(Service):
    """Watches one configuration document and delivers each new version.

    ``on_document(data)`` is called with the raw bytes of every version that
    differs (SHA-512) from the last one delivered; ``on_error(message)`` with
    the text of every failure to fetch it (the URL redacted, the password
    never shown). The source keeps watching after an error.

    Local documents are stat'ed every ``local_poll`` seconds and re-read only
    when their inode number changes (and at start); a failure to stat is
    reported once, not at every poll. HTTP and git documents are fetched at
    start and then every ``check_interval`` seconds (0: only at start).
    Checks never overlap (``runtime.poller`` runs them).

    ``fetch`` and ``inode_of`` replace the real fetching (tests); by default
    files and git repositories are read in ``threadpool`` and HTTP is
    fetched with treq (``http_client`` if given). ``shown_url`` is how the
    URL appears in messages (default: the URL with its password redacted).
    """

    def __init__(
        self,
        url: str,
        *,
        reactor: Any,
        clock: Any,
        threadpool: Any,
        check_interval: float,
        on_document: Callable[[bytes], None],
        on_error: Callable[[str], None],
        name: str,
        local_poll: float = DEFAULT_LOCAL_POLL,
        shown_url: str | None = None,
        fetch: Fetch | None = None,
        inode_of: InodeOf | None = None,
        http_client: Any = None,
    ) -> None:
        self.location = locate_document(url)
        self.url = self.location.target if self.location.kind == "local" else url
        self.name = name
        self.shown_url = shown_url if shown_url is not None else redact_url(url)
        self.check_interval = max(float(check_interval), 0.0)
        self.local_poll = local_poll
        self.last_error: str | None = None
        """The last fetch failure, or None once a fetch succeeded again."""
        self._raw_url = url
        self._forms = self._url_forms(url, shown_url)
        self._reactor = reactor
        self._clock = clock
        self._threadpool = threadpool
        self._http_client = http_client
        self._on_document = on_document
        self._on_error = on_error
        self._fetch: Fetch = fetch if fetch is not None else self._default_fetch
        self._inode_of: InodeOf = inode_of if inode_of is not None else self._default_inode_of
        self._inode: int | None = None
        self._hash: bytes | None = None
        self._generation = 0
        self._force = False  # the next check re-reads whatever the inode
        self._poller = Poller(
            f"check of {name}",
            self._run_check,
            clock=clock,
            interval=lambda: self.period,
            after_end=True,
        )
        self._first = _Event()

    # -------------------------------------------------------------- public

    @property
    def first_document(self) -> Deferred[None]:
        """A new Deferred firing (with None) once the first document has been delivered."""
        return self._first.wait()

    @property
    def period(self) -> float:
        """Seconds between two checks; 0 means the document is fetched only at start."""
        return self.local_poll if self.location.kind == "local" else self.check_interval

    def startService(self) -> None:
        super().startService()
        self._poller.start(first_delay=0)

    def stopService(self) -> Deferred[None]:
        """No more checks; a fetch in flight is cancelled (it only waits on I/O)."""
        super().stopService()
        return self._poller.stop(cancel=True)

    def reload_now(self) -> Deferred[bool]:
        """Read the document now, whatever its inode; fires True if a new version was delivered.

        "New" means delivered since this call, by this check or by one that
        was already running. Requests made while a check runs share the one
        check that follows it. Never fails.
        """
        generation = self._generation
        self._force = True
        done = self._poller.run_now()
        done.addErrback(lambda _failure: None)  # logged by the poller
        return done.addCallback(lambda _result: self._generation != generation)

    def idle(self) -> Deferred[None]:
        """Fires once the check running or queued now (if any) has finished."""
        return self._poller.idle()

    # ----------------------------------------------------------- internals

    def _url_forms(self, url: str, shown_url: str | None) -> re.Pattern[str] | None:
        """A pattern matching every spelling of the URL that must read as ``shown_url``.

        Only needed when the caller chose how the URL is shown (e.g. the
        unexpanded form of a URL containing secret variables); matched in one
        pass, longest first, so no spelling is replaced inside another.
        """
        if shown_url is None:
            return None
        target = self.location.target
        forms = {url, redact_url(url), target, redact_url(target), public_url(target)}
        forms = {form for form in forms if len(form) > 1 and form != shown_url}
        if not forms:
            return None
        ordered = sorted(forms, key=len, reverse=True)
        return re.compile("|".join(re.escape(form) for form in ordered))

    async def _run_check(self) -> bool:
        force, self._force = self._force, False
        return await self._check(force)

    async def _check(self, force: bool) -> bool:
        local = self.location.kind == "local"
        try:
            if local:
                inode = await self._inode_of(self.url)
                if not force and inode == self._inode:
                    self.last_error = None
                    return False
                data = await self._fetch(self.url)
                self._inode = inode
            else:
                data = await self._fetch(self.url)
        except CancelledError:
            raise
        except Exception as exc:
            if local:
                self._inode = None
            self._report(_describe(exc), repeat=not local)
            return False
        self.last_error = None
        return self._accept(data)

    def _accept(self, data: bytes) -> bool:
        digest = hashlib.sha512(data).digest()
        if digest == self._hash:
            _log.debug(
                "{name}: ignoring unchanged configuration from {url}",
                name=self.name,
                url=self.shown_url,
            )
            return False
        self._hash = digest
        self._generation += 1
        try:
            self._on_document(data)
        except Exception:
            _log.failure("Error handling new {name} from {url}", name=self.name, url=self.shown_url)
        self._first.fire()
        return True

    def _report(self, message: str, *, repeat: bool) -> None:
        message = self._scrub(message)
        if not repeat and message == self.last_error:
            return
        self.last_error = message
        try:
            self._on_error(message)
        except Exception:
            _log.failure("Error reporting a {name} failure", name=self.name)

    def _scrub(self, message: str) -> str:
        """``message`` naming the URL only as ``shown_url`` and never showing a password."""
        if self._forms is not None:
            message = self._forms.sub(lambda _match: self.shown_url, message)
        try:
            password = urlsplit(self._raw_url).password
        except ValueError:
            password = None
        if password:
            for spelling in sorted({password, unquote(password)}, key=len, reverse=True):
                message = message.replace(spelling, "***")
        return message

    async def _default_inode_of(self, path: str) -> int:
        return await deferToThreadPool(self._reactor, self._threadpool, _stat_inode, path)

    async def _default_fetch(self, url: str) -> bytes:
        if self.location.kind != "git":
            return await fetch_url(
                url,
                reactor=self._reactor,
                threadpool=self._threadpool,
                http_client=self._http_client,
            )
        lines: list[str] = []
        try:
            return await deferToThreadPool(
                self._reactor,
                self._threadpool,
                read_git_document,
                self.location.target,
                self.location.path,
                log=lines.append,
            )
        finally:
            # fetch_manifest's progress lines, logged from the reactor thread.
            for line in lines:
                _log.debug("{name}: {line}", name=self.name, line=self._scrub(line))


# ------------------------------------------------------------ StreamsRegistry


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
        reactor: Any,
        clock: Any,
        threadpool: Any,
        check_interval: float,
        secrets: Callable[[], Mapping[str, str]],
        cache_grace: float = DEFAULT_CACHE_GRACE,
        local_poll: float = DEFAULT_LOCAL_POLL,
        fetch: Fetch | None = None,
        inode_of: InodeOf | None = None,
        http_client: Any = None,
    ) -> None:
        self.arch = arch
        self.cache_path = os.path.join(state_dir, CACHE_FILENAME)
        self.cache_grace = cache_grace
        self.shown_url = redact_url(source_url)
        self._reactor = reactor
        self._clock = clock
        self._threadpool = threadpool
        self._secrets = secrets
        self._current = StreamsDocument()
        self._current_hash: bytes | None = None
        self._loaded_at: float | None = None
        self._from_cache = False
        self._parse_error: str | None = None
        self._subscribers: list[Callable[[StreamsDocument], object]] = []
        self._loaded = _Event()
        self._cache_lock = DeferredLock()
        self._grace_timer: Any = None
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

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        if self._grace_timer is not None and self._grace_timer.active():
            self._grace_timer.cancel()
        self._grace_timer = None
        if self.source is None:
            return None
        self.source.stopService()
        return self.cache_flushed()

    # ----------------------------------------------------------- internals

    def _redact(self, text: str) -> str:
        return make_redactor(self._secrets())(text)

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
            error=_describe(failure.value),
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
            error=_describe(failure.value),
        )


# --------------------------------------------------------------- VariablesFile


class VariablesFile(Service):
    """The secret variables file (``-variablesFile``, reference §3.5), kept current.

    :meth:`load_initial` reads it once before the reactor runs; while the
    service runs it is watched (inode change, every ``local_poll`` seconds)
    and a replaced file swaps the values; a bad new version is logged and
    the old values stay. An empty ``path`` means no variables. No message
    ever contains a value.
    """

    def __init__(
        self,
        path: str,
        *,
        reactor: Any,
        clock: Any,
        threadpool: Any,
        local_poll: float = DEFAULT_LOCAL_POLL,
        fetch: Fetch | None = None,
        inode_of: InodeOf | None = None,
    ) -> None:
        self.path = ""
        self.source: DocumentSource | None = None
        self._values: Mapping[str, str] = MappingProxyType({})
        self._redactor: Callable[[str], str] = make_redactor({})
        self._hash: bytes | None = None
        self.loaded_at: float | None = None
        self._clock = clock
        if not path:
            return
        location = locate_document(path)
        if location.kind != "local":
            raise ConfigError(f"{redact_url(path)}: the variables file must be a local file")
        self.path = location.target
        self.source = DocumentSource(
            self.path,
            reactor=reactor,
            clock=clock,
            threadpool=threadpool,
            check_interval=0,
            on_document=self._on_document,
            on_error=self._on_error,
            name="variables",
            local_poll=local_poll,
            fetch=fetch,
            inode_of=inode_of,
        )

    def load_initial(self) -> None:
        """Read and parse the file now (blocking). Raises ``ConfigError`` naming the file."""
        if not self.path:
            return
        try:
            with open(self.path, "rb") as handle:
                data = handle.read()
        except OSError as exc:
            raise ConfigError(f"{self.path}: {exc.strerror or exc}") from None
        self._swap(parse_variables(data, self.path), data)
        _log.info("Loaded variables from {file}", file=self.path, count=len(self._values))

    def values(self) -> Mapping[str, str]:
        """The current variables (read-only)."""
        return self._values

    def redact(self, text: str) -> str:
        """``text`` with every current variable value replaced by ``[REDACTED]``."""
        return self._redactor(text)

    def startService(self) -> None:
        super().startService()
        if self.source is not None:
            self.source.startService()

    def stopService(self) -> None:
        super().stopService()
        if self.source is not None:
            self.source.stopService()

    def _swap(self, values: Mapping[str, str], data: bytes) -> None:
        self._values = MappingProxyType(dict(values))
        self._redactor = make_redactor(self._values)
        self._hash = hashlib.sha512(data).digest()
        self.loaded_at = self._clock.seconds()

    def _on_document(self, data: bytes) -> None:
        if hashlib.sha512(data).digest() == self._hash:
            return
        try:
            values = parse_variables(data, self.path)
        except ConfigError as exc:
            _log.error("Error loading variables: {error}", error=str(exc))
            return
        first = self._hash is None
        self._swap(values, data)
        if first:
            _log.info("Loaded variables from {file}", file=self.path, count=len(values))
        else:
            _log.info("Loaded new variables from {file}", file=self.path, count=len(values))

    def _on_error(self, message: str) -> None:
        _log.error("Error reading variables file: {error}", error=self.redact(message))
