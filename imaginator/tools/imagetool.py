"""``imagetool``: look at, extract and export images in the embedded image
store, or on a Dominator imageserver (``-imageServerHostname``, see
``imaginator.tools.imagetool_remote``).

Usage: ``imagetool [flags...] command [flags...] [args...]``. ``FLAGS`` is the
flag table; :mod:`imaginator.goformats.goflags` parses it by Go's rules, as
for ``imaginator`` and ``builder-tool`` (``-stateDir=/x``, ``-stateDir /x``,
``--stateDir=/x``, a bare ``-json``, which takes a value only as
``-json=false``; ``--`` ends the flags; ``-h``), before the command and again
right after it. Exit status: 0 on success, 1 when the command fails (unknown
image, I/O error, registry error), 2 for a bad command line (one line naming
the flag or command and what it wants, then ``see imagetool -h``). The export
commands (``oci``, ``push``, ``sbom``, ``diff``) are in
``imaginator.tools.imagetool_export``.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tarfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO, TextIO

from imaginator.export.registry import RegistryError
from imaginator.export.source import ExportError
from imaginator.export.tarlayer import write_image_tar
from imaginator.goformats.goflags import (
    FlagError,
    FlagSet,
    FlagSpec,
    HelpRequested,
    ParsedArgs,
    go_quote,
)
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
SBOM_FORMATS = ("spdx", "cyclonedx")

#: The flags, defaults as written on a command line. ``-certDirectory``'s
#: ``~`` is expanded when it is used.
FLAGS: tuple[FlagSpec, ...] = (
    FlagSpec(
        "CAfile",
        "string",
        DEFAULT_CA_FILE,
        "Name of `file` containing the CA that signs the imageserver's certificate",
    ),
    FlagSpec(
        "certDirectory",
        "string",
        DEFAULT_CERT_DIRECTORY,
        "Name of `directory` containing user SSL certificates: its best NAME.cert and\n"
        "NAME.key pair is presented to the imageserver",
    ),
    FlagSpec(
        "imageServerHostname",
        "string",
        "",
        "Hostname of image server to read images from (empty: the embedded store)",
    ),
    FlagSpec(
        "imageServerPortNum", "uint", str(DEFAULT_IMAGE_SERVER_PORT), "Port number of image server"
    ),
    FlagSpec("json", "bool", "false", "If true, diff prints JSON"),
    FlagSpec(
        "registryCA",
        "string",
        "",
        "push: name of `file` containing the CA certificates (PEM) that sign the\n"
        "registry's certificate (empty: the system's)",
    ),
    FlagSpec(
        "registryCredentials",
        "string",
        "",
        "push: name of `file` containing the registry credentials: Docker's\n"
        "config.json, or a JSON object with username and password (empty: none)",
    ),
    FlagSpec(
        "registryPlainHttp",
        "bool",
        "false",
        "If true, push uses plain HTTP even to a registry not on a loopback address",
    ),
    FlagSpec("sbomFormat", "string", "spdx", "sbom: the document's `format`, spdx or cyclonedx"),
    FlagSpec(
        "stateDir",
        "string",
        DEFAULT_STATE_DIR,
        "Name of state `directory` (the embedded image store is directory/store)",
    ),
    FlagSpec(
        "summary",
        "bool",
        "false",
        "If true, show prints name, dates, source, commit, sizes, counts, packages, tags,\n"
        "filter, triggers and build log on one screen",
    ),
)
FLAG_SET = FlagSet(FLAGS)
#: What a string flag given as empty is told it wants (empty is never meant:
#: most likely an unset variable in a script).
_NOT_EMPTY = {
    "CAfile": "a file name",
    "certDirectory": "a directory name",
    "imageServerHostname": "a host name",
    "registryCA": "a file name",
    "registryCredentials": "a file name",
    "stateDir": "a directory name",
}
FOOTER = "SOURCE_DATE_EPOCH (seconds) clamps every time written by tar, oci, push and sbom.\n"
__all__ = [
    "COMMANDS",
    "DEFAULT_STATE_DIR",
    "FLAGS",
    "main",
    "parse_args",
    "usage_text",
    "write_tar",
]


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``imagetool`` with ``argv`` (default ``sys.argv[1:]``); returns
    the exit status."""
    try:
        arguments = parse_args(sys.argv[1:] if argv is None else list(argv))
        arguments.source_date_epoch = source_date_epoch(os.environ)
    except HelpRequested:
        sys.stdout.write(usage_text())
        return 0
    except (FlagError, UsageError) as exc:
        sys.stderr.write(error_line(str(exc)))
        return 2
    try:
        command = COMMANDS[arguments.command].run
        if arguments.image_server_hostname:
            run_remote(arguments, command)
        else:
            store = LocalImageStore(os.path.join(arguments.state_dir, "store"), create=False)
            command(store, arguments, *arguments.args)
    except UsageError as exc:
        sys.stderr.write(error_line(str(exc)))
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


def error_line(message: str) -> str:
    """The one line a bad command line gets: ``imagetool: <what>; see imagetool -h``."""
    return f"{PROGRAM}: {message}; see {PROGRAM} -h\n"


def usage_text() -> str:
    """The usage: the flags as Go's ``flag.PrintDefaults`` writes them, then
    the commands."""
    lines = [
        f"Usage: {PROGRAM} [flags...] command [flags...] [args...]",
        "Common flags:",
        FLAG_SET.usage().rstrip("\n"),
        "Commands:",
    ]
    heads = {name: f"  {' '.join((name, *command.args))}" for name, command in COMMANDS.items()}
    width = max(len(head) for head in heads.values()) + 2
    for name, command in COMMANDS.items():
        first, *more = command.help.split("\n")
        lines.append(f"{heads[name]:<{width}}{first}")
        lines.extend(" " * width + line for line in more)
    return "\n".join(lines) + "\n" + FOOTER


def source_date_epoch(environ: Mapping[str, str]) -> int | None:
    """``SOURCE_DATE_EPOCH`` as seconds, ``None`` when unset or empty."""
    value = environ.get("SOURCE_DATE_EPOCH", "")
    if not value:
        return None
    if not value.isascii() or not value.isdigit() or len(value) > 12:
        raise UsageError(f"SOURCE_DATE_EPOCH: expected seconds since 1970, got {value[:40]!r}")
    return int(value)


def parse_args(argv: Sequence[str]) -> Arguments:
    """Parse the flags, the command, the command's flags and its arguments.

    Flags follow Go's rules (:mod:`imaginator.goformats.goflags`) before the
    command and again right after it (``show -summary NAME``, ``diff -json
    OLD NEW``); the first argument that is not a flag, or ``--``, ends each
    run of flags. Raises ``HelpRequested`` for ``-h``/``-help`` and
    ``FlagError``, naming the flag or command and what is wanted, for the rest.
    """
    values = FLAG_SET.defaults()
    parsed = _parse_flags(argv, values)
    if not parsed.args:
        raise FlagError(f"missing command: want one of {', '.join(COMMANDS)}")
    name = parsed.args[0]
    command = COMMANDS.get(name)
    if command is None:
        hint = parsed.hint()
        raise FlagError(
            f"unknown command {go_quote(name)}: want one of {', '.join(COMMANDS)}"
            + (f" ({hint})" if hint else "")
        )
    after = _parse_flags(parsed.args[1:], values)
    if len(after.args) != len(command.args):
        wanted = " ".join(command.args) or "no arguments"
        got = " ".join(go_quote(arg) for arg in after.args) or "no arguments"
        hint = after.hint()
        raise FlagError(f"{name} wants {wanted}, got {got}" + (f" ({hint})" if hint else ""))
    return Arguments(
        state_dir=str(values["stateDir"]),
        command=name,
        args=after.args,
        json=bool(values["json"]),
        summary=bool(values["summary"]),
        sbom_format=str(values["sbomFormat"]),
        registry_credentials=str(values["registryCredentials"]),
        registry_ca=str(values["registryCA"]),
        registry_plain_http=bool(values["registryPlainHttp"]),
        image_server_hostname=str(values["imageServerHostname"]),
        image_server_port=int(values["imageServerPortNum"]),
        cert_directory=str(values["certDirectory"]),
        ca_file=str(values["CAfile"]),
    )


def _parse_flags(argv: Sequence[str], values: dict[str, Any]) -> ParsedArgs:
    """One run of flags from ``argv`` into ``values``, each checked beyond its
    type (a port number, an SBOM format, no empty names)."""
    parsed = FLAG_SET.parse(argv)
    for spec, text, value in parsed.flags:
        wanted = _wanted(spec.name, value)
        if wanted:
            raise FlagError(f"invalid value {go_quote(text)} for flag -{spec.name}: {wanted}")
    parsed.apply(values)
    return parsed


def _wanted(name: str, value: object) -> str:
    """What flag ``name`` wants instead of ``value``; empty when it is fine."""
    if name == "imageServerPortNum" and not (isinstance(value, int) and 0 < value < 65536):
        return "want a port number from 1 to 65535"
    if name == "sbomFormat" and value not in SBOM_FORMATS:
        return f"want {' or '.join(SBOM_FORMATS)}"
    if name in _NOT_EMPTY and value == "":
        return f"want {_NOT_EMPTY[name]}"
    return ""


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


@dataclass(frozen=True)
class Command:
    """One command: the arguments it wants, its line (or lines) of the usage
    and the function that runs it (with the store, the parsed command line
    and the arguments)."""

    args: tuple[str, ...]
    help: str
    run: Callable[..., None]


COMMANDS: dict[str, Command] = {
    "list": Command((), "list the names of all images", cmd_list),
    "show": Command(("NAME",), "print the image record as JSON (-summary: one screen)", cmd_show),
    "get": Command(("NAME", "DIR"), "write the image's file tree into DIR (new or empty)", cmd_get),
    "tar": Command(
        ("NAME", "FILE"),
        "write the image's file tree as a tar archive (FILE - = stdout)",
        cmd_tar,
    ),
    "list-packages": Command(
        ("NAME",), "list the image's packages: name version size", cmd_list_packages
    ),
    "oci": Command(
        ("NAME", "DIR"),
        "write the image as an OCI image layout into DIR (new, empty or an OCI\n"
        "layout already); with its source images' layers and its SBOM",
        cmd_oci,
    ),
    "push": Command(
        ("NAME", "REF"),
        "push the image and its SBOM to an OCI registry\n"
        "(REF: host[:port]/repository[:tag], default tag latest)",
        cmd_push,
    ),
    "sbom": Command(("NAME",), "print the image's SBOM (SPDX 2.3 JSON, or -sbomFormat)", cmd_sbom),
    "diff": Command(("OLD", "NEW"), "print what changed from image OLD to image NEW", cmd_diff),
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
