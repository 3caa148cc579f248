"""The rebuild cycle over a real three-level chain: bootstrap -> base -> app.

Real builds (busybox distribution, bwrap), manifests in a git repository, the
real dependency generator deciding the order, the real embedded store.
"""

from __future__ import annotations

import pytest_twisted
from twisted.internet import reactor

from imaginator.autobuild import AutoBuilder
from imaginator.deps import DependencyGenerator, dependency_order
from tests.support.gitserver import commit_all, init_repo, write_tree
from tests.support.harness import ARCH, make_harness, vector_conf

BB = "bootstrap/bb"
BASE = "chain/base"
APP = "chain/app"


def chain_repo(root):
    init_repo(root)
    write_tree(
        root,
        {
            "base/manifest": (0o644, '{"SourceImage": "bootstrap/bb"}'),
            "base/files/etc/base.conf": (0o644, "base version 1\n"),
            "app/manifest": (0o644, '{"SourceImage": "chain/base"}'),
            "app/files/etc/app.conf": (0o644, "app\n"),
        },
    )
    commit_all(root, "chain")
    return root


def latest(harness, stream):
    return harness.store.find_latest_image(stream)


@pytest_twisted.ensureDeferred
async def test_cycle_order_changes_identical_results_and_failures(tmp_path):
    repo = chain_repo(tmp_path / "repo")
    url = repo.as_uri()
    streams = {
        "Streams": {
            # Listed children first: the cycle must still build parents first.
            APP: {"ManifestUrl": url, "ManifestDirectory": "app"},
            BASE: {"ManifestUrl": url, "ManifestDirectory": "base"},
        }
    }
    conf = vector_conf()
    conf["ImageStreamsToAutoRebuild"] = [APP, BASE, BB]
    harness = await make_harness(tmp_path / "h", conf=conf, streams=streams)
    deps = DependencyGenerator(
        reactor=reactor,
        clock=reactor,
        threadpool=harness.pool,
        streams=harness.streams,
        bootstrap_streams=[BB],
        secrets=dict,
        arch=ARCH,
    )
    deps.startService()
    built: list[str] = []

    async def build(stream, options):
        built.append(stream)
        return await harness.builder.build(stream, options)

    def order(names):
        data = deps.current()
        return dependency_order(list(names), data.stream_to_source)

    auto = AutoBuilder(
        clock=reactor,
        build=build,
        streams=lambda: harness.builder.config.image_streams_to_auto_rebuild,
        interval=0,
        store=harness.builder._store,
        order=order,
        source_of=lambda s: deps.current().stream_to_source.get(s),
    )
    try:
        data = await deps.get(max_age=60)
        assert data.stream_to_source == {APP: BASE, BASE: BB}

        # 1. The first cycle builds parents first.
        await auto.run_cycle()
        assert built == [BB, BASE, APP]
        first = {s: latest(harness, s) for s in (BB, BASE, APP)}
        assert all(first.values())
        app_image = harness.store.get_image(first[APP])
        assert app_image.source_image == first[BASE]

        # 2. An unchanged cycle publishes nothing new and extends the expiries.
        expiries = {s: harness.store.get_image(first[s]).expires_at for s in first}
        objects = harness.objects()
        images = harness.store.list_images()
        await auto.run_cycle()
        assert harness.store.list_images() == images
        for stream, name in first.items():
            assert harness.store.get_image(name).expires_at > expiries[stream]
        new_objects = harness.objects() - objects  # only the build logs of the cycle
        assert len(new_objects) <= 3

        # 3. Changing the middle manifest rebuilds it and its child.
        write_tree(repo, {"base/files/etc/base.conf": (0o644, "base version 2\n")})
        commit_all(repo, "base v2")
        await auto.run_cycle()
        second = {s: latest(harness, s) for s in (BB, BASE, APP)}
        assert second[BB] == first[BB]
        assert second[BASE] != first[BASE] and second[APP] != first[APP]
        assert harness.store.get_image(second[APP]).source_image == second[BASE]

        # 4. A failing middle stream extends its own and its child's latest images.
        write_tree(repo, {"base/scripts/1_fail": (0o755, "#!/bin/sh\nexit 1\n")})
        commit_all(repo, "break base")
        before = {s: harness.store.get_image(second[s]).expires_at for s in (BASE, APP)}
        built.clear()
        await auto.run_cycle()
        assert built == [BB, BASE]  # the child of a failed stream is not built
        for stream in (BASE, APP):
            assert latest(harness, stream) == second[stream]
            assert harness.store.get_image(second[stream]).expires_at > before[stream]
        assert auto.last_cycle[-1] == (APP, f"extended {second[APP]}")
    finally:
        deps.stopService()
        harness.stop()
