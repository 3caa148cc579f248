"""``/imageTarball?<name>``: an image of the store downloaded as its reproducible tar.

The tar is what ``imagetool tar NAME -`` writes (``export.tarlayer.write_image_tar``),
made in the thread pool and streamed to the client as it is made, never whole in
memory: the thread hands the reactor pieces of ``PIECE`` bytes and waits while the
client's connection pushes back (the page is a push producer on the request). A
client that stops reading for ``STALL_SECONDS`` is disconnected, so it cannot hold
a pool thread for ever; at most ``MAX_RUNNING`` tarballs are made at once (more
requests wait their turn), so downloads never take every thread from the builds.
A tarball that fails half way (an object missing from the store) is cut off
without the end of the chunked response, so the client sees an incomplete download
(or, if nothing was sent yet, gets a 500 naming the error).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from klein import Klein
from twisted.internet.defer import Deferred, DeferredSemaphore
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.threads import blockingCallFromThread
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.server import Request
from zope.interface import implementer

from imaginator.export.source import ImageReader
from imaginator.export.tarlayer import write_image_tar
from imaginator.image.model import Image
from imaginator.runtime.reactors import IReactorTimeAndThreads
from imaginator.store.base import InvalidNameError, StoreError
from imaginator.web.live_log import StreamedRequest
from imaginator.web.pages import TEXT, query_argument, set_security_headers

PIECE = 256 * 1024
"""Bytes the making thread collects before it hands them to the reactor."""
STALL_SECONDS = 300.0
"""How long a client may take no data before it is disconnected."""
MAX_RUNNING = 1
"""Tarballs made at the same time."""

TAR = b"application/x-tar"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")

_log = Logger()

#: ``run_in_thread(fn, *args)``: a Deferred of ``fn(*args)`` run in the thread pool.
RunInThread = Callable[..., Deferred[Any]]


class ImageLookup(Protocol):
    """The one store call made on the reactor (``AsyncImageStore.get_image``)."""

    def get_image(self, name: str) -> Awaitable[Image | None]: ...


class Aborted(Exception):
    """The download stopped (client gone, stalled, or cancelled)."""


def download_name(image_name: str) -> str:
    """A file name for ``Content-Disposition``: the image name with unsafe runs as ``_``."""
    return _UNSAFE.sub("_", image_name).strip("_") + ".tar"


@implementer(IPushProducer)
class _Download:
    """One tarball on its way to one client: the reactor side of the making thread."""

    def __init__(
        self,
        request: StreamedRequest,
        clock: IReactorTime,
        stall_seconds: float,
        count: Callable[[int], None],
    ) -> None:
        self._request = request
        self._count = count
        self._clock = clock
        self._stall_seconds = stall_seconds
        self._paused = False
        self._waiter: Deferred[None] | None = None
        self._stall: IDelayedCall | None = None
        self.aborted: str = ""
        self.sent = 0
        request.registerProducer(self, True)
        request.notifyFinish().addErrback(lambda _failure: self.abort("client gone"))

    # -- called from the making thread through blockingCallFromThread ----------------

    def send(self, data: bytes) -> Deferred[None] | None:
        """Write ``data``; a Deferred (which the thread waits for) while the client pushes back."""
        if self.aborted:
            raise Aborted(self.aborted)
        self._count(len(data))
        self.sent += len(data)
        self._request.write(data)  # may pause us before it returns
        if not self._paused:
            return None
        self._waiter = Deferred()
        self._stall = self._clock.callLater(self._stall_seconds, self.abort, "client stalled")
        return self._waiter

    # -- IPushProducer -------------------------------------------------------------------

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._wake(None)

    def stopProducing(self) -> None:
        self.abort("client gone")

    # -- ending ------------------------------------------------------------------------------

    def abort(self, reason: str) -> None:
        """Stop: the thread's next (or waiting) ``send`` fails with ``Aborted``."""
        if self.aborted:
            return
        self.aborted = reason
        self._wake(Aborted(reason))

    def _wake(self, error: Exception | None) -> None:
        if self._stall is not None and self._stall.active():
            self._stall.cancel()
        self._stall = None
        waiter, self._waiter = self._waiter, None
        if waiter is not None:
            if error is None:
                waiter.callback(None)
            else:
                waiter.errback(error)

    def unregister(self) -> None:
        try:
            self._request.unregisterProducer()
        except Exception:  # the connection is gone already
            pass


class _ThreadWriter:
    """The file the tar is written to in the making thread: whole pieces to ``deliver``."""

    def __init__(self, deliver: Callable[[bytes], None], piece: int = PIECE) -> None:
        self._deliver = deliver
        self._piece = piece
        self._buffer = bytearray()

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self._buffer += data
        while len(self._buffer) >= self._piece:
            chunk = bytes(self._buffer[: self._piece])
            del self._buffer[: self._piece]
            self._deliver(chunk)
        return len(data)

    def flush(self) -> None:
        """Nothing to do: pieces go out when they are whole (``close`` sends the rest)."""

    def close(self) -> None:
        if self._buffer:
            chunk, self._buffer = bytes(self._buffer), bytearray()
            self._deliver(chunk)


class TarballPage:
    """``/imageTarball?<name>``, installed on a Klein app.

    ``store`` finds the image on the reactor; ``reader`` (the ``LocalImageStore``)
    is read in the thread pool, through ``run_in_thread``; ``reactor`` is where
    the thread hands its pieces.
    """

    def __init__(
        self,
        store: ImageLookup,
        reader: ImageReader,
        run_in_thread: RunInThread,
        reactor: IReactorTimeAndThreads,
        *,
        stall_seconds: float = STALL_SECONDS,
        max_running: int = MAX_RUNNING,
        piece: int = PIECE,
    ) -> None:
        self._store = store
        self._reader = reader
        self._in_thread = run_in_thread
        self._reactor = reactor
        self._stall_seconds = stall_seconds
        self._slots = DeferredSemaphore(max_running)
        self._piece = piece
        self.running = 0
        #: Bytes of tarballs handed to clients' connections, in all.
        self.sent = 0

    def install(self, app: Klein) -> None:
        app.route("/imageTarball", methods=["GET"], endpoint="tarball:/imageTarball")(self.tarball)

    def tarball(self, request: Request) -> Deferred[bytes | None]:
        return Deferred.fromCoroutine(self._tarball(request, query_argument(request)))

    async def _tarball(self, request: Request, name: str) -> bytes | None:
        try:
            image = await self._store.get_image(name)
        except InvalidNameError:
            image = None
        except StoreError as exc:
            return _plain(request, 500, f"error reading the image store: {exc}\n")
        if image is None or image.file_system is None:
            return _plain(request, 404, "404 page not found\n")
        await self._slots.acquire()
        set_security_headers(request)
        request.setHeader(b"Content-Type", TAR)
        request.setHeader(
            b"Content-Disposition", f'attachment; filename="{download_name(name)}"'.encode()
        )
        download = _Download(request, self._reactor, self._stall_seconds, self._count)
        self.running += 1
        made = self._in_thread(self._make, image, download)
        # The slot is the thread's: it is given back when the thread ends, even
        # if the request was cancelled (the client left) long before.
        made.addBoth(self._made)
        # A list: a Failure given to callback() would be raised by the await.
        finished: Deferred[list[Failure | None]] = Deferred(lambda _d: download.abort("cancelled"))

        def finish(outcome: Failure | None) -> None:
            if not finished.called:
                finished.callback([outcome])

        made.addBoth(finish)
        try:
            (outcome,) = await finished
        finally:
            download.unregister()
        if not isinstance(outcome, Failure):
            return b""
        if outcome.check(Aborted):
            _cut_short(request)
            return b""
        error = outcome.getErrorMessage()
        _log.warn("Error making the tarball of {name}: {error}", name=name, error=error)
        if not download.sent:  # nothing is out yet: a proper error answer
            request.setHeader(b"Content-Disposition", b"inline")
            return _plain(request, 500, f"error making the tarball: {error}\n")
        _cut_short(request)
        return b""

    def _make(self, image: Image, download: _Download) -> None:
        """In the thread pool: write the tar, piece by piece, to the client."""

        def deliver(piece: bytes) -> None:
            blockingCallFromThread(self._reactor, download.send, piece)

        writer = _ThreadWriter(deliver, self._piece)
        write_image_tar(image, self._reader, writer)
        writer.close()

    def _count(self, size: int) -> None:
        self.sent += size

    def _made(self, outcome: Failure | None) -> Failure | None:
        self.running -= 1
        self._slots.release()
        return outcome if isinstance(outcome, Failure) else None


def _cut_short(request: Request) -> None:
    """End the connection now, without the end of the chunked response: headers
    and part of the tar are out, and the client must see the download fail."""
    abort = getattr(request.transport, "abortConnection", None)
    if callable(abort):
        abort()
    else:
        request.loseConnection()


def _plain(request: IRequest, code: int, text: str) -> bytes:
    set_security_headers(request)
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", TEXT)
    return text.encode("utf-8")
