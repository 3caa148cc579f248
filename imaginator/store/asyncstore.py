"""``AsyncImageStore``: the ``ImageStore`` interface over a ``LocalImageStore``.

Every call runs in the daemon's bounded thread pool, so the reactor never
blocks on the disk. ``imaginator.store.local`` re-exports it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from imaginator.image.model import Image
from imaginator.store.base import InvalidNameError, TagsToMatch, Transferred

if TYPE_CHECKING:
    from imaginator.store.local import LocalImageStore

__all__ = ["AsyncImageStore"]


class AsyncImageStore:
    """The ``ImageStore`` interface over a ``LocalImageStore``: every call
    runs in the thread pool, so the reactor never blocks on the disk."""

    def __init__(
        self, local: LocalImageStore, reactor: IReactorFromThreads, threadpool: ThreadPool
    ) -> None:
        self.local = local
        self._reactor = reactor
        self._threadpool = threadpool

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await deferToThreadPool(self._reactor, self._threadpool, fn, *args)

    async def find_latest_image(
        self,
        directory: str,
        build_commit_id: str = "",
        tags_to_match: TagsToMatch | None = None,
    ) -> str | None:
        """See ``LocalImageStore.find_latest_image``."""
        return await self._call(
            self.local.find_latest_image, directory, build_commit_id, tags_to_match
        )

    async def get_image(self, name: str) -> Image | None:
        """See ``LocalImageStore.get_image``."""
        return await self._call(self.local.get_image, name)

    async def image_exists(self, name: str) -> bool:
        """Whether the record of image ``name`` exists (an invalid name names none)."""

        def exists() -> bool:
            try:
                return os.path.lexists(self.local.image_file(name))
            except InvalidNameError:
                return False

        return await self._call(exists)

    async def fetch_objects(self, hashes: Collection[bytes]) -> Transferred:
        """Nothing to fetch: the objects of this store are local files."""
        return Transferred()

    async def get_object(self, hash_hex: str) -> bytes:
        """See ``LocalImageStore.read_object``."""
        return await self._call(self.local.read_object, hash_hex)

    async def add_object(self, data: bytes) -> str:
        """See ``LocalImageStore.put_object_bytes``. Not fsynced on its own: like
        the scanner's objects it is made durable by the one ``syncfs`` that
        ``add_image`` does before writing a record that references it."""
        return await self._call(self._put_unsynced, data)

    def _put_unsynced(self, data: bytes) -> str:
        return self.local.put_object_bytes(data, sync=False)

    async def has_object(self, hash_hex: str) -> bool:
        """See ``LocalImageStore.has_object``."""
        return await self._call(self.local.has_object, hash_hex)

    async def add_image(self, name: str, image: Image) -> None:
        """See ``LocalImageStore.add_image``."""
        await self._call(self.local.add_image, name, image)

    async def change_image_expiration(self, name: str, expires_at_ns: int) -> bool:
        """See ``LocalImageStore.change_image_expiration``."""
        return await self._call(self.local.change_image_expiration, name, expires_at_ns)

    async def delete_expired_images(self) -> list[str]:
        """See ``LocalImageStore.delete_expired_images``."""
        return await self._call(self.local.delete_expired_images)

    async def collect_garbage(self) -> tuple[int, int]:
        """See ``LocalImageStore.collect_garbage``."""
        return await self._call(self.local.collect_garbage)

    async def list_images(self) -> list[str]:
        """See ``LocalImageStore.list_images``."""
        return await self._call(self.local.list_images)

    async def list_directories(self) -> list[str]:
        """See ``LocalImageStore.list_directories``."""
        return await self._call(self.local.list_directories)

    async def delete_image(self, name: str) -> None:
        """See ``LocalImageStore.delete_image``."""
        await self._call(self.local.delete_image, name)

    async def reserve_image_name(self, stream: str, epoch: float) -> str:
        """See ``LocalImageStore.reserve_image_name``."""
        return await self._call(self.local.reserve_image_name, stream, epoch)
