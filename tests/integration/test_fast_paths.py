"""The fast paths (``FastPaths`` in conf.json) are in effect, each shown by what it does.

Real builds in-process (``tests.support.harness``): real bwrap sandboxes,
real processes, the real embedded store, busybox roots. Nothing here is
timed: each test shows the behaviour that makes a path fast (a sync call
that did nothing, one ``syncfs`` instead of an ``fsync`` per object, …) and,
where there is a switch, that turning it off brings the ordinary path back.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest_twisted
from twisted.internet.defer import Deferred, gatherResults

from imaginator.scheduler import BuildOptions
from imaginator.store import files as store_files
from imaginator.store import objects as store_objects
from imaginator.store import records as store_records
from tests.support.gitserver import commit_all, init_repo, write_tree
from tests.support.harness import make_harness, vector_conf

BB = "bootstrap/bb"
# fdatasync of a pipe fails with EINVAL, unless the call never reaches the kernel.
SYNC_A_PIPE = "echo | busybox sync -d /dev/stdin"


def conf_with(fast_paths: dict | None = None, *, bootstrap_tail: str = "") -> dict:
    """The Go capture's configuration, its busybox bootstrap command extended."""
    document = vector_conf()
    stream = dict(document["BootstrapStreams"][BB])
    command = list(stream["BootstrapCommand"])
    command[2] += bootstrap_tail
    stream["BootstrapCommand"] = command
    document["BootstrapStreams"] = {BB: stream}
    document["PackagerTypes"] = {"bb": document["PackagerTypes"]["bb"]}
    if fast_paths is not None:
        document["FastPaths"] = fast_paths
    return document


def manifest_dir(root: Path, source: str = BB, scripts: dict[str, str] | None = None) -> Path:
    root.mkdir(parents=True)
    (root / "manifest").write_text(json.dumps({"SourceImage": source}))
    for name, text in (scripts or {}).items():
        path = root / "scripts" / name
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
        path.chmod(0o755)
    return root


def dir_stream(path: Path) -> dict:
    return {"ManifestUrl": f"dir://{path}"}


# ------------------------------------------------------------------ no fsync in builds


@pytest_twisted.ensureDeferred
async def test_build_commands_run_with_sync_calls_turned_into_no_ops(tmp_path):
    app = manifest_dir(tmp_path / "app", scripts={"10_sync": f"#!/bin/sh\n{SYNC_A_PIPE}\n"})
    harness = await make_harness(
        tmp_path / "h",
        conf=conf_with(bootstrap_tail=f"; {SYNC_A_PIPE}"),
        streams={"Streams": {"apps/app": dir_stream(app)}},
    )
    try:
        boot = await harness.build(BB)
        built = await harness.build("apps/app")
    finally:
        await harness.stop()
    # The bootstrap command on the host and a script in the sandbox both made a
    # sync call that the kernel would refuse: it "succeeded" without running.
    assert not boot.error, boot.log.decode()
    assert not built.error, built.log.decode()
    assert "Invalid argument" not in boot.log.decode() + built.log.decode()


@pytest_twisted.ensureDeferred
async def test_switched_off_build_commands_sync_for_real(tmp_path):
    app = manifest_dir(tmp_path / "app", scripts={"10_sync": f"#!/bin/sh\n{SYNC_A_PIPE}\n"})
    harness = await make_harness(
        tmp_path / "h",
        conf=conf_with({"NoFsyncInBuilds": False}, bootstrap_tail=f"; {SYNC_A_PIPE} || true"),
        streams={"Streams": {"apps/app": dir_stream(app)}},
    )
    try:
        boot = await harness.build(BB)
        built = await harness.build("apps/app")
    finally:
        await harness.stop()
    assert not boot.error, boot.log.decode()
    assert "sync: /dev/stdin: Invalid argument" in boot.log.decode()
    assert built.error == "error processing manifest: error running script: 10_sync: exit status 1"
    assert "sync: /dev/stdin: Invalid argument" in built.log.decode()


# ------------------------------------------------------------------ one syncfs per image


@pytest_twisted.ensureDeferred
async def test_objects_are_not_fsynced_one_by_one_and_one_syncfs_precedes_the_record(
    tmp_path, monkeypatch
):
    events: list[tuple[str, str]] = []
    real_fsync, real_syncfs = os.fsync, store_files.syncfs

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def syncfs(path: str) -> None:
        events.append(("syncfs", path))
        real_syncfs(path)

    harness = await make_harness(tmp_path / "h", conf=conf_with())
    store_path = harness.store.path
    for module in (store_objects, store_records, store_files):
        monkeypatch.setattr(module.os, "fsync", fsync)
    monkeypatch.setattr(store_objects, "syncfs", syncfs)
    try:
        boot = await harness.build(BB)
    finally:
        await harness.stop()
    assert not boot.error, boot.log.decode()
    image = harness.store.get_image(boot.image_name)
    assert len(image.file_system.object_hashes()) > 1  # objects and the build log were stored
    mine = [(kind, path) for kind, path in events if path.startswith(store_path)]
    # One syncfs of the store, then the record (its file, then its directories).
    assert mine[0] == ("syncfs", store_path)
    assert [kind for kind, _ in mine].count("syncfs") == 1
    record_dir = os.path.dirname(harness.store.image_file(boot.image_name))
    assert all(
        path.startswith(store_path + "/tmp/") or record_dir.startswith(path)
        for kind, path in mine[1:]
    ), mine
    assert not any("/objects" in path for _kind, path in mine)


# ------------------------------------------------------------------ shared package caches

# "Installs" a package by downloading it into the cache once; refuses to share the
# cache with another build at the same moment.
FAKE_INSTALL = [
    "/bin/sh",
    "-c",
    "set -e; cd /var/cache/pkgs; "
    "if [ -e busy ]; then echo 'two builds in the cache at once'; exit 1; fi; : > busy; "
    'for p; do if [ -e "$p.pkg" ]; then echo "reused $p"; '
    'else echo "downloaded $p"; echo "$p" > "$p.pkg"; fi; '
    'echo "$p" >> /var/lib/installed; done; rm busy',
    "install",
]


def cache_conf(fast_paths: dict) -> dict:
    document = conf_with(fast_paths, bootstrap_tail="; mkdir -p var/cache/pkgs var/lib")
    packager = dict(document["PackagerTypes"]["bb"])
    packager["InstallCommand"] = FAKE_INSTALL
    packager["CleanCommand"] = ["/bin/sh", "-c", "rm -f /var/cache/pkgs/*"]
    document["PackagerTypes"] = {"bb": packager}
    return document


def package_streams(tmp_path: Path) -> dict:
    streams = {}
    for name, packages in (("one", "alpha\nshared\n"), ("two", "beta\nshared\n")):
        directory = manifest_dir(tmp_path / name)
        (directory / "package-list").write_text(packages)
        streams[f"apps/{name}"] = dir_stream(directory)
    return {"Streams": streams}


PACKAGE_CACHE = {"PackageCaches": [{"MountPoint": "/var/cache/pkgs", "SizeLimit": 1 << 20}]}


@pytest_twisted.ensureDeferred
async def test_builds_share_package_downloads_and_images_do_not_carry_them(tmp_path):
    harness = await make_harness(
        tmp_path / "h", conf=cache_conf(PACKAGE_CACHE), streams=package_streams(tmp_path)
    )
    try:
        assert not (await harness.build(BB)).error
        one = await harness.build("apps/one")
        two = await harness.build("apps/two")
    finally:
        await harness.stop()
    logs = {result.stream: result.log.decode() for result in (one, two)}
    assert not one.error and not two.error, logs
    assert "Package cache /var/cache/pkgs: shared" in logs["apps/one"]
    assert "downloaded alpha" in logs["apps/one"] and "downloaded shared" in logs["apps/one"]
    assert "reused shared" in logs["apps/two"] and "downloaded beta" in logs["apps/two"]
    cache = tmp_path / "h" / "package-cache" / "var_cache_pkgs"
    assert sorted(os.listdir(cache)) == ["alpha.pkg", "beta.pkg", "shared.pkg"]
    # The build's own directory was below the mount: the image has none of it.
    for result in (one, two):
        paths = {
            path for path, _i, _n in harness.store.get_image(result.image_name).file_system.walk()
        }
        assert "/var/cache/pkgs" in paths
        assert not any(path.startswith("/var/cache/pkgs/") for path in paths)
        assert "/var/lib/installed" in paths


@pytest_twisted.ensureDeferred
async def test_concurrent_builds_take_turns_in_a_package_cache(tmp_path):
    harness = await make_harness(
        tmp_path / "h", conf=cache_conf(PACKAGE_CACHE), streams=package_streams(tmp_path)
    )
    try:
        assert not (await harness.build(BB)).error
        options = BuildOptions.make(expires_in=3600.0)
        results = await gatherResults(
            [
                Deferred.fromCoroutine(harness.builder.build(stream, options))
                for stream in ("apps/one", "apps/two")
            ]
        )
    finally:
        await harness.stop()
    logs = "\n".join(result.log.decode() for result in results)
    assert all(not result.error for result in results), logs
    assert "two builds in the cache at once" not in logs
    assert logs.count("downloaded shared") == 1 and logs.count("reused shared") == 1
    cache = tmp_path / "h" / "package-cache" / "var_cache_pkgs"
    assert sorted(os.listdir(cache)) == ["alpha.pkg", "beta.pkg", "shared.pkg"]


@pytest_twisted.ensureDeferred
async def test_without_package_caches_each_build_downloads_its_own(tmp_path):
    harness = await make_harness(
        tmp_path / "h", conf=cache_conf({}), streams=package_streams(tmp_path)
    )
    try:
        assert not (await harness.build(BB)).error
        one = await harness.build("apps/one")
        two = await harness.build("apps/two")
    finally:
        await harness.stop()
    assert not one.error and not two.error
    assert "downloaded shared" in two.log.decode() and "Package cache" not in two.log.decode()
    assert not (tmp_path / "h" / "package-cache").exists()


# ------------------------------------------------------------------ skipping unchanged builds

# The "mirror" is a file in the shared package cache: what it lists is pending.
PENDING = [
    "/bin/sh",
    "-c",
    "if [ -e /var/cache/pkgs/upgrades ]; then cat /var/cache/pkgs/upgrades; fi",
]


def skip_conf(fast_paths: dict) -> dict:
    document = cache_conf({**PACKAGE_CACHE, **fast_paths})
    document["PackagerTypes"]["bb"]["PendingUpgradesCommand"] = PENDING
    return document


def skip_repo(root: Path) -> dict:
    init_repo(root)
    write_tree(
        root,
        {
            "one/manifest": (0o644, json.dumps({"SourceImage": BB})),
            "one/package-list": (0o644, "alpha\n"),
            "app/manifest": (0o644, json.dumps({"SourceImage": "apps/one"})),
            "app/files/etc/app": (0o644, "app\n"),
        },
    )
    commit_all(root, "manifests")
    url = root.as_uri()
    return {
        "Streams": {
            "apps/one": {"ManifestUrl": url, "ManifestDirectory": "one"},
            "apps/app": {"ManifestUrl": url, "ManifestDirectory": "app"},
        }
    }


CHAIN = (BB, "apps/one", "apps/app")


async def cycle(harness, **options) -> dict:
    """Build the chain parents first, as the rebuild cycle does."""
    results = {}
    for stream in CHAIN:
        result = await harness.build(stream, auto=options.get("auto", True))
        assert not result.error, result.log.decode()
        results[stream] = result
    return results


@pytest_twisted.ensureDeferred
async def test_a_cycle_skips_what_cannot_change_and_builds_what_can(tmp_path):
    streams = skip_repo(tmp_path / "manifests")
    harness = await make_harness(
        tmp_path / "h",
        conf=skip_conf({"SkipUnchangedBuilds": True}),
        streams=streams,
        tree_cache=True,
    )
    upgrades = tmp_path / "h" / "package-cache" / "var_cache_pkgs" / "upgrades"
    try:
        first = await cycle(harness)
        before = harness.objects()
        unchanged = await cycle(harness)
        unchanged_objects = harness.objects()
        last = {stream: harness.builder.last_result(stream) for stream in CHAIN}
        requested = await harness.build("apps/app")  # not the cycle's: built
        upgrades.write_text("Inst busybox [1.35] (1.36 mirror)\n")
        upgraded = await cycle(harness)
        upgrades.unlink()
        (tmp_path / "manifests" / "app" / "files" / "etc" / "app").write_text("app 2\n")
        commit = commit_all(tmp_path / "manifests", "app 2")
        committed = await cycle(harness)
    finally:
        await harness.stop()
    assert not any(result.skipped for result in first.values())
    # Nothing changed: every stream skipped, its latest image kept, nothing stored.
    for stream, result in unchanged.items():
        assert result.skipped and result.identical, result.log.decode()
        assert result.image_name == first[stream].image_name
        assert last[stream].skipped == result.skipped
    assert unchanged_objects == before
    assert unchanged[BB].skipped == "same configuration, no pending package upgrades"
    assert "no pending package upgrades" in unchanged["apps/one"].skipped
    assert unchanged["apps/one"].skipped.startswith("same manifest commit ")
    app_reason = unchanged["apps/app"].skipped
    app_commit = harness.store.get_image(first["apps/app"].image_name).build_commit_id
    assert app_reason == (
        f"same manifest commit {app_commit}, same source image {first['apps/one'].image_name}"
    )  # no package-list: the package manager is not asked
    assert (
        f"Skipped: nothing could change ({app_reason}): kept " in unchanged["apps/app"].log.decode()
    )
    assert not requested.skipped
    # A pending upgrade: the bootstrap stream and the one with packages are built
    # (here to the same content); the app, whose source image is the same, is not.
    assert not upgraded[BB].skipped and not upgraded["apps/one"].skipped
    assert upgraded["apps/app"].skipped
    assert (
        "1 pending package upgrades: Inst busybox [1.35] (1.36 mirror)" in upgraded[BB].log.decode()
    )
    # A new commit of the repository: its streams are built (the images carry the commit).
    assert committed[BB].skipped
    assert not committed["apps/one"].skipped and not committed["apps/app"].skipped
    assert f"new manifest commit {commit}" in committed["apps/app"].log.decode()
    assert harness.store.get_image(committed["apps/app"].image_name).build_commit_id == commit


@pytest_twisted.ensureDeferred
async def test_without_the_switch_a_cycle_builds_everything(tmp_path):
    streams = skip_repo(tmp_path / "manifests")
    harness = await make_harness(
        tmp_path / "h", conf=skip_conf({}), streams=streams, tree_cache=True
    )
    try:
        await cycle(harness)
        again = await cycle(harness)
    finally:
        await harness.stop()
    assert all(result.identical and not result.skipped for result in again.values())


@pytest_twisted.ensureDeferred
async def test_the_package_index_a_build_upgraded_with_needs_no_second_look(tmp_path):
    fast_paths = {
        "SkipUnchangedBuilds": True,
        "PackageCaches": [
            {"MountPoint": "/var/cache/pkgs"},
            {"MountPoint": "/var/lib/pkglists", "KeepInRoot": True},
        ],
    }
    conf = cache_conf(fast_paths)
    conf["BootstrapStreams"][BB]["BootstrapCommand"][2] += "; mkdir -p var/lib/pkglists"
    packager = conf["PackagerTypes"]["bb"]
    # The "mirror" is a file in the shared cache; an update copies its index.
    packager["UpdateCommand"] = [
        "/bin/sh",
        "-c",
        "cat /var/cache/pkgs/mirror > /var/lib/pkglists/index",
    ]
    packager["PendingUpgradesCommand"] = ["/bin/sh", "-c", "echo asked >> /var/cache/pkgs/asked"]
    streams = skip_repo(tmp_path / "manifests")
    del streams["Streams"]["apps/app"]
    harness = await make_harness(tmp_path / "h", conf=conf, streams=streams, tree_cache=True)
    shared = tmp_path / "h" / "package-cache" / "var_cache_pkgs"
    shared.mkdir(parents=True)
    (shared / "mirror").write_text("v1\n")

    def asked() -> int:
        path = shared / "asked"
        return len(path.read_text().splitlines()) if path.exists() else 0

    async def two() -> list:
        results = [await harness.build(stream, auto=True) for stream in (BB, "apps/one")]
        assert all(result.skipped for result in results), [r.log.decode() for r in results]
        return results

    try:
        for stream in (BB, "apps/one"):
            assert not (await harness.build(stream, auto=True)).error
        _boot, one = await two()
        after_first = asked()
        (shared / "mirror").write_text("v2\n")
        await two()
        after_change = asked()
        await two()
    finally:
        await harness.stop()
    # apps/one was upgraded with index v1 by its build: no need to ask; the bootstrap
    # stream's build ran no update, so it was asked.
    assert after_first == 1
    assert "The package index is the one apps/one/" in one.log.decode()
    # A new index: both asked once, nothing pending; then neither is asked again.
    assert after_change == 3
    assert asked() == 3
