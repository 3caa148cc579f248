"""The status and build-log pages in a real headless Chromium, served by a real reactor."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer, error, protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import Site

from imaginator.runtime.buildlog import BuildLog
from imaginator.runtime.logbuffer import LogRing
from imaginator.runtime.stages import StageTime
from imaginator.scheduler import BuildResult, CurrentBuild
from imaginator.web.pages import StatusPages
from tests.support.browser import open_page

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
EVIL = "<script>document.title='pwned'</script>"
TIMEOUT = 90.0


class Source:
    """A StatusSource with a running build, a failure and a success."""

    def __init__(self, now: float) -> None:
        self.ring: LogRing | None = None
        log = BuildLog()
        log.line("Building: apps/hello for: peer-client")
        log.line("Running script: 9_first")
        self.current = {
            "apps/hello": CurrentBuild("apps/hello", now - 12, log, "peer-client", False),
        }
        self.results = {
            "x": BuildResult(
                stream="x",
                image_name="",
                started_at=now - 80,
                finished_at=now - 79.5,
                log=f"Building: x\ncafé \N{SNOWMAN} {EVIL}\nexit status 1\n".encode(),
                error=f"error running script: 1_fail: exit status 1 {EVIL}",
                requestor="peer-client",
            ),
            "bootstrap/bb": BuildResult(
                stream="bootstrap/bb",
                image_name="bootstrap/bb/2026-11-27:10:53:19",
                started_at=now - 300,
                finished_at=now - 299.4,
                log=b"Building: bootstrap/bb\n",
            ),
            "apps/other": BuildResult(
                stream="apps/other",
                image_name="apps/other/2026-11-27:10:53:20",
                started_at=now - 200,
                finished_at=now - 199.9,
                log=b"Building: apps/other\n",
            ),
        }

    def current_builds(self) -> list[CurrentBuild]:
        return list(self.current.values())

    def last_results(self) -> list[BuildResult]:
        return list(self.results.values())

    def current_build(self, stream: str) -> CurrentBuild | None:
        return self.current.get(stream)

    def last_result(self, stream: str) -> BuildResult | None:
        return self.results.get(stream)

    def stream_names(self) -> list[str]:
        return ["apps/hello", "apps/other", "bootstrap/bb", "x"]

    def auto_rebuild_streams(self) -> frozenset[str]:
        return frozenset({"bootstrap/bb"})

    def build_requests_disabled_until(self) -> float | None:
        return None


class _Collect(protocol.ProcessProtocol):
    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.err: list[bytes] = []
        self.done: defer.Deferred[int | None] = defer.Deferred()

    def outReceived(self, data: bytes) -> None:
        self.out.append(data)

    def errReceived(self, data: bytes) -> None:
        self.err.append(data)

    def processEnded(self, reason: Failure) -> None:
        code = reason.value.exitCode if reason.check(error.ProcessTerminated) else 0
        self.done.callback(code)


async def chromium(reactor, user_data_dir: Path, *args: str) -> bytes:
    """Run headless Chromium without blocking the reactor; its stdout, or fail."""
    proto = _Collect()
    argv = [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={user_data_dir}", *args]
    transport = reactor.spawnProcess(proto, CHROMIUM, argv, env=dict(os.environ))
    killer = reactor.callLater(TIMEOUT, transport.signalProcess, "KILL")
    try:
        code = await proto.done
    finally:
        if killer.active():
            killer.cancel()
    stderr = b"".join(proto.err).decode(errors="replace")
    assert code == 0, f"chromium exited {code}: {stderr[-2000:]}"
    return b"".join(proto.out)


def dom_text(dom: str) -> str:
    """The DOM without tags, entities decoded, roughly what a reader sees."""
    import html

    return html.unescape(re.sub(r"<[^>]+>", "", dom))


@pytest.fixture
def served(tmp_path: Path):
    from twisted.internet import reactor

    now = reactor.seconds()
    ring = LogRing()
    Logger(observer=ring).info("Startup: {version}", version="test-1")
    Logger(observer=ring).info("peer-client requested building image for stream: {s}", s=EVIL)
    source = Source(now)
    source.ring = ring
    pages = StatusPages(
        source=source,
        clock=reactor,
        started_at=now - 3725,
        hostname="browser-test",
        version="test-1",
        log_ring=ring,
        image_link=lambda name: f"showImage?{name}",
        archive_enabled=True,
    )
    port = reactor.listenTCP(0, Site(pages.resource()), interface="127.0.0.1")
    yield reactor, f"http://127.0.0.1:{port.getHost().port}", source
    pytest_twisted.blockon(defer.maybeDeferred(port.stopListening))


def _require_chromium() -> None:
    if not os.access(CHROMIUM, os.X_OK):
        raise AssertionError("chromium is not installed: run scripts/setup-host")


@pytest_twisted.ensureDeferred
async def test_status_page_in_chromium(served, tmp_path: Path) -> None:
    _require_chromium()
    reactor, base, _source = served
    dom = (await chromium(reactor, tmp_path / "profile", "--dump-dom", base + "/")).decode()
    assert "<title>imaginator status page</title>" in dom  # the injected script did not run
    assert "pwned" not in dom.split("</title>")[0]
    text = dom_text(dom)
    for expected in (
        "imaginator status page",
        "Uptime: 1h2m",
        "Hostname: browser-test",
        "Number of image streams: 4",
        "Image stream relationships",
        "Image server: embedded store",
        "Current image builds:",
        "Failed image builds:",
        "Successful image builds:",
        "Build log archive",
        "Startup: test-1",
        f"requested building image for stream: {EVIL}",
        f"error running script: 1_fail: exit status 1 {EVIL}",
        "bootstrap/bb/2026-11-27:10:53:19",
        "Page generated at:",
        "with imaginator test-1",
    ):
        assert expected in text, expected
    # Hostile values are text in the DOM, never elements.
    assert "<script>" not in dom
    assert re.search(r'<a href="showCurrentBuildLog\?apps/hello#bottom">log</a>', dom)
    assert re.search(r"<b>bootstrap/bb</b>", dom) is None  # not building: no bold row
    assert text.index("apps/other") < text.index("bootstrap/bb/2026")  # sorted by stream

    shot = Path(os.environ.get("IMAGINATOR_E2E_SCREENSHOT", tmp_path / "status.png"))
    await chromium(
        reactor,
        tmp_path / "profile-shot",
        f"--screenshot={shot}",
        "--window-size=1200,900",
        "--hide-scrollbars",
        base + "/",
    )
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest_twisted.ensureDeferred
async def test_last_build_log_in_chromium(served, tmp_path: Path) -> None:
    _require_chromium()
    reactor, base, _source = served
    dom = await chromium(reactor, tmp_path / "p", "--dump-dom", base + "/showLastBuildLog?x")
    dom_str = dom.decode()
    assert "<title>build log for stream x</title>" in dom_str
    text = dom_text(dom_str)
    assert "Latest build log for stream: x" in text
    assert f"café \N{SNOWMAN} {EVIL}" in text  # UTF-8 decoded, markup shown as text
    assert "<script>" not in dom_str

    unknown = await chromium(reactor, tmp_path / "q", "--dump-dom", base + "/showLastBuildLog?nope")
    assert "unknown image: nope" in unknown.decode()


@pytest_twisted.ensureDeferred
async def test_follow_build_log_in_chromium(served, tmp_path: Path) -> None:
    """The live log page streams chunks written while the browser reads, and ends with the build."""
    _require_chromium()
    reactor, base, source = served
    build = source.current["apps/hello"]

    def more() -> None:
        build.log.line(f"Running script: 10_note {EVIL}")

    def finish() -> None:
        del source.current["apps/hello"]
        build.log.line("Uploaded apps/hello/2026-11-27:10:53:19")

    reactor.callLater(1.0, more)
    reactor.callLater(1.5, finish)
    started = reactor.seconds()
    dom = await chromium(reactor, tmp_path / "p", "--dump-dom", base + "/followBuildLog?apps/hello")
    assert reactor.seconds() - started >= 1.5  # the response stayed open until the build ended
    text = dom_text(dom.decode())
    assert (
        "Building: apps/hello for: peer-client\nRunning script: 9_first\n"
        f"Running script: 10_note {EVIL}\nUploaded apps/hello/2026-11-27:10:53:19\n"
    ) in text
    assert "<script>" not in dom.decode()


# -- live logs in a driven browser: the newest line in view, the result at the end ----

#: The last non-empty line of the page's log (its <pre>), where it is on the screen,
#: and where the page is scrolled.
NEWEST_LINE = """(() => {
  const pre = document.querySelector("pre");
  if (!pre) return null;
  const walker = document.createTreeWalker(pre, NodeFilter.SHOW_TEXT);
  let last = null, node;
  while ((node = walker.nextNode())) if (node.data.trim()) last = node;
  if (!last) return null;
  const text = last.data.replace(/\\s+$/, "");
  const start = text.lastIndexOf("\\n") + 1;
  const range = document.createRange();
  range.setStart(last, start);
  range.setEnd(last, text.length);
  const box = range.getBoundingClientRect();
  const root = document.scrollingElement;
  return {line: text.slice(start), top: box.top, bottom: box.bottom,
          height: window.innerHeight, scrollTop: root.scrollTop,
          scrollHeight: root.scrollHeight};
})()"""

#: The links of the build's result (``#end``), and whether the result is on the screen.
RESULT = """(() => {
  const end = document.getElementById("end");
  if (!end || !end.querySelector("a")) return null;
  const box = end.querySelector(".state").getBoundingClientRect();
  return {text: end.textContent,
          links: [...end.querySelectorAll("a")].map(a => a.getAttribute("href")),
          visible: box.top >= 0 && box.bottom <= window.innerHeight};
})()"""


async def newest_in_view(page, line: str) -> dict:
    """Wait until ``line`` is the page's newest log line and it is on the screen."""
    return await page.wait_for(
        f"(s => s && s.line === {json.dumps(line)} && s.top >= 0 && s.bottom <= s.height"
        f" && s)({NEWEST_LINE})"
    )


async def newest_present(page, line: str) -> dict:
    """Wait until ``line`` is the page's newest log line, wherever the page is scrolled."""
    return await page.wait_for(f"(s => s && s.line === {json.dumps(line)} && s)({NEWEST_LINE})")


def write_lines(build: CurrentBuild, first: int, count: int) -> str:
    for i in range(first, first + count):
        build.log.line(f"line {i:03d} {EVIL}")
    return f"line {first + count - 1:03d} {EVIL}"


def finish_build(source: Source, build: CurrentBuild) -> None:
    """The build ends as the builder ends one: result recorded, then the log closed."""
    del source.current[build.stream]
    source.results[build.stream] = BuildResult(
        stream=build.stream,
        image_name="apps/hello/2026-11-27:10:53:20",
        started_at=build.started_at,
        finished_at=build.started_at + 30,
        log=build.log.getvalue(),
        requestor="peer-client",
        stages=(StageTime("fetch manifest", 1.0), StageTime("scripts/9_first", 2.0)),
    )
    build.log.close()


async def follow_the_watcher(page, source: Source, build: CurrentBuild) -> None:
    """The log grows; the watcher scrolls up, then back; the build ends."""
    newest = await newest_in_view(page, write_lines(build, 0, 120))
    assert newest["scrollHeight"] > newest["height"] * 2  # the log is longer than the screen

    newest = await newest_in_view(page, write_lines(build, 120, 40))  # followed as it grows

    await page.evaluate("window.scrollTo(0, 0)")  # the reader scrolls up to read
    line = write_lines(build, 160, 40)
    newest = await newest_present(page, line)
    assert newest["scrollTop"] == 0  # and stays where they are
    assert newest["top"] > newest["height"]

    await page.evaluate("window.scrollTo(0, document.scrollingElement.scrollHeight)")
    await newest_in_view(page, write_lines(build, 200, 40))  # back at the end: followed again

    finish_build(source, build)
    # The result arrives, and the page scrolls it into view (below the newest line).
    result = await page.wait_for(f"(r => r && r.visible && r)({RESULT})")
    assert "succeeded" in result["text"]
    assert result["links"][:2] == [
        "showLastBuildLog?apps/hello",
        "showImage?apps/hello/2026-11-27:10:53:20",
    ]
    await newest_in_view(page, f"line 239 {EVIL}")
    assert await page.evaluate("document.title") == "build log for stream apps/hello"


@pytest_twisted.ensureDeferred
async def test_follow_page_keeps_the_newest_line_in_view_and_ends_with_the_result(
    served, tmp_path: Path
) -> None:
    _require_chromium()
    _reactor, base, source = served
    build = source.current["apps/hello"]
    page = await open_page(tmp_path / "profile")
    try:
        await page.navigate(base + "/followBuildLog?apps/hello")
        await follow_the_watcher(page, source, build)
    finally:
        await page.close()


@pytest_twisted.ensureDeferred
async def test_current_build_page_follows_the_log_and_shows_the_result_when_done(
    served, tmp_path: Path
) -> None:
    _require_chromium()
    _reactor, base, source = served
    build = source.current["apps/hello"]
    page = await open_page(tmp_path / "profile")
    try:
        await page.navigate(base + "/showCurrentBuildLog?apps/hello#bottom")
        await follow_the_watcher(page, source, build)
        # The page stopped reloading: the finished part stays.
        assert await page.evaluate('document.getElementById("live").dataset.state') == "finished"
        # A reload after the build ended shows the result too (not "unknown image").
        await page.navigate(base + "/showCurrentBuildLog?apps/hello")
        result = await page.wait_for(f"({RESULT})")
        assert "showImage?apps/hello/2026-11-27:10:53:20" in result["links"]
    finally:
        await page.close()


@pytest_twisted.ensureDeferred
async def test_logs_page_follows_the_daemon_log(served, tmp_path: Path) -> None:
    _require_chromium()
    _reactor, base, source = served
    log = Logger(observer=source.ring)
    for i in range(60):
        log.info("daemon line {i:03d}", i=i)
    page = await open_page(tmp_path / "profile")
    try:
        await page.navigate(base + "/logs")
        # The newest line, scrolled into view.
        await page.wait_for(
            f"(s => s && s.line.endsWith('daemon line 059') && s.bottom <= s.height && s)"
            f"({NEWEST_LINE})"
        )
        log.info("daemon line {i}", i="after")
        after = "s.line.endsWith('daemon line after') && s.bottom <= s.height"
        await page.wait_for(f"(s => s && {after})({NEWEST_LINE})")
    finally:
        await page.close()
