"""Mounts made and removed with ``mount(2)``/``umount2(2)``: overlay build
roots, and the detaching of what a killed daemon left mounted.

Every call here blocks: run it in the thread pool.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import stat
from typing import Any

# index=on keeps hard links whole when one of their names is copied up;
# redirect_dir=on lets directories of the lower layer be renamed. Kernels or
# file-systems without them get a plain overlay.
_OPTION_SETS = (("index=on", "redirect_dir=on"), ())
_MNT_DETACH = 2
_UMOUNT_NOFOLLOW = 8


class TreeCacheUnavailable(Exception):
    """The tree cache or overlay mounts cannot be used here: unpack instead."""


_libc: Any = None


def _c() -> Any:
    global _libc
    if _libc is None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mount.argtypes = [
            ctypes.c_char_p,
            ctypes.c_char_p,
            ctypes.c_char_p,
            ctypes.c_ulong,
            ctypes.c_char_p,
        ]
        libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
        _libc = libc
    return _libc


def _check(result: int, path: str) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), path)


def _escape(path: str) -> str:
    """A path as an overlay mount option value (``:`` separates lower layers,
    ``,`` options)."""
    return path.replace("\\", "\\\\").replace(":", "\\:").replace(",", "\\,")


def mount_overlay(lower: str, upper: str, work: str, target: str) -> None:
    """Mount an overlay of ``lower`` (read-only) and ``upper`` at ``target``.

    All four must be on one file-system (else the merged tree would report
    the lower layer's device for untouched files and the scanner would skip
    them): ``TreeCacheUnavailable`` otherwise, and ``OSError`` if the kernel
    refuses the mount. ``upper`` gets the owner and mode of ``lower``'s root,
    which the merged root shows. Blocking.
    """
    lower_st = os.lstat(lower)
    for path in (upper, work, target):
        if os.lstat(path).st_dev != lower_st.st_dev:
            raise TreeCacheUnavailable(f"{path} is not on the file-system of {lower}")
    os.chown(upper, lower_st.st_uid, lower_st.st_gid)
    os.chmod(upper, stat.S_IMODE(lower_st.st_mode))
    base = f"lowerdir={_escape(lower)},upperdir={_escape(upper)},workdir={_escape(work)}"
    error: OSError | None = None
    for extra in _OPTION_SETS:
        data = ",".join((base, *extra))
        try:
            _check(
                _c().mount(b"overlay", os.fsencode(target), b"overlay", 0, os.fsencode(data)),
                target,
            )
            return
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
                raise
            error = exc
            # A failed attempt may leave the work directory half set up.
            _empty_directory(work)
    assert error is not None
    raise error


def _empty_directory(path: str) -> None:
    for name in os.listdir(path):
        full = os.path.join(path, name)
        if os.path.isdir(full) and not os.path.islink(full):
            shutil.rmtree(full)
        else:
            os.unlink(full)


def unmount(target: str) -> bool:
    """Unmount ``target``; a busy mount is detached lazily. Returns whether
    it had to be lazy. Not mounted is not an error. Blocking."""
    path = os.fsencode(target)
    try:
        _check(_c().umount2(path, _UMOUNT_NOFOLLOW), target)
        return False
    except OSError as exc:
        if exc.errno == errno.EINVAL:  # not a mount point (any more)
            return False
        if exc.errno != errno.EBUSY:
            raise
    _check(_c().umount2(path, _MNT_DETACH | _UMOUNT_NOFOLLOW), target)
    return True


def _unescape_mountinfo(field: str) -> str:
    r"""Mount points in mountinfo have space, tab, newline and ``\`` as octal
    escapes."""
    if "\\" not in field:
        return field
    raw = os.fsencode(field)
    out = bytearray()
    i = 0
    while i < len(raw):
        digits = raw[i + 1 : i + 4]
        if raw[i] == 0x5C and len(digits) == 3 and all(0x30 <= d <= 0x37 for d in digits):
            out.append(int(digits, 8))
            i += 4
        else:
            out.append(raw[i])
            i += 1
    return os.fsdecode(bytes(out))


def mounts_under(path: str, mountinfo: str = "/proc/self/mountinfo") -> list[str]:
    """Mount points strictly below ``path``, the most recent (topmost) first."""
    base = os.path.realpath(path).rstrip("/") + "/"
    with open(mountinfo, encoding="utf-8", errors="surrogateescape") as handle:
        points = [_unescape_mountinfo(line.split(" ")[4]) for line in handle if line.strip()]
    under = [point for point in reversed(points) if point.startswith(base)]
    return list(dict.fromkeys(under))  # a point mounted over twice is detached at once


def unmount_all_under(path: str) -> list[str]:
    """Detach every mount below ``path`` (what a killed daemon left); returns
    their mount points. ``path`` itself stays mounted if it is a mount point.
    Blocking."""
    detached = []
    for point in mounts_under(path):
        try:
            _check(_c().umount2(os.fsencode(point), _MNT_DETACH | _UMOUNT_NOFOLLOW), point)
        except OSError as exc:
            # Gone already: detaching a parent detaches what is mounted below it.
            if exc.errno not in (errno.EINVAL, errno.ENOENT):
                raise
        detached.append(point)
    return detached


def syncfs(path: str) -> None:
    """Flush the file-system holding ``path`` (``syncfs(2)``; ``sync`` where
    the C library lacks it). Blocking."""
    syncfs = getattr(_c(), "syncfs", None)
    if syncfs is None:
        os.sync()
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        _check(syncfs(fd), path)
    finally:
        os.close(fd)
