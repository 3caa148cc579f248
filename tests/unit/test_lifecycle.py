"""Start-up checks, the stop order of the daemon's services, and stopping the thread pool."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.ssl import CertificateOptions
from twisted.logger import LogEvent, formatEvent, globalLogPublisher

from imaginator.flags import FLAGS
from imaginator.lifecycle import (
    AUTO,
    BUILDS,
    COLLECTOR,
    DEPS,
    POOL,
    PUBLISH,
    STREAMS,
    VARIABLES,
    WEB,
    DaemonServices,
    StartupError,
    check_flags,
    imageserver_tls_options,
    server_tls_options,
    tls_disabled_warning,
)
from imaginator.runtime.threads import make_thread_pool, stop_thread_pool
from imaginator.tools.certs import make_ca, make_server_cert
from tests.support.fakes import FakeReactor, fired, has_fired


def options(**overrides: Any) -> dict[str, Any]:
    values = {flag.name: flag.parse(flag.default) for flag in FLAGS}
    values.update(overrides)
    return values


@pytest.fixture
def logged():
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


# -- flags -------------------------------------------------------------------------------


def test_unused_flags_warn_only_when_set():
    assert check_flags(options()) == []
    warnings = check_flags(
        options(
            imageServerPortNum=7000,
            presentationImageServerHostname="img.example",
            slaveDriverConfigurationFile="/etc/slaves.json",
        )
    )
    assert len(warnings) == 3
    assert warnings[0].startswith("-imageServerPortNum=7000 is ignored: ")
    assert warnings[1].startswith("-presentationImageServerHostname=img.example is ignored")
    assert warnings[2].startswith("-slaveDriverConfigurationFile=/etc/slaves.json is ignored")


def test_the_imageserver_port_is_used_with_a_hostname():
    assert check_flags(options(imageServerHostname="imageserver", imageServerPortNum=7000)) == []


# -- certificates ------------------------------------------------------------------------


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    ca_cert, ca_key = make_ca()
    cert, key = make_server_cert(ca_cert, ca_key, ["localhost"])
    paths = {"CAfile": tmp_path / "ca.pem", "certFile": tmp_path / "cert.pem"}
    paths["keyFile"] = tmp_path / "key.pem"
    paths["CAfile"].write_bytes(ca_cert)
    paths["certFile"].write_bytes(cert)
    paths["keyFile"].write_bytes(key)
    return paths


def at_defaults(tmp_path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Options whose three TLS flags are at (test) defaults under ``tmp_path/etc``."""
    defaults = {name: str(tmp_path / "etc" / f"{name}.pem") for name in ("CAfile", "certFile")}
    defaults["keyFile"] = str(tmp_path / "etc" / "keyFile.pem")
    return options(**defaults), defaults


def test_defaults_absent_run_without_tls(tmp_path: Path):
    opts, defaults = at_defaults(tmp_path)
    assert server_tls_options(opts, defaults) is None
    warning = tls_disabled_warning(opts)
    assert warning.startswith("RPC over TLS disabled: none of ")
    assert "imaginator-certs init" in warning and "permitInsecureMode" not in warning
    insecure = tls_disabled_warning({**opts, "permitInsecureMode": True})
    assert insecure.endswith("RPC is served without TLS, to anyone (-permitInsecureMode)")


def test_defaults_half_present_stop_start_up(tmp_path: Path, pki: dict[str, Path]):
    opts, defaults = at_defaults(tmp_path)
    Path(defaults["CAfile"]).parent.mkdir()
    Path(defaults["CAfile"]).write_bytes(pki["CAfile"].read_bytes())
    with pytest.raises(StartupError) as info:
        server_tls_options(opts, defaults)
    assert str(info.value) == f"-certFile={defaults['certFile']}: No such file or directory"


def test_good_files_give_tls_options(pki: dict[str, Path]):
    opts = options(**{name: str(path) for name, path in pki.items()})
    assert isinstance(server_tls_options(opts), CertificateOptions)


@pytest.mark.parametrize(
    ("flag", "content", "problem"),
    [
        ("CAfile", None, "No such file or directory"),
        ("certFile", b"garbage", "no PEM certificate in the file"),
        ("keyFile", b"garbage", "not an unencrypted PEM private key"),
    ],
)
def test_a_bad_file_names_the_flag_and_the_file(pki, tmp_path, flag, content, problem):
    bad = tmp_path / "bad.pem"
    if content is not None:
        bad.write_bytes(content)
    opts = options(**{name: str(path) for name, path in pki.items()})
    opts[flag] = str(bad)
    with pytest.raises(StartupError) as info:
        server_tls_options(opts)
    assert str(info.value).startswith(f"-{flag}={bad}: {problem}")
    assert "\n" not in str(info.value)


def test_a_key_of_another_certificate_stops_start_up(pki, tmp_path):
    other = tmp_path / "other-key.pem"
    ca_cert, ca_key = make_ca()
    other.write_bytes(make_server_cert(ca_cert, ca_key, ["x"])[1])
    opts = options(**{name: str(path) for name, path in pki.items()})
    opts["keyFile"] = str(other)
    with pytest.raises(StartupError, match="cannot be used together"):
        server_tls_options(opts)


def test_the_imageserver_needs_all_three_files_even_at_their_defaults(tmp_path, pki):
    opts, _defaults = at_defaults(tmp_path)
    opts["imageServerHostname"] = "images.example"
    with pytest.raises(StartupError) as info:
        imageserver_tls_options(opts)
    assert str(info.value) == (
        f"-CAfile={opts['CAfile']}: No such file or directory (needed to talk to the "
        "imageserver of -imageServerHostname=images.example)"
    )
    good = options(imageServerHostname="127.0.0.1", **{n: str(p) for n, p in pki.items()})
    assert imageserver_tls_options(good) is not None
    good["keyFile"] = str(pki["CAfile"])
    with pytest.raises(StartupError, match=r"^-keyFile=.*: not an unencrypted PEM private key"):
        imageserver_tls_options(good)


# -- the stop order ----------------------------------------------------------------------


class Part(Service):
    """A child whose stop the test ends (``ends[name]``), recording what happens."""

    def __init__(self, events: list[str], ends: dict[str, Deferred[None]]) -> None:
        self.events = events
        self.ends = ends

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self.events.append(f"stop {self.name}")
        d: Deferred[None] = Deferred()
        self.ends[self.name] = d
        d.addCallback(lambda _: self.events.append(f"stopped {self.name}"))
        return d


class Builds(Part):
    def refuse_new_builds(self) -> None:
        self.events.append("refuse builds")


def services(clock: FakeReactor) -> tuple[DaemonServices, list[str], dict[str, Deferred[None]]]:
    events: list[str] = []
    ends: dict[str, Deferred[None]] = {}
    parent = DaemonServices(clock, stop_timeout=10)
    for name in (POOL, VARIABLES, STREAMS, BUILDS, PUBLISH, DEPS, WEB, AUTO, COLLECTOR):
        part = (Builds if name == BUILDS else Part)(events, ends)
        part.setName(name)
        part.setServiceParent(parent)
    parent.startService()
    return parent, events, ends


def test_stop_order_requests_timers_builds_listening_pool():
    clock = FakeReactor()
    parent, events, ends = services(clock)
    stopped = parent.stopService()
    periodic = [f"stop {n}" for n in (AUTO, COLLECTOR, DEPS, STREAMS, VARIABLES, PUBLISH)]
    assert events == ["refuse builds", *periodic, f"stop {BUILDS}"]
    ends[AUTO].callback(None)  # a cycle may end before the builds are killed
    ends[BUILDS].callback(None)
    for name in (COLLECTOR, DEPS, STREAMS, VARIABLES):
        ends[name].callback(None)
    assert f"stop {WEB}" not in events  # the publisher's push is still stopping
    ends[PUBLISH].callback(None)
    assert events[-1] == f"stop {WEB}"
    ends[WEB].callback(None)
    assert events[-1] == f"stop {POOL}" and not has_fired(stopped)
    ends[POOL].callback(None)
    assert fired(stopped) is None
    assert not parent.running


def test_each_step_of_the_stop_is_bounded(logged):
    clock = FakeReactor()
    parent, events, _ends = services(clock)
    stopped = parent.stopService()
    clock.advance(10)  # the builds never end: given up on, and so are the pollers
    assert f"stop {WEB}" in events
    clock.advance(10)
    clock.advance(10)
    assert fired(stopped) is None
    gave_up = [formatEvent(e) for e in logged if "gave up" in formatEvent(e)]
    assert f"Stopping {BUILDS}: gave up waiting after 10s" in gave_up
    assert f"Stopping {POOL}: gave up waiting after 10s" in gave_up


def test_a_failing_stop_is_logged_and_the_rest_goes_on(logged):
    clock = FakeReactor()
    parent, _events, ends = services(clock)
    stopped = parent.stopService()
    ends[BUILDS].errback(RuntimeError("kill failed"))
    for name in (AUTO, COLLECTOR, DEPS, STREAMS, VARIABLES, PUBLISH):
        ends[name].callback(None)
    ends[WEB].callback(None)
    ends[POOL].callback(None)
    assert fired(stopped) is None
    assert any(formatEvent(e) == f"Error stopping {BUILDS}" for e in logged)


def test_stop_with_only_some_parts_started():
    clock = FakeReactor()
    parent = DaemonServices(clock)
    parent.startService()
    assert fired(parent.stopService()) is None


# -- the thread pool ----------------------------------------------------------------------


class ThreadSafeClock(FakeReactor):
    """A Clock whose ``callFromThread`` queues calls for the test thread to run."""

    def __init__(self) -> None:
        super().__init__()
        self.from_threads: list[Any] = []
        self.arrived = threading.Event()

    def callFromThread(self, f, *args, **kwargs) -> None:
        self.from_threads.append((f, args, kwargs))
        self.arrived.set()

    def run_from_threads(self) -> None:
        while self.from_threads:
            f, args, kwargs = self.from_threads.pop(0)
            f(*args, **kwargs)


def test_stopping_the_pool_never_joins_on_the_calling_thread(logged):
    clock = ThreadSafeClock()
    pool = make_thread_pool("test-stop", 2)
    pool.start()
    release = threading.Event()
    finished = threading.Event()

    def stuck() -> None:
        release.wait(30)
        finished.set()

    started = threading.Event()
    pool.callInThread(lambda: (started.set(), stuck()))
    assert started.wait(30)
    stopped = stop_thread_pool(pool, clock, timeout=5)
    # Returned while the job still runs: nothing joined on this thread.
    assert not finished.is_set() and not has_fired(stopped)
    clock.advance(5)
    assert fired(stopped) is False
    assert any("gave up after 5s" in formatEvent(e) for e in logged)
    assert all(thread.daemon for thread in pool.threads)
    release.set()


def test_stopping_the_pool_fires_once_its_threads_have_ended():
    clock = ThreadSafeClock()
    pool = make_thread_pool("test-stop", 2)
    pool.start()
    ran = threading.Event()
    pool.callInThread(ran.set)
    assert ran.wait(30)
    stopped = stop_thread_pool(pool, clock, timeout=5)
    assert clock.arrived.wait(30)  # the helper thread has joined the workers
    clock.run_from_threads()
    assert fired(stopped) is True
    assert clock.getDelayedCalls() == []
    assert not any(thread.is_alive() for thread in pool.threads)


def test_stopping_a_pool_never_started():
    pool = make_thread_pool("never", 1)
    assert fired(stop_thread_pool(pool, FakeReactor(), timeout=5)) is True
