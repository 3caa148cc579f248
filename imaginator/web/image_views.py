"""How the stream and image pages show configuration and image records: text helpers.

Pure functions from the image model and the configuration to what the
templates print: ``ls -l`` rows of an image's files, JSON code boxes as the
Go pages write them, times of image records, the packager commands. No I/O.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from imaginator.config.main import PackagerType
from imaginator.goformats.gojson import marshal_text
from imaginator.goformats.units import format_time
from imaginator.image.model import (
    ComputedRegularInode,
    DirectoryInode,
    FileSystem,
    Inode,
    RegularInode,
    SpecialInode,
    SymlinkInode,
)
from imaginator.image.triggers import Trigger, triggers_to_json
from imaginator.pipeline.packager import generic_packager_script

#: File entries listed on an image page; the rest is summarised in a note.
MAX_FILES = 2000

_NS = 1_000_000_000


@dataclass(frozen=True)
class FileRow:
    """One file-system entry as ``ls -l`` would show it."""

    path: str
    mode: str
    uid: int
    gid: int
    size: str
    mtime: str
    target: str


@dataclass(frozen=True)
class PackagerView:
    """A packager type as the bootstrap stream page shows it."""

    commands: tuple[tuple[str, str], ...]
    size_multiplier: int
    verbatim_json: str
    script: str


# ------------------------------------------------------------------ helpers


def pretty_json(value: Any) -> str:
    """JSON as Go's ``libjson.WriteWithIndent`` writes it (4 spaces, final newline)."""
    return marshal_text(value, indent="    ") + "\n"


def directory_of(image_name: str) -> str:
    """The stream (directory) part of an image name: all before the last ``/``."""
    return image_name.rpartition("/")[0]


def expiry_text(expires_at_ns: int) -> str:
    return format_time(expires_at_ns / _NS) if expires_at_ns else "never"


def created_text(created_on_ns: int) -> str:
    return format_time(created_on_ns / _NS) if created_on_ns else ""


def mode_text(inode: Inode) -> str:
    """The ``ls -l`` mode string (symbolic links have no mode in the image model)."""
    if isinstance(inode, SymlinkInode):
        return "lrwxrwxrwx"
    return stat.filemode(inode.mode)


def _size_text(inode: Inode) -> str:
    if isinstance(inode, RegularInode):
        return str(inode.size)
    if isinstance(inode, SpecialInode) and (stat.S_ISCHR(inode.mode) or stat.S_ISBLK(inode.mode)):
        return f"{os.major(inode.rdev)}, {os.minor(inode.rdev)}"
    return ""


def _mtime_text(inode: Inode) -> str:
    if isinstance(inode, RegularInode | SpecialInode):
        return format_time(inode.mtime_seconds)
    return ""


def _target_text(inode: Inode, path: str, first_path: str) -> str:
    if isinstance(inode, SymlinkInode):
        return f"-> {inode.symlink}"
    if isinstance(inode, ComputedRegularInode):
        return f"computed by {inode.source}"
    if first_path != path:
        return f"hard link to {first_path}"
    return ""


def file_rows(fs: FileSystem, limit: int = MAX_FILES) -> list[FileRow]:
    """The first ``limit`` entries of ``fs`` in walk order (directories before contents)."""
    rows: list[FileRow] = []
    first_paths: dict[int, str] = {}
    for path, inum, inode in fs.walk():
        if len(rows) >= limit:
            break
        first = first_paths.setdefault(inum, path)
        rows.append(
            FileRow(
                path=path,
                mode=mode_text(inode),
                uid=inode.uid,
                gid=inode.gid,
                size=_size_text(inode),
                mtime=_mtime_text(inode),
                target=_target_text(inode, path, first),
            )
        )
    return rows


def count_entries(fs: FileSystem) -> int:
    """How many paths ``fs.walk()`` yields (hard links counted once per path)."""
    directories = (i for i in fs.inode_table.values() if isinstance(i, DirectoryInode))
    return len(fs.root.entries) + sum(len(d.entries) for d in directories)


def packager_view(packager: PackagerType) -> PackagerView:
    """Commands joined by spaces (as Go shows them), verbatim lines and the generated script."""
    commands = (
        ("Clean", packager.clean_command),
        ("Install", packager.install_command),
        ("List", packager.list_command.arg_list),
        ("Remove", packager.remove_command),
        ("Update", packager.update_command),
        ("Upgrade", packager.upgrade_command),
    )
    return PackagerView(
        commands=tuple((label, " ".join(argv)) for label, argv in commands),
        size_multiplier=packager.list_command.size_multiplier,
        verbatim_json=pretty_json(list(packager.verbatim)) if packager.verbatim else "",
        script=generic_packager_script(packager),
    )


def triggers_json(triggers: tuple[Trigger, ...] | None) -> str:
    """The trigger list as JSON, or ``""`` when there are no triggers (``None``)."""
    value = triggers_to_json(triggers)
    return "" if value is None else pretty_json(value["Triggers"])


def lines_json(lines: Iterable[str] | None) -> str:
    """Filter lines as a JSON list, or ``""`` when there are none."""
    values = list(lines or ())
    return pretty_json(values) if values else ""


def mapping_json(values: Mapping[str, str] | None) -> str:
    return pretty_json(dict(values)) if values else ""


def http_url(url: str) -> str:
    """``url`` if it is an http(s) URL (safe to link), else ``""``."""
    return url if url.startswith(("http://", "https://")) else ""
