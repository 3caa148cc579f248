"""The image store on a remote Dominator imageserver (``-imageServerHostname``).

Images and directories live only on the server; the daemon talks to it over
SRPC with the GOB coder, over TLS, presenting its own certificate and
checking the server's against the CA (reference §1, §5). File contents pass
through a local object store, a *cache* in front of the server, because the
pipeline works on files:

- the scanner stores a build's new contents into the cache, as it does into
  the embedded store; ``add_object`` (the build log) does the same;
- ``add_image`` publishes: it makes the image's directory (``MakeAll``),
  asks the server which of the image's objects it lacks (``CheckObjects``),
  uploads exactly those from the cache (one pipelined ``AddObjects``) and
  only then adds the image (``AddImage``). Nothing is half-published: an
  image is added only after the server has confirmed every object;
- ``fetch_objects`` downloads what the cache lacks before an unpack
  (``GetObjects``), each object checked against its SHA-512.

The cache (``<stateDir>/object-cache``, never the embedded store's
directory) is emptied at start-up (whatever a crash left in it is not
trusted) and by ``collect_garbage``, which the daemon runs only while no
build runs. The server expires and collects its own images and objects, so
``delete_expired_images`` does nothing here.

Every error names the server (``imageserver HOST:PORT: METHOD: text``);
connection failures, timeouts, refused certificates and undecodable replies
end the call with such a :class:`ImageServerError`, never the daemon.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from imaginator.goformats.units import format_bytes
from imaginator.image.model import Image
from imaginator.runtime.reactors import IReactorTimeAndTCP, IReactorTimeAndThreads
from imaginator.srpc.client import InThread, SrpcClient, connect
from imaginator.srpc.framing import SrpcError, SrpcLimits
from imaginator.srpc.gobcoder import GobCoder, GobMessage
from imaginator.srpc.pool import SrpcPool
from imaginator.srpc.tls import ClientTlsOptions
from imaginator.store import imageserver_messages as m
from imaginator.store.base import (
    ImageExistsError,
    ImageNotFoundError,
    InvalidNameError,
    MissingObjectError,
    StoreError,
    TagsToMatch,
    Transferred,
)
from imaginator.store.imageserver_objects import (
    GET_BATCH,
    Transfers,
    download_objects,
    missing_objects,
    upload_objects,
)
from imaginator.store.local import LocalImageStore
from imaginator.store.names import (
    DATESTAMP_FORMAT,
    check_directory_name,
    check_hash,
    check_image_name,
    check_new_image_name,
)

__all__ = [
    "ImageServerAddress",
    "ImageServerError",
    "ImageServerStore",
    "make_dial",
    "open_cache",
]

T = TypeVar("T")
_Reply = TypeVar("_Reply")

_log = Logger()

DEFAULT_PORT = 6971
#: GOB messages up to this size are accepted (an image with a big file-system).
MAX_MESSAGE = 256 << 20
#: Errors of ``AddImage`` that mean the name is taken (or was, by a deleted image).
_NAME_TAKEN = ("already exists", "already being written", "cannot add previously deleted image")
#: How long a name handed out by ``reserve_image_name`` is remembered.
_RESERVATION_SECONDS = 86400
_POWERS_HINT = (
    " (the daemon's certificate needs this method in its permitted methods, or its name in"
    " the imageserver's -srpcTrustedUsers)"
)


@dataclass(frozen=True)
class ImageServerAddress:
    """Where the imageserver listens."""

    host: str
    port: int = DEFAULT_PORT

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


class ImageServerError(StoreError):
    """A call to the imageserver failed; the text names the server and the method."""


def make_dial(
    address: ImageServerAddress,
    tls_options: ClientTlsOptions,
    *,
    reactor: IReactorTimeAndTCP,
    connect_timeout: float = 15.0,
    in_thread: InThread | None = None,
) -> Callable[[], Awaitable[SrpcClient]]:
    """A function that opens one GOB connection over TLS to the imageserver
    (``CONNECT /_go_TLS_SRPC_/``); ``tls_options`` carry the client
    certificate and the CA the server's certificate must chain to. With
    ``in_thread`` (the daemon's) requests and big replies (image records)
    are coded in the thread pool, off the event loop."""

    async def dial() -> SrpcClient:
        return await connect(
            address.host,
            address.port,
            reactor=reactor,
            coder=GobCoder(),
            tls_options=tls_options,
            timeout=connect_timeout,
            limits=SrpcLimits(max_message=MAX_MESSAGE),
            in_thread=in_thread,
        )

    return dial


class ImageServerStore:
    """The ``ImageStore`` interface on an imageserver (see the module docstring).

    ``pool`` lends the connections, ``cache`` is the local object store,
    ``call_timeout`` bounds each request/reply call and ``idle_timeout`` the
    pauses of an object transfer (timed on ``clock``, default ``reactor``).
    """

    def __init__(
        self,
        address: ImageServerAddress,
        pool: SrpcPool,
        cache: LocalImageStore,
        *,
        reactor: IReactorTimeAndThreads,
        threadpool: ThreadPool,
        clock: IReactorTime | None = None,
        call_timeout: float = 120.0,
        idle_timeout: float = 120.0,
    ) -> None:
        self.address = address
        self.local = cache
        self._pool = pool
        self._reactor = reactor
        self._threadpool = threadpool
        self._call_timeout = call_timeout
        timers: IReactorTime = clock if clock is not None else reactor
        self._transfers = Transfers(cache, self._in_thread, timers, idle_timeout)
        self._reserved: dict[str, float] = {}
        #: Objects (and bytes) uploaded and downloaded since the start.
        self.uploaded = Transferred()
        self.downloaded = Transferred()

    def _in_thread(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred[Any]:
        return deferToThreadPool(self._reactor, self._threadpool, fn, *args, **kwargs)

    # ------------------------------------------------------------------ calls

    def _error(
        self, method: str, text: str, kind: type[StoreError] = ImageServerError
    ) -> StoreError:
        prefix = f"cannot connect to {self.address.host}:{self.address.port}: "
        if text.startswith(prefix):
            text = "cannot connect: " + text[len(prefix) :]
        if text == "access to method denied":
            text += _POWERS_HINT
        return kind(f"imageserver {self.address}: {method}: {text}")

    async def _run(
        self, method: str | Callable[[], str], work: Callable[[SrpcClient], Awaitable[T]]
    ) -> T:
        """``work`` on a pooled connection, its failures as ``ImageServerError``
        naming ``method`` (a function: the method in progress when it failed)."""
        try:
            return await self._pool.run(work)
        except ImageServerError:
            raise
        except (SrpcError, StoreError) as exc:
            name = method() if callable(method) else method
            text = exc.text if isinstance(exc, SrpcError) else str(exc)
            kind = MissingObjectError if isinstance(exc, MissingObjectError) else ImageServerError
            raise self._error(name, text, kind) from None

    async def _call(
        self, client: SrpcClient, method: str, request: GobMessage, reply_kind: type[_Reply]
    ) -> _Reply:
        return await client.call(method, request, reply_kind=reply_kind, timeout=self._call_timeout)

    async def _simple(self, method: str, request: GobMessage, reply_kind: type[_Reply]) -> _Reply:
        async def work(client: SrpcClient) -> _Reply:
            return await self._call(client, method, request, reply_kind)

        return await self._run(method, work)

    # ------------------------------------------------------------------ images

    async def find_latest_image(
        self,
        directory: str,
        build_commit_id: str = "",
        tags_to_match: TagsToMatch | None = None,
    ) -> str | None:
        """``ImageServer.FindLatestImage``; ``None`` for no image or an unknown directory."""
        check_directory_name(directory)
        tags = {key: list(values) for key, values in (tags_to_match or {}).items()} or None
        request = m.FindLatestImageRequest(directory, build_commit_id, False, tags)
        method = "ImageServer.FindLatestImage"
        reply = await self._simple(method, request, m.FindLatestImageResponse)
        if reply.error:
            if reply.error.startswith("unknown directory:"):
                return None
            raise self._error(method, reply.error)
        return reply.image_name or None

    async def get_image(self, name: str) -> Image | None:
        """``ImageServer.GetImage``; ``None`` if there is no such image."""
        check_image_name(name)
        reply = await self._simple(
            "ImageServer.GetImage", m.GetImageRequest(name), m.GetImageResponse
        )
        return reply.image

    async def image_exists(self, name: str) -> bool:
        """``ImageServer.CheckImage`` (an invalid name names no image)."""
        try:
            check_image_name(name)
        except InvalidNameError:
            return False
        reply = await self._simple(
            "ImageServer.CheckImage", m.CheckImageRequest(name), m.CheckImageResponse
        )
        return bool(reply.image_exists)

    async def add_image(self, name: str, image: Image) -> None:
        """Publish ``image`` as ``name`` (see the module docstring). The
        server sets ``created_on`` and ``created_by`` (the certificate's name)."""
        check_new_image_name(name)
        if image.file_system is None:
            raise StoreError("nil file-system")
        directory = name.rsplit("/", 1)[0]
        hashes = sorted(image.object_hashes())
        step = ["ImageServer.MakeDirectory"]

        async def publish(client: SrpcClient) -> Transferred:
            await self._call(
                client, step[0], m.MakeDirectoryRequest(directory, True), m.MakeDirectoryResponse
            )
            sent = Transferred()
            for attempt in (1, 2):
                step[0] = "ObjectServer.CheckObjects"
                missing = await missing_objects(client, hashes, self._call_timeout)
                step[0] = "ObjectServer.AddObjects"
                more = await upload_objects(self._transfers, client, missing)
                sent = Transferred(sent.objects + more.objects, sent.bytes + more.bytes)
                step[0] = "ImageServer.AddImage"
                try:
                    await self._call(
                        client, step[0], m.AddImageRequest(name, image), m.AddImageResponse
                    )
                    return sent
                except SrpcError as exc:
                    # An object the server had may have been collected since it
                    # was checked: check and upload once more.
                    if attempt == 2 or "not available" not in exc.text:
                        raise
            raise AssertionError("unreachable")

        try:
            sent = await self._run(lambda: step[0], publish)
        except ImageServerError as exc:
            if step[0] == "ImageServer.AddImage" and any(t in str(exc) for t in _NAME_TAKEN):
                raise ImageExistsError(str(exc)) from None
            raise
        self.uploaded = Transferred(
            self.uploaded.objects + sent.objects, self.uploaded.bytes + sent.bytes
        )
        _log.info(
            "Added {name} to imageserver {address}: uploaded {count} of {total} objects ({size})",
            name=name,
            address=str(self.address),
            count=sent.objects,
            total=len(hashes),
            size=format_bytes(sent.bytes),
        )

    async def change_image_expiration(self, name: str, expires_at_ns: int) -> bool:
        """``ImageServer.ChangeImageExpiration``: lengthen only. Returns
        whether the expiry changed (False for an earlier time, or an image
        that never expires)."""
        check_image_name(name)
        method = "ImageServer.ChangeImageExpiration"
        reply = await self._simple(
            method,
            m.ChangeImageExpirationRequest(expires_at_ns, name),
            m.ChangeImageExpirationResponse,
        )
        if not reply.error:
            return True
        if reply.error in ("cannot shorten expiration time", "image does not expire"):
            return False
        if reply.error == "image not found":
            raise self._error(method, f"{reply.error}: {name}", ImageNotFoundError)
        raise self._error(method, reply.error)

    async def delete_image(self, name: str) -> None:
        """``ImageServer.DeleteImage`` (the server keeps the name from being used again)."""
        check_image_name(name)
        method = "ImageServer.DeleteImage"
        try:
            await self._simple(method, m.DeleteImageRequest(name), m.DeleteImageResponse)
        except ImageServerError as exc:
            if "does not exist" in str(exc):
                raise ImageNotFoundError(str(exc)) from None
            raise

    async def list_images(self) -> list[str]:
        """``ImageServer.ListImages``: every image name, sorted."""

        async def work(client: SrpcClient) -> list[str]:
            names = []
            method = "ImageServer.ListImages"
            async with client.open_call(method, timeout=self._call_timeout) as call:
                while line := await call.receive_line():
                    names.append(line)
            return names

        return sorted(await self._run("ImageServer.ListImages", work))

    async def list_directories(self) -> list[str]:
        """``ImageServer.ListDirectories``: every directory but the root, sorted."""

        async def work(client: SrpcClient) -> list[str]:
            names = []
            method = "ImageServer.ListDirectories"
            async with client.open_call(method, timeout=self._call_timeout) as call:
                while (directory := await call.receive(m.Directory)).name:
                    names.append(directory.name)
            return names

        names = await self._run("ImageServer.ListDirectories", work)
        return sorted(name for name in names if name != ".")

    async def reserve_image_name(self, stream: str, epoch: float) -> str:
        """A name ``<stream>/<local time of epoch>`` that the server does not
        have and this process has not handed out; if taken, a later second."""
        check_directory_name(stream)
        now = time.time()
        for old in [n for n, at in self._reserved.items() if at < now - _RESERVATION_SECONDS]:
            del self._reserved[old]
        second = int(epoch // 1)
        while True:
            name = f"{stream}/{time.strftime(DATESTAMP_FORMAT, time.localtime(second))}"
            if name not in self._reserved and not await self.image_exists(name):
                self._reserved[name] = now
                return name
            second += 1

    async def ensure_directories(self, streams: Iterable[str]) -> list[str]:
        """Make every missing directory of ``streams`` and of their parents,
        one level at a time as the Go imaginator does (reference §3.4);
        returns the directories made. Names that are not valid are skipped."""
        existing = set(await self.list_directories())
        wanted: list[str] = []
        for stream in sorted(set(streams)):
            try:
                check_directory_name(stream)
            except InvalidNameError:
                continue
            parts = stream.split("/")
            for index in range(1, len(parts) + 1):
                prefix = "/".join(parts[:index])
                if prefix not in existing and prefix not in wanted:
                    wanted.append(prefix)
        made = []
        for directory in wanted:
            method = "ImageServer.MakeDirectory"
            try:
                await self._simple(
                    method, m.MakeDirectoryRequest(directory, False), m.MakeDirectoryResponse
                )
            except ImageServerError as exc:
                if "already exists" not in str(exc):
                    raise
                continue
            _log.info("Created missing directory: {directory}", directory=directory)
            made.append(directory)
        return made

    # ------------------------------------------------------------------ objects

    async def get_object(self, hash_hex: str) -> bytes:
        """An object's content, from the cache or else downloaded into it."""
        check_hash(hash_hex)
        await self.fetch_objects([bytes.fromhex(hash_hex)])
        try:
            return await self._in_thread(self.local.read_object, hash_hex)
        except MissingObjectError:  # collected meanwhile: once more
            await self.fetch_objects([bytes.fromhex(hash_hex)])
            return await self._in_thread(self.local.read_object, hash_hex)

    async def has_object(self, hash_hex: str) -> bool:
        """Whether the server stores the object (``CheckObjects``)."""
        check_hash(hash_hex)
        digest = bytes.fromhex(hash_hex)

        async def work(client: SrpcClient) -> bool:
            return not await missing_objects(client, [digest], self._call_timeout)

        return await self._run("ObjectServer.CheckObjects", work)

    async def add_object(self, data: bytes) -> str:
        """Keep ``data`` in the cache; it goes to the server with the first
        image that references it (``add_image``)."""
        return await self._in_thread(self.local.put_object_bytes, data, sync=False)

    async def fetch_objects(self, hashes: Collection[bytes]) -> Transferred:
        """Download the objects the cache lacks (``GetObjects``, in batches)."""
        cache = self.local

        def lacking() -> list[bytes]:
            return sorted(h for h in set(hashes) if not cache.has_object(h.hex()))

        missing = await self._in_thread(lacking)
        total = Transferred()
        for start in range(0, len(missing), GET_BATCH):
            batch: Sequence[bytes] = missing[start : start + GET_BATCH]

            async def work(client: SrpcClient, batch: Sequence[bytes] = batch) -> Transferred:
                return await download_objects(self._transfers, client, batch)

            got = await self._run("ObjectServer.GetObjects", work)
            total = Transferred(total.objects + got.objects, total.bytes + got.bytes)
        if total.objects:
            self.downloaded = Transferred(
                self.downloaded.objects + total.objects, self.downloaded.bytes + total.bytes
            )
        return total

    # ------------------------------------------------------------------ housekeeping

    async def delete_expired_images(self) -> list[str]:
        """Nothing: the imageserver deletes expired images itself."""
        return []

    async def collect_garbage(self) -> tuple[int, int]:
        """Empty the object cache; returns (objects, bytes) removed. Call it
        only while no build runs (a build's objects may not be uploaded yet)."""
        return await self._in_thread(self.local.collect_garbage)

    async def close(self) -> None:
        """Close the connections."""
        await self._pool.close()


def open_cache(path: str) -> LocalImageStore:
    """The object cache at ``path`` (a ``LocalImageStore`` layout holding
    objects only), emptied: whatever a crash left in it is not trusted. Blocking."""
    cache = LocalImageStore(path)
    cache.collect_garbage()
    return cache
