"""``builder-tool``'s local modes, as a subprocess, against an embedded store.

The source image is the Go capture's ``bootstrap/bb`` busybox stream, built
in-process with the harness into ``<tmp>/h/store``; ``builder-tool`` then runs
with ``-stateDir=<tmp>/h`` (real bwrap sandboxes, as root). It runs its own
reactor, so it is a child process here, waited for without blocking ours.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
import time
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.internet.utils import getProcessOutputAndValue

from imaginator.image.unpack import materialise
from imaginator.store.local import LocalImageStore
from imaginator.tools.builder_common import END_BANNER, START_BANNER
from tests.support.configs import REPO, clean_env
from tests.support.gitserver import parse_manifest_vector, write_tree
from tests.support.harness import ARCH, make_harness
from tests.support.vectors import VECTORS

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="local builds need root")

BB = "bootstrap/bb"
PREFIX = "error processing manifest: "


async def builder_tool(*args: str, cwd: Path, home: Path) -> tuple[int, str, str]:
    env = clean_env()
    env["HOME"] = str(home)
    out, err, code = await getProcessOutputAndValue(
        sys.executable,
        ["-m", "imaginator.tools.builder_tool", *args],
        env=env,
        path=str(cwd),
        reactor=reactor,
    )
    return code, out.decode(), err.decode()


class Bench:
    """A state directory holding a built ``bootstrap/bb`` image, and places to run in."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.state = tmp / "h"
        self.cwd = tmp / "cwd"
        self.cwd.mkdir()
        self.home = tmp / "home"
        self.home.mkdir()
        self.bb_name = ""

    async def build_source(self) -> None:
        harness = await make_harness(self.state)
        try:
            result = await harness.build(BB)
        finally:
            harness.stop()
        assert not result.error, result.log.decode()
        self.bb_name = result.image_name

    @property
    def store(self) -> LocalImageStore:
        return LocalImageStore(str(self.state / "store"), create=False)

    async def run(self, *args: str) -> tuple[int, str, str]:
        return await builder_tool(f"-stateDir={self.state}", *args, cwd=self.cwd, home=self.home)

    def build_log(self) -> str:
        path = self.cwd / "build.log"
        assert stat.S_IMODE(path.stat().st_mode) == 0o444
        return path.read_text()

    def manifest(self, name: str, files: dict[str, tuple[int, str]]) -> Path:
        root = self.tmp / "manifests" / name
        write_tree(root, files)
        return root

    def vector_manifest(self, name: str) -> Path:
        trees = parse_manifest_vector((VECTORS / "config-manifests.txt").read_text())
        return self.manifest(name, trees[name])


@pytest.fixture
def bench(tmp_path):
    return Bench(tmp_path)


TREE_MANIFEST = {
    "manifest": (0o644, json.dumps({"SourceImage": BB, "FilterLines": ["/var/junk(|/.*)$"]})),
    "files/etc/motd": (0o644, "local motd\n"),
    "scripts/1_make": (
        0o755,
        '#!/bin/sh\nmkdir -p /var/junk\necho x > /var/junk/x\necho "v=$GREETING" > /greeting\n'
        'echo "made in $IMAGE_STREAM"\n',
    ),
}


def variables_file(tmp: Path) -> Path:
    path = tmp / "variables.json"
    path.write_text('# build variables\n{\n  // greeting\n  "GREETING": "hello"\n}\n')
    return path


@pytest_twisted.ensureDeferred
async def test_process_manifest_then_build_tree_from_manifest(bench):
    await bench.build_source()
    manifest = bench.manifest("tree", TREE_MANIFEST)
    variables = variables_file(bench.tmp)

    # process-manifest: an existing tree (the unpacked source image), no store involved.
    root = bench.tmp / "root"
    image = bench.store.get_image(bench.bb_name)
    await deferToThread(materialise, image, bench.store, str(root))
    code, out, err = await bench.run(
        f"-variablesFilename={variables}", "process-manifest", str(manifest), str(root)
    )
    assert (code, out, err) == (0, "", "")
    log = bench.build_log()
    assert "Running script: 1_make" in log
    assert "made in \n" in log  # no stream environment in this mode
    assert (root / "greeting").read_text() == "v=hello\n"
    assert (root / "etc" / "motd").read_text() == "local motd\n"
    assert (root / "var" / "junk" / "x").exists()  # no filtering in this mode
    assert (root / "etc" / "resolv.conf").read_bytes() == b""

    # build-tree-from-manifest: a fresh tree from the store, filtered; build.log replaced.
    code, out, err = await bench.run(
        f"-variablesFilename={variables}", "build-tree-from-manifest", str(manifest)
    )
    assert (code, err) == (0, "")
    tree = Path(out.removesuffix("\n"))
    try:
        assert out.endswith("\n") and tree.is_dir() and tree != root
        assert (tree / "greeting").read_text() == "v=hello\n"
        assert (tree / "etc" / "motd").read_text() == "local motd\n"
        assert (tree / "bin" / "busybox").is_file()
        assert not (tree / "var" / "junk").exists()
        assert (tree / "var").is_dir()
        log = bench.build_log()
        assert f"Source image: {bench.bb_name}" in log
        assert "Running script: 1_make" in log
        assert "Deleted: /var/junk" in log
    finally:
        shutil.rmtree(tree, ignore_errors=True)


@pytest_twisted.ensureDeferred
async def test_build_from_manifest_publishes_to_the_store(bench):
    await bench.build_source()
    manifest = bench.vector_manifest("hello")
    variables = variables_file(bench.tmp)
    before = time.time()
    code, out, err = await bench.run(
        "-expiresIn=2h",
        f"-variablesFilename={variables}",
        "build-from-manifest",
        str(manifest),
        "apps/local",
    )
    assert (code, err) == (0, ""), err
    name = out.removesuffix("\n")
    assert out.endswith("\n") and name.startswith("apps/local/")
    image = bench.store.get_image(name)
    assert image.source_image == bench.bb_name
    assert abs(image.expires_at / 1e9 - (before + 7200)) < 120
    assert image.tags == {"Role": "local"}
    assert image.owner_users == ("alice",)
    assert image.filter == ("/etc/motd\\.local", "/var/cache/hello/.*")
    files = {path: inode for path, _inum, inode in image.file_system.walk()}
    built_by = bench.store.read_object(files["/built-by"].hash.hex()).decode()
    assert built_by == (
        f"first: apps/local (apps / local) arch={ARCH}\nnote: apps/local branch= FOO=bar\n"
    )
    assert "/tests/apps/local/motd" in files
    assert "/etc/hostname" not in files
    log = bench.build_log()
    assert f"Copying manifest tree: {manifest}" in log
    assert "Running 1 tests" in log
    assert "/tests/apps/local/motd passed in" in log
    assert f"Uploaded {name} in " in log
    stored_log = bench.store.read_object(image.build_log.object.hex()).decode()
    assert log.startswith(stored_log)


@pytest_twisted.ensureDeferred
async def test_failures_show_the_log_between_banners(bench):
    await bench.build_source()
    broken = bench.vector_manifest("broken")
    code, out, err = await bench.run("build-from-manifest", str(broken), "apps/broken")
    assert (code, out) == (1, "")
    assert err.startswith(f"{START_BANNER}\n")
    assert "about to fail in apps/broken" in err
    assert err.endswith(f"{END_BANNER}\n{PREFIX}error running script: 1_fail: exit status 1\n")
    assert not (bench.cwd / "build.log").exists()
    assert [n.split("/2")[0] for n in bench.store.list_images()] == [BB]

    missing = bench.manifest("missing", {"manifest": (0o644, '{"SourceImage": "no/such"}')})
    code, out, err = await bench.run("build-tree-from-manifest", str(missing))
    assert code == 1
    assert err.endswith(f"{END_BANNER}\n{PREFIX}no source image: no/such\n")

    code, _out, err = await bench.run(
        f"-stateDir={bench.tmp / 'empty'}", "build-from-manifest", str(broken), "apps/broken"
    )
    assert code == 1
    assert err.endswith(f"{PREFIX}no image store at {bench.tmp / 'empty' / 'store'}\n")


@pytest_twisted.ensureDeferred
async def test_always_show_build_log(bench):
    await bench.build_source()
    manifest = bench.manifest("tree", TREE_MANIFEST)
    code, out, err = await bench.run(
        "-alwaysShowBuildLog", "build-tree-from-manifest", str(manifest)
    )
    tree = Path(out.removesuffix("\n"))
    try:
        assert code == 0
        assert err.startswith(f"{START_BANNER}\nCreated image working directory: {tree}\n")
        assert "Running script: 1_make" in err
        assert err.endswith(f"{END_BANNER}\n")
        assert not (bench.cwd / "build.log").exists()
    finally:
        shutil.rmtree(tree, ignore_errors=True)

    broken = bench.vector_manifest("broken")
    root = bench.tmp / "root"
    await deferToThread(materialise, bench.store.get_image(bench.bb_name), bench.store, str(root))
    code, out, err = await bench.run(
        "-alwaysShowBuildLog", "process-manifest", str(broken), str(root)
    )
    assert (code, out) == (1, "")
    assert err.count(START_BANNER) == 1 and err.count("about to fail in") == 1
    assert err.endswith(f"{END_BANNER}\n{PREFIX}error running script: 1_fail: exit status 1\n")


def test_repository_root_is_importable():
    assert (REPO / "imaginator" / "tools" / "builder_tool.py").is_file()
