"""The SysV init script run for real: configuration check, status, stop and restart.

The script runs as it would under ``service`` but with its paths pointed into the
test's directory (``IMAGINATOR_*`` variables), against the real daemon (this
repository's code, through a two-line wrapper) or, where the daemon must misbehave
on purpose, a small stand-in process.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.integration._procfs import matching_processes
from tests.support.configs import REPO, busybox_conf

SCRIPT = REPO / "init" / "imaginator.init"
SCRIPT_TIMEOUT = 180

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the daemon runs as root only")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def poll(condition: Callable[[], object], timeout: float = 60.0, interval: float = 0.1):
    """The first true value of ``condition()``, looked at until ``timeout`` runs out."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def running(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


def listening_pids(port: int) -> set[int]:
    """The processes holding a TCP socket that listens on ``port``."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            fields = row.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    pids = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fds = os.listdir(f"/proc/{entry}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{entry}/fd/{fd}") in inodes:
                    pids.add(int(entry))
            except OSError:
                continue
    return pids


@dataclass
class Service:
    """The init script with its files in ``tmp``; ``run(action)`` runs it."""

    tmp: Path
    port: int
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        wrapper = self.tmp / "bin" / "imaginator"
        wrapper.parent.mkdir()
        wrapper.write_text(
            f'#!/bin/sh\nPYTHONPATH={REPO} exec {sys.executable} -m imaginator.cli "$@"\n'
        )
        wrapper.chmod(0o755)
        self.conf = busybox_conf(self.tmp, auto_rebuild=[])
        self.defaults = self.tmp / "default.imaginator"
        self.write_defaults()
        self.env = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "IMAGINATOR": str(wrapper),
            "IMAGINATOR_DEFAULTS": str(self.defaults),
            "IMAGINATOR_LIBDIR": str(REPO / "init"),
            "IMAGINATOR_RUNDIR": str(self.tmp / "run"),
            "IMAGINATOR_LOGDIR": str(self.tmp / "log"),
            "IMAGINATOR_START_TIMEOUT": "120",
        }

    def write_defaults(self, **settings: str) -> None:
        values = {
            "CONFIGURATION_URL": f"file://{self.conf}",
            "VARIABLES_FILE": "",
            "STATE_DIR": str(self.tmp / "state"),
            "EXTRA_FLAGS": f'"-portNum={self.port} -imageRebuildInterval=0"',
            **settings,
        }
        self.defaults.write_text("".join(f"{k}={v}\n" for k, v in values.items()))

    def run(self, action: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["/bin/sh", str(SCRIPT), action],
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=SCRIPT_TIMEOUT,
        )

    def pid(self, name: str) -> int | None:
        try:
            return int((self.tmp / "run" / name).read_text())
        except (OSError, ValueError):
            return None

    def daemons(self) -> list[int]:
        """Live processes started with this service's state directory."""
        return matching_processes(f"-stateDir={self.tmp / 'state'}".encode())

    def cleanup(self) -> None:
        """Stop whatever the test left running; by process id, as a last resort."""
        self.run("stop", IMAGINATOR_STOP_TIMEOUT="30")
        for name in ("imaginator.pid", "imaginator.daemon.pid"):
            pid = self.pid(name)
            if pid is not None and running(pid):
                os.kill(pid, signal.SIGKILL)
        for pid in self.daemons():
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def service(tmp_path):
    service = Service(tmp_path, free_port())
    yield service
    service.cleanup()


def test_start_refuses_a_missing_configuration(service):
    service.conf.unlink()
    result = service.run("start")
    assert result.returncode == 6, result
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"imaginator: {service.conf} does not exist (CONFIGURATION_URL in {service.defaults})"
    ]
    assert service.run("status").returncode == 3
    assert service.daemons() == []


def test_start_refuses_a_variables_file_it_cannot_read(service):
    variables = service.tmp / "variables"
    variables.mkdir()
    service.write_defaults(VARIABLES_FILE=str(variables))
    result = service.run("start")
    assert result.returncode == 6, result
    assert result.stderr.splitlines() == [
        f"imaginator: {variables} is not a regular file (VARIABLES_FILE in {service.defaults})"
    ]
    assert service.run("status").returncode == 3


def test_start_refuses_when_the_daemon_is_not_installed(service):
    missing = service.tmp / "nowhere" / "imaginator"
    result = service.run("start", IMAGINATOR=str(missing))
    assert result.returncode == 5, result
    assert result.stderr.splitlines() == [
        f"imaginator: {missing} is not installed (run scripts/install-service)"
    ]


def test_start_status_stop(service):
    started = service.run("start")
    assert started.returncode == 0, started
    daemon = service.pid("imaginator.daemon.pid")
    assert started.stdout == f"imaginator started (pid {daemon}, port {service.port})\n"
    assert listening_pids(service.port) == {daemon}

    status = service.run("status")
    assert status.returncode == 0, status
    assert status.stdout == (
        f"imaginator is running and answering (pid {daemon}, port {service.port})\n"
    )
    again = service.run("start")
    assert again.returncode == 0
    assert "already running" in again.stdout

    babysitter = service.pid("imaginator.pid")
    stopped = service.run("stop")
    assert stopped.returncode == 0, stopped
    assert stopped.stdout == "imaginator stopped\n"
    # stop returns only once both have exited.
    assert not running(daemon) and not running(babysitter)
    assert service.daemons() == []
    status = service.run("status")
    assert (status.returncode, status.stdout) == (3, "imaginator is stopped\n")


def test_restart_leaves_exactly_one_daemon_on_the_port(service):
    assert service.run("start").returncode == 0
    old_daemon = service.pid("imaginator.daemon.pid")
    old_babysitter = service.pid("imaginator.pid")

    restarted = service.run("restart")
    assert restarted.returncode == 0, restarted
    assert restarted.stdout.splitlines()[0] == "imaginator stopped"

    new_daemon = service.pid("imaginator.daemon.pid")
    assert new_daemon not in (None, old_daemon)
    assert not running(old_daemon) and not running(old_babysitter)
    assert service.daemons() == [new_daemon]
    assert listening_pids(service.port) == {new_daemon}
    status = service.run("status")
    assert status.returncode == 0, status
    assert "exited" not in status.stdout  # the new daemon never failed to bind the port
    log = (service.tmp / "log" / "imaginator.log").read_text()
    assert "restarting in" not in log


def test_a_daemon_that_exits_at_once_is_reported_as_crash_looping(service):
    service.conf.write_text("{ this is not json\n")
    # A long pause between restarts holds the babysitter in the crash loop's pause.
    result = service.run("start", IMAGINATOR_RESTART_DELAY="600")
    assert result.returncode == 1, result
    lines = result.stderr.splitlines()
    assert lines[0].startswith("imaginator: the daemon exited at once (status 1)")
    assert lines[1].startswith(f"imaginator: file://{service.conf}: line 1")

    status = service.run("status", IMAGINATOR_RESTART_DELAY="600")
    assert status.returncode == 1, status
    first, error = status.stdout.splitlines()
    assert first.startswith(
        "imaginator is crash-looping: the daemon exited once in the last 10 minutes, "
        "last with status 1; the babysitter (pid "
    )
    assert error == f"last error: {lines[1]}"

    # stop interrupts the babysitter's pause at once
    babysitter = service.pid("imaginator.pid")
    assert service.run("stop", IMAGINATOR_STOP_TIMEOUT="30").returncode == 0
    assert not running(babysitter)


def test_status_counts_the_restarts_of_a_crash_loop(service):
    service.conf.write_text("{ this is not json\n")
    fast = {"IMAGINATOR_RESTART_DELAY": "0.1"}
    assert service.run("start", **fast).returncode == 1

    def three_exits():
        status = service.run("status", **fast)
        found = re.search(r"exited (\d+) times in the last 10 minutes", status.stdout)
        return status if found and int(found.group(1)) >= 3 else None

    status = poll(three_exits, timeout=120)
    assert status is not None, service.run("status", **fast)
    assert status.returncode == 1
    assert status.stdout.startswith("imaginator is crash-looping: the daemon exited ")
    assert ", last with status 1; " in status.stdout
    assert status.stdout.splitlines()[-1].startswith(
        f"last error: imaginator: file://{service.conf}"
    )


STUCK_DAEMON = """\
import signal
import socket

signal.signal(signal.SIGTERM, signal.SIG_IGN)
listener = socket.create_server(("127.0.0.1", {port}))
while True:
    connection, _ = listener.accept()
    connection.close()
"""


def test_a_daemon_that_does_not_answer_or_stop(service):
    """Listening but not answering /healthz is status 4; stop kills it after the timeout."""
    stand_in = service.tmp / "bin" / "stuck-imaginator"
    stand_in.write_text(f"#!{sys.executable}\n" + STUCK_DAEMON.format(port=service.port))
    stand_in.chmod(0o755)
    env = {
        "IMAGINATOR": str(stand_in),
        "IMAGINATOR_START_TIMEOUT": "1",
        "IMAGINATOR_STOP_TIMEOUT": "1",
    }
    started = service.run("start", **env)
    assert started.returncode == 0, started
    assert "/healthz did not answer within 1s" in started.stdout
    daemon = poll(lambda: service.pid("imaginator.daemon.pid"))
    poll(lambda: listening_pids(service.port))

    status = service.run("status", **env)
    assert status.returncode == 4, status
    assert status.stdout.startswith(
        f"imaginator is running (pid {daemon}) but not answering: port {service.port}: "
        "/healthz did not answer"
    )

    babysitter = service.pid("imaginator.pid")
    stopped = service.run("stop", **env)
    assert stopped.returncode == 0, stopped
    assert stopped.stderr == (
        f"imaginator did not stop within 1s: killing process {babysitter} {daemon}\n"
    )
    assert not running(daemon) and not running(babysitter)
    assert service.run("status", **env).returncode == 3
