"""Deterministic tar streams of an image's file-system: whole, or as the diff
layer of a derived image against its source image.

The same image and options always give the same bytes:

- POSIX.1-2001 (pax) format; a pax record is written only where ustar cannot
  hold the value (long or non-ASCII names, nanosecond mtimes, large ids), and
  the pax header blocks themselves carry no time or name of ours.
- Entries depth first, parents before children, the names of a directory
  sorted bytewise (UTF-8, undecodable bytes kept); in a diff layer the
  whiteouts of a directory come before its other entries.
- Relative names without ``./``; numeric uid and gid, empty user and group
  names; permission bits including setuid, setgid and sticky.
- mtimes: files and device nodes keep the image's (nanoseconds in a pax
  record); directories, symbolic links and whiteouts, which have no mtime in
  the image, get the image's ``CreatedOn`` second. With a clamp
  (``SOURCE_DATE_EPOCH``) every later mtime becomes the clamp.
- Hard links: the first path of an inode carries the content, the others are
  tar hard links to it. Device nodes are tar devices, FIFOs tar FIFOs.
- Computed files (``ComputedRegularInode``) have no content in the image:
  left out of OCI layers, empty regular files in ``imagetool tar``.
- Layers are gzip (level 6, no name, mtime 0), so a layer depends only on
  the image (and this machine's zlib).

Everything streams: object contents are copied in 1 MiB pieces, the tar goes
through the compressor to a file, and both digests are taken on the way.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import stat
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from imaginator.export.source import ExportError, ImageReader
from imaginator.image.model import (
    ComputedRegularInode,
    DirectoryInode,
    FileSystem,
    Image,
    Inode,
    RegularInode,
    SpecialInode,
    SymlinkInode,
)
from imaginator.image.unpack import UnpackError, list_entries

WHITEOUT_PREFIX = ".wh."
GZIP_LEVEL = 6
_COPY_BUFFER = 1 << 20
_NS = 10**9


@dataclass(frozen=True, slots=True)
class Member:
    """One tar entry. ``path`` is relative (no leading ``/``); ``inode`` is
    ``None`` for the whiteout of ``path``; ``link_to`` names the earlier path
    this entry is a hard link to."""

    path: str
    inode: Inode | None
    link_to: str = ""


@dataclass(frozen=True, slots=True)
class TimePolicy:
    """The mtimes written: ``default`` (seconds) for entries without an mtime
    in the image, and the optional ``clamp`` no mtime may exceed."""

    default: int
    clamp: int | None = None

    @classmethod
    def for_image(cls, image: Image, source_date_epoch: int | None = None) -> TimePolicy:
        """The image's ``CreatedOn`` second as default, clamped to
        ``source_date_epoch`` when given."""
        created = image.created_on // _NS if image.created_on > 0 else 0
        if source_date_epoch is not None:
            created = min(created, source_date_epoch)
        return cls(created, source_date_epoch)

    def mtime(self, seconds: int, nanoseconds: int) -> tuple[int, int]:
        if self.clamp is not None and (seconds, nanoseconds) > (self.clamp, 0):
            return self.clamp, 0
        return seconds, nanoseconds


@dataclass(frozen=True, slots=True)
class LayerFile:
    """A layer written to a file: its digest and size, and the digest of the
    uncompressed tar (the OCI ``diff_id``)."""

    digest: str
    size: int
    diff_id: str


# ---------------------------------------------------------------------- members


def _sort_key(path: str, whiteout: bool = False) -> tuple[tuple[int, bytes], ...]:
    parts = path.split("/")
    key = [(1, part.encode("utf-8", "surrogateescape")) for part in parts]
    if whiteout:
        key[-1] = (0, key[-1][1])
    return tuple(key)


def sorted_entries(fs: FileSystem) -> list[tuple[str, int, Inode]]:
    """``(relative path, inode number, inode)`` of every entry in tar order,
    after checking the tree (``ExportError`` for hostile names)."""
    try:
        entries = list_entries(fs)
    except UnpackError as exc:
        raise ExportError(str(exc)) from None
    entries.sort(key=lambda e: _sort_key(e.relative))
    return [(e.relative, e.inum, e.inode) for e in entries]


def full_members(fs: FileSystem, *, computed_as_empty: bool = False) -> Iterator[Member]:
    """Every entry of the tree; computed files left out unless
    ``computed_as_empty``."""
    first: dict[int, str] = {}
    for path, inum, inode in sorted_entries(fs):
        if isinstance(inode, ComputedRegularInode) and not computed_as_empty:
            continue
        if not isinstance(inode, DirectoryInode):
            if inum in first:
                yield Member(path, inode, first[inum])
                continue
            first[inum] = path
        yield Member(path, inode)


def layer_members(fs: FileSystem) -> list[Member]:
    """The members of a full OCI layer (``ExportError`` for a name that would
    read as a whiteout)."""
    members = list(full_members(fs))
    for member in members:
        _check_layer_name(member.path)
    return members


def diff_members(old: FileSystem, new: FileSystem) -> list[Member]:
    """The OCI layer that turns ``old`` (as its layers unpack, computed files
    left out) into ``new``.

    New or changed entries are included (changed: type, mode, owner, mtime,
    content, link target, device, or which paths share the inode); a hard-link
    group is included whole when any of its paths is, so links never point
    into a lower layer. A path gone from ``new`` gets a whiteout when its
    parent is a directory in both trees (a removed or replaced directory
    takes its contents with it); an entry whose type changed simply replaces
    the old one, as layer extraction does.
    """
    old_view, new_view = _layer_view(old), _layer_view(new)
    old_links, new_links = _link_groups(old_view), _link_groups(new_view)
    emitted: set[str] = set()
    for path, (inum, inode) in new_view.items():
        previous = old_view.get(path)
        if previous is None or _signature(inode, new_links.get(inum, ())) != _signature(
            previous[1], old_links.get(previous[0], ())
        ):
            emitted.add(path)
    for path in list(emitted):
        inum, inode = new_view[path]
        if not isinstance(inode, DirectoryInode):
            emitted.update(new_links.get(inum, ()))
    keyed: list[tuple[tuple[tuple[int, bytes], ...], str, bool]] = [
        (_sort_key(path), path, False) for path in emitted
    ]
    for path in old_view:
        if path not in new_view and _parent_kept(path, old_view, new_view):
            keyed.append((_sort_key(path, whiteout=True), path, True))
    keyed.sort()
    members = []
    first: dict[int, str] = {}
    for _key, path, whiteout in keyed:
        if whiteout:
            members.append(Member(path, None))
            continue
        _check_layer_name(path)
        inum, inode = new_view[path]
        if not isinstance(inode, DirectoryInode):
            if inum in first:
                members.append(Member(path, inode, first[inum]))
                continue
            first[inum] = path
        members.append(Member(path, inode))
    return members


def _layer_view(fs: FileSystem) -> dict[str, tuple[int, Inode]]:
    return {
        path: (inum, inode)
        for path, inum, inode in sorted_entries(fs)
        if not isinstance(inode, ComputedRegularInode)
    }


def _link_groups(view: dict[str, tuple[int, Inode]]) -> dict[int, tuple[str, ...]]:
    """Inode number -> its paths, for inodes with more than one path."""
    groups: dict[int, list[str]] = {}
    for path, (inum, inode) in view.items():
        if not isinstance(inode, DirectoryInode):
            groups.setdefault(inum, []).append(path)
    return {inum: tuple(paths) for inum, paths in groups.items() if len(paths) > 1}


def _signature(inode: Inode, links: tuple[str, ...]) -> tuple[object, ...]:
    """What a layer entry reproduces of an inode, plus its hard-link group."""
    match inode:
        case DirectoryInode():
            return ("dir", inode.mode, inode.uid, inode.gid)
        case RegularInode():
            times = (inode.mtime_seconds, inode.mtime_nanoseconds)
            return ("file", inode.mode, inode.uid, inode.gid, *times, inode.size, inode.hash, links)
        case SymlinkInode():
            return ("symlink", inode.uid, inode.gid, inode.symlink, links)
        case SpecialInode():
            times = (inode.mtime_seconds, inode.mtime_nanoseconds)
            return ("special", inode.mode, inode.uid, inode.gid, *times, inode.rdev, links)
    return ("computed",)


def _parent_kept(
    path: str, old: dict[str, tuple[int, Inode]], new: dict[str, tuple[int, Inode]]
) -> bool:
    parent = path.rpartition("/")[0]
    if not parent:
        return True
    in_new = new.get(parent)
    return in_new is not None and isinstance(in_new[1], DirectoryInode)


def _check_layer_name(path: str) -> None:
    if path.rpartition("/")[2].startswith(WHITEOUT_PREFIX):
        raise ExportError(
            f"/{path}: a name starting with {WHITEOUT_PREFIX} cannot be carried by an OCI layer"
        )


# ---------------------------------------------------------------------- writing


class TarOutput(Protocol):
    """Where a tar stream goes: only ``write`` is called (a file, a
    :class:`HashingWriter`, the pieces ``/imageTarball`` hands a client)."""

    def write(self, data: bytes, /) -> int: ...


class HashingWriter:
    """A write-only stream passing data on to ``out`` while taking its
    SHA-256 and length."""

    def __init__(self, out: BinaryIO | gzip.GzipFile) -> None:
        self._out = out
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self._out.write(data)
        self.sha256.update(data)
        self.size += len(data)
        return len(data)

    def flush(self) -> None:
        self._out.flush()

    @property
    def digest(self) -> str:
        return "sha256:" + self.sha256.hexdigest()


def write_tar(
    members: Iterable[Member],
    reader: ImageReader,
    out: TarOutput,
    times: TimePolicy,
    *,
    root: DirectoryInode | None = None,
) -> None:
    """Write ``members`` as an uncompressed tar stream to ``out``; with
    ``root``, a ``.`` entry for the root directory first."""
    # typeshed's overloads of tarfile.open leave out the TarFile arguments it
    # passes on (copybufsize), and want a whole file where a stream ("w|")
    # only writes.
    with tarfile.open(  # type: ignore[call-overload]
        fileobj=out,
        mode="w|",
        format=tarfile.PAX_FORMAT,
        copybufsize=_COPY_BUFFER,
    ) as tar:
        if root is not None:
            tar.addfile(_info(".", tarfile.DIRTYPE, root.mode, root.uid, root.gid, times.default))
        for member in members:
            _add_member(tar, reader, member, times)


def write_image_tar(
    image: Image, reader: ImageReader, out: TarOutput, source_date_epoch: int | None = None
) -> None:
    """The whole image as ``imagetool tar`` writes it (and ``/imageTarball`` sends
    it): a ``.`` entry for the root, computed files as empty files, times by
    :meth:`TimePolicy.for_image`. ``ExportError`` for an image without a file-system."""
    fs = image.file_system
    if fs is None:
        raise ExportError("image has no file-system")
    times = TimePolicy.for_image(image, source_date_epoch)
    write_tar(full_members(fs, computed_as_empty=True), reader, out, times, root=fs.root)


def write_layer(
    members: Iterable[Member], reader: ImageReader, times: TimePolicy, path: str
) -> LayerFile:
    """Write ``members`` as a gzip-compressed tar layer to the file ``path``."""
    with open(path, "wb") as f:
        compressed = HashingWriter(f)
        with gzip.GzipFile(
            filename="", mode="wb", compresslevel=GZIP_LEVEL, fileobj=compressed, mtime=0
        ) as gz:
            plain = HashingWriter(gz)
            write_tar(members, reader, plain, times)
        f.flush()
        os.fsync(f.fileno())
    return LayerFile(compressed.digest, compressed.size, plain.digest)


def _add_member(
    tar: tarfile.TarFile, reader: ImageReader, member: Member, times: TimePolicy
) -> None:
    name, inode = member.path, member.inode
    if inode is None:
        parent, _, leaf = name.rpartition("/")
        whiteout = f"{parent}/{WHITEOUT_PREFIX}{leaf}" if parent else WHITEOUT_PREFIX + leaf
        tar.addfile(_info(whiteout, tarfile.REGTYPE, 0, 0, 0, times.default))
        return
    if member.link_to:
        tar.addfile(_hard_link_info(name, member.link_to, inode, times))
        return
    match inode:
        case DirectoryInode():
            tar.addfile(
                _info(name, tarfile.DIRTYPE, inode.mode, inode.uid, inode.gid, times.default)
            )
        case RegularInode():
            info = _info(name, tarfile.REGTYPE, inode.mode, inode.uid, inode.gid)
            _set_mtime(info, *times.mtime(inode.mtime_seconds, inode.mtime_nanoseconds))
            info.size = inode.size
            if inode.size == 0:
                tar.addfile(info)
                return
            with reader.open_object(inode.hash.hex()) as data:
                _check_size(data, inode)
                tar.addfile(info, data)
        case ComputedRegularInode():
            tar.addfile(
                _info(name, tarfile.REGTYPE, inode.mode, inode.uid, inode.gid, times.default)
            )
        case SymlinkInode():
            info = _info(name, tarfile.SYMTYPE, 0o777, inode.uid, inode.gid, times.default)
            info.linkname = inode.symlink
            tar.addfile(info)
        case SpecialInode():
            tar.addfile(_special_info(name, inode, times))


def _check_size(data: BinaryIO, inode: RegularInode) -> None:
    try:
        size = os.fstat(data.fileno()).st_size
    except (AttributeError, OSError):
        return  # not a local file: tarfile itself fails on a short object
    if size != inode.size:
        raise ExportError(f"object: {inode.hash.hex()} does not have {inode.size} bytes")


def _info(name: str, kind: bytes, mode: int, uid: int, gid: int, mtime: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = stat.S_IMODE(mode)
    info.uid, info.gid = uid, gid
    info.uname = info.gname = ""
    info.mtime = mtime
    return info


def _special_info(name: str, inode: SpecialInode, times: TimePolicy) -> tarfile.TarInfo:
    kinds = {stat.S_IFCHR: tarfile.CHRTYPE, stat.S_IFBLK: tarfile.BLKTYPE}
    kind = kinds.get(stat.S_IFMT(inode.mode), tarfile.FIFOTYPE)
    info = _info(name, kind, inode.mode, inode.uid, inode.gid)
    _set_mtime(info, *times.mtime(inode.mtime_seconds, inode.mtime_nanoseconds))
    if kind != tarfile.FIFOTYPE:
        info.devmajor, info.devminor = os.major(inode.rdev), os.minor(inode.rdev)
    return info


def _hard_link_info(name: str, target: str, inode: Inode, times: TimePolicy) -> tarfile.TarInfo:
    mode = getattr(inode, "mode", 0o777)
    info = _info(name, tarfile.LNKTYPE, mode, getattr(inode, "uid", 0), getattr(inode, "gid", 0))
    if isinstance(inode, RegularInode | SpecialInode):
        _set_mtime(info, *times.mtime(inode.mtime_seconds, inode.mtime_nanoseconds))
    else:
        info.mtime = times.default
    info.linkname = target
    return info


def _set_mtime(info: tarfile.TarInfo, seconds: int, nanoseconds: int) -> None:
    """Whole seconds in the header; the exact time in a pax record."""
    info.mtime = seconds
    if nanoseconds:
        total = seconds * _NS + nanoseconds
        sign = "-" if total < 0 else ""
        whole, fraction = divmod(abs(total), _NS)
        info.pax_headers = {"mtime": f"{sign}{whole}.{fraction:09d}".rstrip("0")}
