"""Watching one configuration document: where it lives and each new version of it.

Reference §3.1. :class:`DocumentSource` watches one document and hands each
*new* version to a callback. Local files (absolute paths, ``file://``) are
polled with ``os.stat`` and re-read only when the inode number changes (the
file was replaced by a rename, the way every editor and deploy tool updates
it); ``http(s)://`` documents are fetched every check interval; documents
inside a git repository (``git@host:org/repo.git/path``,
``https://host/org/repo.git?path``, ``file:///x/repo.git?path``) are fetched
with a shallow fetch of the default branch every check interval. Identical
content (by SHA-512) is never delivered twice in a row.

The reactor never blocks here: stat calls, file reads and git fetches run in
the thread pool. Every timer uses the injected clock. URLs appear in messages
only in their redacted form.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal
from urllib.parse import unquote, urlsplit, urlunsplit

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from imaginator.goformats.jsonc import ConfigError
from imaginator.runtime.poller import Poller
from imaginator.runtime.reactors import IReactorTimeTCPAndThreads
from imaginator.sources.documents import HttpClient, fetch_url, redact_url
from imaginator.sources.git import fetch_manifest
from imaginator.sources.giturls import is_repo_url, public_url, split_repo_url

__all__ = [
    "DEFAULT_LOCAL_POLL",
    "DocumentLocation",
    "DocumentSource",
    "Event",
    "Fetch",
    "InodeOf",
    "describe_error",
    "describe_failure",
    "locate_document",
    "read_git_document",
]

DEFAULT_LOCAL_POLL = 1.0
"""Seconds between two ``os.stat`` polls of a local document."""

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


def describe_error(exc: BaseException) -> str:
    """The text of a fetch failure (``FetchError``, ``GitFetchError``, ``OSError``, …)."""
    text = str(exc).strip()
    if isinstance(exc, OSError) and exc.strerror and exc.filename:
        return f"{exc.filename}: {exc.strerror}"
    if isinstance(exc, OSError | ConfigError) or type(exc).__name__.endswith("FetchError"):
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def describe_failure(failure: Failure) -> str:
    """:func:`describe_error` of a failure's exception (which Twisted types as optional)."""
    exc = failure.value
    return describe_error(exc) if exc is not None else failure.getErrorMessage()


class Event:
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
        reactor: IReactorTimeTCPAndThreads,
        clock: IReactorTime,
        threadpool: ThreadPool,
        check_interval: float,
        on_document: Callable[[bytes], None],
        on_error: Callable[[str], None],
        name: str,
        local_poll: float = DEFAULT_LOCAL_POLL,
        shown_url: str | None = None,
        fetch: Fetch | None = None,
        inode_of: InodeOf | None = None,
        http_client: HttpClient | None = None,
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
        self._first = Event()

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
            self._report(describe_error(exc), repeat=not local)
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
