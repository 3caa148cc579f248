"""``imagetool show -summary NAME``: an image record on one screen.

Name, stream, when it was made and when it expires, what it was made from
(source image, manifest commit, branch and repository), sizes and counts of
its files, packages, tags, filter and triggers, and its build log: what an
operator looks at first, without scrolling through the record's JSON.
"""

from __future__ import annotations

from imaginator.goformats.units import format_bytes, format_time
from imaginator.image.model import (
    ComputedRegularInode,
    DirectoryInode,
    Image,
    RegularInode,
    SpecialInode,
    SymlinkInode,
)

_NS = 1_000_000_000
#: Tags shown in full; more are counted.
MAX_TAGS = 8


def _when(ns: int, never: str) -> str:
    return format_time(ns / _NS) if ns else never


def _kinds(image: Image) -> tuple[str, str]:
    """``(entries line, size line)`` of the image's file-system."""
    fs = image.file_system
    if fs is None:
        return "no file-system", "0 B"
    counts = {"regular files": 0, "directories": 0, "symlinks": 0, "devices and fifos": 0}
    computed = 0
    for inode in fs.inode_table.values():
        if isinstance(inode, ComputedRegularInode):
            computed += 1
        elif isinstance(inode, RegularInode):
            counts["regular files"] += 1
        elif isinstance(inode, DirectoryInode):
            counts["directories"] += 1
        elif isinstance(inode, SymlinkInode):
            counts["symlinks"] += 1
        elif isinstance(inode, SpecialInode):
            counts["devices and fifos"] += 1
    counts["directories"] += 1  # the root, which is not in the table
    entries = ", ".join(f"{n} {what}" for what, n in counts.items())
    if computed:
        entries += f", {computed} computed"
    objects = len(fs.object_hashes())
    size = f"{format_bytes(fs.total_data_bytes)} in {objects} distinct objects"
    return entries, size


def summary_lines(name: str, image: Image) -> list[str]:
    """The summary of image ``name``, one line per field."""
    entries, size = _kinds(image)
    made = _when(image.created_on, "unknown")
    made_by = ", ".join(
        part
        for part in (
            f"by {image.created_by}" if image.created_by else "",
            f"for {image.created_for}" if image.created_for else "",
        )
        if part
    )
    provenance = image.build_commit_id or "(none)"
    where = ", ".join(
        part
        for part in (
            f"branch {image.build_branch}" if image.build_branch else "",
            image.build_git_url,
        )
        if part
    )
    tags = sorted((image.tags or {}).items())
    tag_text = ", ".join(f"{k}={v}" for k, v in tags[:MAX_TAGS])
    if len(tags) > MAX_TAGS:
        tag_text += f", … ({len(tags)} in all)"
    triggers = image.triggers or ()
    build_log = image.build_log
    if build_log is not None and build_log.object is not None:
        log_text = f"stored (object {build_log.object.hex()[:16]}…)"
    elif build_log is not None and build_log.url:
        log_text = build_log.url
    else:
        log_text = "none"
    rows = [
        ("Name", name),
        ("Stream", name.rpartition("/")[0]),
        ("Created", made + (f" ({made_by})" if made_by else "")),
        ("Expires", _when(image.expires_at, "never")),
        ("Source", image.source_image or "(none)"),
        ("Commit", provenance + (f" ({where})" if where else "")),
        ("Inodes", entries),
        ("Size", size),
        ("Packages", str(len(image.packages or ()))),
        ("Tags", tag_text or "(none)"),
        ("Filter", f"{len(image.filter)} lines" if image.filter is not None else "(none)"),
        (
            "Triggers",
            f"{len(triggers)} ({', '.join(sorted({t.service for t in triggers}))})"
            if triggers
            else "(none)",
        ),
        ("Build log", log_text),
    ]
    width = max(len(label) for label, _ in rows) + 1
    return [f"{label + ':':<{width}} {value}" for label, value in rows]
