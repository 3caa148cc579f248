"""The SRPC client against a scripted server on a loopback socket.

Each test plays the server's part byte by byte (``Peer``), sometimes from the
Go imageserver's recorded transcripts, while the client under test runs the
calls: coder messages and raw bytes on one call (GetObjects, AddObjects),
raw text lines (ListImages), a plugged-in coder, timeouts and flow control.
The TLS side (client certificates, verifying the server) is in
``tests/integration/test_srpc_tls.py``.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from imaginator.goformats.gojson import marshal
from imaginator.srpc import client as client_module
from imaginator.srpc.client import SrpcClient, connect
from imaginator.srpc.coder import INCOMPLETE, JsonDecoder
from imaginator.srpc.framing import (
    CONNECTED,
    MessageTooLarge,
    SrpcConnectionError,
    SrpcError,
    SrpcTimeout,
)
from tests.support.scriptedpeer import HOST, PeerServer, listening
from tests.support.scriptedpeer import ScriptedPeer as Peer
from tests.support.vectors import VECTORS

PLAIN_CONNECT = b"CONNECT /_SRPC_/unsecured/JSON HTTP/1.0\n\n"


# ------------------------------------------------------------------ the scripted server


class Server(PeerServer[Peer]):
    def __init__(self) -> None:
        super().__init__(Peer)


@pytest_twisted.async_yield_fixture
async def server() -> AsyncIterator[tuple[Server, int]]:
    factory = Server()
    async with listening(factory) as port:
        yield factory, port


async def open_client(
    server: tuple[Server, int], connect_line: bytes = PLAIN_CONNECT, **kwargs: Any
) -> tuple[SrpcClient, Peer]:
    """A client on the plain path, its CONNECT answered by the peer."""
    factory, port = server
    connecting = Deferred.fromCoroutine(connect(HOST, port, reactor=reactor, tls=False, **kwargs))
    peer = await factory.peers.get()
    assert await peer.take_until(b"\n\n") == connect_line
    peer.send(CONNECTED)
    return await connecting, peer


def play(peer: Peer, script: Coroutine[Any, Any, None]) -> Deferred[None]:
    """Run the server's part; if it fails, drop the connection so that the
    client's side fails too instead of waiting for an answer."""

    async def guarded() -> None:
        try:
            await script
        except BaseException:
            peer.transport.abortConnection()  # type: ignore[union-attr]
            raise

    return Deferred.fromCoroutine(guarded())


async def answer_ping(peer: Peer) -> None:
    assert await peer.take_until() == b"\n"
    peer.send(b"\n")


def transcript_after_handshake(name: str) -> list[tuple[str, bytes]]:
    """(direction, bytes) of a Go transcript, without CONNECT and its answer."""
    steps = []
    for line in (VECTORS / name).read_text().splitlines():
        match = re.match(r"^\+\s*[\d.]+ms (\S\S) (b['\"].*['\"])(   \[.*\])?$", line)
        if match:
            steps.append((match.group(1), ast.literal_eval(match.group(2))))
    assert steps[1] == ("S<", CONNECTED)
    return steps[2:]


async def replay(peer: Peer, steps: list[tuple[str, bytes]]) -> None:
    """Expect each client write exactly; send each recorded server write."""
    for direction, data in steps:
        if direction == "C>":
            assert await peer.take(len(data)) == data
        else:
            peer.send(data)


# ------------------------------------------------------------------ coder messages and raw bytes


@pytest_twisted.ensureDeferred
async def test_get_objects_reply_then_raw_bytes(server: tuple[Server, int]) -> None:
    client, peer = await open_client(server)
    objects = [b"first object\n", bytes(range(256)) * 1000, b""]
    hashes = [hashlib.sha512(data).hexdigest() for data in objects]

    async def serve() -> None:
        assert await peer.take_until() == b"ObjectServer.GetObjects\n"
        peer.send(b"\n")
        assert json.loads(await peer.take_until()) == {"Exclusive": False, "Hashes": hashes}
        sizes = [len(data) for data in objects]
        peer.send(marshal({"ResponseString": "", "ObjectSizes": sizes}) + b"\n")
        for data in objects:
            peer.send(data)
        await answer_ping(peer)

    serving = play(peer, serve())
    async with client.open_call("ObjectServer.GetObjects") as call:
        await call.send({"Exclusive": False, "Hashes": hashes})
        reply = await call.receive()
        assert reply["ResponseString"] == ""
        received = [await call.receive_raw(size) for size in reply["ObjectSizes"]]
    assert received == objects
    await client.ping()  # the connection is still in step
    await serving
    await client.close()


@pytest_twisted.ensureDeferred
async def test_raw_bytes_in_bounded_chunks(server: tuple[Server, int]) -> None:
    client, peer = await open_client(server)
    data = bytes(range(251)) * 4000  # 1,004,000 bytes

    async def serve() -> None:
        assert await peer.take_until() == b"Test.Blob\n"
        peer.send(b"\n" + marshal({"Size": len(data)}) + b"\n" + data + b"after\n")

    serving = play(peer, serve())
    async with client.open_call("Test.Blob") as call:
        size = (await call.receive())["Size"]
        chunks = [chunk async for chunk in call.receive_raw_chunks(size, chunk_size=4096)]
        assert await call.receive_line() == "after"
    assert b"".join(chunks) == data
    assert max(len(chunk) for chunk in chunks) <= 4096
    await serving
    await client.close()


@pytest_twisted.ensureDeferred
async def test_add_objects_headers_raw_bytes_and_replies_read_concurrently(
    server: tuple[Server, int],
) -> None:
    """As Go's ObjectAdderQueue: the replies come while objects are still sent
    (here only once all are in, like a server whose buffer never filled)."""
    client, peer = await open_client(server)
    objects = [b"x" * 70_000, b"\n{not json}\n", b"tail"]
    stored: list[bytes] = []

    async def serve() -> None:
        assert await peer.take_until() == b"ObjectServer.AddObjects\n"
        peer.send(b"\n")
        while True:
            header = json.loads(await peer.take_until())
            if header["Length"] == 0:
                break
            data = await peer.take(header["Length"])
            assert hashlib.sha512(data).hexdigest() == header["ExpectedHash"]
            stored.append(data)
        for data in stored:
            reply = {"ErrorString": "", "Hash": hashlib.sha512(data).hexdigest(), "Added": True}
            peer.send(marshal(reply) + b"\n")

    serving = play(peer, serve())
    async with client.open_call("ObjectServer.AddObjects") as call:

        async def send_all() -> None:
            for data in objects:
                expected = hashlib.sha512(data).hexdigest()
                await call.send({"Length": len(data), "ExpectedHash": expected})
                await call.send_raw(data)
            await call.send({"Length": 0, "ExpectedHash": None})

        sending = Deferred.fromCoroutine(send_all())
        replies = [await call.receive() for _ in objects]
        await sending
    await serving
    assert stored == objects
    assert [reply["Hash"] for reply in replies] == [
        hashlib.sha512(data).hexdigest() for data in objects
    ]
    await client.close()


@pytest_twisted.ensureDeferred
async def test_list_images_raw_text_lines(server: tuple[Server, int]) -> None:
    client, peer = await open_client(server)

    async def serve() -> None:
        assert await peer.take_until() == b"ImageServer.ListImages\n"
        peer.send(b"\nbootstrap/bb/2026-11-27:10:53:19\napps/h\xffllo/x\n\n")
        await answer_ping(peer)

    serving = play(peer, serve())
    names = []
    async with client.open_call("ImageServer.ListImages") as call:
        while line := await call.receive_line():
            names.append(line)
    assert names == ["bootstrap/bb/2026-11-27:10:53:19", "apps/h\ufffdllo/x"]
    await client.ping()
    await serving
    await client.close()


@pytest_twisted.ensureDeferred
async def test_list_directories_against_the_go_transcript(server: tuple[Server, int]) -> None:
    """The coder stream as the Go imageserver sent it, then a ping."""
    client, peer = await open_client(server)
    serving = play(
        peer, replay(peer, transcript_after_handshake("imageserver-listdirectories.txt"))
    )
    names = []
    async with client.open_call("ImageServer.ListDirectories") as call:
        while (directory := await call.receive())["Name"]:
            names.append(directory["Name"])
    await client.ping()
    await serving
    assert names[:3] == ["test/peer-test", "apps", "apps/broken"]
    assert len(names) == 10
    await client.close()


@pytest_twisted.ensureDeferred
async def test_get_objects_errors_against_the_go_transcript(server: tuple[Server, int]) -> None:
    """Three GetObjects calls the Go imageserver answered with errors: our
    requests are byte for byte Go's, the replies read, the connection in step."""
    client, peer = await open_client(server)
    steps = transcript_after_handshake("imageserver-getobjects-errors.txt")
    serving = play(peer, replay(peer, steps))
    requests = [json.loads(data) for direction, data in steps if data.startswith(b'{"Exc')]
    errors = []
    for request in requests:
        async with client.open_call("ObjectServer.GetObjects") as call:
            await call.send(request)
            errors.append((await call.receive())["ResponseString"])
    await client.ping()
    await serving
    assert errors[0].startswith("unknown object: abab")
    assert errors[1].startswith("first of 2 unknown objects: efef")
    assert errors[2] == "bad character"
    await client.close()


@pytest_twisted.ensureDeferred
async def test_the_lf_after_a_reply_may_come_with_the_next_answer(
    server: tuple[Server, int],
) -> None:
    """A reply's trailing LF that arrives after the call ended is not taken
    for the status line of the next call."""
    client, peer = await open_client(server)

    async def serve() -> None:
        assert await peer.take_until() == b"Test.Echo\n"
        peer.send(b"\n")
        assert await peer.take_until() == b"{}\n"
        peer.send(b'\n{"A":1}')  # the reply, its LF held back
        assert await peer.take_until() == b"Test.Refused\n"
        peer.send(b"\nnot now\n")  # the LF, then the refusal
        await answer_ping(peer)  # not a request: the client knew it was refused

    serving = play(peer, serve())
    assert await client.call("Test.Echo", {}) == {"A": 1}
    with pytest.raises(SrpcError, match=r"^not now$"):
        await client.call("Test.Refused", {})
    await client.ping()
    await serving
    assert client._protocol.buffer == bytearray()
    await client.close()


@pytest_twisted.ensureDeferred
async def test_a_call_is_usable_only_inside_its_block(server: tuple[Server, int]) -> None:
    client, peer = await open_client(server)

    async def serve() -> None:
        assert await peer.take_until() == b"ImageServer.ListImages\n"
        peer.send(b"\n\n")

    serving = play(peer, serve())
    async with client.open_call("ImageServer.ListImages") as call:
        assert await call.receive_line() == ""
    await serving
    with pytest.raises(RuntimeError, match="the call has ended"):
        await call.receive_line()
    with pytest.raises(RuntimeError, match="the call has ended"):
        await call.send_raw(b"late")
    await client.close()


# ------------------------------------------------------------------ refusals, errors, abandoning


@pytest_twisted.ensureDeferred
async def test_refused_call_keeps_the_connection(server: tuple[Server, int]) -> None:
    client, peer = await open_client(server)

    async def serve() -> None:
        assert await peer.take_until() == b"ObjectServer.AddObjects\n"
        peer.send(b"access to method denied\n")
        await answer_ping(peer)

    serving = play(peer, serve())
    with pytest.raises(SrpcError, match=r"^access to method denied$") as raised:
        async with client.open_call("ObjectServer.AddObjects"):
            raise AssertionError("the block must not run")
    assert not isinstance(raised.value, SrpcConnectionError)
    await client.ping()
    await serving
    await client.close()


@pytest_twisted.ensureDeferred
async def test_leaving_a_call_by_an_exception_closes_the_connection(
    server: tuple[Server, int],
) -> None:
    client, peer = await open_client(server)

    async def serve() -> None:
        assert await peer.take_until() == b"Test.Stream\n"
        peer.send(b'\n{"Half":')

    serving = play(peer, serve())
    with pytest.raises(KeyError):
        async with client.open_call("Test.Stream"):
            raise KeyError("the caller's own failure")
    await serving
    await peer.lost
    with pytest.raises(SrpcConnectionError, match="call abandoned"):
        await client.ping()


@pytest_twisted.ensureDeferred
async def test_bad_message_from_the_server_ends_the_connection(
    server: tuple[Server, int],
) -> None:
    client, peer = await open_client(server)

    async def serve() -> None:
        assert await peer.take_until() == b"Test.Echo\n"
        peer.send(b"\n")
        assert await peer.take_until() == b'{"A":"\\u003c"}\n'
        peer.send(b"\nhello\n")

    serving = play(peer, serve())
    with pytest.raises(SrpcConnectionError, match="bad message from the server: invalid char"):
        await client.call("Test.Echo", {"A": "<"})
    await serving
    await peer.lost


# ------------------------------------------------------------------ timeouts


@pytest_twisted.ensureDeferred
async def test_connect_timeout(server: tuple[Server, int]) -> None:
    factory, port = server
    clock = Clock()
    connecting = Deferred.fromCoroutine(
        connect(HOST, port, reactor=reactor, tls=False, timeout=7, clock=clock)
    )
    peer = await factory.peers.get()
    assert await peer.take_until(b"\n\n") == PLAIN_CONNECT
    clock.advance(7)
    with pytest.raises(SrpcTimeout, match=r"no SRPC connection within 7s"):
        await connecting
    await peer.lost


@pytest_twisted.ensureDeferred
async def test_call_timeout_closes_the_connection(server: tuple[Server, int]) -> None:
    clock = Clock()
    client, peer = await open_client(server, clock=clock, call_timeout=30)
    pinging = Deferred.fromCoroutine(client.ping())
    await answer_ping(peer)
    await pinging
    assert clock.getDelayedCalls() == []  # a call in time leaves no timer behind

    calling = Deferred.fromCoroutine(client.call("Test.Slow", {}))
    assert await peer.take_until() == b"Test.Slow\n"
    clock.advance(29)
    assert not calling.called
    clock.advance(1)
    with pytest.raises(SrpcTimeout, match=r"^Test.Slow: no answer within 30s$"):
        await calling
    await peer.lost
    with pytest.raises(SrpcTimeout):
        await client.ping()


@pytest_twisted.ensureDeferred
async def test_a_call_may_override_the_timeout(server: tuple[Server, int]) -> None:
    clock = Clock()
    client, peer = await open_client(server, clock=clock, call_timeout=30)
    calling = Deferred.fromCoroutine(client.call("Test.Build", {}, timeout=None))
    assert await peer.take_until() == b"Test.Build\n"
    assert clock.getDelayedCalls() == []
    peer.send(b"\n")
    assert await peer.take_until() == b"{}\n"
    peer.send(b'\n{"Done":true}\n')
    assert await calling == {"Done": True}
    await client.close()


# ------------------------------------------------------------------ a plugged-in coder


class NetstringEncoder:
    """A stand-in for a stateful coder (like GOB's type definitions): the
    first message of each call carries a ``T`` header."""

    def __init__(self) -> None:
        self._header_sent = False

    def encode(self, message: str) -> bytes:
        data = message.encode()
        header = b"" if self._header_sent else b"T"
        self._header_sent = True
        return header + b"%d:%s," % (len(data), data)


class NetstringDecoder:
    def __init__(self, max_message: int) -> None:
        self._max_message = max_message
        self._header_seen = False

    def decode(self, buffer: bytearray, kind: object | None) -> Any:
        start = 0 if self._header_seen else 1
        if not self._header_seen and buffer[:1] not in (b"", b"T"):
            raise ValueError("no type header")
        colon = buffer.find(b":", start)
        if colon < 0:
            return INCOMPLETE
        size = int(buffer[start:colon])
        if size > self._max_message:
            raise MessageTooLarge("netstring too long")
        end = colon + 1 + size
        if len(buffer) <= end:
            return INCOMPLETE
        if buffer[end : end + 1] != b",":
            raise ValueError("bad netstring")
        message = bytes(buffer[colon + 1 : end]).decode()
        del buffer[: end + 1]
        self._header_seen = True
        return message if kind is None else kind(message)  # type: ignore[operator]

    def finish(self, buffer: bytearray) -> bool:
        return True


class NetstringCoder:
    name = "NETSTRING"
    tls_path = "/_netstring_TLS_/"
    insecure_path = "/_netstring_/"

    def new_encoder(self) -> NetstringEncoder:
        return NetstringEncoder()

    def new_decoder(self, max_message: int) -> NetstringDecoder:
        return NetstringDecoder(max_message)


@pytest_twisted.ensureDeferred
async def test_a_plugged_in_coder(server: tuple[Server, int]) -> None:
    """Its CONNECT path, fresh encoder and decoder per call, the expected
    kind of a reply handed to its decoder, messages mixed with raw bytes,
    and its errors."""
    client, peer = await open_client(
        server, b"CONNECT /_netstring_/ HTTP/1.0\n\n", coder=NetstringCoder()
    )

    async def serve() -> None:
        for word in (b"hello", b"again"):
            assert await peer.take_until() == b"Test.Upper\n"
            peer.send(b"\n")
            assert await peer.take_until(b",") == b"T5:" + word + b","
            peer.send(b"\nT5:" + word.upper() + b",")
        assert await peer.take_until() == b"Test.Mixed\n"
        peer.send(b"\n")
        assert await peer.take(len(b"T3:one,RAW3:two,")) == b"T3:one,RAW3:two,"
        peer.send(b"T2:ok,BYTES3:end,")
        assert await peer.take_until() == b"Test.Upper\n"
        peer.send(b"\n")
        assert await peer.take(4) == b"T0:,"  # a fresh encoder: the header again
        peer.send(b"\n2:no,")  # but the reply lacks its header

    serving = play(peer, serve())
    assert await client.call("Test.Upper", "hello") == "HELLO"
    assert await client.call("Test.Upper", "again", reply_kind=str.lower) == "again"
    async with client.open_call("Test.Mixed") as call:
        await call.send("one")
        await call.send_raw(b"RAW")
        await call.send("two")
        assert await call.receive(len) == 2  # "ok", as the kind made it
        assert await call.receive_raw(5) == b"BYTES"
        assert await call.receive() == "end"
    with pytest.raises(SrpcConnectionError, match="bad message from the server: no type header"):
        await client.call("Test.Upper", "")
    await serving
    await peer.lost


def test_json_decoder_takes_the_newline_when_it_comes() -> None:
    decoder = JsonDecoder(1024)
    buffer = bytearray(b'{"a":[1,')
    assert decoder.decode(buffer) is INCOMPLETE
    buffer += b"2]} \r"
    assert decoder.decode(buffer) == {"a": [1, 2]}
    assert decoder.finish(buffer) is False  # only blanks yet: the LF may follow
    buffer += b"\nRAW"
    assert decoder.finish(buffer) is True
    assert buffer == bytearray(b"RAW")
    assert decoder.finish(buffer) is True  # nothing owed any more


def test_json_decoder_limits_and_errors() -> None:
    decoder = JsonDecoder(10)
    with pytest.raises(MessageTooLarge):
        decoder.decode(bytearray(b'["0123456789'))
    with pytest.raises(ValueError, match="invalid character 'x'"):
        JsonDecoder(10).decode(bytearray(b"x\n"))


# ------------------------------------------------------------------ flow control


@pytest_twisted.ensureDeferred
async def test_sending_waits_while_the_server_does_not_read(server: tuple[Server, int]) -> None:
    client, peer = await open_client(server)
    gate = client._protocol._gate
    assert gate is not None
    paused: Deferred[None] = Deferred()
    notified: list[bool] = []
    pause = gate.pauseProducing

    def observed_pause() -> None:
        pause()
        if not notified:  # tell the test once, on the next turn, not inside the transport
            notified.append(True)
            reactor.callLater(0, paused.callback, None)

    gate.pauseProducing = observed_pause  # type: ignore[method-assign]
    chunk = bytes(range(256)) * 4096  # 1 MiB
    total = 48

    async def upload() -> None:
        async with client.open_call("Test.Upload") as call:
            for _ in range(total):
                await call.send_raw(chunk)

    uploading = Deferred.fromCoroutine(upload())
    assert await peer.take_until() == b"Test.Upload\n"
    peer.transport.pauseProducing()  # type: ignore[union-attr]
    peer.send(b"\n")
    await paused.addTimeout(60, reactor)  # a guard against hanging, not a measurement
    # Without the gate every chunk would sit in the transport's buffer by now.
    assert not uploading.called
    peer.transport.resumeProducing()  # type: ignore[union-attr]
    received = await peer.take(total * len(chunk))
    await uploading
    assert received == chunk * total
    await client.close()


@pytest_twisted.ensureDeferred
async def test_reading_pauses_while_nobody_takes_the_bytes(server: tuple[Server, int]) -> None:
    client, peer = await open_client(server)
    protocol = client._protocol
    transport = protocol.transport
    assert transport is not None
    paused: Deferred[None] = Deferred()
    notified: list[bool] = []
    pause = transport.pauseProducing

    def observed_pause() -> None:
        pause()
        if not notified:  # tell the test once, on the next turn, not inside the transport
            notified.append(True)
            reactor.callLater(0, paused.callback, None)

    transport.pauseProducing = observed_pause  # type: ignore[method-assign]
    data = bytes(range(256)) * (64 * 1024)  # 16 MiB

    async def serve() -> None:
        assert await peer.take_until() == b"Test.Download\n"
        peer.send(b"\n" + marshal({"Size": len(data)}) + b"\n" + data)

    serving = play(peer, serve())
    async with client.open_call("Test.Download") as call:
        size = (await call.receive())["Size"]
        await paused.addTimeout(60, reactor)  # a guard against hanging, not a measurement
        held = len(protocol.buffer)
        assert client_module.READ_HIGH_WATER < held < len(data)
        received = b"".join([chunk async for chunk in call.receive_raw_chunks(size)])
    assert received == data
    await serving
    await client.close()


# ------------------------------------------------------------------ coding off the event loop


@pytest_twisted.ensureDeferred
async def test_big_replies_and_requests_are_coded_in_the_thread_pool(
    server: tuple[Server, int],
) -> None:
    import threading

    from twisted.internet.threads import deferToThread

    coded_in: list[tuple[str, bool]] = []
    loop_thread = threading.get_ident()

    class Recording(JsonDecoder):
        def decode(self, buffer: bytearray, kind: object | None) -> Any:
            result = super().decode(buffer, kind)
            if result is not INCOMPLETE:
                coded_in.append(("decode", threading.get_ident() != loop_thread))
            return result

    def in_thread(fn: Any, *args: Any) -> Deferred[Any]:
        return deferToThread(fn, *args)

    client, peer = await open_client(server, in_thread=in_thread, call_timeout=20)
    client_module.JSON_CODER.new_decoder = lambda limit: Recording(limit)  # type: ignore[method-assign]
    big = {"Image": "x" * (client_module.OFFLOAD_BYTES * 2)}

    async def serve() -> None:
        for reply in (big, {"Small": True}):
            assert await peer.take_until() == b"ImageServer.GetImage\n"
            peer.send(b"\n")
            request = json.loads(await peer.take_until())
            assert request == {"ImageName": "a/b"}
            peer.send(b"\n")
            # The big reply arrives in pieces, with the next bytes behind it.
            encoded = marshal(reply) + b"\n"
            peer.send(encoded[:1000])
            peer.send(encoded[1000:])

    serving = play(peer, serve())
    try:
        assert await client.call("ImageServer.GetImage", {"ImageName": "a/b"}) == big
        assert await client.call("ImageServer.GetImage", {"ImageName": "a/b"}) == {"Small": True}
    finally:
        del client_module.JSON_CODER.new_decoder  # type: ignore[attr-defined]
    await serving
    # The big reply was decoded in a pool thread, the small one on the event loop.
    assert coded_in == [("decode", True), ("decode", False)]
    await client.close()


@pytest_twisted.ensureDeferred
async def test_bytes_that_arrive_while_a_reply_is_decoded_in_a_thread_are_not_missed(
    server: tuple[Server, int],
) -> None:
    from twisted.internet.defer import succeed

    big = {"Image": "y" * (client_module.OFFLOAD_BYTES * 2)}
    encoded = marshal(big) + b"\n"
    first, rest = (
        encoded[: client_module.OFFLOAD_BYTES + 10],
        encoded[client_module.OFFLOAD_BYTES + 10 :],
    )
    injected: list[int] = []

    def in_thread(fn: Any, *args: Any) -> Deferred[Any]:
        whole_first_part = fn.__name__ == "decode" and bytes(args[0]) == first
        result = fn(*args)
        if whole_first_part and not injected:
            # The rest of the reply comes in while all of the first part (the
            # network may have split it further) is decoded in the pool.
            injected.append(len(rest))
            client._protocol.dataReceived(rest)
        return succeed(result)

    client, peer = await open_client(server, in_thread=in_thread, call_timeout=5)

    async def serve() -> None:
        assert await peer.take_until() == b"ImageServer.GetImage\n"
        peer.send(b"\n")
        await peer.take_until()
        peer.send(b"\n" + first)
        await answered  # the connection stays open: nothing else wakes the client

    answered: Deferred[None] = Deferred()
    serving = play(peer, serve())
    # Without looking at what arrived meanwhile, the client would wait for more
    # bytes that never come, and time out.
    try:
        assert await client.call("ImageServer.GetImage", {"ImageName": "a/b"}) == big
    finally:
        answered.callback(None)
    await serving
    assert injected == [len(rest)]
    # ... and then have the reply only because its timeout woke it.
    assert client._protocol.usable, client._protocol.error()
    await client.close()
