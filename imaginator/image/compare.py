"""Is a new build the same as the stream's latest image?

Inode numbers differ from one build tree to the next, so file-systems are
compared by path: each path's inode (without its number) and which paths are
hard links of each other. Together with the filter, triggers, packages and tags
this decides whether publishing a new image would change anything.
"""

from __future__ import annotations

from dataclasses import astuple

from imaginator.image.model import DirectoryInode, FileSystem, Image


def canonical_file_system(fs: FileSystem) -> list[tuple]:
    """``(path, first path of the same inode, inode fields)`` for every path."""
    first_path: dict[int, str] = {}
    result = []
    root = fs.root
    result.append(("/", "/", (root.mode, root.uid, root.gid)))
    for path, inum, inode in fs.walk():
        first = first_path.setdefault(inum, path)
        if isinstance(inode, DirectoryInode):
            fields: tuple = ("dir", inode.mode, inode.uid, inode.gid)
        else:
            fields = (type(inode).__name__, *astuple(inode))
        result.append((path, first, fields))
    return result


def same_content(new: Image, old: Image) -> bool:
    """Whether ``new`` would publish nothing that ``old`` does not already have."""
    if new.file_system is None or old.file_system is None:
        return False
    return (
        new.filter == old.filter
        and new.triggers == old.triggers
        and tuple(new.packages or ()) == tuple(old.packages or ())
        and (new.tags or {}) == (old.tags or {})
        and tuple(new.owner_groups or ()) == tuple(old.owner_groups or ())
        and tuple(new.owner_users or ()) == tuple(old.owner_users or ())
        and canonical_file_system(new.file_system) == canonical_file_system(old.file_system)
    )


def provenance(image: Image) -> tuple[str, str, str]:
    """Where an image came from: manifest commit, branch and source image."""
    return (image.build_commit_id, image.build_branch, image.source_image)


def same_build(new: Image, old: Image) -> bool:
    """Whether ``new`` can be dropped in favour of ``old``: same content *and*
    same provenance. A rebuild from a new commit (or on a new source image)
    with unchanged content is published as a new record, so the commit a
    stream pins with ``SourceImageGitCommitId`` can be found; its objects are
    all in the store already, so it stores no new file content."""
    return provenance(new) == provenance(old) and same_content(new, old)
