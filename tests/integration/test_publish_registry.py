"""``push_to_registry`` (what the daemon's publisher runs in its thread pool)
against a real ``docker-registry``: the image's own tag and the configured
tags, the SBOM, the source's layer shared within one repository, TLS with a
CA and Basic authentication from a credentials file, and stopping."""

from __future__ import annotations

import base64
import json
import os
import threading

import pytest

from imaginator.config.publish import PublishTarget
from imaginator.export.registry import RegistryError
from imaginator.publish.push import (
    PushCancelled,
    RegistrySettings,
    image_tag,
    push_to_registry,
)
from imaginator.store.local import LocalImageStore
from tests.integration.test_export_registry import PASSWORD, skopeo, tls_registry
from tests.support.export_images import DERIVED, SOURCE, make_store
from tests.support.registry import start_registry

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (owners, device nodes)")
SPDX = "application/spdx+json"


@pytest.fixture
def store(tmp_path) -> LocalImageStore:
    return make_store(tmp_path / "state" / "store")


@pytest.fixture
def registry(tmp_path):
    running = start_registry(tmp_path / "registry")
    yield running
    running.stop()


def inspect(reference: str, *extra: str) -> dict:
    return json.loads(skopeo("inspect", "--raw", *extra, f"docker://{reference}"))


def digest_of(reference: str, *extra: str) -> str:
    return json.loads(skopeo("inspect", *extra, f"docker://{reference}"))["Digest"]


def test_tags_sbom_and_the_source_layer_shared_in_one_repository(store, registry, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    target = PublishTarget(registry.address, "images/test", ("latest", "stable"))
    source = push_to_registry(store, SOURCE, target, RegistrySettings(), work_directory=str(work))
    assert os.listdir(work) == []  # the temporary layout is gone
    own = image_tag(SOURCE)
    assert source.tags == (own, "latest", "stable")
    assert source.reference == f"{registry.address}/images/test@{source.digest}"
    insecure = "--tls-verify=false"
    for tag in source.tags:
        assert digest_of(f"{registry.address}/images/test:{tag}", insecure) == source.digest
    assert (source.blobs_sent, source.blobs_present) == (4, 0)  # config, layer, {}, SBOM

    # The SBOM is attached (referrers tag schema), its subject the image.
    referrers = inspect(
        f"{registry.address}/images/test:{source.digest.replace(':', '-')}", insecure
    )
    assert [(m["artifactType"], m["digest"]) for m in referrers["manifests"]] == [
        (SPDX, source.sbom_digest)
    ]

    # The derived image in the same repository: the source's layer is there already.
    derived = push_to_registry(store, DERIVED, target, RegistrySettings())
    assert (derived.blobs_sent, derived.blobs_present) == (3, 2)  # layer and {} shared
    base = inspect(f"{registry.address}/images/test:{own}", insecure)
    app = inspect(f"{registry.address}/images/test:latest", insecure)
    assert app["layers"][0] == base["layers"][0]
    assert digest_of(f"{registry.address}/images/test:stable", insecure) == derived.digest

    # In another repository nothing is shared: every blob is sent.
    elsewhere = PublishTarget(registry.address, "images/other")
    other = push_to_registry(store, DERIVED, elsewhere, RegistrySettings())
    assert (other.blobs_sent, other.blobs_present) == (5, 0)
    assert other.tags == (image_tag(DERIVED),)
    assert other.digest == derived.digest  # the same bytes wherever they go


def test_a_set_cancel_event_stops_the_push(store, registry):
    cancelled = threading.Event()
    cancelled.set()
    target = PublishTarget(registry.address, "images/test")
    with pytest.raises(PushCancelled):
        push_to_registry(store, SOURCE, target, RegistrySettings(), cancelled=cancelled)
    assert registry.requests("PUT", "/manifests/") == 0


def test_tls_with_the_ca_and_credentials_from_the_flags_files(store, tmp_path):
    registry, directory = tls_registry(tmp_path)
    try:
        credentials = tmp_path / "config.json"
        auth = base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
        credentials.write_text(json.dumps({"auths": {registry.address: {"auth": auth}}}))
        target = PublishTarget(registry.address, "secure/app", ("latest",))
        settings = RegistrySettings(str(credentials), str(directory / "ca.crt"))
        pushed = push_to_registry(store, SOURCE, target, settings)
        assert pushed.digest == digest_of(
            f"{registry.address}/secure/app:latest",
            f"--cert-dir={directory}",
            f"--creds=alice:{PASSWORD}",
        )

        with pytest.raises(RegistryError, match="TLS: unable to get local issuer certificate"):
            push_to_registry(store, SOURCE, target, RegistrySettings(str(credentials)))
        # The file is read at each push: a replaced one takes effect at once.
        credentials.write_text(json.dumps({"username": "alice", "password": "wrong"}))
        with pytest.raises(RegistryError) as info:
            push_to_registry(store, SOURCE, target, settings)
        assert "401" in str(info.value) and PASSWORD not in str(info.value)
    finally:
        registry.stop()
