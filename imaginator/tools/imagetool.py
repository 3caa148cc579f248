"""``imagetool``: look at, extract and export images in the embedded image
store, or on a Dominator imageserver (``-imageServerHostname``, see
``imaginator.tools.imagetool_remote``).

Usage: ``imagetool [flags] <command> [flags] [arguments]``. Flags are written
Go style (``-stateDir=/x``, ``-stateDir /x``, ``--stateDir=/x``, ``-json``),
before the command or right after it. Exit status: 0 on success, 1 when the
command fails (unknown image, I/O error, registry error), 2 for bad
arguments. The export commands (``oci``, ``push``, ``sbom``, ``diff``) are in
``imaginator.tools.imagetool_export``.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tarfile
from collections.abc import Callable, Sequence
from typing import BinaryIO, TextIO

from imaginator.export.registry import RegistryError
from imaginator.export.source import ExportError
from imaginator.export.tarlayer import write_image_tar
from imaginator.image.model import Image, dumps_image
from imaginator.image.unpack import UnpackError, materialise
from imaginator.store.base import StoreError
from imaginator.store.local import LocalImageStore
from imaginator.tools.imagetool_base import (
    DEFAULT_CA_FILE,
    DEFAULT_CERT_DIRECTORY,
    DEFAULT_IMAGE_SERVER_PORT,
    DEFAULT_STATE_DIR,
    Arguments,
    CommandError,
    UsageError,
    load_image,
    printable,
)
from imaginator.tools.imagetool_export import cmd_diff, cmd_oci, cmd_push, cmd_sbom
from imaginator.tools.imagetool_remote import run_remote
from imaginator.tools.imagetool_summary import summary_lines

PROGRAM = "imagetool"
USAGE = f"""\
Usage: {PROGRAM} [flags] <command> [flags] [arguments]

Commands:
  list                 list the names of all images
  show NAME            print the image record as JSON (-summary: one screen)
  get NAME DIR         write the image's file tree into DIR (new or empty)
  tar NAME FILE        write the image's file tree as a tar archive (FILE - = stdout)
  list-packages NAME   list the image's packages: name version size
  oci NAME DIR         write the image as an OCI image layout into DIR (new, empty
                       or an OCI layout already); with its source images' layers
                       and its SBOM
  push NAME REF        push the image and its SBOM to an OCI registry
                       (REF: host[:port]/repository[:tag], default tag latest)
  sbom NAME            print the image's SBOM (SPDX 2.3 JSON, or -sbomFormat)
  diff OLD NEW         print what changed from image OLD to image NEW

Flags:
  -stateDir DIR        the imaginator state directory (default {DEFAULT_STATE_DIR});
                       the store is DIR/store
  -imageServerHostname HOST
                       read the images of this Dominator imageserver instead
                       of the embedded store
  -imageServerPortNum PORT
                       its port (default {DEFAULT_IMAGE_SERVER_PORT})
  -certDirectory DIR   the client certificate for the imageserver: the best
                       NAME.cert/NAME.key pair of DIR (default {DEFAULT_CERT_DIRECTORY})
  -CAfile FILE         the CA the imageserver's certificate must chain to
                       (default {DEFAULT_CA_FILE})
  -json                diff: print JSON
  -summary             show: name, dates, source, commit, sizes, counts, packages,
                       tags, filter, triggers and build log on one screen
  -sbomFormat FORMAT   sbom: spdx (default) or cyclonedx
  -registryCredentials FILE
                       push: credentials (Docker's config.json, or a JSON object
                       with username and password)
  -registryCA FILE     push: the CA certificates that sign the registry's
                       certificate (default: the system's)
  -registryPlainHttp   push: use plain HTTP even for a registry that is not on
                       a loopback address

SOURCE_DATE_EPOCH (seconds) clamps every time written by tar, oci, push and sbom.
"""
_HELP_FLAGS = {"h", "help"}
#: Flag name -> attribute of ``Arguments``.
STRING_FLAGS = {
    "stateDir": "state_dir",
    "imageServerHostname": "image_server_hostname",
    "imageServerPortNum": "image_server_port",
    "certDirectory": "cert_directory",
    "CAfile": "ca_file",
    "sbomFormat": "sbom_format",
    "registryCredentials": "registry_credentials",
    "registryCA": "registry_ca",
}
__all__ = ["COMMANDS", "DEFAULT_STATE_DIR", "main", "parse_args", "write_tar"]
BOOL_FLAGS = {"json": "json", "registryPlainHttp": "registry_plain_http", "summary": "summary"}
_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_FALSE = {"0", "f", "F", "FALSE", "false", "False"}


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``imagetool`` with ``argv`` (default ``sys.argv[1:]``); returns
    the exit status."""
    try:
        arguments = parse_args(sys.argv[1:] if argv is None else list(argv))
        if not arguments.help:
            arguments.source_date_epoch = source_date_epoch(os.environ)
    except UsageError as exc:
        print(f"{PROGRAM}: {exc} (try {PROGRAM} -h)", file=sys.stderr)
        return 2
    if arguments.help:
        sys.stdout.write(USAGE)
        return 0
    try:
        command = COMMANDS[arguments.command][1]
        if arguments.image_server_hostname:
            run_remote(arguments, command)
        else:
            store = LocalImageStore(os.path.join(arguments.state_dir, "store"), create=False)
            command(store, arguments, *arguments.args)
    except UsageError as exc:
        print(f"{PROGRAM}: {exc} (try {PROGRAM} -h)", file=sys.stderr)
        return 2
    except (
        CommandError,
        StoreError,
        UnpackError,
        ExportError,
        RegistryError,
        tarfile.TarError,
    ) as exc:
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


def source_date_epoch(environ: dict[str, str] | os._Environ[str]) -> int | None:
    """``SOURCE_DATE_EPOCH`` as seconds, ``None`` when unset or empty."""
    value = environ.get("SOURCE_DATE_EPOCH", "")
    if not value:
        return None
    if not value.isascii() or not value.isdigit() or len(value) > 12:
        raise UsageError(f"SOURCE_DATE_EPOCH: expected seconds since 1970, got {value[:40]!r}")
    return int(value)


def parse_args(argv: list[str]) -> Arguments:
    """Parse Go-style flags, the command, its flags and its arguments."""
    result = Arguments()
    i = _parse_flags(argv, 0, result)
    if result.help:
        return Arguments(help=True)
    rest = argv[i:]
    if any(arg.lstrip("-") in _HELP_FLAGS and arg.startswith("-") for arg in rest):
        return Arguments(help=True)
    if not rest:
        raise UsageError("missing command")
    result.command = rest[0]
    j = _parse_flags(rest, 1, result)
    result.args = rest[j:]
    _check_command(result.command, result.args)
    if result.sbom_format not in ("spdx", "cyclonedx"):
        raise UsageError(f"-sbomFormat: expected spdx or cyclonedx, got {result.sbom_format!r}")
    return result


def _parse_flags(argv: list[str], i: int, result: Arguments) -> int:
    """Parse flags from ``argv[i]`` up to the first argument that is not one;
    returns its index."""
    while i < len(argv) and argv[i].startswith("-") and argv[i] != "-":
        arg = argv[i]
        i += 1
        if arg == "--":
            break
        name, has_value, value = arg.lstrip("-").partition("=")
        if name in _HELP_FLAGS:
            result.help = True
            return i
        if name in BOOL_FLAGS:
            if has_value and value not in _TRUE | _FALSE:
                raise UsageError(f"invalid boolean value {value!r} for -{name}")
            setattr(result, BOOL_FLAGS[name], not has_value or value in _TRUE)
            continue
        if name not in STRING_FLAGS:
            raise UsageError(f"flag provided but not defined: -{name}")
        if not has_value:
            if i >= len(argv):
                raise UsageError(f"flag needs an argument: -{name}")
            value, i = argv[i], i + 1
        if not value:
            what = "directory" if name == "stateDir" else "file" if name.startswith("reg") else ""
            raise UsageError(f"-{name}: empty {what or 'value'}{' name' if what else ''}")
        if name == "imageServerPortNum":
            if not value.isascii() or not value.isdigit() or not 0 < int(value) < 65536:
                raise UsageError(f"-imageServerPortNum: expected a port number, got {value!r}")
            setattr(result, STRING_FLAGS[name], int(value))
            continue
        setattr(result, STRING_FLAGS[name], value)
    return i


def _check_command(command: str, args: list[str]) -> None:
    if command not in COMMANDS:
        raise UsageError(f"unknown command: {command}")
    expected = COMMANDS[command][0]
    if len(args) != len(expected):
        wanted = " ".join(expected) if expected else "no arguments"
        raise UsageError(f"{command}: expected {wanted}")


# ---------------------------------------------------------------------- commands


def cmd_list(store: LocalImageStore, _arguments: Arguments) -> None:
    """Print every image name."""
    _write_lines(sys.stdout, store.list_images())


def cmd_show(store: LocalImageStore, arguments: Arguments, name: str) -> None:
    """Print the image record as 4-space-indented JSON (``-summary``: a summary)."""
    image = load_image(store, name)
    if arguments.summary:
        _write_lines(sys.stdout, summary_lines(name, image))
        return
    sys.stdout.write(printable(dumps_image(image, indent=4)) + "\n")


def cmd_list_packages(store: LocalImageStore, _arguments: Arguments, name: str) -> None:
    """Print ``name version size`` for each package."""
    packages = load_image(store, name).packages or ()
    _write_lines(sys.stdout, [f"{p.name} {p.version} {p.size}" for p in packages])


def cmd_get(store: LocalImageStore, _arguments: Arguments, name: str, directory: str) -> None:
    """Materialise the image's tree in ``directory``."""
    materialise(load_image(store, name), store, directory)


def cmd_tar(store: LocalImageStore, arguments: Arguments, name: str, filename: str) -> None:
    """Write the image's tree as a tar stream to ``filename`` (``-``: stdout)."""
    image = load_image(store, name)
    sde = arguments.source_date_epoch
    if filename == "-":
        write_tar(image, store, sys.stdout.buffer, sde)
        sys.stdout.buffer.flush()
        return
    try:
        with open(filename, "wb") as f:
            write_tar(image, store, f, sde)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(filename)
        raise


def _write_lines(out: TextIO, lines: list[str]) -> None:
    out.write("".join(printable(line) + "\n" for line in lines))


COMMANDS: dict[str, tuple[tuple[str, ...], Callable[..., None]]] = {
    "list": ((), cmd_list),
    "show": (("NAME",), cmd_show),
    "get": (("NAME", "DIR"), cmd_get),
    "tar": (("NAME", "FILE"), cmd_tar),
    "list-packages": (("NAME",), cmd_list_packages),
    "oci": (("NAME", "DIR"), cmd_oci),
    "push": (("NAME", "REF"), cmd_push),
    "sbom": (("NAME",), cmd_sbom),
    "diff": (("OLD", "NEW"), cmd_diff),
}


# ---------------------------------------------------------------------- tar


def write_tar(
    image: Image, store: LocalImageStore, out: BinaryIO, source_date_epoch: int | None = None
) -> None:
    """Stream the image's tree as a reproducible POSIX (pax) tar archive
    (``imaginator.export.tarlayer``): a ``.`` entry for the root, modes,
    numeric owners, nanosecond mtimes, hard links, symlinks and devices;
    computed files as empty files. Directories and symlinks, which have no
    mtime in the image, get the image's creation time; with
    ``source_date_epoch`` no mtime is later than it."""
    if image.file_system is None:
        raise CommandError("image has no file-system")
    write_image_tar(image, store, out, source_date_epoch)


def _describe_os_error(exc: OSError) -> str:
    if exc.filename:
        return f"{exc.filename}: {exc.strerror or exc}"
    return str(exc.strerror or exc)


if __name__ == "__main__":
    sys.exit(main())
