"""The remote half of ``builder-tool``: commands sent to an imaginator over SRPC.

``build-image``, ``get-dependencies``, ``get-digraph``,
``disable-auto-builds``, ``disable-build-requests``, ``enable-build-requests``,
``start-auto-builds`` and ``replace-idle-slaves`` call the ``Imaginator``
service at ``-imaginatorHostname:-imaginatorPortNum`` over the JSON coder: on
``/_SRPC_/TLS/JSON`` presenting the best certificate of ``-certDirectory``,
falling back to ``/_SRPC_/unsecured/JSON`` when the server has no TLS path;
without certificates on ``/_SRPC_/unsecured/JSON`` directly (reference §3).

``build-image`` streams the build log to standard error as it arrives; the
``End of build log`` banner closes a log that was shown (or the one
``-alwaysShowBuildLog`` opened), never an empty one.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from imaginator.goformats.gojson import JsonDecodeError, marshal
from imaginator.goformats.units import SECOND
from imaginator.srpc.framing import (
    INSECURE_JSON_PATH,
    TLS_JSON_PATH,
    SrpcConnectionError,
    SrpcError,
)
from imaginator.srpc.identity import AuthError, identity_from_chain
from imaginator.tools.builder_common import (
    END_BANNER,
    START_BANNER,
    Command,
    CommandFailed,
    Io,
    os_reason,
    read_variables,
    write_file,
)

if TYPE_CHECKING:  # Twisted and the SRPC client are imported when a command dials
    from imaginator.runtime.reactors import IReactorTimeAndTCP
    from imaginator.srpc.client import SrpcClient

CLOSE_TIMEOUT = 5.0
ZERO_TIME = "0001-01-01T00:00:00Z"


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
        raise CertError(f"open {directory}: {os_reason(exc)}") from None
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
    reactor: IReactorTimeAndTCP,
    host: str,
    port: int,
    *,
    cert: ClientCert | None,
    method_powers: bool = True,
    timeout: float = 15.0,
) -> SrpcClient:
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
    reactor: IReactorTimeAndTCP | None
    dial: Callable[..., Awaitable[SrpcClient]]
    cert: ClientCert | None
    _client: SrpcClient | None = None

    @property
    def address(self) -> str:
        return f"{self.values['imaginatorHostname']}:{self.values['imaginatorPortNum']}"

    async def client(self) -> SrpcClient:
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


def build_image_request(
    values: Mapping[str, Any], args: Sequence[str], variables: Mapping[str, str] | None
) -> dict[str, Any]:
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
    """Build a stream on the daemon, its log streamed to standard error; the
    image name on standard output (or the image into ``-imageFilename``)."""
    io, values = remote.io, remote.values
    request = build_image_request(values, remote.args, read_variables(values["variablesFilename"]))
    client = await remote.client()
    always = values["alwaysShowBuildLog"]
    if always:
        io.err(START_BANNER + "\n")
    # The end banner closes a log that was shown; a refusal without one (an
    # unknown stream, no permission) is the error line alone.
    shown = [always]

    def on_message(message: Any) -> None:
        if isinstance(message, dict):
            chunk = _decode_b64(message.get("BuildLog"), "BuildLog")
            if chunk:
                shown[0] = True
                io.err(chunk)

    try:
        final = await client.call_stream("Imaginator.BuildImage", request, on_message)
        error = str(final.get("ErrorString") or "") if isinstance(final, dict) else ""
    except (SrpcError, JsonDecodeError) as exc:
        final, error = {}, exc.text
    except CommandFailed as exc:
        final, error = {}, str(exc)
    if error:
        if shown[0]:
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
    reactor: IReactorTimeAndTCP,
    command: Command,
    values: Mapping[str, Any],
    args: list[str],
    io: Io,
    *,
    dial: Callable[..., Awaitable[SrpcClient]],
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
