"""Deleting inside an image root without ever following a link (reference §5.2 k).

:func:`remove_entry` removes one entry of a directory (a directory with
everything below it); :func:`delete_matching` walks the whole image and
deletes every path a clean pattern matches. Links are unlinked, never
followed, and directories are opened with ``O_NOFOLLOW`` relative to their
parent's descriptor (the rules of ``inroot``), so a hostile tree can neither
redirect a deletion outside the root nor, however deep it is, exhaust the
stack or the descriptors.

Every function here blocks; callers run them in the reactor's thread pool.
"""

from __future__ import annotations

import itertools
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from imaginator.runtime.inroot import (
    O_DIR,
    failing,
    join_image_path,
    lstat_at,
    open_chain,
    open_root,
    reopen_dir,
    show,
)

__all__ = ["delete_matching", "remove_entry"]


# ------------------------------------------------------------------ removing


def _list_dir(dir_fd: int) -> list[tuple[str, bool]]:
    """Name-sorted entries of ``dir_fd`` with whether each is a real directory."""
    with os.scandir(dir_fd) as entries:
        listing = [(entry.name, entry.is_dir(follow_symlinks=False)) for entry in entries]
    return sorted(listing)


def _free_name(dir_fd: int, counter: Iterator[int]) -> str:
    """A name that does not exist in ``dir_fd``."""
    while True:
        name = f".treecopy-remove-{next(counter)}"
        if lstat_at(dir_fd, name) is None:
            return name


def _empty_into(top_fd: int, name: str, counter: Iterator[int]) -> None:
    """Empty the directory ``name`` in ``top_fd``: unlink its non-directories and
    move its subdirectories up into ``top_fd`` (to be emptied in a later pass)."""
    fd = os.open(name, O_DIR, dir_fd=top_fd)
    try:
        for child, is_dir in _list_dir(fd):
            if is_dir:
                os.rename(child, _free_name(top_fd, counter), src_dir_fd=fd, dst_dir_fd=top_fd)
            else:
                os.unlink(child, dir_fd=fd)
    finally:
        os.close(fd)


def _remove_tree(parent_fd: int, name: str) -> None:
    """Remove the directory ``name`` in ``parent_fd`` and everything below it.

    Links are unlinked, never followed, and directories are opened with
    ``O_NOFOLLOW``. Subdirectories are flattened into the directory being
    removed as they are found, so no more than two directories are open at a
    time and a deep hostile tree costs neither stack, descriptors nor
    quadratic time.
    """
    top_fd = os.open(name, O_DIR, dir_fd=parent_fd)
    try:
        counter = itertools.count()
        while listing := _list_dir(top_fd):
            for child, is_dir in listing:
                if is_dir:
                    _empty_into(top_fd, child, counter)
                    os.rmdir(child, dir_fd=top_fd)
                else:
                    os.unlink(child, dir_fd=top_fd)
    finally:
        os.close(top_fd)
    os.rmdir(name, dir_fd=parent_fd)


def remove_entry(dir_fd: int, name: str) -> None:
    """Remove ``name`` in ``dir_fd``: a directory with its contents, anything else itself."""
    st = lstat_at(dir_fd, name)
    if st is None:
        return
    if stat.S_ISDIR(st.st_mode):
        _remove_tree(dir_fd, name)
    else:
        os.unlink(name, dir_fd=dir_fd)


# ------------------------------------------------------------------ deleting


_FD_DEPTH = 128
"""Directory levels of :func:`delete_matching`'s walk that keep a descriptor open."""


@dataclass
class _Frame:
    """A directory of the deletion walk whose subdirectories are still to be visited."""

    parts: list[str]
    fd: int | None
    subdirs: list[str]

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _scan_for_deletion(
    root_fd: int,
    parent: _Frame | None,
    name: str | None,
    match: Callable[[str], bool],
    deleted: list[str],
) -> _Frame:
    """Open one directory, delete its matching entries; the frame of what is left.

    The directory is opened from its parent's descriptor (or, past
    :data:`_FD_DEPTH` levels, again from the root), never through a link.
    """
    if parent is None or name is None:
        parts: list[str] = []
        fd = reopen_dir(root_fd)
    else:
        parts = [*parent.parts, name]
        if parent.fd is None:
            fd = open_chain(root_fd, parts)
        else:
            fd = os.open(name, O_DIR, dir_fd=parent.fd)
    try:
        subdirs = []
        for child, is_dir in _list_dir(fd):
            image_path = join_image_path([*parts, child])
            if match(image_path):
                remove_entry(fd, child)
                deleted.append(image_path)
            elif is_dir:
                subdirs.append(child)
    except BaseException:
        os.close(fd)
        raise
    frame = _Frame(parts, fd, subdirs[::-1])
    if len(parts) >= _FD_DEPTH:
        frame.close()
    return frame


def delete_matching(root: str, match: Callable[[str], bool]) -> list[str]:
    """Delete every image path for which ``match`` is true; return those paths.

    The tree is walked from the root in name order without following
    symlinks (a matched symlink is removed itself, never its target; a
    symlink to a directory is never descended into). A matched directory is
    removed with everything below it. The root itself is never matched.
    """
    deleted: list[str] = []
    stack: list[_Frame] = []
    root_fd = open_root(root)
    try:
        with failing("error deleting in /"):
            stack.append(_scan_for_deletion(root_fd, None, None, match, deleted))
        while stack:
            frame = stack[-1]
            if not frame.subdirs:
                stack.pop().close()
                continue
            name = frame.subdirs.pop()
            with failing(f"error deleting in {show(join_image_path([*frame.parts, name]))}"):
                stack.append(_scan_for_deletion(root_fd, frame, name, match, deleted))
    finally:
        for frame in stack:
            frame.close()
        os.close(root_fd)
    return deleted
