from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from imaginator.autobuild import AutoBuilder
from imaginator.builder import BuildResult


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
