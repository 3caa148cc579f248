"""``builder-tool``: ask an imaginator to build, or build locally (reference §3).

Usage: ``builder-tool [flags...] command [args...]``. This module is the entry
point: the flag table, the usage, the commands and their dispatch to the remote
half (:mod:`imaginator.tools.builder_remote`, SRPC calls to a daemon) or the
local half (:mod:`imaginator.tools.builder_local`, builds on this machine with
the embedded image store in ``-stateDir``).

Flags are Go flags, parsed by :mod:`imaginator.goformats.goflags`
(``-expiresIn=2h``, ``-expiresIn 2h``, ``--expiresIn=2h``, a bare ``-flag``
for booleans, which take a value only as ``-flag=false``); unlike Go, flags
after the command are accepted too (``--`` ends them). Before the command line,
``name=value`` lines are read from ``/etc/config/builder-tool/flags.default``
and ``flags.extra`` (a problem there is only a warning), then from
``$HOME/.config/builder-tool/flags.default`` and ``flags.extra``.

Exit status: 0 success, 1 a command failed (``<prefix>: <error>`` on standard
error) or could not dial (``Error dialing: <host:port>: <error>``), 2 a bad
flag, an unknown command or the wrong number of arguments (one line saying
what was wrong, e.g. ``builder-tool: unknown command "build-imag"; see
builder-tool -h``), 3 no command (the usage).

Differences from the Go tool: only the JSON coder is spoken (so
``-imageFilename`` writes the returned image as the Go model's JSON, not GOB);
``build-image`` streams the build log to standard error as it arrives, with or
without ``-alwaysShowBuildLog`` (which adds the start and end banners); the
local modes use the embedded store, never an imageserver, so
``-imageServerHostname`` defaults to empty; a certificate pair that cannot be
loaded, or that is expired or not yet valid, is skipped rather than fatal;
command-line errors are one line instead of the message and the whole usage;
``build-raw-from-manifest`` is not available.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Awaitable, Callable, Coroutine, Mapping, MutableMapping, Sequence
from typing import TYPE_CHECKING, Any

from imaginator import __version__
from imaginator.goformats.goflags import (
    FlagError,
    FlagSet,
    FlagSpec,
    HelpRequested,
    ParsedArgs,
    go_quote,
    with_defaults,
)
from imaginator.goformats.units import MINUTE, format_go_duration_ns
from imaginator.tools.builder_common import PROGRAM, Command, Io, os_reason
from imaginator.tools.builder_remote import (
    CertError,
    cmd_build_image,
    cmd_disable_auto_builds,
    cmd_disable_build_requests,
    cmd_enable_build_requests,
    cmd_get_dependencies,
    cmd_get_digraph,
    cmd_replace_idle_slaves,
    cmd_start_auto_builds,
    dial_imaginator,
    find_client_certs,
    run_remote,
)

if TYPE_CHECKING:  # Twisted is imported when a command runs
    from imaginator.runtime.reactors import IDaemonReactor

MINIMUM_EXPIRATION_NS = 5 * MINUTE
SYSTEM_FLAG_DIR = "/etc/config/builder-tool"


# ===================================================================== flags

#: The Go tool's flags (reference §3.2), defaults as written on a command line;
#: ``-certDirectory``'s ``$HOME/.ssl`` is filled in by :func:`flag_set`.
FLAGS: tuple[FlagSpec, ...] = (
    FlagSpec(
        "alwaysShowBuildLog",
        "bool",
        "false",
        "If true, show build log even for successful builds",
    ),
    FlagSpec(
        "bindMounts",
        "list",
        "",
        "Comma separated list of directories to bind mount into build workspace",
    ),
    FlagSpec(
        "certDirectory",
        "string",
        "",
        "Name of directory containing user SSL certificates",
    ),
    FlagSpec(
        "digraphExcludes",
        "list",
        "",
        "Comma separated list of excludes when generating digraph",
    ),
    FlagSpec(
        "digraphIncludes",
        "list",
        "",
        "Comma separated list of includes when generating digraph",
    ),
    FlagSpec("disableFor", "duration", "5m", "How long to disable"),
    FlagSpec(
        "expiresIn",
        "duration",
        "1h",
        "How long before the image expires (auto deletes)",
    ),
    FlagSpec(
        "imageFilename",
        "string",
        "",
        "Name of file to write image to (the image's JSON)",
    ),
    FlagSpec(
        "imageServerHostname",
        "string",
        "",
        "Hostname of image server (not supported: the local modes use the store in -stateDir)",
    ),
    FlagSpec("imageServerPortNum", "uint", "6971", "Port number of image server"),
    FlagSpec("imaginatorHostname", "string", "localhost", "Hostname of image build server"),
    FlagSpec("imaginatorPortNum", "uint", "6975", "Port number of image build server"),
    FlagSpec(
        "maxSourceAge",
        "duration",
        "1h",
        "Maximum age of a source image before it is rebuilt",
    ),
    FlagSpec(
        "maximumBuildDuration",
        "duration",
        "24h",
        "Maximum time to build an image",
    ),
    FlagSpec(
        "mtimesCopyFilterFile",
        "string",
        "",
        "Filter file to apply when copying mtimes",
    ),
    FlagSpec("rawSize", "size", "0", "Size of RAW file to create"),
    FlagSpec(
        "showFetchLog",
        "bool",
        "false",
        "If true, show fetch log when getting directed graph",
    ),
    FlagSpec(
        "srpcClientDoNotUseMethodPowers",
        "bool",
        "false",
        "If true, ask servers not to grant this client's method powers",
    ),
    FlagSpec(
        "srpcDefaultConnectTimeout",
        "duration",
        "15s",
        "Timeout for connecting, the CONNECT exchange and the TLS handshake",
    ),
    FlagSpec(
        "stateDir",
        "string",
        "/var/lib/imaginator",
        "Name of state directory (the local modes use the image store in it)",
    ),
    FlagSpec(
        "variablesFilename",
        "string",
        "",
        "Name of file to read variables from to inject into builds",
    ),
    FlagSpec("version", "bool", "false", "Print version information and exit"),
    FlagSpec(
        "waitForAutoRebuilds",
        "bool",
        "false",
        "If true, start-auto-builds will wait for builds to complete",
    ),
    FlagSpec(
        "waitToStartAutoRebuilds",
        "bool",
        "false",
        "If true, wait to start for start-auto-builds, else error if busy",
    ),
)
FLAGS_BY_NAME: dict[str, FlagSpec] = {flag.name: flag for flag in FLAGS}
FLAG_SET = FlagSet(FLAGS)


def flag_set(environ: Mapping[str, str]) -> FlagSet:
    """The flags, with ``-certDirectory`` defaulting to ``$HOME/.ssl``."""
    cert_directory = os.path.join(environ.get("HOME") or "/", ".ssl")
    return FlagSet(with_defaults(FLAGS, {"certDirectory": cert_directory}))


def default_values(environ: Mapping[str, str]) -> dict[str, Any]:
    """Every flag's default value (durations in nanoseconds)."""
    return flag_set(environ).defaults()


def parse_flags(argv: Sequence[str], values: MutableMapping[str, Any]) -> ParsedArgs:
    """Parse ``argv`` into ``values``; the command and its arguments are in
    the result's ``args``.

    As in Go, flags come before the command. As a convenience, flags after the
    command are parsed too (``builder-tool get-digraph -showFetchLog``); ``--``
    ends the flags, and everything after it is an argument. ``-h``/``-help``
    raise ``HelpRequested``.
    """
    parsed = FLAG_SET.parse(argv, interspersed=True)
    parsed.apply(values)
    return parsed


def parse_flag_file(text: str, source: str, values: MutableMapping[str, Any]) -> None:
    """``name=value`` lines (blank lines and ``#``/``;`` comments skipped) into ``values``."""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        name, has_value, value = line.partition("=")
        if not has_value:
            raise FlagError(f"{source}: bad line, cannot split name from value: {line}")
        name = name.strip()
        if " " in name:
            raise FlagError(f"{source}: bad line, name has whitespace: {line}")
        flag = FLAG_SET.get(name)
        if flag is None:
            raise FlagError(f"{source}: no such flag -{name}")
        try:
            values[name] = flag.parse(value.strip())
        except FlagError as exc:
            raise FlagError(f"{source}: {exc}") from None


def load_flag_dir(directory: str, values: MutableMapping[str, Any]) -> None:
    """Apply ``flags.default`` then ``flags.extra`` of ``directory`` (missing files are fine)."""
    for name in ("flags.default", "flags.extra"):
        path = os.path.join(directory, name)
        try:
            with open(path, encoding="utf-8", errors="replace") as handle:
                text = handle.read()
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise FlagError(f"open {path}: {os_reason(exc)}") from None
        parse_flag_file(text, path, values)


# ===================================================================== usage


def usage_text(environ: Mapping[str, str] | None = None) -> str:
    """The usage, as Go's ``flag.PrintDefaults`` and ``commands.PrintCommands`` write it."""
    flags = flag_set(os.environ if environ is None else environ)
    lines = [f"Usage: {PROGRAM} [flags...] command [args...]", "Common flags:"]
    lines.append(flags.usage().rstrip("\n"))
    lines.append("Commands:")
    for command in COMMANDS.values():
        lines.append(f"  {command.name} {command.args}".rstrip())
    return "\n".join(lines) + "\n"


def version_text() -> str:
    return f"{PROGRAM} (imaginator) {__version__}\n"


def error_line(message: str) -> str:
    """The one line a bad command line gets: ``builder-tool: <what>; see builder-tool -h``."""
    return f"{PROGRAM}: {message}; see {PROGRAM} -h\n"


def command_error(parsed: ParsedArgs) -> str:
    """What is wrong with the command and its arguments (empty if nothing)."""
    name, args = parsed.args[0], parsed.args[1:]
    command = COMMANDS.get(name)
    if command is None:
        hint = parsed.hint()
        return f"unknown command {go_quote(name)}" + (f" ({hint})" if hint else "")
    if command.min_args <= len(args) <= command.max_args:
        return ""
    wanted = command.args or "no arguments"
    got = " ".join(go_quote(arg) for arg in args) if args else "no arguments"
    return f"{name} wants {wanted}, got {got}"


# ===================================================================== commands


COMMANDS: dict[str, Command] = {
    command.name: command
    for command in (
        Command(
            "build-from-manifest",
            "manifestDir stream-name",
            2,
            2,
            "local",
            "error processing manifest",
            None,
            needs_store=True,
        ),
        Command(
            "build-image",
            "stream-name [git-branch]",
            1,
            2,
            "remote",
            "error building image",
            cmd_build_image,
        ),
        Command(
            "build-raw-from-manifest",
            "manifestDir rawFile",
            2,
            2,
            "unavailable",
            "error building RAW image from manifest",
        ),
        Command(
            "build-tree-from-manifest",
            "manifestDir",
            1,
            1,
            "local",
            "error processing manifest",
            None,
            needs_store=True,
        ),
        Command(
            "disable-auto-builds",
            "",
            0,
            0,
            "remote",
            "error disabling auto builds",
            cmd_disable_auto_builds,
        ),
        Command(
            "disable-build-requests",
            "",
            0,
            0,
            "remote",
            "error disabling build requests",
            cmd_disable_build_requests,
        ),
        Command(
            "enable-build-requests",
            "",
            0,
            0,
            "remote",
            "error enabling build requests",
            cmd_enable_build_requests,
        ),
        Command(
            "get-dependencies",
            "",
            0,
            0,
            "remote",
            "error getting dependencies",
            cmd_get_dependencies,
        ),
        Command(
            "get-digraph",
            "",
            0,
            0,
            "remote",
            "error getting directed graph",
            cmd_get_digraph,
        ),
        Command(
            "process-manifest",
            "manifestDir rootDir",
            2,
            2,
            "local",
            "error processing manifest",
            None,
        ),
        Command(
            "replace-idle-slaves",
            "",
            0,
            0,
            "remote",
            "error replacing idle slaves",
            cmd_replace_idle_slaves,
        ),
        Command(
            "start-auto-builds",
            "",
            0,
            0,
            "remote",
            "error starting auto builds",
            cmd_start_auto_builds,
        ),
    )
}


# ===================================================================== main


Work = Callable[["IDaemonReactor"], Coroutine[Any, Any, int]]


def run_with_reactor(work: Work, *, grace: float = 30.0) -> int:
    """Run ``work(reactor)`` under ``twisted.internet.task.react``; its exit status.

    If the reactor is stopped first (Ctrl-C, SIGTERM), ``work`` is cancelled,
    and the shutdown waits up to ``grace`` seconds for it to clean up.
    """
    from twisted.internet.defer import Deferred
    from twisted.internet.task import react

    finished: list[int] = []

    async def entry(reactor: IDaemonReactor) -> None:
        running = Deferred.fromCoroutine(work(reactor))

        def interrupted() -> Deferred[None] | None:
            if running.called:
                return None
            cleaned_up: Deferred[None] = Deferred()

            def done(result: Any) -> Any:
                if not cleaned_up.called:
                    cleaned_up.callback(None)
                return result

            running.addBoth(done)
            cleaned_up.addTimeout(grace, reactor, onTimeoutCancel=lambda *_: None)
            running.cancel()
            return cleaned_up

        reactor.addSystemEventTrigger("before", "shutdown", interrupted)
        code = await running
        finished.append(code)
        if code:
            raise SystemExit(code)

    try:
        react(entry)
    except SystemExit as exc:
        if not finished:  # the reactor stopped before the work was done
            return 1
        return exc.code if isinstance(exc.code, int) else 1
    return 0


def _guarded(work: Work, io: Io) -> Work:
    async def guarded(reactor: IDaemonReactor) -> int:
        from twisted.internet.defer import CancelledError

        try:
            return await work(reactor)
        except CancelledError:
            io.err(f"{PROGRAM}: interrupted\n")
            return 1
        except Exception:
            io.err(f"{PROGRAM}: internal error:\n{traceback.format_exc()}")
            return 1

    return guarded


def run(
    argv: Sequence[str],
    io: Io,
    *,
    environ: MutableMapping[str, str] | None = None,
    flag_dirs: Sequence[tuple[str, bool]] | None = None,
    dial: Callable[..., Awaitable[Any]] = dial_imaginator,
    run_async: Callable[[Work], int] = run_with_reactor,
) -> int:
    """``builder-tool`` with ``argv``; returns the exit status.

    ``flag_dirs`` are ``(directory, fatal)`` pairs of flag-file directories
    (default: the system one, non-fatal, then ``$HOME/.config/builder-tool``).
    ``dial`` and ``run_async`` are replaceable for tests.
    """
    environ = os.environ if environ is None else environ
    if flag_dirs is None:
        home = os.path.join(environ.get("HOME", ""), ".config", PROGRAM)
        flag_dirs = ((SYSTEM_FLAG_DIR, False), (home, True))
    values = default_values(environ)
    for directory, fatal in flag_dirs:
        try:
            load_flag_dir(directory, values)
        except FlagError as exc:
            if fatal:
                io.err(f"{exc}\n")
                return 1
            io.err(f"Warning: {exc}\n")
    try:
        parsed = parse_flags(argv, values)
    except HelpRequested:
        io.err(usage_text(environ))
        return 0
    except FlagError as exc:
        io.err(error_line(str(exc)))
        return 2
    if values["version"]:
        io.out(version_text())
        return 0
    if not parsed.args:
        io.err(usage_text(environ))
        return 3
    if 0 < values["expiresIn"] < MINIMUM_EXPIRATION_NS:
        io.err(f"Minimum expiration: {format_go_duration_ns(MINIMUM_EXPIRATION_NS)}\n")
        return 2
    problem = command_error(parsed)
    if problem:
        io.err(error_line(problem))
        return 2
    command, args = COMMANDS[parsed.args[0]], parsed.args[1:]
    try:
        certs = find_client_certs(values["certDirectory"])
    except CertError as exc:
        io.err(f"{exc}\n")
        return 1
    environ.pop("LANG", None)
    if command.kind == "unavailable":
        io.err(f"{command.prefix}: not available in this implementation\n")
        return 1
    cert = certs[0] if certs else None

    async def work(reactor: IDaemonReactor) -> int:
        if command.kind == "local":
            from imaginator.tools.builder_local import run_local

            return await run_local(reactor, command, values, args, io)
        return await run_remote(reactor, command, values, args, io, dial=dial, cert=cert)

    return run_async(_guarded(work, io))


def main(argv: Sequence[str] | None = None) -> int:
    """The console script: ``builder-tool [flags...] command [args...]``."""
    return run(sys.argv[1:] if argv is None else list(argv), Io.standard())


if __name__ == "__main__":
    sys.exit(main())
