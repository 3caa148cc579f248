"""The real daemon builds the busybox bootstrap stream into its embedded store."""

from __future__ import annotations

import os
from pathlib import Path

import pytest_twisted
import treq

from imaginator.image.model import RegularInode, SymlinkInode
from imaginator.store.local import LocalImageStore
from tests.support.configs import BUSYBOX, busybox_conf
from tests.support.daemon import Daemon

BUILD_TIMEOUT = 120


def daemon_args(tmp_path: Path, conf: Path, *extra: str) -> list[str]:
    return [
        "-portNum=0",
        f"-stateDir={tmp_path / 'state'}",
        f"-configurationUrl=file://{conf}",
        "-buildLogDir=",
        *extra,
    ]


def processes_mentioning(marker: str) -> list[int]:
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                if marker.encode() in handle.read():
                    found.append(int(pid))
        except OSError:
            continue
    return found


def mounts_under(path: Path) -> list[str]:
    with open("/proc/self/mountinfo", encoding="utf-8") as handle:
        return [line for line in handle if str(path) in line]


@pytest_twisted.ensureDeferred
async def test_daemon_builds_busybox_image_and_shows_it(tmp_path):
    conf = busybox_conf(tmp_path)
    daemon = Daemon(daemon_args(tmp_path, conf)).start()
    try:
        port = await daemon.wait_listening()
        line = await daemon.wait_for(r"Built image: (\S+)", timeout=BUILD_TIMEOUT)
        name = line.split("Built image: ")[1].split()[0]
        assert name.startswith(BUSYBOX + "/")

        store = LocalImageStore(str(tmp_path / "state" / "store"))
        assert store.list_images() == [name]
        image = store.get_image(name)
        paths = {path: inode for path, _inum, inode in image.file_system.walk()}
        assert isinstance(paths["/bin/busybox"], RegularInode)
        assert isinstance(paths["/bin/sh"], SymlinkInode)
        assert "/bin/generic-packager" in paths
        assert "/etc/hostname" not in paths  # FilterLines
        assert paths["/etc/resolv.conf"].size == 0
        assert [p.name for p in image.packages] == ["busybox"]
        assert image.packages[0].size > 0
        assert image.expires_at > 0  # auto builds expire
        log = store.open_object(image.build_log.object.hex()).read().decode()
        assert "Created image working directory:" in log
        assert "Scanning file-system and uploading objects" in log

        response = await treq.get(f"http://127.0.0.1:{port}/")
        body = (await response.text()).replace("&#x2F;", "/")
        assert response.code == 200
        assert name in body
        response = await treq.get(f"http://127.0.0.1:{port}/showLastBuildLog?{BUSYBOX}")
        assert "Uploaded " + name in await response.text()
        response = await treq.get(f"http://127.0.0.1:{port}/healthz")
        assert response.code == 200
        pages = {
            "/showImageStreams": BUSYBOX,
            f"/showImageStream?{BUSYBOX}": "Bootstrap command",
            f"/showImage?{name}": "/bin/busybox",
            f"/showImageBuildLog?{name}": "Scanning file-system and uploading objects",
            "/listImages": name,
            "/showDirectedGraph": "relationships",
            "/metrics": f'imaginator_stream_last_build_success{{stream="{BUSYBOX}"}} 1',
            f"/showImageSbom?{name}": '"spdxVersion": "SPDX-2.3"',
            f"/diffImages?{name}&{name}": "<b>No differences</b>",
        }
        for path, expected in pages.items():
            response = await treq.get(f"http://127.0.0.1:{port}{path}")
            text = (await response.text()).replace("&#x2F;", "/")
            assert response.code == 200, path
            assert expected in text, path
    finally:
        await daemon.stop()
    assert not os.listdir(tmp_path / "state" / "tmp")


@pytest_twisted.ensureDeferred
async def test_failing_bootstrap_command_is_recorded_and_stores_nothing(tmp_path):
    conf = busybox_conf(tmp_path, command=["/bin/sh", "-c", "echo partial output; exit 3"])
    daemon = Daemon(daemon_args(tmp_path, conf)).start()
    try:
        port = await daemon.wait_listening()
        await daemon.wait_for(r"Error building image: bootstrap/busybox: exit status 3")
        store = LocalImageStore(str(tmp_path / "state" / "store"))
        assert store.list_images() == []
        response = await treq.get(f"http://127.0.0.1:{port}/showLastBuildLog?{BUSYBOX}")
        text = await response.text()
        assert "partial output" in text
        assert "exit status 3" in text
        response = await treq.get(f"http://127.0.0.1:{port}/")
        assert "exit status 3" in await response.text()
    finally:
        await daemon.stop()
    assert not os.listdir(tmp_path / "state" / "tmp")


@pytest_twisted.ensureDeferred
async def test_deadline_kills_the_whole_bootstrap_and_leaves_nothing(tmp_path):
    marker = f"imaginator-deadline-{os.getpid()}-{tmp_path.name}"
    script = (
        f"trap '' TERM; mkdir -p $dir/proc; "
        f"(trap '' TERM; exec -a {marker} sleep 1000) & "
        f"exec -a {marker} sleep 1000"
    )
    conf = busybox_conf(tmp_path, command=["/bin/bash", "-c", script])
    daemon = Daemon(daemon_args(tmp_path, conf, "-maximumBuildDuration=2s")).start()
    try:
        await daemon.wait_listening()
        line = await daemon.wait_for(r"Error building image: bootstrap/busybox: ", timeout=60)
        assert "signal: " in line
        assert processes_mentioning(marker) == []
        assert mounts_under(tmp_path) == []
        store = LocalImageStore(str(tmp_path / "state" / "store"))
        assert store.list_images() == []
    finally:
        await daemon.stop()
    assert not os.listdir(tmp_path / "state" / "tmp")
