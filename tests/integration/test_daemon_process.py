"""The daemon process: signals, the access log, the quiet recent-log box, start-up checks."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import pytest_twisted
import treq

from tests.support.configs import busybox_conf
from tests.support.daemon import Daemon

AGENT = "imaginator-test-agent/1.0"


def args(tmp_path: Path, *extra: str) -> list[str]:
    conf = busybox_conf(tmp_path, auto_rebuild=[])
    return [
        "-portNum=0",
        f"-stateDir={tmp_path / 'state'}",
        f"-configurationUrl=file://{conf}",
        "-buildLogDir=",
        *extra,
    ]


def sig_ignored(pid: int) -> int:
    """The mask of ignored signals of process ``pid``."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigIgn:"):
            return int(line.split()[1], 16)
    raise AssertionError("no SigIgn line")


@pytest_twisted.ensureDeferred
async def test_sigint_stops_a_daemon_that_inherited_it_ignored(tmp_path):
    daemon = Daemon(args(tmp_path), ignore_sigint=True).start()
    await daemon.wait_listening()
    code = await daemon.stop(signal.SIGINT)
    assert code == 0, daemon.output()
    assert any("Received SIGINT: stopping" in line for line in daemon.stdout), daemon.output()


@pytest_twisted.ensureDeferred
async def test_sigterm_stops_cleanly_with_status_zero(tmp_path):
    daemon = Daemon(args(tmp_path)).start()
    await daemon.wait_listening()
    code = await daemon.stop(signal.SIGTERM)
    assert code == 0, daemon.output()
    assert any("Received SIGTERM: stopping" in line for line in daemon.stdout)


@pytest_twisted.ensureDeferred
async def test_access_log_file_and_a_quiet_recent_log(tmp_path):
    access = tmp_path / "access.log"
    daemon = Daemon(
        args(tmp_path, f"-accessLogFile={access}", "-presentationImageServerHostname=img")
    ).start()
    try:
        port = await daemon.wait_listening()
        base = f"http://127.0.0.1:{port}"
        headers = {"User-Agent": [AGENT]}
        for path in ("/", "/static/style.css", "/favicon.ico"):
            await (await treq.get(base + path, headers=headers)).content()
        page = await (await treq.get(base + "/", headers=headers)).text()
    finally:
        code = await daemon.stop()
    assert code == 0
    recent = page[page.index("imaginator listening on port") - 200 :]
    for noise in ("Starting factory", " starting on ", AGENT, "GET /"):
        assert noise not in recent, noise
    lines = access.read_text().splitlines()
    assert len(lines) == 4
    for line in lines:  # Twisted's combined format quotes the address
        assert line.startswith('"127.0.0.1" - - [') and line.endswith(f'"{AGENT}"')
    assert '"GET /favicon.ico HTTP/1.1"' in lines[2]
    assert not any(AGENT in line for line in daemon.stdout)
    ignored = [line for line in daemon.stdout if "is ignored" in line]
    assert len(ignored) == 1 and "-presentationImageServerHostname=img is ignored" in ignored[0]


@pytest_twisted.ensureDeferred
async def test_a_missing_certificate_stops_start_up_naming_it(tmp_path):
    missing = tmp_path / "nowhere" / "cert.pem"
    daemon = Daemon(args(tmp_path, f"-certFile={missing}")).start()
    code = await daemon.ended.addTimeout(60, daemon.reactor)
    assert code != 0
    errors = [line for line in daemon.stderr if line.startswith("imaginator: ")]
    assert errors == [f"imaginator: -certFile={missing}: No such file or directory"], (
        daemon.output()
    )
    assert not any("Traceback" in line for line in daemon.stderr + daemon.stdout)


@pytest_twisted.ensureDeferred
async def test_no_certificates_on_a_fresh_machine_warns_once(tmp_path):
    # The defaults stand for a fresh machine only where none of them exists.
    defaults = ("/etc/ssl/CA.pem", "/etc/ssl/imaginator/cert.pem", "/etc/ssl/imaginator/key.pem")
    if any(Path(path).exists() for path in defaults):
        pytest.skip("this machine has some of the default certificate files")
    daemon = Daemon(args(tmp_path)).start()
    try:
        await daemon.wait_listening()
    finally:
        await daemon.stop()
    warnings = [line for line in daemon.stdout if "RPC over TLS disabled" in line]
    assert len(warnings) == 1, daemon.output()
