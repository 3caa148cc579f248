"""Writing one tree of a fetched repository into a directory: no history, no ``.git``.

Trees are hostile input. Every entry name is checked (:func:`check_name`: no
``.``, ``..``, ``/``, NUL or ``.git``), and :func:`checkout` only ever
creates entries relative to directory file descriptors it opened itself with
``O_NOFOLLOW`` (re-opened from the top with ``inroot.open_chain``), so
neither a crafted name nor a symlink in the tree can make it write outside
the destination. Symlinks are created as symlinks and never followed;
executable bits are kept, a submodule becomes an empty directory.

Everything here blocks; the caller runs it in the reactor's thread pool.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable

from dulwich.objects import Blob, Commit, Tree
from dulwich.repo import Repo

from imaginator.runtime.inroot import open_chain
from imaginator.sources.giturls import GitFetchError

__all__ = ["check_name", "checkout", "select_tree", "tree_size"]

_GITLINK_MODE = 0o160000
_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_O_NEWFILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def check_name(name: bytes, parent: bytes, fail: Callable[[str], GitFetchError]) -> None:
    """Reject tree entry names that could escape ``dest`` or plant a ``.git``."""
    if (
        not name
        or name in (b".", b"..")
        or b"/" in name
        or b"\0" in name
        or name.lower() == b".git"
    ):
        shown = (parent + b"/" + name if parent else name).decode("utf-8", "replace")
        raise fail(f"invalid path in repository: {shown!r}")


def select_tree(
    repo: Repo, commit_id: bytes, directory: str, fail: Callable[[str], GitFetchError]
) -> bytes:
    """Id of the tree to check out: the commit's, or that of ``directory`` in it."""
    commit = repo[commit_id]
    assert isinstance(commit, Commit)
    tree_id = commit.tree
    parts = [p for p in directory.split("/") if p not in ("", ".")]
    for index, part in enumerate(parts):
        tree = repo[tree_id]
        if not isinstance(tree, Tree):
            raise fail("corrupt repository: tree object expected")
        try:
            mode, object_id = tree[part.encode("utf-8")]
        except KeyError:
            raise fail(f"{directory} does not exist in repository") from None
        if not stat.S_ISDIR(mode):
            if index == len(parts) - 1:
                raise fail(f"{directory} exists in repository but is not a directory")
            raise fail(f"{directory} does not exist in repository")
        tree_id = object_id
    return tree_id


def _write_blob(dir_fd: int, name: bytes, blob: Blob, mode: int) -> None:
    fd = os.open(name, _O_NEWFILE, 0o600, dir_fd=dir_fd)
    try:
        for chunk in blob.as_raw_chunks():
            view = memoryview(chunk)
            while view:
                written = os.write(fd, view)
                view = view[written:]
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def checkout(repo: Repo, tree_id: bytes, dest: str, fail: Callable[[str], GitFetchError]) -> None:
    """Write the tree ``tree_id`` into the directory ``dest`` (which must exist).

    Directories are walked iteratively (a deep hostile tree cannot exhaust
    the stack) and each is re-opened from ``dest`` component by component
    with ``O_NOFOLLOW``, so only directories this function created are ever
    written into.
    """
    root_fd = os.open(dest, _O_DIR)
    try:
        pending: list[tuple[bytes, list[bytes]]] = [(tree_id, [])]
        while pending:
            tree_id, components = pending.pop()
            tree = repo[tree_id]
            if not isinstance(tree, Tree):
                raise fail("corrupt repository: tree object expected")
            parent = b"/".join(components)
            dir_fd = open_chain(root_fd, components)
            try:
                for entry in tree.iteritems():
                    name, mode, object_id = entry.path, entry.mode, entry.sha
                    check_name(name, parent, fail)
                    if stat.S_ISDIR(mode):
                        os.mkdir(name, 0o755, dir_fd=dir_fd)
                        pending.append((object_id, [*components, name]))
                    elif mode == _GITLINK_MODE:
                        # A submodule: git leaves an empty directory.
                        os.mkdir(name, 0o755, dir_fd=dir_fd)
                    elif stat.S_ISLNK(mode):
                        blob = repo[object_id]
                        if not isinstance(blob, Blob):
                            raise fail("corrupt repository: blob object expected")
                        link_target = blob.as_raw_string()
                        if b"\0" in link_target:
                            raise fail("invalid symbolic link target in repository")
                        os.symlink(link_target, name, dir_fd=dir_fd)
                    elif stat.S_ISREG(mode):
                        blob = repo[object_id]
                        if not isinstance(blob, Blob):
                            raise fail("corrupt repository: blob object expected")
                        _write_blob(dir_fd, name, blob, 0o755 if mode & 0o111 else 0o644)
                    else:
                        shown = (parent + b"/" + name if parent else name).decode(
                            "utf-8", "replace"
                        )
                        raise fail(f"unsupported file mode {mode:o} for {shown!r}")
            finally:
                os.close(dir_fd)
    finally:
        os.close(root_fd)


def tree_size(path: str) -> int:
    """Total size in bytes of the regular files below ``path``."""
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total
