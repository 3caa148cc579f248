"""Builds stored on the real Go imageserver (``../shared/peers``) through our
remote backend: the daemon's own assembly in-process (``tests/support/harness``)
with ``image_server`` set, real bwrap builds, the Go imageserver as ``nobody``
on a loopback port with its own directories and the test's CA.

- a bootstrap stream and a stream layered on it go in, and the Go
  ``imagetool`` lists them and unpacks them file for file as the records say;
- an unchanged rebuild uploads nothing;
- the imageserver down, or killed in the middle of an upload: the build fails
  naming it, nothing is published, the next build succeeds;
- certificates the imageserver refuses, or without the method powers: clear errors.

Skipped with the reason without the peers; failed instead under
``IMAGINATOR_REQUIRE_PEERS=1``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet.utils import getProcessOutputAndValue

from imaginator.daemon import ImageServerSettings
from imaginator.lifecycle import IMAGESERVER
from imaginator.srpc.tls import make_client_tls_options
from imaginator.store import imageserver_objects
from imaginator.store.base import ImageExistsError, ImageNotFoundError
from imaginator.store.imageserver import ImageServerAddress
from imaginator.tools.certs import IMAGESERVER_METHODS, make_ca, make_user_cert
from tests.support.gitserver import parse_manifest_vector
from tests.support.harness import make_harness, vector_conf
from tests.support.imageserver import HOST, PEERS, REPO, GoImageserver, GoProcess, free_port, peers
from tests.support.treecompare import image_listing, tree_listing, without_computed_mtimes
from tests.support.vectors import VECTORS

BB = "bootstrap/bb"
HELLO = "apps/hello"


def settings(server: GoImageserver, name: str = "imaginator") -> ImageServerSettings:
    cert, key = server.client_cert(name)
    options = make_client_tls_options(cert, key, ca_file=server.ca_file, hostname=HOST)
    return ImageServerSettings(ImageServerAddress(HOST, server.port), options)


def hello_streams(tmp: Path) -> dict:
    """The Go capture's ``hello`` manifest (on ``bootstrap/bb``) as a plain tree."""
    root = tmp / "manifests"
    for tree, files in parse_manifest_vector(
        (VECTORS / "config-manifests.txt").read_text()
    ).items():
        for relative, (mode, text) in files.items():
            path = root / tree / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            path.chmod(mode)
    return {"Streams": {HELLO: {"ManifestUrl": f"dir://{root}", "ManifestDirectory": "hello"}}}


def bb_conf(extra: str = "") -> dict:
    conf = vector_conf()
    command = conf["BootstrapStreams"][BB]["BootstrapCommand"]
    command[-1] += extra
    return conf


async def go_imagetool(server: GoImageserver, *args: str) -> str:
    """Run the Go ``imagetool`` against ``server``; its standard output."""
    argv = [
        f"-imageServerHostname={HOST}",
        f"-imageServerPortNum={server.port}",
        f"-certDirectory={server.cert_directory()}",
        *args,
    ]
    out, err, code = await getProcessOutputAndValue(
        str(PEERS / "imagetool"), argv, env={"PATH": os.environ["PATH"], "HOME": str(server.root)}
    )
    assert code == 0, f"imagetool {' '.join(args)}: {err.decode()}"
    return out.decode()


async def our_imagetool(
    server: GoImageserver, *args: str, check: bool = True
) -> tuple[str, str, int]:
    """Run our ``imagetool`` against ``server``: (stdout, stderr, exit status)."""
    argv = [
        "-m",
        "imaginator.tools.imagetool",
        f"-imageServerHostname={HOST}",
        f"-imageServerPortNum={server.port}",
        f"-certDirectory={server.cert_directory()}",
        f"-CAfile={server.ca_file}",
        *args,
    ]
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO), "HOME": str(server.root)}
    out, err, code = await getProcessOutputAndValue(sys.executable, argv, env=env, path=str(REPO))
    if check:
        assert code == 0, f"imagetool {' '.join(args)}: {err.decode()}"
    return out.decode(), err.decode(), code


async def read_objects(harness, image) -> dict[str, bytes]:
    await harness.images.fetch_objects(image.object_hashes())
    return {h.hex(): harness.store.read_object(h.hex()) for h in image.object_hashes()}


@pytest_twisted.ensureDeferred
async def test_streams_go_to_the_imageserver_and_the_go_imagetool_reads_them(tmp_path, imageserver):
    streams = hello_streams(tmp_path)
    streams["Streams"]["apps/unbuilt/x"] = streams["Streams"][HELLO]
    harness = await make_harness(
        tmp_path / "h",
        streams=streams,
        image_server=settings(imageserver),
        tree_cache=True,
    )
    try:
        # Every stream gets its directory (and its parents), built or not.
        made = harness.services.getServiceNamed(IMAGESERVER).directories.run_now()
        await made
        bb = await harness.build(BB)
        assert not bb.error, bb.log.decode()
        # An empty cache, as after the hourly collection: the layered build
        # downloads its source image's objects.
        removed, _ = await harness.images.collect_garbage()
        assert removed > 0
        hello = await harness.build(HELLO, requestor="alice")
        assert not hello.error, hello.log.decode()
        log = hello.log.decode()
        images = {
            name: await harness.images.get_image(name) for name in (bb.image_name, hello.image_name)
        }
        directories = await harness.images.list_directories()
        contents = {}
        for image in images.values():
            contents.update(await read_objects(harness, image))
    finally:
        await harness.stop()
    assert "Downloaded " in log and f"Source image: {bb.image_name}" in log
    assert {"bootstrap", BB, "apps", HELLO, "apps/unbuilt", "apps/unbuilt/x"} <= set(directories)
    hello_image = images[hello.image_name]
    assert hello_image.source_image == bb.image_name
    assert hello_image.created_for == "alice"
    assert hello_image.created_by == "imaginator-test"  # the certificate's name, set by the server
    assert hello_image.tags == {"Role": "hello"}

    listed = (await go_imagetool(imageserver, "list")).split()
    assert sorted(listed) == sorted(images)
    for name, image in images.items():
        directory = tmp_path / "unpacked" / name.replace("/", "_")
        directory.mkdir(parents=True)
        await go_imagetool(imageserver, "get", name, str(directory))
        unpacked = without_computed_mtimes(tree_listing(directory), image)
        expected = image_listing(image, contents.__getitem__)
        # imagetool get records what it unpacked in /var/lib/initial-image.
        marker = unpacked.pop("/var/lib/initial-image")
        assert marker[0] == "file"
        for parent in ("/var/lib", "/var"):
            if parent not in expected:
                unpacked.pop(parent)
        assert unpacked == expected, name
        # The build log is an object of the image on the server too.
        assert image.build_log is not None and image.build_log.object.hex() in contents
        # Our imagetool reads the same from the imageserver.
        ours = tmp_path / "ours" / name.replace("/", "_")
        await our_imagetool(imageserver, "get", name, str(ours))
        assert without_computed_mtimes(tree_listing(ours), image) == expected, name
    out, _err, _code = await our_imagetool(imageserver, "list")
    assert out.split() == sorted(images)
    out, _err, _code = await our_imagetool(imageserver, "show", hello.image_name)
    assert json.loads(out)["SourceImage"] == bb.image_name
    out, _err, _code = await our_imagetool(imageserver, "list-packages", hello.image_name)
    assert out == "busybox 1.35 43008\n"
    _out, err, code = await our_imagetool(imageserver, "show", "apps/hello/nothing", check=False)
    assert (code, err) == (1, "imagetool: unknown image: apps/hello/nothing\n")


@pytest_twisted.ensureDeferred
async def test_an_unchanged_rebuild_uploads_no_object(tmp_path, imageserver):
    harness = await make_harness(tmp_path / "h", conf=bb_conf(), image_server=settings(imageserver))
    try:
        first = await harness.build(BB)
        assert not first.error, first.log.decode()
        stored, uploaded = imageserver.object_count(), harness.images.uploaded
        assert uploaded.objects == stored > 0
        second = await harness.build(BB)
        await harness.images.collect_garbage()  # and with nothing in the cache
        third = await harness.build(BB)
        names = await harness.images.list_images()
    finally:
        await harness.stop()
    for again in (second, third):
        assert not again.error, again.log.decode()
        assert again.image_name == first.image_name
        assert f"Identical to {first.image_name}: no new image published" in again.log.decode()
    assert harness.images.uploaded == uploaded
    assert imageserver.object_count() == stored
    assert names == [first.image_name]


@pytest_twisted.ensureDeferred
async def test_the_imageserver_down_fails_the_build_naming_it_then_builds_resume(tmp_path):
    server = GoImageserver()  # not started yet
    try:
        harness = await make_harness(tmp_path / "h", conf=bb_conf(), image_server=settings(server))
        try:
            down = await harness.build(BB)
            _out, tool_error, tool_status = await our_imagetool(server, "list", check=False)
            await server.start()
            up = await harness.build(BB)
            names = await harness.images.list_images()
        finally:
            await harness.stop()
    finally:
        await server.stop()
        server.cleanup()
    assert down.error.startswith(f"imageserver {HOST}:{server.port}: "), down.error
    assert "cannot connect" in down.error
    assert f"Error building image: {BB}: imageserver {HOST}:{server.port}" in down.log.decode()
    assert not up.error, up.log.decode()
    assert names == [up.image_name]
    assert tool_status == 1
    assert tool_error.startswith(
        f"imagetool: imageserver {HOST}:{server.port}: ImageServer.ListImages: cannot connect"
    ), tool_error


@pytest_twisted.ensureDeferred
async def test_killed_during_the_upload_nothing_is_published_and_the_next_build_works(
    tmp_path, imageserver
):
    # A file big enough to be sent block by block: the imageserver is killed
    # once the first block of it has been read for sending.
    extra = "; head -c 4194304 /dev/urandom > big"
    harness = await make_harness(
        tmp_path / "h", conf=bb_conf(extra), image_server=settings(imageserver)
    )
    transfers = harness.images._transfers
    plain = transfers.in_thread
    killed = []

    async def in_thread(fn, *args, **kwargs):
        if fn is imageserver_objects._read_block and not killed:
            killed.append(True)
            await imageserver.kill()
        return await plain(fn, *args, **kwargs)

    transfers.in_thread = in_thread
    try:
        failed = await harness.build(BB)
        await imageserver.start()
        names_after_failure = await harness.images.list_images()
        transfers.in_thread = plain
        good = await harness.build(BB)
        names = await harness.images.list_images()
    finally:
        await harness.stop()
    assert killed
    assert failed.error.startswith(f"error adding image: imageserver {HOST}:{imageserver.port}: ")
    assert "ObjectServer.AddObjects" in failed.error
    assert names_after_failure == []
    assert not good.error, good.log.decode()
    assert names == [good.image_name]


@pytest_twisted.ensureDeferred
async def test_certificates_the_imageserver_refuses_give_clear_errors(tmp_path, imageserver):
    # A certificate of another CA: the TLS handshake fails.
    other_ca, other_key = make_ca("another CA")
    cert, key = make_user_cert(other_ca, other_key, "stranger")
    (imageserver.root / "stranger.cert").write_bytes(cert)
    (imageserver.root / "stranger.key").write_bytes(key)
    # One of the right CA without the method powers: refused per method.
    imageserver.add_client_cert("powerless")
    results = {}
    for name in ("stranger", "powerless"):
        harness = await make_harness(
            tmp_path / name, conf=bb_conf(), image_server=settings(imageserver, name)
        )
        try:
            results[name] = await harness.build(BB)
        finally:
            await harness.stop()
    prefix = f"imageserver {HOST}:{imageserver.port}: "
    stranger = results["stranger"].error
    assert stranger.startswith(prefix) and "TLS" in stranger, stranger
    powerless = results["powerless"].error
    assert powerless.startswith(f"error adding image: {prefix}ImageServer.MakeDirectory: "), (
        powerless
    )
    assert "access to method denied" in powerless and "-srpcTrustedUsers" in powerless
    assert imageserver.object_count() == 0


async def go_imaginator_builds_bootstrap(tmp: Path, server: GoImageserver) -> None:
    """The Go imaginator's first automatic cycle builds ``bootstrap/bb`` into ``server``."""
    for sub in ("state", "log", "builds", "tmp"):
        (tmp / sub).mkdir(parents=True)
    streams = tmp / "image-streams.json"
    streams.write_text("{}")
    conf = vector_conf()
    conf["BootstrapStreams"] = {BB: conf["BootstrapStreams"][BB]}
    conf["ImageStreamsUrl"] = streams.as_uri()
    conf["ImageStreamsToAutoRebuild"] = [BB]
    (tmp / "conf.json").write_text(json.dumps(conf))
    cert, key = server.add_client_cert("go-imaginator", methods=IMAGESERVER_METHODS)
    argv = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "--kill-child=TERM",
        str(PEERS / "imaginator"),
        f"-portNum={free_port()}",
        f"-stateDir={tmp / 'state'}",
        f"-logDir={tmp / 'log'}",
        f"-buildLogDir={tmp / 'builds'}",
        f"-configurationUrl={(tmp / 'conf.json').as_uri()}",
        f"-imageServerHostname={HOST}",
        f"-imageServerPortNum={server.port}",
        f"-CAfile={server.ca_file}",
        f"-certFile={cert}",
        f"-keyFile={key}",
        "-alsoLogToStderr",
    ]
    env = {"PATH": os.environ["PATH"], "TMPDIR": str(tmp / "tmp"), "HOME": str(tmp)}
    go = GoProcess("Go imaginator").start(argv, env, tmp)
    try:
        await go.wait_for("Completed automatic image build cycle", timeout=300)
    finally:
        await go.stop()
    assert f"Error building image: {BB}" not in go.text, go.text


@pytest_twisted.ensureDeferred
async def test_a_stream_builds_on_an_image_the_go_imaginator_uploaded(tmp_path, imageserver):
    peers("imaginator")
    await go_imaginator_builds_bootstrap(tmp_path / "go", imageserver)
    harness = await make_harness(
        tmp_path / "h", streams=hello_streams(tmp_path), image_server=settings(imageserver)
    )
    try:
        go_name = await harness.images.find_latest_image(BB)
        go_image = await harness.images.get_image(go_name)
        hello = await harness.build(HELLO)
        image = await harness.images.get_image(hello.image_name) if not hello.error else None
        contents = await read_objects(harness, image) if image else {}
    finally:
        await harness.stop()
    assert go_image.created_by == "go-imaginator"
    assert not hello.error, hello.log.decode()
    assert image.source_image == go_name
    assert f"Source image: {go_name}" in hello.log.decode()
    files = {path: inode for path, _inum, inode in image.file_system.walk()}
    assert contents[files["/etc/greeting"].hash.hex()] == b"hello from bootstrap/bb\n"
    assert contents[files["/etc/motd"].hash.hex()] == b"Welcome to apps/hello\n"


@pytest_twisted.ensureDeferred
async def test_a_deleted_images_name_stays_taken_on_the_imageserver(tmp_path, imageserver):
    harness = await make_harness(tmp_path / "h", conf=bb_conf(), image_server=settings(imageserver))
    store = harness.images
    try:
        built = await harness.build(BB)
        assert not built.error, built.log.decode()
        image = await store.get_image(built.image_name)
        await store.delete_image(built.image_name)
        assert not await store.image_exists(built.image_name)
        store._reserved.clear()  # as a restarted daemon would have it
        when = time.mktime(time.strptime(built.image_name.rsplit("/", 1)[1], "%Y-%m-%d:%H:%M:%S"))
        name = await store.reserve_image_name(BB, when)
        assert name == built.image_name  # the server does not say it is taken...
        with pytest.raises(ImageExistsError, match="cannot add previously deleted image"):
            await store.add_image(name, image)  # ... until it is used
        with pytest.raises(ImageNotFoundError):
            await store.delete_image(name)
    finally:
        await harness.stop()
