"""Publishing in the real daemon: the busybox bootstrap stream and a stream
layered on it pushed to a real ``docker-registry`` on loopback after their
builds; an identical rebuild not pushed again; the results on the stream
pages and in ``/metrics``; a registry that is down: the error shown, retries,
the build itself unaffected, and the push done once the registry is up."""

from __future__ import annotations

import json
import os
import re
import socket
from pathlib import Path

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.threads import deferToThread

from imaginator.goformats.units import go_arch
from imaginator.publish.push import image_tag
from imaginator.srpc.client import connect
from imaginator.srpc.framing import INSECURE_JSON_PATH
from imaginator.store.local import LocalImageStore
from tests.integration.test_export_registry import skopeo
from tests.integration.test_rpc_daemon import build, request
from tests.support.configs import BUSYBOX, busybox_conf
from tests.support.daemon import Daemon
from tests.support.registry import start_registry

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="builds need root")

APP = "apps/app"
TIMEOUT = 120


def configure(tmp_path: Path, registry: str, *, app: bool) -> Path:
    """conf.json with busybox published to ``registry`` (and, with ``app``, an
    image-streams document with a stream on it published to the same repository)."""
    conf = busybox_conf(tmp_path, auto_rebuild=[BUSYBOX, APP] if app else [BUSYBOX])
    document = json.loads(conf.read_text())
    document["BootstrapStreams"][BUSYBOX]["Publish"] = {
        "Reference": f"{registry}/imaginator/test",
        "Tags": ["busybox-$ARCH"],
    }
    if app:
        manifest = tmp_path / "app-manifest"
        (manifest / "files" / "etc").mkdir(parents=True)
        (manifest / "files" / "etc" / "app.conf").write_text("app\n")
        (manifest / "manifest").write_text(json.dumps({"SourceImage": BUSYBOX}))
        streams = tmp_path / "image-streams.json"
        streams.write_text(
            json.dumps(
                {
                    "Streams": {
                        APP: {
                            "ManifestUrl": f"dir://{manifest}",
                            "Publish": {
                                "Reference": f"{registry}/imaginator/test",
                                "Tags": ["latest"],
                            },
                        }
                    }
                }
            )
        )
        document["ImageStreamsUrl"] = streams.as_uri()
    conf.write_text(json.dumps(document))
    return conf


def start_daemon(tmp_path: Path, conf: Path, *extra: str) -> Daemon:
    return Daemon(
        [
            "-portNum=0",
            f"-stateDir={tmp_path / 'state'}",
            f"-configurationUrl=file://{conf}",
            "-buildLogDir=",
            "-imageRebuildInterval=1h",  # one cycle, at start
            "-permitInsecureMode",
            *extra,
        ]
    ).start()


async def page(port: int, path: str) -> str:
    response = await treq.get(f"http://127.0.0.1:{port}{path}")
    assert response.code == 200, path
    return (await response.text()).replace("&#x2F;", "/")


async def metrics(port: int) -> dict[str, str]:
    text = await page(port, "/metrics")
    return dict(x.rsplit(" ", 1) for x in text.splitlines() if x and not x.startswith("#"))


def published_lines(daemon: Daemon, stream: str) -> list[str]:
    return [line for line in daemon.stdout if f"Publishing {stream}/" in line]


@pytest_twisted.ensureDeferred
async def test_new_images_are_pushed_and_an_identical_rebuild_is_not(tmp_path):
    registry = await deferToThread(start_registry, tmp_path / "registry")
    daemon = None
    try:
        conf = configure(tmp_path, registry.address, app=True)
        daemon = start_daemon(tmp_path, conf)
        port = await daemon.wait_listening()
        line = await daemon.wait_for(rf"Published {BUSYBOX}/\S+ as ", timeout=TIMEOUT)
        busybox_name, reference = re.search(r"Published (\S+) as (\S+)", line).groups()
        line = await daemon.wait_for(rf"Published {APP}/\S+ as ", timeout=TIMEOUT)
        app_name, app_reference = re.search(r"Published (\S+) as (\S+)", line).groups()
        # The layered stream's push found its source's layer in the repository.
        assert re.search(r"; 3 blobs sent, .*, 2 already there\)", line), line

        store = LocalImageStore(str(tmp_path / "state" / "store"))
        assert sorted(store.list_images()) == sorted([busybox_name, app_name])
        repository = f"{registry.address}/imaginator/test"
        digest = reference.split("@")[1]
        assert reference == f"{repository}@{digest}"
        insecure = "--tls-verify=false"
        tags = json.loads(skopeo("list-tags", insecure, f"docker://{repository}"))["Tags"]
        own = [image_tag(busybox_name), image_tag(app_name)]
        wanted = {*own, "latest", f"busybox-{go_arch()}", digest.replace(":", "-")}
        assert wanted <= set(tags)  # the last: the SBOM's referrers index
        busybox = json.loads(skopeo("inspect", "--raw", insecure, f"docker://{reference}"))
        app = json.loads(skopeo("inspect", "--raw", insecure, f"docker://{repository}:latest"))
        assert app["layers"][0] == busybox["layers"][0]
        assert f"{repository}@{app_reference.split('@')[1]}" == app_reference

        text = await page(port, f"/showImageStream?{BUSYBOX}")
        assert f"Publishing to: <code>{repository}</code>" in text
        assert f"as <code>{reference}</code>" in text
        assert "Last push: succeeded at" in text
        values = await metrics(port)
        for stream in (BUSYBOX, APP):
            assert values[f'imaginator_publish_last_success{{stream="{stream}"}}'] == "1"
            assert float(
                values[f'imaginator_publish_last_timestamp_seconds{{stream="{stream}"}}']
            ) == float(
                values[f'imaginator_publish_last_success_timestamp_seconds{{stream="{stream}"}}']
            )

        # Rebuilt, identical: not pushed again.
        manifests_put = registry.requests("PUT", "/manifests/")
        client = await connect(
            "127.0.0.1", daemon.port, reactor=reactor, path=INSECURE_JSON_PATH, tls=False
        )
        try:
            final, log = await build(client, request(BUSYBOX))
        finally:
            await client.close()
        assert final["ErrorString"] == "", log
        assert f"Identical to {busybox_name}: no new image published" in log
        assert len(published_lines(daemon, BUSYBOX)) == 1
        assert registry.requests("PUT", "/manifests/") == manifests_put
        assert f"as <code>{reference}</code>" in await page(port, f"/showImageStream?{BUSYBOX}")
    finally:
        if daemon is not None:
            await daemon.stop()
        registry.stop()
    assert not os.listdir(tmp_path / "state" / "tmp")  # no layout left behind


def free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest_twisted.ensureDeferred
async def test_a_registry_that_is_down_is_retried_and_never_fails_the_build(tmp_path):
    address = f"127.0.0.1:{free_loopback_port()}"
    conf = configure(tmp_path, address, app=False)
    daemon = start_daemon(tmp_path, conf, "-publishRetryDelay=2s")
    registry = None
    try:
        port = await daemon.wait_listening()
        built = await daemon.wait_for(rf"Built image: {BUSYBOX}/\S+", timeout=TIMEOUT)
        name = re.search(r"Built image: (\S+)", built).group(1)
        failed = await daemon.wait_for(r"Error publishing .*attempt 1 of 5", timeout=TIMEOUT)
        assert f"Error publishing {name} to {address}/imaginator/test" in failed
        assert "connection refused" in failed.lower() and failed.endswith("retrying in 2s")

        text = await page(port, f"/showImageStream?{BUSYBOX}")
        assert "Last build: <a" in text and ">succeeded</a>" in text
        assert "Last push: failed at" in text and "onnection refused" in text
        assert "Next attempt at" in text
        values = await metrics(port)
        assert values[f'imaginator_stream_last_build_success{{stream="{BUSYBOX}"}}'] == "1"
        assert values[f'imaginator_publish_last_success{{stream="{BUSYBOX}"}}'] == "0"
        assert f'imaginator_publish_last_success_timestamp_seconds{{stream="{BUSYBOX}"}}' not in (
            values
        )

        await daemon.wait_for(r"Error publishing .*attempt 2 of 5", timeout=TIMEOUT)
        registry = await deferToThread(start_registry, tmp_path / "registry", "", address)
        line = await daemon.wait_for(rf"Published {name} as ", timeout=TIMEOUT)
        reference = re.search(r" as (\S+)", line).group(1)
        assert reference.startswith(f"{address}/imaginator/test@sha256:")
        text = await page(port, f"/showImageStream?{BUSYBOX}")
        assert f"as <code>{reference}</code>" in text
        values = await metrics(port)
        assert values[f'imaginator_publish_last_success{{stream="{BUSYBOX}"}}'] == "1"
        assert LocalImageStore(str(tmp_path / "state" / "store")).list_images() == [name]
    finally:
        await daemon.stop()
        if registry is not None:
            registry.stop()
