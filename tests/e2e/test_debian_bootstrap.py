"""The demo, for real: the sample configuration built by the running daemon.

Real ``debootstrap`` of Debian 12 minbase from this host's mirror, then the
sample ``base`` stream (installs ``procps`` with apt) and the ``apps/hello``
stream on top, from manifests in a git repository; the status page checked in
headless Chromium and the images with ``imagetool``.

The same run checks the export "done when" (issue 11): ``base`` and
``apps/hello`` are published to a local ``docker-registry``; ``apps/hello``
is pulled back with skopeo, unpacked with umoci and compared file by file with
``imagetool get``; its SBOM (from the registry) lists every package
``dpkg-query -W`` lists inside it; and a second ``base`` image, built from a
commit that drops ``less`` from its package list, differs from the first by
exactly that package.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import urllib.request

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.threads import deferToThread

from imaginator.goformats.jsonc import loads as jsonc_loads
from imaginator.image.model import ComputedRegularInode, RegularInode
from imaginator.srpc.client import connect
from imaginator.srpc.framing import INSECURE_JSON_PATH
from imaginator.store.local import LocalImageStore
from tests.integration.test_export_registry import describe, pull_and_unpack, skopeo
from tests.integration.test_rpc_daemon import build, request
from tests.support.browser import dump_dom
from tests.support.configs import REPO, clean_env, debian_mirror
from tests.support.daemon import Daemon
from tests.support.harness import ARCH
from tests.support.registry import start_registry

pytestmark = pytest.mark.slow

DEBIAN = f"bootstrap/Debian-12/{ARCH}"
BASE = f"base/Debian-12/{ARCH}"
HELLO = f"apps/hello/Debian-12/{ARCH}"


def sample_config_in(tmp_path, publish_to: str = ""):
    """A copy of sample-config whose streams use a manifests repository in
    tmp_path; with ``publish_to`` (a registry's ``host:port``) ``base`` and
    ``apps/hello`` are published to one repository of it."""
    config = tmp_path / "config"
    shutil.copytree(REPO / "sample-config", config)
    repo = tmp_path / "manifests"
    subprocess.run([str(REPO / "scripts" / "sample-manifests"), str(repo)], check=True)
    streams = (config / "image-streams.json").read_text()
    streams = streams.replace("file:///var/lib/imaginator-sample/manifests", repo.as_uri())
    if publish_to:
        document = jsonc_loads(streams, "image-streams.json")
        for key, tag in (("base/Debian-12/$ARCH", "base"), ("apps/hello/Debian-12/$ARCH", "hello")):
            document["Streams"][key]["Publish"] = {
                "Reference": f"{publish_to}/imaginator/demo",
                "Tags": [tag],
            }
        streams = json.dumps(document, indent=4)
    (config / "image-streams.json").write_text(streams)
    return config


def drop_less_from_base(repo) -> None:
    """Commit a change to the base manifest: ``less`` is no longer installed."""
    package_list = repo / "base" / "package-list"
    lines = package_list.read_text().splitlines(keepends=True)
    assert "less\n" in lines
    package_list.write_text("".join(line for line in lines if line != "less\n"))
    git = ["git", "-C", str(repo), "-c", "user.name=test", "-c", "user.email=test@localhost"]
    subprocess.run([*git, "commit", "-q", "-am", "base without less"], check=True)


def check_pulled_hello(registry, state, tmp_path, name, image) -> None:
    """``apps/hello`` from the registry: every file as ``imagetool get`` writes
    it, and its SBOM lists every package dpkg knows inside it."""
    insecure = "--tls-verify=false"
    reference = f"{registry.address}/imaginator/demo:hello"
    rootfs = pull_and_unpack(reference, tmp_path, "hello", "--src-tls-verify=false")
    expected = tmp_path / "expected"
    tool = [sys.executable, "-m", "imaginator.tools.imagetool", f"-stateDir={state}"]
    got = subprocess.run(
        [*tool, "get", name, str(expected)], capture_output=True, text=True, env=clean_env()
    )
    assert got.returncode == 0, got.stderr
    for path, _inum, inode in image.file_system.walk():
        if isinstance(inode, ComputedRegularInode):  # no content: not in the layers
            (expected / path.lstrip("/")).unlink()
    pulled, wanted = describe(rootfs), describe(expected)
    assert len(pulled) > 4000
    assert set(pulled) == set(wanted)
    assert pulled == wanted

    digest = json.loads(skopeo("inspect", insecure, f"docker://{reference}"))["Digest"]
    referrers = json.loads(
        skopeo(
            "inspect",
            "--raw",
            insecure,
            f"docker://{registry.address}/imaginator/demo:{digest.replace(':', '-')}",
        )
    )
    (sbom,) = [m for m in referrers["manifests"] if m["artifactType"] == "application/spdx+json"]
    manifest = json.loads(
        skopeo(
            "inspect",
            "--raw",
            insecure,
            f"docker://{registry.address}/imaginator/demo@{sbom['digest']}",
        )
    )
    blob = manifest["layers"][0]["digest"]
    url = f"http://{registry.address}/v2/imaginator/demo/blobs/{blob}"
    with urllib.request.urlopen(url, timeout=60) as answer:
        document = json.loads(answer.read())
    listed = subprocess.run(
        ["chroot", str(rootfs), "dpkg-query", "-W", "-f", "${binary:Package}\n"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert len(listed) > 80 and {"less", "procps", "dpkg"} <= set(listed)
    assert sorted(p["name"] for p in document["packages"][1:]) == sorted(listed)


def paths_of(image):
    return {path: inode for path, _inum, inode in image.file_system.walk()}


@pytest_twisted.ensureDeferred
async def test_sample_configuration_builds_debian_base_and_hello(tmp_path):
    registry = await deferToThread(start_registry, tmp_path / "registry")
    try:
        await run_the_demo(tmp_path, registry)
    finally:
        registry.stop()


async def run_the_demo(tmp_path, registry):
    config = sample_config_in(tmp_path, publish_to=registry.address)
    variables = tmp_path / "variables"
    variables.write_text("UNUSED_SECRET=hunter2\n")
    plain = tmp_path / "plain-variables"
    mirror = debian_mirror()
    plain.write_text(f"DEBIAN_MIRROR={mirror}\n")
    state = tmp_path / "state"
    arguments = [
        "-portNum=0",
        f"-stateDir={state}",
        f"-configurationUrl={(config / 'conf.json').as_uri()}",
        f"-variablesFile={variables}",
        f"-plainVariablesFile={plain}",
        "-buildLogDir=",
        # Images of the cycle expire after two intervals: an hour is long enough
        # that the first images are still current when the restart rebuilds them.
        "-imageRebuildInterval=1h",
        "-permitInsecureMode",  # the build request below, without certificates
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
        # The mirror is a plain variable: the log shows where packages came from.
        assert f"\n    {mirror}\n" in log  # debootstrap's last argument, as logged
        assert "[REDACTED]" not in log

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

        # Published: hello pulled back from the registry is the image, file for file.
        line = await daemon.wait_for(rf"Published {re.escape(names[HELLO])} as ", timeout=900)
        # Base was pushed first, to the same repository: its two layers were there.
        assert "3 blobs sent" in line and "3 already there" in line, line
        check_pulled_hello(registry, state, tmp_path, names[HELLO], hello)
        text = await (await treq.get(f"http://127.0.0.1:{port}/showImageStream?{HELLO}")).text()
        assert "Last push: succeeded at" in text.replace("&#x2F;", "/")

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
        assert not [line for line in daemon.stdout + daemon.stderr if "Publishing " in line]

        # A second base image, from a commit that drops one package.
        drop_less_from_base(tmp_path / "manifests")
        client = await connect(
            "127.0.0.1",
            await daemon.wait_listening(),
            reactor=reactor,
            path=INSECURE_JSON_PATH,
            tls=False,
        )
        try:
            final, log = await build(client, request(BASE))
        finally:
            await client.close()
        assert final["ErrorString"] == "", log
        second_base = final["ImageName"]
        assert second_base != names[BASE]
        line = await daemon.wait_for(rf"Published {re.escape(second_base)} as ", timeout=900)
        # Sent: its new layer, config and SBOM; there: the Debian layer, the empty blob.
        assert "3 blobs sent" in line and "2 already there" in line, line
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
    diff = subprocess.run(
        [*tool, "diff", "-json", names[BASE], second_base],
        capture_output=True,
        text=True,
        env=clean_env(),
    )
    assert diff.returncode == 0, diff.stderr
    packages = json.loads(diff.stdout)["Packages"]
    assert [p["Name"] for p in packages["Removed"]] == ["less"]
    assert packages["Added"] == packages["Upgraded"] == packages["Downgraded"] == []
