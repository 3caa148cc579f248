"""The SRPC client (reference §1.3 to §1.7): one connection, calls one at a time.

:func:`connect` sends the CONNECT for the coder's path, runs the TLS client
handshake (presenting a certificate; verifying the server only when given the
CA, as Go never does) and returns an :class:`SrpcClient`. Its calls:

* :meth:`SrpcClient.call`: request/reply (one message each way);
* :meth:`SrpcClient.call_stream`: the ``Imaginator.BuildImage`` style, one
  request then messages until the last one;
* :meth:`SrpcClient.open_call`: a coder or raw method the caller drives itself
  through a :class:`ClientCall`: coded messages, raw bytes and text lines in
  any order, e.g. ``ObjectServer.AddObjects`` (header message, then exactly N
  raw bytes, per object, with the replies read concurrently),
  ``ObjectServer.GetObjects`` (a reply, then Σ sizes raw bytes) and
  ``ImageServer.ListImages`` (raw text lines).

Each call may have a timeout; when it expires the connection is closed (the
stream would be out of step) and the waiting operation raises
:class:`~imaginator.srpc.framing.SrpcTimeout`. Sends wait while the transport's
buffer is full and receives stop reading the socket while nobody consumes, so a
large transfer does not pile up in memory.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final, cast

from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet.defer import Deferred, DeferredLock, fail
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol
from twisted.internet.error import ConnectError, ConnectionDone, DNSLookupError
from twisted.internet.interfaces import (
    IHandshakeListener,
    IPushProducer,
    IReactorTime,
    ITLSTransport,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from imaginator.runtime.reactors import IReactorTimeAndTCP
from imaginator.runtime.transports import stream_transport
from imaginator.srpc.coder import INCOMPLETE, JSON_CODER, Coder, MessageDecoder
from imaginator.srpc.framing import (
    DEFAULT_LIMITS,
    END_OF_HEAD,
    MessageTooLarge,
    SrpcConnectionError,
    SrpcError,
    SrpcLimits,
    SrpcTimeout,
    check_connect_reply,
)
from imaginator.srpc.tls import ClientTlsOptions, make_client_tls_options

#: Unread bytes beyond which the socket is not read while no call is waiting.
READ_HIGH_WATER = 4 * 1024 * 1024
#: ... and below which reading resumes once a call takes bytes again.
READ_LOW_WATER = 1024 * 1024
RAW_CHUNK = 256 * 1024
#: Messages this long or longer are coded in the thread pool when the client has one
#: (an image record of thousands of inodes takes a good part of a second).
OFFLOAD_BYTES = 64 * 1024

#: Runs ``fn(*args)`` in a thread pool; its Deferred fires on the event loop.
InThread = Callable[..., Deferred[Any]]


class _ClientDefault:
    def __repr__(self) -> str:
        return "CLIENT_DEFAULT"


#: A call's timeout argument: the client's ``call_timeout``.
CLIENT_DEFAULT: Final = _ClientDefault()
Timeout = float | None | _ClientDefault


# ===================================================================== the connection


@implementer(IPushProducer)
class _WriteGate:
    """Registered with the transport: tells the protocol when its buffer is full."""

    def __init__(self, protocol: _ClientProtocol) -> None:
        self._protocol = protocol

    def pauseProducing(self) -> None:
        self._protocol.writes_paused = True

    def resumeProducing(self) -> None:
        self._protocol.writes_paused = False
        self._protocol.wake_writer()

    def stopProducing(self) -> None:
        self._protocol.wake_writer()


@implementer(IHandshakeListener)
class _ClientProtocol(Protocol):
    """Buffers what the server sends and lets coroutines await lines, messages
    and raw bytes; one reader and one writer may wait at a time."""

    def __init__(self, limits: SrpcLimits, host: str) -> None:
        self.limits = limits
        self.host = host
        self.buffer = bytearray()
        self._waiter: Deferred[None] | None = None
        self._writer: Deferred[None] | None = None
        self._lost: Failure | None = None
        self._failure: SrpcConnectionError | None = None
        self._tls_started = False
        self._reading_paused = False
        self._gate: _WriteGate | None = None
        self._last_decoder: MessageDecoder | None = None
        self.writes_paused = False
        self.closed_locally = False
        self.handshake: Deferred[None] = Deferred()
        self.closed: Deferred[None] = Deferred()

    # ----------------------------------------------------------- Protocol

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        if self._waiter is not None:
            self._wake()
        elif len(self.buffer) > READ_HIGH_WATER and not self._reading_paused:
            self._reading_paused = True
            stream_transport(self).pauseProducing()

    def handshakeCompleted(self) -> None:
        if not self.handshake.called:
            self.handshake.callback(None)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._lost = reason
        if self._tls_started and not self.handshake.called:
            self.handshake.errback(self.error())
        self._wake()
        self.wake_writer()
        self.closed.callback(None)

    # ----------------------------------------------------------- state

    @property
    def usable(self) -> bool:
        """False once the connection is lost or being ended."""
        return self._lost is None and self._failure is None and not self.closed_locally

    def error(self) -> SrpcConnectionError:
        """Why the connection cannot be used."""
        if self._failure is not None:
            return self._failure
        if self.closed_locally:
            return SrpcConnectionError("connection closed")
        if self._lost is None:
            return SrpcConnectionError("connection not usable")
        return _connection_error(self._lost, self.host)

    def fail(self, error: SrpcConnectionError) -> None:
        """End the connection now; waiting and later operations raise ``error``."""
        if self._lost is None and self._failure is None:
            self._failure = error
            if self.transport is not None:
                stream_transport(self).abortConnection()

    def start_tls(self, options: ClientTlsOptions) -> Deferred[None]:
        """Run the TLS client handshake; the Deferred fires when it is done."""
        self._tls_started = True
        # The connection runs on a TCP transport, which can start TLS.
        cast(ITLSTransport, stream_transport(self)).startTLS(options)
        return self.handshake

    def start_flow_control(self) -> None:
        """Have the transport say when its write buffer is full (after set-up)."""
        self._gate = _WriteGate(self)
        stream_transport(self).registerProducer(self._gate, True)

    def close(self) -> None:
        """Close after the pending output (a TLS layer waits for no producer)."""
        if self._lost is not None or self.transport is None:
            return
        self.closed_locally = True
        if self._gate is not None:
            self._gate = None
            stream_transport(self).unregisterProducer()
        self.transport.loseConnection()

    # ----------------------------------------------------------- waiting

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter.callback(None)

    def wake_writer(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.callback(None)

    def _more(self) -> Deferred[None]:
        if not self.usable:
            return fail(self.error())
        if self._waiter is not None:
            return fail(RuntimeError("two readers on one SRPC connection"))
        if self._reading_paused:
            self._reading_paused = False
            stream_transport(self).resumeProducing()
        self._waiter = Deferred()
        return self._waiter

    def _consumed(self) -> None:
        if self._reading_paused and len(self.buffer) < READ_LOW_WATER and self.usable:
            self._reading_paused = False
            stream_transport(self).resumeProducing()

    # ----------------------------------------------------------- output

    def write(self, data: bytes) -> None:
        """Write now (raises the connection's error once it is unusable)."""
        if not self.usable:
            raise self.error()
        stream_transport(self).write(data)

    async def send(self, data: bytes) -> None:
        """Write ``data`` as a write of its own, then wait while the transport is full."""
        self.write(data)
        while self.writes_paused:
            if not self.usable:
                raise self.error()
            self._writer = Deferred()
            await self._writer
        if not self.usable:
            raise self.error()

    # ----------------------------------------------------------- input

    async def read_head(self, limit: int) -> bytes:
        """The HTTP response head, up to its empty line."""
        while (match := END_OF_HEAD.search(self.buffer)) is None:
            if len(self.buffer) > limit:
                raise SrpcConnectionError("malformed HTTP response: head too long")
            await self._more()
        head = bytes(self.buffer[: match.start()])
        del self.buffer[: match.end()]
        return head

    async def read_line(self) -> str:
        """The next line without its LF (invalid UTF-8 replaced)."""
        await self._settle()
        while (end := self.buffer.find(b"\n")) < 0:
            if len(self.buffer) > self.limits.max_message:
                self.fail(SrpcConnectionError("line too long"))
                raise self.error()
            await self._more()
        line = bytes(self.buffer[:end])
        del self.buffer[: end + 1]
        self._consumed()
        return line.decode("utf-8", "replace")

    async def read_message(
        self,
        decoder: MessageDecoder,
        kind: object | None = None,
        in_thread: InThread | None = None,
    ) -> Any:
        """The next message; bad bytes end the (now unusable) connection.

        With ``in_thread``, a message of :data:`OFFLOAD_BYTES` or more is
        decoded in the thread pool, from a copy of what has arrived (more may
        arrive meanwhile), so a big reply never holds up the event loop.
        """
        while True:
            grew = False
            try:
                if in_thread is not None and len(self.buffer) >= OFFLOAD_BYTES:
                    copy = bytearray(self.buffer)
                    size = len(copy)
                    message = await in_thread(decoder.decode, copy, kind)
                    # The decoder took a prefix of the copy: the same prefix of the
                    # buffer goes (data received meanwhile was only appended, and
                    # woke nobody: look at it before waiting for more).
                    grew = len(self.buffer) > size
                    del self.buffer[: size - len(copy)]
                else:
                    message = decoder.decode(self.buffer, kind)
            except MessageTooLarge:
                self.fail(SrpcConnectionError("message too large"))
                raise self.error() from None
            except ValueError as exc:
                text = getattr(exc, "text", str(exc))
                self.fail(SrpcConnectionError(f"bad message from the server: {text}"))
                raise self.error() from None
            if message is not INCOMPLETE:
                self._last_decoder = decoder
                self._consumed()
                return message
            if not grew:
                await self._more()

    async def _settle(self) -> None:
        """Before a line or raw bytes: take what the coder writes after the last
        message (JSON: the LF, which may come later than the value), even if
        that message ended the previous call."""
        decoder = self._last_decoder
        if decoder is not None:
            while not decoder.finish(self.buffer):
                await self._more()
            self._last_decoder = None

    async def read_some(self, limit: int) -> bytes:
        """Between 1 and ``limit`` raw bytes, as soon as there are any."""
        await self._settle()
        while not self.buffer:
            await self._more()
        chunk = bytes(self.buffer[:limit])
        del self.buffer[:limit]
        self._consumed()
        return chunk


def _connection_error(reason: Failure, host: str) -> SrpcConnectionError:
    if reason.check(ConnectionDone):
        return SrpcConnectionError("connection closed by the server")
    if reason.check(SSL.Error):
        return SrpcConnectionError(f"TLS error: {reason.getErrorMessage()}")
    if reason.check(VerificationError):
        return SrpcConnectionError(f"TLS error: the server's certificate is not for {host}")
    return SrpcConnectionError(f"connection lost: {reason.getErrorMessage()}")


# ===================================================================== calls


class ClientCall:
    """An accepted call of a coder or raw method, driven by its caller.

    Messages go through the client's coder (a fresh encoder and decoder per
    call, as in Go); raw bytes and lines bypass it. Sends go out in order, and
    wait while the transport's buffer is full. One coroutine may receive
    while another sends (as ``AddObjects`` needs: the server answers while
    objects are still being sent). It is usable only inside its ``open_call``
    block.

    Twisted's TLS layer gathers the writes of one reactor turn into one TLS
    record, so a header and the raw bytes after it may share a record: the Go
    objectserver's JSON decoder then swallows the bytes (reference §5.2).
    ``AddObjects`` to a Go imageserver needs the GOB coder.
    """

    def __init__(self, protocol: _ClientProtocol, method: str, coder: Coder) -> None:
        self.method = method
        self._protocol = protocol
        self._encoder = coder.new_encoder()
        self._decoder = coder.new_decoder(protocol.limits.max_message)
        self._open = True

    def _check(self) -> _ClientProtocol:
        if not self._open:
            raise RuntimeError(f"{self.method}: the call has ended")
        return self._protocol

    def _end(self) -> None:
        self._open = False

    async def send(self, message: Any) -> None:
        """Send one coded message."""
        await self._check().send(self._encoder.encode(message))

    async def send_raw(self, data: bytes) -> None:
        """Send bytes as they are (an object's contents after its header)."""
        if data:
            await self._check().send(data)

    async def receive(self, kind: object | None = None) -> Any:
        """The next coded message; ``kind`` is for a coder that decodes by
        the expected type (GOB: the message class), ignored by JSON."""
        return await self._check().read_message(self._decoder, kind)

    async def receive_raw(self, size: int) -> bytes:
        """Exactly ``size`` raw bytes (after the last message's terminator)."""
        return b"".join([chunk async for chunk in self.receive_raw_chunks(size)])

    async def receive_raw_chunks(
        self, size: int, chunk_size: int = RAW_CHUNK
    ) -> AsyncIterator[bytes]:
        """Exactly ``size`` raw bytes, as they arrive, in chunks of at most
        ``chunk_size`` (an object of any size without holding it whole).
        Read them all: what is left would be taken for the next answer."""
        if size < 0 or chunk_size < 1:
            raise ValueError(f"bad raw read: size {size}, chunk size {chunk_size}")
        protocol = self._check()
        remaining = size
        while remaining:
            chunk = await protocol.read_some(min(remaining, chunk_size))
            remaining -= len(chunk)
            yield chunk

    async def receive_line(self) -> str:
        """The next raw text line, without its LF (``ListImages``: a name per line)."""
        return await self._check().read_line()

    async def receive_status(self) -> None:
        """A status line: return on LF alone, raise :class:`SrpcError` with its text."""
        line = await self.receive_line()
        if line:
            raise SrpcError(line)


def is_final_build_message(message: Any) -> bool:
    """builder-tool's stop rule for ``Imaginator.BuildImage`` (reference §2.3):
    an ``ErrorString``, a non-null ``Image`` or a non-empty ``ImageName``."""
    if not isinstance(message, Mapping):
        return True
    return bool(message.get("ErrorString") or message.get("Image") or message.get("ImageName"))


class SrpcClient:
    """An SRPC connection: calls run one at a time, in order.

    ``call_timeout`` (seconds, None for none) bounds each call unless the call
    gives its own ``timeout``; timers run on ``clock``.
    """

    def __init__(
        self,
        protocol: _ClientProtocol,
        *,
        clock: IReactorTime,
        coder: Coder = JSON_CODER,
        call_timeout: float | None = None,
        in_thread: InThread | None = None,
    ) -> None:
        self._protocol = protocol
        self._clock = clock
        self.coder = coder
        self.call_timeout = call_timeout
        self._in_thread = in_thread
        self._lock = DeferredLock()

    async def ping(self, *, timeout: Timeout = CLIENT_DEFAULT) -> None:
        """Send an empty method line and wait for the LF."""
        async with self._exclusive("ping", timeout):
            self._protocol.write(b"\n")
            await self._status()

    async def call(
        self,
        method: str,
        request: Any,
        *,
        reply_kind: object | None = None,
        timeout: Timeout = CLIENT_DEFAULT,
    ) -> Any:
        """A request/reply call; raises :class:`SrpcError` on an error line.
        ``reply_kind``: see :meth:`ClientCall.receive`."""
        async with self._exclusive(method, timeout):
            decoder = await self._begin(method, request)
            return await self._protocol.read_message(decoder, reply_kind, self._in_thread)

    async def call_stream(
        self,
        method: str,
        request: Any,
        on_message: Callable[[Any], object],
        done: Callable[[Any], bool] = is_final_build_message,
        *,
        reply_kind: object | None = None,
        timeout: Timeout = CLIENT_DEFAULT,
    ) -> Any:
        """A streaming call in the ``BuildImage`` style: method line, request,
        a status line, then messages until ``done(message)``; every message
        (the final one too) is passed to ``on_message``. Returns the final one.
        """
        async with self._exclusive(method, timeout):
            decoder = await self._begin(method, request)
            while True:
                message = await self._protocol.read_message(decoder, reply_kind, self._in_thread)
                on_message(message)
                if done(message):
                    return message

    @asynccontextmanager
    async def open_call(
        self, method: str, *, timeout: Timeout = CLIENT_DEFAULT
    ) -> AsyncIterator[ClientCall]:
        """A coder or raw method: send the method line, read the status line
        (:class:`SrpcError` if refused; the connection stays usable), then
        yield the :class:`ClientCall`. The block must carry the whole exchange
        to its end; leaving it by an exception closes the connection, whose
        stream is then out of step.
        """
        async with self._exclusive(method, timeout):
            self._protocol.write(method.encode("utf-8") + b"\n")
            await self._status()
            call = ClientCall(self._protocol, method, self.coder)
            try:
                yield call
            except BaseException:
                self._protocol.fail(SrpcConnectionError(f"{method}: call abandoned"))
                raise
            finally:
                call._end()

    @property
    def usable(self) -> bool:
        """False once the connection is lost, failed or being closed."""
        return self._protocol.usable

    def abort(self, error: SrpcConnectionError) -> None:
        """End the connection now: the call in progress (and any later one)
        raises ``error``. For a caller's own deadline, e.g. one that a
        long transfer pushes back while it makes progress."""
        self._protocol.fail(error)

    def close(self) -> Deferred[None]:
        """Close the connection; the Deferred fires once it is closed."""
        self._protocol.close()
        return self._protocol.closed

    # ----------------------------------------------------------- helpers

    @asynccontextmanager
    async def _exclusive(self, method: str, timeout: Timeout) -> AsyncIterator[None]:
        """Hold the connection for one call, under its deadline.

        An :class:`SrpcError` (a status line) leaves the connection in step;
        any other exception after the method line was sent closes it.
        """
        seconds = self.call_timeout if isinstance(timeout, _ClientDefault) else timeout
        async with self._lock:
            if not self._protocol.usable:
                raise self._protocol.error()
            deadline = None
            if seconds is not None:
                expired = SrpcTimeout(f"{method}: no answer within {seconds:g}s")
                deadline = self._clock.callLater(seconds, self._protocol.fail, expired)
            try:
                yield
            except SrpcError as exc:
                if not isinstance(exc, SrpcConnectionError):
                    raise
                self._protocol.fail(exc)
                raise
            except BaseException:
                self._protocol.fail(SrpcConnectionError(f"{method}: call abandoned"))
                raise
            finally:
                if deadline is not None and deadline.active():
                    deadline.cancel()

    async def _begin(self, method: str, request: Any) -> MessageDecoder:
        """Method line, status, request, status; the decoder for the replies."""
        self._protocol.write(method.encode("utf-8") + b"\n")
        await self._status()
        encoder = self.coder.new_encoder()
        if self._in_thread is not None:
            self._protocol.write(await self._in_thread(encoder.encode, request))
        else:
            self._protocol.write(encoder.encode(request))
        await self._status()
        return self.coder.new_decoder(self._protocol.limits.max_message)

    async def _status(self) -> None:
        line = await self._protocol.read_line()
        if line:
            raise SrpcError(line)


# ===================================================================== connecting


async def connect(
    host: str,
    port: int,
    *,
    reactor: IReactorTimeAndTCP,
    cert_file: str | Path | None = None,
    key_file: str | Path | None = None,
    ca_file: str | Path | None = None,
    verify_hostname: bool = True,
    coder: Coder = JSON_CODER,
    path: str | None = None,
    tls: bool = True,
    timeout: float = 15.0,
    call_timeout: float | None = None,
    limits: SrpcLimits = DEFAULT_LIMITS,
    tls_options: ClientTlsOptions | None = None,
    clock: IReactorTime | None = None,
    in_thread: InThread | None = None,
) -> SrpcClient:
    """Open an SRPC connection: CONNECT to ``path`` (default: the coder's TLS
    or plain path), then (``tls``) a TLS client handshake presenting
    ``cert_file``/``key_file``.

    The server is verified only with ``ca_file``: its certificate must chain
    to that CA and, with ``verify_hostname``, name ``host``. ``timeout``
    covers the connection, the CONNECT and the handshake (then
    :class:`SrpcTimeout`); ``call_timeout`` is the client's default per call.
    Timers run on ``clock`` (default: ``reactor``). With ``in_thread`` the
    client codes requests, and replies of :data:`OFFLOAD_BYTES` or more, in
    the thread pool.

    Reading certificate files is a (small) blocking read; a caller making
    many connections passes ``tls_options`` from
    :func:`~imaginator.srpc.tls.make_client_tls_options` instead.
    """
    timers: IReactorTime = clock if clock is not None else reactor
    options = None
    if tls:
        options = tls_options or make_client_tls_options(
            cert_file, key_file, ca_file=ca_file, hostname=host if verify_hostname else None
        )
    if path is None:
        path = coder.tls_path if tls else coder.insecure_path
    protocol = _ClientProtocol(limits, host)
    endpoint = HostnameEndpoint(reactor, host, port, timeout=timeout)
    try:
        await connectProtocol(endpoint, protocol)
    except (ConnectError, DNSLookupError) as exc:
        raise SrpcConnectionError(f"cannot connect to {host}:{port}: {exc}") from exc
    assert protocol.transport is not None
    set_keep_alive = getattr(protocol.transport, "setTcpKeepAlive", None)
    if set_keep_alive is not None:
        set_keep_alive(True)
    expired = SrpcTimeout(f"{host}:{port}: no SRPC connection within {timeout:g}s")
    deadline = timers.callLater(timeout, protocol.fail, expired)
    try:
        protocol.write(f"CONNECT {path} HTTP/1.0\n\n".encode())
        check_connect_reply(await protocol.read_head(limits.max_connect_head))
        if options is not None:
            await protocol.start_tls(options)
    except BaseException:
        protocol.fail(SrpcConnectionError("connection set-up failed"))
        raise
    finally:
        if deadline.active():
            deadline.cancel()
    protocol.start_flow_control()
    return SrpcClient(
        protocol, clock=timers, coder=coder, call_timeout=call_timeout, in_thread=in_thread
    )
