"""The image diff page and the SBOM answers (imaginator.web.diff_pages)."""

from __future__ import annotations

import html
import json
from typing import Any

import pytest
from klein import Klein
from klein.resource import KleinResource
from twisted.internet.task import Clock

from imaginator.export.diff import diff_images
from imaginator.image.model import Image
from imaginator.store.base import InvalidNameError
from imaginator.store.local import LocalImageStore
from imaginator.store.names import check_image_name
from imaginator.web.archive_pages import quote_query
from imaginator.web.diff_pages import DiffPages
from tests.support.export_images import DERIVED, SOURCE, make_store
from tests.support.web import Answer, answer, assert_security_headers, start, tables

EVIL = "evil/<script>&x/2026-01-01:00:00:00"


class AsyncStore:
    """The embedded store behind the async calls the pages make."""

    def __init__(self, store: LocalImageStore) -> None:
        self.store = store

    async def get_image(self, name: str) -> Image | None:
        check_image_name(name)
        return self.store.get_image(name)

    async def get_object(self, hash_hex: str) -> bytes:
        return self.store.read_object(hash_hex)


class Runner:
    def __init__(self) -> None:
        self.calls: list[Any] = []

    async def __call__(self, fn, *args):
        self.calls.append(fn)
        return fn(*args)


@pytest.fixture
def store(tmp_path):
    store = make_store(tmp_path / "store")
    evil = store.get_image(SOURCE)
    evil.tags = {"<b>tag</b>": "<script>x</script>"}
    store.add_image(EVIL, evil)
    return store


def get(store, target: str, runner: Runner | None = None) -> Answer:
    app = Klein()
    clock = Clock()
    clock.advance(1_800_000_000)
    DiffPages(AsyncStore(store), runner or Runner(), clock, "9.9").install(app)
    return answer(start(KleinResource(app), target))


def test_diff_page_renders_every_section(store):
    runner = Runner()
    a = get(store, f"/diffImages?{quote_query(SOURCE)}&{quote_query(DERIVED)}", runner)
    assert a.code == 200 and a.headers["content-type"] == "text/html; charset=utf-8"
    assert_security_headers(a)
    assert diff_images in runner.calls  # computed off the reactor
    body = a.text
    assert f"<h3>Changes from image {SOURCE} to {DERIVED}</h3>" in body
    assert f'<a href="showImage?{SOURCE}">{SOURCE}</a>' in body
    assert "Files: 1 added, 6 removed, 8 changed" in body
    assert "Packages: 1 added, 1 removed, 1 upgraded, 1 downgraded" in body
    found = tables(body)
    metadata, files, packages, tags = found
    assert metadata[1][1][:2] == ["SourceImage", "<code></code>"]
    assert ["+", "<code>/bin/new</code>"] == files[1][1][:2]
    assert any(row[1][:2] == ["~ mode", "<code>/etc/mode</code>"] for row in files)
    assert ["upgraded", "less", "590-2", "590-3"] in [row[1] for row in packages]
    assert ["changed", "Role", "base", "app"] in [row[1] for row in tags]
    assert "+ /var/cache/.*\n- /tmp/.*\n" in body
    assert "+ {&#34;MatchLines&#34;: [&#34;/etc/ssh/.*&#34;]" in body
    assert "with imaginator 9.9" in body


def test_diff_page_escapes_names_and_values(store):
    a = get(store, f"/diffImages?{quote_query(EVIL)}&{quote_query(SOURCE)}")
    assert a.code == 200
    assert "<script>" not in a.text and "<b>tag</b>" not in a.text
    assert html.escape(EVIL, quote=False) in a.text
    assert "evil/%3Cscript%3E%26x/2026-01-01:00:00:00" in a.text


def test_diff_as_json(store):
    a = get(store, f"/diffImages?{SOURCE}&{DERIVED}&json")
    assert a.code == 200 and a.headers["content-type"] == "application/json; charset=utf-8"
    value = json.loads(a.body)
    assert value["Packages"]["Added"] == [{"Name": "hello", "Version": "2.10-3", "Size": 50}]


def test_no_differences(store):
    a = get(store, f"/diffImages?{SOURCE}&{SOURCE}")
    assert "<b>No differences</b>" in a.text and tables(a.text) == []


@pytest.mark.parametrize("query", ["", "?", f"?{SOURCE}", f"?{SOURCE}&", "?a&b&c", "?&x"])
def test_bad_query(store, query):
    a = get(store, f"/diffImages{query}")
    assert a.code == 400 and a.body.startswith(b"usage: /diffImages?OLD&NEW")
    assert_security_headers(a)


@pytest.mark.parametrize("missing", ["nope/2026-01-01:00:00:00", "../etc"])
def test_unknown_image(store, missing):
    a = get(store, f"/diffImages?{SOURCE}&{quote_query(missing)}")
    assert (a.code, a.body) == (404, f"unknown image: {missing}\n".encode())
    assert a.headers["content-type"] == "text/plain; charset=utf-8"
    with pytest.raises(InvalidNameError):
        check_image_name("../etc")


def test_sbom_answers(store):
    a = get(store, f"/showImageSbom?{DERIVED}")
    assert a.code == 200 and a.headers["content-type"] == "application/spdx+json; charset=utf-8"
    value = json.loads(a.body)
    assert value["spdxVersion"] == "SPDX-2.3"
    assert value["packages"][3]["externalRefs"][0]["referenceLocator"].startswith(
        "pkg:deb/debian/less@590-3"
    )
    c = get(store, f"/showImageCycloneDx?{DERIVED}")
    assert c.headers["content-type"] == "application/vnd.cyclonedx+json; charset=utf-8"
    assert json.loads(c.body)["specVersion"] == "1.5"
    assert get(store, "/showImageSbom?nope/2026-01-01:00:00:00").code == 404
