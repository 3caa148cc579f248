"""Shared package caches: which roots use them, turns, trimming (``pipeline.caches``).

The real mounts and package steps run in ``tests/integration/test_fast_paths.py``;
here the turns are driven step by step with Deferreds.
"""

from __future__ import annotations

import os
from pathlib import Path

from twisted.internet.defer import Deferred

from imaginator.config.main import PackageCache
from imaginator.pipeline.caches import PackageCaches, trim_cache
from imaginator.runtime.buildlog import BuildLog
from imaginator.runtime.sandbox import BindMount
from tests.support.fakes import fired, has_fired

APT = PackageCache("/var/cache/apt/archives")


async def in_thread(fn, *args):
    return fn(*args)


def root_with(tmp_path: Path, name: str, *directories: str) -> str:
    root = tmp_path / name
    for directory in directories:
        (root / directory.lstrip("/")).mkdir(parents=True)
    return str(root)


class Turn:
    """One build holding its lease until :meth:`finish`."""

    def __init__(self, caches: PackageCaches, root: str) -> None:
        self.log = BuildLog()
        self.mounts: tuple[BindMount, ...] | None = None
        self._release: Deferred[None] = Deferred()
        self.done = Deferred.fromCoroutine(self._run(caches, root))

    async def _run(self, caches: PackageCaches, root: str) -> None:
        async with caches.lease(root, self.log) as mounts:
            self.mounts = mounts
            await self._release

    def finish(self) -> None:
        self._release.callback(None)


def test_builds_take_turns_and_say_they_wait(tmp_path):
    caches = PackageCaches((APT,), str(tmp_path / "cache"), in_thread)
    first = Turn(caches, root_with(tmp_path, "a", APT.mount_point))
    second = Turn(caches, root_with(tmp_path, "b", APT.mount_point))
    host = str(tmp_path / "cache" / "var_cache_apt_archives")
    assert first.mounts == (BindMount(host, APT.mount_point, writable=True),)
    assert second.mounts is None
    assert "waiting for another build" in second.log.getvalue().decode()
    first.finish()
    assert has_fired(first.done)
    assert second.mounts == first.mounts
    second.finish()
    fired(second.done)
    assert os.path.isdir(host)


def test_a_root_without_the_mount_point_uses_no_cache_and_waits_for_nobody(tmp_path):
    caches = PackageCaches((APT,), str(tmp_path / "cache"), in_thread)
    holder = Turn(caches, root_with(tmp_path, "deb", APT.mount_point))
    other = Turn(caches, root_with(tmp_path, "busybox", "/var/cache"))
    assert other.mounts == ()
    other.finish()
    fired(other.done)
    holder.finish()
    assert not (tmp_path / "busybox" / "var" / "cache" / "apt").exists()


def test_a_symlinked_mount_point_is_resolved_inside_the_root(tmp_path):
    root = Path(root_with(tmp_path, "r", "/srv/archives", "/var/cache/apt"))
    os.symlink("/srv/archives", root / "var/cache/apt/archives")
    caches = PackageCaches((APT,), str(tmp_path / "cache"), in_thread)
    turn = Turn(caches, str(root))
    assert [mount.target for mount in turn.mounts] == ["/srv/archives"]
    turn.finish()
    escaping = Path(root_with(tmp_path, "e", "/var/cache/apt"))
    os.symlink("../../../../outside", escaping / "var/cache/apt/archives")
    (tmp_path / "outside").mkdir()
    turn = Turn(caches, str(escaping))
    assert turn.mounts == ()  # "outside" resolves inside the root, where it is missing
    turn.finish()


def test_a_configured_directory_is_used_as_it_is(tmp_path):
    cache = PackageCache("/var/cache/apt/archives", directory=str(tmp_path / "mine"))
    caches = PackageCaches((cache,), str(tmp_path / "cache"), in_thread)
    assert caches.host_directory(cache) == str(tmp_path / "mine")


def test_the_cache_is_trimmed_oldest_first_after_a_turn(tmp_path):
    cache = PackageCache("/var/cache/pkgs", size_limit=2500)
    caches = PackageCaches((cache,), str(tmp_path / "cache"), in_thread)
    host = Path(caches.host_directory(cache))
    host.mkdir(parents=True)
    for age, name in enumerate(("new", "middle", "old")):
        (host / name).write_bytes(b"x" * 1000)
        os.utime(host / name, (1_700_000_000 - age * 1000,) * 2)
    turn = Turn(caches, root_with(tmp_path, "r", cache.mount_point))
    turn.finish()
    fired(turn.done)
    assert sorted(os.listdir(host)) == ["middle", "new"]
    assert "removed 1 old files (1000 B)" in turn.log.getvalue().decode()
    assert trim_cache(str(host), 0) == []


def test_a_kept_cache_is_copied_into_the_root_after_a_good_turn(tmp_path):
    lists = PackageCache("/var/lib/apt/lists", keep_in_root=True)
    caches = PackageCaches((lists,), str(tmp_path / "cache"), in_thread)
    host = Path(caches.host_directory(lists))
    host.mkdir(parents=True)
    (host / "mirror_Packages").write_text("Package: less\n")
    root = Path(root_with(tmp_path, "r", lists.mount_point))
    turn = Turn(caches, str(root))
    turn.finish()
    fired(turn.done)
    assert (root / "var/lib/apt/lists/mirror_Packages").read_text() == "Package: less\n"
    assert "Package cache /var/lib/apt/lists: copied into the root" in turn.log.getvalue().decode()

    # A look that is thrown away afterwards (the skip check's) does not copy.
    other = Path(root_with(tmp_path, "o", lists.mount_point))

    async def look() -> None:
        async with caches.lease(str(other), BuildLog(), keep=False):
            pass

    fired(Deferred.fromCoroutine(look()))
    assert os.listdir(other / "var/lib/apt/lists") == []


def test_an_empty_kept_cache_is_seeded_from_a_bootstrap_tree(tmp_path):
    lists = PackageCache("/var/lib/apt/lists", keep_in_root=True)
    archives = PackageCache("/var/cache/apt/archives")
    caches = PackageCaches((lists, archives), str(tmp_path / "cache"), in_thread)
    tree = Path(root_with(tmp_path, "t", lists.mount_point + "/partial", archives.mount_point))
    left = tree / "var/lib/apt/lists"
    (left / "mirror_InRelease").write_text("release\n")
    (left / "mirror_Packages").write_text("Package: dpkg\n")
    (left / "lock").write_text("")
    (tree / "var/cache/apt/archives/dpkg.deb").write_text("deb")
    log = BuildLog()
    fired(Deferred.fromCoroutine(caches.seed(str(tree), log)))
    host = Path(caches.host_directory(lists))
    assert sorted(os.listdir(host)) == ["mirror_InRelease", "mirror_Packages"]
    assert (host / "mirror_Packages").stat().st_ino == (left / "mirror_Packages").stat().st_ino
    assert "Package cache /var/lib/apt/lists: 2 files from the new tree" in log.getvalue().decode()
    assert os.listdir(caches.host_directory(archives)) == []  # not a kept cache
    # A cache with content already is left alone.
    (left / "mirror_Translation").write_text("t\n")
    fired(Deferred.fromCoroutine(caches.seed(str(tree), BuildLog())))
    assert "mirror_Translation" not in os.listdir(host)
