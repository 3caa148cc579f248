"""The build log archive (reference §8.2): every finished build's log, kept on disk.

Each archived build is a directory ``<top>/<image name>/`` holding ``buildLog``
(the raw log) and ``buildInfo`` (JSON: duration, error, requestor), both mode
0644, in the layout the Go imaginator uses, so either daemon can read an
archive the other wrote. Failed builds are archived under a fresh
``<stream>/<datestamp>`` name (see ``archive_name``).

The archive keeps itself under a quota: when a new entry would not fit, the
oldest entries are deleted until the archive is down to 95 % of the quota.

``BuildLogArchive``'s ``load``, ``add`` and ``read_log`` touch the disk and
block: the daemon calls them in a thread pool. The queries only read the
in-memory index (under a lock held for no I/O), so pages may call them from
the reactor thread. Every method is thread-safe.
"""

from __future__ import annotations

import json
import os
import posixpath
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, Protocol

from twisted.logger import Logger

from imaginator.goformats.gojson import marshal
from imaginator.goformats.units import format_bytes, format_duration, seconds_to_ns


class BuildResult(Protocol):
    """What the archive reads of a finished build (``imaginator.scheduler.BuildResult``)."""

    @property
    def stream(self) -> str: ...
    @property
    def image_name(self) -> str: ...
    @property
    def error(self) -> str: ...
    @property
    def requestor(self) -> str: ...
    @property
    def started_at(self) -> float: ...
    @property
    def finished_at(self) -> float: ...
    @property
    def identical(self) -> bool: ...


#: The archive is enabled only with a quota above this (reference §8.2).
MIN_QUOTA = 1 << 20
BUILD_LOG = "buildLog"
BUILD_INFO = "buildInfo"
FILE_MODE = 0o644
DIR_MODE = 0o755
#: Prefix of the staging directories (and the block-size probe file). Entries
#: are written under such a name and renamed into place; ``load`` removes
#: leftovers and image names may not use it.
TEMP_PREFIX = ".imaginator-archive-tmp-"
#: The requestor name pages show for builds nobody asked for (``""``).
INTERNAL_REQUESTOR = "imaginator"

Kind = Literal["all", "good", "bad"]
KINDS: tuple[Kind, ...] = ("all", "good", "bad")

_log = Logger()


class ArchiveError(Exception):
    """An entry could not be archived (invalid or existing name, file-system error)."""


def archive_enabled(top: str, quota: int) -> bool:
    """Whether the archive is on: a ``buildLogDir`` is set and the quota exceeds 1 MiB."""
    return bool(top) and quota > MIN_QUOTA


def archive_name(result: BuildResult, datestamp: str) -> str:
    """The name to archive ``result`` under.

    A successful build is archived under its image name; a failed one (error
    set, or no image) and one identical to the latest image (whose name is
    archived already, under the build that made it) under
    ``<stream>/<datestamp>``, ``datestamp`` being a fresh ``image_datestamp``
    taken when the build finished.
    """
    if result.image_name and not result.error and not result.identical:
        return result.image_name
    return f"{result.stream}/{datestamp}"


def check_image_name(image_name: str) -> str:
    """Return ``image_name`` if it is safe to use as a path under the archive.

    Refused (``ArchiveError``): empty names, a leading ``/``, empty, ``.`` or
    ``..`` components (so also a trailing ``/`` and ``//``), NUL bytes and
    components starting with the archive's staging prefix.
    """
    if not image_name:
        raise ArchiveError("empty image name")
    if image_name.startswith("/"):
        raise ArchiveError(f"image name is absolute: {image_name!r}")
    if "\0" in image_name:
        raise ArchiveError(f"image name contains NUL: {image_name!r}")
    for part in image_name.split("/"):
        if part in ("", ".", ".."):
            raise ArchiveError(f"invalid image name: {image_name!r}")
        if part.startswith(TEMP_PREFIX):
            raise ArchiveError(f"reserved component in image name: {image_name!r}")
    return image_name


def stream_of(image_name: str) -> str:
    """The stream part of an image name (all before the last ``/``; ``.`` if none, as in Go)."""
    return posixpath.dirname(image_name) or "."


# ------------------------------------------------------------------ buildInfo


@dataclass(frozen=True)
class BuildInfo:
    """The ``buildInfo`` record of an archived build.

    ``duration_ns`` is integer nanoseconds; ``requestor`` is ``""`` for
    internal (automatic or recursive) builds.
    """

    duration_ns: int = 0
    error: str = ""
    requestor: str = ""

    @classmethod
    def from_result(cls, result: BuildResult) -> BuildInfo:
        """The record for a finished build."""
        return cls(
            duration_ns=max(0, seconds_to_ns(result.finished_at - result.started_at)),
            error=result.error,
            requestor=result.requestor,
        )

    def to_json(self) -> bytes:
        """The file contents, byte for byte as Go writes them.

        Fields in Go's order (``Duration``, ``Error``, ``RequestorUsername``),
        each omitted when zero; 4-space indent; a final LF; ``<``, ``>``,
        ``&``, U+2028 and U+2029 escaped as Go does.
        """
        fields: dict[str, Any] = {}
        if self.duration_ns:
            fields["Duration"] = self.duration_ns
        if self.error:
            fields["Error"] = self.error
        if self.requestor:
            fields["RequestorUsername"] = self.requestor
        return marshal(fields, indent="    ") + b"\n"

    @classmethod
    def from_json(cls, data: bytes) -> BuildInfo:
        """Parse a ``buildInfo`` file; missing fields are zero. ``ValueError`` if malformed."""
        fields = json.loads(data)
        if not isinstance(fields, dict):
            raise ValueError("buildInfo is not a JSON object")
        duration = fields.get("Duration", 0)
        error = fields.get("Error", "")
        requestor = fields.get("RequestorUsername", "")
        if isinstance(duration, bool) or not isinstance(duration, int):
            raise ValueError(f"bad Duration: {duration!r}")
        if not isinstance(error, str) or not isinstance(requestor, str):
            raise ValueError("bad Error or RequestorUsername")
        return cls(duration_ns=duration, error=error, requestor=requestor)


# -------------------------------------------------------------------- entries


@dataclass(frozen=True)
class ArchivedBuild:
    """One archived build, as the queries return it.

    ``duration`` is in seconds, ``requestor`` ``""`` for internal builds and
    ``archived_at`` the modification time of its ``buildLog`` (epoch seconds).
    """

    image_name: str
    stream: str
    duration: float
    error: str
    requestor: str
    archived_at: float

    @property
    def good(self) -> bool:
        """Whether the build succeeded (archived without an error)."""
        return not self.error


class BuildCounts(NamedTuple):
    """One summary row: a stream or requestor name and its build counts."""

    name: str
    total: int
    good: int
    bad: int


@dataclass(frozen=True)
class _Entry:
    build: ArchivedBuild
    cost: int  # bytes charged against the quota


def _kind_filter(kind: str) -> Callable[[ArchivedBuild], bool]:
    if kind == "all":
        return lambda _b: True
    if kind == "good":
        return lambda b: not b.error
    if kind == "bad":
        return lambda b: bool(b.error)
    raise ValueError(f"unknown build kind: {kind!r} (want one of {', '.join(KINDS)})")


def _counts(name: str, builds: Iterable[ArchivedBuild]) -> BuildCounts:
    total = good = 0
    for b in builds:
        total += 1
        good += not b.error
    return BuildCounts(name, total, good, total - good)


def _round_up(value: int, unit: int) -> int:
    return -(-value // unit) * unit


def _write_file(path: str, data: bytes) -> None:
    """Create ``path`` (which must not exist) holding ``data``, mode exactly 0644."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    with open(fd, "wb", closefd=True) as f:
        os.fchmod(fd, FILE_MODE)  # whatever the umask
        f.write(data)


class BuildLogArchive:
    """The build log archive under directory ``top``, kept within ``quota`` bytes.

    Call ``load`` once before use (it also creates ``top`` if needed). See
    the module docstring for threading.
    """

    def __init__(self, top: str, quota: int) -> None:
        self._top = os.path.abspath(top)
        self._quota = quota
        self._unit: int | None = None
        # Index; guarded by _lock, which is never held during I/O.
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}  # image name -> entry, oldest first
        self._streams: dict[str, set[str]] = {}  # stream -> image names
        self._total = 0
        # Serialises everything that changes the tree (load, add, trimming).
        self._write_lock = threading.Lock()

    # -- properties ------------------------------------------------------------

    @property
    def top(self) -> str:
        """The archive's directory (absolute)."""
        return self._top

    @property
    def quota(self) -> int:
        return self._quota

    @property
    def block_unit(self) -> int:
        """U: the space a 1-byte file takes in the archive (known after ``load``/``add``)."""
        return self._unit or 0

    @property
    def total_size(self) -> int:
        """Bytes charged against the quota by all entries."""
        with self._lock:
            return self._total

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def cost(self, log_size: int) -> int:
        """What an entry with a ``log_size``-byte log is charged: its log rounded up, plus U."""
        unit = self._ensure_unit()
        return _round_up(log_size, unit) + unit

    # -- loading ---------------------------------------------------------------

    def load(self) -> None:
        """Read the whole tree into the index (replacing it) and measure U.

        Any directory holding a regular file ``buildLog`` is an entry; its
        path relative to ``top`` is the image name and its ``buildLog`` mtime
        its age. ``buildInfo`` is optional (a missing or unreadable one counts
        as a successful build of unknown duration and requestor).
        """
        with self._write_lock:
            started = time.monotonic()
            os.makedirs(self._top, mode=DIR_MODE, exist_ok=True)
            self._unit = self._measure_unit()
            found = self._scan()
            loaded = time.monotonic()
            found.sort(key=lambda e: (e.build.archived_at, e.build.image_name))
            entries = {e.build.image_name: e for e in found}
            streams: dict[str, set[str]] = {}
            for e in found:
                streams.setdefault(e.build.stream, set()).add(e.build.image_name)
            total = sum(e.cost for e in found)
            with self._lock:
                self._entries = entries
                self._streams = streams
                self._total = total
            sorted_at = time.monotonic()
        _log.info(
            "Loaded build log archive {size} in {load_time}, sorted in {sort_time}",
            size=format_bytes(total),
            load_time=format_duration(loaded - started),
            sort_time=format_duration(sorted_at - loaded),
        )

    def _measure_unit(self) -> int:
        fd, path = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=self._top)
        try:
            os.write(fd, b"\n")
            os.fsync(fd)
            blocks = os.fstat(fd).st_blocks
        finally:
            os.close(fd)
            os.unlink(path)
        return max(1, blocks) * 512

    def _ensure_unit(self) -> int:
        if self._unit is None:
            os.makedirs(self._top, mode=DIR_MODE, exist_ok=True)
            self._unit = self._measure_unit()
        return self._unit

    def _scan(self) -> list[_Entry]:
        unit = self._unit or 512
        found: list[_Entry] = []

        def walk_error(err: OSError) -> None:
            _log.warn("Error reading build log archive: {error}", error=err)

        for dirpath, dirnames, filenames in os.walk(self._top, onerror=walk_error):
            for name in [d for d in dirnames if d.startswith(TEMP_PREFIX)]:
                dirnames.remove(name)  # an add interrupted by a crash
                shutil.rmtree(os.path.join(dirpath, name), ignore_errors=True)
            dirnames.sort()
            if dirpath == self._top or BUILD_LOG not in filenames:
                continue
            log_path = os.path.join(dirpath, BUILD_LOG)
            try:
                st = os.lstat(log_path)
            except OSError as err:
                walk_error(err)
                continue
            if not stat.S_ISREG(st.st_mode):
                continue
            image_name = os.path.relpath(dirpath, self._top).replace(os.sep, "/")
            info = self._read_info(os.path.join(dirpath, BUILD_INFO))
            found.append(self._make_entry(image_name, info, st.st_size, st.st_mtime, unit))
        return found

    @staticmethod
    def _read_info(path: str) -> BuildInfo:
        try:
            with open(path, "rb") as f:
                return BuildInfo.from_json(f.read())
        except FileNotFoundError:
            return BuildInfo()
        except (OSError, ValueError) as err:
            _log.warn("Ignoring bad build info {path}: {error}", path=path, error=err)
            return BuildInfo()

    @staticmethod
    def _make_entry(
        image_name: str, info: BuildInfo, log_size: int, mtime: float, unit: int
    ) -> _Entry:
        build = ArchivedBuild(
            image_name=image_name,
            stream=stream_of(image_name),
            duration=info.duration_ns / 1e9,
            error=info.error,
            requestor=info.requestor,
            archived_at=mtime,
        )
        return _Entry(build, _round_up(log_size, unit) + unit)

    # -- adding ------------------------------------------------------------------

    def add(self, image_name: str, info: BuildInfo, log: bytes) -> None:
        """Archive one build as ``<top>/<image_name>/{buildInfo,buildLog}``.

        The entry is written in a staging directory and renamed into place,
        so readers (and a restart) never see half an entry. If it does not
        fit in the quota, the oldest entries are deleted first (§8.2).
        Raises ``ArchiveError`` for an invalid name, an existing entry or a
        file-system error.
        """
        check_image_name(image_name)
        with self._write_lock:
            try:
                unit = self._ensure_unit()
            except OSError as err:
                raise ArchiveError(f"error measuring archive block size: {err}") from err
            with self._lock:
                if image_name in self._entries:
                    raise ArchiveError(f"build log already archived: {image_name}")
                parts = image_name.split("/")
                for n in range(1, len(parts)):
                    if "/".join(parts[:n]) in self._entries:
                        raise ArchiveError(f"image name inside an archived entry: {image_name}")
            final = os.path.join(self._top, *image_name.split("/"))
            mtime = self._write_entry(image_name, final, info, log)
            entry = self._make_entry(image_name, info, len(log), mtime, unit)
            with self._lock:
                victims = self._make_room(entry.cost)
                self._insert(entry)
            if victims is not None:
                self._delete(victims)
                _log.info(
                    "Deleted {count} archived build logs consuming {size}",
                    count=len(victims),
                    size=format_bytes(sum(v.cost for v in victims)),
                )

    def _write_entry(self, image_name: str, final: str, info: BuildInfo, log: bytes) -> float:
        """Write the entry's files into ``final`` atomically; return the log's mtime."""
        try:
            os.makedirs(os.path.dirname(final), mode=DIR_MODE, exist_ok=True)
            if os.path.lexists(final):
                raise ArchiveError(f"build log archive entry exists: {image_name}")
            staging = tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=os.path.dirname(final))
        except OSError as err:
            raise ArchiveError(f"error archiving {image_name}: {err}") from err
        try:
            os.chmod(staging, DIR_MODE)
            _write_file(os.path.join(staging, BUILD_INFO), info.to_json())
            _write_file(os.path.join(staging, BUILD_LOG), log)
            mtime = os.stat(os.path.join(staging, BUILD_LOG)).st_mtime
            os.rename(staging, final)
        except OSError as err:
            shutil.rmtree(staging, ignore_errors=True)
            raise ArchiveError(f"error archiving {image_name}: {err}") from err
        return mtime

    def _make_room(self, cost: int) -> list[_Entry] | None:
        """Drop the oldest entries from the index so ``cost`` more bytes fit (lock held).

        ``None`` if it fits already; else the entries dropped (maybe none),
        whose directories the caller deletes.
        """
        if cost + self._total < self._quota:
            return None
        target = self._quota * 95 // 100
        if cost + target > self._quota:
            target = max(0, target - cost)
        victims: list[_Entry] = []
        while self._total > target and self._entries:
            oldest = next(iter(self._entries))
            victims.append(self._remove(oldest))
        return victims

    def _insert(self, entry: _Entry) -> None:
        name = entry.build.image_name
        self._entries[name] = entry
        self._streams.setdefault(entry.build.stream, set()).add(name)
        self._total += entry.cost

    def _remove(self, image_name: str) -> _Entry:
        entry = self._entries.pop(image_name)
        names = self._streams[entry.build.stream]
        names.discard(image_name)
        if not names:
            del self._streams[entry.build.stream]
        self._total -= entry.cost
        return entry

    def _delete(self, victims: list[_Entry]) -> None:
        """Remove the victims' directories, and parents left empty (write lock held)."""
        for victim in victims:
            path = os.path.join(self._top, *victim.build.image_name.split("/"))
            try:
                shutil.rmtree(path)
            except FileNotFoundError:
                pass
            except OSError as err:
                _log.warn(
                    "Error deleting archived build log {name}: {error}",
                    name=victim.build.image_name,
                    error=err,
                )
                continue
            parent = os.path.dirname(path)
            while parent != self._top and parent.startswith(self._top + os.sep):
                try:
                    os.rmdir(parent)
                except OSError:
                    break  # not empty (or gone): stop
                parent = os.path.dirname(parent)

    # -- queries ----------------------------------------------------------------

    def builds(self, kind: Kind = "all") -> list[ArchivedBuild]:
        """All (``"all"``), successful (``"good"``) or failed (``"bad"``) builds, oldest first."""
        keep = _kind_filter(kind)
        with self._lock:
            return [e.build for e in self._entries.values() if keep(e.build)]

    def stream_builds(self, stream: str, kind: Kind = "all") -> list[ArchivedBuild] | None:
        """The builds of one stream, sorted by image name; ``None`` if it has none archived."""
        keep = _kind_filter(kind)
        with self._lock:
            names = self._streams.get(stream)
            if names is None:
                return None
            builds = [self._entries[n].build for n in names]
        return sorted((b for b in builds if keep(b)), key=lambda b: b.image_name)

    def requestor_builds(self, username: str, kind: Kind = "all") -> list[ArchivedBuild]:
        """The builds ``username`` asked for (``""``: internal builds), sorted by image name."""
        keep = _kind_filter(kind)
        with self._lock:
            builds = [
                e.build
                for e in self._entries.values()
                if e.build.requestor == username and keep(e.build)
            ]
        return sorted(builds, key=lambda b: b.image_name)

    def summary_by_stream(self) -> list[BuildCounts]:
        """``(stream, total, good, bad)`` per stream, sorted by stream name."""
        with self._lock:
            per_stream = {
                stream: [self._entries[n].build for n in names]
                for stream, names in self._streams.items()
            }
        return [_counts(s, per_stream[s]) for s in sorted(per_stream)]

    def summary_by_requestor(self) -> list[BuildCounts]:
        """``(requestor, total, good, bad)`` per requestor (``""``: internal), most builds first."""
        with self._lock:
            builds = [e.build for e in self._entries.values()]
        per_user: dict[str, list[ArchivedBuild]] = {}
        for b in builds:
            per_user.setdefault(b.requestor, []).append(b)
        rows = [_counts(user, user_builds) for user, user_builds in per_user.items()]
        return sorted(rows, key=lambda r: (-r.total, r.name))

    def read_log(self, image_name: str) -> bytes | None:
        """The archived log of ``image_name`` (blocking), or ``None`` if there is none."""
        try:
            check_image_name(image_name)
        except ArchiveError:
            return None
        path = os.path.join(self._top, *image_name.split("/"), BUILD_LOG)
        try:
            with open(path, "rb") as f:
                return f.read()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
