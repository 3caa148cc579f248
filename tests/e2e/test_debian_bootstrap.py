"""The demo, for real: the sample configuration built by the running daemon.

Real ``debootstrap`` of Debian 12 minbase from this host's mirror, then the
sample ``base`` stream (installs ``procps`` with apt) and the ``apps/hello``
stream on top, from manifests in a git repository; the status page checked in
headless Chromium and the images with ``imagetool``.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pytest
import pytest_twisted
import treq

from imaginator.image.model import ComputedRegularInode, RegularInode
from imaginator.store.local import LocalImageStore
from tests.support.browser import dump_dom
from tests.support.configs import REPO, clean_env, debian_mirror
from tests.support.daemon import Daemon
from tests.support.harness import ARCH

pytestmark = pytest.mark.slow

DEBIAN = f"bootstrap/Debian-12/{ARCH}"
BASE = f"base/Debian-12/{ARCH}"
HELLO = f"apps/hello/Debian-12/{ARCH}"


def sample_config_in(tmp_path):
    """A copy of sample-config whose streams use a manifests repository in tmp_path."""
    config = tmp_path / "config"
    shutil.copytree(REPO / "sample-config", config)
    repo = tmp_path / "manifests"
    subprocess.run([str(REPO / "scripts" / "sample-manifests"), str(repo)], check=True)
    streams = (config / "image-streams.json").read_text()
    (config / "image-streams.json").write_text(
        streams.replace("file:///var/lib/imaginator-sample/manifests", repo.as_uri())
    )
    return config


def paths_of(image):
    return {path: inode for path, _inum, inode in image.file_system.walk()}


@pytest_twisted.ensureDeferred
async def test_sample_configuration_builds_debian_base_and_hello(tmp_path):
    config = sample_config_in(tmp_path)
    variables = tmp_path / "variables"
    mirror = debian_mirror()
    variables.write_text(f"DEBIAN_MIRROR={mirror}\n")
    state = tmp_path / "state"
    arguments = [
        "-portNum=0",
        f"-stateDir={state}",
        f"-configurationUrl={(config / 'conf.json').as_uri()}",
        f"-variablesFile={variables}",
        "-buildLogDir=",
        # Images of the cycle expire after two intervals: an hour is long enough
        # that the first images are still current when the restart rebuilds them.
        "-imageRebuildInterval=1h",
    ]
    daemon = Daemon(arguments).start()
    try:
        port = await daemon.wait_listening()
        for stream in (DEBIAN, BASE, HELLO):
            line = await daemon.wait_for(
                rf"(Built|Error building) image: {stream}[/:]", timeout=900
            )
            assert "Built image: " in line, daemon.output()
        store = LocalImageStore(str(state / "store"))
        names = {name.rsplit("/", 1)[0]: name for name in store.list_images()}

        # The Debian bootstrap image.
        debian = store.get_image(names[DEBIAN])
        files = paths_of(debian)
        assert len([i for i in files.values() if isinstance(i, RegularInode)]) > 4000
        packages = {p.name: p for p in debian.packages}
        for wanted in ("dpkg", "apt"):
            assert packages[wanted].version
            assert packages[wanted].size > 100_000
            assert packages[wanted].size % 1024 == 0  # Installed-Size in KiB, in bytes
        assert "/etc/hostname" not in files
        assert "/var/log" in files
        assert not [p for p in files if p.startswith("/var/log/")]
        # The stream's SOURCE_DATE_EPOCH reached debootstrap: password ages are fixed.
        shadow = store.read_object(files["/etc/shadow"].hash.hex()).decode()
        assert shadow.startswith(f"root:*:{1700000000 // 86400}:"), shadow.splitlines()[0]
        assert "/etc/fstab" in debian.filter
        assert debian.triggers
        log = store.read_object(debian.build_log.object.hex()).decode()
        assert mirror not in log  # the variables file is secret
        assert "[REDACTED]" in log

        # base: a real package installed with apt on top of it.
        base = store.get_image(names[BASE])
        assert base.source_image == names[DEBIAN]
        assert "procps" in {p.name for p in base.packages}
        base_files = paths_of(base)
        assert "/usr/bin/ps" in base_files
        motd = base_files["/etc/motd"]
        assert (
            store.read_object(motd.hash.hex())
            == (REPO / "sample-config/manifests/base/files/etc/motd").read_bytes()
        )
        release = store.read_object(base_files["/etc/base-release"].hash.hex()).decode()
        assert f"commit={base.build_commit_id}" in release and len(base.build_commit_id) == 40
        assert base.tags == {"Layer": "base", "ManifestCommit": base.build_commit_id}
        assert base.build_branch == "main"
        # The fast paths: base started on the bootstrap build's own tree (nothing
        # unpacked) and shared apt's downloads.
        base_log = store.read_object(base.build_log.object.hex()).decode()
        assert f"Source tree cache: reusing {names[DEBIAN]}" in base_log
        assert "Package cache /var/cache/apt/archives: shared" in base_log
        assert list((state / "package-cache" / "var_cache_apt_archives").glob("procps_*.deb"))

        # hello: tests, computed files, filter, triggers, owners.
        hello = store.get_image(names[HELLO])
        assert hello.source_image == names[BASE]
        hello_files = paths_of(hello)
        assert isinstance(hello_files["/etc/hello.conf"], ComputedRegularInode)
        assert f"/tests/{HELLO}/hello" in hello_files
        assert base.filter is None  # no filter file: a sparse image (reference §4.4)
        assert hello.filter == ("/var/lib/hello(|/.*)$",)
        assert "hello" in {t.service for t in hello.triggers}
        assert hello.owner_users == ("alice",)
        assert hello.tags == {"Application": "hello", "Stream": HELLO}
        hello_log = store.read_object(hello.build_log.object.hex()).decode()
        assert f"/tests/{HELLO}/hello passed in" in hello_log
        greeting = store.read_object(hello_files["/etc/hello-greeting"].hash.hex()).decode()
        assert greeting == "Hello from apps/hello\n"

        # The status page, in a real browser.
        response = await treq.get(f"http://127.0.0.1:{port}/")
        assert response.code == 200
        dom = await dump_dom(f"http://127.0.0.1:{port}/", tmp_path / "chromium")
        for name in (names[DEBIAN], names[BASE], names[HELLO]):
            assert name in dom
        assert "Successful image builds" in dom

    finally:
        await daemon.stop()

    # A restart runs a cycle at once: it rebuilds all three from the same mirror and
    # commits, and nothing volatile (ldconfig's cache, apt and dpkg logs, apt lists)
    # makes them differ from the first daemon's images. The next cycle skips them
    # all: same commits and source images, and apt lists no pending upgrade.
    restarted = [a for a in arguments if not a.startswith("-imageRebuildInterval")]
    daemon = Daemon([*restarted, "-imageRebuildInterval=60s"]).start()
    try:
        for stream in (DEBIAN, BASE, HELLO):
            first, quoted = re.escape(names[stream]), re.escape(stream)
            line = await daemon.wait_for(
                rf"Identical to {first}|Error building image: {quoted}[/:]"
                rf"|Built image: (?!{first}){quoted}/",
                timeout=900,
            )
            assert "Identical to" in line, daemon.output()
        skipped = {}
        for stream in (DEBIAN, BASE, HELLO):
            quoted = re.escape(stream)
            skipped[stream] = await daemon.wait_for(
                rf"Skipped {quoted}: nothing could change|Error building image: {quoted}[/:]"
                rf"|Built image: {quoted}/",
                timeout=600,
            )
            assert f"kept {names[stream]} (" in skipped[stream], daemon.output()
        assert "same configuration, no pending package upgrades" in skipped[DEBIAN]
        assert "no pending package upgrades" in skipped[BASE]  # it installs packages
        assert f"same source image {names[BASE]})" in skipped[HELLO]  # it does not
    finally:
        await daemon.stop()

    # imagetool shows their contents and metadata.
    tool = [sys.executable, "-m", "imaginator.tools.imagetool", f"-stateDir={state}"]
    shown = subprocess.run(
        [*tool, "show", names[HELLO]], capture_output=True, text=True, env=clean_env()
    )
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["SourceImage"] == names[BASE]
    listed = subprocess.run(
        [*tool, "list-packages", names[BASE]], capture_output=True, text=True, env=clean_env()
    )
    assert any(line.startswith("procps ") for line in listed.stdout.splitlines())
