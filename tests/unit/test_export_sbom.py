"""SBOMs (imaginator.export.sbom): SPDX 2.3 checked by the SPDX tools, CycloneDX 1.5."""

from __future__ import annotations

import json

import pytest
from spdx_tools.spdx.parser.parse_anything import parse_file
from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

from imaginator.export.sbom import (
    Distribution,
    created_seconds,
    image_sbom,
    package_url,
    parse_os_release,
    read_distribution,
    resolve,
)
from imaginator.image.model import Image, RegularInode
from tests.support.export_images import DERIVED, SOURCE, Tree, make_store

#: What SPDX 2.3 requires of a document and of each package (clauses 6 and 7).
DOCUMENT_FIELDS = {
    "spdxVersion",
    "dataLicense",
    "SPDXID",
    "name",
    "documentNamespace",
    "creationInfo",
}
PACKAGE_FIELDS = {"SPDXID", "name", "downloadLocation"}


@pytest.fixture
def store(tmp_path):
    return make_store(tmp_path / "store")


def test_spdx_document_is_valid_spdx_2_3(store, tmp_path):
    image = store.get_image(DERIVED)
    data = image_sbom(store, DERIVED, image)
    path = tmp_path / "sbom.spdx.json"
    path.write_bytes(data)
    document = parse_file(str(path))
    assert validate_full_spdx_document(document) == []
    value = json.loads(data)
    assert DOCUMENT_FIELDS <= value.keys()
    assert (value["spdxVersion"], value["dataLicense"], value["SPDXID"]) == (
        "SPDX-2.3",
        "CC0-1.0",
        "SPDXRef-DOCUMENT",
    )
    assert value["creationInfo"]["created"] == "2026-01-02T03:05:00Z"
    assert value["creationInfo"]["creators"][0].startswith("Tool: imaginator-")
    for package in value["packages"]:
        assert PACKAGE_FIELDS <= package.keys()
        assert package["filesAnalyzed"] is False  # else a verification code is required
    names = [(p["name"], p.get("versionInfo")) for p in value["packages"][1:]]
    assert names == [(p.name, p.version) for p in image.packages]
    less = value["packages"][3]
    assert (
        less["externalRefs"][0]["referenceLocator"] == "pkg:deb/debian/less@590-3?distro=debian-12"
    )
    contains = [r for r in value["relationships"] if r["relationshipType"] == "CONTAINS"]
    assert len(contains) == len(image.packages)
    describes = [r for r in value["relationships"] if r["relationshipType"] == "DESCRIBES"]
    assert describes == [
        {
            "spdxElementId": "SPDXRef-DOCUMENT",
            "relationshipType": "DESCRIBES",
            "relatedSpdxElement": "SPDXRef-Image",
        }
    ]


def test_sbom_is_deterministic_and_follows_source_date_epoch(store):
    image = store.get_image(SOURCE)
    assert image_sbom(store, SOURCE, image) == image_sbom(store, SOURCE, image)
    clamped = json.loads(image_sbom(store, SOURCE, image, source_date_epoch=1_000_000_000))
    assert clamped["creationInfo"]["created"] == "2001-09-09T01:46:40Z"
    other = json.loads(image_sbom(store, DERIVED, store.get_image(DERIVED)))
    assert other["documentNamespace"] != clamped["documentNamespace"]
    assert other["documentNamespace"].startswith("urn:uuid:")


def test_cyclonedx_document(store):
    image = store.get_image(DERIVED)
    value = json.loads(image_sbom(store, DERIVED, image, kind="cyclonedx"))
    assert (value["bomFormat"], value["specVersion"], value["version"]) == ("CycloneDX", "1.5", 1)
    assert value["serialNumber"].startswith("urn:uuid:")
    assert value["metadata"]["component"]["name"] == DERIVED
    assert value["metadata"]["timestamp"] == "2026-01-02T03:05:00Z"
    assert [(c["name"], c["version"]) for c in value["components"]] == [
        (p.name, p.version) for p in image.packages
    ]
    assert (
        value["components"][3]["purl"] == "pkg:deb/debian/zlib1g@1%3A1.2.13.dfsg-0?distro=debian-12"
    )
    assert value["dependencies"][0]["dependsOn"] == [c["bom-ref"] for c in value["components"]]
    with pytest.raises(ValueError, match="unknown SBOM format"):
        image_sbom(store, DERIVED, image, kind="swid")


def test_distribution_follows_symlinks_inside_the_image(store):
    t = Tree(store)
    t.dir("/etc")
    t.symlink("/etc/os-release", "../usr/lib/os-release")
    t.dir("/usr")
    t.dir("/usr/lib")
    t.file("/usr/lib/os-release", b"ID=ubuntu\nVERSION_ID='24.04'\n")
    t.symlink("/loop", "/loop")
    image = Image(file_system=t.fs())
    assert read_distribution(store, image) == Distribution("", "ubuntu", "24.04", "")
    assert isinstance(resolve(image.file_system, "/etc/os-release"), RegularInode)
    assert resolve(image.file_system, "/loop") is None
    assert resolve(image.file_system, "/etc/../usr/lib") is not None
    assert read_distribution(store, Image()) == Distribution()


def test_os_release_parsing_and_package_urls():
    assert parse_os_release(b'# c\nNAME="A \\"B\\""\nID=x\nbad line\n') == {
        "NAME": 'A "B"',
        "ID": "x",
    }
    deb = Distribution("deb", "debian", "12")
    assert package_url(deb, "libstdc++6", "12.2.0-14") == (
        "pkg:deb/debian/libstdc%2B%2B6@12.2.0-14?distro=debian-12"
    )
    assert package_url(Distribution(), "x", "1") == ""
    assert package_url(Distribution("apk"), "musl", "1.2") == "pkg:apk/musl@1.2"


def test_created_seconds():
    assert created_seconds(Image(created_on=5_500_000_000)) == 5
    assert created_seconds(Image(created_on=5_500_000_000), 3) == 3
    assert created_seconds(Image(), 7) == 7
    assert created_seconds(Image()) == 0
