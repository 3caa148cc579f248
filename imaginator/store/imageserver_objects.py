"""Moving objects between the local object cache and an imageserver.

Three exchanges of the Go objectserver (reference §5.2, §5.3), each on one
SRPC connection lent by the remote store:

- :func:`missing_objects`: ``ObjectServer.CheckObjects`` in batches; the ids
  the server does not have;
- :func:`upload_objects`: one ``ObjectServer.AddObjects`` call, pipelined: a
  sender puts each object (a header, then its raw bytes) on the wire while
  the caller reads the server's answers, which the Go server sends only as
  its buffer fills; every object must come back added or already present,
  with the hash it was sent with;
- :func:`download_objects`: ``ObjectServer.GetObjects``, the objects' raw
  bytes after one reply, each written into the cache in ``tmp/`` and
  installed only if it has the SHA-512 it was asked for.

File contents are read and written in the thread pool (small objects in
batches, a big one in blocks), never on the reactor. A transfer that makes no
progress for ``idle_timeout`` seconds ends its connection
(:class:`~imaginator.srpc.framing.SrpcTimeout`); a long transfer that keeps
moving is never cut short.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from imaginator.srpc.client import ClientCall, SrpcClient
from imaginator.srpc.framing import SrpcConnectionError, SrpcTimeout
from imaginator.store.base import HashMismatchError, MissingObjectError, StoreError, Transferred
from imaginator.store.imageserver_messages import (
    AddObjectRequest,
    AddObjectResponse,
    CheckObjectsRequest,
    CheckObjectsResponse,
    GetObjectsRequest,
    GetObjectsResponse,
)
from imaginator.store.local import LocalImageStore

__all__ = [
    "CHECK_BATCH",
    "GET_BATCH",
    "ObjectTransferError",
    "Transfers",
    "download_objects",
    "missing_objects",
    "upload_objects",
]

InThread = Callable[..., Awaitable[Any]]

#: Object ids per ``CheckObjects`` request (64 bytes each on the wire).
CHECK_BATCH = 16384
#: Object ids per ``GetObjects`` call.
GET_BATCH = 4096
#: Objects up to this size are read or written whole, several per thread call.
SMALL_OBJECT = 1 << 20
#: What one thread call reads or writes of small objects.
BATCH_BYTES = 4 << 20
BLOCK = 1 << 20


class ObjectTransferError(StoreError):
    """The server refused an object, or sent one that is not what was asked."""


@dataclass
class Transfers:
    """What the transfers need: the cache, the thread pool, the clock."""

    cache: LocalImageStore
    in_thread: InThread
    clock: IReactorTime
    idle_timeout: float = 120.0


class _Watchdog:
    """Ends the connection when a transfer makes no progress for a while."""

    def __init__(self, transfers: Transfers, client: SrpcClient) -> None:
        self._seconds = transfers.idle_timeout
        self._client = client
        self._timer: IDelayedCall = transfers.clock.callLater(self._seconds, self._expired)

    def _expired(self) -> None:
        self._client.abort(SrpcTimeout(f"no progress for {self._seconds:g}s"))

    def progress(self) -> None:
        if self._timer.active():
            self._timer.reset(self._seconds)

    def stop(self) -> None:
        if self._timer.active():
            self._timer.cancel()


# ============================================================== CheckObjects


async def missing_objects(
    client: SrpcClient, hashes: Sequence[bytes], timeout: float | None
) -> list[bytes]:
    """The ids among ``hashes`` that the server does not store."""
    missing: list[bytes] = []
    for start in range(0, len(hashes), CHECK_BATCH):
        batch = list(hashes[start : start + CHECK_BATCH])
        reply = await client.call(
            "ObjectServer.CheckObjects",
            CheckObjectsRequest(batch),
            reply_kind=CheckObjectsResponse,
            timeout=timeout,
        )
        sizes = reply.object_sizes or []
        if len(sizes) != len(batch):
            raise ObjectTransferError(f"{len(sizes)} sizes for {len(batch)} objects")
        missing += [digest for digest, size in zip(batch, sizes, strict=True) if size == 0]
    return missing


# ============================================================== AddObjects


def _read_batch(cache: LocalImageStore, hashes: Sequence[bytes], start: int) -> list[_Outgoing]:
    """From ``start`` on: small objects whole, up to ``BATCH_BYTES`` in all;
    a big object (or one alone over the budget) without its data."""
    batch: list[_Outgoing] = []
    budget = BATCH_BYTES
    for digest in hashes[start:]:
        hash_hex = digest.hex()
        path = cache.object_path(hash_hex)
        try:
            size = os.stat(path).st_size
        except FileNotFoundError:
            raise MissingObjectError(
                f"object: {hash_hex} is neither on the imageserver nor in the local cache"
            ) from None
        if size > SMALL_OBJECT:
            if not batch:
                batch.append(_Outgoing(digest, path, size, None))
            break
        if batch and size > budget:
            break
        with open(path, "rb") as handle:
            data = handle.read()
        batch.append(_Outgoing(digest, path, len(data), data))
        budget -= len(data)
    return batch


@dataclass(frozen=True, slots=True)
class _Outgoing:
    digest: bytes
    path: str
    size: int
    data: bytes | None  # None: a big object, sent block by block


def _read_block(path: str, offset: int) -> bytes:
    with open(path, "rb") as handle:
        handle.seek(offset)
        return handle.read(BLOCK)


async def _send_objects(
    transfers: Transfers,
    call: ClientCall,
    hashes: Sequence[bytes],
    watchdog: _Watchdog,
    sizes: dict[bytes, int],
) -> None:
    """Send every object (header, raw bytes), then the end; ``sizes`` gets
    the size of each object sent."""
    index = 0
    while index < len(hashes):
        batch = await transfers.in_thread(_read_batch, transfers.cache, hashes, index)
        for item in batch:
            sizes[item.digest] = item.size
            await call.send(AddObjectRequest(item.size, item.digest))
            if item.data is not None:
                await call.send_raw(item.data)
            else:
                offset = 0
                while offset < item.size:
                    block = await transfers.in_thread(_read_block, item.path, offset)
                    if not block:
                        raise ObjectTransferError(f"object: {item.digest.hex()}: file shrank")
                    block = block[: item.size - offset]
                    await call.send_raw(block)
                    offset += len(block)
                    watchdog.progress()
            watchdog.progress()
        index += len(batch)
    await call.send(AddObjectRequest(0))


async def upload_objects(
    transfers: Transfers, client: SrpcClient, hashes: Sequence[bytes]
) -> Transferred:
    """Send the objects ``hashes`` from the cache in one ``AddObjects`` call;
    returns how many the server added (and their bytes).

    The answers are read here while a sender writes; if the sender fails (an
    object missing from the cache, a read error) the connection is ended so
    that the reading stops too, and the sender's error is the one raised.
    """
    if not hashes:
        return Transferred()
    added = added_bytes = 0
    sizes: dict[bytes, int] = {}
    sender_failed: list[Failure] = []

    def sender_failure(failure: Failure) -> None:
        sender_failed.append(failure)
        client.abort(SrpcConnectionError("sending stopped"))

    async with client.open_call("ObjectServer.AddObjects", timeout=None) as call:
        watchdog = _Watchdog(transfers, client)
        sender = Deferred.fromCoroutine(_send_objects(transfers, call, hashes, watchdog, sizes))
        sender.addErrback(sender_failure)
        try:
            for digest in hashes:
                reply: AddObjectResponse = await call.receive(AddObjectResponse)
                watchdog.progress()
                if reply.error_string:
                    raise ObjectTransferError(f"object {digest.hex()}: {reply.error_string}")
                if reply.hash != digest:
                    raise ObjectTransferError(
                        f"sent object {digest.hex()}, the server stored {reply.hash.hex()}"
                    )
                if reply.added:
                    added += 1
                    added_bytes += sizes.get(digest, 0)
            await sender
        except SrpcConnectionError:
            if sender_failed and not sender_failed[0].check(CancelledError):
                sender_failed[0].raiseException()
            raise
        finally:
            watchdog.stop()
            if not sender.called:
                sender.cancel()
            await sender  # its failure is in sender_failed
    if sender_failed:
        sender_failed[0].raiseException()
    return Transferred(added, added_bytes)


# ============================================================== GetObjects


def _store_small(cache: LocalImageStore, items: list[tuple[bytes, bytes]]) -> None:
    """Check and store downloaded small objects (``HashMismatchError`` on the first bad one)."""
    for digest, data in items:
        computed = hashlib.sha512(data).digest()
        if computed != digest:
            raise HashMismatchError(
                f"hash mismatch. Computed={computed.hex()}, expected={digest.hex()}"
            )
        cache.put_hashed_bytes(data, digest.hex(), sync=False)


async def _receive_object(
    transfers: Transfers,
    call: ClientCall,
    digest: bytes,
    size: int,
    watchdog: _Watchdog,
) -> None:
    """A big object, block by block, into a new file of the cache."""
    incoming = await transfers.in_thread(transfers.cache.receive_object, digest.hex())
    try:
        async for chunk in call.receive_raw_chunks(size, BLOCK):
            await transfers.in_thread(incoming.write, chunk)
            watchdog.progress()
        await transfers.in_thread(incoming.commit, sync=False)
    finally:
        await transfers.in_thread(incoming.abort)


async def download_objects(
    transfers: Transfers, client: SrpcClient, hashes: Sequence[bytes]
) -> Transferred:
    """Fetch ``hashes`` in one ``GetObjects`` call into the cache."""
    if not hashes:
        return Transferred()
    total = 0
    async with client.open_call("ObjectServer.GetObjects", timeout=None) as call:
        watchdog = _Watchdog(transfers, client)
        try:
            await call.send(GetObjectsRequest(list(hashes)))
            reply = await call.receive(GetObjectsResponse)
            watchdog.progress()
            if reply.response_string:
                raise ObjectTransferError(reply.response_string)
            sizes = reply.object_sizes or []
            if len(sizes) != len(hashes) or any(size <= 0 for size in sizes):
                raise ObjectTransferError(f"sizes {sizes[:4]}… for {len(hashes)} objects")
            small: list[tuple[bytes, bytes]] = []
            small_bytes = 0
            for digest, size in zip(hashes, sizes, strict=True):
                if size > SMALL_OBJECT:
                    await _receive_object(transfers, call, digest, size, watchdog)
                else:
                    small.append((digest, await call.receive_raw(size)))
                    small_bytes += size
                    watchdog.progress()
                    if small_bytes >= BATCH_BYTES:
                        await transfers.in_thread(_store_small, transfers.cache, small)
                        small, small_bytes = [], 0
                total += size
            if small:
                await transfers.in_thread(_store_small, transfers.cache, small)
        except HashMismatchError as exc:
            raise ObjectTransferError(f"an object failed its SHA-512 check: {exc}") from None
        finally:
            watchdog.stop()
    await transfers.in_thread(transfers.cache.flush)
    return Transferred(len(hashes), total)
