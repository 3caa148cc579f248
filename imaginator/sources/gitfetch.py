"""Fetching one ref of a git repository into a scratch repository, with dulwich.

:class:`Fetcher` maps the requested ref (branch, tag, full ref, commit id,
abbreviated commit id, or the remote's default branch) onto the refs the
remote advertises (:func:`resolve_ref`), fetches it shallowly, and falls back
to a fetch of every branch and tag when the server will not serve an
unadvertised commit that way or the ref is an abbreviated id. It runs on a
dulwich client made by ``gittransport`` (which bounds it in time); the remote's
progress output becomes log lines through :class:`ProgressLines`.

Everything here blocks; the caller runs it in the reactor's thread pool.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from dulwich.client import GitClient
from dulwich.errors import GitProtocolError
from dulwich.objects import Commit, ShaFile, Tag
from dulwich.repo import Repo

if TYPE_CHECKING:
    from dulwich.objects import ObjectID

from imaginator.sources.giturls import GitFetchError

__all__ = [
    "Fetcher",
    "ProgressLines",
    "Target",
    "all_ref_wants",
    "default_branch",
    "resolve_ref",
]

LogFunc = Callable[[str], None]

_HEX_RE = re.compile(r"[0-9a-fA-F]+")
_FULL_ID_LENGTHS = (40, 64)  # SHA-1 and SHA-256 object ids
_MIN_ABBREV = 4  # git's minimum abbreviated object id length
_PEELED_SUFFIX = b"^{}"


def _printable(data: bytes) -> str:
    """Remote progress text, decoded, with control characters dropped."""
    text = data.decode("utf-8", "replace")
    return "".join(ch for ch in text if ch.isprintable() or ch == "\t").strip()


class ProgressLines:
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
class Target:
    """How the requested ref maps onto the remote's advertised refs."""

    want: bytes | None = None  # object id to ask the server for
    advertised: bool = False  # ``want`` is the value of an advertised ref
    abbreviated: bool = False  # ``ref`` may be an abbreviated commit id
    missing_head: bool = False  # default branch asked for, remote has no HEAD


def _is_hex(text: str, lengths: Iterable[int] | None = None) -> bool:
    if not _HEX_RE.fullmatch(text):
        return False
    return lengths is None or len(text) in lengths


def resolve_ref(ref: str, refs: Mapping[bytes, bytes]) -> Target:
    """Map ``ref`` onto the advertised ``refs`` (name → object id)."""
    if ref in ("", "HEAD"):
        head = refs.get(b"HEAD")
        if head is None:
            return Target(missing_head=True)
        return Target(want=head, advertised=True)
    name = ref.encode("utf-8")
    if name.startswith(b"refs/"):
        candidates = [name]
    else:
        candidates = [b"refs/heads/" + name, b"refs/tags/" + name]
    for candidate in candidates:
        if candidate in refs:
            return Target(want=refs[candidate], advertised=True)
    if _is_hex(ref, _FULL_ID_LENGTHS):
        want = ref.lower().encode("ascii")
        advertised = any(
            value == want for key, value in refs.items() if not key.endswith(_PEELED_SUFFIX)
        )
        return Target(want=want, advertised=advertised)
    if _is_hex(ref) and len(ref) >= _MIN_ABBREV:
        return Target(abbreviated=True)
    return Target()


def all_ref_wants(refs: Mapping[bytes, bytes]) -> list[bytes]:
    """Every advertised branch, tag and HEAD value (for a full fetch)."""
    wants = {
        value
        for key, value in refs.items()
        if (key == b"HEAD" or key.startswith((b"refs/heads/", b"refs/tags/")))
        and not key.endswith(_PEELED_SUFFIX)
    }
    return sorted(wants)


def default_branch(symrefs: Mapping[bytes, bytes], refs: Mapping[bytes, bytes]) -> str:
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


class Fetcher:
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
        self.target = Target()

    def _fetch(
        self, choose: Callable[[dict[bytes, bytes]], list[bytes]], depth: int | None
    ) -> None:
        def determine_wants(refs: Mapping[bytes, bytes], depth: int | None = None) -> list[bytes]:
            self.refs = {k: v for k, v in refs.items() if v is not None}
            return choose(self.refs)

        result = self.client.fetch(
            self.path,
            self.repo,
            # Recent dulwich types refs and ids as NewTypes of bytes (which
            # older releases lack); they are bytes at run time.
            determine_wants=determine_wants,  # type: ignore[arg-type]
            progress=self.progress,
            depth=depth,
        )
        self.symrefs = dict(getattr(result, "symrefs", None) or {})

    def _choose_target(self, refs: dict[bytes, bytes]) -> list[bytes]:
        self.target = resolve_ref(self.ref, refs)
        return [self.target.want] if self.target.want is not None else []

    def _has(self, object_id: bytes) -> bool:
        # dulwich names object ids by a NewType of bytes (ObjectID, which its
        # older releases lack): a hex id read from the refs is one.
        return cast("ObjectID", object_id) in self.repo.object_store

    def _full_fetch(self) -> None:
        self._fetch(all_ref_wants, None)

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
            branch = default_branch(self.symrefs, self.refs)
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
