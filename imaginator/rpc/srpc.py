"""Dominator SRPC on the daemon's HTTP port: server and client (reference §1).

Wire summary. A client opens a TCP connection and sends
``CONNECT /_SRPC_/TLS/JSON HTTP/1.0`` LF LF; the server answers
``HTTP/1.0 200 Connected to Go SRPC`` LF LF and both sides run a TLS handshake
on the same socket (the server requires a client certificate chained to its
CA; the client does not verify the server). Then calls follow, one at a time:
the client sends ``Service.Method`` LF, the server answers LF (accepted) or an
error line; a request/reply call continues with one JSON request and, after
the handler ran, LF + JSON + LF (or an error line). An empty method line is a
ping. Streams hand the connection to the handler after the accepting LF.

Deliberate differences from Go: only the JSON coder is spoken, so the GOB
paths answer 404 (Go clients then fall back to JSON); ``.LocalUpgradeToUnix``
is refused with an error line (Go clients then stay on TCP); the insecure path
is open only when insecure mode is permitted or some methods need no
authentication.

Server: :class:`SrpcSite` is the listening factory. It sniffs each new
connection: ``CONNECT`` means SRPC, a TLS ClientHello means TLS-first SRPC
(handshake, then CONNECT inside TLS), anything else is replayed into the
ordinary HTTP site so the pages keep working on the same port.

Client: :func:`connect` returns an :class:`SrpcClient`.
"""

from __future__ import annotations

import base64
import decimal
import http
import json
import math
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path
from typing import Any, Literal

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL
from OpenSSL.crypto import X509
from twisted.internet.defer import Deferred, DeferredLock, fail
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol
from twisted.internet.error import ConnectError, ConnectionDone, DNSLookupError
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IHandshakeListener,
    IProtocolFactory,
    IReactorTCP,
    IReactorTime,
)
from twisted.internet.protocol import Factory, Protocol, ServerFactory, connectionDone
from twisted.internet.ssl import CertificateOptions, TLSVersion
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from imaginator.rpc.auth import (
    INSECURE_IDENTITY,
    AuthError,
    Authoriser,
    CallAuth,
    Identity,
    identity_from_chain,
)

_log = Logger(namespace="imaginator.rpc.srpc")

TLS_JSON_PATH = "/_SRPC_/TLS/JSON"
INSECURE_JSON_PATH = "/_SRPC_/unsecured/JSON"
GOB_PATH_PREFIXES = ("/_goSRPC_/", "/_go_TLS_SRPC_/")
CONNECTED = b"HTTP/1.0 200 Connected to Go SRPC\n\n"
CONNECTED_STATUS = "200 Connected to Go SRPC"
ACCESS_DENIED = "access to method denied"

# Go's unicode.IsSpace, which strings.TrimSpace uses on method lines.
_GO_SPACE = (
    "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
    "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
_END_OF_HEAD = re.compile(rb"\r?\n\r?\n")
_TRAILING_NEWLINE = re.compile(rb"[ \t\r]*\n")


@dataclass(frozen=True)
class SrpcLimits:
    """Sizes and times beyond which a peer is refused and disconnected."""

    max_connect_head: int = 4096
    max_method_line: int = 1024
    max_message: int = 16 * 1024 * 1024
    handshake_timeout: float = 60.0

    @property
    def max_buffered(self) -> int:
        """Unprocessed bytes tolerated on a connection (one message and a line)."""
        return self.max_message + self.max_method_line + self.max_connect_head


# ===================================================================== errors


class SrpcError(Exception):
    """An error line from the peer, or a failed SRPC connection (client side)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


class SrpcConnectionError(SrpcError):
    """The connection could not be set up, or was lost."""


class CallError(Exception):
    """Raised by a handler: its text is sent to the client as the error line."""


class CallDisconnected(Exception):
    """The client went away while the call was reading."""


class JsonDecodeError(ValueError):
    """Bytes that are not one JSON value; ``text`` is what the peer is told."""

    def __init__(self, text: str, position: int = 0) -> None:
        super().__init__(text)
        self.text = text
        self.position = position


class MessageTooLarge(Exception):
    """A JSON message or line longer than the configured limit."""


# ===================================================================== JSON


_GO_HTML_ESCAPES = {
    "<": "\\u003c",
    ">": "\\u003e",
    "&": "\\u0026",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
}
_GO_HTML_ESCAPE = re.compile("[<>&\u2028\u2029]")
_SURROGATE = re.compile("[\ud800-\udfff]")
_quote_string: Callable[[str], str] = json.encoder.encode_basestring  # type: ignore[attr-defined]


def encode_json(value: Any) -> bytes:
    """Compact JSON exactly as Go's ``encoding/json`` writes it (no trailing LF).

    Mappings keep their order (build dicts in Go's field order); ``bytes`` are
    standard base64 like Go's ``[]byte``; ``<``, ``>``, ``&``, U+2028 and U+2029
    are escaped; invalid UTF-8 (lone surrogates) becomes U+FFFD; floats use
    Go's formatting. NaN and infinities raise ``ValueError``.
    """
    parts: list[str] = []
    _encode_value(value, parts)
    text = "".join(parts)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", text).encode("utf-8")


def _encode_value(value: Any, parts: list[str]) -> None:
    if isinstance(value, str):
        parts.append(_go_string(value))
    elif value is None:
        parts.append("null")
    elif value is True:
        parts.append("true")
    elif value is False:
        parts.append("false")
    elif isinstance(value, int):
        parts.append(int.__repr__(value))
    elif isinstance(value, float):
        parts.append(go_float(value))
    elif isinstance(value, Mapping):
        _encode_object(value, parts)
    elif isinstance(value, list | tuple):
        _encode_array(value, parts)
    elif isinstance(value, bytes | bytearray | memoryview):
        parts.append('"' + base64.b64encode(value).decode("ascii") + '"')
    else:
        raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def _encode_object(value: Mapping[Any, Any], parts: list[str]) -> None:
    parts.append("{")
    first = True
    for key, item in value.items():
        if isinstance(key, bool) or not isinstance(key, str | int):
            raise TypeError(f"cannot encode a {type(key).__name__} key as JSON")
        if not first:
            parts.append(",")
        first = False
        parts.append(_go_string(key if isinstance(key, str) else int.__repr__(key)))
        parts.append(":")
        _encode_value(item, parts)
    parts.append("}")


def _encode_array(value: list[Any] | tuple[Any, ...], parts: list[str]) -> None:
    parts.append("[")
    for index, item in enumerate(value):
        if index:
            parts.append(",")
        _encode_value(item, parts)
    parts.append("]")


def _go_string(text: str) -> str:
    quoted = _quote_string(text)
    if _GO_HTML_ESCAPE.search(quoted):
        quoted = _GO_HTML_ESCAPE.sub(lambda match: _GO_HTML_ESCAPES[match.group()], quoted)
    return quoted


def go_float(value: float) -> str:
    """A float64 as Go's ``encoding/json`` formats it (shortest round-trip)."""
    if math.isnan(value) or math.isinf(value):
        raise ValueError(f"json: unsupported value: {value!r}")
    magnitude = abs(value)
    if magnitude != 0 and (magnitude < 1e-6 or magnitude >= 1e21):
        text = repr(value)  # exponent form, e.g. 1e-07 or 1.5e+21
        mantissa, _, exponent = text.partition("e")
        sign, digits = exponent[0], exponent[1:].lstrip("0") or "0"
        if sign == "+" and len(digits) < 2:
            digits = digits.rjust(2, "0")
        return f"{mantissa}e{sign}{digits}"
    return format(decimal.Decimal(repr(value)).normalize(), "f")


def decode_json(raw: bytes) -> Any:
    """One complete JSON value; invalid UTF-8 becomes U+FFFD, as in Go."""
    text = raw.decode("utf-8", "replace")
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise JsonDecodeError(f"invalid JSON: {exc.msg} at offset {exc.pos}", exc.pos) from None
    except ValueError as exc:
        raise JsonDecodeError(str(exc)) from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"invalid character {name[0]!r} looking for beginning of value")


def _go_char(byte: int) -> str:
    """How Go's JSON scanner quotes an unexpected byte."""
    if byte == 0x27:
        return "'\\''"
    if byte == 0x22:
        return "'\"'"
    if 0x20 <= byte < 0x7F:
        return f"'{chr(byte)}'"
    return f"'\\x{byte:02x}'" if byte < 0x80 else "in string literal"


_JSON_WHITESPACE = re.compile(rb"[ \t\r\n]*")
_STRUCTURAL = re.compile(rb'["{}\[\]]')
_STRING_SPECIAL = re.compile(rb'["\\]')
_SCALAR_END = re.compile(rb"[^0-9A-Za-z+\-.]")
_VALUE_START = frozenset(b'{["-0123456789tfn')


class JsonFramer:
    """Finds where one JSON value ends in a growing buffer, without decoding.

    It tracks only strings and bracket depth, using regular expressions to
    skip over runs of ordinary bytes, so framing a large message is linear.
    Syntax inside the value is checked by :func:`decode_json` once the value
    is complete, and early by :meth:`check_syntax` when the data pauses on
    whitespace.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget the previous value; the next scan starts at offset 0."""
        self.start = -1
        self._position = 0
        self._depth = 0
        self._in_string = False
        self._scalar = False
        self._checked_size = 0

    def scan(self, buffer: bytes | bytearray) -> int | None:
        """Offset just past the value, or None while it is incomplete.

        Raises :class:`JsonDecodeError` if the first byte cannot start a value.
        """
        if self.start < 0 and not self._begin(buffer):
            return None
        return self._advance(buffer)

    def _begin(self, buffer: bytes | bytearray) -> bool:
        match = _JSON_WHITESPACE.match(buffer, self._position)
        position = match.end() if match else self._position
        self._position = position
        if position >= len(buffer):
            return False
        first = buffer[position]
        if first not in _VALUE_START:
            raise JsonDecodeError(
                f"invalid character {_go_char(first)} looking for beginning of value", position
            )
        self.start = position
        if first in b"{[":
            self._depth, self._position = 1, position + 1
        elif first == 0x22:
            self._in_string, self._position = True, position + 1
        else:
            self._scalar = True
        return True

    def _advance(self, buffer: bytes | bytearray) -> int | None:
        position, size = self._position, len(buffer)
        while position < size:
            if self._in_string:
                match = _STRING_SPECIAL.search(buffer, position)
                if match is None:
                    position = size
                    break
                found = match.start()
                if buffer[found] == 0x5C:  # backslash: skip the escaped byte
                    if found + 1 >= size:
                        position = found
                        break
                    position = found + 2
                    continue
                self._in_string, position = False, found + 1
                if self._depth == 0:
                    return position
            elif self._scalar:
                match = _SCALAR_END.search(buffer, position)
                if match is None:
                    position = size
                    break
                return match.start()
            else:
                match = _STRUCTURAL.search(buffer, position)
                if match is None:
                    position = size
                    break
                char, position = buffer[match.start()], match.start() + 1
                if char == 0x22:
                    self._in_string = True
                elif char in b"{[":
                    self._depth += 1
                else:
                    self._depth -= 1
                    if self._depth == 0:
                        return position
        self._position = position
        return None

    def pending_size(self, buffer: bytes | bytearray) -> int:
        """Bytes of the incomplete value seen so far."""
        return len(buffer) - self.start if self.start >= 0 else 0

    def check_syntax(self, buffer: bytes | bytearray) -> None:
        """Raise :class:`JsonDecodeError` if the incomplete value is already invalid.

        Only when the data pauses on whitespace outside a string (so no token
        is cut in half); re-checks only after the value doubled in size, so the
        total work stays linear.
        """
        if self.start < 0 or self._in_string or buffer[-1:] not in (b" ", b"\t", b"\r", b"\n"):
            return
        size = len(buffer) - self.start
        if size < 2 * self._checked_size:
            return
        self._checked_size = size
        text = bytes(buffer[self.start :]).decode("utf-8", "replace")
        try:
            json.JSONDecoder().raw_decode(text)
        except json.JSONDecodeError as exc:
            if text[exc.pos :].strip(" \t\r\n"):
                raise JsonDecodeError(
                    f"invalid JSON: {exc.msg} at offset {exc.pos}", self.start + exc.pos
                ) from None


def _error_line(text: str) -> bytes:
    """An SRPC error line: the text with its newlines removed, then LF."""
    cleaned = text.replace("\r", " ").replace("\n", " ") or "error"
    return cleaned.encode("utf-8", "replace") + b"\n"


# ===================================================================== registry

HandlerKind = Literal["request", "stream"]
Handler = Callable[["Call"], Awaitable[Any]]


Admission = Callable[[CallAuth], "tuple[str | None, Callable[[], None] | None]"]


@dataclass(frozen=True)
class RegisteredMethod:
    """A callable ``Service.Method`` and how it exchanges messages.

    ``admit(auth)``, when given, runs before the call is accepted (Go's
    ``BlockMethod``): it returns a refusal text, sent as the status line, or
    ``None`` and a function to call when the call ends (a rate limiter's release).
    """

    name: str
    handler: Handler
    kind: HandlerKind
    admit: Admission | None = None


class MethodRegistry:
    """The methods a server offers, by ``Service.Method``.

    The built-in service with the empty name always exists and has no
    methods, so ``.LocalUpgradeToUnix`` is answered with an error line and Go
    clients stay on their TCP connection.
    """

    def __init__(self) -> None:
        self._services: dict[str, dict[str, RegisteredMethod]] = {"": {}}

    def register(
        self,
        name: str,
        handler: Handler,
        kind: HandlerKind = "request",
        admit: Admission | None = None,
    ) -> None:
        """Offer ``name`` (``Service.Method``) handled by ``handler``.

        ``kind="request"``: the server decodes one JSON request into
        ``call.request``, awaits ``handler(call)`` and sends its result.
        ``kind="stream"``: ``handler(call)`` owns the exchange after the
        accepting LF (``call.read_json``, ``call.send_json``, ``call.send_line``).
        """
        service, _, method = name.partition(".")
        if name.count(".") != 1 or not service or not method:
            raise ValueError(f"method name must be Service.Method: {name!r}")
        if kind not in ("request", "stream"):
            raise ValueError(f"unknown handler kind: {kind!r}")
        methods = self._services.setdefault(service, {})
        if method in methods:
            raise ValueError(f"method registered twice: {name}")
        methods[method] = RegisteredMethod(name, handler, kind, admit)

    def has_service(self, service: str) -> bool:
        """Whether ``service`` exists (the built-in empty name always does)."""
        return service in self._services

    def lookup(self, service: str, method: str) -> RegisteredMethod | None:
        """The registered method, or None."""
        return self._services.get(service, {}).get(method)

    def method_names(self) -> list[str]:
        """Every ``Service.Method``, sorted."""
        return sorted(m.name for methods in self._services.values() for m in methods.values())


# ===================================================================== server: calls


class Call:
    """One accepted call, as its handler sees it.

    ``auth`` says who is calling; ``request`` holds the decoded request of a
    request/reply call. ``disconnected`` fires (with None) if the client goes
    away before the call ends; the handler keeps running and decides itself
    whether to stop. Writes after the client left are dropped.
    """

    def __init__(self, channel: _CallChannel, method: str, auth: CallAuth) -> None:
        self.method = method
        self.auth = auth
        self.request: Any = None
        self.disconnected: Deferred[None] = Deferred()
        self._channel = channel
        self._finished = False

    @property
    def connected(self) -> bool:
        """True while the client is connected and this call is running."""
        return not self._finished and self._channel.connected_for_calls

    async def read_json(self) -> Any:
        """The next JSON value from the client (Go ``json.Decoder`` rules).

        Raises :class:`JsonDecodeError` (the connection stays usable),
        :class:`CallDisconnected`, or :class:`MessageTooLarge` (the connection
        is being closed).
        """
        if self._finished:
            raise RuntimeError(f"{self.method}: read after the call ended")
        return await self._channel.read_json()

    def send_json(self, value: Any) -> None:
        """Send one compact JSON value followed by LF, in one write."""
        self.write(encode_json(value) + b"\n")

    def send_line(self, text: str = "") -> None:
        """Send a status line: LF alone, or an error text (newlines removed) + LF."""
        self.write(_error_line(text) if text else b"\n")

    def write(self, data: bytes) -> None:
        """Send raw bytes (dropped once the client left or the call ended)."""
        if self._finished:
            _log.warn("{method}: write after the call ended, dropped", method=self.method)
            return
        self._channel.send(data)

    def _finish(self) -> None:
        self._finished = True

    def _client_left(self) -> None:
        if not self.disconnected.called:
            self.disconnected.callback(None)


@dataclass(frozen=True)
class _ServerConfig:
    registry: MethodRegistry
    authoriser: Authoriser
    tls_factory: TLSMemoryBIOFactory | None
    permit_insecure: bool
    limits: SrpcLimits
    reactor: IReactorTime

    @property
    def insecure_allowed(self) -> bool:
        """Whether ``/_SRPC_/unsecured/JSON`` is accepted (else 405, as in Go)."""
        return self.permit_insecure or bool(self.authoriser.unauthenticated_methods)

    @property
    def insecure_identity(self) -> Identity | None:
        """Who a plaintext caller is: everyone (insecure mode) or nobody."""
        return INSECURE_IDENTITY if self.permit_insecure else None


# ===================================================================== server: HTTP answers


@dataclass(frozen=True)
class _ConnectRequest:
    method: str
    path: str
    query: str
    version: str

    @property
    def method_powers(self) -> bool:
        """False when the client asked ``doNotUseMethodPowers=true``."""
        for pair in self.query.split("&"):
            key, _, value = pair.partition("=")
            if key == "doNotUseMethodPowers" and value == "true":
                return False
        return True


class _BadRequest(Exception):
    pass


_QUERY_OK = re.compile(r"(?:[^%;]|%[0-9A-Fa-f]{2})*")


def _parse_request_head(head: bytes) -> _ConnectRequest:
    """The request line of an HTTP head (LF or CR LF line ends)."""
    line = head.split(b"\n", 1)[0].rstrip(b"\r")
    try:
        method, target, version = line.decode("ascii").split(" ")
    except (UnicodeDecodeError, ValueError):
        raise _BadRequest() from None
    if not version.startswith("HTTP/1.") or not target.startswith("/"):
        raise _BadRequest()
    path, _, query = target.partition("?")
    return _ConnectRequest(method, path, query, version)


def http_error_response(status: int, now: float, version: str = "HTTP/1.0") -> bytes:
    """A Go ``net/http`` style empty error response (CR LF, Date, no body)."""
    if version not in ("HTTP/1.0", "HTTP/1.1"):
        version = "HTTP/1.0"
    lines = [
        f"{version} {status} {http.HTTPStatus(status).phrase}",
        "Content-Type: text/plain; charset=utf-8",
        f"Date: {formatdate(now, usegmt=True)}",
        "Content-Length: 0",
    ]
    if version == "HTTP/1.1":
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


def _route_connect(request: _ConnectRequest, config: _ServerConfig) -> int | str:
    """Go's checks in order: an HTTP status to refuse with, or ``"tls"``/``"insecure"``."""
    if request.path == TLS_JSON_PATH:
        if config.tls_factory is None:
            return 404
        route = "tls"
    elif request.path == INSECURE_JSON_PATH:
        route = "insecure"
    else:
        return 404  # the GOB paths and everything else: Go clients fall back to JSON
    if request.method != "CONNECT":
        return 400
    if route == "insecure" and not config.insecure_allowed:
        return 405
    if not _QUERY_OK.fullmatch(request.query):
        return 400
    return route


# ===================================================================== server: connections


@implementer(IHandshakeListener)
class _CallChannel(Protocol):
    """An established SRPC session: method lines, then each call's exchange.

    Runs either on the plain transport (insecure path) or under a TLS layer,
    in which case the caller's identity arrives with the handshake. In
    TLS-first mode the CONNECT request is read inside TLS first.
    """

    def __init__(
        self,
        config: _ServerConfig,
        *,
        identity: Identity | None,
        tls: bool,
        expect_connect: bool = False,
        method_powers: bool = True,
        on_ready: Callable[[], None] = lambda: None,
    ) -> None:
        self._config = config
        self._identity = identity
        self._authenticated = not tls
        self._expect_connect = expect_connect
        self._method_powers = method_powers
        self._on_ready = on_ready
        self._buffer = bytearray()
        self._framer = JsonFramer()
        self._call: Call | None = None
        self._reader: Deferred[Any] | None = None
        self._eat_newline = False
        self._closing = False
        self._lost = False
        self._pumping = False

    @property
    def connected_for_calls(self) -> bool:
        return not (self._closing or self._lost)

    # ----------------------------------------------------------- Protocol

    def connectionMade(self) -> None:
        if self._authenticated and not self._expect_connect:
            self._on_ready()

    def handshakeCompleted(self) -> None:
        """Take the caller's identity from the verified certificate chain."""
        handle = self.transport.getHandle()  # type: ignore[union-attr]
        chain = handle.get_verified_chain(as_cryptography=True)
        try:
            if not chain:
                raise AuthError("no verified client certificate")
            self._identity = identity_from_chain(chain)
        except AuthError as exc:
            _log.info("SRPC client refused: {error}", error=str(exc))
            self._abort()
            return
        self._authenticated = True
        if not self._expect_connect:
            self._on_ready()
        self._pump()

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        self._buffer += data
        if len(self._buffer) > self._config.limits.max_buffered:
            self._refuse("too much unread data")
            return
        self._pump()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._lost = True
        if not self._authenticated and not reason.check(ConnectionDone):
            _log.info("SRPC TLS handshake failed: {reason}", reason=reason.getErrorMessage())
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.errback(CallDisconnected("client disconnected"))
        if self._call is not None:
            self._call._client_left()

    # ----------------------------------------------------------- input

    def _pump(self) -> None:
        """Process buffered input as far as the current state allows.

        Not re-entered: a call that ends while input is being processed
        (synchronously, e.g. with its request already buffered) lets the
        running loop go on, so pipelined calls cannot nest the stack.
        """
        if self._pumping:
            return
        self._pumping = True
        try:
            self._pump_loop()
        finally:
            self._pumping = False

    def _pump_loop(self) -> None:
        while not (self._closing or self._lost) and self._authenticated:
            if self._expect_connect:
                if not self._read_connect():
                    return
            elif self._reader is not None:
                self._feed_reader()
                if self._reader is not None:
                    return
            elif self._call is not None:
                return
            else:
                line = self._take_method_line()
                if line is None:
                    return
                self._dispatch(line)

    def _read_connect(self) -> bool:
        """TLS-first mode: answer the CONNECT inside TLS; True once accepted."""
        limits = self._config.limits
        match = _END_OF_HEAD.search(self._buffer)
        if match is None:
            if len(self._buffer) > limits.max_connect_head:
                self._http_refusal(400, "HTTP/1.0")
            return False
        head = bytes(self._buffer[: match.start()])
        del self._buffer[: match.end()]
        try:
            request = _parse_request_head(head)
        except _BadRequest:
            self._http_refusal(400, "HTTP/1.0")
            return False
        route = _route_connect(request, self._config)
        if isinstance(route, int):
            self._http_refusal(route, request.version)
            return False
        self._expect_connect = False
        self._method_powers = request.method_powers
        self.send(CONNECTED)
        self._on_ready()
        return True

    def _take_method_line(self) -> str | None:
        self._drop_trailing_newline(final=True)
        limit = self._config.limits.max_method_line
        end = self._buffer.find(b"\n", 0, limit + 1)
        if end < 0:
            if len(self._buffer) > limit:
                self._refuse(f"method line longer than {limit} bytes")
            return None
        raw = bytes(self._buffer[:end])
        del self._buffer[: end + 1]
        return raw.decode("utf-8", "replace").strip(_GO_SPACE)

    def _drop_trailing_newline(self, *, final: bool) -> None:
        """Consume the LF a Go client sends after each JSON value.

        Go clients send it in the same write as the value. If it was not there
        yet, it is still taken when it arrives before the call ends (``final``
        is the last look); after that, an LF is a ping again, as in Go.
        """
        if not self._eat_newline:
            return
        match = _TRAILING_NEWLINE.match(self._buffer)
        if match is not None:
            del self._buffer[: match.end()]
        if match is not None or final:
            self._eat_newline = False

    def read_json(self) -> Deferred[Any]:
        """Deferred firing with the next JSON value of the current call."""
        if self._lost or self._closing:
            return fail(CallDisconnected("client disconnected"))
        if self._reader is not None:
            return fail(RuntimeError("read_json is already waiting"))
        self._framer.reset()
        self._eat_newline = False
        reader: Deferred[Any] = Deferred()
        self._reader = reader
        self._feed_reader()
        return reader

    def _feed_reader(self) -> None:
        """Complete the pending read if a whole value (or an error) is buffered."""
        try:
            value = self._take_json()
        except JsonDecodeError as exc:
            self._settle_reader(Failure(exc))
        except MessageTooLarge as exc:
            self._refuse(str(exc))
            self._settle_reader(Failure(exc))
        else:
            if value is not _INCOMPLETE:
                self._settle_reader(value)

    def _take_json(self) -> Any:
        limit = self._config.limits.max_message
        try:
            end = self._framer.scan(self._buffer)
            if end is None:
                if self._framer.pending_size(self._buffer) > limit:
                    raise MessageTooLarge(f"message longer than {limit} bytes")
                self._framer.check_syntax(self._buffer)
                return _INCOMPLETE
        except JsonDecodeError as exc:
            self._discard_garbage(exc.position)
            raise
        start = self._framer.start
        raw = bytes(self._buffer[start:end])
        del self._buffer[:end]
        self._eat_newline = True
        self._drop_trailing_newline(final=False)
        if len(raw) > limit:
            raise MessageTooLarge(f"message longer than {limit} bytes")
        return decode_json(raw)

    def _discard_garbage(self, position: int) -> None:
        """After a syntax error, drop the bad bytes up to the end of their line."""
        end = self._buffer.find(b"\n", position)
        del self._buffer[: len(self._buffer) if end < 0 else end + 1]

    def _settle_reader(self, result: Any) -> None:
        reader, self._reader = self._reader, None
        if reader is None:
            return
        if isinstance(result, Failure):
            reader.errback(result)
        else:
            reader.callback(result)

    # ----------------------------------------------------------- calls

    def _dispatch(self, line: str) -> None:
        if not line:
            self.send(b"\n")  # ping
            return
        if line.count(".") != 1:
            self.send(_error_line(f"malformed Service.Method: {line}"))
            return
        service, _, name = line.partition(".")
        registry = self._config.registry
        if not registry.has_service(service):
            self.send(_error_line(f"unknown service: {service}"))
            return
        method = registry.lookup(service, name)
        if method is None:
            self.send(_error_line(f"{service}: unknown method: {name}"))
            return
        auth = self._config.authoriser.check(self._identity, line, self._method_powers)
        if auth is None:
            self.send(_error_line(ACCESS_DENIED))
            return
        release = None
        if method.admit is not None:
            refusal, release = method.admit(auth)
            if refusal is not None:
                self.send(_error_line(refusal))
                return
        self._start(method, auth, release)

    def _start(
        self, method: RegisteredMethod, auth: CallAuth, release: Callable[[], None] | None = None
    ) -> None:
        call = Call(self, method.name, auth)
        self._call = call
        self.send(b"\n")
        runner = _run_request if method.kind == "request" else _run_stream
        done = Deferred.fromCoroutine(runner(self, method, call))
        done.addErrback(self._runner_failed, method.name)
        if release is not None:
            done.addBoth(lambda result: (release(), result)[1])
        done.addBoth(lambda _: self._end(call))

    def _runner_failed(self, failure: Failure, name: str) -> None:
        _log.failure("SRPC call {method} failed", failure, method=name)
        self._abort()

    def _end(self, call: Call) -> None:
        call._finish()
        if self._call is call:
            self._call = None
        self._pump()

    # ----------------------------------------------------------- output

    def send(self, data: bytes) -> None:
        """Write to the client unless the connection is gone."""
        if not self._lost and self.transport is not None:
            self.transport.write(data)

    def _refuse(self, text: str) -> None:
        """Tell the client why, then close (limits exceeded)."""
        _log.info("SRPC connection closed: {reason}", reason=text)
        self.send(_error_line(text))
        self._close()

    def _http_refusal(self, status: int, version: str) -> None:
        self.send(http_error_response(status, self._config.reactor.seconds(), version))
        self._close()

    def close(self) -> None:
        """Close after the pending output (used when a stream handler fails)."""
        self._close()

    def _close(self) -> None:
        if not self._closing and self.transport is not None:
            self._closing = True
            self.transport.loseConnection()

    def _abort(self) -> None:
        self._closing = True
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]


_INCOMPLETE = object()


async def _run_request(channel: _CallChannel, method: RegisteredMethod, call: Call) -> None:
    """Request/reply: decode the request, run the handler, send one reply."""
    try:
        call.request = await channel.read_json()
    except JsonDecodeError as exc:
        call.write(_error_line(exc.text))
        return
    except (CallDisconnected, MessageTooLarge):
        return
    try:
        result = await method.handler(call)
        reply = b"\n" + encode_json(result) + b"\n"
    except CallError as exc:
        reply = _error_line(str(exc))
    except Exception as exc:
        _log.failure("SRPC handler {method} raised", Failure(), method=method.name)
        reply = _error_line(str(exc) or type(exc).__name__)
    call.write(reply)


async def _run_stream(channel: _CallChannel, method: RegisteredMethod, call: Call) -> None:
    """Stream: the handler owns the exchange; an error closes the connection (as in Go)."""
    try:
        await method.handler(call)
    except (CallDisconnected, MessageTooLarge):
        return
    except (CallError, JsonDecodeError) as exc:
        text = exc.text if isinstance(exc, JsonDecodeError) else str(exc)
        _log.info("SRPC stream {method} ended: {error}", method=method.name, error=text)
        call.write(_error_line(text))
        channel.close()
    except Exception:
        _log.failure("SRPC stream handler {method} raised", Failure(), method=method.name)
        channel.close()


class _Sniffer(Protocol):
    """Decides what a new connection speaks, then hands it on.

    ``CONNECT`` → SRPC, a TLS ClientHello (0x16 0x03) → TLS-first SRPC, else
    the buffered bytes are replayed into the HTTP site's protocol.
    """

    def __init__(self, site: SrpcSite) -> None:
        self._site = site
        self._config = site.config
        self._buffer = bytearray()
        self._downstream: Protocol | None = None
        self._timeout: IDelayedCall | None = None

    def connectionMade(self) -> None:
        self._site._opened(self)
        limits = self._config.limits
        self._timeout = self._config.reactor.callLater(  # type: ignore[attr-defined]
            limits.handshake_timeout, self._timed_out
        )

    def dataReceived(self, data: bytes) -> None:
        if self._downstream is not None:
            self._downstream.dataReceived(data)
            return
        self._buffer += data
        self._classify()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._cancel_timeout()
        self._site._closed(self)
        downstream, self._downstream = self._downstream, None
        if downstream is not None:
            downstream.connectionLost(reason)

    # ----------------------------------------------------------- decisions

    def _classify(self) -> None:
        buffer = bytes(self._buffer[:7])
        for prefix in (b"CONNECT", b"\x16\x03"):
            if len(buffer) < len(prefix) and prefix.startswith(buffer):
                return  # too few bytes to tell yet
        if buffer.startswith(b"\x16\x03"):
            self._start_tls_first()
        elif buffer.startswith(b"CONNECT"):
            self._handle_head(connect=True)
        else:
            self._handle_head(connect=False)

    def _handle_head(self, *, connect: bool) -> None:
        """CONNECT (or a request for an SRPC path): answer it; else go to HTTP."""
        limit = self._config.limits.max_connect_head
        if not connect and not self._targets_srpc_path(limit):
            return
        match = _END_OF_HEAD.search(self._buffer)
        if match is None:
            if len(self._buffer) > limit:
                self._refuse(400, "HTTP/1.0")
            return
        head = bytes(self._buffer[: match.start()])
        rest = bytes(self._buffer[match.end() :])
        self._buffer.clear()
        try:
            request = _parse_request_head(head)
        except _BadRequest:
            self._refuse(400, "HTTP/1.0")
            return
        route = _route_connect(request, self._config)
        if isinstance(route, int):
            self._refuse(route, request.version)
        else:
            self._accept(route, request, rest)

    def _targets_srpc_path(self, limit: int) -> bool:
        """For a non-CONNECT request: True if it is for an SRPC path (we answer).

        Otherwise the connection is handed to HTTP (or we wait for the line).
        """
        end = self._buffer.find(b"\n")
        if end < 0 and len(self._buffer) <= limit:
            return False
        line = bytes(self._buffer[: end if end >= 0 else limit])
        parts = line.split()
        target = parts[1].split(b"?", 1)[0] if len(parts) >= 2 else b""
        if target in (TLS_JSON_PATH.encode(), INSECURE_JSON_PATH.encode()):
            return True
        self._to_http()
        return False

    def _accept(self, route: str, request: _ConnectRequest, rest: bytes) -> None:
        self._keep_alive()
        self.transport.write(CONNECTED)  # type: ignore[union-attr]
        if route == "insecure":
            channel = _CallChannel(
                self._config,
                identity=self._config.insecure_identity,
                tls=False,
                method_powers=request.method_powers,
                on_ready=self._cancel_timeout,
            )
            self._switch(channel, rest)
            return
        channel = _CallChannel(
            self._config,
            identity=None,
            tls=True,
            method_powers=request.method_powers,
            on_ready=self._cancel_timeout,
        )
        self._switch_tls(channel, rest)

    def _start_tls_first(self) -> None:
        if self._config.tls_factory is None:
            self.transport.loseConnection()  # type: ignore[union-attr]
            return
        self._keep_alive()
        channel = _CallChannel(
            self._config,
            identity=None,
            tls=True,
            expect_connect=True,
            on_ready=self._cancel_timeout,
        )
        data = bytes(self._buffer)
        self._buffer.clear()
        self._switch_tls(channel, data)

    def _switch_tls(self, channel: _CallChannel, data: bytes) -> None:
        factory = self._config.tls_factory
        assert factory is not None
        self._switch(factory.protocol(factory, channel), data)

    def _switch(self, protocol: Protocol, data: bytes) -> None:
        self._downstream = protocol
        protocol.makeConnection(self.transport)
        if data:
            protocol.dataReceived(data)

    def _to_http(self) -> None:
        self._cancel_timeout()
        peer = self.transport.getPeer()  # type: ignore[union-attr]
        protocol = self._site.http_factory.buildProtocol(peer)
        if protocol is None:
            self.transport.loseConnection()  # type: ignore[union-attr]
            return
        data = bytes(self._buffer)
        self._buffer.clear()
        self._switch(protocol, data)  # type: ignore[arg-type]

    # ----------------------------------------------------------- helpers

    def _refuse(self, status: int, version: str) -> None:
        self._buffer.clear()
        now = self._config.reactor.seconds()
        self.transport.write(http_error_response(status, now, version))  # type: ignore[union-attr]
        self.transport.loseConnection()  # type: ignore[union-attr]
        self._downstream = Protocol()  # ignore anything that still arrives

    def _keep_alive(self) -> None:
        set_keep_alive = getattr(self.transport, "setTcpKeepAlive", None)
        if set_keep_alive is not None:
            set_keep_alive(True)

    def _timed_out(self) -> None:
        self._timeout = None
        _log.info("SRPC connection set-up timed out")
        self.transport.abortConnection()  # type: ignore[union-attr]

    def _cancel_timeout(self) -> None:
        timeout, self._timeout = self._timeout, None
        if timeout is not None and timeout.active():
            timeout.cancel()


class SrpcSite(ServerFactory):
    """The listening factory: SRPC and the HTTP site on one port.

    ``http_factory`` is the ordinary ``twisted.web.server.Site``;
    ``tls_options`` (see :func:`make_server_tls_options`) may be None only for
    a server without a CA, whose TLS path then answers 404; with
    ``permit_insecure`` the plaintext JSON path is open and grants every
    method, otherwise it answers 405 (unless some methods need no
    authentication).
    """

    noisy = False

    def __init__(
        self,
        http_factory: IProtocolFactory,
        registry: MethodRegistry,
        authoriser: Authoriser,
        tls_options: CertificateOptions | None,
        *,
        reactor: IReactorTime,
        permit_insecure: bool = False,
        limits: SrpcLimits = SrpcLimits(),
    ) -> None:
        self.http_factory = http_factory
        tls_factory = None
        if tls_options is not None:
            tls_factory = TLSMemoryBIOFactory(tls_options, False, Factory(), clock=reactor)
        self.config = _ServerConfig(
            registry, authoriser, tls_factory, permit_insecure, limits, reactor
        )
        self._connections: set[_Sniffer] = set()

    @property
    def active_connections(self) -> int:
        """Connections currently open (HTTP and SRPC)."""
        return len(self._connections)

    def abort_connections(self) -> None:
        """Drop every open connection at once (at shutdown)."""
        for connection in list(self._connections):
            if connection.transport is not None:
                connection.transport.abortConnection()  # type: ignore[attr-defined]

    def buildProtocol(self, addr: IAddress) -> Protocol:
        protocol = _Sniffer(self)
        protocol.factory = self
        return protocol

    def startFactory(self) -> None:
        self.http_factory.doStart()

    def stopFactory(self) -> None:
        self.http_factory.doStop()

    def _opened(self, protocol: _Sniffer) -> None:
        self._connections.add(protocol)

    def _closed(self, protocol: _Sniffer) -> None:
        self._connections.discard(protocol)


# ===================================================================== TLS options


def _load_certificates(path: str | Path) -> list[x509.Certificate]:
    certs = x509.load_pem_x509_certificates(Path(path).read_bytes())
    if not certs:
        raise ValueError(f"{path}: no certificate")
    return certs


def _key_and_chain(cert_file: str | Path, key_file: str | Path) -> dict[str, Any]:
    chain = _load_certificates(cert_file)
    key = serialization.load_pem_private_key(Path(key_file).read_bytes(), password=None)
    # pyOpenSSL takes cryptography objects for these (its own types are deprecated).
    return {"privateKey": key, "certificate": chain[0], "extraCertChain": chain[1:]}


def make_server_tls_options(
    ca_file: str | Path, cert_file: str | Path, key_file: str | Path
) -> CertificateOptions:
    """Server TLS as Go's ``setupserver``: TLS ≥ 1.2, client certificates
    required and verified against ``ca_file``, own certificate and key.

    The CA names are sent in the CertificateRequest so that clients holding
    several certificates present one from this CA. Reads files: call at start-up.
    """
    ca_certs = _load_certificates(ca_file)
    options = CertificateOptions(
        **_key_and_chain(cert_file, key_file),
        verify=True,
        caCerts=[X509.from_cryptography(cert) for cert in ca_certs],  # the trust store needs X509
        requireCertificate=True,
        raiseMinimumTo=TLSVersion.TLSv1_2,
    )
    context = options.getContext()
    for cert in ca_certs:
        context.add_client_ca(cert)
    return options


def make_client_tls_options(
    cert_file: str | Path | None, key_file: str | Path | None
) -> CertificateOptions:
    """Client TLS as Go's ``setupclient``: TLS ≥ 1.2, present the certificate
    (if any), do **not** verify the server. Reads files."""
    credentials = _key_and_chain(cert_file, key_file) if cert_file and key_file else {}
    return CertificateOptions(**credentials, verify=False, raiseMinimumTo=TLSVersion.TLSv1_2)


# ===================================================================== client


@implementer(IHandshakeListener)
class _ClientProtocol(Protocol):
    """Buffers what the server sends and lets coroutines await lines and values."""

    def __init__(self, max_message: int) -> None:
        self._max_message = max_message
        self._buffer = bytearray()
        self._waiter: Deferred[None] | None = None
        self._lost: Failure | None = None
        self._eat_newline = False
        self._tls_started = False
        self.closed_locally = False
        self.handshake: Deferred[None] = Deferred()
        self.closed: Deferred[None] = Deferred()

    def start_tls(self, options: CertificateOptions) -> Deferred[None]:
        """Run the TLS client handshake; the Deferred fires when it is done."""
        self._tls_started = True
        self.transport.startTLS(options)  # type: ignore[union-attr]
        return self.handshake

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        self._wake()

    def handshakeCompleted(self) -> None:
        if not self.handshake.called:
            self.handshake.callback(None)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._lost = reason
        if self._tls_started and not self.handshake.called:
            self.handshake.errback(self._error())
        self._wake()
        self.closed.callback(None)

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter.callback(None)

    def _error(self) -> SrpcConnectionError:
        assert self._lost is not None
        if self.closed_locally:
            return SrpcConnectionError("connection closed")
        return _connection_error(self._lost)

    def _more(self) -> Deferred[None]:
        if self._lost is not None:
            return fail(self._error())
        self._waiter = Deferred()
        return self._waiter

    def write(self, data: bytes) -> None:
        if self._lost is not None:
            raise self._error()
        self.transport.write(data)  # type: ignore[union-attr]

    async def read_head(self, limit: int) -> bytes:
        """The HTTP response head, up to its empty line."""
        while (match := _END_OF_HEAD.search(self._buffer)) is None:
            if len(self._buffer) > limit:
                raise SrpcConnectionError("malformed HTTP response: head too long")
            await self._more()
        head = bytes(self._buffer[: match.start()])
        del self._buffer[: match.end()]
        return head

    async def read_line(self) -> str:
        """The next line without its LF."""
        await self._drop_trailing_newline()
        while (end := self._buffer.find(b"\n")) < 0:
            if len(self._buffer) > self._max_message:
                raise SrpcConnectionError("line too long")
            await self._more()
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 1]
        return line.decode("utf-8", "replace")

    async def read_json(self) -> Any:
        """The next JSON value; the LF after it is dropped before the next read."""
        framer = JsonFramer()
        self._eat_newline = False
        while (end := framer.scan(self._buffer)) is None:
            if framer.pending_size(self._buffer) > self._max_message:
                raise SrpcConnectionError("message too large")
            await self._more()
        raw = bytes(self._buffer[framer.start : end])
        del self._buffer[:end]
        self._eat_newline = True
        return decode_json(raw)

    async def read_reply(self) -> Any:
        """:meth:`read_json`, but a bad value ends the (now unusable) connection."""
        try:
            return await self.read_json()
        except JsonDecodeError as exc:
            self.transport.abortConnection()  # type: ignore[union-attr]
            raise SrpcConnectionError(f"bad message from the server: {exc.text}") from None

    async def _drop_trailing_newline(self) -> None:
        while self._eat_newline:
            match = _TRAILING_NEWLINE.match(self._buffer)
            if match is not None:
                del self._buffer[: match.end()]
                self._eat_newline = False
            elif self._buffer.strip(b" \t\r"):
                self._eat_newline = False
            else:
                await self._more()


def _connection_error(reason: Failure) -> SrpcConnectionError:
    if reason.check(ConnectionDone):
        return SrpcConnectionError("connection closed by the server")
    if reason.check(SSL.Error):
        return SrpcConnectionError(f"TLS error: {reason.getErrorMessage()}")
    return SrpcConnectionError(f"connection lost: {reason.getErrorMessage()}")


def is_final_build_message(message: Any) -> bool:
    """builder-tool's stop rule for ``Imaginator.BuildImage`` (reference §2.3):
    an ``ErrorString``, a non-null ``Image`` or a non-empty ``ImageName``."""
    if not isinstance(message, Mapping):
        return True
    return bool(message.get("ErrorString") or message.get("Image") or message.get("ImageName"))


class SrpcClient:
    """An SRPC connection: calls run one at a time, in order."""

    def __init__(self, protocol: _ClientProtocol) -> None:
        self._protocol = protocol
        self._lock = DeferredLock()

    async def ping(self) -> None:
        """Send an empty method line and wait for the LF."""
        async with self._lock:
            self._protocol.write(b"\n")
            await self._status()

    async def call(self, method: str, request: Any) -> Any:
        """A request/reply call; raises :class:`SrpcError` on an error line."""
        async with self._lock:
            await self._begin(method, request)
            return await self._protocol.read_reply()

    async def call_stream(
        self,
        method: str,
        request: Any,
        on_message: Callable[[Any], object],
        done: Callable[[Any], bool] = is_final_build_message,
    ) -> Any:
        """A streaming call in the ``BuildImage`` style: method line, request,
        a status line, then messages until ``done(message)``; every message
        (the final one too) is passed to ``on_message``. Returns the final one.
        """
        async with self._lock:
            await self._begin(method, request)
            while True:
                message = await self._protocol.read_reply()
                on_message(message)
                if done(message):
                    return message

    async def _begin(self, method: str, request: Any) -> None:
        self._protocol.write(method.encode("utf-8") + b"\n")
        await self._status()
        self._protocol.write(encode_json(request) + b"\n")
        await self._status()

    async def _status(self) -> None:
        line = await self._protocol.read_line()
        if line:
            raise SrpcError(line)

    def close(self) -> Deferred[None]:
        """Close the connection; the Deferred fires once it is closed."""
        transport = self._protocol.transport
        if transport is not None and not self._protocol.closed.called:
            self._protocol.closed_locally = True
            transport.loseConnection()
        return self._protocol.closed


def _check_connect_reply(head: bytes) -> None:
    """Go's ``DialHTTP`` verdicts on the CONNECT answer."""
    line = head.split(b"\n", 1)[0].rstrip(b"\r").decode("latin-1")
    version, _, status = line.partition(" ")
    if not version.startswith("HTTP/") or not status[:3].isdigit():
        raise SrpcConnectionError(f"malformed HTTP response: {line!r}")
    code = int(status[:3])
    if code == 200 and status == CONNECTED_STATUS:
        return
    verdicts = {404: "no SRPC endpoint", 401: "bad certificate", 405: "missing certificate"}
    raise SrpcConnectionError(verdicts.get(code, f"unexpected HTTP response: {status}"))


async def connect(
    host: str,
    port: int,
    *,
    reactor: IReactorTCP,
    cert_file: str | Path | None = None,
    key_file: str | Path | None = None,
    path: str = TLS_JSON_PATH,
    tls: bool = True,
    timeout: float = 15.0,
    limits: SrpcLimits = SrpcLimits(),
    tls_options: CertificateOptions | None = None,
) -> SrpcClient:
    """Open an SRPC connection: CONNECT, then (``tls``) a TLS client handshake
    presenting ``cert_file``/``key_file``. The server is not verified, as in Go.
    ``timeout`` covers the connection, the CONNECT and the handshake.

    Reading the certificate files is a (small) blocking read; a caller making
    many connections passes ``tls_options`` from :func:`make_client_tls_options`
    instead.
    """
    options = None
    if tls:
        options = tls_options or make_client_tls_options(cert_file, key_file)
    protocol = _ClientProtocol(limits.max_message)
    endpoint = HostnameEndpoint(reactor, host, port, timeout=timeout)
    try:
        await connectProtocol(endpoint, protocol)
    except (ConnectError, DNSLookupError) as exc:
        raise SrpcConnectionError(f"cannot connect to {host}:{port}: {exc}") from exc
    assert protocol.transport is not None
    set_keep_alive = getattr(protocol.transport, "setTcpKeepAlive", None)
    if set_keep_alive is not None:
        set_keep_alive(True)
    deadline = reactor.callLater(timeout, protocol.transport.abortConnection)  # type: ignore[attr-defined]
    try:
        protocol.write(f"CONNECT {path} HTTP/1.0\n\n".encode())
        _check_connect_reply(await protocol.read_head(limits.max_connect_head))
        if options is not None:
            await protocol.start_tls(options)
    except BaseException:
        protocol.transport.abortConnection()  # type: ignore[attr-defined]
        raise
    finally:
        if deadline.active():
            deadline.cancel()
    return SrpcClient(protocol)
