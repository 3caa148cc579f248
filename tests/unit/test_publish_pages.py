"""Publishing on the stream page and in ``/metrics`` (imaginator.web.publish_view),
fed by a real Publisher whose pushes a fake ends."""

from __future__ import annotations

import threading

from klein import Klein
from klein.resource import KleinResource
from twisted.internet.defer import Deferred

from imaginator.config.publish import PublishTarget
from imaginator.export.registry import RegistryError
from imaginator.goformats.units import format_time
from imaginator.publish.publisher import Publisher, PublishJob
from imaginator.publish.push import PushOutcome
from imaginator.scheduler import BuildResult
from imaginator.web.metrics import MetricsPage
from imaginator.web.publish_view import PublishState, publish_context, publish_families
from imaginator.web.stream_pages import StreamPages
from tests.support.fakes import FakeReactor
from tests.support.web import answer, start
from tests.unit.test_stream_pages import FakeBuilder, FakeStore

NOW = 1_800_000_000.0
STREAM = "bootstrap/bb"  # a stream of the vector configuration the fake builder holds
OTHER = "apps/hello"
TARGET = PublishTarget("registry.example:5000", "images/bb", ("latest",))
DIGEST = "sha256:" + "cd" * 32
EVIL = "<script>alert(1)</script>"


class Pushes:
    def __init__(self) -> None:
        self.pending: list[tuple[PublishJob, Deferred[PushOutcome]]] = []

    def __call__(self, job: PublishJob, _cancelled: threading.Event) -> Deferred[PushOutcome]:
        d: Deferred[PushOutcome] = Deferred()
        self.pending.append((job, d))
        return d

    def succeed(self) -> None:
        job, d = self.pending.pop(0)
        d.callback(PushOutcome(f"{job.target}@{DIGEST}", DIGEST, ("t1", "latest"), 4, 1, 2048))

    def fail(self, error: str) -> None:
        self.pending.pop(0)[1].errback(RegistryError(error))


def publisher(clock: FakeReactor) -> tuple[Publisher, Pushes]:
    pushes = Pushes()
    targets = {STREAM: TARGET, OTHER: PublishTarget("r.example", "apps/hello")}
    published = Publisher(clock=clock, target_of=targets.get, push=pushes, retry_delay=30)
    published.startService()
    return published, pushes


def clock_at_now() -> FakeReactor:
    clock = FakeReactor()
    clock.advance(NOW)
    return clock


def _protocol(p: Publisher) -> PublishState:
    return p  # lets a type checker confirm the Publisher satisfies the Protocol


def stream_page(state: PublishState | None, clock: FakeReactor, stream: str = STREAM) -> str:
    app = Klein()
    pages = StreamPages(FakeBuilder(), FakeStore(), clock, "amd64", "9", publishing=state)
    pages.install(app)
    request = start(KleinResource(app), f"/showImageStream?{stream}")
    assert request.finished
    return answer(request).text


def metrics(state: PublishState | None, clock: FakeReactor) -> dict[str, str]:
    app = Klein()
    MetricsPage(FakeBuilder(), FakeStore(), clock, NOW - 100, state).install(app)
    request = start(KleinResource(app), "/metrics")
    assert request.finished
    text = answer(request).text
    return dict(x.rsplit(" ", 1) for x in text.splitlines() if x and not x.startswith("#"))


def built(name: str) -> BuildResult:
    return BuildResult(STREAM, f"{STREAM}/{name}", NOW - 10, NOW, b"")


def test_a_stream_without_publishing_shows_nothing_of_it():
    clock = clock_at_now()
    published, _pushes = publisher(clock)
    for state in (None, published):
        page = stream_page(state, clock, "bootstrap/Debian-12")
        assert "Publishing" not in page and "push" not in page
    assert publish_context(published, "bootstrap/Debian-12", NOW) is None


def test_configured_then_pushing_then_pushed():
    clock = clock_at_now()
    published, pushes = publisher(clock)
    page = stream_page(published, clock)
    assert (
        "Publishing to: <code>registry.example:5000/images/bb</code> (also tagged latest)<br>"
        in page
    )
    assert "No push since the daemon started<br>" in page
    published.on_build(built("2027-01-01:00:00:00"))
    page = stream_page(published, clock)
    assert (
        f'Pushing now: <a href="showImage?{STREAM}/2027-01-01:00:00:00">'
        f"{STREAM}/2027-01-01:00:00:00</a> (attempt 1 of 5)<br>"
    ) in page
    published.on_build(built("2027-01-01:00:00:05"))
    assert "Queued for pushing: " in stream_page(published, clock)
    clock.advance(7)
    pushes.succeed()
    page = stream_page(published, clock)
    assert (
        f"Last push: succeeded at {format_time(NOW + 7)} (0s ago): "
        f'<a href="showImage?{STREAM}/2027-01-01:00:00:00">{STREAM}/2027-01-01:00:00:00</a> '
        f"as <code>registry.example:5000/images/bb@{DIGEST}</code> "
        "(tags t1, latest; 4 blobs sent, 2 KiB, 1 already there)<br>"
    ) in page
    assert "Pushing now: " in page  # the queued image, now
    values = metrics(published, clock)
    assert values[f'imaginator_publish_last_success{{stream="{STREAM}"}}'] == "1"
    assert values[f'imaginator_publish_last_timestamp_seconds{{stream="{STREAM}"}}'] == repr(
        NOW + 7
    )
    assert values[
        f'imaginator_publish_last_success_timestamp_seconds{{stream="{STREAM}"}}'
    ] == repr(NOW + 7)


def test_a_failure_its_retry_and_the_last_success_are_shown_escaped():
    clock = clock_at_now()
    published, pushes = publisher(clock)
    published.on_build(built("2027-01-01:00:00:00"))
    pushes.succeed()
    clock.advance(100)
    published.on_build(built("2027-01-01:00:01:40"))
    pushes.fail(f"registry.example:5000: connection refused {EVIL}")
    page = stream_page(published, clock)
    assert "<script>" not in page
    assert (
        f"Last push: failed at {format_time(NOW + 100)} (0s ago): "
        f'<a href="showImage?{STREAM}/2027-01-01:00:01:40">{STREAM}/2027-01-01:00:01:40</a> '
        "(attempt 1 of 5): <b>registry.example:5000: connection refused "
        "&lt;script&gt;alert(1)&lt;/script&gt;</b><br>"
    ) in page
    assert f"Next attempt at {format_time(NOW + 130)}<br>" in page
    assert (
        f"Last successful push: at {format_time(NOW)}: "
        f'<a href="showImage?{STREAM}/2027-01-01:00:00:00">'
    ) in page
    values = metrics(published, clock)
    assert values[f'imaginator_publish_last_success{{stream="{STREAM}"}}'] == "0"
    assert values[f'imaginator_publish_last_timestamp_seconds{{stream="{STREAM}"}}'] == repr(
        NOW + 100
    )
    assert values[
        f'imaginator_publish_last_success_timestamp_seconds{{stream="{STREAM}"}}'
    ] == repr(NOW)


def test_metrics_families_only_for_streams_with_an_outcome():
    clock = clock_at_now()
    published, pushes = publisher(clock)
    assert [samples for _name, _help, samples in publish_families(published)] == [[], [], []]
    assert publish_families(None) == []
    published.on_build(BuildResult(OTHER, f"{OTHER}/2027-01-01:00:00:00", NOW - 1, NOW, b""))
    pushes.fail("down")
    families = {name: samples for name, _help, samples in publish_families(published)}
    assert families == {
        "imaginator_publish_last_success": [(OTHER, 0)],
        "imaginator_publish_last_timestamp_seconds": [(OTHER, NOW)],
        "imaginator_publish_last_success_timestamp_seconds": [],
    }
    assert not any(k.startswith("imaginator_publish") for k in metrics(None, clock))
