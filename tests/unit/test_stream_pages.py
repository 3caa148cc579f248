"""The stream, image and image list pages (imaginator.web.stream_pages)."""

from __future__ import annotations

import html
import json
import re
import stat
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from klein import Klein
from klein.resource import KleinResource
from twisted.internet.task import Clock

from imaginator.config.main import MainConfig, parse_main_config
from imaginator.config.streams import StreamConfig, parse_streams
from imaginator.goformats.units import format_time
from imaginator.image.model import (
    Annotation,
    DirectoryInode,
    FileSystem,
    Image,
    Package,
    RegularInode,
    SymlinkInode,
    image_from_json,
)
from imaginator.image.triggers import Trigger
from imaginator.pipeline.report import ManifestFile, ManifestSnapshot
from imaginator.runtime.buildlog import BuildLog
from imaginator.runtime.stages import StageTime
from imaginator.scheduler import BuildResult, CurrentBuild
from imaginator.store.base import MissingObjectError, StoreError
from imaginator.store.local import AsyncImageStore, LocalImageStore
from imaginator.store.names import check_directory_name, check_image_name
from imaginator.web.pages import StatusPages
from imaginator.web.stream_pages import (
    MAX_FILES,
    MAX_IMAGE_DETAILS,
    ImageSource,
    StreamPages,
    StreamSource,
    count_entries,
    file_rows,
)
from tests.support.fakes import FakeReactor, SyncThreadPool
from tests.support.vectors import VECTORS
from tests.support.web import Answer, Request, answer, assert_security_headers, start, tables

NOW = 1_800_000_000.0
STARTED = NOW - 100.0
NS = 1_000_000_000
EVIL = "<script>alert(1)</script>&"
SECRET = "hunter2-secret"
BUILD_LOG_HASH = bytes(range(64))


def vector_text(name: str) -> str:
    return (VECTORS / name).read_text("utf-8")


def vector_config() -> MainConfig:
    return parse_main_config(
        (VECTORS / "config-imaginator-conf.json").read_bytes(), "conf.json", "amd64"
    )


def vector_streams() -> dict[str, StreamConfig]:
    doc = parse_streams((VECTORS / "config-image-streams.json").read_bytes(), "s.json", "amd64")
    return dict(doc.streams)


# -- fakes -----------------------------------------------------------------------------


@dataclass
class FakeBuilder:
    """The builder state the pages read; ``secrets`` must never show up on a page."""

    config: MainConfig = field(default_factory=vector_config)
    streams: dict[str, StreamConfig] = field(default_factory=vector_streams)
    auto: frozenset[str] = frozenset()
    results: dict[str, BuildResult] = field(default_factory=dict)
    current: list[CurrentBuild] = field(default_factory=list)
    running: int = 0

    def normal_streams(self) -> dict[str, StreamConfig]:
        return self.streams

    def stream_names(self) -> list[str]:
        return sorted(set(self.config.bootstrap_streams) | set(self.streams))

    def auto_rebuild_streams(self) -> frozenset[str]:
        return self.auto

    def last_result(self, stream: str) -> BuildResult | None:
        return self.results.get(stream)

    def last_results(self) -> list[BuildResult]:
        return [self.results[s] for s in sorted(self.results)]

    def current_builds(self) -> list[CurrentBuild]:
        return list(self.current)

    def running_count(self) -> int:
        return self.running

    def secret_values(self) -> dict[str, str]:
        return {"SECRET": SECRET}


@dataclass
class FakeStore:
    """An in-memory store with the AsyncImageStore calls; records what was read."""

    images: dict[str, Image] = field(default_factory=dict)
    objects: dict[str, bytes] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)
    broken: set[str] = field(default_factory=set)

    async def list_images(self) -> list[str]:
        self.calls.append(("list_images", ""))
        return sorted(self.images)

    async def get_image(self, name: str) -> Image | None:
        self.calls.append(("get_image", name))
        check_image_name(name)
        if name in self.broken:
            raise StoreError(f"image {name}: bad record")
        return self.images.get(name)

    async def find_latest_image(self, directory: str) -> str | None:
        self.calls.append(("find_latest_image", directory))
        check_directory_name(directory)
        mine = [
            (i.created_on, n) for n, i in self.images.items() if n.rpartition("/")[0] == directory
        ]
        return max(mine)[1] if mine else None

    async def get_object(self, hash_hex: str) -> bytes:
        self.calls.append(("get_object", hash_hex))
        if hash_hex not in self.objects:
            raise MissingObjectError(f"object: {hash_hex} is not available")
        return self.objects[hash_hex]

    def read(self, method: str) -> list[str]:
        return [arg for m, arg in self.calls if m == method]


def _protocols(builder: FakeBuilder, store: FakeStore) -> tuple[StreamSource, ImageSource]:
    return builder, store  # lets a type checker confirm the fakes satisfy the Protocols


def small_fs() -> FileSystem:
    """``/bin`` (dir), ``/bin/sh`` (file), ``/bin/ls`` (hard link), ``/sh`` (symlink)."""
    table = {
        2: DirectoryInode([("ls", 3), ("sh", 3)], stat.S_IFDIR | 0o755),
        3: RegularInode(stat.S_IFREG | 0o755, 0, 0, int(NOW), 0, 1234, b"\x01" * 64),
        4: SymlinkInode(0, 0, "/bin/sh"),
    }
    fs = FileSystem(table, DirectoryInode([("bin", 2), ("sh", 4)]))
    fs.recompute_totals()
    return fs


def make_image(created: float, **kwargs: Any) -> Image:
    values: dict[str, Any] = {
        "created_on": int(created * NS),
        "expires_at": int((created + 3600) * NS),
        "created_by": "imaginator",
        "file_system": small_fs(),
    }
    values.update(kwargs)
    return Image(**values)


def make_clock() -> Clock:
    clock = Clock()
    clock.advance(NOW)
    return clock


# -- requests ----------------------------------------------------------------------------


def make_pages(builder: FakeBuilder | None = None, store: FakeStore | None = None) -> StreamPages:
    builder = builder or FakeBuilder()
    store = store or FakeStore()
    return StreamPages(builder, store, make_clock(), "amd64", "9.9.9", started_at=STARTED)


def get(
    target: str,
    builder: FakeBuilder | None = None,
    store: FakeStore | None = None,
    method: bytes = b"GET",
) -> Answer:
    app = Klein()
    make_pages(builder, store).install(app)
    req = start(KleinResource(app), target, method)
    assert req.finished, f"{target}: request not finished"
    result = answer(req)
    assert_security_headers(result)
    return result


def assert_no_raw_evil(text: str) -> None:
    assert "<script>" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&amp;" in text


# -- /showImageStreams ------------------------------------------------------------------


def test_show_streams_matches_the_go_table():
    a = get("/showImageStreams")
    assert a.code == 200
    assert a.headers["content-type"] == "text/html; charset=utf-8"
    assert "<title>imaginator image streams</title>" in a.text
    ours = tables(a.text)
    theirs = tables(vector_text("html-showImageStreams.html"))
    assert len(ours) == len(theirs) == 1

    def unescaped(rows: list[tuple[str, list[str]]]) -> list[tuple[str, list[str]]]:
        return [(attrs, [html.unescape(c) for c in cells]) for attrs, cells in rows]

    assert unescaped(ours[0]) == unescaped(theirs[0])
    assert "<td>broken&nbsp;</td>" in a.text


def test_show_streams_bold_auto_and_expands_without_secrets():
    builder = FakeBuilder()
    builder.streams["apps/leaf"] = StreamConfig(
        manifest_url="https://git.example/$IMAGE_STREAM_DIRECTORY_NAME.git",
        manifest_directory="d/${IMAGE_STREAM_LEAF_NAME}/$SECRET",
    )
    builder.auto = frozenset({"apps/hello"})
    a = get("/showImageStreams", builder)
    rows = {html.unescape(re.sub("<[^>]+>", "", cells[0])): cells for _, cells in tables(a.text)[0]}
    assert rows["apps/hello"][0] == '<b><a href="showImageStream?apps/hello">apps/hello</a></b>'
    assert "<b>" not in rows["apps/broken"][0]
    # ManifestUrl raw (unexpanded); the directory raw plus &nbsp; and expanded with
    # the stream environment only: $SECRET stays unknown (empty).
    assert rows["apps/leaf"][1:] == [
        "https://git.example/$IMAGE_STREAM_DIRECTORY_NAME.git",
        "d/${IMAGE_STREAM_LEAF_NAME}/$SECRET&nbsp;",
        "d/leaf/",
    ]
    assert SECRET not in a.text


def test_show_streams_escapes_and_hides_url_passwords():
    builder = FakeBuilder()
    builder.streams[EVIL] = StreamConfig(
        manifest_url="https://bob:pw@git.example/r.git", manifest_directory=EVIL
    )
    a = get("/showImageStreams", builder)
    assert_no_raw_evil(a.text)
    assert 'href="showImageStream?%3Cscript%3Ealert(1)%3C/script%3E%26"' in a.text
    assert "https://bob:***@git.example/r.git" in a.text
    assert ":pw@" not in a.text


# -- /showImageStream: bootstrap --------------------------------------------------------


def _between(text: str, start: str, end: str) -> str:
    i = text.index(start)
    return text[i : text.index(end, i) + len(end)]


def test_bootstrap_stream_matches_the_go_page():
    a = get("/showImageStream?bootstrap/bb")
    assert a.code == 200
    assert "<title>image stream bootstrap/bb</title>" in a.text
    assert "<h3>Information for stream: bootstrap/bb</h3>" in a.text
    start = "Bootstrap command:"
    theirs = _between(vector_text("html-showImageStream-bootstrap-bb.html"), start, "exit 2\n")
    ours = html.unescape(_between(a.text, start, "exit 2\n"))
    # The one intended difference: our packager script quotes single quotes correctly.
    theirs = theirs.replace("exec echo 'it's Bob's'", "exec echo 'it'\\''s Bob'\\''s'")
    assert ours == theirs
    assert 'exit 2\n</pre><p style="clear: both;">\n' in a.text


def test_bootstrap_stream_image_filter_triggers_tags_and_unknown_packager():
    builder = FakeBuilder()
    bb = builder.config.bootstrap_streams["bootstrap/bb"]
    stream = replace(
        bb,
        packager_type="nope",
        image_filter=("/etc/x",),
        image_triggers=(Trigger(match_lines=("/etc/ssh/.*",), service="sshd"),),
        image_tags={"Role": EVIL},
    )
    builder.config = replace(builder.config, bootstrap_streams={"bootstrap/bb": stream})
    a = get("/showImageStream?bootstrap/bb", builder)
    assert "<b>Packager type: <code>nope</code> unknown</b>" in a.text
    assert "Package installer script" not in a.text
    assert (
        'Image filter lines:<br>\n<pre style="background-color: #eee; border: 1px solid' in a.text
    )
    assert "[\n    &#34;/etc/x&#34;\n]\n</pre>" in a.text
    triggers = html.unescape(_between(a.text, "Image triggers:", "</pre>"))
    assert json.loads(triggers.split("\n", 2)[2].removesuffix("</pre>")) == [
        {"MatchLines": ["/etc/ssh/.*"], "Service": "sshd"}
    ]
    assert "Image tags:" in a.text
    assert "<script>" not in a.text
    assert "\\u003cscript\\u003e" in a.text  # Go's JSON escaping, then HTML-escaped


def test_stream_page_shows_latest_image_last_build_and_images():
    store = FakeStore()
    names = [f"bootstrap/bb/2027-01-15:08:00:0{i}" for i in range(3)]
    for i, name in enumerate(names):
        store.images[name] = make_image(NOW - 1000 + i)
    store.images["bootstrap/bb/sub/2027-01-15:08:00:09"] = make_image(NOW)  # not this stream
    builder = FakeBuilder()
    builder.results["bootstrap/bb"] = BuildResult(
        "bootstrap/bb", names[-1], NOW - 60, NOW - 30, b"log", requestor="alice"
    )
    a = get("/showImageStream?bootstrap/bb", builder, store)
    latest = f'Latest image: <a href="showImage?{names[-1]}">{names[-1]}</a><br>'
    assert latest in a.text
    assert (
        'Last build: <a href="showLastBuildLog?bootstrap/bb">succeeded</a> at '
        f"{format_time(NOW - 30)} (30s ago) in 30s: "
        f'<a href="showImage?{names[-1]}">{names[-1]}</a><br>'
    ) in a.text
    (images,) = tables(a.text)
    assert images[0][1] == ["Name", "Created", "Expires", "Changes"]
    assert [cells[0] for _, cells in images[1:]] == [
        f'<a href="showImage?{n}">{n}</a>' for n in reversed(names)
    ]
    assert images[1][1][1:3] == [format_time(NOW - 998), format_time(NOW - 998 + 3600)]
    # Each image links to the diff from the one before it; the oldest has none.
    assert [cells[3] for _, cells in images[1:]] == [
        f'<a href="diffImages?{names[1]}&amp;{names[2]}">diff</a>',
        f'<a href="diffImages?{names[0]}&amp;{names[1]}">diff</a>',
        "",
    ]
    assert "Images of this stream (3)" in a.text


def test_stream_page_failed_and_running_build():
    builder = FakeBuilder()
    builder.results["apps/broken"] = BuildResult(
        "apps/broken", "", NOW - 50, NOW - 40, b"", error=f"exit status 1 {EVIL}"
    )
    builder.current = [CurrentBuild("apps/broken", NOW - 5, log=None)]  # type: ignore[arg-type]
    a = get("/showImageStream?apps/broken", builder)
    assert 'Last build: <a href="showLastBuildLog?apps/broken">failed</a>' in a.text
    assert "after 10s: <b>exit status 1 &lt;script&gt;" in a.text
    assert '<a href="showCurrentBuildLog?apps/broken#bottom">log</a>' in a.text
    assert "No unexpired image in the store<br>" in a.text
    assert "No images of this stream in the store<br>" in a.text
    assert_no_raw_evil(a.text)


def test_stream_page_reads_a_bounded_number_of_image_records():
    store = FakeStore()
    count = MAX_IMAGE_DETAILS + 15
    for i in range(count):
        store.images[f"apps/hello/2027-01-15:08:{i // 60:02d}:{i % 60:02d}"] = make_image(NOW + i)
    a = get("/showImageStream?apps/hello", store=store)
    assert len(store.read("get_image")) == MAX_IMAGE_DETAILS  # the latest is among them
    rows = tables(a.text)[0][1:]
    assert len(rows) == count
    assert all(cells[1] for _, cells in rows[:MAX_IMAGE_DETAILS])
    assert not any(cells[1] for _, cells in rows[MAX_IMAGE_DETAILS:])
    assert f"Dates shown for the newest {MAX_IMAGE_DETAILS} images only." in a.text


def test_stream_page_survives_an_unreadable_record():
    store = FakeStore()
    store.images["apps/hello/2027-01-15:08:00:00"] = make_image(NOW)
    store.broken.add("apps/hello/2027-01-15:08:00:00")
    a = get("/showImageStream?apps/hello", store=store)
    assert a.code == 200
    assert "No unexpired image in the store" in a.text


# -- /showImageStream: normal -----------------------------------------------------------


def test_normal_stream_matches_the_go_header_lines():
    a = get("/showImageStream?apps/hello")
    assert "<title>image stream apps/hello</title>" in a.text
    theirs = vector_text("html-showImageStream-apps-hello.html").split("\n")
    ours = [html.unescape(line) for line in a.text.split("\n")]
    for line in theirs[2:5]:  # h3, Manifest URL, Manifest Directory
        assert line in ours
    assert "(expanded)" not in a.text


def test_normal_stream_shows_the_latest_image_instead_of_fetching():
    builder = FakeBuilder()
    builder.streams["apps/hello"] = StreamConfig(
        builder_groups=("devs", "ops"),
        builder_users=("alice",),
        manifest_url="https://u:pw@git.example/${IMAGE_STREAM_LEAF_NAME}.git",
        manifest_directory="$IMAGE_STREAM/$SECRET",
        variables={"VERSION": "1.2", "EVIL": EVIL},
    )
    store = FakeStore()
    name = "apps/hello/2027-01-15:08:00:00"
    store.images[name] = make_image(
        NOW,
        build_branch="main",
        build_commit_id="c0ffee",
        source_image="bootstrap/bb/2027-01-15:07:00:00",
    )
    a = get("/showImageStream?apps/hello", builder, store)
    text = a.text
    assert "BuilderGroups: devs, ops<br>" in text
    assert "BuilderUsers: alice<br>" in text
    assert (
        "Manifest URL: <code>https://u:***@git.example/${IMAGE_STREAM_LEAF_NAME}.git</code>" in text
    )
    assert "Manifest URL (expanded): <code>https://u:***@git.example/hello.git</code>" in text
    assert "Manifest Directory: <code>$IMAGE_STREAM/$SECRET</code><br>" in text
    assert "Manifest Directory (expanded): <code>apps/hello/</code><br>" in text
    assert "BuildBranch: <code>main</code><br>" in text
    assert "BuildCommitId: <code>c0ffee</code><br>" in text
    assert (
        'SourceImage: <a href="showImage?bootstrap/bb/2027-01-15:07:00:00">'
        "<code>bootstrap/bb/2027-01-15:07:00:00</code></a> "
        '(stream <a href="showImageStream?bootstrap/bb"><code>bootstrap/bb</code></a>)<br>'
    ) in text
    assert '"VERSION": "1.2"' in html.unescape(text)
    assert "Contents of" not in text and "Logging output" not in text
    assert SECRET not in text and ":pw@" not in text
    assert "<script>" not in text
    assert store.read("find_latest_image") == ["apps/hello"]


def test_source_image_that_is_a_stream_name_links_the_stream():
    store = FakeStore()
    store.images["apps/hello/2027-01-15:08:00:00"] = make_image(NOW, source_image="bootstrap/bb")
    a = get("/showImageStream?apps/hello", store=store)
    assert (
        'SourceImage: <a href="showImageStream?bootstrap/bb"><code>bootstrap/bb</code></a><br>'
    ) in a.text


@pytest.mark.parametrize("name", ["no/such", "", EVIL, "pattern/only"])
def test_unknown_stream(name):
    builder = FakeBuilder()
    store = FakeStore()
    a = get(f"/showImageStream?{name}", builder, store)
    assert a.code == 200
    assert f"<b>Stream: {html.escape(name)} does not exist!</b>" in a.text
    assert "<script>" not in a.text
    assert store.calls == []


# -- /showImage -------------------------------------------------------------------------


def bb_image() -> Image:
    return image_from_json(json.loads(vector_text("image-bb.json"))["Image"])


def hello_image() -> Image:
    return image_from_json(json.loads(vector_text("image-hello.json"))["Image"])


def test_show_image_of_the_vector():
    store = FakeStore()
    name = "apps/hello/2026-11-27:10:53:19"
    store.images[name] = hello_image()
    a = get(f"/showImage?{name}", store=store)
    assert a.code == 200
    text = a.text
    assert f"<title>image {name}</title>" in text
    assert 'Image stream: <a href="showImageStream?apps/hello">apps/hello</a><br>' in text
    image = store.images[name]
    assert f"CreatedOn: {format_time(image.created_on / NS)}<br>" in text
    assert f"ExpiresAt: {format_time(image.expires_at / NS)}<br>" in text
    assert "CreatedFor: peer-client<br>" in text
    assert '(stream <a href="showImageStream?bootstrap/bb">' in text
    assert f'Build log: <a href="showImageBuildLog?{name}">log</a><br>' in text
    assert (
        f'SBOM: <a href="showImageSbom?{name}">SPDX</a>, '
        f'<a href="showImageCycloneDx?{name}">CycloneDX</a><br>'
    ) in text
    assert "OwnerGroups: devs<br>" in text and "OwnerUsers: alice<br>" in text
    assert f'Download: <a href="imageTarball?{name}">tarball</a>' in text
    plain = html.unescape(text)
    assert '"Role": "hello"' in plain
    assert '"/etc/motd\\\\.local"' in plain
    assert '"Service": "motd-svc"' in plain
    packages, files = tables(text)
    assert packages[1][1] == ["busybox", "1.35", "42 KiB"]
    paths = {html.unescape(re.sub("<[^>]+>", "", c[0])): c for _, c in files[1:]}
    assert paths["/etc/motd"][1] == "<code>-rw-r--r--</code>"


def test_show_image_file_listing():
    store = FakeStore()
    store.images["bootstrap/bb/2026-11-27:10:53:19"] = bb_image()
    a = get("/showImage?bootstrap/bb/2026-11-27:10:53:19", store=store)
    files = tables(a.text)[1]
    assert files[0][1] == ["Path", "Mode", "Uid", "Gid", "Size", "Modified", "Target"]
    rows = {re.sub("<[^>]+>", "", c[0]): c for _, c in files[1:]}
    assert rows["/dev/null"][1] == "<code>crw-rw-rw-</code>" and rows["/dev/null"][4] == "1, 3"
    assert rows["/tmp"][1] == "<code>drwxrwxrwt</code>"
    assert rows["/bin/sh"][1] == "<code>lrwxrwxrwx</code>"
    assert rows["/bin/sh"][6] == "-&gt; busybox"
    assert rows["/etc/greeting.hl"][6] == "hard link to /etc/greeting"
    assert rows["/bin/busybox"][4] == "1982256"
    assert "Number of files: " in a.text and "Total size: " in a.text


def test_show_image_caps_the_listing():
    count = MAX_FILES + 500
    table: dict[int, Any] = {
        i + 10: RegularInode(stat.S_IFREG | 0o644, 0, 0, 0, 0, 0) for i in range(count)
    }
    fs = FileSystem(table, DirectoryInode([(f"f{i:05d}", i + 10) for i in range(count)]))
    fs.recompute_totals()
    assert count_entries(fs) == count
    assert len(file_rows(fs)) == MAX_FILES
    store = FakeStore()
    store.images["big/2027-01-01:00:00:00"] = make_image(NOW, file_system=fs)
    a = get("/showImage?big/2027-01-01:00:00:00", store=store)
    assert len(tables(a.text)[-1]) == MAX_FILES + 1
    assert f"Showing the first {MAX_FILES} of {count} entries." in a.text
    assert f"Files ({count}):" in a.text


def test_show_image_escapes_everything():
    store = FakeStore()
    name = "apps/x/2027-01-01:00:00:00"
    fs = FileSystem(
        {5: SymlinkInode(0, 0, EVIL)},
        DirectoryInode([(EVIL, 5)]),
    )
    store.images[name] = make_image(
        NOW,
        created_for=EVIL,
        build_git_url=EVIL,
        build_branch=EVIL,
        packages=(Package(EVIL, 1, EVIL),),
        tags={EVIL: EVIL},
        owner_users=(EVIL,),
        file_system=fs,
        build_log=Annotation(url="javascript:alert(1)"),
    )
    a = get(f"/showImage?{name}", store=store)
    assert_no_raw_evil(a.text)
    assert "javascript:" not in a.text
    assert "Image stream: apps/x<br>" in a.text  # not a known stream: not linked


@pytest.mark.parametrize("target", ["/showImage?no/such/image", "/showImage?noslash", "/showImage"])
def test_show_image_unknown_is_404(target):
    a = get(target)
    assert a.code == 404
    assert a.body == b"404 page not found\n"


def test_show_image_unreadable_record_is_500():
    store = FakeStore()
    store.images["apps/x/1"] = make_image(NOW)
    store.broken.add("apps/x/1")
    a = get("/showImage?apps/x/1", store=store)
    assert a.code == 500
    assert a.headers["content-type"] == "text/plain; charset=utf-8"


# -- /showImageBuildLog -----------------------------------------------------------------


def test_show_image_build_log():
    store = FakeStore()
    name = "apps/hello/2027-01-01:00:00:00"
    store.images[name] = make_image(NOW, build_log=Annotation(object=BUILD_LOG_HASH))
    store.objects[BUILD_LOG_HASH.hex()] = f"line 1\n{EVIL}\n".encode()
    a = get(f"/showImageBuildLog?{name}", store=store)
    assert a.code == 200
    assert a.headers["content-type"] == "text/plain; charset=utf-8"
    assert a.body == f"line 1\n{EVIL}\n".encode()
    assert store.read("get_object") == [BUILD_LOG_HASH.hex()]


@pytest.mark.parametrize(
    ("name", "image"),
    [
        ("apps/a/1", None),
        ("apps/b/1", make_image(NOW)),
        ("apps/c/1", make_image(NOW, build_log=Annotation(object=BUILD_LOG_HASH))),
        ("noslash", None),
    ],
)
def test_show_image_build_log_missing_is_404(name, image):
    store = FakeStore()
    if image is not None:
        store.images[name] = image
    a = get(f"/showImageBuildLog?{name}", store=store)
    assert a.code == 404


# -- /listImages ------------------------------------------------------------------------


def test_list_images_grouped_by_stream():
    store = FakeStore()
    for name in [
        "apps/hello/2027-01-01:00:00:00",
        "apps/hello/2027-01-02:00:00:00",
        "bootstrap/bb/2027-01-01:00:00:00",
        "gone/stream/2027-01-01:00:00:00",
        f"{EVIL}/1",
    ]:
        store.images[name] = make_image(NOW)
    a = get("/listImages", store=store)
    assert a.code == 200
    text = a.text
    assert "Images in the store: 5" in text
    assert '<b><a href="showImageStream?apps/hello">apps/hello</a></b> (2):' in text
    assert "<b>gone/stream</b> (1):" in text
    hello = text.index("apps/hello/2027-01-02")
    assert hello < text.index("apps/hello/2027-01-01") < text.index("bootstrap/bb/2027")
    assert '<li><a href="showImage?bootstrap/bb/2027-01-01:00:00:00">' in text
    assert_no_raw_evil(text)
    assert store.read("get_image") == []


# -- wiring -----------------------------------------------------------------------------


def test_installs_beside_the_status_pages():
    status = StatusPages(
        source=FakeBuilder(),  # type: ignore[arg-type]
        clock=make_clock(),
        started_at=STARTED,
        hostname="vm",
        version="9.9.9",
        log_ring=None,
        image_link=lambda name: f"showImage?{name}",
    )
    make_pages().install(status.app)
    for target in ("/showImageStreams", "/metrics", "/listImages", "/healthz"):
        req = Request(target.encode())
        status.resource().render(req)
        assert req.code == 200, target
    req = Request(b"/showImage?a/b")
    status.resource().render(req)
    assert req.code == 404


def test_head_requests():
    a = get("/showImageStreams", method=b"HEAD")
    assert a.code == 200


# -- with the real embedded store -------------------------------------------------------


def test_pages_over_the_real_store(tmp_path):
    local = LocalImageStore(str(tmp_path / "store"))
    data_hex = local.put_object_bytes(b"hello\n")
    log_hex = local.put_object_bytes(b"build log line\n")
    fs = FileSystem(
        {2: RegularInode(stat.S_IFREG | 0o644, 0, 0, int(NOW), 0, 6, bytes.fromhex(data_hex))},
        DirectoryInode([("motd", 2)]),
    )
    fs.recompute_totals()
    name = local.reserve_image_name("apps/hello", NOW)
    image = Image(file_system=fs, build_log=Annotation(object=bytes.fromhex(log_hex)))
    local.add_image(name, image)
    reactor = FakeReactor()
    reactor.advance(NOW)
    store = AsyncImageStore(local, reactor, SyncThreadPool())
    app = Klein()
    StreamPages(FakeBuilder(), store, reactor, "amd64", "1").install(app)

    def fetch(target: str) -> Answer:
        req = Request(target.encode())
        KleinResource(app).render(req)
        assert req.finished, target
        return Answer(req.code, {}, b"".join(req.written))

    stream = fetch("/showImageStream?apps/hello")
    assert f'Latest image: <a href="showImage?{name}">{name}</a><br>' in stream.text
    page = fetch(f"/showImage?{name}")
    assert page.code == 200 and "<code>/motd</code>" in page.text
    assert fetch(f"/showImageBuildLog?{name}").body == b"build log line\n"
    assert fetch("/showImage?apps/hello/../x").code == 404
    assert name in fetch("/listImages").text
    assert "imaginator_images_total 1\n" in fetch("/metrics").text


# -- beyond the Go pages: expired images, stages, the manifest as read, JSON -------------


def hello_result(**kwargs: Any) -> BuildResult:
    values: dict[str, Any] = {
        "stream": "apps/hello",
        "image_name": "apps/hello/2027-01-15:07:59:00",
        "started_at": NOW - 90,
        "finished_at": NOW - 60,
        "log": b"log",
        "requestor": "alice",
        "stages": (StageTime("fetch manifest", 1.5), StageTime("scripts/9_first", 4.5)),
        "manifest": ManifestSnapshot(
            files=(
                ManifestFile("manifest", '{\n    "SourceImage": "bootstrap/bb"\n}\n'),
                ManifestFile("tags.json", f'{{"Role": "{EVIL}"}}\n', truncated=True),
            ),
            tree_size=21109,
            fetch_log=f"Copying manifest tree: /m/hello {EVIL}\n",
        ),
    }
    values.update(kwargs)
    return BuildResult(**values)


def test_stream_page_marks_expired_images():
    store = FakeStore()
    store.images["bootstrap/bb/2027-01-15:06:00:00"] = make_image(NOW - 7200)  # expired an hour ago
    store.images["bootstrap/bb/2027-01-15:07:59:00"] = make_image(NOW - 60)
    store.images["bootstrap/bb/2027-01-15:07:59:30"] = make_image(NOW - 30, expires_at=0)
    a = get("/showImageStream?bootstrap/bb", store=store)
    rows = {re.sub("<[^>]+>", "", cells[0]): cells[2] for _, cells in tables(a.text)[0][1:]}
    assert rows["bootstrap/bb/2027-01-15:06:00:00"] == (
        f'{format_time(NOW - 3600)} <b class="expired">(expired)</b>'
    )
    assert rows["bootstrap/bb/2027-01-15:07:59:00"] == format_time(NOW + 3540)
    assert rows["bootstrap/bb/2027-01-15:07:59:30"] == "never"


def test_stream_page_shows_the_stages_and_the_manifest_the_last_build_read():
    builder = FakeBuilder()
    builder.results["apps/hello"] = hello_result()
    text = get("/showImageStream?apps/hello", builder).text
    assert_no_raw_evil(text)
    stages = tables(text)[0]
    assert stages[0][1] == ["Stage", "Duration", "Share"]
    assert [cells for _, cells in stages[1:]] == [
        ["fetch manifest", "1.5s", "25.0%"],
        ["scripts/9_first", "4.5s", "75.0%"],
    ]
    assert f"The manifest as the last build read it ({format_time(NOW - 60)}):" in text
    assert (
        "Contents of <code>manifest</code> file:<br>\n"
        '<pre style="background-color: #eee; border: 1px solid #999; display: block; float: left;">'
        "\n{\n    &#34;SourceImage&#34;: &#34;bootstrap/bb&#34;\n}\n</pre>"
    ) in text
    assert "Contents of <code>tags.json</code> file (its start):" in text
    assert "Manifest tree size: 21109 B<br>" in text  # as the Go page says it
    assert '<hr style="height:2px"><font color="#bbb">\n<b>Logging output:</b>' in text
    assert "Copying manifest tree: /m/hello &lt;script&gt;" in text
    # Order of the Go page: the manifest's contents after the configuration.
    assert text.index("Manifest Directory:") < text.index("Contents of") < text.index("Last build")


def test_stream_page_without_a_manifest_snapshot_shows_no_contents():
    builder = FakeBuilder()
    builder.results["apps/hello"] = hello_result(manifest=None, error="error fetching", stages=())
    text = get("/showImageStream?apps/hello", builder).text
    assert "Contents of" not in text and "Manifest tree size" not in text
    assert 'class="stages"' not in text


def test_streams_json():
    builder = FakeBuilder()
    builder.streams["apps/leaf"] = StreamConfig(
        manifest_url="https://bob:$SECRET@git.example/r.git",
        manifest_directory="d/${IMAGE_STREAM_LEAF_NAME}/$SECRET",
    )
    builder.auto = frozenset({"apps/hello"})
    a = get("/showImageStreams?format=json", builder)
    assert a.headers["content-type"] == "application/json; charset=utf-8"
    streams = {s["Name"]: s for s in json.loads(a.body)["Streams"]}
    assert streams["apps/leaf"] == {
        "Name": "apps/leaf",
        "Kind": "manifest",
        "AutoRebuild": False,
        "ManifestUrl": "https://bob:***@git.example/r.git",
        "ManifestDirectory": "d/${IMAGE_STREAM_LEAF_NAME}/$SECRET",
        "ExpandedManifestDirectory": "d/leaf/",
    }
    assert streams["apps/hello"]["AutoRebuild"] is True
    assert streams["bootstrap/bb"]["Kind"] == "bootstrap"
    assert SECRET not in a.text


def test_stream_json():
    builder = FakeBuilder()
    builder.streams["apps/hello"] = StreamConfig(
        manifest_url="https://bob:$SECRET@git.example/$IMAGE_STREAM_LEAF_NAME.git",
        manifest_directory="hello",
        variables={"VERSION": "1.2"},
    )
    builder.results["apps/hello"] = hello_result()
    builder.current = [CurrentBuild("apps/hello", NOW - 5, BuildLog(), "bob")]
    store = FakeStore()
    store.images["apps/hello/2027-01-15:06:00:00"] = make_image(NOW - 7200)
    store.images["apps/hello/2027-01-15:07:59:00"] = make_image(
        NOW - 60, build_commit_id="c0ffee", source_image="bootstrap/bb/1"
    )
    a = get("/showImageStream?apps/hello&format=json", builder, store)
    assert a.code == 200 and a.headers["content-type"] == "application/json; charset=utf-8"
    data = json.loads(a.body)
    assert data["Name"] == "apps/hello" and data["AutoRebuild"] is False
    assert data["Configuration"] == {
        "Kind": "manifest",
        "ManifestUrl": "https://bob:***@git.example/$IMAGE_STREAM_LEAF_NAME.git",
        "ExpandedManifestUrl": "https://bob:***@git.example/hello.git",
        "ManifestDirectory": "hello",
        "ExpandedManifestDirectory": "hello",
        "BuilderGroups": [],
        "BuilderUsers": [],
        "Variables": {"VERSION": "1.2"},
    }
    assert data["LatestImage"] == {
        "Name": "apps/hello/2027-01-15:07:59:00",
        "CreatedOn": "2027-01-15T07:59:00Z",
        "ExpiresAt": "2027-01-15T08:59:00Z",
        "SourceImage": "bootstrap/bb/1",
        "BuildCommitId": "c0ffee",
        "BuildBranch": "",
        "BuildGitUrl": "",
    }
    assert data["Building"]["Requestor"] == "bob"
    assert data["Building"]["DurationSeconds"] == 5.0
    last = data["LastBuild"]
    assert last["Succeeded"] is True and last["DurationSeconds"] == 30.0
    assert last["Stages"][1] == {"Name": "scripts/9_first", "Seconds": 4.5, "Failed": False}
    assert last["Manifest"] == {
        "Files": {
            "manifest": '{\n    "SourceImage": "bootstrap/bb"\n}\n',
            "tags.json": f'{{"Role": "{EVIL}"}}\n',
        },
        "TruncatedFiles": ["tags.json"],
        "TreeSize": 21109,
        "FetchLog": f"Copying manifest tree: /m/hello {EVIL}\n",
    }
    assert data["Images"] == [
        {
            "Name": "apps/hello/2027-01-15:07:59:00",
            "CreatedOn": "2027-01-15T07:59:00Z",
            "ExpiresAt": "2027-01-15T08:59:00Z",
            "Expired": False,
        },
        {
            "Name": "apps/hello/2027-01-15:06:00:00",
            "CreatedOn": "2027-01-15T06:00:00Z",
            "ExpiresAt": "2027-01-15T07:00:00Z",
            "Expired": True,
        },
    ]
    assert SECRET not in a.text


def test_stream_json_of_a_bootstrap_stream_and_an_unknown_one():
    data = json.loads(get("/showImageStream?bootstrap/bb&format=json").body)
    assert data["Configuration"]["Kind"] == "bootstrap"
    assert data["Configuration"]["BootstrapCommand"][0] == "/bin/sh"
    assert data["LatestImage"] is None and data["LastBuild"] is None and data["Images"] == []
    unknown = get(f"/showImageStream?{EVIL}&format=json")
    assert unknown.code == 404
    assert json.loads(unknown.body) == {"Error": f"unknown stream: {EVIL}"}


def test_stream_page_says_why_the_last_build_was_skipped():
    builder = FakeBuilder()
    name = "bootstrap/bb/2027-01-15:08:00:00"
    builder.results["bootstrap/bb"] = BuildResult(
        "bootstrap/bb",
        name,
        NOW - 60,
        NOW - 30,
        b"log",
        identical=True,
        skipped=f"same configuration {EVIL}",
    )
    a = get("/showImageStream?bootstrap/bb", builder)
    assert (
        f'<a href="showImage?{name}">{name}</a> kept: skipped, nothing could change '
        "(same configuration &lt;script&gt;"
    ) in a.text
    assert_no_raw_evil(a.text)
