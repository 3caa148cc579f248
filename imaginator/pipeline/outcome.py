"""What becomes of a finished build: a new image record, or not.

- :func:`publish`: the build log is stored and the image added under a new
  name, unless it is identical to the latest image.
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
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from imaginator.goformats.units import format_duration
from imaginator.image.compare import provenance, same_build, same_content
from imaginator.image.model import Image
from imaginator.pipeline.pack import BuildError, attach_build_log
from imaginator.pipeline.rootfs import SourceTrees
from imaginator.runtime.buildlog import BuildLog
from imaginator.store.base import ImageExistsError

__all__ = [
    "ImagePublisher",
    "KeptTree",
    "LatestImages",
    "Publication",
    "TreesInFlight",
    "identical_latest",
    "publish",
]

_log = Logger()
#: Names tried for a new image when the one reserved turns out to be taken.
NAME_ATTEMPTS = 5


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


@dataclass(frozen=True)
class Publication:
    """How a finished build's image is published."""

    stream: str
    now: float  # seconds since the epoch
    expires_in: float  # seconds; 0: never expires
    requestor: str
    #: Only returned to the requestor, not added to the store.
    return_only: bool = False


class ImagePublisher(LatestImages, Protocol):
    """The store calls :func:`publish` makes (``ImageStore``)."""

    async def add_object(self, data: bytes) -> str: ...

    async def reserve_image_name(self, stream: str, epoch: float) -> str: ...

    async def add_image(self, name: str, image: Image) -> None: ...


async def publish(
    store: ImagePublisher,
    in_thread: Callable[..., Awaitable[Any]],
    publication: Publication,
    image: Image,
    log: BuildLog,
    started_mono: float,
) -> tuple[str, bool, Image | None]:
    """Publish ``image``; returns its name, whether it was the latest image,
    extended instead (an identical build), and the image as stored (``None``
    if it was only returned)."""
    upload_started = time.monotonic()
    now, expires_in = publication.now, publication.expires_in
    expires_at = int((now + expires_in) * 1e9) if expires_in > 0 else 0
    if not publication.return_only:
        identical = await identical_latest(
            store, in_thread, publication.stream, image, expires_at, log
        )
        if identical is not None:
            return identical[0], True, identical[1]
    await attach_build_log(store, log, image)
    name = await store.reserve_image_name(publication.stream, now)
    image.created_for = publication.requestor
    image.expires_at = expires_at
    # Set here rather than by the store, so the record's time is known
    # without reading it back (the source-tree cache keys trees by it).
    image.created_on = image.created_on or int(now * 1e9)
    if not publication.return_only:
        for attempt in range(NAME_ATTEMPTS):
            try:
                await store.add_image(name, image)
                break
            except ImageExistsError as exc:
                # Taken meanwhile (on an imageserver: perhaps by an image since
                # deleted, whose name stays taken): the next free one.
                if attempt + 1 == NAME_ATTEMPTS:
                    raise BuildError(f"error adding image: {exc}") from None
                name = await store.reserve_image_name(publication.stream, now)
            except Exception as exc:
                raise BuildError(f"error adding image: {exc}") from None
    finished = time.monotonic()
    log.line(
        f"Uploaded {name} in {format_duration(finished - upload_started)}, "
        f"total build duration: {format_duration(finished - started_mono)}"
    )
    return name, False, None if publication.return_only else image


class KeptTree:
    """A finished bootstrap tree the pipeline handed over instead of removing it,
    and the package index the build's update saw (``BuildEnv.package_index``)."""

    def __init__(self) -> None:
        self.path: str | None = None
        self.package_index: str | None = None

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

            def forget(result: Failure | None) -> Failure | None:
                self._running.discard(running)
                return result

            running.addBoth(forget)

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
