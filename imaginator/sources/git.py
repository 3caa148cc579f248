"""Fetching a manifest tree out of a git repository, with dulwich.

The build pipeline (reference §5.2.1) needs the tree of one commit of a
repository, nothing else: no history, no ``.git``. :func:`fetch_manifest`
does a shallow fetch of the requested ref (branch, tag, commit id, or the
remote's default branch) into a scratch bare repository next to ``dest``,
writes the commit's tree (or one sub-directory of it) into ``dest`` and
throws the scratch repository away. It blocks; the caller runs it in the
reactor's thread pool.

The parts: ``giturls`` (URL forms, credentials, the public form of a URL and
:class:`GitFetchError`), ``gittransport`` (dulwich clients with the
credentials passed explicitly and the time limits of a fetch), ``gitfetch``
(resolving and fetching the ref) and ``gitcheckout`` (writing a hostile tree
safely). Credentials never appear in a log line or an error: everything
user-visible names the repository by its public URL, and exception texts
from the transport are scrubbed of the password as a second line of defence.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

from dulwich.repo import Repo

from imaginator.goformats.units import format_bytes, format_duration
from imaginator.sources.gitcheckout import checkout, select_tree, tree_size
from imaginator.sources.gitfetch import Fetcher, ProgressLines
from imaginator.sources.gittransport import (
    DEFAULT_FETCH_TIMEOUT,
    DEFAULT_STALL_TIMEOUT,
    FetchWatch,
    describe,
    make_client,
)
from imaginator.sources.giturls import (
    GitFetchError,
    public_url,
    redact,
    secret_forms,
    strip_credentials,
)

__all__ = [
    "DEFAULT_FETCH_TIMEOUT",
    "DEFAULT_STALL_TIMEOUT",
    "FetchResult",
    "GitFetchError",
    "fetch_manifest",
]

LogFunc = Callable[[str], None]


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


def _make_scratch_dir(dest: str) -> str:
    """A new directory for the scratch repository.

    Preferably beside ``dest`` (the caller's temp area, same file-system),
    else in the default temp directory.
    """
    try:
        return tempfile.mkdtemp(prefix=".git-fetch-", dir=os.path.dirname(dest))
    except OSError:
        return tempfile.mkdtemp(prefix="imaginator-git-fetch-")


def fetch_manifest(
    url: str,
    ref: str,
    dest: str,
    *,
    directory: str = "",
    depth: int = 1,
    log: LogFunc,
    stall_timeout: float = DEFAULT_STALL_TIMEOUT,
    fetch_timeout: float = DEFAULT_FETCH_TIMEOUT,
) -> FetchResult:
    """Fetch the tree of ``ref`` from the repository at ``url`` into ``dest``. Blocking.

    ``ref`` is a branch name, a tag name, a full ref (``refs/...``), a
    commit id (full, or abbreviated, which needs a full fetch), or empty for
    the remote's default branch (its ``HEAD`` symref). The fetch is shallow
    (``depth`` commits; ``depth <= 0`` fetches everything); a commit id the
    server will not serve that way is fetched with all refs' history instead.

    ``url`` may be ``http(s)://`` (smart HTTP; ``user:password@`` in the URL
    is sent as basic auth and never stored or logged), ``ssh://`` or
    ``git@host:path`` (the ``ssh`` command), ``file://`` or a plain local
    path. Over http(s), ssh and ``git://`` no read waits more than ``stall_timeout``
    seconds for the remote and the whole transfer ends after
    ``fetch_timeout`` seconds (``gittransport``), with an error saying which
    limit it hit.

    Only the tree ends up in ``dest`` (created if missing; existing entries
    are not overwritten), with executable bits and symlinks preserved and no
    ``.git``. With ``directory`` set only that sub-directory's contents are
    written, at the top of ``dest``.

    Logs ``Cloning repository: ...`` before and ``Downloaded partial
    repository in ...`` after through ``log``, plus the remote's progress
    lines. Every failure raises :class:`GitFetchError` naming the public URL.
    """
    watch = FetchWatch(fetch_timeout, stall_timeout)
    public = public_url(url)
    clean_url, username, password = strip_credentials(url)
    have_credentials = username is not None or password is not None
    secrets = secret_forms(password)

    def fail(reason: str) -> GitFetchError:
        return GitFetchError(public, redact(reason, secrets))

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
            with watch:
                try:
                    client, path = make_client(clean_url, username, password, watch)
                    try:
                        fetcher = Fetcher(client, path, repo, ref, depth, ProgressLines(log), fail)
                        commit_id, branch = fetcher.run()
                    finally:
                        client.close()
                except GitFetchError:
                    raise
                except Exception as exc:
                    # Only a failure of the transfer itself may be the watch's doing.
                    raise fail(describe(exc, have_credentials, watch)) from None
            tree_id = select_tree(repo, commit_id, directory, fail)
            checkout(repo, tree_id, dest, fail)
        finally:
            repo.close()
        size = tree_size(scratch)
    except GitFetchError:
        raise
    except Exception as exc:
        raise fail(describe(exc, have_credentials)) from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    elapsed = max(time.monotonic() - start, 1e-9)
    log(
        f"Downloaded partial repository in {format_duration(elapsed)}, "
        f"size: {format_bytes(size)} ({format_bytes(int(size / elapsed))}/s)"
    )
    return FetchResult(commit_id=commit_id.decode("ascii"), branch=branch)
