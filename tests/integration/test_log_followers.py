"""Live log readers that stop reading cannot grow the daemon's memory.

A real TCP client with a small receive buffer follows a build's log (over
HTTP ``/followBuildLog`` and over RPC ``BuildImage``) and stops reading while
the build writes 16 MiB. The daemon's buffer for it (the transport's and the
follower's) stays bounded, the follower is dropped with a note, and the build
never waits.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from twisted.web.server import Site

from imaginator.rpc.service import ExpirationLimits, ImaginatorService
from imaginator.runtime.buildlog import BuildLog
from imaginator.runtime.follower import WRITE_PIECE, LogPump
from imaginator.scheduler import BuildResult, CurrentBuild
from imaginator.srpc.client import connect
from imaginator.srpc.framing import INSECURE_JSON_PATH
from imaginator.srpc.identity import Authoriser
from imaginator.srpc.server import MethodRegistry
from imaginator.srpc.site import SrpcSite
from imaginator.srpc.tls import make_server_tls_options
from imaginator.tools.certs import make_ca, make_server_cert, make_user_cert
from imaginator.web.pages import StatusPages

HOST = "127.0.0.1"
LIMIT = 256 * 1024
LINE = b"z" * (64 * 1024 - 1) + b"\n"
LINES = 256  # 16 MiB in all
# The transport pauses its producer past 64 KiB; one more piece may be on its way.
TRANSPORT_BOUND = 64 * 1024 + 2 * WRITE_PIECE


def buffered(transport: Any) -> int:
    """Bytes a Twisted TCP transport holds that the kernel has not taken yet."""
    return len(transport.dataBuffer) - transport.offset + transport._tempDataLen


def shrink_buffers(transport: Any, option: int) -> None:
    transport.socket.setsockopt(socket.SOL_SOCKET, option, 4096)


def tcp_of(transport: Any) -> Any:
    return transport.transport if isinstance(transport, TLSMemoryBIOProtocol) else transport


async def yield_to_reactor() -> None:
    """Let the reactor run one turn (socket writes happen there)."""
    await deferLater(reactor, 0, lambda: None)


class Flood:
    """Writes 16 MiB into a build log, one 64 KiB line per reactor turn, and
    records the most the daemon held for the follower meanwhile."""

    def __init__(self, server_transports: Any) -> None:
        self._server_transports = server_transports
        self.most_in_transport = 0
        self.most_in_pump = 0
        self.done: Deferred[None] = Deferred()

    async def write(self, log: BuildLog) -> None:
        for _ in range(LINES):
            log.write(LINE)
            pumps = [getattr(s, "__self__", None) for s in log._subscribers]
            for pump in pumps:
                if isinstance(pump, LogPump):
                    self.most_in_pump = max(self.most_in_pump, pump.buffered)
            for transport in self._server_transports():
                self.most_in_transport = max(self.most_in_transport, buffered(transport))
            await yield_to_reactor()
        self.done.callback(None)


# -- HTTP ---------------------------------------------------------------------------


class RecordingSite(Site):
    """A Site that keeps its protocols, so the test can look at their transports."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.protocols: list[Any] = []

    def buildProtocol(self, addr: Any) -> Any:
        protocol = super().buildProtocol(addr)
        self.protocols.append(protocol)
        return protocol

    def transports(self) -> list[Any]:
        # HTTP/1.1 channels come wrapped (to allow a switch to HTTP/2).
        return [getattr(p, "_channel", p).transport for p in self.protocols]


class StoppingReader(Protocol):
    """Sends ``request``, then stops reading as soon as the first bytes arrive."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.data = bytearray()
        self.first: Deferred[None] = Deferred()
        self.closed: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        shrink_buffers(self.transport, socket.SO_RCVBUF)
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if not self.first.called:
            self.transport.pauseProducing()
            self.first.callback(None)

    def connectionLost(self, reason: Failure) -> None:
        self.closed.callback(None)


class Source:
    """The one build the pages show."""

    def __init__(self, log: BuildLog) -> None:
        self.build = CurrentBuild("s", 0.0, log, "alice", False)

    def current_build(self, stream: str) -> CurrentBuild | None:
        return self.build if stream == "s" else None


@pytest_twisted.ensureDeferred
async def test_http_follower_that_stops_reading_is_bounded_and_dropped() -> None:
    log = BuildLog()
    log.line("Building: s for: alice")
    pages = StatusPages(
        source=Source(log),  # type: ignore[arg-type]
        clock=reactor,
        started_at=0.0,
        hostname="h",
        version="v",
        log_ring=None,
        follow_limit=LIMIT,
    )
    site = RecordingSite(pages.resource())
    port = reactor.listenTCP(0, site, interface=HOST)
    try:
        reader = StoppingReader(
            b"GET /followBuildLog?s HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
        )
        endpoint = TCP4ClientEndpoint(reactor, HOST, port.getHost().port)
        await connectProtocol(endpoint, reader)
        await reader.first
        assert len(pages.followers) == 1
        for transport in site.transports():
            shrink_buffers(transport, socket.SO_SNDBUF)
        flood = Flood(site.transports)
        await flood.write(log)  # the build is never held up
        assert pages.followers == set(), "the slow follower was not dropped"
        assert flood.most_in_transport <= TRANSPORT_BOUND
        assert flood.most_in_pump <= LIMIT
        reader.transport.resumeProducing()
        await reader.closed
    finally:
        await port.stopListening()
    body = bytes(reader.data)
    assert b"Building: s for: alice\n" in body
    assert b"[log follower too slow: " in body and b" bytes dropped; reload]\n" in body
    assert len(body) < 4 * LIMIT


# -- RPC ----------------------------------------------------------------------------


class FloodBuilder:
    """The parts of the Builder ``BuildImage`` uses; its build writes the flood."""

    def __init__(self, flood: Flood) -> None:
        self.flood = flood

    def new_log(self) -> BuildLog:
        return BuildLog()

    def build_requests_disabled_until(self) -> float | None:
        return None

    async def lookup(self, stream: str) -> None:
        return None

    async def build(self, stream: str, options: Any, user: str, log: BuildLog) -> BuildResult:
        await self.flood.write(log)
        return BuildResult(stream, f"{stream}/2024-06-10:12:00:00", 0.0, 1.0, b"")


@pytest.fixture
def pki(tmp_path: Path) -> Iterator[dict[str, Path]]:
    ca_cert, ca_key = make_ca("test CA")
    files = {"ca": tmp_path / "CA.pem", "cert": tmp_path / "s.cert", "key": tmp_path / "s.key"}
    files["ca"].write_bytes(ca_cert)
    cert, key = make_server_cert(ca_cert, ca_key, ["localhost", HOST])
    files["cert"].write_bytes(cert)
    files["key"].write_bytes(key)
    user_cert, user_key = make_user_cert(ca_cert, ca_key, "alice", methods=["Imaginator.*"])
    files["user_cert"] = tmp_path / "alice.cert"
    files["user_key"] = tmp_path / "alice.key"
    files["user_cert"].write_bytes(user_cert)
    files["user_key"].write_bytes(user_key)
    yield files


@pytest.mark.parametrize("tls", [True, False], ids=["tls", "insecure"])
@pytest_twisted.ensureDeferred
async def test_rpc_follower_that_stops_reading_is_bounded_and_dropped(
    pki: dict[str, Path], tls: bool
) -> None:
    site: SrpcSite | None = None
    flood = Flood(lambda: [c.transport for c in site._connections] if site else [])
    service = ImaginatorService(
        builder=FloodBuilder(flood),  # type: ignore[arg-type]
        auto=None,
        deps=None,
        clock=reactor,
        limits=ExpirationLimits(),
        follow_limit=LIMIT,
    )
    registry = MethodRegistry()
    service.register(registry)
    site = SrpcSite(
        Site(pages_placeholder()),
        registry,
        Authoriser(frozenset(), frozenset(), frozenset()),
        make_server_tls_options(pki["ca"], pki["cert"], pki["key"]),
        reactor=reactor,
        permit_insecure=not tls,
    )
    port = reactor.listenTCP(0, site, interface=HOST)
    try:
        if tls:
            client = await connect(
                HOST,
                port.getHost().port,
                reactor=reactor,
                cert_file=pki["user_cert"],
                key_file=pki["user_key"],
            )
        else:
            client = await connect(
                HOST, port.getHost().port, reactor=reactor, tls=False, path=INSECURE_JSON_PATH
            )
        client_tcp = tcp_of(client._protocol.transport)
        shrink_buffers(client_tcp, socket.SO_RCVBUF)
        for connection in site._connections:
            shrink_buffers(connection.transport, socket.SO_SNDBUF)
        messages: list[dict[str, Any]] = []

        def on_message(message: dict[str, Any]) -> None:
            if not messages:
                client_tcp.pauseProducing()  # stop reading
            messages.append(message)

        call = Deferred.fromCoroutine(
            client.call_stream("Imaginator.BuildImage", build_request("apps/s"), on_message)
        )
        await flood.done  # the build was never held up
        assert flood.most_in_transport <= TRANSPORT_BOUND
        assert flood.most_in_pump <= LIMIT
        client_tcp.resumeProducing()
        final = await call
        await client.close()
    finally:
        await port.stopListening()
        site.abort_connections()
    import base64

    logs = [base64.b64decode(m["BuildLog"]) for m in messages if m.get("BuildLog")]
    assert logs[0] == b"Building: apps/s for: " + (b"alice" if tls else b"") + b"\n"
    assert logs[-1].startswith(b"[log follower too slow: ")
    assert logs[-1].endswith(b" bytes dropped; reload]\n")
    assert sum(map(len, logs)) < 4 * LIMIT
    # The result still arrives after the dropped log stream.
    assert final["ImageName"] == "apps/s/2024-06-10:12:00:00"


def pages_placeholder() -> Any:
    from twisted.web.resource import Resource

    return Resource()


def build_request(stream: str) -> dict[str, Any]:
    hour = 3600 * 10**9
    return {
        "DisableRecursiveBuild": False,
        "ExpiresIn": hour,
        "GitBranch": "",
        "MaxSourceAge": hour,
        "MaximumBuildDuration": 24 * hour,
        "ReturnImage": False,
        "StreamBuildLog": True,
        "StreamName": stream,
        "Variables": None,
    }
