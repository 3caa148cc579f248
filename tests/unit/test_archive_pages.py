"""The build log archive pages (imaginator.web.archive_pages)."""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from klein import Klein
from klein.resource import KleinResource
from markupsafe import escape
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from imaginator.goformats.units import format_time
from imaginator.runtime.archive import (
    ArchivedBuild,
    BuildCounts,
    BuildInfo,
    BuildLogArchive,
    Kind,
)
from imaginator.web.archive_pages import ArchivePages, ArchiveSource, clean_argument, quote_query
from imaginator.web.pages import StatusPages
from tests.support.vectors import VECTORS
from tests.support.web import Answer, answer, assert_security_headers, start, tables

NOW = 1_800_000_000.0
EVIL = "<script>alert(1)</script>&"


# -- a fake archive ---------------------------------------------------------------------


def build(name: str, duration: float = 1.0, error: str = "", requestor: str = "peer-client"):
    return ArchivedBuild(name, name.rpartition("/")[0], duration, error, requestor, NOW)


def _keep(kind: Kind) -> Callable[[ArchivedBuild], bool]:
    return {"all": lambda b: True, "good": lambda b: not b.error, "bad": lambda b: bool(b.error)}[
        kind
    ]


def _count(name: str, builds: list[ArchivedBuild]) -> BuildCounts:
    good = sum(1 for b in builds if not b.error)
    return BuildCounts(name, len(builds), good, len(builds) - good)


@dataclass
class FakeArchive:
    """An in-memory archive: ``entries`` oldest first, ``logs`` by image name."""

    entries: list[ArchivedBuild] = field(default_factory=list)
    logs: dict[str, bytes] = field(default_factory=dict)
    read: list[str] = field(default_factory=list)

    def builds(self, kind: Kind = "all") -> list[ArchivedBuild]:
        return [b for b in self.entries if _keep(kind)(b)]

    def stream_builds(self, stream: str, kind: Kind = "all") -> list[ArchivedBuild] | None:
        mine = [b for b in self.entries if b.stream == stream]
        if not mine:
            return None
        return sorted((b for b in mine if _keep(kind)(b)), key=lambda b: b.image_name)

    def requestor_builds(self, username: str, kind: Kind = "all") -> list[ArchivedBuild]:
        mine = [b for b in self.entries if b.requestor == username and _keep(kind)(b)]
        return sorted(mine, key=lambda b: b.image_name)

    def summary_by_stream(self) -> list[BuildCounts]:
        streams = sorted({b.stream for b in self.entries})
        return [_count(s, [b for b in self.entries if b.stream == s]) for s in streams]

    def summary_by_requestor(self) -> list[BuildCounts]:
        users = {b.requestor for b in self.entries}
        rows = [_count(u, [b for b in self.entries if b.requestor == u]) for u in users]
        return sorted(rows, key=lambda r: (-r.total, r.name))

    def read_log(self, image_name: str) -> bytes | None:
        self.read.append(image_name)
        return self.logs.get(image_name)


def _fake_checks_as_protocol(archive: FakeArchive) -> ArchiveSource:
    return archive


class Runner:
    """A ``run_in_thread`` that records its calls; ``hold`` keeps them pending."""

    def __init__(self, hold: bool = False) -> None:
        self.calls: list[tuple[Any, tuple[Any, ...]]] = []
        self.hold = hold
        self.pending: list[tuple[Deferred[Any], Callable[[], Any]]] = []

    async def __call__(self, fn: Callable[..., Any], *args: Any) -> Any:
        self.calls.append((fn, args))
        if not self.hold:
            return fn(*args)
        d: Deferred[Any] = Deferred()
        self.pending.append((d, lambda: fn(*args)))
        return await d

    def release(self) -> None:
        for d, work in self.pending:
            d.callback(work())
        self.pending.clear()


def make_clock() -> Clock:
    clock = Clock()
    clock.advance(NOW)
    return clock


# -- requests --------------------------------------------------------------------------


def make_resource(archive: FakeArchive, runner: Runner | None = None) -> KleinResource:
    app = Klein()
    ArchivePages(archive, runner or Runner(), make_clock()).install(app)
    return KleinResource(app)


def get(archive: FakeArchive, target: str, runner: Runner | None = None) -> Answer:
    req = start(make_resource(archive, runner), target)
    assert req.finished, "request not finished"
    return answer(req)


def vector_text(name: str) -> str:
    return (VECTORS / name).read_text("utf-8")


# -- archive summary page ----------------------------------------------------------------


def vector_archive() -> FakeArchive:
    """Builds whose summaries are those of html-showBuildLogArchive.html."""
    entries: list[ArchivedBuild] = []

    def add(stream: str, good: int, bad: int, requestor: str = "peer-client") -> None:
        for i in range(good + bad):
            n = len(entries)
            error = "boom" if i >= good else ""
            entries.append(
                build(f"{stream}/2026-11-27:10:{n:02d}:00", error=error, requestor=requestor)
            )

    add("apps/broken", 0, 1)
    add("apps/broken", 0, 1, requestor="")
    add("apps/hello", 1, 0)
    add("apps/hello", 0, 1, requestor="")
    add("bootstrap/Debian-12", 3, 0)
    add("bootstrap/bb", 2, 5)
    add("test/peer-stream", 2, 0)
    return FakeArchive(entries=entries)


def test_archive_page_matches_go_vector() -> None:
    a = get(vector_archive(), "/showBuildLogArchive")
    assert a.code == 200
    assert a.headers["content-type"] == "text/html; charset=utf-8"
    assert_security_headers(a)
    expected = vector_text("html-showBuildLogArchive.html")
    assert tables(a.text) == tables(expected)
    assert "<title>build log archive</title>" in a.text
    for text in ("Build summary per image stream:<br>", "Build summary per requestor:<br>"):
        assert text in a.text and text in expected
    assert f"Page generated at: {format_time(NOW)}" in a.text


def test_archive_page_when_empty() -> None:
    a = get(FakeArchive(), "/showBuildLogArchive")
    streams, requestors = tables(a.text)
    assert streams[1:] == [
        (
            "",
            [
                "<b>TOTAL</b>",
                '<a href="showAllBuilds">0</a>',
                '<a href="showGoodBuilds">0</a>',
                '<a href="showErrorBuilds">0</a>',
            ],
        )
    ]
    assert requestors[1:] == []


def test_archive_page_escapes_names() -> None:
    archive = FakeArchive(entries=[build(f"{EVIL}/x y/1", requestor=f'"{EVIL}')])
    a = get(archive, "/showBuildLogArchive")
    assert "<script>" not in a.text
    assert escape(f"{EVIL}/x y") in a.text
    assert 'href="showStreamAllBuilds?%3Cscript%3Ealert(1)%3C/script%3E%26/x%20y"' in a.text
    assert 'href="showRequestorGoodBuilds?%22%3Cscript%3E' in a.text
    assert escape(f'"{EVIL}') in a.text


# -- build lists ---------------------------------------------------------------------------


def _parse_duration(text: str) -> float:
    for suffix, scale in (("ms", 1e-3), ("µs", 1e-6), ("s", 1.0)):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * scale
    raise AssertionError(text)


def vector_builds() -> FakeArchive:
    """The builds listed in html-showAllBuilds.html, in its (age) order."""
    (rows,) = tables(vector_text("html-showAllBuilds.html"))
    entries = []
    for _attrs, (name, _link, duration, error) in rows[1:]:
        entries.append(build(html.unescape(name), _parse_duration(duration), html.unescape(error)))
    return FakeArchive(entries=entries)


def test_all_builds_page_matches_go_vector() -> None:
    a = get(vector_builds(), "/showAllBuilds")
    assert a.code == 200
    assert_security_headers(a)
    assert "<title>build log archive (all)</title>" in a.text
    assert tables(a.text) == tables(vector_text("html-showAllBuilds.html"))


def test_good_and_error_pages() -> None:
    archive = vector_builds()
    good = get(archive, "/showGoodBuilds")
    assert "<title>build log archive (good)</title>" in good.text
    (rows,) = tables(good.text)
    assert rows[0] == ('style="background-color:#f0f0f0"', ["Image Name", "Build log", "Duration"])
    assert [r[1][0] for r in rows[1:]] == [b.image_name for b in archive.builds("good")]
    assert len(rows) == 1 + 8

    bad = get(archive, "/showErrorBuilds")
    assert "<title>build log archive (bad)</title>" in bad.text
    (rows,) = tables(bad.text)
    assert rows[0][1] == ["Image Name", "Build log", "Duration", "Error"]
    assert rows[-1][1] == [
        "apps/broken/2026-11-27:10:53:19",
        '<a href="showBuildLog?apps/broken/2026-11-27:10:53:19">log</a>',
        "9.71ms",
        "error processing manifest: error running script: 1_fail: exit status 1",
    ]
    assert len(rows) == 1 + 8


def test_stream_pages() -> None:
    archive = vector_builds()
    a = get(archive, "/showStreamAllBuilds?bootstrap/bb")
    assert a.code == 200
    assert "<title>build log archive (all)</title>" in a.text
    (rows,) = tables(a.text)
    names = [r[1][0] for r in rows[1:]]
    assert names == sorted(names) and len(names) == 7
    assert all(n.startswith("bootstrap/bb/") for n in names)

    good = get(archive, "/showStreamGoodBuilds?bootstrap/bb/")  # path-cleaned
    (rows,) = tables(good.text)
    assert [r[1][0] for r in rows[1:]] == [
        "bootstrap/bb/2026-11-27:10:53:18",
        "bootstrap/bb/2026-11-27:10:53:19",
    ]
    bad = get(archive, "/showStreamErrorBuilds?apps//hello")
    (rows,) = tables(bad.text)
    assert [r[1][0] for r in rows[1:]] == ["apps/hello/2026-11-27:10:52:25"]
    none = get(archive, "/showStreamGoodBuilds?apps/broken")
    assert none.code == 200 and tables(none.text)[0][1:] == []


@pytest.mark.parametrize(
    "target",
    [
        "/showStreamAllBuilds?no/such/stream",
        "/showStreamGoodBuilds?apps",
        "/showStreamErrorBuilds",
        "/showStreamAllBuilds?../apps/hello/..",
        f"/showStreamAllBuilds?{EVIL}",
    ],
)
def test_unknown_stream_is_404(target: str) -> None:
    a = get(vector_builds(), target)
    assert a.code == 404
    assert a.body == b"404 page not found\n"
    assert a.headers["content-type"] == "text/plain; charset=utf-8"
    assert_security_headers(a)


def test_requestor_pages() -> None:
    archive = FakeArchive(
        entries=[
            build("apps/hello/2", requestor=""),
            build("apps/broken/1", error="boom", requestor=""),
            build("apps/hello/1", requestor="peer-client"),
        ]
    )
    a = get(archive, "/showRequestorAllBuilds?imaginator")
    assert a.code == 200
    (rows,) = tables(a.text)
    assert [r[1][0] for r in rows[1:]] == ["apps/broken/1", "apps/hello/2"]
    (rows,) = tables(get(archive, "/showRequestorErrorBuilds?imaginator").text)
    assert [r[1][0] for r in rows[1:]] == ["apps/broken/1"]
    (rows,) = tables(get(archive, "/showRequestorGoodBuilds?peer-client").text)
    assert [r[1][0] for r in rows[1:]] == ["apps/hello/1"]
    assert rows[0][1] == ["Image Name", "Build log", "Duration"]
    nobody = get(archive, "/showRequestorAllBuilds?nobody")
    assert nobody.code == 200 and tables(nobody.text)[0][1:] == []
    empty = get(archive, "/showRequestorAllBuilds")
    assert tables(empty.text)[0][1:] == []  # "" is not a way to name internal builds


def test_build_list_escapes_everything() -> None:
    name = f"apps/{EVIL}/2026-11-27:10:53:19"
    archive = FakeArchive(entries=[build(name, error=f"failed: {EVIL}")])
    for target in (
        "/showAllBuilds",
        "/showErrorBuilds",
        f"/showStreamAllBuilds?{quote_query('apps/' + EVIL)}",
        "/showRequestorAllBuilds?peer-client",
    ):
        a = get(archive, target)
        assert a.code == 200, target
        assert "<script>" not in a.text
        assert escape(name) in a.text
        assert (
            'href="showBuildLog?apps/%3Cscript%3Ealert(1)%3C/script%3E%26/2026-11-27:10:53:19"'
            in a.text
        )


# -- raw logs ----------------------------------------------------------------------------------


def test_show_build_log_raw_bytes_through_the_runner() -> None:
    log = b"Building: apps/hello \xff <b>raw</b>\n"
    archive = FakeArchive(logs={"apps/hello/2026-11-27:10:53:19": log})
    runner = Runner()
    a = get(archive, "/showBuildLog?apps/hello/2026-11-27%3A10%3A53%3A19", runner)
    assert a.code == 200
    assert a.body == log
    assert a.headers["content-type"] == "text/plain; charset=utf-8"
    assert_security_headers(a)
    assert runner.calls == [(archive.read_log, ("apps/hello/2026-11-27:10:53:19",))]


def test_show_build_log_does_not_read_in_the_reactor() -> None:
    archive = FakeArchive(logs={"s/1": b"log\n"})
    runner = Runner(hold=True)
    req = start(make_resource(archive, runner), "/showBuildLog?s/1")
    assert archive.read == [] and not req.finished
    runner.release()
    a = answer(req)
    assert (a.code, a.body) == (200, b"log\n")


@pytest.mark.parametrize(
    ("target", "asked"),
    [
        ("/showBuildLog?s/2", "s/2"),
        ("/showBuildLog", "."),
        ("/showBuildLog?../../etc/passwd", "../../etc/passwd"),
        ("/showBuildLog?/s/./2/", "s/2"),
    ],
)
def test_show_build_log_missing_is_404(target: str, asked: str) -> None:
    archive = FakeArchive(logs={"s/1": b"log\n"})
    a = get(archive, target)
    assert a.code == 404
    assert a.body == b"404 page not found\n"
    assert_security_headers(a)
    assert archive.read == [asked]


def test_clean_argument() -> None:
    assert clean_argument("") == "."
    assert clean_argument("/") == "."
    assert clean_argument("a/b/") == "a/b"
    assert clean_argument("//a/./b//c/../d") == "a/b/d"
    assert clean_argument("../x") == "../x"


# -- with the status pages and a real archive -----------------------------------------


class _NoSource:
    def current_builds(self) -> list[Any]:
        return []

    def last_results(self) -> list[Any]:
        return []

    def current_build(self, stream: str) -> None:
        return None

    def last_result(self, stream: str) -> None:
        return None

    def stream_names(self) -> list[str]:
        return []

    def auto_rebuild_streams(self) -> frozenset[str]:
        return frozenset()

    def build_requests_disabled_until(self) -> None:
        return None


def test_installed_beside_status_pages_with_a_real_archive(tmp_path: Path) -> None:
    archive = BuildLogArchive(str(tmp_path), 100 << 20)
    archive.load()
    archive.add(
        "apps/broken/2026-11-27:10:53:19",
        BuildInfo(9711908, "exit status 1", ""),
        (VECTORS / "archive-buildLog-failed.txt").read_bytes(),
    )
    clock = make_clock()
    status = StatusPages(
        source=_NoSource(),
        clock=clock,
        started_at=NOW,
        hostname="vm",
        version="1",
        log_ring=None,
        archive_enabled=True,
    )
    ArchivePages(archive, Runner(), clock).install(status.app)
    resource = status.resource()

    summary = answer(start(resource, "/showBuildLogArchive"))
    assert summary.code == 200
    streams, requestors = tables(summary.text)
    assert streams[1][1][0] == "apps/broken"
    assert requestors[1][1][:2] == [
        "imaginator",
        '<a href="showRequestorAllBuilds?imaginator">1</a>',
    ]
    errors = answer(start(resource, "/showStreamErrorBuilds?apps/broken"))
    (rows,) = tables(errors.text)
    assert rows[1][1][2:] == ["9.71ms", "exit status 1"]
    log = answer(start(resource, "/showBuildLog?apps/broken/2026-11-27:10:53:19"))
    assert log.body == (VECTORS / "archive-buildLog-failed.txt").read_bytes()
    assert answer(start(resource, "/showBuildLog?apps/broken")).code == 404
    assert answer(start(resource, "/showStreamAllBuilds?apps")).code == 404
    assert (
        'Build log <a href="showBuildLogArchive">archive</a>' in answer(start(resource, "/")).text
    )
    assert answer(start(resource, "/showNoSuchBuilds")).code == 404
