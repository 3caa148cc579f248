"""``/metrics`` (imaginator.web.metrics), on fakes of the builder and the store."""

from __future__ import annotations

from dataclasses import dataclass, field

from klein import Klein
from klein.resource import KleinResource
from twisted.internet.task import Clock

from imaginator.scheduler import BuildResult
from imaginator.store.base import StoreError
from imaginator.web.metrics import BuildState, ImageList, MetricsPage, escape_label
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


def get(builder: FakeBuilder, store: FakeStore, method: bytes = b"GET") -> Answer:
    clock = Clock()
    clock.advance(NOW)
    app = Klein()
    MetricsPage(builder, store, clock, STARTED).install(app)
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
