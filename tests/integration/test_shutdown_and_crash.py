"""SIGTERM during a build, and kill -9 followed by a restart."""

from __future__ import annotations

import json
import os
import signal

import pytest_twisted
import treq
from twisted.internet import reactor, threads

from imaginator.store.local import LocalImageStore
from tests.integration._procfs import matching_processes, wait_until_exited
from tests.integration.test_daemon_busybox import mounts_under, processes_mentioning
from tests.support.configs import BUSYBOX, busybox_conf, sample_document
from tests.support.daemon import Daemon

SLOW = "bootstrap/slow"


def slow_stream(fifo, marker):
    """A bootstrap stream that says "started" through ``fifo``, then hangs."""
    stream = dict(sample_document()["BootstrapStreams"][BUSYBOX])
    stream["BootstrapCommand"] = [
        "/bin/bash",
        "-c",
        f"mkdir -p $dir/bin; echo partial > $dir/bin/partial; echo started > {fifo}; "
        f"exec -a {marker} sleep 1000",
    ]
    return {SLOW: stream}


async def wait_started(fifo):
    def read():
        with open(fifo) as handle:
            return handle.read()

    return await threads.deferToThread(read).addTimeout(120, reactor)


def args(tmp_path, conf):
    return [
        "-portNum=0",
        f"-stateDir={tmp_path / 'state'}",
        f"-configurationUrl=file://{conf}",
        f"-buildLogDir={tmp_path / 'archive'}",
    ]


@pytest_twisted.ensureDeferred
async def test_sigterm_kills_builds_records_them_and_leaves_nothing(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    marker = f"imaginator-sigterm-{tmp_path.name}"
    conf = busybox_conf(tmp_path, auto_rebuild=[SLOW], extra_streams=slow_stream(fifo, marker))
    daemon = Daemon(args(tmp_path, conf)).start()
    port = await daemon.wait_listening()
    assert (await wait_started(fifo)).strip() == "started"
    assert processes_mentioning(marker)
    # The pages answer while the build runs.
    page = await (await treq.get(f"http://127.0.0.1:{port}/")).text()
    assert "Current image builds" in page and SLOW in page.replace("&#x2F;", "/")
    live = await treq.get(f"http://127.0.0.1:{port}/showCurrentBuildLog?{SLOW}")
    assert "Running command: /bin/bash with args:" in await live.text()
    await daemon.stop(signal.SIGTERM)
    assert await wait_until_exited(matching_processes(marker.encode())) == []
    assert mounts_under(tmp_path) == []
    assert os.listdir(tmp_path / "state" / "tmp") == []
    assert LocalImageStore(str(tmp_path / "state" / "store")).list_images() == []
    entries = list((tmp_path / "archive" / "bootstrap" / "slow").iterdir())
    assert len(entries) == 1
    info = json.loads((entries[0] / "buildInfo").read_text())
    assert "daemon shutting down" in info["Error"]
    assert "Running command: /bin/bash with args:" in (entries[0] / "buildLog").read_text()


@pytest_twisted.ensureDeferred
async def test_kill_9_during_a_build_then_restart_leaves_a_consistent_store(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    marker = f"imaginator-kill9-{tmp_path.name}"
    conf = busybox_conf(
        tmp_path, auto_rebuild=[BUSYBOX, SLOW], extra_streams=slow_stream(fifo, marker)
    )
    daemon = Daemon(args(tmp_path, conf)).start()
    await daemon.wait_listening()
    await daemon.wait_for(r"Built image: bootstrap/busybox/")
    await wait_started(fifo)
    tmp = tmp_path / "state" / "tmp"
    assert os.listdir(tmp)  # the slow build's working directory
    await daemon.stop(signal.SIGKILL)
    # The build dies with the daemon (parent-death signal), a moment after it.
    assert await wait_until_exited(matching_processes(marker.encode())) == []
    assert os.listdir(tmp)  # a crash leaves its working directory behind

    conf = busybox_conf(tmp_path, auto_rebuild=[BUSYBOX], extra_streams=slow_stream(fifo, marker))
    daemon = Daemon(args(tmp_path, conf)).start()
    try:
        await daemon.wait_listening()
        assert os.listdir(tmp) == []  # leftovers removed at start
        # The same busybox tree again: identical to the image of the first run.
        await daemon.wait_for(r"Identical to bootstrap/busybox/")
    finally:
        await daemon.stop()
    store = LocalImageStore(str(tmp_path / "state" / "store"))
    names = store.list_images()
    assert names and all(n.startswith(BUSYBOX + "/") for n in names)
    for name in names:
        image = store.get_image(name)
        for digest in image.object_hashes():
            assert store.has_object(digest.hex()), f"{name} lacks object {digest.hex()}"
    assert os.listdir(tmp_path / "state" / "store" / "tmp") == []
    assert mounts_under(tmp_path) == []
