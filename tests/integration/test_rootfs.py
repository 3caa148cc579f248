"""Build roots as overlay mounts over cached source trees (real mounts, real bwrap).

The source is a busybox bootstrap stream with hard links, a file that a
manifest script appends to, one it deletes, a directory it renames and one
whose mode it changes; the derived stream's manifest does all that.
"""

from __future__ import annotations

import ctypes
import json
import os
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, gatherResults

from imaginator.image.compare import canonical_file_system
from imaginator.image.model import RegularInode
from imaginator.pipeline import rootfs
from imaginator.runtime import mounts
from imaginator.scheduler import BuildOptions
from tests.support.harness import make_harness, vector_conf

BB = "bootstrap/bb"
OVER = "apps/over"

_SOURCE_SCRIPT = (
    "set -e; cd $dir; mkdir -p bin etc tmp dev proc sys var/cache data/sub data/movedir; "
    "cp /bin/busybox bin/busybox; "
    + "".join(
        f"ln -s busybox bin/{applet}; "
        for applet in ("sh", "cp", "cat", "true", "echo", "sleep", "rm", "mv", "mkdir", "chmod")
    )
    + "mknod -m 666 dev/null c 1 3; "
    "echo original > etc/appendme; "
    "echo linked > data/hl1; ln data/hl1 data/hl2; "
    "echo untouched > data/ul1; ln data/ul1 data/ul2; "
    "echo gone > data/deleteme; echo inside > data/movedir/file; echo mode > data/chmodme; "
    "echo sub > data/sub/file; date +%s%N > etc/stamp"
)

_CHANGE_SCRIPT = """#!/bin/sh
set -e
echo appended >> /etc/appendme
echo more >> /data/hl1
rm /data/deleteme
mv /data/movedir /data/moveddir
mkdir /newdir
echo new > /newdir/file
chmod 600 /data/chmodme
"""


def _conf(fast_paths: dict | None = None, extra_script: str = "") -> dict:
    conf = vector_conf()
    conf["BootstrapStreams"][BB]["BootstrapCommand"] = [
        "/bin/sh",
        "-c",
        _SOURCE_SCRIPT + extra_script,
    ]
    if fast_paths is not None:
        conf["FastPaths"] = fast_paths
    return conf


def _manifest(root: Path, files: dict[str, tuple[int, str]]) -> Path:
    for relative, (mode, text) in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(mode)
    return root


def _streams(tmp_path: Path) -> dict:
    over = _manifest(
        tmp_path / "over",
        {
            "manifest": (0o644, '{"SourceImage": "bootstrap/bb"}'),
            "files/etc/motd": (0o644, "over the top\n"),
            "scripts/10_change": (0o755, _CHANGE_SCRIPT),
        },
    )
    fails = _manifest(
        tmp_path / "fails",
        {
            "manifest": (0o644, '{"SourceImage": "bootstrap/bb"}'),
            "scripts/10_fail": (0o755, "#!/bin/sh\necho changed >> /etc/appendme\nexit 1\n"),
        },
    )
    return {
        "Streams": {
            OVER: {"ManifestUrl": f"dir://{over}"},
            "apps/over2": {"ManifestUrl": f"dir://{over}"},
            "apps/fails": {"ManifestUrl": f"dir://{fails}"},
        }
    }


#: Builds derived from a bootstrap image unpack it (its own build tree is not kept).
UNPACK = {"ReuseBootstrapTrees": False}


async def _harness(
    tmp_path: Path, fast_paths: dict | None = None, extra_script: str = "", **kwargs
):
    return await make_harness(
        tmp_path / "h",
        conf=_conf(fast_paths, extra_script),
        streams=_streams(tmp_path),
        tree_cache=True,
        **kwargs,
    )


def _mounts_mentioning(path: Path) -> list[str]:
    with open("/proc/self/mountinfo", encoding="utf-8") as handle:
        return [line for line in handle if str(path) in line]


def _files(image) -> dict:
    return {path: (inum, inode) for path, inum, inode in image.file_system.walk()}


def _content(harness, inode) -> bytes:
    return harness.store.read_object(inode.hash.hex()) if inode.size else b""


def _tree(harness, source_name: str) -> Path:
    return harness.tmp / "trees" / source_name.replace("/", "_") / "tree"


def _without_mtimes(fields: tuple) -> tuple:
    if fields[0] in ("RegularInode", "SpecialInode"):
        return (*fields[:4], *fields[6:])
    return fields


def _comparable(image, source) -> dict:
    """Path → (first path of its inode, fields), mtimes left out for the paths
    the build changed (their mtimes are build times)."""
    before = {path: (first, fields) for path, first, fields in canonical_file_system(source)}
    result = {}
    for path, first, fields in canonical_file_system(image.file_system):
        if before.get(path) == (first, fields):
            result[path] = (first, fields)
        else:
            result[path] = (first, _without_mtimes(fields))
    return result


@pytest_twisted.ensureDeferred
async def test_overlay_root_builds_what_unpacking_builds_and_reuses_the_tree(tmp_path):
    harness = await _harness(tmp_path, UNPACK)
    trees = harness.builder.source_trees
    try:
        bb = await harness.build(BB)
        assert not bb.error, bb.log.decode()
        source = harness.store.get_image(bb.image_name)
        first = await harness.build(OVER, return_image=True)
        assert not first.error, first.log.decode()
        harness.builder.source_trees = None
        unpacked = await harness.build(OVER, return_image=True)
        assert not unpacked.error, unpacked.log.decode()
        harness.builder.source_trees = trees
        await trees.settled()
        before = harness.objects()
        second = await harness.build(OVER, return_image=True)
        assert not second.error, second.log.decode()
    finally:
        harness.stop()
    first_log, second_log = first.log.decode(), second.log.decode()
    assert f"Source tree cache: unpacked {bb.image_name} in " in first_log
    assert "Mounted overlay root in " in first_log
    assert "Source tree cache" not in unpacked.log.decode()
    assert "Mounted overlay" not in unpacked.log.decode()
    assert f"Source tree cache: reusing {bb.image_name}" in second_log
    assert "Copied " not in second_log.split("Source image:")[0]  # nothing was unpacked
    assert "Mounted overlay root in " in second_log

    # The same image content as a build on an unpacked tree.
    expected = _comparable(unpacked.image, source.file_system)
    assert _comparable(first.image, source.file_system) == expected
    assert _comparable(second.image, source.file_system) == expected

    files = _files(second.image)
    assert _content(harness, files["/etc/appendme"][1]) == b"original\nappended\n"
    assert "/data/deleteme" not in files
    assert "/data/movedir" not in files
    assert _content(harness, files["/data/moveddir/file"][1]) == b"inside\n"
    assert files["/data/chmodme"][1].mode & 0o777 == 0o600
    assert _content(harness, files["/newdir/file"][1]) == b"new\n"
    # Hard links of the source stay hard links, touched or not.
    assert files["/data/ul1"][0] == files["/data/ul2"][0]
    assert files["/data/hl1"][0] == files["/data/hl2"][0]
    assert _content(harness, files["/data/hl2"][1]) == b"linked\nmore\n"

    # Untouched files kept their hashes without being read; the reuse stored
    # nothing but its build log.
    assert harness.objects() - before == {second.image.build_log.object.hex()}
    changed = ("/etc/appendme", "/data/hl1", "/data/hl2", "/data/deleteme", "/data/chmodme")
    untouched = {
        inum
        for path, (inum, inode) in _files(source).items()
        if isinstance(inode, RegularInode)
        and inode.size
        and path not in changed
        and not path.startswith("/data/movedir/")
    }
    assert len(untouched) == 5  # busybox, generic-packager, ul1/ul2, sub/file, stamp
    assert f"Skipped {len(untouched)} unchanged objects" in second_log

    # The cached tree is as unpacked: the build's changes went to its upper layer.
    tree = _tree(harness, bb.image_name)
    assert (tree / "etc" / "appendme").read_text() == "original\n"
    assert (tree / "data" / "hl1").read_text() == "linked\n"
    assert os.stat(tree / "data" / "hl1").st_ino == os.stat(tree / "data" / "hl2").st_ino
    assert (tree / "data" / "deleteme").exists()
    assert (tree / "data" / "movedir" / "file").exists()
    assert not (tree / "newdir").exists()
    assert (tree / "data" / "chmodme").stat().st_mode & 0o777 == 0o644
    saved = json.loads((tree.parent / rootfs.CACHE_FILE).read_bytes())
    assert saved["Image"] == bb.image_name
    for path, (ino, ctime_ns, size, _digest) in saved["Entries"].items():
        st = os.lstat(f"{tree}{path}")
        assert (st.st_ino, st.st_ctime_ns, st.st_size) == (ino, ctime_ns, size), path

    assert _mounts_mentioning(tmp_path) == []
    assert os.listdir(harness.tmp / "work") == []


@pytest_twisted.ensureDeferred
async def test_a_failing_build_leaves_no_mount_and_the_tree_untouched(tmp_path):
    harness = await _harness(tmp_path)
    try:
        bb = await harness.build(BB)
        assert not bb.error, bb.log.decode()
        failed = await harness.build("apps/fails")
        await harness.builder.source_trees.settled()
    finally:
        harness.stop()
    assert failed.error == "error processing manifest: error running script: 10_fail: exit status 1"
    assert "Mounted overlay root in " in failed.log.decode()
    assert _mounts_mentioning(tmp_path) == []
    assert os.listdir(harness.tmp / "work") == []
    assert (_tree(harness, bb.image_name) / "etc" / "appendme").read_text() == "original\n"


@pytest_twisted.ensureDeferred
async def test_concurrent_builds_from_one_source_unpack_it_once(tmp_path):
    harness = await _harness(tmp_path, UNPACK)
    try:
        bb = await harness.build(BB)
        assert not bb.error, bb.log.decode()
        options = BuildOptions.make(expires_in=3600.0)
        results = await gatherResults(
            [
                Deferred.fromCoroutine(harness.builder.build(stream, options))
                for stream in (OVER, "apps/over2")
            ]
        )
    finally:
        harness.stop()
    logs = [result.log.decode() for result in results]
    assert all(not result.error for result in results), logs
    assert sum("Source tree cache: unpacked" in log for log in logs) == 1
    assert sum(f"Source tree cache: reusing {bb.image_name}" in log for log in logs) == 1
    assert _mounts_mentioning(tmp_path) == []


@pytest_twisted.ensureDeferred
async def test_least_recently_used_and_orphaned_trees_are_dropped(tmp_path):
    harness = await _harness(tmp_path, tree_cache_images=2)
    sources = []
    try:

        async def source_then_over() -> str:
            bb = await harness.build(BB)
            assert not bb.error, bb.log.decode()
            over = await harness.build(OVER)
            assert not over.error, over.log.decode()
            await harness.builder.settled()
            sources.append(bb.image_name)
            return bb.image_name

        def slots() -> set[str]:
            return {n for n in os.listdir(harness.tmp / "trees") if not n.startswith(".")}

        def slot(name: str) -> str:
            return name.replace("/", "_")

        first = await source_then_over()
        second = await source_then_over()
        assert slots() == {slot(first), slot(second)}
        harness.store.delete_image(first)  # its tree is an orphan now
        third = await source_then_over()
        assert slots() == {slot(second), slot(third)}
        fourth = await source_then_over()
        assert slots() == {slot(third), slot(fourth)}  # the least recently used went
    finally:
        harness.stop()
    assert len(set(sources)) == 4


@pytest_twisted.ensureDeferred
async def test_without_overlay_support_the_source_is_unpacked(tmp_path, monkeypatch):
    def no_overlay(directory):
        raise OSError(19, "No such device")

    monkeypatch.setattr(rootfs, "probe_overlay", no_overlay)
    harness = await _harness(tmp_path)
    try:
        assert not (await harness.build(BB)).error
        result = await harness.build(OVER)
    finally:
        harness.stop()
    log = result.log.decode()
    assert not result.error, log
    fallback = [line for line in log.splitlines() if "Source tree cache not used" in line]
    assert fallback == [
        "Source tree cache not used (overlay roots unavailable: No such device): "
        "unpacking into the root"
    ]
    assert "Unpacked file-system in " in log and "Mounted overlay" not in log


@pytest_twisted.ensureDeferred
async def test_a_tree_cache_on_another_file_system_is_not_used(tmp_path):
    trees = tmp_path / "h" / "trees"
    trees.mkdir(parents=True)
    _mount_tmpfs(trees)
    try:
        harness = await _harness(tmp_path)
        try:
            assert not (await harness.build(BB)).error
            result = await harness.build(OVER)
        finally:
            harness.stop()
    finally:
        mounts.unmount(str(trees))
    log = result.log.decode()
    assert not result.error, log
    assert "on different file-systems): unpacking into the root" in log
    assert "Unpacked file-system in " in log and "Mounted overlay" not in log


def _mount_tmpfs(path: Path) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(b"tmpfs", os.fsencode(path), b"tmpfs", 0, b"size=64m") != 0:
        pytest.skip(f"cannot mount tmpfs: {os.strerror(ctypes.get_errno())}")


def test_fresh_directory_unmounts_what_a_crashed_daemon_left(tmp_path):
    from imaginator.daemon import fresh_directory as _fresh_directory

    tmp = tmp_path / "state" / "tmp"
    parts = {name: tmp_path / name for name in ("lower", "upper", "work")}
    for path in parts.values():
        path.mkdir(parents=True)
    (parts["lower"] / "file").write_text("lower\n")
    root = tmp / "apps_x.root123"
    root.mkdir(parents=True)
    (tmp / "apps_x.overlay123").mkdir()
    mounts.mount_overlay(str(parts["lower"]), str(parts["upper"]), str(parts["work"]), str(root))
    busy = open(root / "file")  # a process still in the tree
    try:
        assert _mounts_mentioning(root)
        detached = _fresh_directory(str(tmp))
    finally:
        busy.close()
    assert detached == [str(root)]
    assert _mounts_mentioning(tmp_path) == []
    assert os.listdir(tmp) == []
    assert (parts["lower"] / "file").read_text() == "lower\n"


def test_mountinfo_escapes_and_nesting(tmp_path):
    info = tmp_path / "mountinfo"
    info.write_text(
        "22 1 0:20 / / rw - ext4 /dev/vda rw\n"
        "40 22 0:39 / /state/tmp rw - tmpfs tmpfs rw\n"
        "41 40 0:40 / /state/tmp/a\\040b.root rw - overlay overlay rw\n"
        "42 41 0:41 / /state/tmp/a\\040b.root/proc rw - proc proc rw\n"
        "43 22 0:42 / /state/tmpfoo rw - tmpfs tmpfs rw\n"
    )
    assert mounts.mounts_under("/state/tmp", str(info)) == [
        "/state/tmp/a b.root/proc",
        "/state/tmp/a b.root",
    ]


def test_tree_cache_round_trips():
    from imaginator.image.model import Image
    from imaginator.image.scan import CacheEntry

    cache = {"/etc/x": CacheEntry(12, 34, 5, bytes(range(64)))}
    data = rootfs.encode_tree_cache("a/b", Image(created_on=99), cache)
    assert rootfs.decode_tree_cache(data) == ("a/b", 99, cache)
    with pytest.raises(ValueError):
        rootfs.decode_tree_cache(b'{"Format": 1}')
    assert rootfs.slot_name("bootstrap/bb/2026-01-02:03:04:05") == (
        "bootstrap_bb_2026-01-02:03:04:05"
    )


@pytest_twisted.ensureDeferred
async def test_a_bootstrap_build_tree_is_kept_so_the_first_derived_build_unpacks_nothing(
    tmp_path,
):
    filtered = "; echo bbhost > etc/hostname; mkdir -p var/log; echo junk > var/log/junk"
    harness = await _harness(tmp_path, extra_script=filtered)
    try:
        first_bb = await harness.build(BB)
        assert not first_bb.error, first_bb.log.decode()
        # A second bootstrap build: a new image (its stamp differs) whose unchanged
        # files carry the first image's mtimes, older than those in its tree.
        bb = await harness.build(BB)
        assert not bb.error and bb.image_name != first_bb.image_name, bb.log.decode()
        await harness.builder.settled()
        source = harness.store.get_image(bb.image_name)
        kept = await harness.build(OVER, return_image=True)
        trees = harness.builder.source_trees
        harness.builder.source_trees = None
        unpacked = await harness.build(OVER, return_image=True)
        harness.builder.source_trees = trees
    finally:
        harness.stop()
    log = kept.log.decode()
    assert not kept.error, log
    assert f"Source tree cache: reusing {bb.image_name}" in log
    assert "Copied " not in log.split("Source image:")[0]  # nothing was unpacked
    # Files the manifest did not touch are exactly the source image's (mtimes too),
    # and what the source image filtered out is not there.
    source_files, kept_files = _files(source), _files(kept.image)
    old_mtime = _files(harness.store.get_image(first_bb.image_name))["/bin/busybox"][
        1
    ].mtime_seconds
    assert source_files["/bin/busybox"][1].mtime_seconds == old_mtime
    for path in ("/bin/busybox", "/data/ul1", "/data/sub/file", "/dev/null", "/bin/sh"):
        assert kept_files[path][1] == source_files[path][1], path
    assert "/etc/hostname" not in kept_files and "/var/log/junk" not in kept_files
    # The same image as a build on the unpacked source image.
    assert _comparable(kept.image, source.file_system) == _comparable(
        unpacked.image, source.file_system
    )
    tree = _tree(harness, bb.image_name)
    saved = json.loads((tree.parent / rootfs.CACHE_FILE).read_bytes())
    assert saved["Image"] == bb.image_name
    for path, (ino, ctime_ns, size, _digest) in saved["Entries"].items():
        st = os.lstat(f"{tree}{path}")
        assert (st.st_ino, st.st_ctime_ns, st.st_size) == (ino, ctime_ns, size), path
    assert not (tree / "etc" / "hostname").exists()
    assert os.listdir(harness.tmp / "work") == []


@pytest_twisted.ensureDeferred
async def test_an_identical_bootstrap_rebuild_keeps_no_second_tree(tmp_path):
    conf = _conf()
    command = conf["BootstrapStreams"][BB]["BootstrapCommand"]
    command[2] = command[2].replace("date +%s%N > etc/stamp", "echo fixed > etc/stamp")
    harness = await make_harness(tmp_path / "h", conf=conf, tree_cache=True)
    try:
        first = await harness.build(BB)
        again = await harness.build(BB)
        await harness.builder.settled()
    finally:
        harness.stop()
    assert not first.error and again.identical and again.image_name == first.image_name
    slots = [n for n in os.listdir(harness.tmp / "trees") if not n.startswith(".")]
    assert slots == [first.image_name.replace("/", "_")]
    assert os.listdir(harness.tmp / "work") == []


@pytest_twisted.ensureDeferred
async def test_a_bootstrap_tree_without_tests_gives_the_store_its_files_not_copies(tmp_path):
    harness = await _harness(tmp_path)
    try:
        bb = await harness.build(BB)
        await harness.builder.settled()
    finally:
        harness.stop()
    assert not bb.error, bb.log.decode()
    busybox = _files(harness.store.get_image(bb.image_name))["/bin/busybox"][1]
    stored = os.stat(harness.store.objects.object_path(busybox.hash.hex()))
    kept = os.stat(_tree(harness, bb.image_name) / "bin" / "busybox")
    assert (stored.st_ino, stored.st_nlink) == (kept.st_ino, 2)  # one file, two names


@pytest_twisted.ensureDeferred
async def test_a_bootstrap_tree_with_tests_gives_the_store_copies(tmp_path):
    # Tests run in the tree after the scan and could write to it. A second name
    # outside the tree shows which inode the store got.
    outside = tmp_path / "outside"
    outside.mkdir()
    script = (
        "; mkdir -p tests/bb; printf '#!/bin/sh\\nexit 0\\n' > tests/bb/ok"
        f"; chmod 755 tests/bb/ok; ln bin/busybox {outside}/busybox"
    )
    harness = await _harness(tmp_path, extra_script=script)
    try:
        bb = await harness.build(BB)
    finally:
        harness.stop()
    assert not bb.error, bb.log.decode()
    assert "/tests/bb/ok passed" in bb.log.decode()
    busybox = _files(harness.store.get_image(bb.image_name))["/bin/busybox"][1]
    stored = os.stat(harness.store.objects.object_path(busybox.hash.hex()))
    assert stored.st_ino != (outside / "busybox").stat().st_ino
