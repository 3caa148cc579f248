"""The daemon's command-line flags: the Go imaginator's names, defaults and syntax.

``FLAGS`` is the daemon's table; :mod:`imaginator.goformats.goflags` parses
with it by Go's rules (the one parser of every program here). The table drives
the twistd ``Options`` class in ``tap.py``, the ``-h`` text and the
translation of Go-style arguments (``-portNum=6976``, ``-portNum 6976``, a bare
``-permitInsecureMode``) into the ``--name=value`` form that twistd's option
parser understands. Flag files (``/etc/imaginator/flags.default`` and
``flags.extra``) hold ``name = value`` lines and are read before the real
command line, which overrides them. Durations are ``seconds`` flags: Go
syntax, float seconds.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from imaginator.goformats.goflags import (
    FlagError,
    FlagSet,
    FlagSpec,
    HelpRequested,
    go_quote,
)

__all__ = [
    "FLAGS",
    "FLAGS_BY_NAME",
    "FLAG_FILES",
    "FlagError",
    "FlagSpec",
    "HelpRequested",
    "error_line",
    "help_text",
    "normalise_argv",
    "parse_flag_file",
    "read_flag_files",
]

PROGRAM = "imaginator"
FLAG_FILES = ("/etc/imaginator/flags.default", "/etc/imaginator/flags.extra")

FLAGS: tuple[FlagSpec, ...] = (
    FlagSpec("CAfile", "string", "/etc/ssl/CA.pem", "Name of file containing the root of trust"),
    FlagSpec("accessLogFile", "string", "", "File to append web access log lines to (empty: none)"),
    FlagSpec(
        "buildLogDir",
        "string",
        "/var/log/imaginator/builds",
        "Name of directory to write build logs to (empty disables the archive)",
    ),
    FlagSpec("buildLogQuota", "size", "100MiB", "Log quota for build log archive directory"),
    FlagSpec(
        "certFile", "string", "/etc/ssl/imaginator/cert.pem", "Name of file containing the cert"
    ),
    FlagSpec(
        "configurationUrl",
        "string",
        "file:///etc/imaginator/conf.json",
        "URL containing configuration (file:// or http(s)://)",
    ),
    FlagSpec(
        "imageRebuildInterval",
        "seconds",
        "1h",
        "time between automatic rebuilds of images (0 disables the timer)",
    ),
    FlagSpec(
        "imageServerHostname",
        "string",
        "",
        "Hostname of image server (empty: use the embedded image store in stateDir)",
    ),
    FlagSpec("imageServerPortNum", "uint", "6971", "Port number of image server"),
    FlagSpec("keyFile", "string", "/etc/ssl/imaginator/key.pem", "Name of file containing the key"),
    FlagSpec("logbufLines", "uint", "1024", "Number of recent daemon log lines to show"),
    FlagSpec(
        "maximumBuildDuration",
        "seconds",
        "24h",
        "Maximum time a build command may run (anything under 1s means 24h)",
    ),
    FlagSpec(
        "maximumConcurrentBuilds",
        "uint",
        "2",
        "Maximum number of builds running at once (0 means unlimited)",
    ),
    FlagSpec(
        "maximumConcurrentBuildsPerUser",
        "uint",
        "1",
        "Maximum number of concurrent BuildImage calls per unprivileged user (0: unlimited)",
    ),
    FlagSpec(
        "maximumExpirationDuration",
        "seconds",
        "24h",
        "Maximum expiration time for regular users",
    ),
    FlagSpec(
        "maximumExpirationDurationPrivileged",
        "seconds",
        "730h",
        "Maximum expiration time for privileged users",
    ),
    FlagSpec(
        "minimumExpirationDuration",
        "seconds",
        "15m",
        "Minimum permitted expiration duration",
    ),
    FlagSpec(
        "permitInsecureMode",
        "bool",
        "false",
        "If true, serve RPC without TLS on /_SRPC_/unsecured/JSON, to anyone, with all powers",
    ),
    FlagSpec("portNum", "uint", "6975", "Port number to allocate and listen on for HTTP/RPC"),
    FlagSpec(
        "presentationImageServerHostname",
        "string",
        "",
        "Hostname of image server for links presented on the dashboards",
    ),
    FlagSpec(
        "publishRetryDelay",
        "seconds",
        "1m",
        "Delay before retrying a failed push to a registry (doubled each time; 5 attempts in all)",
    ),
    FlagSpec(
        "registryCA",
        "string",
        "",
        "CA certificates (PEM) to verify registries with when publishing (empty: the system's)",
    ),
    FlagSpec(
        "registryCredentials",
        "string",
        "",
        "Registry credentials for publishing: Docker's config.json, or {username, password}",
    ),
    FlagSpec(
        "slaveDriverConfigurationFile",
        "string",
        "",
        "Name of configuration file for build slaves (not supported yet)",
    ),
    FlagSpec(
        "srpcTrustedGroups",
        "list",
        "",
        "Comma-separated groups whose members may call every RPC method",
    ),
    FlagSpec(
        "srpcTrustedUsers",
        "list",
        "",
        "Comma-separated users who may call every RPC method",
    ),
    FlagSpec("stateDir", "string", "/var/lib/imaginator", "Name of state directory"),
    FlagSpec(
        "variablesFile",
        "string",
        "",
        "A JSON file (or NAME=Value lines) of secret variables for expansion",
    ),
    FlagSpec(
        "plainVariablesFile",
        "string",
        "",
        "A JSON file (or NAME=Value lines) of plain variables for expansion (never redacted)",
    ),
)


FLAG_SET = FlagSet(FLAGS)
FLAGS_BY_NAME: dict[str, FlagSpec] = {flag.name: flag for flag in FLAGS}


def normalise_argv(argv: Sequence[str]) -> list[str]:
    """Check Go-style flags and translate them into ``--name=value`` arguments.

    Raises ``HelpRequested`` for ``-h``/``-help`` and ``FlagError`` for a bad
    flag or value, and for any argument that is not a flag: the daemon takes
    none (Go's imaginator would ignore it; here it is most likely a mistake
    such as ``-permitInsecureMode false``).
    """
    parsed = FLAG_SET.parse(argv)
    if parsed.args:
        hint = parsed.hint()
        reason = f" ({hint})" if hint else ""
        raise FlagError(
            f"unexpected argument {go_quote(parsed.args[0])}: {PROGRAM} takes only flags{reason}"
        )
    return [f"--{spec.name}={text}" for spec, text, _value in parsed.flags]


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
        value = value.strip()
        try:
            FLAG_SET.lookup(name).parse(value)
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


def help_text(program: str = PROGRAM) -> str:
    """Usage text listing every flag with its default, as Go's ``flag`` package does."""
    return f"Usage: {program} [flags...]\nCommon flags:\n{FLAG_SET.usage()}"


def error_line(exc: FlagError, program: str = PROGRAM) -> str:
    """The one line a bad command line gets: ``imaginator: <what>; see imaginator -h``."""
    return f"{program}: {exc}; see {program} -h\n"
