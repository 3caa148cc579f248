"""The SRPC server's calls (reference §1.4 to §1.5, §1.8): methods, and running them.

:class:`MethodRegistry` holds what the server offers; a connection that got
through the CONNECT (and its TLS handshake) becomes a call channel, which reads
method lines, checks them with the :class:`~imaginator.srpc.identity.Authoriser`
and runs one :class:`Call` at a time. Request/reply handlers get the decoded
request and return the reply; stream handlers own the exchange after the
accepting LF. The server speaks the JSON coder only: the GOB paths answer 404
and Go clients fall back to JSON; ``.LocalUpgradeToUnix`` is refused with an
error line and Go clients stay on TCP.

The listening side (sniffing SRPC, TLS and HTTP on one port) is
:mod:`imaginator.srpc.site`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHandshakeListener, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from imaginator.goformats.gojson import JsonDecodeError, decode_json, marshal
from imaginator.runtime.transports import stream_transport, tls_transport
from imaginator.srpc.framing import (
    ACCESS_DENIED,
    CONNECTED,
    END_OF_HEAD,
    GO_SPACE,
    INSECURE_JSON_PATH,
    QUERY_OK,
    TLS_JSON_PATH,
    TRAILING_NEWLINE,
    BadConnectRequest,
    ConnectRequest,
    JsonFramer,
    MessageTooLarge,
    SrpcLimits,
    error_line,
    http_error_response,
    parse_connect_head,
)
from imaginator.srpc.identity import (
    INSECURE_IDENTITY,
    AuthError,
    Authoriser,
    CallAuth,
    Identity,
    identity_from_chain,
)

_log = Logger(namespace="imaginator.srpc.server")


class CallError(Exception):
    """Raised by a handler: its text is sent to the client as the error line."""


class CallDisconnected(Exception):
    """The client went away while the call was reading."""


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


# ===================================================================== calls


class Call:
    """One accepted call, as its handler sees it.

    ``auth`` says who is calling; ``request`` holds the decoded request of a
    request/reply call. ``disconnected`` fires (with None) if the client goes
    away before the call ends; the handler keeps running and decides itself
    whether to stop. Writes after the client left are dropped.
    """

    def __init__(self, channel: CallChannel, method: str, auth: CallAuth) -> None:
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

    @property
    def consumer(self) -> Any:
        """The transport the call's replies go to (an ``IConsumer``: register a
        producer on it to be paused while the client reads slowly), or
        ``None`` once the connection is gone."""
        return getattr(self._channel, "transport", None)

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
        self.write(marshal(value) + b"\n")

    def send_line(self, text: str = "") -> None:
        """Send a status line: LF alone, or an error text (newlines removed) + LF."""
        self.write(error_line(text) if text else b"\n")

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


# ===================================================================== configuration


@dataclass(frozen=True)
class ServerConfig:
    """What every connection of one listening site shares."""

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


def route_connect(request: ConnectRequest, config: ServerConfig) -> int | str:
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
    if not QUERY_OK.fullmatch(request.query):
        return 400
    return route


# ===================================================================== the call channel


@implementer(IHandshakeListener)
class CallChannel(Protocol):
    """An established SRPC session: method lines, then each call's exchange.

    Runs either on the plain transport (insecure path) or under a TLS layer,
    in which case the caller's identity arrives with the handshake. In
    TLS-first mode the CONNECT request is read inside TLS first.
    """

    def __init__(
        self,
        config: ServerConfig,
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
        handle = tls_transport(self).getHandle()
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
        match = END_OF_HEAD.search(self._buffer)
        if match is None:
            if len(self._buffer) > limits.max_connect_head:
                self._http_refusal(400, "HTTP/1.0")
            return False
        head = bytes(self._buffer[: match.start()])
        del self._buffer[: match.end()]
        try:
            request = parse_connect_head(head)
        except BadConnectRequest:
            self._http_refusal(400, "HTTP/1.0")
            return False
        route = route_connect(request, self._config)
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
        return raw.decode("utf-8", "replace").strip(GO_SPACE)

    def _drop_trailing_newline(self, *, final: bool) -> None:
        """Consume the LF a Go client sends after each JSON value.

        Go clients send it in the same write as the value. If it was not there
        yet, it is still taken when it arrives before the call ends (``final``
        is the last look); after that, an LF is a ping again, as in Go.
        """
        if not self._eat_newline:
            return
        match = TRAILING_NEWLINE.match(self._buffer)
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
            self.send(error_line(f"malformed Service.Method: {line}"))
            return
        service, _, name = line.partition(".")
        registry = self._config.registry
        if not registry.has_service(service):
            self.send(error_line(f"unknown service: {service}"))
            return
        method = registry.lookup(service, name)
        if method is None:
            self.send(error_line(f"{service}: unknown method: {name}"))
            return
        auth = self._config.authoriser.check(self._identity, line, self._method_powers)
        if auth is None:
            self.send(error_line(ACCESS_DENIED))
            return
        release = None
        if method.admit is not None:
            refusal, release = method.admit(auth)
            if refusal is not None:
                self.send(error_line(refusal))
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
        self.send(error_line(text))
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
            stream_transport(self).abortConnection()


_INCOMPLETE = object()


async def _run_request(channel: CallChannel, method: RegisteredMethod, call: Call) -> None:
    """Request/reply: decode the request, run the handler, send one reply."""
    try:
        call.request = await channel.read_json()
    except JsonDecodeError as exc:
        call.write(error_line(exc.text))
        return
    except (CallDisconnected, MessageTooLarge):
        return
    try:
        result = await method.handler(call)
        reply = b"\n" + marshal(result) + b"\n"
    except CallError as exc:
        reply = error_line(str(exc))
    except Exception as exc:
        _log.failure("SRPC handler {method} raised", Failure(), method=method.name)
        reply = error_line(str(exc) or type(exc).__name__)
    call.write(reply)


async def _run_stream(channel: CallChannel, method: RegisteredMethod, call: Call) -> None:
    """Stream: the handler owns the exchange; an error closes the connection (as in Go)."""
    try:
        await method.handler(call)
    except (CallDisconnected, MessageTooLarge):
        return
    except (CallError, JsonDecodeError) as exc:
        text = exc.text if isinstance(exc, JsonDecodeError) else str(exc)
        _log.info("SRPC stream {method} ended: {error}", method=method.name, error=text)
        call.write(error_line(text))
        channel.close()
    except Exception:
        _log.failure("SRPC stream handler {method} raised", Failure(), method=method.name)
        channel.close()
