"""SRPC server framing in memory: sniffing, CONNECT answers, method lines, calls.

These run the protocol over ``StringTransport`` on the plaintext JSON path (or
the refusals before TLS); the TLS path is covered by the integration tests.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogEvent, globalLogPublisher
from twisted.python.failure import Failure

from imaginator.srpc.framing import (
    CONNECTED,
    SrpcConnectionError,
    SrpcLimits,
    check_connect_reply,
    http_error_response,
)
from imaginator.srpc.identity import Authoriser
from imaginator.srpc.server import Call, CallDisconnected, CallError, MethodRegistry
from imaginator.srpc.site import SrpcSite

INSECURE_CONNECT = b"CONNECT /_SRPC_/unsecured/JSON HTTP/1.0\n\n"


class Recorder(Protocol):
    """The HTTP side: records what it is given."""

    def __init__(self) -> None:
        self.data = b""
        self.lost = False

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure) -> None:
        self.lost = True


class RecorderFactory(Factory):
    def __init__(self) -> None:
        self.built: list[Recorder] = []
        self.started = 0

    def buildProtocol(self, addr: Any) -> Recorder:
        protocol = Recorder()
        self.built.append(protocol)
        return protocol

    def startFactory(self) -> None:
        self.started += 1


class Service:
    """Handlers whose completion the tests control."""

    def __init__(self) -> None:
        self.pending: list[Deferred[Any]] = []
        self.calls: list[Call] = []
        self.read_errors: list[BaseException] = []

    async def echo(self, call: Call) -> Any:
        return {"Request": call.request, "User": call.auth.username}

    async def wait(self, call: Call) -> Any:
        self.calls.append(call)
        waiter: Deferred[Any] = Deferred()
        self.pending.append(waiter)
        return await waiter

    async def fail(self, call: Call) -> Any:
        raise CallError("bad\nthing")

    async def crash(self, call: Call) -> Any:
        raise KeyError("oops")

    async def stream(self, call: Call) -> None:
        self.calls.append(call)
        try:
            while True:
                message = await call.read_json()
                if message is None:
                    return
                call.send_json({"Got": message})
        except (CallDisconnected, ValueError) as exc:
            self.read_errors.append(exc)

    async def stream_error(self, call: Call) -> None:
        raise CallError("stream refused")

    async def stream_crash(self, call: Call) -> None:
        raise RuntimeError("bug")


class Harness:
    def __init__(self, *, permit_insecure: bool = True, **kwargs: Any) -> None:
        self.clock = Clock()
        self.clock.advance(1_800_000_000)
        self.http = RecorderFactory()
        self.service = Service()
        registry = MethodRegistry()
        for name, kind in [
            ("echo", "request"),
            ("wait", "request"),
            ("fail", "request"),
            ("crash", "request"),
            ("stream", "stream"),
            ("stream_error", "stream"),
            ("stream_crash", "stream"),
        ]:
            handler = getattr(self.service, name)
            registry.register(f"T.{name.title().replace('_', '')}", handler, kind=kind)  # type: ignore[arg-type]
        authoriser = Authoriser(
            frozenset(),
            frozenset(),
            frozenset({"T.Echo"}),
            kwargs.pop("unauthenticated", frozenset()),
        )
        self.site = SrpcSite(
            self.http,
            registry,
            authoriser,
            None,
            reactor=self.clock,
            permit_insecure=permit_insecure,
            **kwargs,
        )
        self.site.doStart()
        self.transport = StringTransport()
        self.protocol = self.site.buildProtocol(None)  # type: ignore[arg-type]
        self.protocol.makeConnection(self.transport)

    def send(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def take(self) -> bytes:
        value = self.transport.value()
        self.transport.clear()
        return value

    def open(self) -> Harness:
        self.send(INSECURE_CONNECT)
        assert self.take() == CONNECTED
        return self


@pytest.fixture
def failures() -> Any:
    events: list[LogEvent] = []

    def observe(event: LogEvent) -> None:
        if "log_failure" in event:
            events.append(event)

    globalLogPublisher.addObserver(observe)
    yield events
    globalLogPublisher.removeObserver(observe)


# ------------------------------------------------------------------ HTTP answers


def test_http_error_response_format() -> None:
    assert http_error_response(405, 0) == (
        b"HTTP/1.0 405 Method Not Allowed\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Date: Thu, 01 Jan 1970 00:00:00 GMT\r\nContent-Length: 0\r\n\r\n"
    )
    assert b"Connection: close\r\n" in http_error_response(400, 0, "HTTP/1.1")
    assert http_error_response(404, 0, "HTTP/2").startswith(b"HTTP/1.0 404 Not Found\r\n")


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"CONNECT /_SRPC_/TLS/JSON HTTP/1.0\n\n", b"404"),  # no TLS configured
        (b"CONNECT /_goSRPC_/ HTTP/1.0\n\n", b"404"),
        (b"CONNECT /_go_TLS_SRPC_/ HTTP/1.0\n\n", b"404"),
        (b"CONNECT /elsewhere HTTP/1.0\n\n", b"404"),
        (b"CONNECTX /_SRPC_/unsecured/JSON HTTP/1.0\n\n", b"400"),
        (b"GET /_SRPC_/unsecured/JSON HTTP/1.0\r\n\r\n", b"400"),
        (b"POST /_SRPC_/unsecured/JSON?x HTTP/1.1\r\nHost: h\r\n\r\n", b"400"),
    ],
)
def test_refusals(request_bytes: bytes, status: bytes) -> None:
    harness = Harness()
    harness.send(request_bytes)
    answer = harness.take()
    assert answer.split(b" ")[1] == status
    assert b"Date: Fri, 15 Jan 2027 08:00:00 GMT\r\n" in answer
    assert harness.transport.disconnecting
    harness.send(b"more bytes are ignored\n")
    assert harness.take() == b""
    assert harness.http.built == []


def test_insecure_path_refused_unless_permitted() -> None:
    harness = Harness(permit_insecure=False)
    harness.send(INSECURE_CONNECT)
    assert harness.take().startswith(b"HTTP/1.0 405 Method Not Allowed\r\n")


def test_insecure_path_open_for_unauthenticated_methods() -> None:
    harness = Harness(permit_insecure=False, unauthenticated=frozenset({"T.Wait"})).open()
    harness.send(b"T.Echo\nT.Wait\n{}\n")
    assert harness.take() == b"access to method denied\n\n"
    assert harness.service.calls[0].auth.username == ""
    assert not harness.service.calls[0].auth.have_method_access


def test_connect_head_arriving_in_pieces() -> None:
    harness = Harness()
    for byte in INSECURE_CONNECT:
        assert harness.take() == b""
        harness.send(bytes([byte]))
    assert harness.take() == CONNECTED


def test_connect_head_too_long() -> None:
    harness = Harness()
    harness.send(b"CONNECT /_SRPC_/unsecured/JSON HTTP/1.0\n" + b"H: x\n" * 900)
    assert harness.take().startswith(b"HTTP/1.0 400 Bad Request\r\n")
    assert harness.transport.disconnecting


def test_set_up_times_out() -> None:
    harness = Harness()
    harness.send(b"CONN")
    harness.clock.advance(59)
    assert not harness.transport.disconnecting
    harness.clock.advance(2)
    assert harness.transport.disconnecting


def test_no_timeout_once_the_session_runs() -> None:
    harness = Harness().open()
    harness.clock.advance(3600)
    assert not harness.transport.disconnecting
    assert harness.clock.getDelayedCalls() == []


# ------------------------------------------------------------------ HTTP replay


@pytest.mark.parametrize(
    "chunks",
    [
        [b"GET / HTTP/1.0\r\n\r\n"],
        [b"G", b"ET /x HTTP/1.1\r\nHost: h\r\n\r\n"],
        [b"C", b"O", b"PY /a HTTP/1.1\r\n", b"\r\n"],
        [b"\x16", b"\x04 not TLS\n"],
        [b"HEAD /_goSRPC_/listMethods HTTP/1.0\r\n\r\n"],
    ],
)
def test_other_requests_are_replayed_into_http(chunks: list[bytes]) -> None:
    harness = Harness()
    for chunk in chunks:
        harness.send(chunk)
    [http] = harness.http.built
    assert http.data == b"".join(chunks)
    assert harness.take() == b""
    harness.send(b"later")
    assert http.data.endswith(b"later")
    harness.protocol.connectionLost(Failure(Exception("gone")))
    assert http.lost
    assert harness.site.active_connections == 0


def test_http_factory_is_started_with_the_site() -> None:
    assert Harness().http.started == 1


# ------------------------------------------------------------------ method lines


def test_method_lines() -> None:
    harness = Harness().open()
    harness.send(b"\n  \r\nT.Nope\nX.Y\nNoDot\na.b.c\n  T.Nope \r\n.LocalUpgradeToUnix\n.\n")
    assert harness.take() == (
        b"\n\n"
        b"T: unknown method: Nope\n"
        b"unknown service: X\n"
        b"malformed Service.Method: NoDot\n"
        b"malformed Service.Method: a.b.c\n"
        b"T: unknown method: Nope\n"
        b": unknown method: LocalUpgradeToUnix\n"
        b": unknown method: \n"
    )
    assert not harness.transport.disconnecting


def test_method_line_too_long() -> None:
    harness = Harness().open()
    harness.send(b"x" * 1025)
    assert harness.take() == b"method line longer than 1024 bytes\n"
    assert harness.transport.disconnecting


def test_method_line_at_the_limit_is_fine() -> None:
    harness = Harness().open()
    harness.send(b"T." + b"x" * 1022 + b"\n")
    assert harness.take() == b"T: unknown method: " + b"x" * 1022 + b"\n"


# ------------------------------------------------------------------ request/reply


def test_request_reply_in_one_write() -> None:
    harness = Harness().open()
    harness.send(b'T.Echo\n{"a":"<&>"}\n')
    assert (
        harness.transport.io.getvalue()
        == b'\n\n{"Request":{"a":"\\u003c\\u0026\\u003e"},"User":""}\n'
    )
    harness.take()
    harness.send(b"\n")
    assert harness.take() == b"\n"


def test_request_split_into_single_bytes() -> None:
    harness = Harness().open()
    harness.send(b"T.Echo\n")
    assert harness.take() == b"\n"
    for byte in b'  {"a" : [1, "x\\"}"]':
        harness.send(bytes([byte]))
    harness.send(b"}\n")  # a Go client's LF comes with the value
    assert harness.take() == b'\n{"Request":{"a":[1,"x\\"}"]},"User":""}\n'
    harness.send(b"\n")
    assert harness.take() == b"\n"


def test_the_lf_after_the_request_is_consumed_even_if_it_comes_late() -> None:
    harness = Harness().open()
    harness.send(b"T.Wait\n{}")
    assert harness.take() == b"\n"
    harness.send(b"\n")  # the request's LF, arriving while the handler runs
    harness.service.pending[0].callback({"Done": True})
    assert harness.take() == b'\n{"Done":true}\n'
    harness.send(b"\n")
    assert harness.take() == b"\n"  # exactly one ping answer


def test_bytes_sent_during_a_call_wait_for_it() -> None:
    harness = Harness().open()
    harness.send(b"T.Wait\n{}\n\nT.Echo\n1\n")
    assert harness.take() == b"\n"
    harness.service.pending[0].callback(None)
    assert harness.take() == b'\nnull\n\n\n\n{"Request":1,"User":""}\n'


def test_many_pipelined_calls_do_not_nest() -> None:
    harness = Harness().open()
    harness.send(b"T.Echo\n{}\n" * 3000)
    assert harness.take() == b'\n\n{"Request":{},"User":""}\n' * 3000


def test_handler_errors() -> None:
    harness = Harness().open()
    harness.send(b"T.Fail\n{}\n")
    assert harness.take() == b"\nbad thing\n"
    harness.send(b"\n")
    assert harness.take() == b"\n"


def test_unexpected_handler_exception_is_logged_and_answered(failures: list[LogEvent]) -> None:
    harness = Harness().open()
    harness.send(b"T.Crash\n{}\n\n")
    assert harness.take() == b"\n'oops'\n\n"
    assert [event["log_failure"].type for event in failures] == [KeyError]


def test_garbage_then_ping_in_one_chunk() -> None:
    harness = Harness().open()
    harness.send(b"T.Echo\nhello world\n\n")
    assert harness.take() == b"\ninvalid character 'h' looking for beginning of value\n\n"


def test_invalid_json_inside_an_object() -> None:
    harness = Harness().open()
    harness.send(b'T.Echo\n{"a": tru\n')
    answer = harness.take()
    assert answer.startswith(b"\ninvalid JSON: Expecting value")
    harness.send(b"\n")
    assert harness.take() == b"\n"


def test_complete_but_invalid_json() -> None:
    harness = Harness().open()
    harness.send(b'T.Echo\n{"a":tru}\n\n')
    answer = harness.take()
    assert answer.startswith(b"\ninvalid JSON: ")
    assert answer.endswith(b"\n\n")
    assert answer.count(b"\n") == 3


def test_oversized_message_is_refused_and_closed() -> None:
    harness = Harness(limits=SrpcLimits(max_message=100)).open()
    harness.send(b'T.Echo\n{"a":"' + b"x" * 200)
    assert harness.take() == b"\nmessage longer than 100 bytes\n"
    assert harness.transport.disconnecting


def test_complete_oversized_message_is_refused() -> None:
    harness = Harness(limits=SrpcLimits(max_message=100)).open()
    harness.send(b'T.Echo\n{"a":"' + b"x" * 120 + b'"}\n')
    assert harness.take() == b"\nmessage longer than 100 bytes\n"
    assert harness.transport.disconnecting


def test_too_much_unread_data_while_a_call_runs() -> None:
    harness = Harness(limits=SrpcLimits(max_message=100)).open()
    harness.send(b"T.Wait\n{}\n")
    harness.take()
    harness.send(b"\n" * 6000)
    assert harness.take() == b"too much unread data\n"
    assert harness.transport.disconnecting
    harness.service.pending[0].callback({})
    assert harness.take() == b"\n{}\n"  # still written: the transport is only closing


def test_disconnect_while_a_handler_runs() -> None:
    harness = Harness().open()
    harness.send(b"T.Wait\n{}\n")
    call = harness.service.calls[0]
    assert call.connected
    fired: list[None] = []
    call.disconnected.addCallback(fired.append)
    harness.protocol.connectionLost(Failure(Exception("gone")))
    assert fired == [None]
    assert not call.connected
    harness.transport.clear()
    harness.service.pending[0].callback({"late": 1})
    assert harness.take() == b""
    assert harness.site.active_connections == 0


# ------------------------------------------------------------------ streams


def test_stream_reads_and_writes_messages() -> None:
    harness = Harness().open()
    harness.send(b'T.Stream\n{"n":1}\n[2]')
    assert harness.take() == b'\n{"Got":{"n":1}}\n{"Got":[2]}\n'
    harness.send(b'\n"three"\nnull\n\n')
    assert harness.take() == b'{"Got":"three"}\n\n'


def test_stream_decode_error_reaches_the_handler() -> None:
    harness = Harness().open()
    harness.send(b"T.Stream\n!\n")
    assert [type(error) for error in harness.service.read_errors] == [
        type(harness.service.read_errors[0])
    ]
    assert "invalid character '!'" in str(harness.service.read_errors[0])
    harness.send(b"\n")
    assert harness.take() == b"\n\n"


def test_stream_read_after_disconnect() -> None:
    harness = Harness().open()
    harness.send(b"T.Stream\n")
    harness.protocol.connectionLost(Failure(Exception("gone")))
    assert [type(error) for error in harness.service.read_errors] == [CallDisconnected]


def test_stream_call_error_is_sent_and_closes() -> None:
    harness = Harness().open()
    harness.send(b"T.StreamError\n")
    assert harness.take() == b"\nstream refused\n"
    assert harness.transport.disconnecting


def test_stream_crash_closes_and_is_logged(failures: list[LogEvent]) -> None:
    harness = Harness().open()
    harness.send(b"T.StreamCrash\n")
    assert harness.take() == b"\n"
    assert harness.transport.disconnecting
    assert [event["log_failure"].type for event in failures] == [RuntimeError]


def test_writes_after_the_call_ended_are_dropped() -> None:
    harness = Harness().open()
    harness.send(b"T.Stream\nnull\n")
    harness.take()
    harness.service.calls[0].send_json({"late": True})
    assert harness.take() == b""


# ------------------------------------------------------------------ registry and client


def test_registry_validation() -> None:
    registry = MethodRegistry()

    async def handler(call: Call) -> None:
        return None

    registry.register("A.B", handler)
    for name in ("AB", "A.B.C", ".B", "A."):
        with pytest.raises(ValueError):
            registry.register(name, handler)
    with pytest.raises(ValueError):
        registry.register("A.B", handler)
    with pytest.raises(ValueError):
        registry.register("A.C", handler, kind="other")  # type: ignore[arg-type]
    assert registry.method_names() == ["A.B"]
    assert registry.has_service("") and registry.has_service("A")
    assert registry.lookup("A", "B") is not None and registry.lookup("A", "C") is None


@pytest.mark.parametrize(
    ("head", "error"),
    [
        (b"HTTP/1.0 404 Not Found\r\nDate: x", "no SRPC endpoint"),
        (b"HTTP/1.0 405 Method Not Allowed", "missing certificate"),
        (b"HTTP/1.1 401 Unauthorized", "bad certificate"),
        (b"HTTP/1.0 200 OK", "unexpected HTTP response: 200 OK"),
        (b"HTTP/1.0 500 Internal Server Error", "unexpected HTTP response: 500"),
        (b"\x15\x03\x01\x00\x02", "malformed HTTP response"),
    ],
)
def test_client_connect_verdicts(head: bytes, error: str) -> None:
    with pytest.raises(SrpcConnectionError, match=error):
        check_connect_reply(head)


def test_client_accepts_the_go_answer() -> None:
    check_connect_reply(CONNECTED.rstrip(b"\n"))
