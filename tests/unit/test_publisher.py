"""The publisher's queueing and retries (imaginator.publish.publisher), on a Clock
with a fake pusher; the real push to a real registry is in
tests/integration/test_publish_registry.py and test_daemon_publish.py."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import pytest
from twisted.internet.defer import Deferred
from twisted.logger import LogEvent, formatEvent, globalLogPublisher

from imaginator.config.main import ConfigError, parse_main_config
from imaginator.config.publish import PublishTarget
from imaginator.config.streams import parse_streams
from imaginator.export.registry import RegistryError
from imaginator.publish.publisher import (
    ATTEMPTS,
    Publisher,
    PublishJob,
    PushedImage,
    PushFailure,
    target_lookup,
)
from imaginator.publish.push import PushCancelled, PushOutcome
from imaginator.scheduler import BuildResult
from tests.support.fakes import FakeReactor, fired, has_fired

APP = "apps/app"
WEB = "apps/web"
TARGET = PublishTarget("registry.example:5000", "images/app", ("latest",))
SECRET = "hunter2"
DIGEST = "sha256:" + "ab" * 32


@dataclass
class FakePusher:
    """Pushes that end when the test says so; ``calls`` in order."""

    calls: list[tuple[PublishJob, Deferred[PushOutcome]]] = field(default_factory=list)
    cancel_events: list[threading.Event] = field(default_factory=list)

    def __call__(self, job: PublishJob, cancelled: threading.Event) -> Deferred[PushOutcome]:
        d: Deferred[PushOutcome] = Deferred()
        self.calls.append((job, d))
        self.cancel_events.append(cancelled)
        return d

    def images(self) -> list[str]:
        return [job.image_name for job, _ in self.calls]

    def succeed(self, index: int = -1) -> None:
        job, d = self.calls[index]
        d.callback(
            PushOutcome(f"{job.target}@{DIGEST}", DIGEST, ("tag", *job.target.tags), 3, 2, 1000)
        )

    def fail(self, error: Exception, index: int = -1) -> None:
        self.calls[index][1].errback(error)


@pytest.fixture
def logged():
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def lines(events: list[LogEvent]) -> list[str]:
    return [formatEvent(e) for e in events if "ublish" in formatEvent(e)]


def make(
    targets: dict[str, PublishTarget] | None = None, **kwargs
) -> tuple[Publisher, FakePusher, FakeReactor]:
    clock = FakeReactor()
    clock.advance(1_800_000_000)
    pusher = FakePusher()
    known = {APP: TARGET} if targets is None else targets
    publisher = Publisher(
        clock=clock,
        target_of=known.get,
        push=pusher,
        redact=lambda text: text.replace(SECRET, "[REDACTED]"),
        **kwargs,
    )
    publisher.startService()
    return publisher, pusher, clock


def built(stream: str, name: str, **kwargs) -> BuildResult:
    return BuildResult(stream, f"{stream}/{name}", 0.0, 1.0, b"", **kwargs)


def test_a_new_image_is_pushed_and_its_result_kept(logged):
    publisher, pusher, clock = make()
    publisher.on_build(built(APP, "1"))
    assert pusher.images() == [f"{APP}/1"]
    assert pusher.calls[0][0].target == TARGET
    status = publisher.publish_status(APP)
    assert status is not None and status.pushing == f"{APP}/1" and status.attempt == 1
    clock.advance(5)
    pusher.succeed()
    status = publisher.publish_status(APP)
    assert status is not None and status.pushing == ""
    assert status.target == "registry.example:5000/images/app" and status.tags == ("latest",)
    assert status.last == status.last_success
    assert status.last == PushedImage(
        f"{APP}/1",
        f"{TARGET}@{DIGEST}",
        DIGEST,
        ("tag", "latest"),
        clock.seconds(),
        3,
        2,
        1000,
    )
    assert publisher.last_outcomes() == [(APP, status.last, status.last)]
    assert lines(logged) == [
        f"Publishing {APP}/1 to {TARGET} (attempt 1 of {ATTEMPTS})",
        f"Published {APP}/1 as {TARGET}@{DIGEST} (tags tag, latest; 3 blobs sent, 1000 B, "
        "2 already there)",
    ]


@pytest.mark.parametrize(
    "result",
    [
        built(APP, "1", identical=True),
        BuildResult(APP, "", 0.0, 1.0, b"", error="exit status 1"),
        built(APP, "1", error="error adding image: disk full"),
        built(APP, "1", image=object()),  # ReturnImage: not stored, nothing to push
        built(WEB, "1"),  # no Publish setting
    ],
)
def test_what_is_not_pushed(result):
    publisher, pusher, _clock = make()
    publisher.on_build(result)
    assert pusher.calls == []
    assert publisher.last_outcomes() == []


def test_unconfigured_stream_has_no_status_and_a_configured_one_says_so():
    publisher, _pusher, _clock = make()
    assert publisher.publish_status(WEB) is None
    status = publisher.publish_status(APP)
    assert status is not None
    assert (status.target, status.pushing, status.last) == (str(TARGET), "", None)


def test_one_push_per_stream_and_the_newest_wins():
    publisher, pusher, _clock = make()
    publisher.on_build(built(APP, "1"))
    publisher.on_build(built(APP, "2"))
    publisher.on_build(built(APP, "3"))
    assert pusher.images() == [f"{APP}/1"]  # one at a time
    status = publisher.publish_status(APP)
    assert status is not None and status.queued == f"{APP}/3"
    pusher.succeed()
    assert pusher.images() == [f"{APP}/1", f"{APP}/3"]  # 2 is never pushed
    pusher.succeed()
    assert pusher.images() == [f"{APP}/1", f"{APP}/3"]
    status = publisher.publish_status(APP)
    assert status is not None and status.queued == "" and status.last is not None
    assert status.last.image_name == f"{APP}/3"


def test_failed_pushes_are_retried_with_doubling_delays_then_given_up(logged):
    publisher, pusher, clock = make()
    publisher.on_build(built(APP, "1"))
    delays = []
    for attempt in range(1, ATTEMPTS + 1):
        assert len(pusher.calls) == attempt
        pusher.fail(RegistryError(f"registry.example:5000: connection refused ({attempt})"))
        status = publisher.publish_status(APP)
        assert status is not None and isinstance(status.last, PushFailure)
        assert status.last.attempt == attempt and status.last.attempts == ATTEMPTS
        if attempt == ATTEMPTS:
            assert status.last.next_retry_at is None
            break
        delay = status.last.next_retry_at - clock.seconds()
        delays.append(delay)
        clock.advance(delay - 1)
        assert len(pusher.calls) == attempt  # not before its time
        clock.advance(1)
    assert delays == [60, 120, 240, 480]
    clock.advance(10_000)
    assert len(pusher.calls) == ATTEMPTS
    assert publisher.publish_status(APP).last_success is None
    text = lines(logged)
    assert text[1] == (
        f"Error publishing {APP}/1 to {TARGET} (attempt 1 of {ATTEMPTS}): "
        "registry.example:5000: connection refused (1); retrying in 1m0s"
    )
    assert text[-1].endswith(f"connection refused ({ATTEMPTS}); giving up")


def test_a_success_after_failures_is_the_last_outcome():
    publisher, pusher, clock = make(attempts=3, retry_delay=10)
    publisher.on_build(built(APP, "1"))
    pusher.fail(OSError("No space left on device"))
    clock.advance(10)
    pusher.succeed()
    status = publisher.publish_status(APP)
    assert isinstance(status.last, PushedImage) and status.last is status.last_success
    assert [o[1] for o in publisher.last_outcomes()] == [status.last]


def test_an_image_given_up_on_is_pushed_again_by_an_identical_rebuild():
    publisher, pusher, clock = make(attempts=2, retry_delay=10)
    publisher.on_build(built(APP, "1"))
    pusher.fail(RegistryError("down"))
    clock.advance(10)
    pusher.fail(RegistryError("down"))
    assert len(pusher.calls) == 2
    # The registry is back; the next rebuild changes nothing, and the stream's
    # latest image, never pushed, is pushed now.
    publisher.on_build(built(APP, "1", identical=True))
    assert pusher.images() == [f"{APP}/1"] * 3
    pusher.succeed()
    publisher.on_build(built(APP, "1", identical=True))  # pushed already: not again
    assert len(pusher.calls) == 3


def test_a_newer_image_ends_the_retries_of_an_older_one(logged):
    publisher, pusher, clock = make()
    publisher.on_build(built(APP, "1"))
    pusher.fail(RegistryError("down"))
    publisher.on_build(built(APP, "2"))  # while 1 waits for its retry
    assert pusher.images() == [f"{APP}/1", f"{APP}/2"]
    status = publisher.publish_status(APP)
    assert status.pushing == f"{APP}/2" and status.last.next_retry_at is None
    pusher.succeed()
    clock.advance(10_000)
    assert pusher.images() == [f"{APP}/1", f"{APP}/2"]  # 1 is not retried


def test_a_failure_with_a_newer_image_queued_goes_straight_to_it(logged):
    publisher, pusher, clock = make()
    publisher.on_build(built(APP, "1"))
    publisher.on_build(built(APP, "2"))
    pusher.fail(RegistryError("down"))
    assert pusher.images() == [f"{APP}/1", f"{APP}/2"]
    assert lines(logged)[1].endswith("down; a newer image is queued")
    pusher.fail(RegistryError("down"))
    clock.advance(60)
    assert pusher.images() == [f"{APP}/1", f"{APP}/2", f"{APP}/2"]


def test_pushes_of_different_streams_take_turns():
    publisher, pusher, _clock = make({APP: TARGET, WEB: TARGET})
    publisher.on_build(built(APP, "1"))
    publisher.on_build(built(WEB, "1"))
    assert pusher.images() == [f"{APP}/1"]  # max_pushing=1: the pool is not hogged
    assert publisher.publish_status(WEB).pushing == ""
    pusher.succeed()
    assert pusher.images() == [f"{APP}/1", f"{WEB}/1"]


def test_two_at_once_when_allowed():
    publisher, pusher, _clock = make({APP: TARGET, WEB: TARGET}, max_pushing=2)
    publisher.on_build(built(APP, "1"))
    publisher.on_build(built(WEB, "1"))
    assert pusher.images() == [f"{APP}/1", f"{WEB}/1"]


def test_a_bad_target_is_the_streams_error_and_nothing_is_pushed(logged):
    def target_of(stream: str) -> PublishTarget | None:
        raise ConfigError(f"image streams: {stream}.Publish.Reference: bad {SECRET}")

    clock = FakeReactor()
    pusher = FakePusher()
    publisher = Publisher(
        clock=clock,
        target_of=target_of,
        push=pusher,
        redact=lambda text: text.replace(SECRET, "[REDACTED]"),
    )
    publisher.startService()
    publisher.on_build(built(APP, "1"))
    assert pusher.calls == []
    status = publisher.publish_status(APP)
    assert status.target == "" and "bad [REDACTED]" in status.target_error
    assert isinstance(status.last, PushFailure) and "bad [REDACTED]" in status.last.error
    assert SECRET not in " ".join(lines(logged))


def test_errors_are_redacted_and_bugs_do_not_escape(logged):
    publisher, pusher, clock = make(attempts=2, retry_delay=1)
    publisher.on_build(built(APP, "1"))
    pusher.fail(RegistryError(f"token for {SECRET} refused"))
    assert publisher.publish_status(APP).last.error == "token for [REDACTED] refused"
    clock.advance(1)
    pusher.fail(KeyError("digest"))
    assert publisher.publish_status(APP).last.error == "internal error: 'digest'"
    assert SECRET not in " ".join(lines(logged))
    assert any(e.get("log_failure") is not None for e in logged)


def test_stop_cancels_retries_and_queue_and_waits_for_the_push_in_flight():
    publisher, pusher, clock = make({APP: TARGET, WEB: TARGET})
    publisher.on_build(built(APP, "1"))
    pusher.fail(RegistryError("down"))  # APP now waits for a retry
    publisher.on_build(built(WEB, "1"))
    publisher.on_build(built(WEB, "2"))  # queued behind WEB/1
    stopped = publisher.stopService()
    assert pusher.cancel_events[-1].is_set()  # the thread stops between two blobs
    assert not has_fired(stopped)  # WEB/1 is still being pushed
    pusher.fail(PushCancelled("daemon shutting down"))
    assert fired(stopped) is None
    clock.advance(10_000)
    publisher.on_build(built(APP, "3"))
    assert pusher.images() == [f"{APP}/1", f"{WEB}/1"]


def test_stop_while_waiting_for_a_turn_starts_nothing():
    publisher, pusher, _clock = make({APP: TARGET, WEB: TARGET})
    publisher.on_build(built(APP, "1"))
    publisher.on_build(built(WEB, "1"))  # waits for APP's push
    stopped = publisher.stopService()
    pusher.succeed()
    assert fired(stopped) is None
    assert pusher.images() == [f"{APP}/1"]


# -- targets from the configuration ------------------------------------------------------


def test_target_lookup_for_bootstrap_named_and_pattern_streams():
    main = parse_main_config(
        b"""{"BootstrapStreams": {"bootstrap/bb": {"PackagerType": "bb",
               "Publish": "localhost:5000/bootstrap/bb-$ARCH"},
             "bootstrap/plain": {"PackagerType": "bb"}},
             "PackagerTypes": {"bb": {}}}""",
        "conf.json",
        "arm64",
    )
    document = parse_streams(
        b"""{"Streams": {"apps/app": {"Publish": {"Reference": "localhost:5000/apps/app",
                                                  "Tags": ["latest"]}},
                         "apps/plain": {}},
             "StreamPatterns": {"users/[a-z]+": {"Publish": "localhost:5000/${IMAGE_STREAM}"},
                                "Bad/[a-z]+": {"Publish": "localhost:5000/${IMAGE_STREAM}"}}}""",
        "image-streams.json",
        "arm64",
    )
    target_of = target_lookup(main.bootstrap_streams, lambda: document, "arm64")
    assert target_of("bootstrap/bb") == PublishTarget("localhost:5000", "bootstrap/bb-arm64")
    assert target_of("bootstrap/plain") is None
    assert target_of("apps/app") == PublishTarget("localhost:5000", "apps/app", ("latest",))
    assert target_of("apps/plain") is None
    assert target_of("apps/unknown") is None
    assert target_of("users/alice") == PublishTarget("localhost:5000", "users/alice")
    with pytest.raises(ConfigError) as info:
        target_of("Bad/x")  # upper case: not a repository name
    assert str(info.value) == (
        "image streams: Bad/x.Publish: localhost:5000/Bad/x: bad repository name 'Bad/x' "
        "(lower-case letters, digits, separators)"
    )
