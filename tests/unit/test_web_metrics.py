"""``/metrics`` (imaginator.web.metrics), on fakes of the builder and the store."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from klein import Klein
from klein.resource import KleinResource
from twisted.internet.task import Clock

from imaginator.runtime.stages import StageTime
from imaginator.scheduler import BuildResult
from imaginator.store.base import StoreError
from imaginator.web.metrics import BuildCounters, BuildState, ImageList, MetricsPage, escape_label
from tests.support.prometheus import parse
from tests.support.web import Answer, answer, assert_security_headers, start

NOW = 1_800_000_000.0
STARTED = NOW - 100.0


@dataclass
class FakeBuilder:
    """The build state the metrics read."""

    results: dict[str, BuildResult] = field(default_factory=dict)
    running: int = 0

    def running_count(self) -> int:
        return self.running

    def last_results(self) -> list[BuildResult]:
        return [self.results[s] for s in sorted(self.results)]


@dataclass
class FakeStore:
    """An image list, or a store that cannot be read (``broken``)."""

    images: list[str] = field(default_factory=list)
    broken: bool = False

    async def list_images(self) -> list[str]:
        if self.broken:
            raise StoreError("disk gone")
        return sorted(self.images)


def _protocols(builder: FakeBuilder, store: FakeStore) -> tuple[BuildState, ImageList]:
    return builder, store  # lets a type checker confirm the fakes satisfy the Protocols


def get(
    builder: FakeBuilder,
    store: FakeStore,
    method: bytes = b"GET",
    counters: BuildCounters | None = None,
) -> Answer:
    clock = Clock()
    clock.advance(NOW)
    app = Klein()
    MetricsPage(builder, store, clock, STARTED, counters=counters).install(app)
    req = start(KleinResource(app), "/metrics", method)
    assert req.finished
    result = answer(req)
    assert_security_headers(result)
    return result


def metric_lines(text: str) -> dict[str, str]:
    return dict(
        line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#")
    )


def test_metrics():
    builder = FakeBuilder(running=2)
    builder.results = {
        "apps/hello": BuildResult("apps/hello", "apps/hello/1", NOW - 30, NOW - 10, b""),
        "apps/broken": BuildResult("apps/broken", "", NOW - 5, NOW - 4.5, b"", error="x"),
        'we"ird\\\n': BuildResult('we"ird\\\n', "", NOW - 1, NOW, b"", error="x"),
    }
    store = FakeStore([f"apps/hello/{i}" for i in range(3)])
    a = get(builder, store)
    assert a.code == 200
    assert a.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    parse(a.text)
    values = metric_lines(a.text)
    assert values == {
        "imaginator_builds_running": "2",
        'imaginator_stream_last_build_success{stream="apps/broken"}': "0",
        'imaginator_stream_last_build_success{stream="apps/hello"}': "1",
        'imaginator_stream_last_build_success{stream="we\\"ird\\\\\\n"}': "0",
        'imaginator_stream_last_build_duration_seconds{stream="apps/broken"}': "0.5",
        'imaginator_stream_last_build_duration_seconds{stream="apps/hello"}': "20.0",
        'imaginator_stream_last_build_duration_seconds{stream="we\\"ird\\\\\\n"}': "1.0",
        'imaginator_stream_last_build_timestamp_seconds{stream="apps/broken"}': repr(NOW - 4.5),
        'imaginator_stream_last_build_timestamp_seconds{stream="apps/hello"}': repr(NOW - 10),
        'imaginator_stream_last_build_timestamp_seconds{stream="we\\"ird\\\\\\n"}': repr(NOW),
        "imaginator_images_total": "3",
        "imaginator_uptime_seconds": "100.0",
    }
    for family in ("imaginator_builds_running", "imaginator_uptime_seconds"):
        assert f"# TYPE {family} gauge\n" in a.text
    assert a.text.endswith("\n")


def test_escape_label():
    assert escape_label('a\\b"c\nd') == 'a\\\\b\\"c\\nd'


def test_metrics_without_store_still_answers():
    a = get(FakeBuilder(), FakeStore(broken=True))
    assert a.code == 200
    assert "imaginator_images_total" not in a.text
    assert "imaginator_uptime_seconds 100.0" in a.text


def test_head_request():
    assert get(FakeBuilder(), FakeStore(), method=b"HEAD").code == 200


def test_stage_and_counter_metrics_are_valid_prometheus_text():
    stages = (
        StageTime("fetch manifest", 1.0),
        StageTime('scripts/9_"x"\\', 2.5),
        StageTime("fetch manifest", 0.5),  # again, after a source build: added up
        StageTime("scan", 0.25, failed=True),
    )
    builder = FakeBuilder()
    builder.results = {
        "apps/hello": BuildResult("apps/hello", "", NOW - 30, NOW - 10, b"", "x", stages=stages),
        "bootstrap/bb": BuildResult("bootstrap/bb", "bootstrap/bb/1", NOW - 5, NOW, b""),
    }
    counters = BuildCounters()
    for result in (
        builder.results["bootstrap/bb"],
        builder.results["apps/hello"],
        builder.results["apps/hello"],
        BuildResult("apps/hello", "apps/hello/1", NOW - 99, NOW - 98, b""),
    ):
        counters.record(result)
    a = get(builder, FakeStore(), counters=counters)
    families = parse(a.text)
    stage = families["imaginator_build_stage_seconds"]
    assert stage["type"] == "gauge"
    assert stage["samples"] == {
        frozenset({("stream", "apps/hello"), ("stage", "fetch manifest")}): 1.5,
        frozenset({("stream", "apps/hello"), ("stage", 'scripts/9_"x"\\')}): 2.5,
        frozenset({("stream", "apps/hello"), ("stage", "scan")}): 0.25,
    }
    total = families["imaginator_builds_total"]
    failed = families["imaginator_builds_failed_total"]
    assert total["type"] == failed["type"] == "counter"
    assert total["samples"] == {
        frozenset({("stream", "apps/hello")}): 3,
        frozenset({("stream", "bootstrap/bb")}): 1,
    }
    assert failed["samples"] == {
        frozenset({("stream", "apps/hello")}): 2,
        frozenset({("stream", "bootstrap/bb")}): 0,
    }
    assert families["imaginator_builds_running"]["samples"] == {frozenset(): 0}


def test_without_counters_there_are_no_counter_families():
    families = parse(get(FakeBuilder(), FakeStore()).text)
    assert "imaginator_builds_total" not in families
    assert families["imaginator_build_stage_seconds"]["samples"] == {}


def test_the_parser_refuses_what_the_format_does_not_allow():
    good = "# HELP a x\n# TYPE a gauge\na 1\n"
    parse(good)
    for bad in (
        "a 1\n",  # no TYPE
        "# TYPE a gauge\na 1\na 1\n",  # twice
        '# TYPE a gauge\na{s="\\t"} 1\n',  # no such escape
        "# TYPE a gauge\na one\n",
        "# TYPE a gauge\na 1",  # no final newline
        "# TYPE a gauge\na 1\n# TYPE a gauge\n",
    ):
        with pytest.raises((AssertionError, ValueError)):
            parse(bad)
