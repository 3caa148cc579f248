"""The real ``imaginator`` process with ``-imageServerHostname``: it builds the
sample busybox stream into the Go imageserver (``../shared/peers``) and its
pages show the imageserver's images; a certificate file it needs but lacks
stops start-up with one line. Skipped without the peers (failed under
``IMAGINATOR_REQUIRE_PEERS=1``)."""

from __future__ import annotations

import os
import re

import pytest_twisted
import treq
from twisted.internet.utils import getProcessOutputAndValue

from imaginator.tools.certs import make_ca
from tests.support.configs import BUSYBOX, busybox_conf
from tests.support.daemon import Daemon
from tests.support.imageserver import HOST, PEERS, GoImageserver

BUILD_TIMEOUT = 120


def daemon_args(tmp_path, conf, server: GoImageserver, **files: str) -> list[str]:
    cert, key = server.client_cert()
    flags = {"certFile": str(cert), "keyFile": str(key), "CAfile": str(server.ca_file), **files}
    return [
        "-portNum=0",
        f"-stateDir={tmp_path / 'state'}",
        f"-configurationUrl=file://{conf}",
        "-buildLogDir=",
        f"-imageServerHostname={HOST}",
        f"-imageServerPortNum={server.port}",
        *(f"-{name}={value}" for name, value in flags.items()),
    ]


async def page(port: int, path: str) -> str:
    response = await treq.get(f"http://127.0.0.1:{port}{path}")
    assert response.code == 200, (path, await response.text())
    return (await response.text()).replace("&#x2F;", "/")


@pytest_twisted.ensureDeferred
async def test_the_daemon_builds_into_the_imageserver_and_shows_its_images(tmp_path, imageserver):
    conf = busybox_conf(tmp_path)
    daemon = Daemon(daemon_args(tmp_path, conf, imageserver)).start()
    try:
        port = await daemon.wait_listening()
        line = await daemon.wait_for(r"Built image: (\S+)", timeout=BUILD_TIMEOUT)
        name = re.search(r"Built image: (\S+)", line).group(1)
        assert name.startswith(BUSYBOX + "/")
        assert name in await page(port, "/listImages")
        assert "/bin/busybox" in await page(port, f"/showImage?{name}")
        log = await page(port, f"/showImageBuildLog?{name}")
        assert "Scanning file-system and uploading objects" in log
        assert name in await page(port, f"/showImageStream?{BUSYBOX}")
        assert "imaginator_images_total 1" in await page(port, "/metrics")
    finally:
        await daemon.stop()
    output = daemon.output()
    assert f"Images are stored on imageserver {HOST}:{imageserver.port}" in output
    assert "Created missing directory: bootstrap/busybox" in output
    assert "is ignored" not in output
    assert not (tmp_path / "state" / "store").exists()  # no embedded store
    assert (tmp_path / "state" / "object-cache").is_dir()
    out, err, code = await getProcessOutputAndValue(
        str(PEERS / "imagetool"),
        [
            f"-imageServerHostname={HOST}",
            f"-imageServerPortNum={imageserver.port}",
            f"-certDirectory={imageserver.cert_directory()}",
            "list",
        ],
        env={"PATH": os.environ["PATH"]},
    )
    assert (code, out.decode().split()) == (0, [name]), err.decode()


@pytest_twisted.ensureDeferred
async def test_a_missing_certificate_for_the_imageserver_stops_start_up(tmp_path):
    ca = tmp_path / "CA.pem"
    ca.write_bytes(make_ca()[0])
    conf = busybox_conf(tmp_path)
    missing = tmp_path / "no-cert.pem"
    daemon = Daemon(
        [
            "-portNum=0",
            f"-stateDir={tmp_path / 'state'}",
            f"-configurationUrl=file://{conf}",
            "-imageServerHostname=images.example",
            f"-certFile={missing}",
            f"-keyFile={tmp_path / 'no-key.pem'}",
            f"-CAfile={ca}",
        ]
    ).start()
    code = await daemon.ended.addTimeout(60, daemon.reactor)
    assert code != 0
    errors = [line for line in daemon.stderr if line.startswith("imaginator: ")]
    assert errors == [
        f"imaginator: -certFile={missing}: No such file or directory (needed to talk to the "
        "imageserver of -imageServerHostname=images.example)"
    ], daemon.output()
