"""A real debootstrap bookworm minbase build through the running daemon."""

from __future__ import annotations

import json

import pytest
import pytest_twisted
import treq

from imaginator.image.model import RegularInode
from imaginator.store.local import LocalImageStore
from tests.support.browser import dump_dom
from tests.support.configs import REPO, debian_mirror, sample_document
from tests.support.daemon import Daemon

pytestmark = pytest.mark.slow

DEBIAN = "bootstrap/Debian-12/amd64"


@pytest_twisted.ensureDeferred
async def test_debootstrap_minbase_image(tmp_path):
    sample = sample_document()
    stream = dict(sample["BootstrapStreams"]["bootstrap/Debian-12/$ARCH"])
    for key in ("ImageFilterUrl", "ImageTriggersUrl"):
        stream[key] = (REPO / "sample-config" / stream[key]).as_uri()
    conf = tmp_path / "conf.json"
    conf.write_text(
        json.dumps(
            {
                "BootstrapStreams": {"bootstrap/Debian-12/$ARCH": stream},
                "PackagerTypes": {"deb": sample["PackagerTypes"]["deb"]},
                "ImageStreamsToAutoRebuild": ["bootstrap/Debian-12/$ARCH"],
            }
        )
    )
    variables = tmp_path / "variables"
    mirror = debian_mirror()
    variables.write_text(f"DEBIAN_MIRROR={mirror}\n")
    daemon = Daemon(
        [
            "-portNum=0",
            f"-stateDir={tmp_path / 'state'}",
            f"-configurationUrl=file://{conf}",
            f"-variablesFile={variables}",
            "-buildLogDir=",
        ]
    ).start()
    try:
        port = await daemon.wait_listening()
        line = await daemon.wait_for(r"(Built|Error building) image: ", timeout=900)
        assert "Built image: " + DEBIAN in line, daemon.output()
        name = line.split("Built image: ")[1].split()[0]

        store = LocalImageStore(str(tmp_path / "state" / "store"))
        image = store.get_image(name)
        paths = {path: inode for path, _inum, inode in image.file_system.walk()}
        regular = [inode for inode in paths.values() if isinstance(inode, RegularInode)]
        assert len(regular) > 4000
        packages = {p.name: p for p in image.packages}
        for wanted in ("dpkg", "apt"):
            assert packages[wanted].version
            assert packages[wanted].size > 100_000  # Installed-Size KiB times 1024
            assert packages[wanted].size % 1024 == 0
        assert "/etc/hostname" not in paths
        assert not [p for p in paths if p.startswith("/var/log/")]
        assert "/var/log" in paths
        assert "/bin/generic-packager" in paths or "/usr/bin/generic-packager" in paths
        assert image.filter and "/etc/fstab" in image.filter
        assert image.triggers

        log = store.open_object(image.build_log.object.hex()).read().decode()
        assert mirror not in log  # the variables file is secret
        assert "[REDACTED]" in log

        response = await treq.get(f"http://127.0.0.1:{port}/")
        assert name in (await response.text()).replace("&#x2F;", "/")
        dom = await dump_dom(f"http://127.0.0.1:{port}/", tmp_path / "chromium")
        assert name in dom
        assert "Successful image builds" in dom
    finally:
        await daemon.stop()
