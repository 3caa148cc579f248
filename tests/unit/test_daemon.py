"""The daemon's process-level parts: the access log, the quiet log ring, signals."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger, LogLevel, formatEvent, globalLogPublisher
from twisted.python import log as legacy_log
from twisted.python.failure import Failure

from imaginator.daemon import DaemonRunner
from imaginator.flags import FLAGS
from imaginator.lifecycle import StartupError
from imaginator.runtime.logbuffer import LogRing, is_twisted_noise
from imaginator.web import access
from imaginator.web.access import AccessLog, AccessLogError
from tests.support.fakes import FakeReactor, SyncThreadPool, fired, has_fired


def options(**overrides: Any) -> dict[str, Any]:
    values = {flag.name: flag.parse(flag.default) for flag in FLAGS}
    values.update(overrides)
    return values


def access_log(path: Path, pool: SyncThreadPool) -> AccessLog:
    reactor = FakeReactor()
    return AccessLog(str(path), lambda f, *a: deferToThreadPool(reactor, pool, f, *a))


# -- the access log -------------------------------------------------------------------------


def test_access_lines_are_written_by_the_pool(tmp_path: Path):
    pool = SyncThreadPool(auto=False)
    log = access_log(tmp_path / "access.log", pool)
    opened = as_deferred(log.open())
    pool.run_all()
    fired(opened)
    log.write("first")
    log.write("second")  # queued behind the write in flight
    assert (tmp_path / "access.log").read_text() == ""
    flushed = log.flushed()
    pool.run_all()
    assert fired(flushed) is None
    assert (tmp_path / "access.log").read_text() == "first\nsecond\n"
    closed = as_deferred(log.close())
    pool.run_all()
    fired(closed)
    log.write("after close")  # ignored, not an error
    assert pool.queue == []


def test_a_stuck_disk_drops_lines_past_the_bound_and_says_so(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(access, "MAX_QUEUED", 2)
    pool = SyncThreadPool(auto=False)
    log = access_log(tmp_path / "access.log", pool)
    opened = as_deferred(log.open())
    pool.run_all()
    fired(opened)
    for n in range(5):
        log.write(f"line {n}")  # line 0 in flight, 1 and 2 queued, 3 and 4 dropped
    pool.run_all()
    assert (tmp_path / "access.log").read_text().splitlines() == [
        "line 0",
        "line 1",
        "line 2",
        "# imaginator: 2 access log lines dropped (writes too slow)",
    ]


def test_an_access_log_that_cannot_be_opened_names_the_flag(tmp_path: Path):
    path = tmp_path / "missing-dir" / "access.log"
    log = access_log(path, SyncThreadPool())
    with pytest.raises(AccessLogError) as info:
        fired(as_deferred(log.open()))
    assert str(info.value) == f"-accessLogFile={path}: No such file or directory"


def as_deferred(coroutine):

    return Deferred.fromCoroutine(coroutine)


# -- the log ring -----------------------------------------------------------------------------


def test_twisted_factory_and_port_noise_stays_out_of_the_ring():
    ring = LogRing(10)
    globalLogPublisher.addObserver(ring)
    try:
        site_logger = Logger(namespace="twisted.web.server.Site")
        site_logger.info("Starting factory {factory!r}", factory="<Site object at 0x7f>")
        legacy_log.msg("SrpcSite starting on 6975")
        legacy_log.msg("(TCP Port 6975 Closed)")
        site_logger.info("Stopping factory {factory!r}", factory="<Site object at 0x7f>")
        Logger(namespace="imaginator.test").info("Built image: a/b")
        # Words like these from the imaginator itself are kept.
        Logger(namespace="imaginator.test").info("Starting factory reset of x")
    finally:
        globalLogPublisher.removeObserver(ring)
    texts = [line.split(" ", 2)[2] for line in ring.lines()]
    assert texts == ["Built image: a/b", "Starting factory reset of x"]


def test_noise_detection_reads_the_text():
    event = {
        "log_namespace": "log_legacy",
        "log_level": LogLevel.info,
        "log_format": "{log_text}",
        "log_text": "HTTPFactory starting on 80",
    }
    assert formatEvent(event) == "HTTPFactory starting on 80"
    assert is_twisted_noise(event)
    assert not is_twisted_noise({**event, "log_text": "imaginator listening on port 80"})


# -- signals ---------------------------------------------------------------------------------


class StoppingReactor(FakeReactor):
    running = True

    def __init__(self) -> None:
        super().__init__()
        self.stops = 0

    def stop(self) -> None:
        self.stops += 1


@pytest.fixture
def saved_handlers():
    saved = {n: signal.getsignal(n) for n in (signal.SIGINT, signal.SIGTERM)}
    yield
    for number, handler in saved.items():
        signal.signal(number, handler)


def test_sigint_and_sigterm_stop_the_reactor_once(saved_handlers):
    reactor = StoppingReactor()
    runner = DaemonRunner(options(), reactor, set_exit_status=lambda code: None)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # as a background shell leaves it
    runner.install_signal_handlers()
    assert signal.getsignal(signal.SIGINT) == runner._on_signal
    assert signal.getsignal(signal.SIGTERM) == runner._on_signal
    os.kill(os.getpid(), signal.SIGINT)  # handled between two bytecodes, on this thread
    assert reactor.stops == 1
    os.kill(os.getpid(), signal.SIGTERM)
    assert reactor.stops == 1  # already stopping


def test_a_start_up_failure_sets_the_exit_status_and_stops(tmp_path: Path, monkeypatch):
    reactor = StoppingReactor()
    statuses: list[int] = []
    runner = DaemonRunner(options(), reactor, set_exit_status=statuses.append)
    written: list[bytes] = []
    monkeypatch.setattr(os, "write", lambda fd, data: written.append(data) or len(data))

    runner._fatal(Failure(StartupError("-certFile=/x: No such file or directory")))
    assert statuses == [1] and reactor.stops == 1
    assert written == [b"imaginator: -certFile=/x: No such file or directory\n"]
    assert has_fired(runner.ready)
