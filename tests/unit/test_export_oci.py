"""OCI image layouts (imaginator.export.oci)."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from pathlib import Path

import pytest

from imaginator.export.oci import (
    COMPUTED_FILES,
    INDEX_MEDIA_TYPE,
    LAYER_MEDIA_TYPE,
    MANIFEST_MEDIA_TYPE,
    REF_NAME,
    ExportOptions,
    Layout,
    export_image,
    layer_chain,
)
from imaginator.export.sbom import SPDX_MEDIA_TYPE
from imaginator.export.source import ExportError
from tests.support.export_images import DERIVED, SOURCE, make_store

OPTIONS = ExportOptions(architecture="amd64")


@pytest.fixture
def store(tmp_path):
    return make_store(tmp_path / "store")


def read_json(path: Path):
    return json.loads(path.read_bytes())


def blob(directory: Path, digest: str) -> bytes:
    data = (directory / "blobs" / "sha256" / digest.removeprefix("sha256:")).read_bytes()
    assert hashlib.sha256(data).hexdigest() == digest.removeprefix("sha256:")
    return data


def tree(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*") if p.is_file()
    }


def test_layout_of_a_source_image(store, tmp_path):
    out = tmp_path / "oci"
    exported = export_image(store, SOURCE, str(out), OPTIONS)
    assert read_json(out / "oci-layout") == {"imageLayoutVersion": "1.0.0"}
    index = read_json(out / "index.json")
    assert index["mediaType"] == INDEX_MEDIA_TYPE and index["schemaVersion"] == 2
    image_entry, sbom_entry = index["manifests"]
    assert image_entry["digest"] == exported.manifest["digest"]
    assert image_entry["annotations"][REF_NAME] == SOURCE
    assert image_entry["platform"] == {"architecture": "amd64", "os": "linux"}
    manifest = json.loads(blob(out, image_entry["digest"]))
    assert manifest["mediaType"] == MANIFEST_MEDIA_TYPE
    assert [layer["mediaType"] for layer in manifest["layers"]] == [LAYER_MEDIA_TYPE]
    config = json.loads(blob(out, manifest["config"]["digest"]))
    assert config["config"] == {"Labels": {"Role": "base"}}
    assert config["created"] == "2026-01-02T03:04:05Z"
    assert (config["architecture"], config["os"]) == ("amd64", "linux")
    layer = blob(out, manifest["layers"][0]["digest"])
    diff_id = "sha256:" + hashlib.sha256(gzip.decompress(layer)).hexdigest()
    assert config["rootfs"] == {"type": "layers", "diff_ids": [diff_id]}
    assert config["history"] == [
        {"created": "2026-01-02T03:04:05Z", "created_by": f"imaginator {SOURCE}"}
    ]
    # The SBOM is an artifact whose subject is the image manifest.
    assert sbom_entry["artifactType"] == SPDX_MEDIA_TYPE
    sbom = json.loads(blob(out, sbom_entry["digest"]))
    assert sbom["subject"] == exported.manifest
    assert sbom["config"]["mediaType"] == "application/vnd.oci.empty.v1+json"
    assert blob(out, sbom["config"]["digest"]) == b"{}"
    document = json.loads(blob(out, sbom["layers"][0]["digest"]))
    assert document["spdxVersion"] == "SPDX-2.3" and document["name"] == SOURCE


def test_a_derived_image_carries_its_source_layer_and_a_diff_layer(store, tmp_path):
    source = export_image(store, SOURCE, str(tmp_path / "source"), OPTIONS)
    derived = export_image(store, DERIVED, str(tmp_path / "derived"), OPTIONS)
    assert [name for name, _ in derived.layers] == [SOURCE, DERIVED]
    assert derived.layers[0][1] == source.layers[0][1]  # the very same blob
    manifest = json.loads(blob(tmp_path / "derived", derived.manifest["digest"]))
    annotations = manifest["annotations"]
    assert annotations["org.imaginator.image.source"] == SOURCE
    assert annotations["org.opencontainers.image.revision"].startswith("0123456789abcdef")
    assert json.loads(annotations[COMPUTED_FILES]) == [
        {"Path": "/var/comp", "Source": "filegen:6972"}
    ]
    config = json.loads(blob(tmp_path / "derived", manifest["config"]["digest"]))
    assert config["config"]["Labels"] == {"Role": "app", "Team": "ops"}
    assert [h["created_by"] for h in config["history"]] == [
        f"imaginator {SOURCE}",
        f"imaginator {DERIVED}",
    ]


def test_both_images_in_one_layout_share_the_source_layer(store, tmp_path):
    out = tmp_path / "both"
    source = export_image(store, SOURCE, str(out), OPTIONS)
    derived = export_image(store, DERIVED, str(out), OPTIONS)
    assert derived.layers[0][1].digest == source.layers[0][1].digest
    refs = [m["annotations"].get(REF_NAME) for m in read_json(out / "index.json")["manifests"]]
    assert refs == [SOURCE, None, DERIVED, None]
    # Exporting again replaces the entries instead of adding more.
    export_image(store, SOURCE, str(out), OPTIONS)
    refs = [m["annotations"].get(REF_NAME) for m in read_json(out / "index.json")["manifests"]]
    assert refs == [DERIVED, None, SOURCE, None]
    blobs = os.listdir(out / "blobs" / "sha256")
    assert not [name for name in blobs if name.startswith(".tmp")]


def test_a_layout_is_byte_identical_across_runs(store, tmp_path):
    export_image(store, DERIVED, str(tmp_path / "a"), OPTIONS)
    export_image(store, DERIVED, str(tmp_path / "b"), OPTIONS)
    assert tree(tmp_path / "a") == tree(tmp_path / "b")
    sde = ExportOptions(architecture="amd64", source_date_epoch=1_700_000_000)
    export_image(store, DERIVED, str(tmp_path / "c"), sde)
    export_image(store, DERIVED, str(tmp_path / "d"), sde)
    assert tree(tmp_path / "c") == tree(tmp_path / "d") != tree(tmp_path / "a")
    index = read_json(tmp_path / "c" / "index.json")
    manifest = json.loads(blob(tmp_path / "c", index["manifests"][0]["digest"]))
    config = json.loads(blob(tmp_path / "c", manifest["config"]["digest"]))
    assert config["created"] == "2023-11-14T22:13:20Z"


def test_source_chain_stops_at_a_missing_source(store, tmp_path):
    image = store.get_image(DERIVED)
    image.source_image = "base/test/2000-01-01:00:00:00"
    assert [name for name, _ in layer_chain(store, DERIVED, image)] == [DERIVED]
    image.source_image = "not a valid name"
    assert [name for name, _ in layer_chain(store, DERIVED, image)] == [DERIVED]


def test_refuses_a_directory_that_is_not_a_layout(store, tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(ExportError, match="not empty and not an OCI image layout"):
        export_image(store, SOURCE, str(tmp_path / "full"), OPTIONS)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "oci-layout").write_text('{"imageLayoutVersion": "2"}')
    with pytest.raises(ExportError, match="imageLayoutVersion"):
        Layout(str(tmp_path / "bad"))
    (tmp_path / "bad" / "oci-layout").write_text("{")
    with pytest.raises(ExportError, match="oci-layout: not JSON"):
        Layout(str(tmp_path / "bad"))


def test_unknown_image_and_no_sbom(store, tmp_path):
    with pytest.raises(ExportError, match="unknown image: nope/2026-01-01:00:00:00"):
        export_image(store, "nope/2026-01-01:00:00:00", str(tmp_path / "x"))
    exported = export_image(
        store, SOURCE, str(tmp_path / "y"), ExportOptions(sbom=False, ref_name="v1")
    )
    assert exported.sbom is None
    index = read_json(tmp_path / "y" / "index.json")
    assert [m["annotations"][REF_NAME] for m in index["manifests"]] == ["v1"]
