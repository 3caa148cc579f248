"""When a cycle's build cannot be skipped (``pipeline.freshness``), decided without builds.

What needs real builds (the manifest's commit, the package check on an
overlay) runs in ``tests/integration/test_fast_paths.py``; here each reason
to build is shown once, with a fake store.
"""

from __future__ import annotations

import json
import stat

import pytest
from twisted.internet.defer import Deferred

from imaginator.config.main import parse_main_config
from imaginator.config.streams import StreamConfig
from imaginator.image.model import DirectoryInode, FileSystem, Image, RegularInode
from imaginator.pipeline.freshness import Freshness, Unsure, inputs_digest
from imaginator.pipeline.manifest_build import NormalBuild
from imaginator.pipeline.pack import BuildEnv
from imaginator.runtime.buildlog import BuildLog
from imaginator.runtime.process import ProcessRunner
from tests.support.fakes import FakeReactor, SyncThreadPool, fired

BOOT = "bootstrap/b"
PACKAGER = {"InstallCommand": ["true"], "ListCommand": {"ArgList": ["true"]}}


def main(pending: list[str] | None = None, **extra):
    packager = dict(PACKAGER, PendingUpgradesCommand=pending) if pending else PACKAGER
    document = {
        "BootstrapStreams": {BOOT: {"BootstrapCommand": ["true"], "PackagerType": "p"}},
        "PackagerTypes": {"p": packager},
        **extra,
    }
    return parse_main_config(json.dumps(document).encode(), "conf.json", "amd64")


def image() -> Image:
    table = {2: RegularInode(stat.S_IFREG | 0o644, 0, 0, 1, 0, 1, b"\x01" * 64)}
    fs = FileSystem(table, DirectoryInode([("f", 2)]))
    fs.recompute_totals()
    return Image(file_system=fs)


class Store:
    def __init__(self, images: dict[str, Image]) -> None:
        self.images = images

    async def find_latest_image(self, stream, commit="", tags=None):
        names = sorted(n for n in self.images if n.rpartition("/")[0] == stream)
        return names[-1] if names else None

    async def get_image(self, name):
        return self.images.get(name)


def env(store: Store) -> BuildEnv:
    reactor = FakeReactor()
    return BuildEnv(
        reactor=reactor,
        threadpool=SyncThreadPool(),
        runner=ProcessRunner(reactor),
        store=store,
        local_store=None,
        log=BuildLog(),
    )


def unchanged(freshness: Freshness, build_env: BuildEnv, stream: str, digest: str, request=None):
    return Deferred.fromCoroutine(freshness.unchanged(build_env, stream, digest, request))


def reason(d: Deferred) -> str:
    with pytest.raises(Unsure) as info:
        fired(d)
    return str(info.value)


def test_reasons_to_build_a_bootstrap_stream():
    store = Store({f"{BOOT}/1": image()})
    freshness = Freshness(main(), None, None, None)
    build_env = env(store)
    assert reason(unchanged(freshness, build_env, BOOT, "d")) == (
        "not built by this daemon since it started"
    )
    freshness.record(BOOT, f"{BOOT}/1", "d")
    assert reason(unchanged(freshness, build_env, BOOT, "other")) == (
        "its settings changed since its last build"
    )
    store.images[f"{BOOT}/2"] = image()  # built by someone else since
    assert reason(unchanged(freshness, build_env, BOOT, "d")) == (
        f"its latest image is not {BOOT}/1, its last build"
    )
    freshness.record(BOOT, f"{BOOT}/2", "d")
    assert reason(unchanged(freshness, build_env, BOOT, "d")) == (
        "its packager type has no PendingUpgradesCommand"
    )
    with_command = Freshness(main(["true"]), None, None, None)
    with_command.record(BOOT, f"{BOOT}/2", "d")
    assert reason(unchanged(with_command, build_env, BOOT, "d")) == (
        "no source-tree cache to look at its latest image"
    )
    freshness.forget(BOOT)
    assert reason(unchanged(freshness, build_env, BOOT, "d")).startswith("not built")


def test_a_directory_manifest_has_no_commit_to_compare(tmp_path):
    manifest = tmp_path / "m"
    manifest.mkdir()
    (manifest / "manifest").write_text(json.dumps({"SourceImage": BOOT}))
    config = main()
    store = Store({"apps/a/1": image(), f"{BOOT}/1": image()})
    freshness = Freshness(config, None, None, str(tmp_path))
    freshness.record("apps/a", "apps/a/1", "d")
    request = NormalBuild(
        stream="apps/a",
        config=StreamConfig(manifest_url=f"dir://{manifest}"),
        main=config,
        arch="amd64",
        tmpdir=str(tmp_path),
    )
    assert reason(unchanged(freshness, env(store), "apps/a", "d", request)) == (
        "its manifest is a directory, not a commit"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # its copy is gone


def test_the_digest_covers_what_a_build_depends_on():
    config = main()
    stream = config.bootstrap_streams[BOOT]
    packager = config.packager_types["p"]

    def digest(main_config=config, secrets=None, request=("", ())):
        return inputs_digest(
            stream, main_config, packager=packager, secrets=secrets or {}, request=request
        )

    assert digest() == digest()
    assert digest(secrets={"MIRROR": "a"}) != digest(secrets={"MIRROR": "b"})
    assert digest(request=("", (("V", "1"),))) != digest()
    assert digest(request=("branch", ())) != digest()
    assert digest(main(BindMounts=["/srv"])) != digest()
    assert digest(main(MtimesCopyFilterLines=["/x"])) != digest()
