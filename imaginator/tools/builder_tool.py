"""``builder-tool``: ask an imaginator to build, or build locally (reference §3).

Usage: ``builder-tool [flags...] command [args...]``. Flags are Go flags
(``-expiresIn=2h``, ``-expiresIn 2h``, ``--expiresIn=2h``, a bare ``-flag`` for
booleans); unlike Go, flags after the command are accepted too (``--`` ends
them). Before the command line, ``name=value``
lines are read from ``/etc/config/builder-tool/flags.default`` and
``flags.extra`` (a problem there is only a warning), then from
``$HOME/.config/builder-tool/flags.default`` and ``flags.extra``.

Remote commands (``build-image``, ``get-dependencies``, ``get-digraph``,
``disable-auto-builds``, ``disable-build-requests``, ``enable-build-requests``,
``start-auto-builds``, ``replace-idle-slaves``) call the ``Imaginator`` SRPC
service at ``-imaginatorHostname:-imaginatorPortNum`` over the JSON coder:
on ``/_SRPC_/TLS/JSON`` presenting the best certificate of
``-certDirectory``, falling back to ``/_SRPC_/unsecured/JSON`` when the server
has no TLS path; without certificates on ``/_SRPC_/unsecured/JSON`` directly.

Local commands (``process-manifest``, ``build-tree-from-manifest``,
``build-from-manifest``) build on this machine (as root) with the embedded
image store in ``-stateDir`` (see :mod:`imaginator.tools.builder_local`).

Exit status: 0 success, 1 a command failed (``<prefix>: <error>`` on standard
error) or could not dial (``Error dialing: <host:port>: <error>``), 2 a bad
flag, an unknown command or the wrong number of arguments, 3 no command.

Differences from the Go tool: only the JSON coder is spoken (so
``-imageFilename`` writes the returned image as the Go model's JSON, not GOB);
``build-image`` streams the build log to standard error as it arrives, with or
without ``-alwaysShowBuildLog`` (which adds the start and end banners); the
local modes use the embedded store, never an imageserver, so
``-imageServerHostname`` defaults to empty; a certificate pair that cannot be
loaded, or that is expired or not yet valid, is skipped rather than fatal;
``build-raw-from-manifest`` is not available.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import os
import sys
import traceback
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from imaginator import __version__
from imaginator.goformats.gojson import JsonDecodeError, marshal
from imaginator.goformats.jsonc import ConfigError
from imaginator.goformats.jsonc import loads as jsonc_loads
from imaginator.goformats.units import (
    MINUTE,
    SECOND,
    format_go_duration_ns,
    parse_duration_ns,
    parse_size,
)
from imaginator.srpc.framing import (
    INSECURE_JSON_PATH,
    TLS_JSON_PATH,
    SrpcConnectionError,
    SrpcError,
)
from imaginator.srpc.identity import AuthError, identity_from_chain

PROGRAM = "builder-tool"
START_BANNER = "Start of build log =========================="
END_BANNER = "End of build log ============================"
MINIMUM_EXPIRATION_NS = 5 * MINUTE
SYSTEM_FLAG_DIR = "/etc/config/builder-tool"
BUILD_LOG_FILE = "build.log"
CLOSE_TIMEOUT = 5.0
DAY_NS = 24 * 60 * MINUTE
ZERO_TIME = "0001-01-01T00:00:00Z"


# ===================================================================== flags


class FlagError(Exception):
    """A bad flag: printed with the usage, exit status 2."""


class _HelpRequested(Exception):
    pass


class _VersionRequested(Exception):
    pass


_GO_TRUE = ("1", "t", "T", "TRUE", "true", "True")
_GO_FALSE = ("0", "f", "F", "FALSE", "false", "False")


def _parse_bool(text: str) -> bool:
    if text in _GO_TRUE:
        return True
    if text in _GO_FALSE:
        return False
    raise ValueError("parse error")


def _parse_uint(text: str) -> int:
    if not text or text[0] in "+-":
        raise ValueError("parse error")
    try:
        return int(text, 0)
    except ValueError:
        raise ValueError("parse error") from None


def _parse_duration(text: str) -> int:
    try:
        return parse_duration_ns(text)
    except ValueError:
        raise ValueError("parse error") from None


def _parse_list(text: str) -> tuple[str, ...]:
    return tuple(item for item in text.split(",") if item)


_PARSERS: dict[str, Callable[[str], Any]] = {
    "bool": _parse_bool,
    "string": str,
    "uint": _parse_uint,
    "duration": _parse_duration,
    "list": _parse_list,
    "size": parse_size,
}
_TYPE_NAMES = {
    "bool": "",
    "string": " string",
    "uint": " uint",
    "duration": " duration",
    "list": " value",
    "size": " value",
}


@dataclass(frozen=True)
class FlagSpec:
    """One flag: ``default`` is the parsed value (durations in nanoseconds)."""

    name: str
    kind: str
    default: Any
    help: str

    def parse(self, text: str) -> Any:
        try:
            return _PARSERS[self.kind](text)
        except ValueError as exc:
            if self.kind == "bool":
                raise FlagError(
                    f"invalid boolean value {_go_quote(text)} for -{self.name}: {exc}"
                ) from None
            raise FlagError(
                f"invalid value {_go_quote(text)} for flag -{self.name}: {exc}"
            ) from None

    def show_default(self, value: Any) -> str:
        """Go's `` (default …)`` suffix; empty for a zero value."""
        if not value:
            return ""
        if self.kind == "string":
            return f" (default {_go_quote(value)})"
        if self.kind == "duration":
            return f" (default {format_go_duration_ns(value)})"
        if self.kind == "list":
            return f" (default {','.join(value)})"
        return f" (default {value})"


def _go_quote(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


FLAGS: tuple[FlagSpec, ...] = (
    FlagSpec(
        "alwaysShowBuildLog",
        "bool",
        False,
        "If true, show build log even for successful builds",
    ),
    FlagSpec(
        "bindMounts",
        "list",
        (),
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
        (),
        "Comma separated list of excludes when generating digraph",
    ),
    FlagSpec(
        "digraphIncludes",
        "list",
        (),
        "Comma separated list of includes when generating digraph",
    ),
    FlagSpec("disableFor", "duration", 5 * MINUTE, "How long to disable"),
    FlagSpec(
        "expiresIn",
        "duration",
        60 * MINUTE,
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
    FlagSpec("imageServerPortNum", "uint", 6971, "Port number of image server"),
    FlagSpec("imaginatorHostname", "string", "localhost", "Hostname of image build server"),
    FlagSpec("imaginatorPortNum", "uint", 6975, "Port number of image build server"),
    FlagSpec(
        "maxSourceAge",
        "duration",
        60 * MINUTE,
        "Maximum age of a source image before it is rebuilt",
    ),
    FlagSpec(
        "maximumBuildDuration",
        "duration",
        DAY_NS,
        "Maximum time to build an image",
    ),
    FlagSpec(
        "mtimesCopyFilterFile",
        "string",
        "",
        "Filter file to apply when copying mtimes",
    ),
    FlagSpec("rawSize", "size", 0, "Size of RAW file to create"),
    FlagSpec(
        "showFetchLog",
        "bool",
        False,
        "If true, show fetch log when getting directed graph",
    ),
    FlagSpec(
        "srpcClientDoNotUseMethodPowers",
        "bool",
        False,
        "If true, ask servers not to grant this client's method powers",
    ),
    FlagSpec(
        "srpcDefaultConnectTimeout",
        "duration",
        15 * SECOND,
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
    FlagSpec("version", "bool", False, "Print version information and exit"),
    FlagSpec(
        "waitForAutoRebuilds",
        "bool",
        False,
        "If true, start-auto-builds will wait for builds to complete",
    ),
    FlagSpec(
        "waitToStartAutoRebuilds",
        "bool",
        False,
        "If true, wait to start for start-auto-builds, else error if busy",
    ),
)
FLAGS_BY_NAME: dict[str, FlagSpec] = {flag.name: flag for flag in FLAGS}


def default_values(environ: Mapping[str, str]) -> dict[str, Any]:
    """Every flag's default; ``-certDirectory`` is ``$HOME/.ssl``."""
    values = {flag.name: flag.default for flag in FLAGS}
    values["certDirectory"] = os.path.join(environ.get("HOME") or "/", ".ssl")
    return values


def _set_flag(values: MutableMapping[str, Any], flag: FlagSpec, text: str) -> None:
    value = flag.parse(text)
    if flag.name == "version":
        if value:
            raise _VersionRequested()
        return
    values[flag.name] = value


def _parse_flag(argv: Sequence[str], index: int, values: MutableMapping[str, Any]) -> int:
    """Parse the flag at ``argv[index]`` (and its value); returns the next index."""
    arg = argv[index]
    index += 1
    body = arg[2:] if arg[1] == "-" else arg[1:]
    if not body or body[0] in "-=":
        raise FlagError(f"bad flag syntax: {arg}")
    name, has_value, text = body.partition("=")
    flag = FLAGS_BY_NAME.get(name)
    if flag is None:
        if name in ("h", "help"):
            raise _HelpRequested()
        raise FlagError(f"flag provided but not defined: -{name}")
    if flag.kind == "bool":
        if not has_value:
            text = "true"
    elif not has_value:
        if index >= len(argv):
            raise FlagError(f"flag needs an argument: -{name}")
        text = argv[index]
        index += 1
    _set_flag(values, flag, text)
    return index


def _is_flag(arg: str) -> bool:
    return len(arg) >= 2 and arg[0] == "-"


def parse_flags(argv: Sequence[str], values: MutableMapping[str, Any]) -> list[str]:
    """Parse Go-style flags into ``values``; returns the command and its arguments.

    As in Go, flags come before the command. As a convenience, flags after the
    command are parsed too (``builder-tool get-digraph -showFetchLog``); ``--``
    ends the flags, and everything after it is an argument. ``-h``/``-help``
    ask for the usage.
    """
    positional: list[str] = []
    index = 0
    while index < len(argv):
        arg = argv[index]
        if arg == "--":
            positional.extend(argv[index + 1 :])
            break
        if _is_flag(arg):
            index = _parse_flag(argv, index, values)
        else:
            positional.append(arg)
            index += 1
    return positional


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
        flag = FLAGS_BY_NAME.get(name)
        if flag is None:
            raise FlagError(f"{source}: no such flag -{name}")
        try:
            _set_flag(values, flag, value.strip())
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
            raise FlagError(f"open {path}: {_os_reason(exc)}") from None
        parse_flag_file(text, path, values)


def _os_reason(exc: OSError) -> str:
    reason = exc.strerror or str(exc)
    return reason[:1].lower() + reason[1:]


# ===================================================================== usage


@dataclass(frozen=True)
class Command:
    name: str
    args: str
    min_args: int
    max_args: int
    kind: str  # "remote", "local" or "unavailable"
    prefix: str
    handler: Callable[..., Awaitable[Any]] | None = None
    needs_store: bool = False


def usage_text(values: Mapping[str, Any] | None = None) -> str:
    """The usage, as Go's ``flag.PrintDefaults`` and ``commands.PrintCommands`` write it."""
    shown = values if values is not None else default_values(os.environ)
    lines = [f"Usage: {PROGRAM} [flags...] command [args...]", "Common flags:"]
    for flag in sorted(FLAGS, key=lambda item: item.name):
        lines.append(f"  -{flag.name}{_TYPE_NAMES[flag.kind]}")
        default = "" if flag.name == "version" else flag.show_default(shown[flag.name])
        lines.append(f"    \t{flag.help}{default}")
    lines.append("Commands:")
    for command in COMMANDS.values():
        lines.append(f"  {command.name} {command.args}".rstrip())
    return "\n".join(lines) + "\n"


def version_text() -> str:
    return f"{PROGRAM} (imaginator) {__version__}\n"


# ===================================================================== output


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


class _DialFailed(Exception):
    """Printed as is, exit status 1."""


# ===================================================================== certificates


class CertError(Exception):
    """The certificate directory cannot be read (TLS set-up failure, exit 1)."""


@dataclass(frozen=True)
class ClientCert:
    """A usable certificate/key pair of ``-certDirectory``."""

    cert_file: str
    key_file: str
    username: str
    permitted_methods: frozenset[str]
    not_after: datetime.datetime

    @property
    def sort_key(self) -> tuple[int, int, float]:
        """``*.*`` first, then more permitted methods, then longest-lived."""
        admin = "*.*" in self.permitted_methods
        return (0 if admin else 1, -len(self.permitted_methods), -self.not_after.timestamp())


def _public_der(key: Any) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_client_cert(
    cert_file: str, key_file: str, now: datetime.datetime | None = None
) -> ClientCert | None:
    """The pair, or None if it cannot be used (unreadable, mismatched, expired or
    not yet valid)."""
    now = now or datetime.datetime.now(datetime.UTC)
    try:
        with open(cert_file, "rb") as handle:
            chain = x509.load_pem_x509_certificates(handle.read())
        with open(key_file, "rb") as handle:
            key = serialization.load_pem_private_key(handle.read(), password=None)
        leaf = chain[0]
        if _public_der(leaf.public_key()) != _public_der(key.public_key()):
            return None
    except (OSError, ValueError, TypeError, IndexError):
        return None
    if not leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc:
        return None
    try:
        identity = identity_from_chain([leaf])
        username, methods = identity.username, identity.permitted_methods
    except (AuthError, ValueError):
        username, methods = "", frozenset()
    return ClientCert(cert_file, key_file, username, methods, leaf.not_valid_after_utc)


def find_client_certs(directory: str, now: datetime.datetime | None = None) -> list[ClientCert]:
    """Every usable ``X.key``/``X.cert`` pair and ``key.pem``/``cert.pem`` of
    ``directory``, best first (reference §1.3). A missing directory has none."""
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise CertError(f"open {directory}: {_os_reason(exc)}") from None
    present = set(names)
    certs = []
    for key_name in names:
        if key_name == "key.pem":
            if "cert.pem" not in present:
                continue
            cert_name = "cert.pem"
        elif key_name.endswith(".key"):
            cert_name = key_name[: -len("key")] + "cert"
        else:
            continue
        cert = load_client_cert(
            os.path.join(directory, cert_name), os.path.join(directory, key_name), now
        )
        if cert is not None:
            certs.append(cert)
    certs.sort(key=lambda cert: cert.sort_key)
    return certs


# ===================================================================== dialing


async def dial_imaginator(
    reactor: Any,
    host: str,
    port: int,
    *,
    cert: ClientCert | None,
    method_powers: bool = True,
    timeout: float = 15.0,
) -> Any:
    """An SRPC client: TLS presenting ``cert`` (then plain if the server has no
    TLS path), or plain when there is no certificate."""
    from imaginator.srpc.client import connect

    query = "" if method_powers else "?doNotUseMethodPowers=true"
    if cert is not None:
        try:
            return await connect(
                host,
                port,
                reactor=reactor,
                cert_file=cert.cert_file,
                key_file=cert.key_file,
                path=TLS_JSON_PATH + query,
                timeout=timeout,
            )
        except SrpcConnectionError as exc:
            if exc.text != "no SRPC endpoint":
                raise
    return await connect(
        host, port, reactor=reactor, path=INSECURE_JSON_PATH + query, tls=False, timeout=timeout
    )


def describe_dial_error(exc: BaseException, address: str) -> str:
    """A dial failure in Go's words where we know them (``dial tcp …: connect:
    connection refused``), else the error's own text."""
    from twisted.internet import defer, error

    for candidate in (exc, exc.__cause__):
        if isinstance(candidate, error.ConnectionRefusedError):
            return f"dial tcp {address}: connect: connection refused"
        if isinstance(candidate, error.DNSLookupError):
            return f"dial tcp: lookup {address.rsplit(':', 1)[0]}: no such host"
        if isinstance(candidate, error.TimeoutError | defer.TimeoutError):
            return f"dial tcp {address}: i/o timeout"
    if isinstance(exc, SrpcError):
        return exc.text
    return str(exc) or type(exc).__name__


# ===================================================================== remote commands


@dataclass
class Remote:
    """What a remote command works with; ``client()`` dials on first use."""

    values: Mapping[str, Any]
    args: list[str]
    io: Io
    reactor: Any
    dial: Callable[..., Awaitable[Any]]
    cert: ClientCert | None
    _client: Any = None

    @property
    def address(self) -> str:
        return f"{self.values['imaginatorHostname']}:{self.values['imaginatorPortNum']}"

    async def client(self) -> Any:
        if self._client is None:
            try:
                self._client = await self.dial(
                    self.reactor,
                    self.values["imaginatorHostname"],
                    self.values["imaginatorPortNum"],
                    cert=self.cert,
                    method_powers=not self.values["srpcClientDoNotUseMethodPowers"],
                    timeout=self.values["srpcDefaultConnectTimeout"] / SECOND,
                )
            except Exception as exc:
                raise _DialFailed(
                    f"Error dialing: {self.address}: {describe_dial_error(exc, self.address)}"
                ) from None
        return self._client

    async def call(self, method: str, request: Any) -> dict[str, Any]:
        """A request/reply call whose ``Error`` field fails the command."""
        client = await self.client()
        reply = await client.call(method, request)
        if not isinstance(reply, dict):
            raise CommandFailed(f"unexpected reply: {marshal(reply).decode()}")
        if reply.get("Error"):
            raise CommandFailed(str(reply["Error"]))
        return reply

    async def close(self) -> None:
        if self._client is None:
            return
        closed = self._client.close()
        if self.reactor is not None and hasattr(closed, "addTimeout"):
            closed.addTimeout(CLOSE_TIMEOUT, self.reactor)
        try:
            await closed
        except Exception:
            pass


def _decode_b64(value: Any, name: str) -> bytes:
    if value is None or value == "":
        return b""
    if not isinstance(value, str):
        raise CommandFailed(f"json: cannot unmarshal {name} into []byte")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise CommandFailed(f"illegal base64 data in {name}") from None


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
        raise CommandFailed(f"open {filename}: {_os_reason(exc)}") from None
    try:
        document = jsonc_loads(data, filename)
    except ConfigError as exc:
        raise CommandFailed(str(exc)) from None
    if not isinstance(document, dict) or not all(
        isinstance(value, str) for value in document.values()
    ):
        raise CommandFailed(f"{filename}: expected a JSON object of strings")
    return document


def build_image_request(values: Mapping[str, Any], args: Sequence[str], variables) -> dict:
    """``Imaginator.BuildImage``'s request, in Go's field order (reference §2.3)."""
    return {
        "DisableRecursiveBuild": False,
        "ExpiresIn": values["expiresIn"],
        "GitBranch": args[1] if len(args) > 1 else "",
        "MaxSourceAge": values["maxSourceAge"],
        "MaximumBuildDuration": values["maximumBuildDuration"],
        "ReturnImage": bool(values["imageFilename"]),
        "StreamBuildLog": True,
        "StreamName": args[0],
        "Variables": variables,
    }


async def cmd_build_image(remote: Remote) -> None:
    io, values = remote.io, remote.values
    request = build_image_request(values, remote.args, read_variables(values["variablesFilename"]))
    client = await remote.client()
    always = values["alwaysShowBuildLog"]
    if always:
        io.err(START_BANNER + "\n")

    def on_message(message: Any) -> None:
        if isinstance(message, dict):
            io.err(_decode_b64(message.get("BuildLog"), "BuildLog"))

    try:
        final = await client.call_stream("Imaginator.BuildImage", request, on_message)
        error = str(final.get("ErrorString") or "") if isinstance(final, dict) else ""
    except (SrpcError, JsonDecodeError) as exc:
        final, error = {}, exc.text
    except CommandFailed as exc:
        final, error = {}, str(exc)
    if error:
        io.err(END_BANNER + "\n")
        raise CommandFailed(error)
    if always:
        io.err(END_BANNER + "\n")
    name = str(final.get("ImageName") or "")
    if values["imageFilename"]:
        image = final.get("Image")
        if image is None:
            if not name:
                raise CommandFailed("no image returned: upgrade the Imaginator")
            raise CommandFailed(f"image: {name} uploaded, not returned: upgrade the Imaginator")
        write_file(values["imageFilename"], marshal(image) + b"\n", 0o644)
        return
    io.out(f"{name}\n")


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


_DEPENDENCIES_RESULT = (
    ("FetchLog", None),
    ("GeneratedAt", ZERO_TIME),
    ("LastAttemptAt", ZERO_TIME),
    ("LastAttemptError", ""),
    ("StreamToSource", None),
    ("UnbuildableSources", None),
)


def _sorted_map(value: Any) -> Any:
    return dict(sorted(value.items())) if isinstance(value, dict) else value


async def cmd_get_dependencies(remote: Remote) -> None:
    reply = await remote.call("Imaginator.GetDependencies", {"MaxAge": 0})
    result = {name: _sorted_map(reply.get(name, zero)) for name, zero in _DEPENDENCIES_RESULT}
    remote.io.out(marshal(result, indent="    ") + b"\n")


async def cmd_get_digraph(remote: Remote) -> None:
    values = remote.values
    request = {
        "Excludes": list(values["digraphExcludes"]) or None,
        "Includes": list(values["digraphIncludes"]) or None,
        "MaxAge": 0,
    }
    reply = await remote.call("Imaginator.GetDirectedGraph", request)
    if values["showFetchLog"]:
        remote.io.err(_decode_b64(reply.get("FetchLog"), "FetchLog"))
    dot = _decode_b64(reply.get("GraphvizDot"), "GraphvizDot")
    if dot and not dot.endswith(b"\n"):
        dot += b"\n"
    remote.io.out(dot)


async def cmd_disable_auto_builds(remote: Remote) -> None:
    await remote.call("Imaginator.DisableAutoBuilds", {"DisableFor": remote.values["disableFor"]})


async def cmd_disable_build_requests(remote: Remote) -> None:
    request = {"DisableFor": remote.values["disableFor"]}
    await remote.call("Imaginator.DisableBuildRequests", request)


async def cmd_enable_build_requests(remote: Remote) -> None:
    await remote.call("Imaginator.DisableBuildRequests", {"DisableFor": 0})


async def cmd_replace_idle_slaves(remote: Remote) -> None:
    await remote.call("Imaginator.ReplaceIdleSlaves", {"ImmediateGetNew": True})


async def cmd_start_auto_builds(remote: Remote) -> None:
    values = remote.values
    request = {
        "WaitForComplete": values["waitForAutoRebuilds"],
        "WaitToStart": values["waitToStartAutoRebuilds"],
    }
    await remote.call("Imaginator.StartAutoBuilds", request)


async def run_remote(
    reactor: Any,
    command: Command,
    values: Mapping[str, Any],
    args: list[str],
    io: Io,
    *,
    dial: Callable[..., Awaitable[Any]],
    cert: ClientCert | None,
) -> int:
    remote = Remote(values, args, io, reactor, dial, cert)
    try:
        assert command.handler is not None
        await command.handler(remote)
    except _DialFailed as exc:
        io.err(f"{exc}\n")
        return 1
    except CommandFailed as exc:
        io.err(f"{command.prefix}: {exc}\n")
        return 1
    except (SrpcError, JsonDecodeError) as exc:
        io.err(f"{command.prefix}: {exc.text}\n")
        return 1
    finally:
        await remote.close()
    return 0


# ===================================================================== local commands


@dataclass
class _LocalJob:
    values: Mapping[str, Any]
    args: list[str]
    options: Any  # localbuild.LocalOptions
    resources: Any  # localbuild.LocalResources
    log: Any  # BuildLog
    stdout: list[str] = field(default_factory=list)


async def cmd_process_manifest(job: _LocalJob) -> None:
    from imaginator.tools.builder_local import process_manifest_dir

    await process_manifest_dir(job.resources, job.log, job.options, job.args[0], job.args[1])


async def cmd_build_tree_from_manifest(job: _LocalJob) -> None:
    from imaginator.tools.builder_local import build_tree_from_manifest

    root = await build_tree_from_manifest(job.resources, job.log, job.options, job.args[0])
    job.stdout.append(root)


async def cmd_build_from_manifest(job: _LocalJob) -> None:
    from imaginator.tools.builder_local import build_from_manifest

    name = await build_from_manifest(job.resources, job.log, job.options, job.args[0], job.args[1])
    job.stdout.append(name)


def read_mtimes_filter(filename: str) -> tuple[str, ...]:
    from imaginator.image.filter import parse_filter_lines

    if not filename:
        return ()
    try:
        with open(filename, encoding="utf-8", errors="replace") as handle:
            return tuple(parse_filter_lines(handle.read()))
    except OSError as exc:
        raise CommandFailed(f"open {filename}: {_os_reason(exc)}") from None


async def run_local(
    reactor: Any, command: Command, values: Mapping[str, Any], args: list[str], io: Io
) -> int:
    """Run a local mode: the log goes to ``./build.log`` (or, with
    ``-alwaysShowBuildLog``, to standard error between the banners); on failure
    the banners and the log go to standard error."""
    from twisted.internet.defer import CancelledError
    from twisted.python.threadpool import ThreadPool

    from imaginator.pipeline.pack import BuildError
    from imaginator.runtime.buildlog import BuildLog
    from imaginator.runtime.process import ProcessRunner
    from imaginator.store.base import StoreError
    from imaginator.store.local import LocalImageStore
    from imaginator.tools.builder_local import LocalOptions, LocalResources

    try:
        if command.needs_store and values["imageServerHostname"]:
            raise CommandFailed("remote imageservers are not supported: use -stateDir")
        options = LocalOptions(
            bind_mounts=tuple(values["bindMounts"]),
            maximum_build_duration=values["maximumBuildDuration"] / SECOND,
            variables=read_variables(values["variablesFilename"]) or {},
            mtimes_copy_filter_lines=read_mtimes_filter(values["mtimesCopyFilterFile"]),
            expires_in=values["expiresIn"] / SECOND,
        )
    except CommandFailed as exc:
        io.err(f"{command.prefix}: {exc}\n")
        return 1
    os.umask(0o022)
    always = values["alwaysShowBuildLog"]
    log = BuildLog()
    if always:
        io.err(START_BANNER + "\n")
        log.subscribe(io.err)
    runner = ProcessRunner(reactor)
    pool = ThreadPool(minthreads=0, maxthreads=4, name=PROGRAM)

    def stop_pool() -> None:
        if pool.started:
            pool.stop()

    # Interrupted (the reactor stops before the build ends): kill the build's
    # processes, then let the pool's threads go.
    triggers = [
        reactor.addSystemEventTrigger(
            "before", "shutdown", runner.kill_all, "builder-tool interrupted"
        ),
        reactor.addSystemEventTrigger("during", "shutdown", stop_pool),
    ]
    pool.start()
    try:
        store = None
        if command.needs_store:
            store = LocalImageStore(os.path.join(values["stateDir"], "store"), create=False)
        job = _LocalJob(values, args, options, LocalResources(reactor, pool, runner, store), log)
        assert command.handler is not None
        await command.handler(job)
    except (BuildError, StoreError, CommandFailed, OSError, CancelledError) as exc:
        if not always:
            io.err(START_BANNER + "\n")
            io.err(log.getvalue())
        io.err(END_BANNER + "\n")
        reason = "interrupted" if isinstance(exc, CancelledError) else str(exc)
        # The pipeline's own errors may already carry the prefix; say it once.
        if reason.startswith(command.prefix + ": "):
            reason = reason[len(command.prefix) + 2 :]
        io.err(f"{command.prefix}: {reason}\n")
        return 1
    finally:
        log.close()
        stop_pool()
        for trigger in triggers:
            try:
                reactor.removeSystemEventTrigger(trigger)
            except (ValueError, KeyError):  # already run: we are being interrupted
                pass
    if always:
        io.err(END_BANNER + "\n")
    else:
        try:
            write_file(BUILD_LOG_FILE, log.getvalue(), 0o444)
        except OSError as exc:
            io.err(f"{command.prefix}: error writing build log: {exc}\n")
            return 1
    for line in job.stdout:
        io.out(f"{line}\n")
    return 0


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
            cmd_build_from_manifest,
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
            cmd_build_tree_from_manifest,
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
            cmd_process_manifest,
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


Work = Callable[[Any], Awaitable[int]]


def run_with_reactor(work: Work, *, grace: float = 30.0) -> int:
    """Run ``work(reactor)`` under ``twisted.internet.task.react``; its exit status.

    If the reactor is stopped first (Ctrl-C, SIGTERM), ``work`` is cancelled,
    and the shutdown waits up to ``grace`` seconds for it to clean up.
    """
    from twisted.internet.defer import Deferred
    from twisted.internet.task import react

    finished: list[int] = []

    async def entry(reactor: Any) -> None:
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
    async def guarded(reactor: Any) -> int:
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
    try:
        for directory, fatal in flag_dirs:
            try:
                load_flag_dir(directory, values)
            except FlagError as exc:
                if fatal:
                    io.err(f"{exc}\n")
                    return 1
                io.err(f"Warning: {exc}\n")
        positional = parse_flags(argv, values)
    except _HelpRequested:
        io.err(usage_text(values))
        return 0
    except _VersionRequested:
        io.out(version_text())
        return 0
    except FlagError as exc:
        io.err(f"{exc}\n{usage_text(values)}")
        return 2
    if not positional:
        io.err(usage_text(values))
        return 3
    if 0 < values["expiresIn"] < MINIMUM_EXPIRATION_NS:
        io.err(f"Minimum expiration: {format_go_duration_ns(MINIMUM_EXPIRATION_NS)}\n")
        return 2
    try:
        certs = find_client_certs(values["certDirectory"])
    except CertError as exc:
        io.err(f"{exc}\n")
        return 1
    command = COMMANDS.get(positional[0])
    args = positional[1:]
    if command is None or not command.min_args <= len(args) <= command.max_args:
        io.err(usage_text(values))
        return 2
    environ.pop("LANG", None)
    if command.kind == "unavailable":
        io.err(f"{command.prefix}: not available in this implementation\n")
        return 1
    cert = certs[0] if certs else None

    async def work(reactor: Any) -> int:
        if command.kind == "local":
            return await run_local(reactor, command, values, args, io)
        return await run_remote(reactor, command, values, args, io, dial=dial, cert=cert)

    return run_async(_guarded(work, io))


def main(argv: Sequence[str] | None = None) -> int:
    """The console script: ``builder-tool [flags...] command [args...]``."""
    return run(sys.argv[1:] if argv is None else list(argv), Io.standard())


if __name__ == "__main__":
    sys.exit(main())
