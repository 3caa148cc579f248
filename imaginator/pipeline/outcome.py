"""What becomes of a finished build besides a new image record.

- :func:`identical_latest`: a build whose result is the stream's latest image
  over again (content and provenance) publishes nothing; the latest image is
  extended instead.
- :class:`KeptTree`: a bootstrap build's tree, handed over by the pipeline
  instead of being removed; :class:`TreesInFlight` then has the source-tree
  cache adopt it as the tree of the image just published
  (``rootfs.SourceTrees.adopt``), or removes it, after the build has
  answered.
"""

from __future__ import annotations

import shutil
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from imaginator.image.compare import provenance, same_build, same_content
from imaginator.image.model import Image
from imaginator.pipeline.rootfs import SourceTrees
from imaginator.runtime.buildlog import BuildLog

__all__ = ["KeptTree", "LatestImages", "TreesInFlight", "identical_latest"]

_log = Logger()


class LatestImages(Protocol):
    """The store calls :func:`identical_latest` makes (``ImageStore``)."""

    async def find_latest_image(self, directory: str) -> str | None: ...

    async def get_image(self, name: str) -> Image | None: ...

    async def change_image_expiration(self, name: str, expires_at_ns: int) -> bool: ...


async def identical_latest(
    store: LatestImages,
    in_thread: Callable[..., Awaitable[Any]],
    stream: str,
    image: Image,
    expires_at: int,
    log: BuildLog,
) -> tuple[str, Image] | None:
    """If the stream's latest image is the same build as ``image`` (content
    and provenance), extend it to ``expires_at`` and return its name and record."""
    latest_name = await store.find_latest_image(stream)
    if latest_name is None:
        return None
    latest = await store.get_image(latest_name)
    if latest is None:
        return None
    # One walk of the file-systems either way: provenance is compared first.
    if provenance(image) != provenance(latest):
        if await in_thread(same_content, image, latest):
            log.line(f"Same content as {latest_name}, new provenance: publishing a new image")
        return None
    if not await in_thread(same_build, image, latest):
        return None
    extended = await store.change_image_expiration(latest_name, expires_at)
    log.line(
        f"Identical to {latest_name}: no new image published"
        + (", extended its expiration" if extended else "")
    )
    return latest_name, latest


class KeptTree:
    """A finished bootstrap tree the pipeline handed over instead of removing it."""

    def __init__(self) -> None:
        self.path: str | None = None

    def offer(self, path: str) -> bool:
        """The pipeline's ``keep_tree``: take the tree over (always)."""
        self.path = path
        return True

    def take(self) -> str:
        """The tree, now the caller's to adopt or remove."""
        path, self.path = self.path, None
        assert path is not None
        return path


class TreesInFlight:
    """Kept trees being adopted or removed in the background (after the build answered)."""

    def __init__(self, trees: SourceTrees | None, in_thread: Callable[..., Awaitable[Any]]) -> None:
        self._trees = trees
        self._in_thread = in_thread
        self._running: set[Deferred[None]] = set()

    def adopt(self, name: str, image: Image, tree: str) -> None:
        """``tree`` becomes the source tree of image ``name``, or it goes."""
        self._start(self._adopt(name, image, tree))

    def remove(self, tree: str) -> None:
        self._start(self._remove(tree))

    async def settled(self) -> None:
        """Wait until every tree is adopted (and durably marked) or removed."""
        while self._running:
            await _ended(next(iter(self._running)))
        if self._trees is not None:
            await self._trees.settled()

    def _start(self, work: Coroutine[Any, Any, None]) -> None:
        running = Deferred.fromCoroutine(work)
        if not running.called:
            self._running.add(running)
            running.addBoth(lambda result: self._running.discard(running) or result)

    async def _adopt(self, name: str, image: Image, tree: str) -> None:
        try:
            if self._trees is not None and await self._trees.adopt(name, image, tree):
                _log.info("Source tree cache: kept the build tree of {name}", name=name)
                return
        except Exception:
            _log.failure("Source tree cache: adopting the build tree of {name}", name=name)
        await self._remove(tree)

    async def _remove(self, tree: str) -> None:
        await self._in_thread(shutil.rmtree, tree, True)


def _ended(running: Deferred[None]) -> Deferred[None]:
    """Fires when ``running`` does, leaving its result alone."""
    ended: Deferred[None] = Deferred()

    def fire(result: object) -> object:
        ended.callback(None)
        return result

    running.addBoth(fire)
    return ended
