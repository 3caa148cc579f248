"""Manifest streams built from a git repository served over real HTTP.

The manifests are the Go capture's own ``hello`` and ``broken`` trees
(``config-manifests.txt``); the source is the capture's ``bootstrap/bb``
busybox stream. Builds run in-process on the real reactor: real git (dulwich),
real bwrap sandboxes, the real embedded store.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import pytest_twisted

from imaginator.image.model import ComputedRegularInode, RegularInode, SymlinkInode
from imaginator.image.triggers import Trigger
from tests.support.gitserver import commit_all, init_repo, parse_manifest_vector, serve_repos
from tests.support.harness import ARCH, make_harness
from tests.support.vectors import VECTORS

BB = "bootstrap/bb"


def manifests_repo(root: Path) -> tuple[Path, str]:
    trees = parse_manifest_vector((VECTORS / "config-manifests.txt").read_text())
    init_repo(root)
    for tree, files in trees.items():
        for relative, (mode, text) in files.items():
            path = root / tree / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            path.chmod(mode)
    return root, commit_all(root, "manifests from the Go capture")


def streams_for(url: str, **extra) -> dict:
    return {
        "Streams": {
            "apps/hello": {"ManifestUrl": url, "ManifestDirectory": "hello"},
            "apps/broken": {"ManifestUrl": url, "ManifestDirectory": "broken"},
            **extra,
        }
    }


def files_of(image) -> dict:
    return {path: (inum, inode) for path, inum, inode in image.file_system.walk()}


def content(harness, inode) -> bytes:
    return harness.store.read_object(inode.hash.hex()) if inode.size else b""


@pytest.fixture
def repo(tmp_path):
    return manifests_repo(tmp_path / "manifests")


@pytest_twisted.ensureDeferred
async def test_hello_from_git_over_http_file_by_file_and_field_by_field(tmp_path, repo):
    root, commit = repo
    with serve_repos({"/manifests.git": root}) as base:
        url = f"{base}/manifests.git"
        harness = await make_harness(tmp_path / "h", streams=streams_for(url))
        try:
            bb = await harness.build(BB)
            assert not bb.error, bb.log.decode()
            result = await harness.build("apps/hello", requestor="peer-client")
        finally:
            harness.stop()
    log = result.log.decode()
    assert not result.error, log
    image = harness.store.get_image(result.image_name)

    assert image.source_image == bb.image_name
    assert image.build_commit_id == commit
    assert image.build_branch == "main"
    assert image.build_git_url == url
    assert image.created_for == "peer-client"
    assert image.filter == ("/etc/motd\\.local", "/var/cache/hello/.*")
    assert image.triggers == (Trigger(("/etc/greeting", "/etc/motd"), "motd-svc", do_reload=True),)
    assert image.tags == {"Role": "hello"}
    assert image.owner_groups == ("devs",) and image.owner_users == ("alice",)
    assert [(p.name, p.version, p.size) for p in image.packages] == [("busybox", "1.35", 43008)]

    files = files_of(image)
    motd = files["/etc/motd"][1]
    assert content(harness, motd) == b"Welcome to apps/hello\n"
    assert stat.S_IMODE(motd.mode) == 0o644 and (motd.uid, motd.gid) == (0, 0)
    built_by = content(harness, files["/built-by"][1]).decode()
    assert built_by == (
        f"first: apps/hello (apps / hello) arch={ARCH}\nnote: apps/hello branch= FOO=bar\n"
    )
    computed = files["/etc/computed"][1]
    assert isinstance(computed, ComputedRegularInode)
    assert computed.source == "localhost:6972"
    test = files["/tests/apps/hello/motd"][1]
    assert isinstance(test, RegularInode) and stat.S_IMODE(test.mode) == 0o755
    assert files["/etc/greeting"][0] == files["/etc/greeting.hl"][0]  # hard link kept
    assert isinstance(files["/bin/sh"][1], SymlinkInode)
    assert files["/bin/sh"][1].symlink == "busybox"
    assert stat.S_ISCHR(files["/dev/null"][1].mode)
    assert "/etc/hostname" not in files  # filtered from the source image
    assert content(harness, files["/etc/resolv.conf"][1]) == b""
    assert "/.scripts" not in files

    assert log.index("Running script: 9_first") < log.index("Running script: 10_note")
    assert "script 10_note ran" in log
    assert "The following filter expressions are unoptimised:" in log
    assert "Running 1 tests" in log
    assert "/tests/apps/hello/motd passed in" in log
    assert "Skipped 3 unchanged objects" in log
    stored_log = harness.store.read_object(image.build_log.object.hex()).decode()
    assert log.startswith(stored_log)  # the stored log stops before "Uploaded ..."
    assert "Uploaded " not in stored_log and f"Uploaded {result.image_name}" in log

    # What the pages show of the build: its stages and the manifest as it was read.
    assert [(s.name, s.failed) for s in result.stages] == [
        (name, False)
        for name in (
            "fetch manifest",
            "unpack source",
            "files",
            "scripts/9_first",
            "scripts/10_note",
            "clean packages",
            "list packages",
            "scan",
            "copy mtimes",
            "tests",
            "store",
        )
    ]
    total = sum(s.seconds for s in result.stages)
    assert total <= result.finished_at - result.started_at + 0.5
    manifest = result.manifest
    assert [(f.name, f.text) for f in manifest.files] == [
        ("manifest", '{\n    "SourceImage": "bootstrap/bb"\n}\n'),
        ("tags.json", '{"Role":"$IMAGE_STREAM_LEAF_NAME","Empty":"$NOTHING"}\n'),
    ]
    hello = root / "hello"
    assert manifest.tree_size == sum(p.stat().st_size for p in hello.rglob("*") if p.is_file())
    assert f"Cloning repository: {url} branch: (default)" in manifest.fetch_log


@pytest_twisted.ensureDeferred
async def test_broken_stream_fails_alone_and_stores_nothing(tmp_path, repo):
    root, _commit = repo
    with serve_repos({"/manifests.git": root}) as base:
        harness = await make_harness(tmp_path / "h", streams=streams_for(f"{base}/manifests.git"))
        try:
            assert not (await harness.build(BB)).error
            broken = await harness.build("apps/broken")
            hello = await harness.build("apps/hello")
        finally:
            harness.stop()
    assert broken.error == "error processing manifest: error running script: 1_fail: exit status 1"
    assert "about to fail in apps/broken" in broken.log.decode()
    assert not broken.image_name
    assert not hello.error
    assert [n.split("/2")[0] for n in harness.store.list_images()] == ["apps/hello", BB]
    assert os.listdir(tmp_path / "h" / "work") == []


@pytest_twisted.ensureDeferred
async def test_changing_one_file_stores_one_new_object(tmp_path, repo):
    root, _commit = repo
    with serve_repos({"/manifests.git": root}) as base:
        harness = await make_harness(tmp_path / "h", streams=streams_for(f"{base}/manifests.git"))
        try:
            assert not (await harness.build(BB)).error
            first = await harness.build("apps/hello")
            assert not first.error, first.log.decode()
            before = harness.objects()
            (root / "hello" / "files" / "etc" / "motd").write_text("Changed greeting\n")
            second_commit = commit_all(root, "change the motd")
            second = await harness.build("apps/hello")
        finally:
            harness.stop()
    assert not second.error, second.log.decode()
    image = harness.store.get_image(second.image_name)
    assert image.build_commit_id == second_commit
    new = harness.objects() - before
    motd = files_of(image)["/etc/motd"][1]
    assert new == {motd.hash.hex(), image.build_log.object.hex()}


@pytest_twisted.ensureDeferred
async def test_missing_source_is_built_first_and_its_log_is_inside(tmp_path, repo):
    root, _commit = repo
    with serve_repos({"/manifests.git": root}) as base:
        harness = await make_harness(tmp_path / "h", streams=streams_for(f"{base}/manifests.git"))
        try:
            refused = await harness.build("apps/hello", disable_recursive_build=True)
            result = await harness.build("apps/hello")
        finally:
            harness.stop()
    assert refused.need_source_image
    assert refused.error == f"no source image: {BB}"
    assert refused.source_image == BB
    assert not result.error, result.log.decode()
    log = result.log.decode()
    assert "Building source image: bootstrap/bb" in log
    assert "Running command: /bin/sh with args:" in log  # the bootstrap build's own log
    source = harness.builder.last_result(BB)
    assert source.image_name and harness.store.get_image(result.image_name).source_image == (
        source.image_name
    )


@pytest_twisted.ensureDeferred
async def test_dir_manifest_and_unknown_stream(tmp_path, repo):
    root, _commit = repo
    streams = {
        "Streams": {"apps/local": {"ManifestUrl": f"dir://{root}", "ManifestDirectory": "hello"}}
    }
    harness = await make_harness(tmp_path / "h", streams=streams)
    try:
        assert not (await harness.build(BB)).error
        local = await harness.build("apps/local")
        unknown = await harness.build("no/such/stream")
    finally:
        harness.stop()
    assert not local.error, local.log.decode()
    assert f"Copying manifest tree: {root}/hello" in local.log.decode()
    assert local.manifest.fetch_log == f"Copying manifest tree: {root}/hello\n"
    image = harness.store.get_image(local.image_name)
    assert image.build_commit_id == "" and image.build_git_url == ""
    assert unknown.error == "unknown stream: no/such/stream"


@pytest_twisted.ensureDeferred
async def test_wrong_git_password_fails_without_showing_it(tmp_path, repo):
    root, _commit = repo
    with serve_repos({"/manifests.git": root}, auth=("builder", "right-password")) as base:
        host = base.removeprefix("http://")
        streams = {
            "Streams": {
                "apps/secret": {
                    "ManifestUrl": f"http://builder:$GIT_PASSWORD@{host}/manifests.git",
                    "ManifestDirectory": "hello",
                }
            }
        }
        harness = await make_harness(
            tmp_path / "h", streams=streams, secrets="GIT_PASSWORD=wrong-hunter2\n"
        )
        try:
            result = await harness.build("apps/secret")
        finally:
            harness.stop()
    assert result.error
    assert "wrong-hunter2" not in result.error
    assert "wrong-hunter2" not in result.log.decode()
    assert "401" in result.error or "auth" in result.error.lower()
    assert result.manifest is None
    assert [(s.name, s.failed) for s in result.stages] == [("fetch manifest", True)]


@pytest_twisted.ensureDeferred
async def test_manifest_trees_cannot_write_outside_the_image(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    conf = _bb_conf_with_command(
        "set -e; cd $dir; mkdir -p bin etc tmp dev proc sys; cp /bin/busybox bin/busybox; "
        "ln -s busybox bin/sh; ln -s busybox bin/cp; ln -s busybox bin/cat; "
        "ln -s busybox bin/true; ln -s busybox bin/echo; ln -s busybox bin/sleep; "
        f"ln -s {outside} etc/link; ln -s ../../../../../../.. etc/up; "
        "mknod -m 666 dev/null c 1 3"
    )
    manifest = tmp_path / "m"
    (manifest / "files" / "etc" / "link").mkdir(parents=True)
    (manifest / "files" / "etc" / "link" / "pwned").write_text("no\n")
    (manifest / "files" / "etc" / "up" / "tmp").mkdir(parents=True)
    (manifest / "files" / "etc" / "up" / "tmp" / "pwned-too").write_text("no\n")
    (manifest / "scripts").mkdir()
    marker = f"imaginator-daemon-{tmp_path.name}"
    (manifest / "scripts" / "10_daemon").write_text(
        f"#!/bin/sh\nsh -c 'while :; do sleep 1; done' {marker} &\necho started\n"
    )
    (manifest / "scripts" / "10_daemon").chmod(0o755)
    (manifest / "manifest").write_text('{"SourceImage": "bootstrap/bb"}')
    streams = {"Streams": {"apps/hostile": {"ManifestUrl": f"dir://{manifest}"}}}
    harness = await make_harness(tmp_path / "h", conf=conf, streams=streams)
    try:
        assert not (await harness.build(BB)).error
        result = await harness.build("apps/hostile")
    finally:
        harness.stop()
    assert not result.error, result.log.decode()
    assert list(outside.iterdir()) == []
    assert not Path("/tmp/pwned-too").exists()
    assert "Copied files tree in" in result.log.decode()
    assert _processes_named(marker) == []


def _bb_conf_with_command(script: str) -> dict:
    from tests.support.harness import vector_conf

    conf = vector_conf()
    conf["BootstrapStreams"][BB]["BootstrapCommand"] = ["/bin/sh", "-c", script]
    return conf


def _processes_named(marker: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                if marker.encode() in handle.read():
                    found.append(int(pid))
        except OSError:
            pass
    return found


def _manifest(root: Path, files: dict[str, tuple[int, str]]) -> Path:
    for relative, (mode, text) in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(mode)
    return root


@pytest_twisted.ensureDeferred
async def test_packages_bind_mounts_cache_and_post_cleanup_scripts(tmp_path):
    shared = tmp_path / "shared-ro"
    shared.mkdir()
    (shared / "data").write_text("from the host\n")
    cache_base = tmp_path / "cache"
    cache_base.mkdir()
    conf = _bb_conf_with_command(_BB_SCRIPT)
    conf["BindMounts"] = [str(shared)]
    conf["Cache"] = {"BaseDirectory": str(cache_base), "MountPoint": "/var/cache/build"}
    manifest = _manifest(
        tmp_path / "m",
        {
            "manifest": (0o644, '{"SourceImage": "bootstrap/bb"}'),
            "package-list": (0o644, "# packages\nalpha\n\nbeta\n"),
            "scripts/10_mounts": (
                0o755,
                "#!/bin/sh\n"
                f"cat {shared}/data > /copied\n"
                f"if echo x > {shared}/new 2>/dev/null; then echo WRITABLE; "
                "else echo read-only; fi\n"
                "echo cached > /var/cache/build/item\n",
            ),
            "post-cleanup-scripts/10_after": (
                0o755,
                f"#!/bin/sh\nif [ -e {shared}/data ]; then echo MOUNTED; else echo unmounted; fi\n",
            ),
        },
    )
    streams = {"Streams": {"apps/mounts": {"ManifestUrl": f"dir://{manifest}"}}}
    harness = await make_harness(tmp_path / "h", conf=conf, streams=streams)
    try:
        assert not (await harness.build(BB)).error
        result = await harness.build("apps/mounts")
    finally:
        harness.stop()
    log = result.log.decode()
    assert not result.error, log
    assert "Updating package database:" in log and "Upgrading packages:" in log
    assert "Installing packages: alpha beta" in log
    assert "read-only" in log and "WRITABLE" not in log
    assert not (shared / "new").exists()
    assert (cache_base / "apps" / "mounts" / "item").read_text() == "cached\n"
    assert "unmounted" in log and "MOUNTED" not in log
    files = files_of(harness.store.get_image(result.image_name))
    assert content(harness, files["/copied"][1]) == b"from the host\n"
    assert f"{shared}/data" not in files  # the mount point is removed after the steps
    assert not any(path.startswith(str(shared)) for path in files)


@pytest_twisted.ensureDeferred
async def test_a_hanging_test_is_killed_and_nothing_is_published(tmp_path, monkeypatch):
    from imaginator.pipeline import pack

    monkeypatch.setattr(pack, "TEST_TIMEOUT", 1.0)
    marker = f"imaginator-test-{tmp_path.name}"
    manifest = _manifest(
        tmp_path / "m",
        {
            "manifest": (0o644, '{"SourceImage": "bootstrap/bb"}'),
            "tests/hangs": (0o755, f"#!/bin/sh\nexec sh -c 'while :; do sleep 1; done' {marker}\n"),
            "tests/passes": (0o755, "#!/bin/sh\necho fine\n"),
        },
    )
    conf = _bb_conf_with_command(_BB_SCRIPT)
    streams = {"Streams": {"apps/tests": {"ManifestUrl": f"dir://{manifest}"}}}
    harness = await make_harness(tmp_path / "h", conf=conf, streams=streams)
    try:
        assert not (await harness.build(BB)).error
        result = await harness.build("apps/tests")
    finally:
        harness.stop()
    log = result.log.decode()
    assert result.error == "1 tests failed"
    assert "Running 2 tests" in log
    assert "error running: /tests/apps/tests/hangs: test timed out" in log
    assert "/tests/apps/tests/passes passed in" in log
    assert [n for n in harness.store.list_images() if n.startswith("apps/")] == []
    assert _processes_named(marker) == []


@pytest_twisted.ensureDeferred
async def test_identical_concurrent_requests_share_one_build(tmp_path):
    from twisted.internet.defer import Deferred, gatherResults

    from imaginator.scheduler import BuildOptions

    harness = await make_harness(tmp_path / "h", conf=_bb_conf_with_command(_BB_SCRIPT))
    try:
        options = BuildOptions.make(expires_in=3600.0)
        first, second = await gatherResults(
            [
                Deferred.fromCoroutine(harness.builder.build(BB, options)),
                Deferred.fromCoroutine(harness.builder.build(BB, options)),
            ]
        )
        different = await harness.build(BB, expires_in=7200.0)
    finally:
        harness.stop()
    assert not first.error and first.image_name == second.image_name
    # A second, separate build with the same result publishes nothing new: the
    # latest image is extended instead.
    assert different.image_name == first.image_name
    assert "no new image published, extended its expiration" in different.log.decode()
    assert len(harness.store.list_images()) == 1
    image = harness.store.get_image(first.image_name)
    assert image.expires_at > (different.finished_at + 7000) * 1e9


_BB_SCRIPT = (
    "set -e; cd $dir; mkdir -p bin etc tmp dev proc sys var/cache; cp /bin/busybox bin/busybox; "
    + "".join(f"ln -s busybox bin/{a}; " for a in ("sh", "cp", "cat", "true", "echo", "sleep"))
    + "mknod -m 666 dev/null c 1 3"
)


@pytest_twisted.ensureDeferred
async def test_garbage_collection_waits_for_running_builds(tmp_path):
    from twisted.internet.defer import Deferred

    from imaginator.scheduler import BuildOptions

    harness = await make_harness(tmp_path / "h", conf=_bb_conf_with_command(_BB_SCRIPT))
    try:
        seen = []

        async def collect():
            seen.append(harness.builder.running_count())
            return await harness.builder._store.collect_garbage()

        build = Deferred.fromCoroutine(
            harness.builder.build(BB, BuildOptions.make(expires_in=3600.0))
        )
        assert harness.builder.running_count() == 1
        collected = Deferred.fromCoroutine(harness.builder.exclusive(collect))
        later = Deferred.fromCoroutine(harness.builder.build(BB, BuildOptions.make()))
        assert not collected.called
        result = await build
        removed, _freed = await collected
        second = await later
    finally:
        harness.stop()
    assert seen == [0]  # it ran only once no build was running
    assert removed == 0  # the finished build's objects are all referenced
    assert not result.error and not second.error
    image = harness.store.get_image(result.image_name)
    assert all(harness.store.has_object(h.hex()) for h in image.object_hashes())


@pytest_twisted.ensureDeferred
async def test_manifest_errors_fail_the_build_with_the_reference_texts(tmp_path):
    cases = {
        "apps/missing-computed": {
            "manifest": (0o644, '{"SourceImage": "bootstrap/bb"}'),
            "computed-files": (0o644, "/etc/nowhere localhost:6972\n"),
        },
        "apps/two-filters": {
            "manifest": (0o644, '{"SourceImage": "bootstrap/bb"}'),
            "filter": (0o644, "/a\n"),
            "filter.add": (0o644, "/b\n"),
        },
        "apps/bad-manifest": {"manifest": (0o644, "{not json")},
    }
    streams = {"Streams": {}}
    for name, files in cases.items():
        directory = _manifest(tmp_path / name.replace("/", "_"), files)
        streams["Streams"][name] = {"ManifestUrl": f"dir://{directory}"}
    harness = await make_harness(
        tmp_path / "h", conf=_bb_conf_with_command(_BB_SCRIPT), streams=streams
    )
    try:
        assert not (await harness.build(BB)).error
        results = {name: await harness.build(name) for name in cases}
    finally:
        harness.stop()
    assert results["apps/missing-computed"].error == (
        "error splicing computed files: /etc/nowhere: missing from image"
    )
    assert results["apps/two-filters"].error == "filter and filter.add files both present"
    assert results["apps/bad-manifest"].error.startswith("error reading manifest file: ")
    assert [n for n in harness.store.list_images() if n.startswith("apps/")] == []


@pytest_twisted.ensureDeferred
async def test_bootstrap_stream_variables_expand_the_command_and_are_its_environment(tmp_path):
    conf = _bb_conf_with_command(
        _BB_SCRIPT + '; echo "env: $GREETING $SOURCE_DATE_EPOCH" > etc/from-env'
        "; echo 'expanded: $GREETING $WHO' > etc/expanded"
    )
    conf["BootstrapStreams"][BB]["Variables"] = {
        "GREETING": "hello",
        "SOURCE_DATE_EPOCH": "1700000000",
        "WHO": "stream",
    }
    harness = await make_harness(tmp_path / "h", conf=conf, secrets="WHO=secret\nGREETING=s\n")
    try:
        result = await harness.build(BB, variables={"WHO": "request"})
    finally:
        harness.stop()
    assert not result.error, result.log.decode()
    image = harness.store.get_image(result.image_name)
    files = {path: inode for path, _inum, inode in image.file_system.walk()}

    def content(path: str) -> str:
        return harness.store.read_object(files[path].hash.hex()).decode()

    # The stream's Variables are the command's environment...
    assert content("/etc/from-env") == "env: hello 1700000000\n"
    # ...and expand it, over the variables file and under the request's variables.
    assert content("/etc/expanded") == "expanded: hello request\n"


@pytest_twisted.ensureDeferred
async def test_same_content_from_a_new_commit_is_published_and_found_by_a_pinned_stream(tmp_path):
    """A commit that changes nothing in the image still gets a record of its own
    (with no new file content), so a stream pinned to that commit finds its source."""
    root = init_repo(tmp_path / "manifests")
    (root / "base" / "files" / "etc").mkdir(parents=True)
    (root / "base" / "manifest").write_text('{"SourceImage": "bootstrap/bb"}')
    (root / "base" / "files" / "etc" / "base").write_text("base layer\n")
    (root / "NOTES").write_text("first\n")
    first_commit = commit_all(root, "base layer")
    pinned = tmp_path / "pinned"
    pinned.mkdir()
    with serve_repos({"/manifests.git": root}) as base:
        streams = {
            "Streams": {
                "apps/base": {"ManifestUrl": f"{base}/manifests.git", "ManifestDirectory": "base"},
                "apps/pinned": {"ManifestUrl": f"dir://{pinned}"},
            }
        }
        harness = await make_harness(tmp_path / "h", streams=streams)
        try:
            assert not (await harness.build(BB)).error
            first = await harness.build("apps/base")
            assert not first.error, first.log.decode()
            before = harness.objects()
            # A new commit that touches nothing of the manifest directory.
            (root / "NOTES").write_text("second\n")
            second_commit = commit_all(root, "notes only")
            second = await harness.build("apps/base")
            assert not second.error, second.log.decode()
            after_second = harness.objects()
            again = await harness.build("apps/base")
            after_again = harness.objects()
            manifest = {"SourceImage": "apps/base", "SourceImageGitCommitId": second_commit}
            (pinned / "manifest").write_text(json.dumps(manifest))
            on_pinned = await harness.build("apps/pinned", disable_recursive_build=True)
        finally:
            harness.stop()
    assert first_commit != second_commit
    # The second build is a new image, carrying the new commit, that stored only its log.
    assert not second.identical and second.image_name != first.image_name
    assert f"Same content as {first.image_name}, new provenance" in second.log.decode()
    published = harness.store.get_image(second.image_name)
    assert published.build_commit_id == second_commit
    assert after_second - before == {published.build_log.object.hex()}
    # The same commit again is identical: nothing published, no object stored (not even a log).
    assert again.identical and again.image_name == second.image_name
    assert after_again == after_second
    # The stream pinned to the new commit finds that image as its source.
    assert not on_pinned.error, on_pinned.log.decode()
    assert harness.store.get_image(on_pinned.image_name).source_image == second.image_name


@pytest_twisted.ensureDeferred
async def test_plain_variables_expand_like_secrets_but_are_shown(tmp_path):
    conf = _bb_conf_with_command(_BB_SCRIPT + "; echo '$MIRROR $TOKEN' > etc/sources")
    harness = await make_harness(
        tmp_path / "h",
        conf=conf,
        # The secret file overrides a plain variable of the same name.
        secrets="TOKEN=s3cr3t-token\nOVERRIDDEN=from-secrets\n",
        plain="MIRROR=http://mirror.invalid/debian\nOVERRIDDEN=from-plain\n",
    )
    try:
        result = await harness.build(BB)
        values = dict(harness.variables.values())
    finally:
        await harness.stop()
    assert not result.error, result.log.decode()
    image = harness.store.get_image(result.image_name)
    files = {path: inode for path, _inum, inode in image.file_system.walk()}
    written = harness.store.read_object(files["/etc/sources"].hash.hex()).decode()
    assert written == "http://mirror.invalid/debian s3cr3t-token\n"
    log = result.log.decode()
    assert "http://mirror.invalid/debian [REDACTED]" in log  # the command as logged
    assert "s3cr3t-token" not in log
    assert values["OVERRIDDEN"] == "from-secrets"
