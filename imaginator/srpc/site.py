"""The listening side of SRPC: SRPC, TLS-first SRPC and the HTTP pages on one port.

:class:`SrpcSite` is the listening factory. It sniffs each new connection:
``CONNECT`` (or a request for an SRPC path) means SRPC, a TLS ClientHello
means TLS-first SRPC (handshake, then CONNECT inside TLS), anything else is
replayed into the ordinary HTTP site so the pages keep working on the same
port. An accepted SRPC connection becomes a call channel
(:mod:`imaginator.srpc.server`).
"""

from __future__ import annotations

from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
)
from twisted.internet.protocol import Factory, Protocol, ServerFactory, connectionDone
from twisted.internet.ssl import CertificateOptions
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure

from imaginator.runtime.transports import stream_transport
from imaginator.srpc.framing import (
    CONNECTED,
    DEFAULT_LIMITS,
    END_OF_HEAD,
    INSECURE_JSON_PATH,
    TLS_JSON_PATH,
    BadConnectRequest,
    ConnectRequest,
    SrpcLimits,
    http_error_response,
    parse_connect_head,
)
from imaginator.srpc.identity import Authoriser
from imaginator.srpc.server import CallChannel, MethodRegistry, ServerConfig, route_connect

_log = Logger(namespace="imaginator.srpc.site")


class _Sniffer(Protocol):
    """Decides what a new connection speaks, then hands it on.

    ``CONNECT`` → SRPC, a TLS ClientHello (0x16 0x03) → TLS-first SRPC, else
    the buffered bytes are replayed into the HTTP site's protocol.
    """

    def __init__(self, site: SrpcSite) -> None:
        self._site = site
        self._config = site.config
        self._buffer = bytearray()
        self._downstream: IProtocol | None = None
        self._timeout: IDelayedCall | None = None

    def connectionMade(self) -> None:
        self._site._opened(self)
        limits = self._config.limits
        self._timeout = self._config.reactor.callLater(limits.handshake_timeout, self._timed_out)

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
        match = END_OF_HEAD.search(self._buffer)
        if match is None:
            if len(self._buffer) > limit:
                self._refuse(400, "HTTP/1.0")
            return
        head = bytes(self._buffer[: match.start()])
        rest = bytes(self._buffer[match.end() :])
        self._buffer.clear()
        try:
            request = parse_connect_head(head)
        except BadConnectRequest:
            self._refuse(400, "HTTP/1.0")
            return
        route = route_connect(request, self._config)
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

    def _accept(self, route: str, request: ConnectRequest, rest: bytes) -> None:
        self._keep_alive()
        stream_transport(self).write(CONNECTED)
        if route == "insecure":
            channel = CallChannel(
                self._config,
                identity=self._config.insecure_identity,
                tls=False,
                method_powers=request.method_powers,
                on_ready=self._cancel_timeout,
            )
            self._switch(channel, rest)
            return
        channel = CallChannel(
            self._config,
            identity=None,
            tls=True,
            method_powers=request.method_powers,
            on_ready=self._cancel_timeout,
        )
        self._switch_tls(channel, rest)

    def _start_tls_first(self) -> None:
        if self._config.tls_factory is None:
            stream_transport(self).loseConnection()
            return
        self._keep_alive()
        channel = CallChannel(
            self._config,
            identity=None,
            tls=True,
            expect_connect=True,
            on_ready=self._cancel_timeout,
        )
        data = bytes(self._buffer)
        self._buffer.clear()
        self._switch_tls(channel, data)

    def _switch_tls(self, channel: CallChannel, data: bytes) -> None:
        factory = self._config.tls_factory
        assert factory is not None
        self._switch(factory.protocol(factory, channel), data)

    def _switch(self, protocol: IProtocol, data: bytes) -> None:
        self._downstream = protocol
        assert self.transport is not None  # the sniffer switches only once connected
        protocol.makeConnection(self.transport)
        if data:
            protocol.dataReceived(data)

    def _to_http(self) -> None:
        self._cancel_timeout()
        peer = stream_transport(self).getPeer()
        protocol = self._site.http_factory.buildProtocol(peer)
        if protocol is None:
            stream_transport(self).loseConnection()
            return
        data = bytes(self._buffer)
        self._buffer.clear()
        self._switch(protocol, data)

    # ----------------------------------------------------------- helpers

    def _refuse(self, status: int, version: str) -> None:
        self._buffer.clear()
        now = self._config.reactor.seconds()
        stream_transport(self).write(http_error_response(status, now, version))
        stream_transport(self).loseConnection()
        self._downstream = Protocol()  # ignore anything that still arrives

    def _keep_alive(self) -> None:
        set_keep_alive = getattr(self.transport, "setTcpKeepAlive", None)
        if set_keep_alive is not None:
            set_keep_alive(True)

    def _timed_out(self) -> None:
        self._timeout = None
        _log.info("SRPC connection set-up timed out")
        stream_transport(self).abortConnection()

    def _cancel_timeout(self) -> None:
        timeout, self._timeout = self._timeout, None
        if timeout is not None and timeout.active():
            timeout.cancel()


class SrpcSite(ServerFactory):
    """The listening factory: SRPC and the HTTP site on one port.

    ``http_factory`` is the ordinary ``twisted.web.server.Site``;
    ``tls_options`` (see :func:`~imaginator.srpc.tls.make_server_tls_options`) may be None only for
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
        limits: SrpcLimits = DEFAULT_LIMITS,
    ) -> None:
        self.http_factory = http_factory
        tls_factory = None
        if tls_options is not None:
            tls_factory = TLSMemoryBIOFactory(tls_options, False, Factory(), clock=reactor)
        self.config = ServerConfig(
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
                stream_transport(connection).abortConnection()

    def buildProtocol(self, addr: IAddress | None) -> Protocol:
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
