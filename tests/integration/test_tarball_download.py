"""``/imageTarball``: a real store, a real thread pool and real TCP clients.

The tar made in the pool and streamed over HTTP is byte for byte what
``imagetool tar`` writes; a client that stops reading holds the making thread
(back-pressure) without the daemon buffering the tar, and is dropped after the
stall timeout, giving the thread back; a tar that fails half way is cut short.
"""

from __future__ import annotations

import io
import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
from klein import Klein
from klein.resource import KleinResource
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.web._newclient import ResponseFailed
from twisted.web.server import Site

from imaginator.export.tarlayer import write_image_tar
from imaginator.image.model import DirectoryInode, FileSystem, Image, RegularInode
from imaginator.store.local import AsyncImageStore, LocalImageStore
from imaginator.web.tarball import TarballPage, download_name
from tests.support.export_images import DERIVED, make_store

HOST = "127.0.0.1"
BIG = "apps/big/2026-01-02:03:04:05"
BIG_SIZE = 24 << 20
PIECE = 64 * 1024


@pytest.fixture
def pool() -> Iterator[ThreadPool]:
    pool = ThreadPool(minthreads=1, maxthreads=2, name="tarball-test")
    pool.start()
    yield pool
    pool.stop()


class Served:
    def __init__(self, local: LocalImageStore, pool: ThreadPool, **kwargs: Any) -> None:
        self.local = local
        self.page = TarballPage(
            AsyncImageStore(local, reactor, pool),
            local,
            lambda fn, *args: deferToThreadPool(reactor, pool, fn, *args),
            reactor,
            piece=PIECE,
            **kwargs,
        )
        app = Klein()
        self.page.install(app)
        self.site = Site(KleinResource(app))
        self.protocols: list[Any] = []
        build = self.site.buildProtocol

        def keep(addr: Any) -> Any:
            protocol = build(addr)
            self.protocols.append(protocol)
            return protocol

        self.site.buildProtocol = keep  # type: ignore[method-assign]
        self.port = reactor.listenTCP(0, self.site, interface=HOST)
        self.base = f"http://{HOST}:{self.port.getHost().port}"

    async def idle(self) -> None:
        """Wait until no tarball is being made (its thread has ended)."""
        await self.page._slots.acquire()
        self.page._slots.release()


def expected_tar(local: LocalImageStore, name: str) -> bytes:
    out = io.BytesIO()
    image = local.get_image(name)
    write_image_tar(image, local, out)
    return out.getvalue()


def add_big_image(local: LocalImageStore, size: int = BIG_SIZE) -> Image:
    """``BIG``: ``/big`` (``size`` random bytes), then ``/small``."""
    table = {}
    for inum, length in ((2, size), (3, 1000)):
        digest = bytes.fromhex(local.put_object_bytes(os.urandom(length)))
        table[inum] = RegularInode(stat.S_IFREG | 0o644, 0, 0, 1_700_000_000, 0, length, digest)
    fs = FileSystem(table, DirectoryInode([("big", 2), ("small", 3)]))
    fs.recompute_totals()
    image = Image(file_system=fs, created_on=1_767_323_045_000_000_000)
    local.add_image(BIG, image)
    return image


def remove_object(local: LocalImageStore, image: Image, inum: int) -> None:
    os.unlink(local.objects.object_path(image.file_system.inode_table[inum].hash.hex()))


@pytest_twisted.ensureDeferred
async def test_the_download_is_the_reproducible_tar(tmp_path: Path, pool: ThreadPool) -> None:
    local = make_store(tmp_path / "store")
    served = Served(local, pool)
    try:
        response = await treq.get(f"{served.base}/imageTarball?{DERIVED}")
        body = await treq.content(response)
        missing = await treq.get(f"{served.base}/imageTarball?apps/none/2026-01-01:00:00:00")
        bad = await treq.get(f"{served.base}/imageTarball?../../etc/passwd")
        await treq.content(missing)
        await treq.content(bad)
    finally:
        await served.port.stopListening()
    assert response.code == 200
    headers = {k.decode().lower(): v[0].decode() for k, v in response.headers.getAllRawHeaders()}
    assert headers["content-type"] == "application/x-tar"
    assert headers["content-disposition"] == (
        'attachment; filename="apps_test_2026-01-02_03_05_00.tar"'
    )
    assert headers["x-content-type-options"] == "nosniff"
    assert body == expected_tar(local, DERIVED)
    assert served.page.sent == len(body)
    assert (missing.code, bad.code) == (404, 404)


def test_download_name() -> None:
    assert download_name("apps/hello/2026-11-27:10:53:19") == "apps_hello_2026-11-27_10_53_19.tar"
    assert download_name('a/"b"\r\n;c') == "a_b_c.tar"


class StoppingReader(Protocol):
    """Asks for ``path``, then stops reading as soon as the first bytes arrive."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.data = bytearray()
        self.first: Deferred[None] = Deferred()
        self.closed: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self.transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        request = f"GET {self.path} HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
        self.transport.write(request.encode())

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if not self.first.called:
            self.transport.pauseProducing()
            self.first.callback(None)

    def connectionLost(self, reason: Failure) -> None:
        self.closed.callback(None)


@pytest_twisted.ensureDeferred
async def test_a_client_that_stops_reading_holds_back_the_tar_and_is_dropped(
    tmp_path: Path, pool: ThreadPool
) -> None:
    local = LocalImageStore(str(tmp_path / "store"))
    add_big_image(local)
    served = Served(local, pool, stall_seconds=0.5)
    try:
        reader = StoppingReader(f"/imageTarball?{BIG}")
        endpoint = TCP4ClientEndpoint(reactor, HOST, served.port.getHost().port)
        await connectProtocol(endpoint, reader)
        await reader.first
        for protocol in served.protocols:
            handle = getattr(protocol, "_channel", protocol).transport.getHandle()
            handle.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        await served.idle()  # the server gave up on the stalled client: the thread ended
        assert served.page.running == 0
        # The tar (24 MiB and more) was not made ahead of the client: what was
        # sent is what the sockets' buffers took before the pushing back began.
        assert served.page.sent < BIG_SIZE // 4
        reader.transport.resumeProducing()
        await reader.closed
        assert len(reader.data) < BIG_SIZE // 4
        assert not reader.data.endswith(b"\r\n0\r\n\r\n")  # cut short, not ended

        # The slot is free again: the next download is served in full.
        response = await treq.get(f"{served.base}/imageTarball?{BIG}")
        body = await treq.content(response)
    finally:
        await served.port.stopListening()
    assert body == expected_tar(local, BIG)


@pytest_twisted.ensureDeferred
async def test_a_tar_that_fails_half_way_is_cut_short(tmp_path: Path, pool: ThreadPool) -> None:
    local = LocalImageStore(str(tmp_path / "store"))
    image = add_big_image(local, size=4 << 20)
    remove_object(local, image, 3)  # /small, after 4 MiB of /big were sent
    served = Served(local, pool)
    try:
        response = await treq.get(f"{served.base}/imageTarball?{BIG}")
        assert response.code == 200  # the headers went out with the first piece
        with pytest.raises(ResponseFailed):
            await treq.content(response)
        await served.idle()
    finally:
        await served.port.stopListening()
    assert served.page.running == 0
    assert served.page.sent >= 4 << 20


@pytest_twisted.ensureDeferred
async def test_a_tar_that_fails_before_sending_anything_is_a_500(
    tmp_path: Path, pool: ThreadPool
) -> None:
    local = LocalImageStore(str(tmp_path / "store"))
    image = add_big_image(local, size=10)
    remove_object(local, image, 2)
    served = Served(local, pool)
    try:
        response = await treq.get(f"{served.base}/imageTarball?{BIG}")
        text = await treq.text_content(response)
        await served.idle()
    finally:
        await served.port.stopListening()
    assert response.code == 500
    assert response.headers.getRawHeaders("Content-Type") == ["text/plain; charset=utf-8"]
    assert text.startswith("error making the tarball: ") and "is not available" in text
