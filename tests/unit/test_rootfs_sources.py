"""What the source trees ask of the image store: objects fetched before an
unpack (reported in the build log), and whether cached images still exist."""

from __future__ import annotations

import pytest
import pytest_twisted

from imaginator.image.model import DirectoryInode, FileSystem, Image, RegularInode
from imaginator.image.unpack import UnpackError
from imaginator.pipeline.rootfs import SourceTrees, fetch_source_objects
from imaginator.store.base import StoreError, Transferred


class Log:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def line(self, text: str = "") -> None:
        self.lines.append(text)


class Images:
    """An image store whose answers the test sets."""

    def __init__(self, fetched: Transferred | None = None, error: str = "") -> None:
        self.fetched = fetched or Transferred()
        self.error = error
        self.asked: list[set[bytes]] = []
        self.existing: set[str] = set()

    async def image_exists(self, name: str) -> bool:
        if self.error:
            raise StoreError(self.error)
        return name in self.existing

    async def fetch_objects(self, hashes) -> Transferred:
        self.asked.append(set(hashes))
        if self.error:
            raise StoreError(self.error)
        return self.fetched


def image() -> Image:
    table = {
        2: RegularInode(0o100644, 0, 0, 1, 0, 5, b"\x01" * 64),
        3: RegularInode(0o100644, 0, 0, 1, 0, 0, bytes(64)),
    }
    fs = FileSystem(table, DirectoryInode([("a", 2), ("empty", 3)], 0o40755))
    fs.recompute_totals()
    return Image(file_system=fs)


@pytest_twisted.ensureDeferred
async def test_the_objects_are_fetched_first_and_a_download_is_logged():
    log, images = Log(), Images(Transferred(1, 5 << 20))
    await fetch_source_objects(images, image(), log)
    assert images.asked == [{b"\x01" * 64}]  # the empty file has no object
    (line,) = log.lines
    assert line.startswith("Downloaded 1 objects (5 MiB) in ")

    quiet, local = Log(), Images()
    await fetch_source_objects(local, image(), quiet)
    assert quiet.lines == []  # the embedded store has them: nothing to say


@pytest_twisted.ensureDeferred
async def test_a_store_that_cannot_give_the_objects_is_an_unpack_error():
    failing = Images(error="imageserver h:1: ObjectServer.GetObjects: cannot connect")
    with pytest.raises(UnpackError, match=r"^imageserver h:1: ObjectServer.GetObjects: "):
        await fetch_source_objects(failing, image(), Log())


@pytest_twisted.ensureDeferred
async def test_a_cached_tree_is_dropped_only_when_its_image_is_known_to_be_gone(tmp_path):
    images = Images()
    images.existing = {"a/b/1"}
    trees = SourceTrees(str(tmp_path), reactor=None, threadpool=None, store=None, images=images)
    assert not await trees._image_gone("a/b/1")
    assert await trees._image_gone("a/b/2")
    assert await trees._image_gone("")
    images.error = "imageserver h:1: ImageServer.CheckImage: cannot connect"
    assert not await trees._image_gone("a/b/2")  # unknown: kept
