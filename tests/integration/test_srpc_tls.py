"""SRPC over real TLS on 127.0.0.1, with certificates made per test by certs.py."""

from __future__ import annotations

import ast
import datetime
import os
import re
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.logger import LogEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from imaginator.srpc.client import SrpcClient, connect
from imaginator.srpc.framing import (
    INSECURE_JSON_PATH,
    SrpcConnectionError,
    SrpcError,
    SrpcLimits,
)
from imaginator.srpc.identity import PERMITTED_METHODS_OID, Authoriser, encode_string_sequence
from imaginator.srpc.server import Call, CallError, MethodRegistry
from imaginator.srpc.site import SrpcSite
from imaginator.srpc.tls import make_client_tls_options, make_server_tls_options
from imaginator.tools.certs import make_ca, make_server_cert, make_user_cert
from tests.support.vectors import VECTORS

PAGE = b"<html>the status page</html>"
HOST = "127.0.0.1"


# ------------------------------------------------------------------ certificates


@dataclass
class Pki:
    """A CA, the server's certificate and user certificates, as files."""

    directory: Path
    ca_cert: bytes = b""
    ca_key: bytes = b""

    def __post_init__(self) -> None:
        self.ca_cert, self.ca_key = make_ca("test CA")
        self._write("CA.pem", self.ca_cert)
        cert, key = make_server_cert(self.ca_cert, self.ca_key, ["localhost", HOST])
        self._write("server.cert", cert)
        self._write("server.key", key)

    def _write(self, name: str, data: bytes) -> Path:
        path = self.directory / name
        path.write_bytes(data)
        return path

    def server_options(self) -> Any:
        d = self.directory
        return make_server_tls_options(d / "CA.pem", d / "server.cert", d / "server.key")

    def user(self, name: str, **kwargs: Any) -> tuple[Path, Path]:
        """Certificate and key files for ``name`` (make_user_cert arguments)."""
        cert, key = make_user_cert(self.ca_cert, self.ca_key, name, **kwargs)
        return self._write(f"{name}.cert", cert), self._write(f"{name}.key", key)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


# ------------------------------------------------------------------ server


class Page(Resource):
    """The HTTP side: every path is the page."""

    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/html")
        return PAGE


@dataclass
class Handlers:
    """The test service's handlers and what they observed."""

    slow_finished: Deferred[str] = field(default_factory=Deferred)
    slow_started: Deferred[None] = field(default_factory=Deferred)

    async def echo(self, call: Call) -> dict[str, Any]:
        auth = call.auth
        return {
            "Request": call.request,
            "Username": auth.username,
            "Groups": sorted(auth.groups),
            "HaveMethodAccess": auth.have_method_access,
        }

    async def fail(self, call: Call) -> dict[str, Any]:
        raise CallError("it failed\nacross lines")

    async def get_dependencies(self, call: Call) -> dict[str, Any]:
        request = call.request
        if not isinstance(request, dict) or not isinstance(request.get("MaxAge", 0), int):
            raise CallError(
                "json: cannot unmarshal string into Go struct field "
                "GetDependenciesRequest.MaxAge of type time.Duration"
            )
        return {"StreamToSource": {}, "Error": ""}

    async def stream(self, call: Call) -> None:
        request = await call.read_json()
        call.send_line()
        count = request["Count"]
        for index in range(count):
            call.send_json({"Index": index, "ImageName": ""})
            await deferLater(reactor, 0, lambda: None)
        call.send_json({"Index": count, "ImageName": "test/stream/done"})

    async def slow(self, call: Call) -> None:
        await call.read_json()
        call.send_line()
        call.send_json({"ImageName": "", "Progress": "started"})
        self.slow_started.callback(None)
        await call.disconnected
        # The handler's work goes on after the client left; writes are dropped.
        call.send_json({"ImageName": "", "Progress": "nobody listens"})
        await deferLater(reactor, 0.01, lambda: None)
        self.slow_finished.callback("finished")


METHODS: list[tuple[str, str, str]] = [
    ("Test.Echo", "echo", "request"),
    ("Test.Admin", "echo", "request"),
    ("Test.Public", "echo", "request"),
    ("Test.Open", "echo", "request"),
    ("Test.Fail", "fail", "request"),
    ("Test.Stream", "stream", "stream"),
    ("Test.Slow", "slow", "stream"),
    ("Imaginator.GetDependencies", "get_dependencies", "request"),
    ("Imaginator.DisableAutoBuilds", "echo", "request"),
    ("Imaginator.StartAutoBuilds", "echo", "request"),
    ("Logger.Debug", "echo", "request"),
]


@dataclass
class Server:
    site: SrpcSite
    port: Any
    handlers: Handlers

    @property
    def number(self) -> int:
        return self.port.getHost().port

    async def client(self, cert: tuple[Path, Path] | None, **kwargs: Any) -> SrpcClient:
        cert_file, key_file = cert if cert else (None, None)
        return await connect(
            HOST, self.number, reactor=reactor, cert_file=cert_file, key_file=key_file, **kwargs
        )


def make_site(pki: Pki, handlers: Handlers, **kwargs: Any) -> SrpcSite:
    registry = MethodRegistry()
    for name, attribute, kind in METHODS:
        registry.register(name, getattr(handlers, attribute), kind=kind)  # type: ignore[arg-type]
    authoriser = Authoriser(
        trusted_users=frozenset({"trusted"}),
        trusted_groups=frozenset({"admins"}),
        public_methods=frozenset({"Test.Public", "Test.Stream", "Test.Slow"}),
        unauthenticated_methods=kwargs.pop("unauthenticated", frozenset()),
    )
    http_site = Site(Page())
    return SrpcSite(
        http_site, registry, authoriser, pki.server_options(), reactor=reactor, **kwargs
    )


async def start(pki: Pki, **kwargs: Any) -> Server:
    handlers = Handlers()
    site = make_site(pki, handlers, **kwargs)
    port = reactor.listenTCP(0, site, interface=HOST, backlog=512)
    return Server(site, port, handlers)


async def stop(server: Server) -> None:
    await server.port.stopListening()
    server.site.abort_connections()
    await wait_for(lambda: server.site.active_connections == 0)


async def wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    """Poll ``condition`` on the reactor until it holds (real sockets need real time)."""
    waited = 0.0
    while not condition():
        if waited > timeout:
            raise AssertionError("condition not reached in time")
        await deferLater(reactor, 0.01, lambda: None)
        waited += 0.01


@pytest.fixture
def failures() -> Any:
    """Twisted log events that carry a failure (unhandled errors included)."""
    events: list[LogEvent] = []

    def observe(event: LogEvent) -> None:
        if "log_failure" in event:
            events.append(event)

    globalLogPublisher.addObserver(observe)
    yield events
    globalLogPublisher.removeObserver(observe)


@pytest_twisted.async_yield_fixture
async def server(pki: Pki, failures: list[LogEvent]) -> AsyncIterator[Server]:
    running = await start(pki)
    try:
        yield running
    finally:
        await stop(running)
    assert [str(event["log_failure"].value) for event in failures] == []


# ------------------------------------------------------------------ raw connections


class RawClient(Protocol):
    """Bytes in, bytes out: for byte-exact comparisons with the vectors."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.closed: Deferred[None] = Deferred()
        self._waiter: Deferred[None] | None = None

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        self._wake()

    def connectionLost(self, reason: Failure) -> None:
        self.reason = reason
        self._wake()
        self.closed.callback(None)

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter.callback(None)

    def send(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]

    async def take(self, count: int, timeout: float = 10.0) -> bytes:
        """Exactly ``count`` bytes (fewer only if the connection closed)."""
        timer = reactor.callLater(timeout, self.transport.abortConnection)  # type: ignore[union-attr]
        try:
            while len(self.received) < count and not self.closed.called:
                self._waiter = Deferred()
                await self._waiter
        finally:
            if timer.active():
                timer.cancel()
        data = bytes(self.received[:count])
        del self.received[:count]
        return data

    async def take_all(self) -> bytes:
        """Everything until the server closes."""
        await self.closed
        data = bytes(self.received)
        self.received.clear()
        return data


async def raw_connection(server: Server) -> RawClient:
    client = RawClient()
    await connectProtocol(TCP4ClientEndpoint(reactor, HOST, server.number), client)
    return client


async def raw_tls_connection(server: Server, cert: tuple[Path, Path]) -> RawClient:
    """CONNECT, check the exact 200, then the TLS handshake."""
    client = await raw_connection(server)
    client.send(b"CONNECT /_SRPC_/TLS/JSON HTTP/1.0\n\n")
    assert await client.take(35) == b"HTTP/1.0 200 Connected to Go SRPC\n\n"
    client.transport.startTLS(make_client_tls_options(*cert))  # type: ignore[union-attr]
    return client


def transcript(name: str) -> list[tuple[str, bytes]]:
    """(direction, bytes) steps of a vector transcript, as transcript_decode.py reads them."""
    steps = []
    for line in (VECTORS / name).read_text().splitlines():
        match = re.match(r"^\+\s*[\d.]+ms (\S\S) (b['\"].*['\"])(   \[.*\])?$", line)
        if match:
            steps.append((match.group(1), ast.literal_eval(match.group(2))))
    return steps


async def replay(client: RawClient, steps: list[tuple[str, bytes]]) -> None:
    """Send each client write; expect exactly the server bytes that followed it."""
    index = 0
    while index < len(steps):
        direction, data = steps[index]
        index += 1
        if direction == "C>":
            client.send(data)
            continue
        expected = data
        while index < len(steps) and steps[index][0] == "S<":
            expected += steps[index][1]
            index += 1
        assert await client.take(len(expected)) == expected


def answer_to(steps: list[tuple[str, bytes]], request: bytes) -> bytes:
    """The server bytes that followed the client write ``request``."""
    index = steps.index(("C>", request)) + 1
    answer = b""
    while index < len(steps) and steps[index][0] == "S<":
        answer += steps[index][1]
        index += 1
    return answer


def after_handshake(steps: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """Drop the CONNECT line and its 200 answer."""
    assert steps[0] == ("C>", b"CONNECT /_SRPC_/TLS/JSON HTTP/1.0\n\n")
    assert steps[1] == ("S<", b"HTTP/1.0 200 Connected to Go SRPC\n\n")
    return steps[2:]


DATE = re.compile(rb"Date: [^\r]*\r\n")


def without_date(response: bytes) -> bytes:
    assert DATE.search(response), response
    return DATE.sub(b"Date: -\r\n", response)


# ------------------------------------------------------------------ vectors, byte for byte


@pytest_twisted.ensureDeferred
async def test_ping_bytes_match_the_go_transcript(server: Server, pki: Pki) -> None:
    client = await raw_tls_connection(server, pki.user("peer-client", methods=["*.*"]))
    await replay(client, after_handshake(transcript("imaginator-ping.txt")))
    client.transport.loseConnection()  # type: ignore[union-attr]
    await client.closed
    assert client.received == b""


@pytest_twisted.ensureDeferred
async def test_unknown_methods_bytes_match_the_go_transcript(server: Server, pki: Pki) -> None:
    client = await raw_tls_connection(server, pki.user("peer-client", methods=["*.*"]))
    await replay(client, after_handshake(transcript("imaginator-unknown-method.txt")))
    client.transport.loseConnection()  # type: ignore[union-attr]
    await client.closed


@pytest_twisted.ensureDeferred
async def test_bad_request_bytes_match_the_go_transcript(server: Server, pki: Pki) -> None:
    client = await raw_tls_connection(server, pki.user("peer-client", methods=["*.*"]))
    steps = transcript("imaginator-getdependencies-bad-request.txt")
    await replay(client, after_handshake(steps))
    client.transport.loseConnection()  # type: ignore[union-attr]
    await client.closed


@pytest_twisted.ensureDeferred
async def test_bob_without_method_powers_is_denied_like_go(server: Server, pki: Pki) -> None:
    client = await raw_tls_connection(server, pki.user("bob", groups=["devs"]))
    steps = after_handshake(transcript("imaginator-no-method-powers-bob.txt"))[:6]
    assert steps[-1] == ("S<", b"access to method denied\n")
    await replay(client, [*steps, ("C>", b"\n"), ("S<", b"\n")])
    client.transport.loseConnection()  # type: ignore[union-attr]
    await client.closed


@pytest_twisted.ensureDeferred
async def test_local_upgrade_to_unix_is_refused_and_the_connection_kept(
    server: Server, pki: Pki
) -> None:
    client = await raw_tls_connection(server, pki.user("peer-client", methods=["*.*"]))
    client.send(b".LocalUpgradeToUnix\n")
    line = await client.take(len(b": unknown method: LocalUpgradeToUnix\n"))
    assert line == b": unknown method: LocalUpgradeToUnix\n"
    steps = transcript("imaginator-local-upgrade-declined.txt")[-4:]
    assert steps[0] == ("C>", b"\n")
    await replay(client, steps)
    client.transport.loseConnection()  # type: ignore[union-attr]
    await client.closed


@pytest_twisted.ensureDeferred
async def test_insecure_path_answers_405_like_go(server: Server) -> None:
    request = b"CONNECT /_SRPC_/unsecured/JSON HTTP/1.0\n\n"
    answer = answer_to(transcript("imaginator-http-answers.txt"), request)
    client = await raw_connection(server)
    client.send(request)
    assert without_date(await client.take_all()) == without_date(answer)


@pytest_twisted.ensureDeferred
async def test_get_on_an_srpc_path_answers_400_like_go(server: Server) -> None:
    request = b"GET /_SRPC_/TLS/JSON HTTP/1.0\n\n"
    answer = answer_to(transcript("imaginator-http-answers.txt"), request)
    client = await raw_connection(server)
    client.send(request)
    assert without_date(await client.take_all()) == without_date(answer)


@pytest.mark.parametrize("path", ["/_goSRPC_/", "/_go_TLS_SRPC_/"])
@pytest_twisted.ensureDeferred
async def test_gob_paths_answer_404_so_go_clients_fall_back(server: Server, path: str) -> None:
    go_405 = answer_to(
        transcript("imaginator-http-answers.txt"), b"CONNECT /_goSRPC_/ HTTP/1.0\n\n"
    )
    client = await raw_connection(server)
    client.send(f"CONNECT {path} HTTP/1.0\n\n".encode())
    expected = without_date(go_405).replace(b"405 Method Not Allowed", b"404 Not Found")
    assert without_date(await client.take_all()) == expected
    with pytest.raises(SrpcConnectionError, match="no SRPC endpoint"):
        await server.client(None, path=path)


# ------------------------------------------------------------------ calls


@pytest_twisted.ensureDeferred
async def test_ping_and_echo(server: Server, pki: Pki) -> None:
    client = await server.client(pki.user("alice", groups=["devs"], methods=["Test.Echo"]))
    await client.ping()
    request = {"B": "<tag> & \u2028", "A": [1, 2.5, None, True], "Z": {"x": 1}}
    reply = await client.call("Test.Echo", request)
    assert reply == {
        "Request": request,
        "Username": "alice",
        "Groups": ["devs"],
        "HaveMethodAccess": True,
    }
    assert list(reply["Request"]) == ["B", "A", "Z"]
    await client.ping()
    assert (await client.call("Test.Echo", None))["Request"] is None
    await client.close()


@pytest_twisted.ensureDeferred
async def test_handler_errors_are_error_lines_and_the_connection_stays(
    server: Server, pki: Pki
) -> None:
    client = await server.client(pki.user("alice", methods=["Test.*"]))
    with pytest.raises(SrpcError) as raised:
        await client.call("Test.Fail", {})
    assert raised.value.text == "it failed across lines"
    await client.ping()
    assert (await client.call("Test.Echo", 7))["Request"] == 7
    await client.close()


@pytest_twisted.ensureDeferred
async def test_stream_sends_several_messages(server: Server, pki: Pki) -> None:
    client = await server.client(pki.user("alice"))
    seen: list[Any] = []
    final = await client.call_stream("Test.Stream", {"Count": 5}, seen.append)
    assert final == {"Index": 5, "ImageName": "test/stream/done"}
    assert [message["Index"] for message in seen] == [0, 1, 2, 3, 4, 5]
    await client.ping()
    final = await client.call_stream("Test.Stream", {"Count": 0}, seen.append)
    assert final["ImageName"] == "test/stream/done"
    await client.close()


@pytest_twisted.ensureDeferred
async def test_many_calls_on_one_connection(server: Server, pki: Pki) -> None:
    client = await server.client(pki.user("alice", methods=["Test.Echo"]))
    for index in range(200):
        assert (await client.call("Test.Echo", {"N": index}))["Request"] == {"N": index}
    await client.close()


@pytest_twisted.ensureDeferred
async def test_pipelined_calls_are_answered_in_order(server: Server, pki: Pki) -> None:
    client = await raw_tls_connection(server, pki.user("alice", methods=["Test.Echo"]))
    client.send(b"".join(b'Test.Echo\n{"N":%d}\n\n' % index for index in range(300)))
    for index in range(300):
        reply = (
            b'\n\n{"Request":{"N":%d},"Username":"alice","Groups":[],"HaveMethodAccess":true}\n\n'
            % index
        )
        assert await client.take(len(reply)) == reply
    client.transport.loseConnection()  # type: ignore[union-attr]
    await client.closed


# ------------------------------------------------------------------ authorisation


@pytest_twisted.ensureDeferred
async def test_user_without_methods_is_denied_but_may_call_public_methods(
    server: Server, pki: Pki
) -> None:
    client = await server.client(pki.user("carol"))
    with pytest.raises(SrpcError, match=r"^access to method denied$"):
        await client.call("Test.Admin", {})
    reply = await client.call("Test.Public", {})
    assert (reply["Username"], reply["HaveMethodAccess"]) == ("carol", False)
    await client.ping()
    await client.close()


@pytest_twisted.ensureDeferred
async def test_trusted_users_and_groups_have_method_powers(server: Server, pki: Pki) -> None:
    for cert in (pki.user("trusted"), pki.user("dave", groups=["staff", "admins"])):
        client = await server.client(cert)
        reply = await client.call("Test.Admin", {})
        assert reply["HaveMethodAccess"] is True
        await client.close()


@pytest.mark.parametrize(
    ("methods", "allowed"),
    [
        (["Test.Admin"], True),
        (["Test.*"], True),
        (["*.*"], True),
        (["Test.Adm?n"], True),
        (["Test.[A-C]dmin"], True),
        (["Test.[^A]dmin"], False),
        (["Other.*"], False),
        (["Test.Echo", "Test.Ad*"], True),
    ],
)
@pytest_twisted.ensureDeferred
async def test_permitted_method_globs(
    server: Server, pki: Pki, methods: list[str], allowed: bool
) -> None:
    client = await server.client(pki.user("erin", methods=methods))
    if allowed:
        assert (await client.call("Test.Admin", {}))["HaveMethodAccess"] is True
    else:
        with pytest.raises(SrpcError, match="access to method denied"):
            await client.call("Test.Admin", {})
    await client.close()


@pytest_twisted.ensureDeferred
async def test_do_not_use_method_powers(server: Server, pki: Pki) -> None:
    cert = pki.user("trusted", methods=["*.*"])
    client = await server.client(cert, path="/_SRPC_/TLS/JSON?doNotUseMethodPowers=true")
    with pytest.raises(SrpcError, match="access to method denied"):
        await client.call("Test.Admin", {})
    assert (await client.call("Test.Public", {}))["HaveMethodAccess"] is False
    await client.close()


# ------------------------------------------------------------------ refused certificates


async def assert_refused(server: Server, cert: tuple[Path, Path] | None, why: str) -> None:
    """The TLS handshake fails: at once, or (TLS 1.3) on the first read."""
    with pytest.raises(SrpcConnectionError) as raised:
        client = await server.client(cert)
        await client.ping()
    assert why in raised.value.text


@pytest_twisted.ensureDeferred
async def test_no_client_certificate_is_refused(server: Server) -> None:
    await assert_refused(server, None, "alert certificate required")
    await wait_for(lambda: server.site.active_connections == 0)


@pytest_twisted.ensureDeferred
async def test_certificate_from_another_ca_is_refused(server: Server, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    mallory = Pki(other).user("mallory", methods=["*.*"])
    await assert_refused(server, mallory, "alert unknown ca")
    await wait_for(lambda: server.site.active_connections == 0)


@pytest_twisted.ensureDeferred
async def test_expired_certificate_is_refused(server: Server, pki: Pki) -> None:
    now = datetime.datetime.now(datetime.UTC)
    cert = pki.user(
        "old",
        methods=["*.*"],
        not_before=now - datetime.timedelta(days=30),
        not_after=now - datetime.timedelta(days=1),
    )
    await assert_refused(server, cert, "alert certificate expired")


@pytest_twisted.ensureDeferred
async def test_bad_permitted_method_entry_drops_the_connection(server: Server, pki: Pki) -> None:
    cert, key = make_user_cert(pki.ca_cert, pki.ca_key, "x", methods=["Good.One"])
    # make_user_cert refuses bad entries, so forge one with the library's encoder.
    ca = x509.load_pem_x509_certificate(pki.ca_cert)
    ca_key = serialization.load_pem_private_key(pki.ca_key, None)
    leaf = x509.load_pem_x509_certificate(cert)
    builder = (
        x509.CertificateBuilder()
        .subject_name(leaf.subject)
        .issuer_name(ca.subject)
        .public_key(leaf.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(leaf.not_valid_before_utc)
        .not_valid_after(leaf.not_valid_after_utc)
        .add_extension(
            x509.UnrecognizedExtension(PERMITTED_METHODS_OID, encode_string_sequence(["a.b.c"])),
            critical=False,
        )
    )
    forged = builder.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    (pki.directory / "forged.cert").write_bytes(forged.public_bytes(serialization.Encoding.PEM))
    (pki.directory / "forged.key").write_bytes(key)
    forged_pair = (pki.directory / "forged.cert", pki.directory / "forged.key")
    await assert_refused(server, forged_pair, "connection lost")


# ------------------------------------------------------------------ HTTP and CONNECT handling


@pytest_twisted.ensureDeferred
async def test_http_pages_still_work_on_the_same_port(server: Server) -> None:
    client = await raw_connection(server)
    client.send(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
    response = await client.take_all()
    assert response.startswith(b"HTTP/1.0 200 OK\r\n")
    assert response.endswith(b"\r\n\r\n" + PAGE)


@pytest_twisted.ensureDeferred
async def test_http_request_arriving_byte_by_byte(server: Server) -> None:
    client = await raw_connection(server)
    for byte in b"GET / HTTP/1.0\r\n\r\n":
        client.send(bytes([byte]))
        await deferLater(reactor, 0.001, lambda: None)
    assert (await client.take_all()).endswith(PAGE)


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"CONNECT\n\n",
        b"CONNECT /_SRPC_/TLS/JSON\n\n",
        b"CONNECT /_SRPC_/TLS/JSON HTTP/1.0 extra\n\n",
        b"CONNECT /_SRPC_/TLS/JSON FTP/1.0\n\n",
        b"CONNECT /_SRPC_/TLS/JSON?a=%zz HTTP/1.0\n\n",
        b"CONNECT /_SRPC_/TLS/JSON HTTP/1.0\n" + b"X-Padding: " + b"x" * 5000,
    ],
)
@pytest_twisted.ensureDeferred
async def test_malformed_connect_answers_400(server: Server, request_bytes: bytes) -> None:
    client = await raw_connection(server)
    client.send(request_bytes)
    response = await client.take_all()
    assert response.startswith(b"HTTP/1.0 400 Bad Request\r\n"), response


@pytest_twisted.ensureDeferred
async def test_connect_with_crlf_and_headers_is_accepted(server: Server, pki: Pki) -> None:
    client = await raw_connection(server)
    client.send(b"CONNECT /_SRPC_/TLS/JSON HTTP/1.0\r\nHost: x\r\n\r\n")
    assert await client.take(35) == b"HTTP/1.0 200 Connected to Go SRPC\n\n"
    client.transport.startTLS(make_client_tls_options(*pki.user("u")))  # type: ignore[union-attr]
    client.send(b"\n")
    assert await client.take(1) == b"\n"
    client.transport.loseConnection()  # type: ignore[union-attr]
    await client.closed


@pytest_twisted.ensureDeferred
async def test_tls_first_mode(server: Server, pki: Pki) -> None:
    client = await raw_connection(server)
    client.transport.startTLS(make_client_tls_options(*pki.user("u")))  # type: ignore[union-attr]
    client.send(b"CONNECT /_SRPC_/TLS/JSON HTTP/1.0\n\n")
    assert await client.take(35) == b"HTTP/1.0 200 Connected to Go SRPC\n\n"
    client.send(b"\nNoDot\n")
    expected = b"\nmalformed Service.Method: NoDot\n"
    assert await client.take(len(expected)) == expected
    client.transport.loseConnection()  # type: ignore[union-attr]
    await client.closed


@pytest_twisted.ensureDeferred
async def test_insecure_mode_when_permitted(pki: Pki, failures: list[LogEvent]) -> None:
    running = await start(pki, permit_insecure=True)
    try:
        client = await running.client(None, path=INSECURE_JSON_PATH, tls=False)
        await client.ping()
        reply = await client.call("Test.Admin", {"x": 1})
        assert (reply["Username"], reply["HaveMethodAccess"]) == ("", True)
        await client.close()
    finally:
        await stop(running)
    assert failures == []


@pytest_twisted.ensureDeferred
async def test_insecure_path_for_unauthenticated_methods_only(pki: Pki) -> None:
    running = await start(pki, unauthenticated=frozenset({"Test.Open"}))
    try:
        client = await running.client(None, path=INSECURE_JSON_PATH, tls=False)
        assert (await client.call("Test.Open", {}))["HaveMethodAccess"] is False
        with pytest.raises(SrpcError, match="access to method denied"):
            await client.call("Test.Public", {})
        await client.close()
    finally:
        await stop(running)


# ------------------------------------------------------------------ bad input, disconnects


@pytest_twisted.ensureDeferred
async def test_garbage_instead_of_json(server: Server, pki: Pki) -> None:
    client = await raw_tls_connection(server, pki.user("alice", methods=["*.*"]))
    client.send(b"Test.Echo\n")
    assert await client.take(1) == b"\n"
    client.send(b"hello world\n")
    error = b"invalid character 'h' looking for beginning of value\n"
    assert await client.take(len(error)) == error
    client.send(b"Test.Echo\n")
    assert await client.take(1) == b"\n"
    client.send(b'{"a": tru}\n')
    line = await client.take(13)
    assert line.startswith(b"invalid JSON:"), line
    while not line.endswith(b"\n"):
        line += await client.take(1)
    client.send(b"\n")
    assert await client.take(1) == b"\n"
    client.transport.loseConnection()  # type: ignore[union-attr]
    await client.closed


@pytest_twisted.ensureDeferred
async def test_oversized_message_closes_the_connection(pki: Pki) -> None:
    running = await start(pki, limits=SrpcLimits(max_message=1024))
    try:
        client = await running.client(pki.user("alice", methods=["*.*"]))
        assert (await client.call("Test.Echo", "x" * 900))["Request"] == "x" * 900
        with pytest.raises(SrpcError, match="message longer than 1024 bytes"):
            await client.call("Test.Echo", {"Big": "x" * 5000})
        with pytest.raises(SrpcConnectionError):
            await client.ping()
        await wait_for(lambda: running.site.active_connections == 0)
    finally:
        await stop(running)


@pytest_twisted.ensureDeferred
async def test_overlong_method_line_closes_the_connection(server: Server, pki: Pki) -> None:
    client = await raw_tls_connection(server, pki.user("alice"))
    client.send(b"A" * 2000)
    response = await client.take_all()
    assert response == b"method line longer than 1024 bytes\n"


@pytest_twisted.ensureDeferred
async def test_client_disconnecting_mid_stream(server: Server, pki: Pki) -> None:
    client = await server.client(pki.user("alice"))
    messages: list[Any] = []

    def on_message(message: Any) -> None:
        messages.append(message)
        client.close()

    with pytest.raises(SrpcConnectionError):
        await client.call_stream("Test.Slow", {}, on_message)
    assert messages == [{"ImageName": "", "Progress": "started"}]
    assert await server.handlers.slow_finished == "finished"
    await wait_for(lambda: server.site.active_connections == 0)


@pytest_twisted.ensureDeferred
async def test_client_errors(server: Server, pki: Pki) -> None:
    port = reactor.listenTCP(0, Factory(), interface=HOST)
    free = port.getHost().port
    await port.stopListening()
    with pytest.raises(SrpcConnectionError, match="cannot connect"):
        await connect(HOST, free, reactor=reactor, tls=False)
    client = await server.client(pki.user("alice"))
    closing = client.close()
    with pytest.raises(SrpcConnectionError, match=r"^connection closed$"):
        await client.ping()
    await closing
    await client.close()


@pytest_twisted.ensureDeferred
async def test_client_aborting_while_the_handshake_runs(server: Server) -> None:
    client = await raw_connection(server)
    client.send(b"CONNECT /_SRPC_/TLS/JSON HTTP/1.0\n\n\x16\x03\x01\x00")
    await client.take(35)
    client.transport.abortConnection()  # type: ignore[union-attr]
    await wait_for(lambda: server.site.active_connections == 0)


@pytest_twisted.ensureDeferred
async def test_two_hundred_connections_at_once(server: Server, pki: Pki) -> None:
    cert = pki.user("alice")
    await (await server.client(cert)).close()  # warm up lazily created descriptors
    await wait_for(lambda: server.site.active_connections == 0)
    before = len(os.listdir("/proc/self/fd"))

    async def one(index: int) -> int:
        client = await server.client(cert)
        await client.ping()
        await client.close()
        return index

    done = await gatherResults([Deferred.fromCoroutine(one(i)) for i in range(200)])
    assert sorted(done) == list(range(200))
    await wait_for(lambda: server.site.active_connections == 0)
    await wait_for(lambda: len(os.listdir("/proc/self/fd")) <= before)
    assert len(os.listdir("/proc/self/fd")) <= before  # no descriptor leaked


def blocking_stdlib_client(port: int, cert: tuple[Path, Path]) -> list[bytes]:
    """The vectors' kind of client: socket + stdlib ssl, run in a thread."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.load_cert_chain(str(cert[0]), str(cert[1]))
    replies = []
    with socket.create_connection((HOST, port), timeout=10) as raw:
        raw.sendall(b"CONNECT /_SRPC_/TLS/JSON HTTP/1.0\n\n")
        replies.append(raw.recv(100))
        with context.wrap_socket(raw) as tls:
            for request in (b"\n", b'Test.Echo\n{"x":"<y>"}\n'):
                tls.sendall(request)
                data = b""
                while data.count(b"\n") < (1 if request == b"\n" else 3):
                    data += tls.recv(4096)
                replies.append(data)
    return replies


@pytest_twisted.ensureDeferred
async def test_stdlib_ssl_client(server: Server, pki: Pki) -> None:
    cert = pki.user("peer-client", methods=["*.*"])
    replies = await deferToThread(blocking_stdlib_client, server.number, cert)
    assert replies == [
        b"HTTP/1.0 200 Connected to Go SRPC\n\n",
        b"\n",
        b'\n\n{"Request":{"x":"\\u003cy\\u003e"},"Username":"peer-client","Groups":[],'
        b'"HaveMethodAccess":true}\n',
    ]
