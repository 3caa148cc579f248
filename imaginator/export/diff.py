"""What changed between two images: files, packages, tags, filter, triggers.

``diff_images`` is pure (two ``Image`` values in, an ``ImageDiff`` out) and
linear in the size of the trees; ``render_text`` and ``diff_to_json`` give the
human and the machine-readable forms (``imagetool diff``, ``-json``, and the
``/diffImages`` page).

Files are compared by path. A change is one or more of: ``type`` (a file
became a directory…), ``content`` (data, symbolic link target, device
number, or a computed file's source), ``mode`` and ``owner``. Modification
times alone are not reported: a rebuild touches them without changing
anything. Packages are compared by name; a changed version is an upgrade or
a downgrade by Debian's version ordering (which orders plain version strings
sensibly too).
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass, field
from typing import Any

from imaginator.image.model import (
    ComputedRegularInode,
    DirectoryInode,
    FileSystem,
    Image,
    Inode,
    Package,
    RegularInode,
    SpecialInode,
    SymlinkInode,
)
from imaginator.image.triggers import Trigger, triggers_to_json

#: Image record fields compared as metadata (CreatedOn and ExpiresAt always differ).
_METADATA = (
    ("SourceImage", "source_image"),
    ("BuildGitUrl", "build_git_url"),
    ("BuildBranch", "build_branch"),
    ("BuildCommitId", "build_commit_id"),
    ("CreatedBy", "created_by"),
    ("CreatedFor", "created_for"),
    ("OwnerGroups", "owner_groups"),
    ("OwnerUsers", "owner_users"),
)


@dataclass(frozen=True)
class FileEntry:
    """A path that is only in one image, with a short description."""

    path: str
    description: str


@dataclass(frozen=True)
class FileChange:
    """A path in both images that changed: what changed, and both descriptions."""

    path: str
    changes: tuple[str, ...]
    old: str
    new: str


@dataclass(frozen=True)
class VersionChange:
    name: str
    old: str
    new: str


@dataclass(frozen=True)
class ValueChange:
    key: str
    old: str
    new: str


@dataclass
class ImageDiff:
    """Everything that differs between image ``old_name`` and ``new_name``."""

    old_name: str
    new_name: str
    files_added: list[FileEntry] = field(default_factory=list)
    files_removed: list[FileEntry] = field(default_factory=list)
    files_changed: list[FileChange] = field(default_factory=list)
    packages_added: list[Package] = field(default_factory=list)
    packages_removed: list[Package] = field(default_factory=list)
    packages_upgraded: list[VersionChange] = field(default_factory=list)
    packages_downgraded: list[VersionChange] = field(default_factory=list)
    tags_added: dict[str, str] = field(default_factory=dict)
    tags_removed: dict[str, str] = field(default_factory=dict)
    tags_changed: list[ValueChange] = field(default_factory=list)
    filter_added: list[str] = field(default_factory=list)
    filter_removed: list[str] = field(default_factory=list)
    triggers_added: list[dict[str, Any]] = field(default_factory=list)
    triggers_removed: list[dict[str, Any]] = field(default_factory=list)
    metadata: list[ValueChange] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not any(
            getattr(self, name)
            for name in self.__dataclass_fields__
            if name not in ("old_name", "new_name")
        )


# ---------------------------------------------------------------------- comparing


def diff_images(old_name: str, old: Image, new_name: str, new: Image) -> ImageDiff:
    """The differences from ``old`` to ``new``."""
    result = ImageDiff(old_name, new_name)
    _diff_files(result, old.file_system, new.file_system)
    _diff_packages(result, old.packages or (), new.packages or ())
    old_tags, new_tags = old.tags or {}, new.tags or {}
    for key in sorted(new_tags.keys() - old_tags.keys()):
        result.tags_added[key] = new_tags[key]
    for key in sorted(old_tags.keys() - new_tags.keys()):
        result.tags_removed[key] = old_tags[key]
    for key in sorted(old_tags.keys() & new_tags.keys()):
        if old_tags[key] != new_tags[key]:
            result.tags_changed.append(ValueChange(key, old_tags[key], new_tags[key]))
    old_filter, new_filter = list(old.filter or ()), list(new.filter or ())
    result.filter_added = [line for line in new_filter if line not in set(old_filter)]
    result.filter_removed = [line for line in old_filter if line not in set(new_filter)]
    old_triggers, new_triggers = _triggers(old.triggers), _triggers(new.triggers)
    result.triggers_added = [t for t in new_triggers if t not in old_triggers]
    result.triggers_removed = [t for t in old_triggers if t not in new_triggers]
    for label, attribute in _METADATA:
        before, after = _text(getattr(old, attribute)), _text(getattr(new, attribute))
        if before != after:
            result.metadata.append(ValueChange(label, before, after))
    return result


def _text(value: str | tuple[str, ...] | None) -> str:
    return ", ".join(value) if isinstance(value, tuple) else value or ""


def _triggers(triggers: tuple[Trigger, ...] | None) -> list[dict[str, Any]]:
    value = triggers_to_json(triggers) or {}
    return list(value.get("Triggers") or [])


def _paths(fs: FileSystem | None) -> dict[str, Inode]:
    if fs is None:
        return {}
    found: dict[str, Inode] = {"/": fs.root}
    for path, _inum, inode in fs.walk():
        found[path] = inode
    return found


def _diff_files(result: ImageDiff, old_fs: FileSystem | None, new_fs: FileSystem | None) -> None:
    old, new = _paths(old_fs), _paths(new_fs)
    key = _path_key
    for path in sorted(new.keys() - old.keys(), key=key):
        result.files_added.append(FileEntry(path, describe(new[path])))
    for path in sorted(old.keys() - new.keys(), key=key):
        result.files_removed.append(FileEntry(path, describe(old[path])))
    for path in sorted(old.keys() & new.keys(), key=key):
        changes = inode_changes(old[path], new[path])
        if changes:
            result.files_changed.append(
                FileChange(path, changes, describe(old[path]), describe(new[path]))
            )


def _path_key(path: str) -> bytes:
    return path.encode("utf-8", "surrogateescape")


def _kind(inode: Inode) -> str:
    match inode:
        case DirectoryInode():
            return "directory"
        case RegularInode():
            return "file"
        case ComputedRegularInode():
            return "computed file"
        case SymlinkInode():
            return "symlink"
        case SpecialInode():
            kind = stat.S_IFMT(inode.mode)
            return {stat.S_IFCHR: "character device", stat.S_IFBLK: "block device"}.get(
                kind, "fifo"
            )
    return "unknown"


def _content(inode: Inode) -> tuple[object, ...]:
    match inode:
        case RegularInode():
            return (inode.size, inode.hash)
        case ComputedRegularInode():
            return (inode.source,)
        case SymlinkInode():
            return (inode.symlink,)
        case SpecialInode():
            return (inode.rdev,)
    return ()


def _mode(inode: Inode) -> int | None:
    return None if isinstance(inode, SymlinkInode) else stat.S_IMODE(inode.mode)


def inode_changes(old: Inode, new: Inode) -> tuple[str, ...]:
    """What changed between two inodes at the same path: ``type``,
    ``content``, ``mode``, ``owner`` (in that order); empty if nothing did."""
    if _kind(old) != _kind(new):
        return ("type",)
    changes = []
    if _content(old) != _content(new):
        changes.append("content")
    if _mode(old) != _mode(new):
        changes.append("mode")
    if (old.uid, old.gid) != (new.uid, new.gid):
        changes.append("owner")
    return tuple(changes)


def describe(inode: Inode) -> str:
    """``file 0644 0:0 12 bytes``, ``symlink -> target``, ``directory 0755 0:0``…"""
    owner = f"{inode.uid}:{inode.gid}"
    mode = _mode(inode)
    base = f"{_kind(inode)} {mode:04o} {owner}" if mode is not None else f"symlink {owner}"
    match inode:
        case RegularInode():
            return f"{base} {inode.size} bytes sha512:{inode.hash.hex()[:16]}"
        case ComputedRegularInode():
            return f"{base} from {inode.source}"
        case SymlinkInode():
            return f"{base} -> {inode.symlink}"
        case SpecialInode() if stat.S_IFMT(inode.mode) != stat.S_IFIFO:
            return f"{base} {os.major(inode.rdev)},{os.minor(inode.rdev)}"
    return base


def _diff_packages(result: ImageDiff, old: tuple[Package, ...], new: tuple[Package, ...]) -> None:
    old_by_name: dict[str, list[Package]] = {}
    new_by_name: dict[str, list[Package]] = {}
    for package in old:
        old_by_name.setdefault(package.name, []).append(package)
    for package in new:
        new_by_name.setdefault(package.name, []).append(package)
    for name in sorted(old_by_name.keys() | new_by_name.keys()):
        before, after = old_by_name.get(name, []), new_by_name.get(name, [])
        if len(before) == 1 and len(after) == 1:
            old_version, new_version = before[0].version, after[0].version
            order = compare_versions(old_version, new_version)
            if order < 0:
                result.packages_upgraded.append(VersionChange(name, old_version, new_version))
            elif order > 0 or old_version != new_version:
                result.packages_downgraded.append(VersionChange(name, old_version, new_version))
            continue
        before_versions = {p.version for p in before}
        after_versions = {p.version for p in after}
        result.packages_removed.extend(p for p in before if p.version not in after_versions)
        result.packages_added.extend(p for p in after if p.version not in before_versions)


# ---------------------------------------------------------------------- versions


def _order(char: str) -> int:
    if char == "~":
        return -1
    if char.isdigit():
        return 0
    if char.isalpha():
        return ord(char)
    return ord(char) + 256


def _compare_part(a: str, b: str) -> int:
    """dpkg's comparison of an upstream version or revision."""
    i = j = 0
    while i < len(a) or j < len(b):
        first_difference = 0
        while (i < len(a) and not a[i].isdigit()) or (j < len(b) and not b[j].isdigit()):
            ac = _order(a[i]) if i < len(a) and not a[i].isdigit() else 0
            bc = _order(b[j]) if j < len(b) and not b[j].isdigit() else 0
            if ac != bc:
                return -1 if ac < bc else 1
            i += 1
            j += 1
        while i < len(a) and a[i] == "0":
            i += 1
        while j < len(b) and b[j] == "0":
            j += 1
        while i < len(a) and a[i].isdigit() and j < len(b) and b[j].isdigit():
            if not first_difference:
                first_difference = ord(a[i]) - ord(b[j])
            i += 1
            j += 1
        if i < len(a) and a[i].isdigit():
            return 1
        if j < len(b) and b[j].isdigit():
            return -1
        if first_difference:
            return -1 if first_difference < 0 else 1
    return 0


def _split_version(version: str) -> tuple[int, str, str]:
    epoch, colon, rest = version.partition(":")
    if not colon or not epoch.isdigit():
        epoch, rest = "0", version
    upstream, dash, revision = rest.rpartition("-")
    if not dash:
        upstream, revision = rest, ""
    return int(epoch), upstream, revision


def compare_versions(a: str, b: str) -> int:
    """-1, 0 or 1 as Debian version ``a`` sorts before, with or after ``b``."""
    epoch_a, upstream_a, revision_a = _split_version(a)
    epoch_b, upstream_b, revision_b = _split_version(b)
    if epoch_a != epoch_b:
        return -1 if epoch_a < epoch_b else 1
    return _compare_part(upstream_a, upstream_b) or _compare_part(revision_a, revision_b)


# ---------------------------------------------------------------------- renderings


def diff_to_json(diff: ImageDiff) -> dict[str, Any]:
    """The diff as a JSON value (Go-style key names, as the image records)."""

    def package(p: Package) -> dict[str, Any]:
        return {"Name": p.name, "Version": p.version, "Size": p.size}

    def version(v: VersionChange) -> dict[str, str]:
        return {"Name": v.name, "OldVersion": v.old, "NewVersion": v.new}

    def value(v: ValueChange) -> dict[str, str]:
        return {"Key": v.key, "Old": v.old, "New": v.new}

    return {
        "OldImage": diff.old_name,
        "NewImage": diff.new_name,
        "Files": {
            "Added": [{"Path": f.path, "Description": f.description} for f in diff.files_added],
            "Removed": [{"Path": f.path, "Description": f.description} for f in diff.files_removed],
            "Changed": [
                {"Path": c.path, "Changes": list(c.changes), "Old": c.old, "New": c.new}
                for c in diff.files_changed
            ],
        },
        "Packages": {
            "Added": [package(p) for p in diff.packages_added],
            "Removed": [package(p) for p in diff.packages_removed],
            "Upgraded": [version(v) for v in diff.packages_upgraded],
            "Downgraded": [version(v) for v in diff.packages_downgraded],
        },
        "Tags": {
            "Added": diff.tags_added,
            "Removed": diff.tags_removed,
            "Changed": [value(v) for v in diff.tags_changed],
        },
        "Filter": {"Added": diff.filter_added, "Removed": diff.filter_removed},
        "Triggers": {"Added": diff.triggers_added, "Removed": diff.triggers_removed},
        "Metadata": [value(v) for v in diff.metadata],
    }


def render_text(diff: ImageDiff) -> str:
    """The diff for people, one change per line."""
    lines = [f"--- {diff.old_name}", f"+++ {diff.new_name}"]
    if diff.empty:
        return "\n".join([*lines, "No differences", ""])
    if diff.metadata:
        lines.append("Metadata:")
        lines += [f"  {v.key}: {v.old or '(none)'} -> {v.new or '(none)'}" for v in diff.metadata]
    files = (diff.files_added, diff.files_removed, diff.files_changed)
    if any(files):
        lines.append(
            f"Files: {len(files[0])} added, {len(files[1])} removed, {len(files[2])} changed"
        )
        lines += [f"  + {f.path} ({f.description})" for f in diff.files_added]
        lines += [f"  - {f.path} ({f.description})" for f in diff.files_removed]
        lines += [
            f"  ~ {c.path}: {', '.join(c.changes)} ({c.old} -> {c.new})" for c in diff.files_changed
        ]
    packages = (
        diff.packages_added,
        diff.packages_removed,
        diff.packages_upgraded,
        diff.packages_downgraded,
    )
    if any(packages):
        lines.append(
            f"Packages: {len(packages[0])} added, {len(packages[1])} removed, "
            f"{len(packages[2])} upgraded, {len(packages[3])} downgraded"
        )
        lines += [f"  + {p.name} {p.version}" for p in diff.packages_added]
        lines += [f"  - {p.name} {p.version}" for p in diff.packages_removed]
        lines += [f"  ^ {v.name} {v.old} -> {v.new}" for v in diff.packages_upgraded]
        lines += [f"  v {v.name} {v.old} -> {v.new}" for v in diff.packages_downgraded]
    if diff.tags_added or diff.tags_removed or diff.tags_changed:
        lines.append("Tags:")
        lines += [f"  + {k}={v}" for k, v in diff.tags_added.items()]
        lines += [f"  - {k}={v}" for k, v in diff.tags_removed.items()]
        lines += [f"  ~ {v.key}: {v.old} -> {v.new}" for v in diff.tags_changed]
    if diff.filter_added or diff.filter_removed:
        lines.append("Filter:")
        lines += [f"  + {line}" for line in diff.filter_added]
        lines += [f"  - {line}" for line in diff.filter_removed]
    if diff.triggers_added or diff.triggers_removed:
        lines.append("Triggers:")
        lines += [f"  + {_compact(t)}" for t in diff.triggers_added]
        lines += [f"  - {_compact(t)}" for t in diff.triggers_removed]
    return "\n".join([*lines, ""])


def _compact(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)
