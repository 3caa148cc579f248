"""Command-line flags: the Go imaginator's names, defaults and syntax.

The table ``FLAGS`` is the single description of every option. It drives the
twistd ``Options`` class in ``tap.py``, the ``-h`` text and the translation of
Go-style arguments (``-portNum=6976``, ``-portNum 6976``, ``-flag``) into the
``--name=value`` form that twistd's option parser understands. Flag files
(``/etc/imaginator/flags.default`` and ``flags.extra``) hold ``name = value``
lines and are read before the real command line, which overrides them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from imaginator.goformats.units import parse_duration, parse_size

FLAG_FILES = ("/etc/imaginator/flags.default", "/etc/imaginator/flags.extra")


class FlagError(Exception):
    """A bad flag name, value or flag file line."""


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "t", "true"):
        return True
    if lowered in ("0", "f", "false"):
        return False
    raise ValueError(f"invalid boolean value {text!r}")


def _parse_uint(text: str) -> int:
    value = int(text.strip(), 0)
    if value < 0:
        raise ValueError(f"invalid unsigned integer {text!r}")
    return value


def _parse_list(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


@dataclass(frozen=True)
class Flag:
    name: str
    kind: str  # "string", "uint", "bool", "duration", "size", "list"
    default: str
    help: str

    @property
    def parser(self) -> Callable[[str], Any]:
        return _PARSERS[self.kind]

    def parse(self, text: str) -> Any:
        try:
            return self.parser(text)
        except ValueError as exc:
            raise FlagError(f"invalid value {text!r} for flag -{self.name}: {exc}") from None


_PARSERS: dict[str, Callable[[str], Any]] = {
    "string": str,
    "uint": _parse_uint,
    "bool": _parse_bool,
    "duration": parse_duration,
    "size": parse_size,
    "list": _parse_list,
}

FLAGS: tuple[Flag, ...] = (
    Flag("CAfile", "string", "/etc/ssl/CA.pem", "Name of file containing the root of trust"),
    Flag("accessLogFile", "string", "", "File to append web access log lines to (empty: none)"),
    Flag(
        "buildLogDir",
        "string",
        "/var/log/imaginator/builds",
        "Name of directory to write build logs to (empty disables the archive)",
    ),
    Flag("buildLogQuota", "size", "100MiB", "Log quota for build log archive directory"),
    Flag("certFile", "string", "/etc/ssl/imaginator/cert.pem", "Name of file containing the cert"),
    Flag(
        "configurationUrl",
        "string",
        "file:///etc/imaginator/conf.json",
        "URL containing configuration (file:// or http(s)://)",
    ),
    Flag(
        "imageRebuildInterval",
        "duration",
        "1h",
        "time between automatic rebuilds of images (0 disables the timer)",
    ),
    Flag(
        "imageServerHostname",
        "string",
        "",
        "Hostname of image server (empty: use the embedded image store in stateDir)",
    ),
    Flag("imageServerPortNum", "uint", "6971", "Port number of image server"),
    Flag("keyFile", "string", "/etc/ssl/imaginator/key.pem", "Name of file containing the key"),
    Flag("logbufLines", "uint", "1024", "Number of recent daemon log lines to show"),
    Flag(
        "maximumBuildDuration",
        "duration",
        "24h",
        "Maximum time a build command may run (anything under 1s means 24h)",
    ),
    Flag(
        "maximumConcurrentBuilds",
        "uint",
        "2",
        "Maximum number of builds running at once (0 means unlimited)",
    ),
    Flag(
        "maximumConcurrentBuildsPerUser",
        "uint",
        "1",
        "Maximum number of concurrent BuildImage calls per unprivileged user (0: unlimited)",
    ),
    Flag(
        "maximumExpirationDuration",
        "duration",
        "24h",
        "Maximum expiration time for regular users",
    ),
    Flag(
        "maximumExpirationDurationPrivileged",
        "duration",
        "730h",
        "Maximum expiration time for privileged users",
    ),
    Flag(
        "minimumExpirationDuration",
        "duration",
        "15m",
        "Minimum permitted expiration duration",
    ),
    Flag(
        "permitInsecureMode",
        "bool",
        "false",
        "If true, serve RPC without TLS on /_SRPC_/unsecured/JSON, to anyone, with all powers",
    ),
    Flag("portNum", "uint", "6975", "Port number to allocate and listen on for HTTP/RPC"),
    Flag(
        "presentationImageServerHostname",
        "string",
        "",
        "Hostname of image server for links presented on the dashboards",
    ),
    Flag(
        "slaveDriverConfigurationFile",
        "string",
        "",
        "Name of configuration file for build slaves (not supported yet)",
    ),
    Flag(
        "srpcTrustedGroups",
        "list",
        "",
        "Comma-separated groups whose members may call every RPC method",
    ),
    Flag(
        "srpcTrustedUsers",
        "list",
        "",
        "Comma-separated users who may call every RPC method",
    ),
    Flag("stateDir", "string", "/var/lib/imaginator", "Name of state directory"),
    Flag(
        "variablesFile",
        "string",
        "",
        "A JSON file (or NAME=Value lines) of secret variables for expansion",
    ),
)

FLAGS_BY_NAME: dict[str, Flag] = {flag.name: flag for flag in FLAGS}
HELP_NAMES = ("h", "help")


def normalise_argv(argv: Sequence[str]) -> list[str]:
    """Translate Go-style flags into ``--name=value`` arguments.

    Accepts ``-name=value``, ``-name value``, ``--name=value``, ``--name value``
    and, for booleans, a bare ``-name``. ``-h``/``-help`` become ``--help``.
    Arguments after ``--`` or the first non-flag argument are passed through.
    """
    result: list[str] = []
    index = 0
    while index < len(argv):
        arg = argv[index]
        index += 1
        if arg == "--" or not arg.startswith("-") or arg == "-":
            result.extend(argv[index - 1 :])
            break
        body = arg[2:] if arg.startswith("--") else arg[1:]
        name, has_value, value = body.partition("=")
        if name in HELP_NAMES:
            result.append("--help")
            continue
        flag = FLAGS_BY_NAME.get(name)
        if flag is None:
            raise FlagError(f"flag provided but not defined: -{name}")
        if not has_value:
            if flag.kind == "bool":
                value = "true"
            elif index < len(argv):
                value = argv[index]
                index += 1
            else:
                raise FlagError(f"flag needs an argument: -{name}")
        flag.parse(value)
        result.append(f"--{name}={value}")
    return result


def parse_flag_file(text: str, source: str) -> list[str]:
    """``name = value`` lines (``#``/``;`` comments) as ``--name=value`` arguments."""
    result = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        name, has_value, value = line.partition("=")
        name = name.strip()
        if not has_value or not name or any(ch.isspace() for ch in name):
            raise FlagError(f"{source}: line {number}: expected name = value, got {raw!r}")
        flag = FLAGS_BY_NAME.get(name)
        if flag is None:
            raise FlagError(f"{source}: line {number}: flag provided but not defined: -{name}")
        value = value.strip()
        try:
            flag.parse(value)
        except FlagError as exc:
            raise FlagError(f"{source}: line {number}: {exc}") from None
        result.append(f"--{name}={value}")
    return result


def read_flag_files(paths: Sequence[str] = FLAG_FILES) -> list[str]:
    """Arguments from the optional flag files, in order."""
    result: list[str] = []
    for path in paths:
        if not os.path.exists(path):
            continue
        with open(path, encoding="utf-8") as handle:
            result.extend(parse_flag_file(handle.read(), path))
    return result


def help_text(program: str = "imaginator") -> str:
    """Usage text listing every flag with its default, Go style."""
    lines = [f"Usage: {program} [flags...]", "Common flags:"]
    for flag in FLAGS:
        kind = "" if flag.kind == "bool" else f" {flag.kind}"
        lines.append(f"  -{flag.name}{kind}")
        default = f" (default {flag.default!r})" if flag.default else ""
        lines.append(f"    \t{flag.help}{default}")
    return "\n".join(lines) + "\n"
