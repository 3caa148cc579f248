"""Tests for imaginator.deps (the dependency graph) and the /showDirectedGraph page.

The pure functions are checked directly, the DOT text also against the Go
imaginator's recorded ``GetDirectedGraph`` answer. The generator runs on a
``Clock`` with a thread pool that only runs work when the test says so, a
fake streams registry and a fake git fetch that writes manifests from a
table and "takes" as long as the test wants on a fake monotonic clock.
"""

from __future__ import annotations

import ast
import base64
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from klein import Klein
from treq.testing import StubTreq
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import Clock
from twisted.logger import LogEvent, formatEvent, globalLogPublisher

from imaginator.config.main import QuickLink
from imaginator.config.streams import StreamsDocument, parse_streams
from imaginator.deps import (
    INITIAL_INTERVAL,
    DependencyData,
    DependencyGenerator,
    classify,
    dependency_order,
    graphviz_dot,
    select_streams,
    stream_matches,
)
from imaginator.goformats.units import format_time
from imaginator.sources.giturls import GitFetchError, public_url
from imaginator.web.graph_pages import GraphPages
from tests.support.fakes import FakeReactor, SyncThreadPool, fired
from tests.support.vectors import VECTORS

ARCH = "amd64"
EVIL = "<script>alert(1)</script>"


# ======================================================= the Go vectors


def _server_json(name: str) -> dict[str, Any]:
    """The JSON reply in a transcript (the server's bytes, reassembled)."""
    stream = b""
    for line in (VECTORS / name).read_text().splitlines():
        m = re.match(r"^\+\s*[\d.]+ms S< (b['\"].*['\"])(   \[.*\])?$", line)
        if m:
            stream += ast.literal_eval(m.group(1))
    for chunk in stream.split(b"\n"):
        if chunk.startswith(b"{"):
            return json.loads(chunk)
    raise AssertionError(f"no JSON reply in {name}")


def test_dot_matches_the_go_vector() -> None:
    deps = _server_json("imaginator-getdependencies.txt")
    graph = _server_json("imaginator-getdirectedgraph.txt")
    data = DependencyData(
        generated_at=1.0,
        stream_to_source=deps["StreamToSource"],
        unbuildable_sources=frozenset(deps["UnbuildableSources"] or ()),
    )
    expected = base64.b64decode(graph["GraphvizDot"]).decode()
    # The capture had two bootstrap streams and no ImageStreamsToAutoRebuild.
    got = graphviz_dot(data, [], [], [], bootstrap=["bootstrap/bb", "bootstrap/Debian-12"])
    assert got == expected
    assert got.startswith('digraph all {\n  "apps/broken" -> "bootstrap/bb"\n')


def test_fetch_log_wording_matches_the_go_vector() -> None:
    log = base64.b64decode(_server_json("imaginator-getdependencies.txt")["FetchLog"]).decode()
    assert re.fullmatch(r"Cumulative fetch time: \S+\nGenerated dependencies in: \S+\n", log)


# ===================================================== pure functions


@pytest.mark.parametrize(
    ("pattern", "name", "matches"),
    [
        ("users", "users", True),
        ("users", "users/fred/base", True),
        ("users/fred", "users/fred/base", True),
        ("users", "usersx/base", False),
        ("users/", "users/fred", False),
        ("users/fred/base", "users/fred", False),
        ("", "users", False),
        ("", "", True),
    ],
)
def test_stream_matches(pattern: str, name: str, matches: bool) -> None:
    assert stream_matches(pattern, name) is matches


def _patterns(*keys: str) -> StreamsDocument:
    doc = {"StreamPatterns": {key: {} for key in keys}}
    return parse_streams(json.dumps(doc), "streams.json", ARCH)


def test_classify() -> None:
    stream_to_source = {
        "apps/a": "bootstrap/bb",  # bootstrap: fine
        "apps/b": "apps/a",  # normal: fine
        "apps/c": "users/fred/base",  # one pattern
        "apps/d": "nowhere/x",  # no pattern
        "apps/e": "both/x",  # two patterns: lookup error
        "apps/f": "",  # no SourceImage at all
        "apps/g": "apps/z",  # a configured normal stream not in the mapping
    }
    doc = _patterns("users/[^/]+/base", "both/.*", "both/x|other")
    pattern_sources, unbuildable = classify(
        stream_to_source, ["apps/z", *stream_to_source], ["bootstrap/bb"], doc
    )
    assert pattern_sources == {"users/fred/base"}
    assert unbuildable == {"nowhere/x", "both/x", ""}


# A small forest:  boot -> base -> {web, db};  web -> web/extra;  pat/x -> p1
TREE = {
    "base": "boot",
    "web": "base",
    "db": "base",
    "web/extra": "web",
    "p1": "pat/x",
}


def test_select_without_filters_keeps_every_name() -> None:
    assert select_streams(TREE, [], [], ["auto/only"]) == {
        "boot",
        "base",
        "web",
        "db",
        "web/extra",
        "p1",
        "pat/x",
        "auto/only",
    }


def test_excludes_take_dependents_along() -> None:
    kept = select_streams(TREE, ["web"], [])
    # "web" matches web and web/extra by prefix; their dependents go too.
    assert kept == {"boot", "base", "db", "p1", "pat/x"}
    assert select_streams(TREE, ["base"], []) == {"boot", "p1", "pat/x"}
    assert select_streams(TREE, ["boot"], [], ["boot2"]) == {"p1", "pat/x", "boot2"}


def test_includes_keep_matches_their_dependents_and_ancestors() -> None:
    assert select_streams(TREE, [], ["web"]) == {"boot", "base", "web", "web/extra"}
    assert select_streams(TREE, [], ["base"]) == {"boot", "base", "web", "db", "web/extra"}
    assert select_streams(TREE, [], ["p1", "db"]) == {"p1", "pat/x", "db", "base", "boot"}
    assert select_streams(TREE, [], ["nothing"]) == frozenset()


def test_excludes_apply_on_top_of_includes() -> None:
    assert select_streams(TREE, ["web/extra"], ["base"]) == {"boot", "base", "web", "db"}
    assert select_streams(TREE, ["boot"], ["web"]) == frozenset()


def test_select_survives_cycles() -> None:
    cyclic = {"a": "b", "b": "a", "c": "a"}
    assert select_streams(cyclic, ["a"], []) == frozenset()
    assert select_streams(cyclic, [], ["c"]) == {"a", "b", "c"}


def _forest_data(**kwargs: Any) -> DependencyData:
    return DependencyData(generated_at=1.0, stream_to_source=dict(TREE), **kwargs)


def test_dot_full() -> None:
    data = _forest_data(pattern_sources=frozenset({"pat/x"}), unbuildable_sources=frozenset())
    assert graphviz_dot(data, [], [], ["web", "boot", "base", "web"]) == (
        "digraph all {\n"
        '  "base" -> "boot"\n'
        '  "db" -> "base"\n'
        '  "p1" -> "pat/x"\n'
        '  "web" -> "base"\n'
        '  "web/extra" -> "web"\n'
        '  "pat/x" [fontcolor=grey]\n'
        '  "base" [style=bold]\n'
        '  "boot" [style=bold]\n'
        '  "web" [style=bold]\n'
        "}\n"
    )


def test_dot_attributes_sorted_and_filtered() -> None:
    data = DependencyData(
        generated_at=1.0,
        stream_to_source={"x": "zz/missing", "y": "aa/missing", "q": "pat/b", "r": "pat/a"},
        pattern_sources=frozenset({"pat/b", "pat/a"}),
        unbuildable_sources=frozenset({"zz/missing", "aa/missing"}),
    )
    assert graphviz_dot(data, ["zz", "pat/b"], [], ["y", "x"]) == (
        "digraph all {\n"
        '  "r" -> "pat/a"\n'
        '  "y" -> "aa/missing"\n'
        '  "pat/a" [fontcolor=grey]\n'
        '  "aa/missing" [fontcolor=red]\n'
        '  "y" [style=bold]\n'
        "}\n"
    )


def test_dot_with_includes_and_bootstrap_excludes() -> None:
    data = _forest_data()
    assert graphviz_dot(data, [], ["db"], ["web", "db"]) == (
        'digraph all {\n  "base" -> "boot"\n  "db" -> "base"\n  "db" [style=bold]\n}\n'
    )
    # An auto-rebuilt bootstrap stream nobody uses is still excluded by name.
    assert graphviz_dot(data, ["lonely"], [], ["lonely"], bootstrap=["lonely"]).count("lonely") == 0


def test_dot_quotes_names() -> None:
    data = DependencyData(generated_at=1.0, stream_to_source={'we"ird\\': "x\ny"})
    assert graphviz_dot(data, [], [], []) == 'digraph all {\n  "we\\"ird\\\\" -> "x\\ny"\n}\n'


def test_dependency_order_puts_sources_first() -> None:
    assert dependency_order(["web/extra", "db", "web", "base"], TREE) == [
        "base",
        "web",
        "web/extra",
        "db",
    ]
    # Unlisted intermediate streams still order their listed ancestors first.
    assert dependency_order(["web/extra", "boot"], TREE) == ["boot", "web/extra"]
    # No relation between them: list order; duplicates dropped.
    assert dependency_order(["p1", "db", "p1", "x"], TREE) == ["p1", "db", "x"]
    assert dependency_order([], TREE) == []


def test_dependency_order_reports_cycles_without_looping() -> None:
    graph = {"a": "b", "b": "c", "c": "a", "z": "a", "self": "self", "d": "x"}
    cycles: list[list[str]] = []
    order = dependency_order(["z", "c", "d", "self", "a", "b"], graph, cycles.append)
    assert order == ["c", "a", "b", "z", "d", "self"]
    assert cycles == [["a", "b", "c", "a"], ["self", "self"]]


def test_dependency_order_logs_cycles_by_default(logged: list[LogEvent]) -> None:
    assert dependency_order(["a", "b"], {"a": "b", "b": "a"}) == ["a", "b"]
    assert "Dependency cycle: a -> b -> a" in _texts(logged)


# ============================================================= generator


class FakeRegistry:
    """A streams registry: current() and subscribe(); the test publishes documents."""

    def __init__(self, document: StreamsDocument | None = None, loaded: bool = False) -> None:
        self.document = document or StreamsDocument()
        self.subscribers: list[Callable[[StreamsDocument], object]] = []
        self.is_loaded = loaded

    def current(self) -> StreamsDocument:
        return self.document

    def subscribe(self, callback: Callable[[StreamsDocument], object]) -> Callable[[], None]:
        self.subscribers.append(callback)
        return lambda: self.subscribers.remove(callback)

    def publish(self, document: StreamsDocument) -> None:
        self.document = document
        self.is_loaded = True
        for callback in list(self.subscribers):
            callback(document)


class FakeTime:
    """A monotonic clock the fake fetch advances."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FakeGit:
    """Repositories by URL: ``{directory: manifest text}``, or an exception to raise."""

    def __init__(self, monotonic: FakeTime) -> None:
        self.repos: dict[str, dict[str, str] | Exception] = {}
        self.calls: list[str] = []
        self.seconds = 0.0
        self.monotonic = monotonic
        self.extra_line = ""

    def __call__(self, url: str, dest: str, log: Callable[[str], None]) -> None:
        self.calls.append(url)
        log(f"Cloning repository: {public_url(url)} branch: (default)")
        if self.extra_line:
            log(self.extra_line)
        self.monotonic.now += self.seconds
        repo = self.repos.get(url)
        if repo is None:
            raise GitFetchError(public_url(url), "not a git repository (or it does not exist)")
        if isinstance(repo, Exception):
            raise repo
        for directory, text in repo.items():
            path = Path(dest, directory, "manifest")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        log("Downloaded partial repository in 1s, size: 1 KiB (1 KiB/s)")


def manifest(source: str) -> str:
    return json.dumps({"SourceImage": source})


REPO1 = "https://builder:$GIT_PASSWORD@git.example.org/one.git"
REPO1_EXPANDED = "https://builder:hunter2@git.example.org/one.git"
REPO2 = "https://git.example.org/two.git"
SECRETS = {"GIT_PASSWORD": "hunter2"}


def streams_document(dir_root: Path) -> StreamsDocument:
    doc = {
        "Streams": {
            "apps/a": {"ManifestUrl": REPO1, "ManifestDirectory": "a"},
            "apps/b": {"ManifestUrl": REPO1, "ManifestDirectory": "${IMAGE_STREAM_LEAF_NAME}"},
            "apps/c": {"ManifestUrl": REPO2},
            "apps/d": {"ManifestUrl": f"dir://{dir_root}", "ManifestDirectory": "d"},
            "bootstrap/bb": {"ManifestUrl": "https://never.example.org/x.git"},
        },
        "StreamPatterns": {"users/[^/]+/base": {"ManifestUrl": REPO2}},
    }
    return parse_streams(json.dumps(doc), "streams.json", ARCH)


class Harness:
    """A DependencyGenerator with all its fakes."""

    def __init__(self, tmp_path: Path, *, loaded: bool = False, auto: bool = True) -> None:
        self.tmp_path = tmp_path
        self.clock = FakeReactor()
        self.clock.advance(1_800_000_000)
        self.pool = SyncThreadPool(auto=auto)
        self.time = FakeTime()
        self.git = FakeGit(self.time)
        self.git.repos[REPO1_EXPANDED] = {
            "a": manifest("bootstrap/bb"),
            "b": manifest("apps/a"),
        }
        self.git.repos[REPO2] = {".": manifest("users/$IMAGE_STREAM_LEAF_NAME/base")}
        self.dir_root = tmp_path / "manifests"
        (self.dir_root / "d").mkdir(parents=True)
        # The stream environment expands SourceImage; secrets do not.
        (self.dir_root / "d" / "manifest").write_text(manifest("nowhere/$ARCH$GIT_PASSWORD"))
        self.workdir = tmp_path / "work"
        self.workdir.mkdir()
        self.registry = FakeRegistry(streams_document(self.dir_root), loaded=loaded)
        self.generator = DependencyGenerator(
            reactor=self.clock,
            clock=self.clock,
            threadpool=self.pool,
            streams=self.registry,
            bootstrap_streams=["bootstrap/bb"],
            secrets=lambda: SECRETS,
            arch=ARCH,
            tmpdir=str(self.workdir),
            fetch=self.git,
            monotonic=self.time,
        )

    def get(self, max_age: float) -> Deferred[DependencyData | None]:
        return ensureDeferred(self.generator.get(max_age))


@pytest.fixture
def logged() -> Iterator[list[LogEvent]]:
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def _texts(events: list[LogEvent]) -> list[str]:
    return [formatEvent(e) for e in events]


EXPECTED = {
    "apps/a": "bootstrap/bb",
    "apps/b": "apps/a",
    "apps/c": "users/c/base",
    "apps/d": "nowhere/amd64",
}


def test_generation(tmp_path: Path, logged: list[LogEvent]) -> None:
    h = Harness(tmp_path)
    assert fired(h.get(0)) is None
    h.git.seconds = 1.5
    h.git.extra_line = "remote says: token hunter2"
    data = fired(h.get(5))
    assert data.stream_to_source == EXPECTED
    assert data.pattern_sources == {"users/c/base"}
    assert data.unbuildable_sources == {"nowhere/amd64"}
    assert data.generated_at == data.last_attempt_at == h.clock.seconds()
    assert data.last_attempt_error == ""
    assert data.has_data
    # One fetch per distinct expanded URL (apps/a and apps/b share one).
    assert sorted(h.git.calls) == sorted([REPO1_EXPANDED, REPO2])
    lines = data.fetch_log.splitlines()
    assert lines[-2:] == ["Cumulative fetch time: 3s", "Generated dependencies in: 3s"]
    assert lines.count("Cloning repository: https://git.example.org/two.git branch: (default)") == 1
    assert (
        "Cloning repository: https://builder:***@git.example.org/one.git branch: (default)" in lines
    )
    assert "hunter2" not in data.fetch_log
    assert "remote says: token [REDACTED]" in lines
    assert "stream: apps/d has unbuildable source: nowhere/amd64" in _texts(logged)
    # The checkouts are gone.
    assert list(h.workdir.iterdir()) == []


def test_unbuildable_sources_not_logged_without_bootstrap_streams(
    tmp_path: Path, logged: list[LogEvent]
) -> None:
    h = Harness(tmp_path)
    h.generator._bootstrap = frozenset()
    h.git.repos["https://never.example.org/x.git"] = {".": manifest("")}
    data = fired(h.get(5))
    assert data.unbuildable_sources == {"nowhere/amd64", ""}
    assert not [t for t in _texts(logged) if "unbuildable" in t]


def test_failure_keeps_the_last_good_data(tmp_path: Path, logged: list[LogEvent]) -> None:
    h = Harness(tmp_path)
    good = fired(h.get(5))
    h.clock.advance(60)
    h.git.repos[REPO1_EXPANDED] = GitFetchError(
        "https://builder:***@git.example.org/one.git", "authentication failed (HTTP 401)"
    )
    data = fired(h.get(5))
    assert data.stream_to_source == good.stream_to_source
    assert data.unbuildable_sources == good.unbuildable_sources
    assert data.generated_at == good.generated_at
    assert data.last_attempt_at == good.last_attempt_at + 60
    assert data.last_attempt_error == (
        "stream: apps/a: https://builder:***@git.example.org/one.git: "
        "authentication failed (HTTP 401)"
    )
    assert "Error fetching https://builder:***@git.example.org/one.git: " in data.fetch_log
    assert data.fetch_log != good.fetch_log
    assert list(h.workdir.iterdir()) == []
    assert any("Failed to generate dependencies: stream: apps/a" in t for t in _texts(logged))

    # A manifest error fails the run too, naming the stream.
    h.clock.advance(60)
    h.git.repos[REPO1_EXPANDED] = {"a": manifest("bootstrap/bb"), "b": "{not json"}
    data = fired(h.get(5))
    assert data.generated_at == good.generated_at
    assert data.last_attempt_error.startswith("stream: apps/b: error reading manifest file: ")

    # A missing dir:// manifest as well; then recovery.
    h.clock.advance(60)
    h.git.repos[REPO1_EXPANDED] = {"a": manifest("bootstrap/bb"), "b": manifest("apps/a")}
    (h.dir_root / "d" / "manifest").unlink()
    data = fired(h.get(5))
    assert data.last_attempt_error.startswith("stream: apps/d: error reading manifest file: ")
    (h.dir_root / "d" / "manifest").write_text(manifest("bootstrap/bb"))
    h.clock.advance(60)
    data = fired(h.get(5))
    assert data.last_attempt_error == ""
    assert data.generated_at == h.clock.seconds()
    assert data.unbuildable_sources == frozenset()


def test_first_failure_has_no_data(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    del h.git.repos[REPO2]
    data = fired(h.get(5))
    assert data is not None
    assert not data.has_data
    assert data.stream_to_source == {}
    assert data.last_attempt_error.startswith("stream: apps/c: https://git.example.org/two.git:")
    assert "Error fetching https://git.example.org/two.git" in data.fetch_log


def test_manifest_directory_may_not_leave_the_checkout(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    doc = {"Streams": {"apps/x": {"ManifestUrl": REPO2, "ManifestDirectory": "../.."}}}
    h.registry.document = parse_streams(json.dumps(doc), "streams.json", ARCH)
    data = fired(h.get(5))
    assert data.last_attempt_error == "stream: apps/x: ../.. is outside the repository"


def test_get_freshness(tmp_path: Path) -> None:
    h = Harness(tmp_path, auto=False)
    pending = h.get(5)
    assert not pending.called
    assert h.generator.busy
    h.pool.run_all()
    data = fired(pending)
    assert h.generator.runs == 1
    # Young enough: no new run.
    h.clock.advance(4)
    assert fired(h.get(5)) is data
    h.clock.advance(1)
    pending = h.get(5)
    assert not pending.called and h.generator.runs == 2
    # Another caller during the run is answered by the same run.
    other = h.get(5)
    h.pool.run_all()
    assert fired(pending) is fired(other)
    assert h.generator.runs == 2
    # max_age <= 0: whatever is there, no run.
    h.clock.advance(1000)
    assert fired(h.get(0)) is fired(other)
    assert h.generator.runs == 2


def test_min_max_age_is_two_seconds(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    fired(h.get(5))
    h.clock.advance(1.5)
    fired(h.get(0.1))
    assert h.generator.runs == 1
    h.clock.advance(0.5)
    fired(h.get(0.1))
    assert h.generator.runs == 2


def test_streams_updates_are_coalesced(tmp_path: Path) -> None:
    h = Harness(tmp_path, auto=False)
    h.generator.startService()
    h.registry.publish(h.registry.document)
    assert h.generator.busy
    for _ in range(3):
        h.registry.publish(h.registry.document)
    h.pool.run_all()
    # The run in progress, then exactly one more.
    assert h.generator.runs == 2
    assert len(h.git.calls) == 4
    assert not h.generator.busy
    h.generator.stopService()


def test_runs_never_overlap(tmp_path: Path) -> None:
    h = Harness(tmp_path, auto=False)
    seen: list[int] = []
    fetch = h.git

    def tracking(url: str, dest: str, log: Callable[[str], None]) -> None:
        seen.append(h.generator.runs)
        fetch(url, dest, log)

    h.generator._fetch = tracking
    h.generator.trigger()
    h.generator.trigger()
    waiting = h.get(5)
    assert h.generator.runs == 1
    h.pool.run_all()
    # Run 2 started only once run 1 was over.
    assert seen == [1, 1, 2, 2]
    assert fired(waiting) is not None
    assert not h.generator.busy


def test_timer(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.generator.startService()
    assert h.generator.interval == INITIAL_INTERVAL
    h.clock.advance(INITIAL_INTERVAL - 1)
    assert h.generator.runs == 0
    h.clock.advance(1)
    assert h.generator.runs == 1
    # No fetch time: the minimum of 10 s.
    assert h.generator.interval == 10
    h.git.seconds = 3.0  # two fetches: 6 s cumulative -> 60 s
    h.clock.advance(10)
    assert h.generator.runs == 2
    assert h.generator.interval == 60
    h.clock.advance(59)
    assert h.generator.runs == 2
    # A streams update runs at once and resets the timer.
    h.git.seconds = 0.0
    h.registry.publish(h.registry.document)
    assert h.generator.runs == 3
    h.clock.advance(1)
    assert h.generator.runs == 3
    h.clock.advance(9)
    assert h.generator.runs == 4
    h.generator.stopService()
    assert h.clock.getDelayedCalls() == []
    assert h.registry.subscribers == []
    h.clock.advance(3600)
    assert h.generator.runs == 4


def test_start_runs_at_once_when_streams_are_loaded(tmp_path: Path) -> None:
    h = Harness(tmp_path, loaded=True)
    h.generator.startService()
    assert h.generator.runs == 1
    assert fired(h.get(0)).stream_to_source == EXPECTED
    h.generator.stopService()


def test_fetches_run_concurrently_in_the_thread_pool(tmp_path: Path) -> None:
    h = Harness(tmp_path, auto=False)
    d = h.get(5)
    assert len(h.pool.queue) == 1  # the temporary directory
    h.pool.step()
    # Both fetches are handed to the pool at once.
    assert len(h.pool.queue) == 2
    assert h.git.calls == []
    h.pool.run_all()
    fired(d)
    # mkdtemp, two fetches, manifest reading, rmtree: nothing on the reactor.
    assert h.pool.calls == 5


# ========================================================== the web page


class FakeGenerator:
    """What GraphPages needs: bootstrap_streams and get(max_age)."""

    def __init__(self, data: DependencyData | None) -> None:
        self.data = data
        self.bootstrap_streams = frozenset({"boot"})
        self.requests: list[float] = []

    async def get(self, max_age: float) -> DependencyData | None:
        self.requests.append(max_age)
        return self.data


SVG = (
    b'<?xml version="1.0" encoding="UTF-8" standalone="no"?>\n'
    b'<!DOCTYPE svg PUBLIC "-//W3C//DTD SVG 1.1//EN"\n'
    b' "http://www.w3.org/Graphics/SVG/1.1/DTD/svg11.dtd">\n'
    b"<!-- Generated by graphviz -->\n"
    b'<svg width="8pt" height="8pt"><title>all</title></svg>\n'
)


class FakeDot:
    def __init__(self, output: bytes = SVG, error: Exception | None = None) -> None:
        self.output = output
        self.error = error
        self.inputs: list[str] = []

    async def __call__(self, dot_text: str) -> bytes:
        self.inputs.append(dot_text)
        if self.error is not None:
            raise self.error
        return self.output


NOW = 1_800_000_000.0


def page_client(
    generator: FakeGenerator, dot: FakeDot, *, links: tuple[QuickLink, ...] = (), now: float = NOW
) -> StubTreq:
    clock = Clock()
    clock.advance(now)
    pages = GraphPages(
        generator,
        clock,
        links,
        dot,
        auto_rebuild=lambda: ["web"],
        version="9.9",
    )
    app = Klein()
    pages.install(app)
    return StubTreq(app.resource())


def fetch_page(
    client: StubTreq, url: str = "http://localhost/showDirectedGraph", method: str = "GET"
) -> tuple[Any, str]:
    responses: list[Any] = []
    client.request(method, url, allow_redirects=False).addCallback(responses.append)
    client.flush()
    response = responses[0]
    bodies: list[str] = []
    response.text().addCallback(bodies.append)
    client.flush()
    return response, bodies[0]


def _good_data(**kwargs: Any) -> DependencyData:
    values: dict[str, Any] = {
        "generated_at": NOW - 60,
        "stream_to_source": dict(TREE),
        "fetch_log": "Cumulative fetch time: 0s\nGenerated dependencies in: 152µs\n",
        "last_attempt_at": NOW - 60,
    }
    values.update(kwargs)
    return DependencyData(**values)


def _assert_security_headers(response: Any) -> None:
    h = response.headers
    assert h.getRawHeaders("X-Frame-Options") == ["DENY"]
    assert h.getRawHeaders("X-XSS-Protection") == ["1"]
    assert h.getRawHeaders("X-Content-Type-Options") == ["nosniff"]
    assert h.getRawHeaders("Content-Security-Policy") == [
        "default-src 'self' ;style-src 'self' 'unsafe-inline'"
    ]


def test_page_without_data() -> None:
    generator = FakeGenerator(None)
    dot = FakeDot()
    response, body = fetch_page(page_client(generator, dot))
    assert response.code == 200
    _assert_security_headers(response)
    assert response.headers.getRawHeaders("Content-Type") == ["text/html; charset=utf-8"]
    assert "<title>imaginator image stream relationshops</title>" in body
    assert "<h1>imaginator image stream relationships</h1>" in body
    assert "No data generated yet" in body
    assert 'value="Regenerate"' in body
    assert "Fetch log" not in body
    assert dot.inputs == []
    assert generator.requests == [0]


def test_page_with_data() -> None:
    data = _good_data()
    generator = FakeGenerator(data)
    dot = FakeDot()
    _response, body = fetch_page(page_client(generator, dot))
    assert dot.inputs == [graphviz_dot(data, [], [], ["web"], bootstrap=["boot"])]
    assert '<svg width="8pt" height="8pt"><title>all</title></svg>' in body
    assert "<?xml" not in body and "DOCTYPE svg" not in body
    assert "No data" not in body
    assert '<font color="#bbb">\n<b>Fetch log:</b>\n<pre>\nCumulative fetch time: 0s\n' in body
    assert f"Data generated at: {format_time(NOW - 60)}<br>" in body
    assert "Last generation attempt" not in body
    assert (
        '<form enctype="application/x-www-form-urlencoded" action="/showDirectedGraph" '
        'method="post">\n<input type="submit" value="Regenerate">' in body
    )
    assert f"Page generated at: {format_time(NOW)} with imaginator 9.9" in body


def test_page_passes_excludes_and_includes() -> None:
    data = _good_data()
    dot = FakeDot()
    fetch_page(
        page_client(FakeGenerator(data), dot),
        "http://localhost/showDirectedGraph?exclude=web/extra&include=base&include=&exclude=",
    )
    assert dot.inputs == [
        graphviz_dot(data, ["web/extra"], ["base"], ["web"], bootstrap=["boot"]),
    ]
    assert '"web/extra"' not in dot.inputs[0]


def test_page_fresh_data_has_no_regenerate_button() -> None:
    data = _good_data(generated_at=NOW - 1, last_attempt_at=NOW - 1)
    _response, body = fetch_page(page_client(FakeGenerator(data), FakeDot()))
    assert "Regenerate" not in body


def test_page_dot_failure_shows_the_dot_text_escaped() -> None:
    data = _good_data(stream_to_source={EVIL: "base"})
    dot = FakeDot(error=RuntimeError("dot: exit status 1: syntax error"))
    _response, body = fetch_page(page_client(FakeGenerator(data), dot))
    assert "error rendering graph: dot: exit status 1: syntax error" in body
    assert "Showing graph data:" in body
    assert "&#34;&lt;script&gt;alert(1)&lt;/script&gt;&#34; -&gt; &#34;base&#34;" in body
    assert EVIL not in body


def test_page_output_without_svg_is_an_error() -> None:
    _response, body = fetch_page(page_client(FakeGenerator(_good_data()), FakeDot(b"nothing")))
    assert "error rendering graph: no SVG in dot output" in body


def test_page_quick_links() -> None:
    links = (
        QuickLink(name="No users", url="?exclude=users"),
        QuickLink(name=EVIL, url='?include="x"'),
    )
    _response, body = fetch_page(page_client(FakeGenerator(None), FakeDot(), links=links))
    assert (
        '<a href="/showDirectedGraph?exclude=users">No users</a>&nbsp;&nbsp;&nbsp;'
        '<a href="/showDirectedGraph?include=&#34;x&#34;">'
        "&lt;script&gt;alert(1)&lt;/script&gt;</a>"
    ) in body


def test_page_failed_attempt() -> None:
    data = _good_data(
        fetch_log=f"Error fetching x: {EVIL}\n",
        last_attempt_at=NOW - 5,
        last_attempt_error=f"stream: apps/a: {EVIL}",
    )
    _response, body = fetch_page(page_client(FakeGenerator(data), FakeDot()))
    assert '<font color="#fbb">\n<b>Failed fetch log:</b>' in body
    assert "Error fetching x: &lt;script&gt;" in body
    assert f"Data generated at: {format_time(NOW - 60)}<br>" in body
    assert (
        f"Last generation attempt at: {format_time(NOW - 5)} failed: stream: apps/a: "
        "&lt;script&gt;alert(1)&lt;/script&gt;<br>"
    ) in body
    assert EVIL not in body
    # Failed before ever succeeding: no graph, but the failed log.
    never = DependencyData(
        fetch_log="boom\n", last_attempt_at=NOW - 5, last_attempt_error="stream: a: boom"
    )
    dot = FakeDot()
    _response, body = fetch_page(page_client(FakeGenerator(never), dot))
    assert "No data generated yet" in body
    assert "Failed fetch log:" in body
    assert "Data generated at" not in body
    assert dot.inputs == []


def test_post_regenerates_and_redirects() -> None:
    generator = FakeGenerator(_good_data())
    response, _body = fetch_page(
        page_client(generator, FakeDot()), "http://localhost/showDirectedGraph", "POST"
    )
    assert response.code == 302
    assert response.headers.getRawHeaders("Location") == ["/showDirectedGraph"]
    _assert_security_headers(response)
    assert generator.requests == [2.0]
