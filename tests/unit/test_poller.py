"""Tests for imaginator.runtime.poller: one periodic scheduler, on a task.Clock."""

from __future__ import annotations

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from imaginator.runtime.poller import Poller, PollerService, PollerStopped


class Job:
    """A job whose runs are held open until the test finishes them."""

    def __init__(self) -> None:
        self.started: list[float] = []
        self.open: list[Deferred] = []
        self.clock: Clock | None = None

    async def __call__(self):
        assert self.clock is not None
        self.started.append(self.clock.seconds())
        d: Deferred = Deferred()
        self.open.append(d)
        return await d

    def finish(self, value=None) -> None:
        self.open.pop(0).callback(value)

    def fail(self, exc: Exception) -> None:
        self.open.pop(0).errback(exc)


def make(interval=10.0, **kwargs):
    clock = Clock()
    job = Job()
    job.clock = clock
    return clock, job, Poller("test job", job, clock=clock, interval=interval, **kwargs)


@pytest.fixture
def logged():
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def test_runs_on_the_interval_from_each_start():
    clock, job, poller = make(interval=10.0)
    poller.start()
    clock.advance(9.9)
    assert job.started == []
    clock.advance(0.1)
    assert job.started == [10.0]
    clock.advance(3)
    job.finish()
    clock.advance(6.9)
    assert len(job.started) == 1
    clock.advance(0.1)
    assert job.started == [10.0, 20.0]


def test_first_delay_and_a_slow_run_never_overlap():
    clock, job, poller = make(interval=10.0, min_gap=1.0)
    poller.start(first_delay=1.0)
    clock.advance(1)
    assert job.started == [1.0]
    clock.advance(30)  # slower than its interval: no second run meanwhile
    assert len(job.started) == 1
    job.finish()
    clock.advance(0.9)
    assert len(job.started) == 1
    clock.advance(0.1)  # min_gap after the end
    assert job.started == [1.0, 32.0]


def test_requests_during_a_run_coalesce_into_one_more_run():
    clock, job, poller = make(interval=0)
    poller.start()
    first = poller.run_now()
    second, third = poller.run_now(), poller.run_now()
    poller.trigger()
    assert len(job.started) == 1
    job.finish("one")
    assert first.result == "one"
    assert len(job.started) == 2  # exactly one more run, right away
    job.finish("two")
    assert second.result == "two" and third.result == "two"
    clock.advance(1000)
    assert len(job.started) == 2  # interval 0: nothing scheduled


def test_a_triggered_run_rebases_the_schedule():
    clock, job, poller = make(interval=10.0)
    poller.start()
    clock.advance(4)
    poller.trigger()
    job.finish()
    clock.advance(9.9)
    assert job.started == [4.0]
    clock.advance(0.1)
    assert job.started == [4.0, 14.0]


def test_a_failure_is_logged_once_and_the_schedule_goes_on(logged):
    clock, job, poller = make(interval=10.0)
    poller.start()
    waiter = poller.run_now()
    job.fail(RuntimeError("disk on fire"))
    failures = [e for e in logged if e.get("log_failure") is not None]
    assert len(failures) == 1
    assert failures[0]["name"] == "test job"
    assert poller.last_error == "disk on fire"
    errors = []
    waiter.addErrback(errors.append)
    assert errors[0].check(RuntimeError)
    clock.advance(10)
    assert len(job.started) == 2
    job.finish()
    assert poller.last_error is None


def test_trigger_swallows_the_already_logged_failure(logged):
    _clock, job, poller = make(interval=0)
    poller.trigger()
    job.fail(RuntimeError("boom"))
    # Only the poller's own log entry: no "Unhandled error in Deferred" later.
    assert len([e for e in logged if e.get("log_failure") is not None]) == 1


def test_stop_waits_for_the_run_in_flight():
    clock, job, poller = make(interval=10.0)
    poller.start()
    clock.advance(10)
    queued = poller.run_now()
    stopped = poller.stop()
    assert not stopped.called
    errors = []
    queued.addErrback(errors.append)
    assert errors[0].check(PollerStopped)
    job.finish()
    assert stopped.called
    clock.advance(100)
    assert len(job.started) == 1  # no more runs after stop


def test_stop_is_bounded(logged):
    clock, _job, poller = make(interval=10.0, stop_timeout=5.0)
    poller.start()
    clock.advance(10)
    stopped = poller.stop()
    clock.advance(4.9)
    assert not stopped.called
    clock.advance(0.1)
    assert stopped.called
    assert any("gave up waiting" in e.get("log_format", "") for e in logged)


def test_stop_when_idle_fires_at_once():
    _clock, _job, poller = make()
    poller.start()
    assert poller.stop().called


def test_interval_may_be_read_each_time():
    clock = Clock()
    job = Job()
    job.clock = clock
    period = [5.0]
    poller = Poller("p", job, clock=clock, interval=lambda: period[0])
    poller.start()
    clock.advance(5)
    period[0] = 20.0
    job.finish()
    clock.advance(19.9)
    assert len(job.started) == 1
    clock.advance(0.1)
    assert len(job.started) == 2


def test_join_observes_the_run_in_flight():
    _clock, job, poller = make(interval=0)
    assert poller.join() is None
    poller.trigger()
    joined = poller.join()
    job.finish("done")
    assert joined.result == "done"
    assert len(job.started) == 1  # joining asks for no run


def test_after_end_counts_the_interval_from_the_end():
    clock, job, poller = make(interval=10.0, after_end=True)
    poller.start()
    clock.advance(10)
    clock.advance(4)
    job.finish()
    clock.advance(9.9)
    assert len(job.started) == 1
    clock.advance(0.1)
    assert job.started == [10.0, 24.0]


def test_a_cancelled_request_is_left_alone():
    _clock, job, poller = make(interval=0)
    waiter = poller.run_now()
    waiter.cancel()
    waiter.addErrback(lambda _f: None)
    job.finish("late")  # no AlreadyCalledError
    assert poller.runs == 1


def test_idle_waits_for_the_queued_run_too():
    _clock, job, poller = make(interval=0)
    assert poller.idle().called
    poller.trigger()
    poller.trigger()  # queued
    idle = poller.idle()
    job.finish()
    assert not idle.called
    job.finish()
    assert idle.called


def test_stop_may_cancel_the_run_in_flight(logged):
    clock, _job, poller = make(interval=10.0)
    poller.start()
    clock.advance(10)
    stopped = poller.stop(cancel=True)
    assert stopped.called
    assert [e for e in logged if e.get("log_failure") is not None] == []


def test_the_service_starts_the_schedule_and_its_stop_waits_for_the_run():
    clock, job, poller = make(interval=10.0)
    service = PollerService(poller, first_delay=1.0)
    service.startService()
    clock.advance(1)
    assert len(job.started) == 1
    stopped = service.stopService()
    assert not stopped.called and not service.running
    job.finish()
    assert stopped.called
    clock.advance(100)
    assert len(job.started) == 1
