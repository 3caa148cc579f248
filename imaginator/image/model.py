"""The Dominator image data model and its exact Go JSON representation.

An ``Image`` is what a build produces: a file-system tree (``FileSystem`` with
an inode table), the filter and triggers dominator uses when pushing it, the
installed packages and some bookkeeping. Objects (file contents, build logs)
are referenced by their SHA-512 digest and stored separately.

``image_to_json`` produces the same keys, in the same order and with the same
``null``/empty conventions as Go's ``encoding/json`` does for
``lib/image.Image``; ``dumps_image`` also reproduces Go's string escaping, so a
record read from a Go imageserver re-serialises to identical bytes.
``image_from_json`` validates as it converts and raises ``ImageFormatError``
naming the offending key path.
"""

from __future__ import annotations

import datetime
import json
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from imaginator.goformats.gojson import marshal_text
from imaginator.image.triggers import Trigger, TriggersError, triggers_from_json, triggers_to_json

HASH_SIZE = 64
ZERO_HASH = bytes(HASH_SIZE)
GO_ZERO_TIME = "0001-01-01T00:00:00Z"

_MAX_UINT32 = 2**32 - 1
_MAX_UINT64 = 2**64 - 1
_MIN_INT32, _MAX_INT32 = -(2**31), 2**31 - 1
_MIN_INT64, _MAX_INT64 = -(2**63), 2**63 - 1
_NS_PER_SECOND = 10**9
_HEX_HASH = re.compile(r"[0-9a-f]{128}")
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(Z|([+-])(\d{2}):(\d{2}))"
)
_EPOCH_ORDINAL = datetime.date(1970, 1, 1).toordinal()


class ImageFormatError(ValueError):
    """An image record (JSON) does not have the shape of a Go ``image.Image``."""


# --------------------------------------------------------------------------- inodes


@dataclass(slots=True)
class RegularInode:
    """A regular file with content: ``hash`` is the SHA-512 of the data
    (all zeroes for an empty file, which has no object)."""

    mode: int
    uid: int
    gid: int
    mtime_seconds: int
    mtime_nanoseconds: int
    size: int
    hash: bytes = ZERO_HASH


@dataclass(slots=True)
class ComputedRegularInode:
    """A regular file whose content is generated per machine by ``source``
    (a filegen server address)."""

    mode: int
    uid: int
    gid: int
    source: str


@dataclass(slots=True)
class SymlinkInode:
    """A symbolic link; it has neither mode nor mtime in the model."""

    uid: int
    gid: int
    symlink: str


@dataclass(slots=True)
class SpecialInode:
    """A character or block device or a FIFO; ``rdev`` is the raw ``st_rdev``."""

    mode: int
    uid: int
    gid: int
    mtime_seconds: int
    mtime_nanoseconds: int
    rdev: int


@dataclass(slots=True)
class DirectoryInode:
    """A directory: its entries are ``(name, inode number)`` pairs, normally
    sorted bytewise by name."""

    entries: list[tuple[str, int]] = field(default_factory=list)
    mode: int = stat.S_IFDIR | 0o755
    uid: int = 0
    gid: int = 0


Inode = RegularInode | ComputedRegularInode | SymlinkInode | SpecialInode | DirectoryInode


@dataclass(slots=True)
class FileSystem:
    """A file-system tree: the root directory plus every other inode by number.

    The root is not in ``inode_table``; several entries naming the same inode
    number are hard links. The three totals are what Go stores; use
    ``recompute_totals`` after changing the tree.
    """

    inode_table: dict[int, Inode]
    root: DirectoryInode
    num_regular_inodes: int = 0
    total_data_bytes: int = 0
    directory_count: int = 1

    def walk(self) -> Iterator[tuple[str, int, Inode]]:
        """Yield ``(path, inode number, inode)`` for every entry, depth first.

        Paths are absolute (``/etc/passwd``); the root itself is not yielded.
        A directory is yielded before its contents. Hard-linked inodes are
        yielded once per path.
        """
        stack: list[tuple[str, Iterator[tuple[str, int]]]] = [("", iter(self.root.entries))]
        while stack:
            prefix, entries = stack[-1]
            entry = next(entries, None)
            if entry is None:
                stack.pop()
                continue
            name, inum = entry
            inode = self.inode_table[inum]
            path = f"{prefix}/{name}"
            yield path, inum, inode
            if isinstance(inode, DirectoryInode):
                stack.append((path, iter(inode.entries)))

    def paths_by_inode(self) -> dict[int, list[str]]:
        """Map each reachable inode number to its paths, in walk order."""
        result: dict[int, list[str]] = {}
        for path, inum, _ in self.walk():
            result.setdefault(inum, []).append(path)
        return result

    def recompute_totals(self) -> None:
        """Recompute the regular-inode count, data bytes and directory count
        the way Go does (computed inodes are not regular inodes)."""
        regular = [i for i in self.inode_table.values() if isinstance(i, RegularInode)]
        self.num_regular_inodes = len(regular)
        self.total_data_bytes = sum(i.size for i in regular)
        dirs = sum(1 for i in self.inode_table.values() if isinstance(i, DirectoryInode))
        self.directory_count = dirs + 1

    def object_hashes(self) -> set[bytes]:
        """The object ids of every regular inode with data."""
        return {
            i.hash for i in self.inode_table.values() if isinstance(i, RegularInode) and i.size > 0
        }


# --------------------------------------------------------------------------- image


@dataclass(frozen=True, slots=True)
class Package:
    """An installed package; ``size`` is in bytes."""

    name: str
    size: int
    version: str


@dataclass(frozen=True, slots=True)
class Annotation:
    """Either an object (SHA-512 digest) or a URL."""

    object: bytes | None = None
    url: str = ""


@dataclass(kw_only=True, slots=True)
class Image:
    """An ``image.Image``. Times are integer nanoseconds since the Unix epoch,
    where 0 stands for Go's zero time (unset / never expires)."""

    build_branch: str = ""
    build_commit_id: str = ""
    build_git_url: str = ""
    created_by: str = ""
    created_for: str = ""
    filter: tuple[str, ...] | None = None
    file_system: FileSystem | None = None
    triggers: tuple[Trigger, ...] | None = None
    release_notes: Annotation | None = None
    build_log: Annotation | None = None
    created_on: int = 0
    expires_at: int = 0
    owner_groups: tuple[str, ...] | None = None
    owner_users: tuple[str, ...] | None = None
    packages: tuple[Package, ...] | None = None
    source_image: str = ""
    tags: dict[str, str] | None = None

    def object_hashes(self) -> set[bytes]:
        """Every object the image references: file data and annotation objects."""
        hashes = self.file_system.object_hashes() if self.file_system else set()
        for annotation in (self.release_notes, self.build_log):
            if annotation is not None and annotation.object is not None:
                hashes.add(annotation.object)
        return hashes


# --------------------------------------------------------------------------- times


def format_go_time(ns: int) -> str:
    """Format nanoseconds since the epoch as Go's RFC 3339 (UTC, trailing
    fractional zeros trimmed); 0 is Go's zero time."""
    if ns == 0:
        return GO_ZERO_TIME
    seconds, fraction = divmod(ns, _NS_PER_SECOND)
    days, rest = divmod(seconds, 86400)
    ordinal = _EPOCH_ORDINAL + days
    if not 1 <= ordinal <= datetime.date.max.toordinal():
        raise ValueError(f"time out of range: {ns} ns")
    date = datetime.date.fromordinal(ordinal)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{date.isoformat()}T{hours:02d}:{minutes:02d}:{secs:02d}"
    if fraction:
        text += "." + f"{fraction:09d}".rstrip("0")
    return text + "Z"


def parse_go_time(text: str) -> int:
    """Parse an RFC 3339 time (as Go emits it) into nanoseconds since the
    epoch; Go's zero time gives 0. Raises ``ValueError``."""
    match = _RFC3339.fullmatch(text)
    if match is None:
        raise ValueError(f"not an RFC 3339 time: {text!r}")
    year, month, day, hour, minute, second = (int(g) for g in match.groups()[:6])
    if hour > 23 or minute > 59 or second > 59:
        raise ValueError(f"time out of range: {text!r}")
    ordinal = datetime.date(year, month, day).toordinal()
    seconds = (ordinal - _EPOCH_ORDINAL) * 86400 + hour * 3600 + minute * 60 + second
    if match.group(8) != "Z":
        offset_h, offset_m = int(match.group(10)), int(match.group(11))
        if offset_h > 23 or offset_m > 59:
            raise ValueError(f"bad time zone offset: {text!r}")
        offset = offset_h * 3600 + offset_m * 60
        seconds -= offset if match.group(9) == "+" else -offset
    fraction = int((match.group(7) or "").ljust(9, "0"))
    ns = seconds * _NS_PER_SECOND + fraction
    return 0 if ns == _go_zero_ns() else ns


def _go_zero_ns() -> int:
    return (datetime.date(1, 1, 1).toordinal() - _EPOCH_ORDINAL) * 86400 * _NS_PER_SECOND


# --------------------------------------------------------------------------- to JSON


def image_to_json(image: Image) -> dict[str, Any]:
    """Convert ``image`` to the JSON value Go emits (keys in Go order)."""
    return {
        "BuildBranch": image.build_branch,
        "BuildCommitId": image.build_commit_id,
        "BuildGitUrl": image.build_git_url,
        "CreatedBy": image.created_by,
        "CreatedFor": image.created_for,
        "Filter": None if image.filter is None else {"FilterLines": _list_or_null(image.filter)},
        "FileSystem": None if image.file_system is None else _fs_to_json(image.file_system),
        "Triggers": triggers_to_json(image.triggers),
        "ReleaseNotes": _annotation_to_json(image.release_notes),
        "BuildLog": _annotation_to_json(image.build_log),
        "CreatedOn": format_go_time(image.created_on),
        "ExpiresAt": format_go_time(image.expires_at),
        "OwnerGroups": _list_or_null(image.owner_groups),
        "OwnerUsers": _list_or_null(image.owner_users),
        "Packages": _packages_to_json(image.packages),
        "SourceImage": image.source_image,
        "Tags": None if image.tags is None else {k: image.tags[k] for k in sorted(image.tags)},
    }


def dumps_image(image: Image, indent: int | None = None) -> str:
    """Serialise ``image`` exactly as Go's ``json.Marshal`` (``indent=None``)
    or ``json.MarshalIndent`` with ``indent`` spaces would, except that names
    that are not UTF-8 stay lone surrogates: encode the text with
    ``surrogateescape`` to keep them byte-exact."""
    spaces = None if indent is None else " " * indent
    return marshal_text(image_to_json(image), indent=spaces)


def _list_or_null(values: tuple[str, ...] | None) -> list[str] | None:
    # Go emits nil slices as null; an empty tuple stands for a nil slice too,
    # because that is what Go produces after a GOB round trip.
    return list(values) if values else None


def _fs_to_json(fs: FileSystem) -> dict[str, Any]:
    # Go sorts map keys by their string form, so "10" comes before "9".
    table = {str(inum): fs.inode_table[inum] for inum in fs.inode_table}
    return {
        "InodeTable": {key: _inode_to_json(table[key]) for key in sorted(table)},
        "NumRegularInodes": fs.num_regular_inodes,
        "TotalDataBytes": fs.total_data_bytes,
        "DirectoryCount": fs.directory_count,
        **_directory_to_json(fs.root),
    }


def _directory_to_json(inode: DirectoryInode) -> dict[str, Any]:
    entries = [{"Name": name, "InodeNumber": inum} for name, inum in inode.entries]
    return {
        "EntryList": entries or None,
        "EntriesByName": None,
        "Mode": inode.mode,
        "Uid": inode.uid,
        "Gid": inode.gid,
    }


def _inode_to_json(inode: Inode) -> dict[str, Any]:
    match inode:
        case DirectoryInode():
            return _directory_to_json(inode)
        case RegularInode():
            return {
                "Mode": inode.mode,
                "Uid": inode.uid,
                "Gid": inode.gid,
                "MtimeNanoSeconds": inode.mtime_nanoseconds,
                "MtimeSeconds": inode.mtime_seconds,
                "Size": inode.size,
                "Hash": inode.hash.hex(),
            }
        case ComputedRegularInode():
            return {"Mode": inode.mode, "Uid": inode.uid, "Gid": inode.gid, "Source": inode.source}
        case SymlinkInode():
            return {"Uid": inode.uid, "Gid": inode.gid, "Symlink": inode.symlink}
        case SpecialInode():
            return {
                "Mode": inode.mode,
                "Uid": inode.uid,
                "Gid": inode.gid,
                "MtimeNanoSeconds": inode.mtime_nanoseconds,
                "MtimeSeconds": inode.mtime_seconds,
                "Rdev": inode.rdev,
            }
    raise TypeError(f"not an inode: {inode!r}")


def _annotation_to_json(annotation: Annotation | None) -> dict[str, Any] | None:
    if annotation is None:
        return None
    obj = None if annotation.object is None else annotation.object.hex()
    return {"Object": obj, "URL": annotation.url}


def _packages_to_json(packages: tuple[Package, ...] | None) -> list[dict[str, Any]] | None:
    if packages is None:
        return None
    return [{"Name": p.name, "Size": p.size, "Version": p.version} for p in packages]


# --------------------------------------------------------------------------- from JSON


def loads_image(text: str | bytes) -> Image:
    """Parse a JSON image record (``image.Image``)."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ImageFormatError(f"image: invalid JSON: {exc}") from exc
    return image_from_json(value)


def image_from_json(obj: Any) -> Image:
    """Convert a decoded JSON value to an ``Image``, validating every field.

    Missing keys take Go's zero values (as Go's decoder does); keys of the
    wrong type raise ``ImageFormatError``.
    """
    r = _Reader(obj, "image")
    fs_value = r.get("FileSystem")
    image = Image(
        build_branch=r.string("BuildBranch"),
        build_commit_id=r.string("BuildCommitId"),
        build_git_url=r.string("BuildGitUrl"),
        created_by=r.string("CreatedBy"),
        created_for=r.string("CreatedFor"),
        filter=_filter_from_json(r.child("Filter")),
        file_system=None if fs_value is None else _fs_from_json(r.child("FileSystem")),
        triggers=_triggers_from_json(r),
        release_notes=_annotation_from_json(r.child("ReleaseNotes")),
        build_log=_annotation_from_json(r.child("BuildLog")),
        created_on=r.time("CreatedOn"),
        expires_at=r.time("ExpiresAt"),
        owner_groups=r.string_list("OwnerGroups"),
        owner_users=r.string_list("OwnerUsers"),
        packages=_packages_from_json(r),
        source_image=r.string("SourceImage"),
        tags=_tags_from_json(r),
    )
    return image


class _Reader:
    """Typed access to one JSON object, with errors naming the key path."""

    def __init__(self, value: Any, where: str) -> None:
        if not isinstance(value, dict):
            raise ImageFormatError(f"{where}: expected object, got {_kind(value)}")
        self.value: dict[str, Any] = value
        self.where = where

    def get(self, key: str) -> Any:
        return self.value.get(key)

    def path(self, key: str) -> str:
        return f"{self.where}.{key}"

    def child(self, key: str) -> _Reader | None:
        value = self.value.get(key)
        return None if value is None else _Reader(value, self.path(key))

    def fail(self, key: str, expected: str) -> ImageFormatError:
        got = _kind(self.value.get(key))
        return ImageFormatError(f"{self.path(key)}: expected {expected}, got {got}")

    def string(self, key: str) -> str:
        value = self.value.get(key, "")
        if value is None:
            return ""
        if not isinstance(value, str):
            raise self.fail(key, "string")
        return value

    def integer(self, key: str, low: int, high: int) -> int:
        value = self.value.get(key, 0)
        if value is None:
            return 0
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.fail(key, "integer")
        if not low <= value <= high:
            raise ImageFormatError(f"{self.path(key)}: {value} out of range")
        return value

    def uint32(self, key: str) -> int:
        return self.integer(key, 0, _MAX_UINT32)

    def uint64(self, key: str) -> int:
        return self.integer(key, 0, _MAX_UINT64)

    def time(self, key: str) -> int:
        value = self.value.get(key, GO_ZERO_TIME)
        if not isinstance(value, str):
            raise self.fail(key, "RFC 3339 time string")
        try:
            return parse_go_time(value)
        except ValueError as exc:
            raise ImageFormatError(f"{self.path(key)}: {exc}") from None

    def hash(self, key: str) -> bytes:
        value = self.value.get(key)
        if not isinstance(value, str) or not _HEX_HASH.fullmatch(value):
            raise ImageFormatError(f"{self.path(key)}: expected 128 lowercase hex digits")
        return bytes.fromhex(value)

    def array(self, key: str) -> list[Any] | None:
        value = self.value.get(key)
        if value is not None and not isinstance(value, list):
            raise self.fail(key, "array")
        return value

    def string_list(self, key: str) -> tuple[str, ...] | None:
        values = self.array(key)
        if values is None:
            return None
        for index, item in enumerate(values):
            if not isinstance(item, str):
                raise ImageFormatError(f"{self.path(key)}[{index}]: expected string")
        return tuple(values)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "string",
        list: "array",
        dict: "object",
    }.get(type(value), type(value).__name__)


def _filter_from_json(r: _Reader | None) -> tuple[str, ...] | None:
    if r is None:
        return None
    return r.string_list("FilterLines") or ()


def _annotation_from_json(r: _Reader | None) -> Annotation | None:
    if r is None:
        return None
    obj = None if r.get("Object") is None else r.hash("Object")
    return Annotation(object=obj, url=r.string("URL"))


def _packages_from_json(r: _Reader) -> tuple[Package, ...] | None:
    values = r.array("Packages")
    if values is None:
        return None
    packages = []
    for index, value in enumerate(values):
        p = _Reader(value, f"{r.path('Packages')}[{index}]")
        packages.append(Package(p.string("Name"), p.uint64("Size"), p.string("Version")))
    return tuple(packages)


def _tags_from_json(r: _Reader) -> dict[str, str] | None:
    value = r.get("Tags")
    if value is None:
        return None
    tags = _Reader(value, r.path("Tags"))
    return {key: tags.string(key) for key in tags.value}


def _triggers_from_json(r: _Reader) -> tuple[Trigger, ...] | None:
    try:
        return triggers_from_json(r.get("Triggers"))
    except TriggersError as exc:
        raise ImageFormatError(f"{r.where}.{exc}") from None


def _fs_from_json(r: _Reader | None) -> FileSystem:
    assert r is not None
    table_reader = r.child("InodeTable")
    table: dict[int, Inode] = {}
    if table_reader is not None:
        for key, value in table_reader.value.items():
            if not key.isdigit() or not key.isascii() or int(key) > _MAX_UINT64:
                raise ImageFormatError(f"{table_reader.where}: bad inode number {key!r}")
            table[int(key)] = _inode_from_json(_Reader(value, f"{table_reader.where}.{key}"))
    fs = FileSystem(
        inode_table=table,
        root=_directory_from_json(r),
        num_regular_inodes=r.uint64("NumRegularInodes"),
        total_data_bytes=r.uint64("TotalDataBytes"),
        directory_count=r.uint64("DirectoryCount"),
    )
    _check_tree(fs, r.where)
    return fs


def _inode_from_json(r: _Reader) -> Inode:
    keys = r.value.keys()
    if "EntryList" in keys:
        return _directory_from_json(r)
    if "Symlink" in keys:
        return SymlinkInode(r.uint32("Uid"), r.uint32("Gid"), r.string("Symlink"))
    if "Source" in keys:
        return ComputedRegularInode(
            r.uint32("Mode"), r.uint32("Uid"), r.uint32("Gid"), r.string("Source")
        )
    mtime = (
        r.integer("MtimeSeconds", _MIN_INT64, _MAX_INT64),
        r.integer("MtimeNanoSeconds", _MIN_INT32, _MAX_INT32),
    )
    if "Rdev" in keys:
        return SpecialInode(
            r.uint32("Mode"), r.uint32("Uid"), r.uint32("Gid"), *mtime, r.uint64("Rdev")
        )
    if "Hash" in keys or "Size" in keys:
        return RegularInode(
            r.uint32("Mode"),
            r.uint32("Uid"),
            r.uint32("Gid"),
            *mtime,
            r.uint64("Size"),
            r.hash("Hash"),
        )
    raise ImageFormatError(f"{r.where}: cannot tell the inode type from keys {sorted(keys)}")


def _directory_from_json(r: _Reader) -> DirectoryInode:
    entries = []
    for index, value in enumerate(r.array("EntryList") or []):
        e = _Reader(value, f"{r.path('EntryList')}[{index}]")
        entries.append((e.string("Name"), e.uint64("InodeNumber")))
    return DirectoryInode(entries, r.uint32("Mode"), r.uint32("Uid"), r.uint32("Gid"))


def _check_tree(fs: FileSystem, where: str) -> None:
    """Every entry must name a known inode and every directory must have
    exactly one parent (so walking the tree always terminates)."""
    parents: dict[int, int] = {}
    directories: list[tuple[str, DirectoryInode]] = [("root", fs.root)]
    directories += [(str(n), i) for n, i in fs.inode_table.items() if isinstance(i, DirectoryInode)]
    for label, directory in directories:
        for name, inum in directory.entries:
            inode = fs.inode_table.get(inum)
            if inode is None:
                raise ImageFormatError(
                    f"{where}: entry {name!r} of directory {label} names unknown inode {inum}"
                )
            if isinstance(inode, DirectoryInode):
                parents[inum] = parents.get(inum, 0) + 1
                if parents[inum] > 1:
                    raise ImageFormatError(f"{where}: directory inode {inum} is hard-linked")
