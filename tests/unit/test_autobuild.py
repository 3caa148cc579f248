import gc

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from imaginator.autobuild import AutoBuilder, AutoBuildError
from imaginator.scheduler import BuildResult


class FakeBuilds:
    """Builds that finish when the test says so."""

    def __init__(self):
        self.requests = []
        self.pending = []

    def build(self, stream, options):
        self.requests.append((stream, options))
        d = Deferred()
        self.pending.append((stream, d))
        return d

    def finish_all(self, clock, error=""):
        while self.pending:
            stream, d = self.pending.pop(0)
            d.callback(BuildResult(stream, "" if error else f"{stream}/x", 0, 0, b"", error))


def make(interval=3600.0, streams=("a", "b")):
    clock = Clock()
    builds = FakeBuilds()
    auto = AutoBuilder(clock=clock, build=builds.build, streams=lambda: streams, interval=interval)
    return clock, builds, auto


def test_first_cycle_starts_one_second_after_start():
    clock, builds, auto = make()
    auto.startService()
    clock.advance(0.9)
    assert builds.requests == []
    clock.advance(0.1)
    assert [s for s, _ in builds.requests] == ["a"]


def test_streams_are_built_one_after_the_other_in_list_order():
    clock, builds, auto = make()
    auto.startService()
    clock.advance(1)
    assert [s for s, _ in builds.requests] == ["a"]
    builds.finish_all(clock)
    assert [s for s, _ in builds.requests] == ["a", "b"]
    builds.finish_all(clock)
    assert auto.cycles_completed == 1


def test_auto_builds_expire_after_twice_the_interval():
    clock, builds, auto = make(interval=600)
    auto.startService()
    clock.advance(1)
    options = builds.requests[0][1]
    assert options.expires_in == 1200
    assert options.auto


def test_next_cycle_starts_an_interval_after_the_previous_start():
    clock, builds, auto = make(interval=100, streams=("a",))
    auto.startService()
    clock.advance(1)
    clock.advance(30)
    builds.finish_all(clock)
    clock.advance(69.9)
    assert len(builds.requests) == 1
    clock.advance(0.1)
    assert len(builds.requests) == 2


def test_a_cycle_longer_than_the_interval_is_followed_after_one_second():
    clock, builds, auto = make(interval=100, streams=("a",))
    auto.startService()
    clock.advance(1)
    clock.advance(250)
    builds.finish_all(clock)
    clock.advance(0.9)
    assert len(builds.requests) == 1
    clock.advance(0.1)
    assert len(builds.requests) == 2


def test_cycles_never_overlap():
    clock, builds, auto = make(interval=100, streams=("a",))
    auto.startService()
    clock.advance(1)
    first = auto.run_cycle()
    clock.advance(500)
    assert len(builds.requests) == 1
    builds.finish_all(clock)
    assert first.called


def test_failures_do_not_stop_the_cycle():
    clock, builds, auto = make()
    auto.startService()
    clock.advance(1)
    builds.finish_all(clock, error="boom")
    assert [s for s, _ in builds.requests] == ["a", "b"]


def test_interval_zero_disables_the_timer():
    clock, builds, auto = make(interval=0)
    auto.startService()
    clock.advance(10_000)
    assert builds.requests == []
    assert auto.image_lifetime == 3600


def test_stopping_cancels_the_timer():
    clock, builds, auto = make()
    auto.startService()
    auto.stopService()
    clock.advance(10)
    assert builds.requests == []
    assert clock.getDelayedCalls() == []


class FakeStore:
    def __init__(self, latest):
        self.latest = dict(latest)
        self.extended = []

    async def find_latest_image(self, stream):
        return self.latest.get(stream)

    async def change_image_expiration(self, name, expires_at):
        self.extended.append((name, expires_at))
        return True


def make_chain(streams=("app", "base", "boot"), sources=None, interval=100.0):
    """A cycle over a bootstrap -> base -> app chain, listed children first."""
    sources = sources if sources is not None else {"app": "base", "base": "boot"}
    clock = Clock()
    builds = FakeBuilds()
    store = FakeStore({s: f"{s}/old" for s in streams})

    def order(names):
        from imaginator.deps import dependency_order

        return dependency_order(list(names), sources)

    auto = AutoBuilder(
        clock=clock,
        build=builds.build,
        streams=lambda: streams,
        interval=interval,
        store=store,
        order=order,
        source_of=sources.get,
    )
    return clock, builds, store, auto


def finish(builds, errors=()):
    stream, d = builds.pending.pop(0)
    error = "boom" if stream in errors else ""
    d.callback(BuildResult(stream, "" if error else f"{stream}/new", 0, 0, b"", error))


def test_streams_are_built_parents_first():
    clock, builds, _store, auto = make_chain()
    auto.startService()
    clock.advance(1)
    while builds.pending:
        finish(builds)
    assert [s for s, _ in builds.requests] == ["boot", "base", "app"]


def test_a_failed_build_extends_its_own_and_its_childrens_latest_images():
    clock, builds, store, auto = make_chain()
    auto.startService()
    clock.advance(1)
    finish(builds)  # boot
    finish(builds, errors={"base"})
    assert [s for s, _ in builds.requests] == ["boot", "base"]  # app is not built
    lifetime_ns = int((clock.seconds() + 200) * 1e9)
    assert store.extended == [("base/old", lifetime_ns), ("app/old", lifetime_ns)]
    assert auto.last_cycle[-1] == ("app", "extended app/old")


def test_disabled_auto_builds_only_extend():
    clock, builds, store, auto = make_chain()
    auto.startService()
    auto.disable(150)
    clock.advance(1)
    assert builds.requests == []
    assert [name for name, _ in store.extended] == ["boot/old", "base/old", "app/old"]
    assert auto.disabled_until() == 150


def test_disabling_is_capped_at_four_intervals():
    _clock, _builds, _store, auto = make_chain(interval=100)
    with pytest.raises(AutoBuildError, match="cannot disable auto building for more than: 6m40s"):
        auto.disable(401)
    auto.disable(400)


def test_disable_ends_and_building_resumes():
    clock, builds, _store, auto = make_chain(interval=100)
    auto.startService()
    auto.disable(50)
    clock.advance(1)
    assert builds.requests == []
    clock.advance(100)  # the next cycle, after the window
    assert [s for s, _ in builds.requests] == ["boot"]


def test_start_auto_builds_busy_and_waiting():
    clock, builds, _store, auto = make_chain(interval=100)
    auto.startService()
    clock.advance(1)
    assert auto.busy()
    refused = Deferred.fromCoroutine(auto.start(wait_to_start=False, wait_for_complete=False))
    assert isinstance(refused.result.value, AutoBuildError)
    refused.addErrback(lambda _f: None)
    waiting = Deferred.fromCoroutine(auto.start(wait_to_start=True, wait_for_complete=True))
    assert not waiting.called
    while len(builds.requests) < 6:
        finish(builds)
    assert not waiting.called  # the second cycle is running
    while builds.pending:
        finish(builds)
    assert waiting.called and auto.cycles_completed == 2


def test_triggered_cycle_rebases_the_schedule():
    clock, builds, _store, auto = make_chain(streams=("boot",), sources={}, interval=100)
    auto.startService()
    clock.advance(50)  # first cycle at t=1
    finish(builds)
    Deferred.fromCoroutine(auto.start(wait_to_start=False, wait_for_complete=False))
    finish(builds)  # the triggered cycle started at t=50
    clock.advance(99.9)
    assert len(builds.requests) == 2
    clock.advance(0.1)
    assert len(builds.requests) == 3


def test_a_store_error_while_extending_does_not_abort_the_cycle():
    clock, _builds, store, auto = make_chain()

    async def broken(stream):
        if stream == "base":
            from imaginator.store.base import StoreError

            raise StoreError("images/base/old: unreadable record")
        return store.latest.get(stream)

    store.find_latest_image = broken
    auto.startService()
    auto.disable(150)
    clock.advance(1)
    assert [name for name, _ in store.extended] == ["boot/old", "app/old"]
    assert auto.last_cycle == [
        ("boot", "extended boot/old"),
        ("base", "no image to extend"),
        ("app", "extended app/old"),
    ]
    assert auto.cycles_completed == 1


def test_a_failing_cycle_is_logged_once_and_the_timer_goes_on():
    from twisted.logger import globalLogPublisher

    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        clock, builds, auto = make(interval=100, streams=("a",))
        auto._order = lambda _names: 1 / 0  # a bug in the cycle itself
        auto.startService()
        clock.advance(1)
        failures = [e for e in events if e.get("log_failure") is not None]
        assert len(failures) == 1
        assert "automatic image build cycle" in failures[0]["name"]
        auto._order = list
        clock.advance(100)
        assert [s for s, _ in builds.requests] == ["a"]
        gc.collect()  # an unhandled failure in a Deferred would be logged now
        assert len([e for e in events if e.get("log_failure") is not None]) == 1
    finally:
        globalLogPublisher.removeObserver(events.append)


def test_stopping_waits_for_the_cycle_in_flight():
    clock, builds, auto = make(interval=100, streams=("a",))
    auto.startService()
    clock.advance(1)
    stopped = auto.stopService()
    assert not stopped.called
    builds.finish_all(clock)
    assert stopped.called
