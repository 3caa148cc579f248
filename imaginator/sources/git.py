"""Fetching a manifest tree out of a git repository, with dulwich.

The build pipeline (reference §5.2.1) needs the tree of one commit of a
repository, nothing else: no history, no ``.git``. :func:`fetch_manifest`
does a shallow fetch of the requested ref (branch, tag, commit id, or the
remote's default branch) into a scratch bare repository next to ``dest``,
writes the commit's tree (or one sub-directory of it) into ``dest`` and
throws the scratch repository away. It blocks; the caller runs it in the
reactor's thread pool.

Credentials are taken out of the URL's userinfo and handed to dulwich
explicitly, so they are never written to a git config and never appear in a
log line or an error: everything user-visible names the repository by
:func:`public_url`, and exception texts from the transport are scrubbed of
the password as a second line of defence.

Trees are hostile input. Every entry name is checked (no ``.``, ``..``,
``/``, NUL or ``.git``), and the checkout only ever creates entries relative
to directory file descriptors it opened itself with ``O_NOFOLLOW``, so
neither a crafted name nor a symlink in the tree can make it write outside
``dest``. Symlinks are created as symlinks and never followed.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from dulwich.client import (
    GitClient,
    HTTPProxyUnauthorized,
    HTTPUnauthorized,
    default_urllib3_manager,
    get_transport_and_path,
)
from dulwich.errors import GitProtocolError, HangupException, NotGitRepository
from dulwich.objects import Blob, Commit, ShaFile, Tag, Tree
from dulwich.repo import Repo

from imaginator.goformats.units import format_bytes, format_duration
from imaginator.runtime.inroot import open_chain

__all__ = [
    "FetchResult",
    "GitFetchError",
    "fetch_manifest",
    "is_repo_url",
    "public_url",
    "split_repo_url",
]

LogFunc = Callable[[str], None]

DEFAULT_TIMEOUT = 120.0
"""Seconds an HTTP(S) connect or read may stall before the fetch fails."""

_REDACTED = "***"
_HEX_RE = re.compile(r"[0-9a-fA-F]+")
_FULL_ID_LENGTHS = (40, 64)  # SHA-1 and SHA-256 object ids
_MIN_ABBREV = 4  # git's minimum abbreviated object id length
_GITLINK_MODE = 0o160000
_PEELED_SUFFIX = b"^{}"
_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_O_NEWFILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


# ------------------------------------------------------------------ results


@dataclass(frozen=True)
class FetchResult:
    """What :func:`fetch_manifest` checked out.

    ``commit_id`` is the hex id of the commit whose tree is in ``dest`` (an
    annotated tag is peeled to its commit). ``branch`` is the ref that was
    asked for, or, when none was, the name of the remote's default branch
    (empty if the remote does not say and it cannot be inferred).
    """

    commit_id: str
    branch: str


class GitFetchError(Exception):
    """Any failure to fetch or check out a manifest.

    ``url`` is the repository's public URL (password replaced by ``***``),
    ``reason`` the failure on its own (e.g. ``"conf does not exist in
    repository"``, the Go imaginator's wording); ``str()`` is
    ``"<url>: <reason>"``. Neither ever contains the password.
    """

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(url, reason)
        self.url = url
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.url}: {self.reason}"


# ------------------------------------------------------------- pure helpers


def _split_userinfo(netloc: str) -> tuple[str | None, str]:
    """Split a URL netloc into (raw userinfo or None, host[:port])."""
    userinfo, at, hostport = netloc.rpartition("@")
    return (userinfo if at else None), hostport


def public_url(url: str) -> str:
    """``url`` with the password of its userinfo replaced by ``***``.

    ``https://user:secret@host/r.git`` becomes ``https://user:***@host/r.git``;
    URLs without a password, scp-like ``git@host:path`` forms and plain paths
    come back unchanged. This is the only form of a repository URL that goes
    into log lines and error messages.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if not parts.scheme or not parts.netloc:
        return url
    userinfo, hostport = _split_userinfo(parts.netloc)
    if userinfo is None or ":" not in userinfo:
        return url
    user = userinfo.partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:{_REDACTED}@{hostport}"))


def _strip_credentials(url: str) -> tuple[str, str | None, str | None]:
    """Split ``url`` into (URL without userinfo, username, password).

    Username and password are percent-decoded. Non-URL forms (scp-like,
    plain paths) are returned unchanged with no credentials: the scp form's
    ``user@`` is part of the address, not a secret.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return url, None, None
    if not parts.scheme or not parts.netloc:
        return url, None, None
    userinfo, hostport = _split_userinfo(parts.netloc)
    if userinfo is None:
        return url, None, None
    user, colon, password = userinfo.partition(":")
    clean = urlunsplit(parts._replace(netloc=hostport))
    return clean, unquote(user) or None, (unquote(password) if colon else None)


def is_repo_url(url: str) -> bool:
    """Whether a streams-file URL names a file inside a git repository.

    True for ``git@host:org/repo.git/path`` and for
    ``http(s)://host/org/repo.git?path`` (reference §3.1); every other URL is
    a plain file or HTTP document.
    """
    if url.startswith("git@"):
        return True
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and parts.path.endswith(".git") and bool(parts.query)


def split_repo_url(url: str) -> tuple[str, str]:
    """Split a streams-file git URL into (repository URL, path in repository).

    ``git@host:org/repo.git/path/in/repo`` → ``("git@host:org/repo.git",
    "path/in/repo")``; ``https://host/org/repo.git?path/in/repo`` →
    ``("https://host/org/repo.git", "path/in/repo")`` (the query string,
    percent-decoded, is the path; userinfo stays in the repository URL).
    Raises ``ValueError`` for any other form (see :func:`is_repo_url`).
    """
    if url.startswith("git@"):
        host_end = url.find(":")
        pos = url.find(".git/", host_end + 1) if host_end > 0 else -1
        if pos < 0:
            raise ValueError(f"missing .git/ in Git URL: {public_url(url)}")
        path = url[pos + len(".git/") :].strip("/")
        if not path:
            raise ValueError(f"missing path in repository in Git URL: {public_url(url)}")
        return url[: pos + len(".git")], path
    if not is_repo_url(url):
        raise ValueError(f"not a Git repository URL: {public_url(url)}")
    parts = urlsplit(url)
    path = unquote(parts.query).strip("/")
    if not path:
        raise ValueError(f"missing path in repository in Git URL: {public_url(url)}")
    return urlunsplit(parts._replace(query="", fragment="")), path


def _redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every occurrence of each non-empty secret replaced by ``***``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, _REDACTED)
    return text


def _secret_forms(password: str | None) -> list[str]:
    """The spellings of ``password`` that could appear in an error text."""
    if not password:
        return []
    forms = {password, quote(password, safe=""), quote(password)}
    return sorted(forms, key=len, reverse=True)


def _printable(data: bytes) -> str:
    """Remote progress text, decoded, with control characters dropped."""
    text = data.decode("utf-8", "replace")
    return "".join(ch for ch in text if ch.isprintable() or ch == "\t").strip()


class _ProgressLines:
    """Turns git progress bytes into complete log lines.

    Git redraws counters with ``\\r``; only the final state of each line
    (the text after its last ``\\r``) is worth a log line.
    """

    def __init__(self, log: LogFunc) -> None:
        self._log = log
        self._pending = b""

    def __call__(self, data: bytes) -> None:
        self._pending += data
        *lines, self._pending = self._pending.split(b"\n")
        for line in lines:
            text = _printable(line.rsplit(b"\r", 1)[-1])
            if text:
                self._log(text)
        # A stream of \r updates without \n must not grow without bound.
        if len(self._pending) > 65536:
            self._pending = self._pending.rsplit(b"\r", 1)[-1][-4096:]


# ---------------------------------------------------------- ref resolution


@dataclass
class _Target:
    """How the requested ref maps onto the remote's advertised refs."""

    want: bytes | None = None  # object id to ask the server for
    advertised: bool = False  # ``want`` is the value of an advertised ref
    abbreviated: bool = False  # ``ref`` may be an abbreviated commit id
    missing_head: bool = False  # default branch asked for, remote has no HEAD


def _is_hex(text: str, lengths: Iterable[int] | None = None) -> bool:
    if not _HEX_RE.fullmatch(text):
        return False
    return lengths is None or len(text) in lengths


def _resolve(ref: str, refs: Mapping[bytes, bytes]) -> _Target:
    """Map ``ref`` onto the advertised ``refs`` (name → object id)."""
    if ref in ("", "HEAD"):
        head = refs.get(b"HEAD")
        if head is None:
            return _Target(missing_head=True)
        return _Target(want=head, advertised=True)
    name = ref.encode("utf-8")
    if name.startswith(b"refs/"):
        candidates = [name]
    else:
        candidates = [b"refs/heads/" + name, b"refs/tags/" + name]
    for candidate in candidates:
        if candidate in refs:
            return _Target(want=refs[candidate], advertised=True)
    if _is_hex(ref, _FULL_ID_LENGTHS):
        want = ref.lower().encode("ascii")
        advertised = any(
            value == want for key, value in refs.items() if not key.endswith(_PEELED_SUFFIX)
        )
        return _Target(want=want, advertised=advertised)
    if _is_hex(ref) and len(ref) >= _MIN_ABBREV:
        return _Target(abbreviated=True)
    return _Target()


def _all_ref_wants(refs: Mapping[bytes, bytes]) -> list[bytes]:
    """Every advertised branch, tag and HEAD value (for a full fetch)."""
    wants = {
        value
        for key, value in refs.items()
        if (key == b"HEAD" or key.startswith((b"refs/heads/", b"refs/tags/")))
        and not key.endswith(_PEELED_SUFFIX)
    }
    return sorted(wants)


def _default_branch(symrefs: Mapping[bytes, bytes], refs: Mapping[bytes, bytes]) -> str:
    """Name of the remote's default branch, from its HEAD symref or by inference."""
    target = symrefs.get(b"HEAD")
    if target is not None and target.startswith(b"refs/heads/"):
        return target[len(b"refs/heads/") :].decode("utf-8", "replace")
    head = refs.get(b"HEAD")
    if head is None:
        return ""
    names = sorted(
        key[len(b"refs/heads/") :].decode("utf-8", "replace")
        for key, value in refs.items()
        if key.startswith(b"refs/heads/") and value == head
    )
    for preferred in ("main", "master"):
        if preferred in names:
            return preferred
    return names[0] if names else ""


# ----------------------------------------------------------------- fetching


class _Fetcher:
    """One fetch of one ref into a scratch bare repository."""

    def __init__(
        self,
        client: GitClient,
        path: str,
        repo: Repo,
        ref: str,
        depth: int,
        progress: Callable[[bytes], None],
        fail: Callable[[str], GitFetchError],
    ) -> None:
        self.client = client
        self.path = path
        self.repo = repo
        self.ref = ref
        self.depth = depth if depth > 0 else None
        self.progress = progress
        self.fail = fail
        self.refs: dict[bytes, bytes] = {}
        self.symrefs: dict[bytes, bytes] = {}
        self.target = _Target()

    def _fetch(
        self, choose: Callable[[dict[bytes, bytes]], list[bytes]], depth: int | None
    ) -> None:
        def determine_wants(refs: Mapping[bytes, bytes], depth: int | None = None) -> list[bytes]:
            self.refs = {k: v for k, v in refs.items() if v is not None}
            return choose(self.refs)

        result = self.client.fetch(
            self.path,
            self.repo,
            determine_wants=determine_wants,  # type: ignore[arg-type]
            progress=self.progress,
            depth=depth,
        )
        self.symrefs = dict(getattr(result, "symrefs", None) or {})

    def _choose_target(self, refs: dict[bytes, bytes]) -> list[bytes]:
        self.target = _resolve(self.ref, refs)
        return [self.target.want] if self.target.want is not None else []

    def _has(self, object_id: bytes) -> bool:
        return object_id in self.repo.object_store

    def _full_fetch(self) -> None:
        self._fetch(_all_ref_wants, None)

    def run(self) -> tuple[bytes, str]:
        """Fetch; return (commit id, branch name for the result)."""
        first_error: Exception | None = None
        try:
            self._fetch(self._choose_target, self.depth)
        except GitProtocolError as exc:
            # A server may refuse an unadvertised commit id (shallowly or at
            # all); everything else is worth one more try only in that case.
            if self.target.want is None or self.target.advertised:
                raise
            first_error = exc
        target = self.target
        if target.missing_head:
            if not self.refs:
                raise self.fail("repository is empty")
            raise self.fail("remote has no default branch (HEAD)")
        if target.want is not None and not self._has(target.want) and not target.advertised:
            try:
                self._full_fetch()
            except GitProtocolError:
                if first_error is not None:
                    raise first_error from None
                raise
        if target.abbreviated:
            self._full_fetch()
            want = self._find_abbreviated()
        elif target.want is not None and self._has(target.want):
            want = target.want
        else:
            raise self.fail(f"{self.ref}: no such branch, tag or commit")
        commit_id = self._peel(want)
        branch = self.ref if self.ref not in ("", "HEAD") else ""
        if not branch:
            branch = _default_branch(self.symrefs, self.refs)
        return commit_id, branch

    def _find_abbreviated(self) -> bytes:
        prefix = self.ref.lower().encode("ascii")
        matches = set()
        for object_id in self.repo.object_store:
            if object_id.startswith(prefix):
                try:
                    matches.add(self._peel(object_id))
                except GitFetchError:
                    continue
        if not matches:
            raise self.fail(f"{self.ref}: no such branch, tag or commit")
        if len(matches) > 1:
            raise self.fail(f"{self.ref}: ambiguous abbreviated commit id")
        return matches.pop()

    def _peel(self, object_id: bytes) -> bytes:
        """Follow annotated tags down to a commit; return the commit's id."""
        obj: ShaFile = self.repo[object_id]
        for _ in range(100):
            if not isinstance(obj, Tag):
                break
            obj = self.repo[obj.object[1]]
        if not isinstance(obj, Commit):
            raise self.fail(f"{self.ref or 'HEAD'}: does not point to a commit")
        return obj.id


# ----------------------------------------------------------------- checkout


def _check_name(name: bytes, parent: bytes, fail: Callable[[str], GitFetchError]) -> None:
    """Reject tree entry names that could escape ``dest`` or plant a ``.git``."""
    if (
        not name
        or name in (b".", b"..")
        or b"/" in name
        or b"\0" in name
        or name.lower() == b".git"
    ):
        shown = (parent + b"/" + name if parent else name).decode("utf-8", "replace")
        raise fail(f"invalid path in repository: {shown!r}")


def _select_tree(
    repo: Repo, commit_id: bytes, directory: str, fail: Callable[[str], GitFetchError]
) -> bytes:
    """Id of the tree to check out: the commit's, or that of ``directory`` in it."""
    commit = repo[commit_id]
    assert isinstance(commit, Commit)
    tree_id = commit.tree
    parts = [p for p in directory.split("/") if p not in ("", ".")]
    for index, part in enumerate(parts):
        tree = repo[tree_id]
        if not isinstance(tree, Tree):
            raise fail("corrupt repository: tree object expected")
        try:
            mode, object_id = tree[part.encode("utf-8")]
        except KeyError:
            raise fail(f"{directory} does not exist in repository") from None
        if not stat.S_ISDIR(mode):
            if index == len(parts) - 1:
                raise fail(f"{directory} exists in repository but is not a directory")
            raise fail(f"{directory} does not exist in repository")
        tree_id = object_id
    return tree_id


def _write_blob(dir_fd: int, name: bytes, blob: Blob, mode: int) -> None:
    fd = os.open(name, _O_NEWFILE, 0o600, dir_fd=dir_fd)
    try:
        for chunk in blob.as_raw_chunks():
            view = memoryview(chunk)
            while view:
                written = os.write(fd, view)
                view = view[written:]
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def _checkout(repo: Repo, tree_id: bytes, dest: str, fail: Callable[[str], GitFetchError]) -> None:
    """Write the tree ``tree_id`` into the directory ``dest`` (which must exist).

    Directories are walked iteratively (a deep hostile tree cannot exhaust
    the stack) and each is re-opened from ``dest`` component by component
    with ``O_NOFOLLOW``, so only directories this function created are ever
    written into.
    """
    root_fd = os.open(dest, _O_DIR)
    try:
        pending: list[tuple[bytes, list[bytes]]] = [(tree_id, [])]
        while pending:
            tree_id, components = pending.pop()
            tree = repo[tree_id]
            if not isinstance(tree, Tree):
                raise fail("corrupt repository: tree object expected")
            parent = b"/".join(components)
            dir_fd = open_chain(root_fd, components)
            try:
                for entry in tree.iteritems():
                    name, mode, object_id = entry.path, entry.mode, entry.sha
                    _check_name(name, parent, fail)
                    if stat.S_ISDIR(mode):
                        os.mkdir(name, 0o755, dir_fd=dir_fd)
                        pending.append((object_id, [*components, name]))
                    elif mode == _GITLINK_MODE:
                        # A submodule: git leaves an empty directory.
                        os.mkdir(name, 0o755, dir_fd=dir_fd)
                    elif stat.S_ISLNK(mode):
                        blob = repo[object_id]
                        if not isinstance(blob, Blob):
                            raise fail("corrupt repository: blob object expected")
                        link_target = blob.as_raw_string()
                        if b"\0" in link_target:
                            raise fail("invalid symbolic link target in repository")
                        os.symlink(link_target, name, dir_fd=dir_fd)
                    elif stat.S_ISREG(mode):
                        blob = repo[object_id]
                        if not isinstance(blob, Blob):
                            raise fail("corrupt repository: blob object expected")
                        _write_blob(dir_fd, name, blob, 0o755 if mode & 0o111 else 0o644)
                    else:
                        shown = (parent + b"/" + name if parent else name).decode(
                            "utf-8", "replace"
                        )
                        raise fail(f"unsupported file mode {mode:o} for {shown!r}")
            finally:
                os.close(dir_fd)
    finally:
        os.close(root_fd)


def _tree_size(path: str) -> int:
    """Total size in bytes of the regular files below ``path``."""
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total


# --------------------------------------------------------------- the entry


def _make_scratch_dir(dest: str) -> str:
    """A new directory for the scratch repository.

    Preferably beside ``dest`` (the caller's temp area, same file-system),
    else in the default temp directory.
    """
    try:
        return tempfile.mkdtemp(prefix=".git-fetch-", dir=os.path.dirname(dest))
    except OSError:
        return tempfile.mkdtemp(prefix="imaginator-git-fetch-")


def _make_client(
    clean_url: str, username: str | None, password: str | None, timeout: float | None
) -> tuple[GitClient, str]:
    """A dulwich client for ``clean_url`` with credentials passed explicitly.

    No git configuration is read (``config=None``): no credential helpers,
    no ``insteadOf`` rewriting; the fetch uses exactly what it is given.
    """
    pool_manager = None
    if clean_url.startswith(("http://", "https://")):
        pool_manager = default_urllib3_manager(None, base_url=clean_url, timeout=timeout)
    return get_transport_and_path(
        clean_url,
        config=None,
        username=username,
        password=password,
        pool_manager=pool_manager,
    )


def _describe(exc: BaseException, have_credentials: bool) -> str:
    """A user-facing reason for a transport or repository failure."""
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


def fetch_manifest(
    url: str,
    ref: str,
    dest: str,
    *,
    directory: str = "",
    depth: int = 1,
    log: LogFunc,
    timeout: float | None = DEFAULT_TIMEOUT,
) -> FetchResult:
    """Fetch the tree of ``ref`` from the repository at ``url`` into ``dest``. Blocking.

    ``ref`` is a branch name, a tag name, a full ref (``refs/...``), a
    commit id (full, or abbreviated, which needs a full fetch), or empty for
    the remote's default branch (its ``HEAD`` symref). The fetch is shallow
    (``depth`` commits; ``depth <= 0`` fetches everything); a commit id the
    server will not serve that way is fetched with all refs' history instead.

    ``url`` may be ``http(s)://`` (smart HTTP; ``user:password@`` in the URL
    is sent as basic auth and never stored or logged), ``ssh://`` or
    ``git@host:path`` (dulwich's SSH vendor), ``file://`` or a plain local
    path. ``timeout`` bounds each HTTP connect/read stall.

    Only the tree ends up in ``dest`` (created if missing; existing entries
    are not overwritten), with executable bits and symlinks preserved and no
    ``.git``. With ``directory`` set only that sub-directory's contents are
    written, at the top of ``dest``.

    Logs ``Cloning repository: ...`` before and ``Downloaded partial
    repository in ...`` after through ``log``, plus the remote's progress
    lines. Every failure raises :class:`GitFetchError` naming the public URL.
    """
    public = public_url(url)
    clean_url, username, password = _strip_credentials(url)
    secrets = _secret_forms(password)

    def fail(reason: str) -> GitFetchError:
        return GitFetchError(public, _redact(reason, secrets))

    log(f"Cloning repository: {public} branch: {ref or '(default)'}")
    start = time.monotonic()
    dest = os.path.abspath(dest)
    try:
        os.makedirs(dest, exist_ok=True)
        scratch = _make_scratch_dir(dest)
    except OSError as exc:
        raise fail(f"cannot create checkout directory: {exc}") from None
    try:
        repo = Repo.init_bare(scratch)
        try:
            client, path = _make_client(clean_url, username, password, timeout)
            try:
                fetcher = _Fetcher(client, path, repo, ref, depth, _ProgressLines(log), fail)
                commit_id, branch = fetcher.run()
            finally:
                client.close()
            tree_id = _select_tree(repo, commit_id, directory, fail)
            _checkout(repo, tree_id, dest, fail)
        finally:
            repo.close()
        size = _tree_size(scratch)
    except GitFetchError:
        raise
    except Exception as exc:
        raise fail(_describe(exc, username is not None or password is not None)) from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    elapsed = max(time.monotonic() - start, 1e-9)
    log(
        f"Downloaded partial repository in {format_duration(elapsed)}, "
        f"size: {format_bytes(size)} ({format_bytes(int(size / elapsed))}/s)"
    )
    return FetchResult(commit_id=commit_id.decode("ascii"), branch=branch)
