"""The remote image store against a scripted imageserver on a loopback socket.

The happy paths run against the real Go imageserver in
``tests/integration/test_imageserver_backend.py``; here the server's side is
played byte by byte (GOB, plain SRPC), sometimes from the Go imageserver's
recorded answers (``tests/data/gob``), to make what a real server rarely does:
an object that fails its hash, a reply that does not decode, a refused object,
a name already taken, a transfer that stalls (timed on a ``Clock``), a
connection lost while idle.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredQueue
from twisted.internet.task import Clock
from twisted.python.threadpool import ThreadPool

from imaginator.goformats.gob import Decoder, Encoder, TypeIds
from imaginator.image.model import Annotation, DirectoryInode, FileSystem, Image, RegularInode
from imaginator.srpc.client import connect
from imaginator.srpc.gobcoder import GobCoder, message_frame_end
from imaginator.srpc.pool import SrpcPool
from imaginator.store import imageserver_messages as m
from imaginator.store.base import ImageExistsError, ImageStore, MissingObjectError
from imaginator.store.imageserver import (
    ImageServerAddress,
    ImageServerError,
    ImageServerStore,
    open_cache,
)
from tests.support.gobstreams import CONNECTED, recorded_calls
from tests.support.scriptedpeer import HOST, PeerServer, ScriptedPeer, listening

# ------------------------------------------------------------------ the scripted server


class Peer(ScriptedPeer):
    """The imageserver's end of one connection, driven by the test."""

    def __init__(self, queue: DeferredQueue[Peer]) -> None:
        super().__init__(queue)
        self.ids = TypeIds()

    async def line(self) -> str:
        while (index := self.received.find(b"\n")) < 0:
            await self._more()
        return (await self.take(index + 1))[:-1].decode()

    async def message(self, decoder: Decoder, kind: Any) -> Any:
        """The next GOB value of the client's call, as a ``kind`` message."""
        while True:
            end = message_frame_end(self.received, 1 << 30)
            if end is not None:
                decoder.push(await self.take(end))
                value = decoder.next(kind.SCHEMA)
                if value is not None:
                    return kind.from_gob(value)
                continue
            await self._more()

    def encode(self, *messages: Any) -> bytes:
        encoder = Encoder(self.ids)
        return b"".join(encoder.encode(msg.SCHEMA, msg.to_gob()) for msg in messages)

    async def accept(self, method: str) -> None:
        """Read the method line (after any pings) and accept the call."""
        while (line := await self.line()) == "":
            self.send(b"\n")  # a ping of a reused connection
        assert line == method
        self.send(b"\n")

    async def request(self, method: str, kind: Any) -> Any:
        """Accept a request/reply call and read its request."""
        await self.accept(method)
        return await self.message(Decoder(), kind)

    def reply(self, message: Any) -> None:
        self.send(b"\n" + self.encode(message))

    def close(self) -> None:
        self.transport.loseConnection()  # type: ignore[union-attr]


class Server(PeerServer[Peer]):
    def __init__(self) -> None:
        super().__init__(Peer)

    async def next_peer(self) -> Peer:
        peer = await self.peers.get()
        assert await peer.take(len(b"CONNECT /_goSRPC_/ HTTP/1.0\n\n")) == (
            b"CONNECT /_goSRPC_/ HTTP/1.0\n\n"
        )
        peer.send(CONNECTED)
        return peer


@pytest_twisted.async_yield_fixture
async def server() -> AsyncIterator[tuple[Server, int]]:
    factory = Server()
    async with listening(factory) as port:
        yield factory, port


@pytest.fixture
def threadpool():
    pool = ThreadPool(minthreads=1, maxthreads=2, name="test")
    pool.start()
    yield pool
    pool.stop()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(server, tmp_path, threadpool, clock) -> ImageServerStore:
    _factory, port = server

    async def dial():
        return await connect(HOST, port, reactor=reactor, tls=False, coder=GobCoder())

    address = ImageServerAddress(HOST, port)
    cache = open_cache(str(tmp_path / "cache"))
    return ImageServerStore(
        address, SrpcPool(dial), cache, reactor=reactor, threadpool=threadpool, clock=clock
    )


def start(coroutine) -> Deferred:
    return Deferred.fromCoroutine(coroutine)


async def failure_of(deferred: Deferred) -> BaseException:
    try:
        await deferred
    except Exception as exc:
        return exc
    raise AssertionError("no failure")


def small_image(store: ImageServerStore, *contents: bytes) -> Image:
    entries, table = [], {}
    for number, data in enumerate(contents, start=2):
        digest = bytes.fromhex(store.local.put_object_bytes(data))
        entries.append((f"f{number}", number))
        table[number] = RegularInode(0o100644, 0, 0, 1, 0, len(data), digest)
    fs = FileSystem(table, DirectoryInode(entries, 0o40755))
    fs.recompute_totals()
    return Image(file_system=fs, build_log=Annotation(object=table[2].hash))


# ------------------------------------------------------------------ reading


@pytest_twisted.ensureDeferred
async def test_an_image_from_the_go_imageserver_is_decoded(server, store):
    factory, _port = server
    (call,) = recorded_calls("show-1")
    getting = start(store.get_image("tools/tree"))
    peer = await factory.next_peer()
    request = await peer.request("ImageServer.GetImage", m.GetImageRequest)
    assert request.image_name == "tools/tree"
    peer.send(b"\n" + call.responses[0].data)  # the Go imageserver's answer
    image = await getting
    expected = Decoder().feed(call.responses[0].data, m.GetImageResponse.SCHEMA)[0]
    assert image == m.GetImageResponse.from_gob(expected).image
    assert len(image.file_system.inode_table) > 5


@pytest_twisted.ensureDeferred
async def test_downloaded_objects_are_checked_against_their_hash(server, store):
    factory, _port = server
    (_get_image, call) = recorded_calls("get-1")
    hashes = [bytes(h) for h in call.requests[0].value["Hashes"]]
    sizes = call.responses[0].value["ObjectSizes"]
    raw = bytearray(call.raw_received)
    raw[sizes[0]] ^= 0xFF  # the second object is damaged on the way

    fetching = start(store.fetch_objects(hashes))
    peer = await factory.next_peer()
    await peer.accept("ObjectServer.GetObjects")
    request = await peer.message(Decoder(), m.GetObjectsRequest)
    assert set(request.hashes) == set(hashes)
    assert request.hashes == sorted(hashes)
    by_hash = {}
    offset = 0
    for digest, size in zip(hashes, sizes, strict=True):
        by_hash[digest] = bytes(raw[offset : offset + size])
        offset += size
    peer.send(peer.encode(m.GetObjectsResponse("", [len(by_hash[h]) for h in request.hashes])))
    peer.send(b"".join(by_hash[h] for h in request.hashes))
    error = await failure_of(fetching)
    assert isinstance(error, ImageServerError)
    assert str(error).startswith(f"imageserver {store.address}: ObjectServer.GetObjects: ")
    assert "failed its SHA-512 check" in str(error)
    damaged = hashes[1].hex()
    assert not store.local.has_object(damaged)
    for digest in hashes:
        if digest.hex() != damaged and store.local.has_object(digest.hex()):
            data = store.local.read_object(digest.hex())
            assert hashlib.sha512(data).digest() == digest
    await peer.lost  # the stream is out of step: the connection is dropped


@pytest_twisted.ensureDeferred
async def test_a_reply_that_does_not_decode_fails_the_call_and_the_next_one_reconnects(
    server, store
):
    factory, _port = server
    finding = start(store.find_latest_image("apps/hello"))
    peer = await factory.next_peer()
    await peer.request("ImageServer.FindLatestImage", m.FindLatestImageRequest)
    peer.send(b"\n\x05\xff\xff\xff\xff\xff")
    error = await failure_of(finding)
    assert isinstance(error, ImageServerError)
    assert str(error).startswith(
        f"imageserver {store.address}: ImageServer.FindLatestImage: bad message from the server"
    )
    await peer.lost

    finding = start(store.find_latest_image("apps/hello"))
    again = await factory.next_peer()
    request = await again.request("ImageServer.FindLatestImage", m.FindLatestImageRequest)
    assert request.directory_name == "apps/hello"
    again.reply(m.FindLatestImageResponse("", "unknown directory: apps/hello"))
    assert await finding is None


@pytest_twisted.ensureDeferred
async def test_an_idle_connection_is_pinged_and_replaced_if_dead(server, store):
    factory, _port = server
    checking = start(store.image_exists("a/b"))
    peer = await factory.next_peer()
    await peer.request("ImageServer.CheckImage", m.CheckImageRequest)
    peer.reply(m.CheckImageResponse(True))
    assert await checking is True

    checking = start(store.image_exists("a/c"))
    assert await peer.line() == ""  # the ping before reuse
    peer.send(b"\n")
    await peer.accept("ImageServer.CheckImage")
    await peer.message(Decoder(), m.CheckImageRequest)
    peer.reply(m.CheckImageResponse(False))
    assert await checking is False

    peer.close()
    await peer.lost
    checking = start(store.image_exists("a/d"))
    fresh = await factory.next_peer()
    await fresh.request("ImageServer.CheckImage", m.CheckImageRequest)
    fresh.reply(m.CheckImageResponse(True))
    assert await checking is True


@pytest_twisted.ensureDeferred
async def test_expiration_answers(server, store):
    factory, _port = server
    answers = {
        "": True,
        "cannot shorten expiration time": False,
        "image does not expire": False,
    }
    peer = None
    for text, expected in answers.items():
        changing = start(store.change_image_expiration("a/b", 5 * 10**18))
        peer = peer or await factory.next_peer()
        request = await peer.request(
            "ImageServer.ChangeImageExpiration", m.ChangeImageExpirationRequest
        )
        assert (request.image_name, request.expires_at) == ("a/b", 5 * 10**18)
        peer.reply(m.ChangeImageExpirationResponse(text))
        assert await changing is expected
    changing = start(store.change_image_expiration("a/b", 5 * 10**18))
    await peer.request("ImageServer.ChangeImageExpiration", m.ChangeImageExpirationRequest)
    peer.reply(m.ChangeImageExpirationResponse("no access to image"))
    error = await failure_of(changing)
    assert str(error) == (
        f"imageserver {store.address}: ImageServer.ChangeImageExpiration: no access to image"
    )


# ------------------------------------------------------------------ publishing


@pytest_twisted.ensureDeferred
async def test_publishing_uploads_only_the_missing_objects(server, store):
    factory, _port = server
    have, lack = b"on the server already\n", b"new content\n" * 1000
    image = small_image(store, have, lack)
    name = "apps/hello/2026-12-01:10:00:00"
    adding = start(store.add_image(name, image))
    peer = await factory.next_peer()
    request = await peer.request("ImageServer.MakeDirectory", m.MakeDirectoryRequest)
    assert (request.directory_name, request.make_all) == ("apps/hello", True)
    peer.reply(m.MakeDirectoryResponse())
    check = await peer.request("ObjectServer.CheckObjects", m.CheckObjectsRequest)
    assert set(check.hashes) == image.object_hashes()
    peer.reply(m.CheckObjectsResponse([len(have) if h == sha(have) else 0 for h in check.hashes]))
    await peer.accept("ObjectServer.AddObjects")
    decoder = Decoder()
    header = await peer.message(decoder, m.AddObjectRequest)
    assert (header.length, header.expected_hash) == (len(lack), sha(lack))
    assert await peer.take(len(lack)) == lack
    end = await peer.message(decoder, m.AddObjectRequest)
    assert end.length == 0
    # Like Go's buffered writer: the answers come after the whole stream.
    peer.send(peer.encode(m.AddObjectResponse("", sha(lack), True)))
    add = await peer.request("ImageServer.AddImage", m.AddImageRequest)
    assert add.image_name == name
    assert add.image.file_system == image.file_system
    peer.send(b"\n" + peer.encode(m.AddImageResponse()))
    await adding
    assert store.uploaded.objects == 1 and store.uploaded.bytes == len(lack)


def sha(data: bytes) -> bytes:
    return hashlib.sha512(data).digest()


@pytest_twisted.ensureDeferred
async def test_an_object_the_server_refuses_publishes_nothing(server, store):
    factory, _port = server
    image = small_image(store, b"first\n", b"second\n")
    adding = start(store.add_image("a/b/2026-12-01:10:00:00", image))
    peer = await factory.next_peer()
    await peer.request("ImageServer.MakeDirectory", m.MakeDirectoryRequest)
    peer.reply(m.MakeDirectoryResponse())
    check = await peer.request("ObjectServer.CheckObjects", m.CheckObjectsRequest)
    peer.reply(m.CheckObjectsResponse([0] * len(check.hashes)))
    await peer.accept("ObjectServer.AddObjects")
    first = await peer.message(Decoder(), m.AddObjectRequest)
    await peer.take(first.length)
    peer.send(peer.encode(m.AddObjectResponse("hash mismatch. Computed=x, expected=y", sha(b""))))
    error = await failure_of(adding)
    assert str(error) == (
        f"imageserver {store.address}: ObjectServer.AddObjects: object "
        f"{first.expected_hash.hex()}: hash mismatch. Computed=x, expected=y"
    )
    await peer.lost
    assert "ImageServer.AddImage" not in peer.received.decode("latin-1")


@pytest_twisted.ensureDeferred
async def test_an_object_neither_cached_nor_on_the_server_publishes_nothing(server, store):
    factory, _port = server
    image = small_image(store, b"only here\n")
    store.local.collect_garbage()  # the cache lost it
    adding = start(store.add_image("a/b/2026-12-01:10:00:00", image))
    peer = await factory.next_peer()
    await peer.request("ImageServer.MakeDirectory", m.MakeDirectoryRequest)
    peer.reply(m.MakeDirectoryResponse())
    await peer.request("ObjectServer.CheckObjects", m.CheckObjectsRequest)
    peer.reply(m.CheckObjectsResponse([0]))
    await peer.accept("ObjectServer.AddObjects")
    error = await failure_of(adding)
    assert isinstance(error, MissingObjectError)
    digest = next(iter(image.object_hashes())).hex()
    assert str(error) == (
        f"imageserver {store.address}: ObjectServer.AddObjects: object: {digest} "
        "is neither on the imageserver nor in the local cache"
    )
    await peer.lost


@pytest_twisted.ensureDeferred
async def test_a_name_taken_by_a_deleted_image_is_image_exists(server, store):
    factory, _port = server
    image = small_image(store, b"x\n")
    name = "a/b/2026-12-01:10:00:00"
    adding = start(store.add_image(name, image))
    peer = await factory.next_peer()
    await peer.request("ImageServer.MakeDirectory", m.MakeDirectoryRequest)
    peer.reply(m.MakeDirectoryResponse())
    await peer.request("ObjectServer.CheckObjects", m.CheckObjectsRequest)
    peer.reply(m.CheckObjectsResponse([2]))
    await peer.request("ImageServer.AddImage", m.AddImageRequest)
    peer.send(f"cannot add previously deleted image: {name}\n".encode())
    error = await failure_of(adding)
    assert isinstance(error, ImageExistsError)
    assert str(error).endswith(f"ImageServer.AddImage: cannot add previously deleted image: {name}")


@pytest_twisted.ensureDeferred
async def test_a_stalled_download_times_out_naming_the_server(server, store, clock):
    factory, _port = server
    data = b"a" * 5000
    fetching = start(store.fetch_objects([sha(data)]))
    peer = await factory.next_peer()
    await peer.accept("ObjectServer.GetObjects")
    await peer.message(Decoder(), m.GetObjectsRequest)
    # ... and then nothing comes back.
    clock.advance(119)
    assert not fetching.called
    clock.advance(1)
    error = await failure_of(fetching)
    assert str(error) == (
        f"imageserver {store.address}: ObjectServer.GetObjects: no progress for 120s"
    )
    await peer.lost


@pytest_twisted.ensureDeferred
async def test_reserved_names_skip_those_the_server_has(server, store):
    factory, _port = server
    epoch = time.mktime((2026, 12, 1, 10, 0, 0, 0, 0, -1))
    reserving = start(store.reserve_image_name("a/b", epoch))
    peer = await factory.next_peer()
    first = await peer.request("ImageServer.CheckImage", m.CheckImageRequest)
    assert first.image_name == "a/b/2026-12-01:10:00:00"
    peer.reply(m.CheckImageResponse(True))
    await peer.line()
    peer.send(b"\n")
    await peer.accept("ImageServer.CheckImage")
    second = await peer.message(Decoder(), m.CheckImageRequest)
    assert second.image_name == "a/b/2026-12-01:10:00:01"
    peer.reply(m.CheckImageResponse(False))
    assert await reserving == "a/b/2026-12-01:10:00:01"
    # Handed out once: the next reservation of that second moves on.
    again = start(store.reserve_image_name("a/b", epoch + 1))
    await peer.line()
    peer.send(b"\n")
    await peer.accept("ImageServer.CheckImage")
    third = await peer.message(Decoder(), m.CheckImageRequest)
    assert third.image_name == "a/b/2026-12-01:10:00:02"
    peer.reply(m.CheckImageResponse(False))
    assert await again == "a/b/2026-12-01:10:00:02"


def test_it_is_an_image_store(store):
    assert isinstance(store, ImageStore)
