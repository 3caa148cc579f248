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

from imaginator.store import files as store_files
from imaginator.store import objects as store_objects
from imaginator.store import records as store_records
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
