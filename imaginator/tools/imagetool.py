"""``imagetool``: look at and extract images in the embedded image store.

Usage: ``imagetool [-stateDir DIR] <command> [arguments]``. Flags are written
Go style (``-stateDir=/x``, ``-stateDir /x``, ``--stateDir=/x``). Exit status:
0 on success, 1 when the command fails (unknown image, I/O error), 2 for bad
arguments.
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys
import tarfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO, TextIO

from imaginator.image.model import (
    ComputedRegularInode,
    DirectoryInode,
    Image,
    RegularInode,
    SpecialInode,
    SymlinkInode,
    dumps_image,
)
from imaginator.image.unpack import UnpackError, list_entries, materialise
from imaginator.store.base import StoreError
from imaginator.store.local import LocalImageStore

PROGRAM = "imagetool"
DEFAULT_STATE_DIR = "/var/lib/imaginator"
USAGE = f"""\
Usage: {PROGRAM} [-stateDir DIR] <command> [arguments]

Commands:
  list                 list the names of all images
  show NAME            print the image record as JSON
  get NAME DIR         write the image's file tree into DIR (new or empty)
  tar NAME FILE        write the image's file tree as a tar archive (FILE - = stdout)
  list-packages NAME   list the image's packages: name version size

Flags:
  -stateDir DIR        the imaginator state directory (default {DEFAULT_STATE_DIR});
                       the store is DIR/store
"""
_HELP_FLAGS = {"h", "help"}


class UsageError(Exception):
    """Bad command-line arguments (exit status 2)."""


class CommandError(Exception):
    """A command failed (exit status 1)."""


@dataclass
class Arguments:
    """The parsed command line."""

    state_dir: str = DEFAULT_STATE_DIR
    command: str = ""
    args: list[str] = field(default_factory=list)
    help: bool = False


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``imagetool`` with ``argv`` (default ``sys.argv[1:]``); returns
    the exit status."""
    try:
        arguments = parse_args(sys.argv[1:] if argv is None else list(argv))
    except UsageError as exc:
        print(f"{PROGRAM}: {exc} (try {PROGRAM} -h)", file=sys.stderr)
        return 2
    if arguments.help:
        sys.stdout.write(USAGE)
        return 0
    try:
        store = LocalImageStore(os.path.join(arguments.state_dir, "store"), create=False)
        COMMANDS[arguments.command][1](store, *arguments.args)
    except (CommandError, StoreError, UnpackError, tarfile.TarError) as exc:
        print(f"{PROGRAM}: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader went away (``imagetool list | head``): not an error worth a word.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:
        print(f"{PROGRAM}: {_describe_os_error(exc)}", file=sys.stderr)
        return 1
    return 0


def parse_args(argv: list[str]) -> Arguments:
    """Parse Go-style flags, then the command and its arguments."""
    result = Arguments()
    i = 0
    while i < len(argv) and argv[i].startswith("-") and argv[i] != "-":
        arg = argv[i]
        i += 1
        if arg == "--":
            break
        name, has_value, value = arg.lstrip("-").partition("=")
        if name in _HELP_FLAGS:
            return Arguments(help=True)
        if name != "stateDir":
            raise UsageError(f"flag provided but not defined: -{name}")
        if not has_value:
            if i >= len(argv):
                raise UsageError("flag needs an argument: -stateDir")
            value, i = argv[i], i + 1
        if not value:
            raise UsageError("-stateDir: empty directory name")
        result.state_dir = value
    rest = argv[i:]
    if any(arg.lstrip("-") in _HELP_FLAGS and arg.startswith("-") for arg in rest):
        return Arguments(help=True)
    if not rest:
        raise UsageError("missing command")
    result.command, result.args = rest[0], rest[1:]
    _check_command(result.command, result.args)
    return result


def _check_command(command: str, args: list[str]) -> None:
    if command not in COMMANDS:
        raise UsageError(f"unknown command: {command}")
    expected = COMMANDS[command][0]
    if len(args) != len(expected):
        wanted = " ".join(expected) if expected else "no arguments"
        raise UsageError(f"{command}: expected {wanted}")


# ---------------------------------------------------------------------- commands


def _load_image(store: LocalImageStore, name: str) -> Image:
    image = store.get_image(name)
    if image is None:
        raise CommandError(f"unknown image: {name}")
    return image


def cmd_list(store: LocalImageStore) -> None:
    """Print every image name."""
    _write_lines(sys.stdout, store.list_images())


def cmd_show(store: LocalImageStore, name: str) -> None:
    """Print the image record as 4-space-indented JSON."""
    sys.stdout.write(_printable(dumps_image(_load_image(store, name), indent=4)) + "\n")


def cmd_list_packages(store: LocalImageStore, name: str) -> None:
    """Print ``name version size`` for each package."""
    packages = _load_image(store, name).packages or ()
    _write_lines(sys.stdout, [f"{p.name} {p.version} {p.size}" for p in packages])


def cmd_get(store: LocalImageStore, name: str, directory: str) -> None:
    """Materialise the image's tree in ``directory``."""
    materialise(_load_image(store, name), store, directory)


def cmd_tar(store: LocalImageStore, name: str, filename: str) -> None:
    """Write the image's tree as a tar stream to ``filename`` (``-``: stdout)."""
    image = _load_image(store, name)
    if filename == "-":
        write_tar(image, store, sys.stdout.buffer)
        sys.stdout.buffer.flush()
        return
    try:
        with open(filename, "wb") as f:
            write_tar(image, store, f)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(filename)
        raise


def _write_lines(out: TextIO, lines: list[str]) -> None:
    out.write("".join(_printable(line) + "\n" for line in lines))


def _printable(text: str) -> str:
    """Bytes of non-UTF-8 file names become U+FFFD, as Go prints them."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


COMMANDS: dict[str, tuple[tuple[str, ...], Callable[..., None]]] = {
    "list": ((), cmd_list),
    "show": (("NAME",), cmd_show),
    "get": (("NAME", "DIR"), cmd_get),
    "tar": (("NAME", "FILE"), cmd_tar),
    "list-packages": (("NAME",), cmd_list_packages),
}


# ---------------------------------------------------------------------- tar


def write_tar(image: Image, store: LocalImageStore, out: BinaryIO) -> None:
    """Stream the image's tree as a POSIX (pax) tar archive: modes, numeric
    owners, nanosecond mtimes, hard links, symlinks and devices; computed
    files as empty files. Directories and symlinks, which have no mtime in
    the image, get the image's creation time."""
    fs = image.file_system
    if fs is None:
        raise CommandError("image has no file-system")
    entries = list_entries(fs)
    default_mtime = image.created_on // 10**9 if image.created_on > 0 else 0
    first_paths: dict[int, str] = {}
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        root = fs.root
        tar.addfile(_info(".", tarfile.DIRTYPE, root.mode, root.uid, root.gid, default_mtime))
        for entry in entries:
            inode = entry.inode
            if entry.inum in first_paths:
                tar.addfile(_hard_link_info(entry.relative, first_paths[entry.inum], inode))
                continue
            if not isinstance(inode, DirectoryInode):
                first_paths[entry.inum] = entry.relative
            _add_member(tar, store, entry.relative, inode, default_mtime)


def _add_member(
    tar: tarfile.TarFile, store: LocalImageStore, name: str, inode: object, default_mtime: int
) -> None:
    match inode:
        case DirectoryInode():
            tar.addfile(
                _info(name, tarfile.DIRTYPE, inode.mode, inode.uid, inode.gid, default_mtime)
            )
        case RegularInode():
            info = _info(name, tarfile.REGTYPE, inode.mode, inode.uid, inode.gid)
            _set_mtime(info, inode.mtime_seconds, inode.mtime_nanoseconds)
            info.size = inode.size
            if inode.size == 0:
                tar.addfile(info)
                return
            with store.open_object(inode.hash.hex()) as data:
                if os.fstat(data.fileno()).st_size != inode.size:
                    raise CommandError(
                        f"object: {inode.hash.hex()} does not have {inode.size} bytes"
                    )
                tar.addfile(info, data)
        case ComputedRegularInode():
            tar.addfile(
                _info(name, tarfile.REGTYPE, inode.mode, inode.uid, inode.gid, default_mtime)
            )
        case SymlinkInode():
            info = _info(name, tarfile.SYMTYPE, 0o777, inode.uid, inode.gid, default_mtime)
            info.linkname = inode.symlink
            tar.addfile(info)
        case SpecialInode():
            tar.addfile(_special_info(name, inode))


def _info(name: str, kind: bytes, mode: int, uid: int, gid: int, mtime: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = stat.S_IMODE(mode)
    info.uid, info.gid = uid, gid
    info.uname = info.gname = ""
    info.mtime = mtime
    return info


def _special_info(name: str, inode: SpecialInode) -> tarfile.TarInfo:
    kinds = {stat.S_IFCHR: tarfile.CHRTYPE, stat.S_IFBLK: tarfile.BLKTYPE}
    kind = kinds.get(stat.S_IFMT(inode.mode), tarfile.FIFOTYPE)
    info = _info(name, kind, inode.mode, inode.uid, inode.gid)
    _set_mtime(info, inode.mtime_seconds, inode.mtime_nanoseconds)
    if kind != tarfile.FIFOTYPE:
        info.devmajor, info.devminor = os.major(inode.rdev), os.minor(inode.rdev)
    return info


def _hard_link_info(name: str, target: str, inode: object) -> tarfile.TarInfo:
    mode = getattr(inode, "mode", 0o777)
    info = _info(name, tarfile.LNKTYPE, mode, getattr(inode, "uid", 0), getattr(inode, "gid", 0))
    if isinstance(inode, RegularInode | SpecialInode):
        _set_mtime(info, inode.mtime_seconds, inode.mtime_nanoseconds)
    info.linkname = target
    return info


def _set_mtime(info: tarfile.TarInfo, seconds: int, nanoseconds: int) -> None:
    """Whole seconds in the header; the exact time in a pax record."""
    info.mtime = seconds
    if nanoseconds:
        total = seconds * 10**9 + nanoseconds
        sign = "-" if total < 0 else ""
        whole, fraction = divmod(abs(total), 10**9)
        info.pax_headers = {"mtime": f"{sign}{whole}.{fraction:09d}".rstrip("0")}


def _describe_os_error(exc: OSError) -> str:
    if exc.filename:
        return f"{exc.filename}: {exc.strerror or exc}"
    return str(exc.strerror or exc)


if __name__ == "__main__":
    sys.exit(main())
