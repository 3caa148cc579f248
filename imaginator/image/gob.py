"""The image model's GOB schema, as the Go imageserver sends and expects it.

Dominator's ``image.Image`` and its parts, with Go's field names, field
order and type names exactly as the Go programs define them (read from their
GOB streams, kept in ``tests/data/gob``). ``FileSystem.InodeTable`` is a map of
interface values whose concrete types are registered under
``*filesystem.RegularInode`` and friends; the root directory is embedded in
``FileSystem``, which GOB sends as a field named ``DirectoryInode``.

``image_to_gob`` and ``image_from_gob`` convert between our ``Image`` model and
the values of ``IMAGE`` (dicts keyed by Go field names); ``image_from_gob``
validates like ``image_from_json`` and raises ``ImageFormatError``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from imaginator.goformats.gob import (
    BOOL,
    INT32,
    INT64,
    STRING,
    TIME,
    UINT8,
    UINT32,
    UINT64,
    Array,
    Field,
    GoInterface,
    GoTime,
    Interface,
    Map,
    Slice,
    Struct,
)
from imaginator.image.model import (
    HASH_SIZE,
    Annotation,
    ComputedRegularInode,
    DirectoryInode,
    FileSystem,
    Image,
    ImageFormatError,
    Inode,
    Package,
    RegularInode,
    SpecialInode,
    SymlinkInode,
    _check_tree,  # the same tree checks as for JSON records
)
from imaginator.image.triggers import Trigger

HASH = Array(UINT8, HASH_SIZE, "Hash")
STRINGS = Slice(STRING, "[]string")
TAGS = Map(STRING, STRING, "Tags")
FILTER = Struct("Filter", [Field("FilterLines", STRINGS)])
DIRECTORY_ENTRY = Struct("", [Field("Name", STRING), Field("InodeNumber", UINT64)])
DIRECTORY_INODE = Struct(
    "DirectoryInode",
    [
        Field("EntryList", Slice(DIRECTORY_ENTRY, "[]*filesystem.DirectoryEntry")),
        Field(
            "EntriesByName", Map(STRING, DIRECTORY_ENTRY, "map[string]*filesystem.DirectoryEntry")
        ),
        Field("Mode", UINT32),
        Field("Uid", UINT32),
        Field("Gid", UINT32),
    ],
)
_OWNER = [Field("Mode", UINT32), Field("Uid", UINT32), Field("Gid", UINT32)]
_MTIME = [Field("MtimeNanoSeconds", INT32), Field("MtimeSeconds", INT64)]
REGULAR_INODE = Struct(
    "RegularInode", [*_OWNER, *_MTIME, Field("Size", UINT64), Field("Hash", HASH)]
)
COMPUTED_REGULAR_INODE = Struct("ComputedRegularInode", [*_OWNER, Field("Source", STRING)])
SYMLINK_INODE = Struct(
    "SymlinkInode", [Field("Uid", UINT32), Field("Gid", UINT32), Field("Symlink", STRING)]
)
SPECIAL_INODE = Struct("SpecialInode", [*_OWNER, *_MTIME, Field("Rdev", UINT64)])

#: The names ``lib/filesystem`` registers its inode types under (``gob.Register``).
REGULAR_NAME = "*filesystem.RegularInode"
COMPUTED_NAME = "*filesystem.ComputedRegularInode"
SYMLINK_NAME = "*filesystem.SymlinkInode"
SPECIAL_NAME = "*filesystem.SpecialInode"
DIRECTORY_NAME = "*filesystem.DirectoryInode"
INODE = Interface(
    {
        REGULAR_NAME: REGULAR_INODE,
        COMPUTED_NAME: COMPUTED_REGULAR_INODE,
        SYMLINK_NAME: SYMLINK_INODE,
        SPECIAL_NAME: SPECIAL_INODE,
        DIRECTORY_NAME: DIRECTORY_INODE,
    },
    name="GenericInode",
)
FILE_SYSTEM = Struct(
    "FileSystem",
    [
        Field("InodeTable", Map(UINT64, INODE, "InodeTable")),
        Field("NumRegularInodes", UINT64),
        Field("TotalDataBytes", UINT64),
        Field("DirectoryCount", UINT64),
        Field("DirectoryInode", DIRECTORY_INODE),
    ],
)
TRIGGER = Struct(
    "",
    [
        Field("MatchLines", STRINGS),
        Field("Service", STRING),
        Field("SortName", STRING),
        Field("DoReboot", BOOL),
        Field("DoReload", BOOL),
        Field("HighImpact", BOOL),
    ],
)
TRIGGERS = Struct("Triggers", [Field("Triggers", Slice(TRIGGER, "[]*triggers.Trigger"))])
ANNOTATION = Struct("Annotation", [Field("Object", HASH, pointer=True), Field("URL", STRING)])
PACKAGE = Struct(
    "Package", [Field("Name", STRING), Field("Size", UINT64), Field("Version", STRING)]
)
IMAGE = Struct(
    "Image",
    [
        Field("BuildBranch", STRING),
        Field("BuildCommitId", STRING),
        Field("BuildGitUrl", STRING),
        Field("CreatedBy", STRING),
        Field("CreatedFor", STRING),
        Field("Filter", FILTER, pointer=True),
        Field("FileSystem", FILE_SYSTEM, pointer=True),
        Field("Triggers", TRIGGERS, pointer=True),
        Field("ReleaseNotes", ANNOTATION, pointer=True),
        Field("BuildLog", ANNOTATION, pointer=True),
        Field("CreatedOn", TIME),
        Field("ExpiresAt", TIME),
        Field("OwnerGroups", STRINGS),
        Field("OwnerUsers", STRINGS),
        Field("Packages", Slice(PACKAGE, "[]image.Package")),
        Field("SourceImage", STRING),
        Field("Tags", TAGS),
    ],
)


def local_offset(ns: int) -> int:
    """The local zone's offset (seconds east of UTC) at ``ns``: Go's
    ``time.Now()`` is in the local zone, and its binary form carries the offset."""
    return time.localtime(ns // 1_000_000_000).tm_gmtoff


def time_to_gob(ns: int, offset: int | None = None) -> GoTime:
    """Our nanoseconds (0: Go's zero time) as a ``time.Time``, in the local
    zone unless ``offset`` says otherwise."""
    if ns == 0:
        return GoTime()
    return GoTime.from_unix_ns(ns, local_offset(ns) if offset is None else offset)


def time_from_gob(value: GoTime) -> int:
    return 0 if value.is_zero else value.unix_ns


# --------------------------------------------------------------------------- to GOB


def image_to_gob(image: Image, *, offset: int | None = None) -> dict[str, Any]:
    """The ``IMAGE`` value of ``image``; times are sent in the local zone (as
    the Go imaginator does) or with the given ``offset`` in seconds."""
    return {
        "BuildBranch": image.build_branch,
        "BuildCommitId": image.build_commit_id,
        "BuildGitUrl": image.build_git_url,
        "CreatedBy": image.created_by,
        "CreatedFor": image.created_for,
        "Filter": None if image.filter is None else {"FilterLines": list(image.filter)},
        "FileSystem": None if image.file_system is None else file_system_to_gob(image.file_system),
        "Triggers": _triggers_to_gob(image.triggers),
        "ReleaseNotes": _annotation_to_gob(image.release_notes),
        "BuildLog": _annotation_to_gob(image.build_log),
        "CreatedOn": time_to_gob(image.created_on, offset),
        "ExpiresAt": time_to_gob(image.expires_at, offset),
        "OwnerGroups": None if image.owner_groups is None else list(image.owner_groups),
        "OwnerUsers": None if image.owner_users is None else list(image.owner_users),
        "Packages": None
        if image.packages is None
        else [{"Name": p.name, "Size": p.size, "Version": p.version} for p in image.packages],
        "SourceImage": image.source_image,
        "Tags": None if image.tags is None else dict(image.tags),
    }


def file_system_to_gob(fs: FileSystem) -> dict[str, Any]:
    return {
        "InodeTable": {inum: _inode_to_gob(inode) for inum, inode in fs.inode_table.items()},
        "NumRegularInodes": fs.num_regular_inodes,
        "TotalDataBytes": fs.total_data_bytes,
        "DirectoryCount": fs.directory_count,
        "DirectoryInode": _directory_to_gob(fs.root),
    }


def _directory_to_gob(inode: DirectoryInode) -> dict[str, Any]:
    return {
        "EntryList": [{"Name": name, "InodeNumber": inum} for name, inum in inode.entries],
        "EntriesByName": None,
        "Mode": inode.mode,
        "Uid": inode.uid,
        "Gid": inode.gid,
    }


def _inode_to_gob(inode: Inode) -> GoInterface:
    match inode:
        case DirectoryInode():
            return GoInterface(DIRECTORY_NAME, _directory_to_gob(inode), DIRECTORY_INODE)
        case RegularInode():
            value = {
                "Mode": inode.mode,
                "Uid": inode.uid,
                "Gid": inode.gid,
                "MtimeNanoSeconds": inode.mtime_nanoseconds,
                "MtimeSeconds": inode.mtime_seconds,
                "Size": inode.size,
                "Hash": inode.hash,
            }
            return GoInterface(REGULAR_NAME, value, REGULAR_INODE)
        case ComputedRegularInode():
            value = {"Mode": inode.mode, "Uid": inode.uid, "Gid": inode.gid, "Source": inode.source}
            return GoInterface(COMPUTED_NAME, value, COMPUTED_REGULAR_INODE)
        case SymlinkInode():
            value = {"Uid": inode.uid, "Gid": inode.gid, "Symlink": inode.symlink}
            return GoInterface(SYMLINK_NAME, value, SYMLINK_INODE)
        case SpecialInode():
            value = {
                "Mode": inode.mode,
                "Uid": inode.uid,
                "Gid": inode.gid,
                "MtimeNanoSeconds": inode.mtime_nanoseconds,
                "MtimeSeconds": inode.mtime_seconds,
                "Rdev": inode.rdev,
            }
            return GoInterface(SPECIAL_NAME, value, SPECIAL_INODE)
    raise TypeError(f"not an inode: {inode!r}")


def _triggers_to_gob(triggers: tuple[Trigger, ...] | None) -> dict[str, Any] | None:
    if triggers is None:
        return None
    return {
        "Triggers": [
            {
                "MatchLines": list(t.match_lines),
                "Service": t.service,
                "SortName": t.sort_name,
                "DoReboot": t.do_reboot,
                "DoReload": t.do_reload,
                "HighImpact": t.high_impact,
            }
            for t in triggers
        ]
    }


def _annotation_to_gob(annotation: Annotation | None) -> dict[str, Any] | None:
    if annotation is None:
        return None
    return {"Object": annotation.object, "URL": annotation.url}


# --------------------------------------------------------------------------- from GOB


def image_from_gob(value: Mapping[str, Any]) -> Image:
    """Our ``Image`` from a value decoded with the ``IMAGE`` schema."""
    try:
        fs_value = value["FileSystem"]
        filter_value = value["Filter"]
        image = Image(
            build_branch=value["BuildBranch"],
            build_commit_id=value["BuildCommitId"],
            build_git_url=value["BuildGitUrl"],
            created_by=value["CreatedBy"],
            created_for=value["CreatedFor"],
            filter=None if filter_value is None else tuple(filter_value["FilterLines"] or ()),
            file_system=None if fs_value is None else file_system_from_gob(fs_value),
            triggers=_triggers_from_gob(value["Triggers"]),
            release_notes=_annotation_from_gob(value["ReleaseNotes"]),
            build_log=_annotation_from_gob(value["BuildLog"]),
            created_on=time_from_gob(value["CreatedOn"]),
            expires_at=time_from_gob(value["ExpiresAt"]),
            owner_groups=_strings(value["OwnerGroups"]),
            owner_users=_strings(value["OwnerUsers"]),
            packages=None
            if value["Packages"] is None
            else tuple(Package(p["Name"], p["Size"], p["Version"]) for p in value["Packages"]),
            source_image=value["SourceImage"],
            tags=None if value["Tags"] is None else dict(value["Tags"]),
        )
    except (KeyError, TypeError) as exc:
        raise ImageFormatError(f"image: not a value of the Image schema: {exc!r}") from None
    return image


def _strings(values: list[str] | None) -> tuple[str, ...] | None:
    return None if values is None else tuple(values)


def file_system_from_gob(value: Mapping[str, Any]) -> FileSystem:
    table: dict[int, Inode] = {}
    for inum, inode in (value["InodeTable"] or {}).items():
        table[inum] = _inode_from_gob(inode, inum)
    fs = FileSystem(
        inode_table=table,
        root=_directory_from_gob(value["DirectoryInode"]),
        num_regular_inodes=value["NumRegularInodes"],
        total_data_bytes=value["TotalDataBytes"],
        directory_count=value["DirectoryCount"],
    )
    _check_tree(fs, "image.FileSystem")
    return fs


def _directory_from_gob(value: Mapping[str, Any]) -> DirectoryInode:
    entries = [(e["Name"], e["InodeNumber"]) for e in value["EntryList"] or ()]
    return DirectoryInode(entries, value["Mode"], value["Uid"], value["Gid"])


def _inode_from_gob(inode: GoInterface | None, inum: int) -> Inode:
    where = f"image.FileSystem.InodeTable.{inum}"
    if inode is None:
        raise ImageFormatError(f"{where}: nil inode")
    v = inode.value
    if inode.name == DIRECTORY_NAME:
        return _directory_from_gob(v)
    if inode.name == REGULAR_NAME:
        return RegularInode(
            v["Mode"],
            v["Uid"],
            v["Gid"],
            v["MtimeSeconds"],
            v["MtimeNanoSeconds"],
            v["Size"],
            v["Hash"],
        )
    if inode.name == COMPUTED_NAME:
        return ComputedRegularInode(v["Mode"], v["Uid"], v["Gid"], v["Source"])
    if inode.name == SYMLINK_NAME:
        return SymlinkInode(v["Uid"], v["Gid"], v["Symlink"])
    if inode.name == SPECIAL_NAME:
        return SpecialInode(
            v["Mode"], v["Uid"], v["Gid"], v["MtimeSeconds"], v["MtimeNanoSeconds"], v["Rdev"]
        )
    raise ImageFormatError(f"{where}: unknown inode type {inode.name!r}")


def _triggers_from_gob(value: Mapping[str, Any] | None) -> tuple[Trigger, ...] | None:
    if value is None:
        return None
    return tuple(
        Trigger(
            match_lines=tuple(t["MatchLines"] or ()),
            service=t["Service"],
            do_reboot=t["DoReboot"],
            do_reload=t["DoReload"],
            high_impact=t["HighImpact"],
            sort_name=t["SortName"],
        )
        for t in value["Triggers"] or ()
    )


def _annotation_from_gob(value: Mapping[str, Any] | None) -> Annotation | None:
    if value is None:
        return None
    return Annotation(object=value["Object"], url=value["URL"])
