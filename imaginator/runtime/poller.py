"""The one periodic scheduler: run an async job every N seconds, never twice at once.

Every periodic part of the daemon (the streams source, the dependency
generator, the auto-rebuild cycle, garbage collection) is a job run by a
``Poller``. The rules are the same for all of them:

- a run never overlaps the previous one;
- ``trigger()`` (or ``run_now()``, which returns the result) asks for a run
  now; requests made while a run is in flight are coalesced into one more run
  right after it, and each caller gets the result of the run that served it;
- the next scheduled run starts ``interval`` after the previous one started,
  but never sooner than ``min_gap`` after it ended (so a job slower than its
  interval runs back to back with a breathing space, not in a pile-up);
- a failing run is logged once, naming the poller, and the schedule goes on;
- ``stop()`` cancels the timer and fires when the run in flight has ended, or
  after ``stop_timeout`` seconds, saying what it gave up waiting for.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

_log = Logger()

DEFAULT_STOP_TIMEOUT = 60.0


class DelayedCall(Protocol):
    def active(self) -> bool: ...

    def cancel(self) -> None: ...


class Clock(Protocol):
    """What a poller needs of the reactor (``twisted.internet.task.Clock`` has it)."""

    def seconds(self) -> float: ...

    def callLater(self, delay: float, f: Callable[..., Any], /, *args: Any) -> DelayedCall: ...


class Poller:
    """Runs ``job()`` on ``clock`` every ``interval`` seconds (0: only when triggered).

    ``interval`` may be a function, read each time a run is scheduled. With
    ``after_end`` the interval counts from the end of the previous run instead
    of its start (for jobs whose pause depends on how long they took).
    """

    def __init__(
        self,
        name: str,
        job: Callable[[], Awaitable[Any]],
        *,
        clock: Clock,
        interval: float | Callable[[], float],
        min_gap: float = 0.0,
        after_end: bool = False,
        stop_timeout: float = DEFAULT_STOP_TIMEOUT,
    ) -> None:
        self.name = name
        self._job = job
        self._clock = clock
        self._interval = interval
        self.min_gap = min_gap
        self.after_end = after_end
        self.stop_timeout = stop_timeout
        self._timer: DelayedCall | None = None
        self._running: Deferred[Any] | None = None
        self._waiting: list[Deferred[Any]] = []  # served by the run in flight
        self._queued: list[Deferred[Any]] | None = None  # served by the next run
        self._idle: list[Deferred[None]] = []  # told when no run is in flight or queued
        self._started = False
        self.runs = 0
        self.last_error: str | None = None

    @property
    def interval(self) -> float:
        value = self._interval() if callable(self._interval) else self._interval
        return max(float(value), 0.0)

    @property
    def busy(self) -> bool:
        """Whether a run is in flight."""
        return self._running is not None

    def start(self, first_delay: float | None = None) -> None:
        """Start the schedule: the first run after ``first_delay`` seconds
        (0: now, before this returns; default: one interval)."""
        self._started = True
        if first_delay == 0:
            if self._running is None:
                self._run([])
            return
        delay = self.interval if first_delay is None else first_delay
        if delay > 0:
            self._schedule(delay)

    def trigger(self) -> None:
        """Ask for a run now (fire and forget: a failure is logged by the poller)."""
        self.run_now().addErrback(lambda _failure: None)

    def run_now(self) -> Deferred[Any]:
        """Ask for a run now; fires with the result of the run that serves it
        (or fails with its error, already logged).

        While a run is in flight, the request is served by one more run right
        after it, however many requests arrive meanwhile.
        """
        waiter: Deferred[Any] = Deferred()
        if self._running is not None:
            if self._queued is None:
                self._queued = []
            self._queued.append(waiter)
        else:
            self._run([waiter])
        return waiter

    def join(self) -> Deferred[Any] | None:
        """The result of the run in flight (a new Deferred), or None when idle."""
        if self._running is None:
            return None
        waiter: Deferred[Any] = Deferred()
        self._waiting.append(waiter)
        return waiter

    def idle(self) -> Deferred[None]:
        """Fires once no run is in flight or queued (at once when idle)."""
        if self._running is None:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._idle.append(waiter)
        return waiter

    def stop(self, *, cancel: bool = False) -> Deferred[None]:
        """No more runs; fires once the run in flight (if any) has ended, bounded.

        With ``cancel`` the run in flight is cancelled first (for jobs that
        only wait on the network and lose nothing by being cut short).
        """
        self._started = False
        self._cancel_timer()
        for waiter in self._queued or ():
            if not waiter.called:
                waiter.errback(Failure(PollerStopped(f"{self.name}: stopped")))
        self._queued = None
        if self._running is None:
            return succeed(None)
        done: Deferred[None] = Deferred()
        running = self._running

        def give_up() -> None:
            if not done.called:
                _log.warn(
                    "{name}: gave up waiting {timeout}s for the run in flight",
                    name=self.name,
                    timeout=self.stop_timeout,
                )
                done.callback(None)

        timer = self._clock.callLater(self.stop_timeout, give_up)

        def ended(result: object) -> object:
            if timer.active():
                timer.cancel()
            if not done.called:
                done.callback(None)
            return result

        running.addBoth(ended)
        if cancel:
            running.cancel()
        return done

    # -- internals ---------------------------------------------------------------

    def _schedule(self, delay: float) -> None:
        self._cancel_timer()
        self._timer = self._clock.callLater(max(delay, 0.0), self._timer_fired)

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _timer_fired(self) -> None:
        self._timer = None
        if self._running is None:
            self._run([])

    def _run(self, waiters: list[Deferred[Any]]) -> None:
        self._cancel_timer()  # a triggered run re-bases the schedule
        started = self._clock.seconds()
        self._waiting = waiters
        running: Deferred[Any] = Deferred.fromCoroutine(self._guarded())
        self._running = running

        def finished(outcome: tuple[bool, Any]) -> None:
            self._running = None
            self.runs += 1
            served, self._waiting = self._waiting, []
            queued, self._queued = self._queued, None
            if queued is None:
                # The next run is scheduled before anyone is told, so that a
                # waiter finds the timer already set.
                interval = self.interval
                if self._started and interval > 0 and self._timer is None:
                    now = self._clock.seconds()
                    start_at = now + interval if self.after_end else started + interval
                    self._schedule(max(start_at - now, self.min_gap))
            ok, value = outcome
            for waiter in served:
                if waiter.called:  # cancelled by its caller
                    continue
                if ok:
                    waiter.callback(value)
                else:
                    waiter.errback(value)
            if queued is not None:
                self._run(queued)
                return
            idle, self._idle = self._idle, []
            for waiter in idle:
                if not waiter.called:
                    waiter.callback(None)

        running.addCallback(finished)

    async def _guarded(self) -> tuple[bool, Any]:
        """Run the job once; a failure is logged here (once) and handed to the waiters."""
        try:
            value = await self._job()
        except CancelledError:
            return False, Failure()
        except Exception as exc:
            failure = Failure()
            self.last_error = str(exc) or type(exc).__name__
            _log.failure("{name} failed", failure, name=self.name)
            return False, failure
        self.last_error = None
        return True, value


class PollerStopped(Exception):
    """A requested run will not happen: the poller was stopped."""


class PollerService(Service):
    """A poller as a service: started with the daemon, and its ``stopService``
    waits for the run in flight (bounded by the poller's ``stop_timeout``)."""

    def __init__(self, poller: Poller, *, first_delay: float | None = None) -> None:
        self.poller = poller
        self._first_delay = first_delay

    def startService(self) -> None:
        super().startService()
        self.poller.start(self._first_delay)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return self.poller.stop()
