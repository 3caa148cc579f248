"""Unit tests for the status and build-log pages (imaginator.web.pages) and LogRing."""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass, field, replace

import pytest
from treq.testing import StubTreq
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from imaginator.goformats.units import format_duration, format_time
from imaginator.pipeline.report import BuildReport
from imaginator.runtime.buildlog import BuildLog
from imaginator.runtime.logbuffer import LogRing
from imaginator.runtime.stages import StageRecorder, StageTime
from imaginator.scheduler import BuildResult, CurrentBuild
from imaginator.web.pages import StatusPages, StatusSource, split_format
from tests.support.web import Answer, Request, answer, assert_security_headers, start, tables

STARTED = 1_800_000_000.0
NOW = STARTED + 62.0
EVIL = "<script>alert(1)</script>"


@dataclass
class FakeSource:
    """An in-memory StatusSource."""

    current: dict[str, CurrentBuild] = field(default_factory=dict)
    results: dict[str, BuildResult] = field(default_factory=dict)
    streams: list[str] = field(default_factory=list)
    auto: frozenset[str] = frozenset()
    disabled_until: float | None = None

    def current_builds(self) -> list[CurrentBuild]:
        return list(self.current.values())

    def last_results(self) -> list[BuildResult]:
        return list(self.results.values())

    def current_build(self, stream: str) -> CurrentBuild | None:
        return self.current.get(stream)

    def last_result(self, stream: str) -> BuildResult | None:
        return self.results.get(stream)

    def stream_names(self) -> list[str]:
        return list(self.streams)

    def auto_rebuild_streams(self) -> frozenset[str]:
        return self.auto

    def build_requests_disabled_until(self) -> float | None:
        return self.disabled_until


def _source_checks_as_protocol(source: FakeSource) -> StatusSource:
    return source  # lets a type checker confirm FakeSource satisfies the Protocol


def make_clock(now: float = NOW) -> Clock:
    clock = Clock()
    clock.advance(now)
    return clock


def make_pages(source: FakeSource, clock: Clock | None = None, **kwargs) -> StatusPages:
    args = {
        "source": source,
        "clock": clock or make_clock(),
        "started_at": STARTED,
        "hostname": "vm",
        "version": "1.2.3",
        "log_ring": None,
    }
    args.update(kwargs)
    return StatusPages(**args)


def request(pages: StatusPages, target: str, method: bytes = b"GET") -> Request:
    return start(pages.resource(), target, method)


def get(pages: StatusPages, target: str, method: bytes = b"GET") -> Answer:
    req = request(pages, target, method)
    assert req.finish_count == 1, f"{target} did not finish once"
    return answer(req)


def result(stream: str, image: str = "", error: str = "", log: bytes = b"log\n", **kw):
    return BuildResult(
        stream=stream,
        image_name=image,
        started_at=kw.get("started_at", NOW - 60),
        finished_at=kw.get("finished_at", NOW - 50),
        log=log,
        error=error,
        requestor=kw.get("requestor", "peer-client"),
    )


def busy_source() -> FakeSource:
    log = BuildLog()
    log.line("Building: apps/hello for: peer-client")
    return FakeSource(
        current={
            "apps/hello": CurrentBuild("apps/hello", NOW - 5, log, "peer-client", False),
            "bootstrap/bb": CurrentBuild("bootstrap/bb", NOW - 90, BuildLog(), "", True),
        },
        results={
            "apps/zeta": result("apps/zeta", error="exit status 2", finished_at=NOW - 30),
            "apps/broken": result(
                "apps/broken",
                error="error running script: 1_fail: exit status 1",
                started_at=NOW - 54.71,
                finished_at=NOW - 54.7,
            ),
            "bootstrap/bb": result("bootstrap/bb", image="bootstrap/bb/2026-11-27:10:53:19"),
            "apps/hello": result("apps/hello", image="apps/hello/2026-11-27:10:53:19"),
        },
        streams=["apps/broken", "apps/hello", "apps/zeta", "bootstrap/bb", "bootstrap/Debian-12"],
        auto=frozenset({"bootstrap/bb"}),
    )


def rows(body: str, heading: str) -> list[list[str]]:
    """The data rows (cell HTML) of the table that follows ``heading``."""
    table = body.split(heading, 1)[1].split("</table>", 1)[0]
    out = []
    for tr in re.findall(r"<tr[^>]*>(.*?)</tr>", table, re.S)[1:]:
        out.append([c.strip() for c in re.findall(r"<td>(.*?)</td>", tr, re.S)])
    return out


# -- status page ----------------------------------------------------------------


def test_status_page_header_and_footer() -> None:
    ring = LogRing()
    Logger(observer=ring).info("Startup: {version}", version="1.2.3")
    a = get(make_pages(busy_source(), log_ring=ring), "/")
    assert a.code == 200
    assert a.headers["content-type"] == "text/html; charset=utf-8"
    assert_security_headers(a)
    body = a.text
    assert "<title>imaginator status page</title>" in body
    assert '<h1 class="center">imaginator status page</h1>' in body
    assert f"Start time: {format_time(STARTED)}" in body
    assert "Uptime: 1m2s" in body
    assert "Hostname: vm" in body
    assert "Process Total CPU Time: " in body
    assert 'Number of image streams: <a href="showImageStreams">5</a>' in body
    assert 'Image stream <a href="showDirectedGraph">relationships</a>' in body
    assert "Image server: embedded store" in body
    assert "Build requests disabled" not in body
    assert "showBuildLogArchive" not in body
    assert "Logs:" in body
    assert re.search(
        r"<pre class=\"logs\">\n\d{4}/\d\d/\d\d \d\d:\d\d:\d\d Startup: 1.2.3\n</pre>", body
    )
    assert f"Page generated at: {format_time(NOW)} with imaginator 1.2.3" in body
    assert "border-collapse: collapse" in body
    # Section order of reference §9.
    order = [
        "Start time:",
        "Number of image streams",
        "relationships",
        "Image server:",
        "Current image builds:",
        "Failed image builds:",
        "Successful image builds:",
        "Logs:",
        "Page generated at:",
    ]
    positions = [body.index(s) for s in order]
    assert positions == sorted(positions)


def test_status_page_build_tables() -> None:
    links = {}

    def image_link(name: str) -> str:
        links[name] = f"http://store.example/showImage?{name}"
        return links[name]

    body = get(make_pages(busy_source(), image_link=image_link, archive_enabled=True), "/").text

    current = rows(body, "Current image builds:")
    assert current == [
        [
            '<a href="showImageStream?apps/hello">apps/hello</a>',
            '<a href="showCurrentBuildLog?apps/hello#bottom">log</a>',
            format_duration(5),
            "",
        ],
        [
            # auto-rebuilt streams are bold
            '<b><a href="showImageStream?bootstrap/bb">bootstrap/bb</a></b>',
            '<a href="showCurrentBuildLog?bootstrap/bb#bottom">log</a>',
            "1m30s",
            "",
        ],
    ]

    assert (
        f"Failed image builds: (last at: {format_time(NOW - 30)}, {format_duration(30)} ago)"
        in body
    )
    failed = rows(body, "Failed image builds:")
    assert [re.sub("<[^>]+>", "", r[0]) for r in failed] == ["apps/broken", "apps/zeta"]
    assert failed[0] == [
        '<a href="showImageStream?apps/broken">apps/broken</a>',
        "error running script: 1_fail: exit status 1",
        '<a href="showLastBuildLog?apps/broken">log</a>',
        format_duration(0.01),
        f"{format_duration(54.7)} ago",
    ]

    good = rows(body, "Successful image builds:")
    assert good == [
        [
            '<a href="showImageStream?apps/hello">apps/hello</a>',
            '<a href="http://store.example/showImage?apps/hello/2026-11-27:10:53:19">'
            "apps/hello/2026-11-27:10:53:19</a>",
            '<a href="showLastBuildLog?apps/hello">log</a>',
            "10s",
            "50s ago",
        ],
        [
            '<a href="showImageStream?bootstrap/bb">bootstrap/bb</a>',
            '<a href="http://store.example/showImage?bootstrap/bb/2026-11-27:10:53:19">'
            "bootstrap/bb/2026-11-27:10:53:19</a>",
            '<a href="showLastBuildLog?bootstrap/bb">log</a>',
            "10s",
            "50s ago",
        ],
    ]
    assert 'Build log <a href="showBuildLogArchive">archive</a>' in body

    # Table styling of the Go pages: header row grey, every second data row shaded.
    table = body.split("Successful image builds:", 1)[1].split("</table>", 1)[0]
    assert '<table border="1">' in table
    trs = re.findall(r"<tr[^>]*>", table)
    assert trs == [
        '<tr style="background-color:#f0f0f0">',
        "<tr>",
        '<tr style="background-color:#fafafa">',
    ]


def test_status_page_without_image_link_or_logs_or_builds() -> None:
    source = FakeSource(
        results={"apps/hello": result("apps/hello", image="apps/hello/1")},
        streams=["apps/hello"],
    )
    body = get(make_pages(source), "/").text
    assert rows(body, "Successful image builds:")[0][1] == "apps/hello/1"
    assert "Current image builds:" not in body
    assert "Failed image builds:" not in body
    assert "Logs:" not in body


def test_status_page_disabled_banner() -> None:
    source = FakeSource(disabled_until=NOW + 3600)
    body = get(make_pages(source), "/").text
    assert f"Build requests disabled until {format_time(NOW + 3600)} (1h0m0s)" in body
    source.disabled_until = NOW - 1  # expired: no banner
    assert "Build requests disabled" not in get(make_pages(source), "/").text


def test_status_page_escapes_everything() -> None:
    ring = LogRing()
    Logger(observer=ring).info("requested {stream}", stream=EVIL)
    source = FakeSource(
        current={EVIL: CurrentBuild(EVIL, NOW - 1, BuildLog(), EVIL, True)},
        results={
            EVIL: result(EVIL, error=f"bad {EVIL}"),
            "ok": result("ok", image=f"ok/{EVIL}"),
        },
        auto=frozenset({EVIL}),
    )
    body = get(
        make_pages(source, hostname=EVIL, version=EVIL, log_ring=ring, image_link=lambda n: n),
        "/",
    ).text
    assert "<script>" not in body
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body
    assert f"bad {html.escape(EVIL)}" in body
    # Links carry the stream URL-encoded; the page decodes it back.
    assert 'href="showCurrentBuildLog?%3Cscript%3Ealert%281%29%3C/script%3E#bottom"' in body
    assert 'href="showLastBuildLog?%3Cscript%3Ealert%281%29%3C/script%3E"' in body


# -- build log pages --------------------------------------------------------------


def test_show_current_build_log() -> None:
    source = busy_source()
    source.current["apps/hello"].log.write(b"caf\xc3\xa9 \xff <b>bold</b>\n")
    a = get(make_pages(source), "/showCurrentBuildLog?apps/hello")
    assert a.code == 200
    assert_security_headers(a)
    assert a.headers["content-type"] == "text/html; charset=utf-8"
    body = a.text
    assert "<title>build log for stream apps/hello</title>" in body
    assert '<meta http-equiv="refresh" content="2">' in body
    assert "In progress build log for stream: apps/hello" in body
    assert (
        "<pre>\nBuilding: apps/hello for: peer-client\n"
        "café \N{REPLACEMENT CHARACTER} &lt;b&gt;bold&lt;/b&gt;\n</pre>" in body
    )
    assert '<a name="bottom"></a>' in body
    assert 'href="followBuildLog?apps/hello"' in body
    assert body.index("</pre>") < body.index('<a name="bottom">')


def test_show_current_build_log_never_built() -> None:
    a = get(make_pages(busy_source()), "/showCurrentBuildLog?apps/none")
    assert a.code == 200
    assert_security_headers(a)
    assert a.headers["content-type"] == "text/plain; charset=utf-8"
    assert a.text == "unknown image: apps/none\n"


def test_show_last_build_log() -> None:
    source = busy_source()
    source.results["apps/hello"] = result(
        "apps/hello", image="apps/hello/1", log=b"Building: apps/hello\n<i>done</i>\n"
    )
    a = get(make_pages(source), "/showLastBuildLog?apps/hello")
    assert a.code == 200
    assert_security_headers(a)
    assert a.headers["content-type"] == "text/html; charset=utf-8"
    body = a.text
    assert "<title>build log for stream apps/hello</title>" in body
    assert "Latest build log for stream: apps/hello" in body
    assert "Lastest" not in body
    assert "<pre>\nBuilding: apps/hello\n&lt;i&gt;done&lt;/i&gt;\n</pre>" in body
    assert "refresh" not in body


def test_show_last_build_log_unknown_and_decoding() -> None:
    pages = make_pages(busy_source())
    assert get(pages, "/showLastBuildLog?no/such").text == "unknown image: no/such\n"
    assert get(pages, "/showLastBuildLog").text == "unknown image: \n"
    # The raw query string is the argument, percent-decoded.
    assert "stream: apps/broken" in get(pages, "/showLastBuildLog?apps%2Fbroken").text


def test_log_pages_escape_hostile_stream_names() -> None:
    source = FakeSource(
        current={EVIL: CurrentBuild(EVIL, NOW, BuildLog(), "", False)},
        results={EVIL: result(EVIL, error=EVIL, log=EVIL.encode())},
    )
    source.current[EVIL].log.write(EVIL)
    pages = make_pages(source)
    quoted = "%3Cscript%3Ealert(1)%3C/script%3E"
    for path in ("/showCurrentBuildLog?", "/showLastBuildLog?"):
        body = get(pages, path + quoted).text
        assert "<script>" not in body
        # Title, heading, log; the last build's error in its result line.
        expected = 3 if path == "/showCurrentBuildLog?" else 4
        assert body.count(html.escape(EVIL)) == expected
    unknown = get(pages, "/showLastBuildLog?" + quoted + "x")
    assert unknown.headers["content-type"] == "text/plain; charset=utf-8"


# -- other routes -------------------------------------------------------------------


def test_healthz() -> None:
    a = get(make_pages(FakeSource()), "/healthz")
    assert (a.code, a.text) == (200, "OK\n")
    assert_security_headers(a)


@pytest.mark.parametrize(
    "target",
    ["/index.html", "/status", "/showLastBuildLog/apps", "/healthz/", "/static/nope.css", "/x?y"],
)
def test_unknown_paths_are_404_with_headers(target: str) -> None:
    a = get(make_pages(busy_source()), target)
    assert a.code == 404
    assert a.text == "404 page not found\n"
    assert_security_headers(a)


def test_wrong_method_is_405_with_headers() -> None:
    a = get(make_pages(busy_source()), "/", method=b"POST")
    assert a.code == 405
    assert "GET" in a.headers["allow"]
    assert_security_headers(a)


def test_static_stylesheet() -> None:
    a = get(make_pages(FakeSource()), "/static/imaginator.css")
    assert a.code == 200
    assert a.headers["content-type"] == "text/css; charset=utf-8"
    assert b".builder" in a.body
    assert_security_headers(a)


def test_real_http_request_headers() -> None:
    """Through a real HTTP exchange (StubTreq), not only a bare Request object."""
    treq = StubTreq(make_pages(busy_source()).resource())
    got: list = []
    treq.get("http://localhost/showLastBuildLog?apps/hello").addCallback(got.append)
    treq.flush()
    response = got[0]
    assert response.code == 200
    h = response.headers
    assert h.getRawHeaders("X-Frame-Options") == ["DENY"]
    assert h.getRawHeaders("X-XSS-Protection") == ["1"]
    assert h.getRawHeaders("X-Content-Type-Options") == ["nosniff"]
    assert h.getRawHeaders("Content-Type") == ["text/html; charset=utf-8"]
    bodies: list = []
    response.text().addCallback(bodies.append)
    treq.flush()
    assert "Latest build log for stream: apps/hello" in bodies[0]


# -- live log following -------------------------------------------------------------


def follow_setup():
    source = busy_source()
    build = source.current["apps/hello"]
    clock = make_clock()
    pages = make_pages(source, clock=clock)
    req = request(pages, "/followBuildLog?apps/hello")
    return source, build, clock, req


def test_follow_streams_log_until_build_ends() -> None:
    source, build, clock, req = follow_setup()
    a = answer(req)
    assert_security_headers(a)
    assert a.headers["content-type"] == "text/plain; charset=utf-8"
    assert a.body == b"Building: apps/hello for: peer-client\n"
    assert not req.finished

    build.log.line("step 1")
    build.log.write(b"raw \xff bytes\n")
    assert req.written[-2:] == [b"step 1\n", b"raw \xef\xbf\xbd bytes\n"]

    clock.advance(2)  # still building: keep going
    assert not req.finished
    assert len(clock.getDelayedCalls()) == 1

    del source.current["apps/hello"]
    clock.advance(2)
    assert req.finish_count == 1
    assert clock.getDelayedCalls() == []
    build.log.line("late")  # unsubscribed: nothing more is written
    assert req.written[-1] == b"raw \xef\xbf\xbd bytes\n"


def test_follow_ends_on_chunk_after_build_replaced() -> None:
    source, build, clock, req = follow_setup()
    # A new build of the same stream started: the followed log is no longer current.
    source.current["apps/hello"] = CurrentBuild("apps/hello", NOW, BuildLog(), "", False)
    build.log.line("final line")
    assert req.written[-1] == b"final line\n"
    assert req.finish_count == 1
    assert clock.getDelayedCalls() == []


def test_follow_unsubscribes_when_client_disconnects() -> None:
    _source, build, clock, req = follow_setup()
    req.connectionLost(Failure(ConnectionDone()))
    assert clock.getDelayedCalls() == []
    before = list(req.written)
    build.log.line("after disconnect")
    assert req.written == before
    assert build.log._subscribers == []


class ClosingLog(BuildLog):
    """A BuildLog with the ``on_close`` hook the builder will provide."""

    def __init__(self) -> None:
        super().__init__()
        self.close_callbacks: list = []

    def on_close(self, callback) -> None:
        self.close_callbacks.append(callback)

    def close(self) -> None:
        for callback in self.close_callbacks:
            callback()


def test_follow_uses_on_close_when_available() -> None:
    source = FakeSource()
    log = ClosingLog()
    log.line("hello")
    source.current["s"] = CurrentBuild("s", NOW, log, "", False)
    clock = make_clock()
    req = request(make_pages(source, clock=clock), "/followBuildLog?s")
    assert b"".join(req.written) == b"hello\n"
    assert len(log.close_callbacks) == 1
    log.close()
    assert req.finish_count == 1
    assert clock.getDelayedCalls() == []


def test_follow_drops_a_client_that_stops_reading() -> None:
    source = busy_source()
    build = source.current["apps/hello"]
    clock = make_clock()
    pages = make_pages(source, clock=clock, follow_limit=100)
    req = request(pages, "/followBuildLog?apps/hello")
    assert len(pages.followers) == 1
    req.producer.pauseProducing()  # what the transport does when its buffer is full
    for i in range(10):
        build.log.line(f"line {i:04d}")
    assert not req.finished
    build.log.line("too much")
    assert req.written[-1] == b"[log follower too slow: 109 bytes dropped; reload]\n"
    assert req.finish_count == 1
    assert pages.followers == set()
    assert build.log._subscribers == []
    assert clock.getDelayedCalls() == []


def test_follow_unknown_stream() -> None:
    a = get(make_pages(busy_source()), "/followBuildLog?apps/broken")
    assert a.text == "unknown image: apps/broken\n"
    assert a.headers["content-type"] == "text/plain; charset=utf-8"


def test_current_build_page_renders_while_followed() -> None:
    source, _build, _clock, req = follow_setup()
    body = get(make_pages(source), "/showCurrentBuildLog?apps/hello").text
    assert "Building: apps/hello" in body
    assert not req.finished


# -- LogRing ----------------------------------------------------------------------


def test_log_ring_formats_and_keeps_last_lines() -> None:
    ring = LogRing(3)
    log = Logger(observer=ring)
    for i in range(5):
        log.info("line {n}", n=i)
    lines = ring.lines()
    assert [line.split(" ", 2)[2] for line in lines] == ["line 2", "line 3", "line 4"]
    assert all(re.fullmatch(r"\d{4}/\d\d/\d\d \d\d:\d\d:\d\d line \d", line) for line in lines)
    lines.clear()  # a copy
    assert len(ring.lines()) == 3


def test_log_ring_levels_and_failures() -> None:
    ring = LogRing()
    log = Logger(observer=ring)
    log.debug("noise")
    log.warn("careful {what}", what="{not a format}")
    try:
        raise ValueError("boom")
    except ValueError:
        log.failure("Error archiving build log")
    texts = [line.split(" ", 2)[2] for line in ring.lines()]
    assert texts == ["careful {not a format}", "Error archiving build log: ValueError: boom"]

    verbose = LogRing(min_level=LogLevel.debug)
    Logger(observer=verbose).debug("noise")
    assert verbose.lines()[0].endswith(" noise")


def test_log_ring_rejects_bad_size() -> None:
    with pytest.raises(ValueError):
        LogRing(0)


# -- beyond the Go pages: links, refresh, JSON, results of ended builds, /logs -------


def staged_result(stream: str, **kw) -> BuildResult:
    return replace(
        result(stream, **kw),
        stages=(
            StageTime("fetch manifest", 1.0),
            StageTime("scripts/10_x", 3.0, failed=bool(kw.get("error"))),
        ),
    )


def stage_clock_build(stream: str, stage: str, seconds: float) -> CurrentBuild:
    """A running build in ``stage`` for ``seconds``."""
    clock = Clock()
    report = BuildReport(StageRecorder(clock.seconds))
    report.begin(stage)
    clock.advance(seconds)
    return CurrentBuild(stream, NOW - 5, BuildLog(), "alice", False, report)


def test_status_page_links_refresh_and_cpu_rows() -> None:
    source = busy_source()
    source.current["apps/hello"] = stage_clock_build("apps/hello", "scripts/10_x", 2.5)
    body = get(make_pages(source), "/").text
    assert 'Raw <a href="metrics">metrics</a>' in body
    assert '(<a href="listImages">images</a>)' in body
    assert '<a href="?format=json">JSON</a>' in body
    assert '<meta http-equiv="refresh" content="5">' in body  # builds run: durations move
    assert rows(body, "Current image builds:")[0][3] == "scripts/10_x (2.5s)"
    for label in (
        "Process Total CPU Time: ",
        "Subprocess Total CPU Time: ",
        "Recent CPU Time: ",
        "Maximum resident memory: ",
        "Largest subprocess resident memory: ",
    ):
        assert label in body, label
    assert body.count("Recent CPU Time: ") == 2

    idle = FakeSource(results=busy_source().results, streams=["apps/hello"])
    assert "http-equiv" not in get(make_pages(idle), "/").text  # nothing moves: no reloads


def test_status_page_recent_cpu_is_since_the_previous_view() -> None:
    clock = make_clock()
    pages = make_pages(FakeSource(), clock=clock)
    first = get(pages, "/").text
    total = re.search(r"Process Total CPU Time: ([^<]*)<", first).group(1)
    recent = re.search(r"Recent CPU Time: ([^<]*)<", first).group(1)
    assert recent == total  # the first view: since the start
    clock.advance(1000)
    second = get(pages, "/").text
    recent = re.search(r"Recent CPU Time: ([0-9.]+)%", second).group(1)
    assert float(recent) < 50.0  # a few milliseconds over 1000 s


def test_status_page_logs_link_and_redacted_lines() -> None:
    ring = LogRing()
    Logger(observer=ring).info("cloned https://u:{p}@host", p="hunter2")
    pages = make_pages(
        FakeSource(), log_ring=ring, redact=lambda text: text.replace("hunter2", "[REDACTED]")
    )
    body = get(pages, "/").text
    assert '<a href="logs">Logs:</a>' in body
    assert "hunter2" not in body and "https://u:[REDACTED]@host" in body


def test_status_json() -> None:
    source = busy_source()
    source.current["apps/hello"] = stage_clock_build("apps/hello", "scripts/10_x", 2.5)
    source.results["apps/hello"] = staged_result("apps/hello", image="apps/hello/1")
    source.disabled_until = NOW + 60
    a = get(make_pages(source), "/?format=json")
    assert a.code == 200
    assert_security_headers(a)
    assert a.headers["content-type"] == "application/json; charset=utf-8"
    data = json.loads(a.body)
    assert data["Hostname"] == "vm" and data["Version"] == "1.2.3"
    assert data["StartedAt"] == "2027-01-15T08:00:00Z"
    assert data["UptimeSeconds"] == 62.0
    assert data["BuildRequestsDisabledUntil"] == "2027-01-15T08:02:02Z"
    assert data["NumImageStreams"] == 5
    assert [b["Stream"] for b in data["CurrentBuilds"]] == ["apps/hello", "bootstrap/bb"]
    hello = data["CurrentBuilds"][0]
    assert hello == {
        "Stream": "apps/hello",
        "Requestor": "alice",
        "Auto": False,
        "StartedAt": "2027-01-15T08:00:57Z",
        "DurationSeconds": 5.0,
        "Stage": "scripts/10_x",
        "StageSeconds": 2.5,
    }
    assert data["CurrentBuilds"][1]["Auto"] is True
    last = {b["Stream"]: b for b in data["LastBuilds"]}
    assert list(last) == ["apps/broken", "apps/hello", "apps/zeta", "bootstrap/bb"]
    assert last["apps/hello"] == {
        "Stream": "apps/hello",
        "Succeeded": True,
        "Identical": False,
        "ImageName": "apps/hello/1",
        "Error": "",
        "Requestor": "peer-client",
        "StartedAt": "2027-01-15T08:00:02Z",
        "FinishedAt": "2027-01-15T08:00:12Z",
        "DurationSeconds": 10.0,
        "Stages": [
            {"Name": "fetch manifest", "Seconds": 1.0, "Failed": False},
            {"Name": "scripts/10_x", "Seconds": 3.0, "Failed": False},
        ],
    }
    assert last["apps/broken"]["Succeeded"] is False
    assert last["apps/broken"]["Error"] == "error running script: 1_fail: exit status 1"


def test_split_format() -> None:
    assert split_format("format=json") == ("", "json")
    assert split_format("apps/hello&format=json") == ("apps/hello", "json")
    assert split_format("apps/hello") == ("apps/hello", "")
    assert split_format("a&format=json&b") == ("a&format=json&b", "")
    assert split_format("") == ("", "")


def test_show_current_build_log_while_running_follows_and_names_the_stage() -> None:
    source = busy_source()
    source.current["apps/hello"] = stage_clock_build("apps/hello", "packages", 61)
    body = get(make_pages(source), "/showCurrentBuildLog?apps/hello").text
    assert '<noscript><meta http-equiv="refresh" content="2"></noscript>' in body
    assert '<script src="static/livelog.js" data-mode="poll"></script>' in body
    assert '<div id="live" data-state="running">' in body
    assert "Running for 5s, in stage packages for 1m1s" in body


def test_show_current_build_log_after_the_build_ended_shows_its_result() -> None:
    source = busy_source()
    source.results["apps/hello"] = staged_result(
        "apps/hello", image="apps/hello/2026-11-27:10:53:19", log=b"Built <it>\n"
    )
    del source.current["apps/hello"]
    a = get(make_pages(source), "/showCurrentBuildLog?apps/hello")
    assert a.headers["content-type"] == "text/html; charset=utf-8"
    body = a.text
    assert "refresh" not in body and "livelog.js" not in body  # nothing moves any more
    assert '<div id="live" data-state="finished">' in body
    assert "Build log for stream: apps/hello (finished)" in body
    assert (
        'Build <a href="showLastBuildLog?apps/hello">succeeded</a> at '
        f"{format_time(NOW - 50)} (50s ago) in 10s: "
        '<a href="showImage?apps/hello/2026-11-27:10:53:19">apps/hello/2026-11-27:10:53:19</a>'
    ) in body
    assert tables(body)[0][1:] == [
        ("", ["fetch manifest", "1s", "25.0%"]),
        ('style="background-color:#fafafa"', ["scripts/10_x", "3s", "75.0%"]),
    ]
    assert "<pre>\nBuilt &lt;it&gt;\n</pre>" in body

    failed = get(make_pages(source), "/showCurrentBuildLog?apps/broken").text
    assert (
        'Build <a href="showLastBuildLog?apps/broken">failed</a> at '
        f"{format_time(NOW - 54.7)} (54.7s ago) after 10ms: "
        "<b>error running script: 1_fail: exit status 1</b>"
    ) in failed

    source.results["apps/hello"] = replace(source.results["apps/hello"], identical=True)
    same = get(make_pages(source), "/showCurrentBuildLog?apps/hello").text
    assert ', identical to <a href="showImage?apps/hello/2026-11-27:10:53:19">' in same
    assert "no new image" in same


def test_show_last_build_log_has_the_result_and_stage_table() -> None:
    source = busy_source()
    source.results["apps/broken"] = staged_result("apps/broken", error="exit status 1")
    body = get(make_pages(source), "/showLastBuildLog?apps/broken").text
    assert 'Build <a href="showLastBuildLog?apps/broken">failed</a>' in body
    assert "<td><b>scripts/10_x (failed)</b></td>" in body


def html_follow_request(pages: StatusPages, target: str) -> Request:
    req = Request(target.encode())
    req.requestHeaders.addRawHeader(b"Accept", b"text/html,application/xhtml+xml,*/*;q=0.8")
    pages.resource().render(req)
    return req


def test_follow_in_a_browser_is_html_that_ends_with_the_result() -> None:
    source = busy_source()
    build = source.current["apps/hello"]
    clock = make_clock()
    pages = make_pages(source, clock=clock)
    req = html_follow_request(pages, "/followBuildLog?apps/hello")
    a = answer(req)
    assert_security_headers(a)
    assert a.headers["content-type"] == "text/html; charset=utf-8"
    assert a.headers["vary"] == "Accept"
    head = a.text
    assert "<title>build log for stream apps/hello</title>" in head
    assert '<script src="static/livelog.js" data-mode="stream"></script>' in head
    assert head.endswith("<pre>\nBuilding: apps/hello for: peer-client\n")
    build.log.line(f"step {EVIL} & done")
    assert req.written[-1] == b"step &lt;script&gt;alert(1)&lt;/script&gt; &amp; done\n"
    assert not req.finished

    del source.current["apps/hello"]
    source.results["apps/hello"] = replace(
        staged_result("apps/hello", image="apps/hello/2"), started_at=build.started_at
    )
    build.log.close()
    assert req.finish_count == 1
    tail = req.written[-1].decode()
    assert tail.startswith('</pre>\n<div id="end">')
    assert 'Build <a href="showLastBuildLog?apps/hello">succeeded</a>' in tail
    assert '<a href="showImage?apps/hello/2">apps/hello/2</a>' in tail
    assert "<td>scripts/10_x</td>" in tail
    assert tail.rstrip().endswith("</html>")
    assert clock.getDelayedCalls() == []


def test_follow_in_a_browser_without_a_matching_result_says_it_ended() -> None:
    source = busy_source()
    build = source.current["apps/hello"]
    req = html_follow_request(make_pages(source), "/followBuildLog?apps/hello")
    del source.current["apps/hello"]  # the result kept is an older build's
    build.log.close()
    tail = req.written[-1].decode()
    assert 'Build ended: <a href="showLastBuildLog?apps/hello">last build log</a>' in tail
    assert "succeeded" not in tail


def test_follow_in_a_browser_dropped_reader_is_told_the_build_runs_on() -> None:
    source = busy_source()
    build = source.current["apps/hello"]
    pages = make_pages(source, follow_limit=100)
    req = html_follow_request(pages, "/followBuildLog?apps/hello")
    req.producer.pauseProducing()
    for i in range(12):
        build.log.line(f"line {i:04d}")
    assert req.finish_count == 1
    body = b"".join(req.written).decode()
    assert "[log follower too slow: " in body
    assert (
        'Build still running: <a href="showCurrentBuildLog?apps/hello#bottom">its log</a>' in body
    )


def test_logs_page_follows_the_daemon_log_without_secrets() -> None:
    ring = LogRing()
    log = Logger(observer=ring)
    log.info("Startup: {v}", v="1.2.3")
    log.info("fetching with {p} and {e}", p="hunter2", e=EVIL)
    pages = make_pages(
        FakeSource(), log_ring=ring, redact=lambda text: text.replace("hunter2", "[REDACTED]")
    )
    a = get(pages, "/logs")
    assert a.code == 200 and a.headers["content-type"] == "text/html; charset=utf-8"
    assert_security_headers(a)
    body = a.text
    assert "<title>imaginator logs</title>" in body
    assert '<script src="static/livelog.js" data-mode="poll"></script>' in body
    assert '<div id="live" data-state="running">' in body
    assert "hunter2" not in body and "<script>alert" not in body
    assert f"fetching with [REDACTED] and {html.escape(EVIL)}" in body
    assert body.index("Startup: 1.2.3") < body.index("fetching with")
    text = get(pages, "/logs?format=text")
    assert text.headers["content-type"] == "text/plain; charset=utf-8"
    assert text.text.endswith(f"fetching with [REDACTED] and {EVIL}\n")
    assert "No daemon log lines are kept" in get(make_pages(FakeSource()), "/logs").text


def test_live_log_script_is_served() -> None:
    a = get(make_pages(FakeSource()), "/static/livelog.js")
    assert a.code == 200
    assert a.headers["content-type"] == "text/javascript; charset=utf-8"
    assert b'getElementById("live")' in a.body


def test_status_page_says_a_build_was_skipped() -> None:
    skipped = replace(
        result("apps/hello", image="apps/hello/1"), identical=True, skipped="same manifest commit c"
    )
    source = FakeSource(results={"apps/hello": skipped}, streams=["apps/hello"])
    body = get(make_pages(source), "/").text
    assert rows(body, "Successful image builds:")[0][1] == (
        "apps/hello/1 (skipped: nothing could change)"
    )
