"""What both halves of ``builder-tool`` share: output, errors and files.

The remote commands (:mod:`imaginator.tools.builder_remote`), the local modes
(:mod:`imaginator.tools.builder_local`) and the entry point
(:mod:`imaginator.tools.builder_tool`) write through :class:`Io`, fail with
:class:`CommandFailed` (printed as ``<prefix>: <error>``, exit status 1) and
frame build logs with the Go tool's banners.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

from imaginator.goformats.jsonc import ConfigError
from imaginator.goformats.jsonc import loads as jsonc_loads

PROGRAM = "builder-tool"
START_BANNER = "Start of build log =========================="
END_BANNER = "End of build log ============================"
BUILD_LOG_FILE = "build.log"


@dataclass(frozen=True)
class Command:
    """A command of the tool: its arguments, where it runs and its error prefix."""

    name: str
    args: str
    min_args: int
    max_args: int
    kind: str  # "remote", "local" or "unavailable"
    prefix: str
    handler: Callable[..., Awaitable[Any]] | None = None
    needs_store: bool = False


class Io:
    """Standard output and error as binary streams, flushed after every write."""

    def __init__(self, stdout: BinaryIO, stderr: BinaryIO) -> None:
        self.stdout = stdout
        self.stderr = stderr

    @classmethod
    def standard(cls) -> Io:
        sys.stdout.flush()
        sys.stderr.flush()
        return cls(sys.stdout.buffer, sys.stderr.buffer)

    @staticmethod
    def _write(stream: BinaryIO, data: bytes | str) -> None:
        if isinstance(data, str):
            data = data.encode("utf-8", "replace")
        if data:
            stream.write(data)
            stream.flush()

    def out(self, data: bytes | str) -> None:
        self._write(self.stdout, data)

    def err(self, data: bytes | str) -> None:
        self._write(self.stderr, data)


class CommandFailed(Exception):
    """A command failed: printed as ``<prefix>: <text>``, exit status 1."""


def os_reason(exc: OSError) -> str:
    """Go's wording of an OS error: ``no such file or directory``."""
    reason = exc.strerror or str(exc)
    return reason[:1].lower() + reason[1:]


def read_variables(filename: str) -> dict[str, str] | None:
    """The ``-variablesFilename`` map (JSON with comment lines), or None without a file."""
    if not filename:
        return None
    if filename.endswith(".gob"):
        raise CommandFailed(f"{filename}: GOB files are not supported")
    try:
        with open(filename, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise CommandFailed(f"open {filename}: {os_reason(exc)}") from None
    try:
        document = jsonc_loads(data, filename)
    except ConfigError as exc:
        raise CommandFailed(str(exc)) from None
    if not isinstance(document, dict) or not all(
        isinstance(value, str) for value in document.values()
    ):
        raise CommandFailed(f"{filename}: expected a JSON object of strings")
    return document


def write_file(path: str, data: bytes, mode: int) -> None:
    """Write ``path`` through a temporary ``path~`` renamed into place, with ``mode``."""
    temporary = path + "~"
    try:
        os.unlink(temporary)
    except FileNotFoundError:
        pass
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            os.fchmod(handle.fileno(), mode)
        os.rename(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise
