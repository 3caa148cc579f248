"""scripts/install-service installs a copy that outlives the clone it came from.

A copy of the repository is installed into a temporary root (IMAGINATOR_ROOT),
then moved away: the installed commands still run and the installed init script
starts the installed daemon. Running install-service again upgrades in place.
Needs root and the package index (pip installs the dependencies).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.integration.test_service_script import free_port, listening_pids
from tests.support.configs import REPO, busybox_conf

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="install-service and the daemon need root"),
]

COMMANDS = ("imaginator", "imagetool", "builder-tool", "imaginator-certs")
LEFT_OUT = (".venv", ".git", "build", "dist", "state", "*.egg-info", "__pycache__")
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def install(clone: Path, root: Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(clone / "scripts" / "install-service")],
        env={**os.environ, "IMAGINATOR_ROOT": str(root), "PATH": PATH},
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert result.returncode == 0, result
    return result


def installed_version(root: Path) -> str:
    return subprocess.run(
        [
            str(root / "opt/imaginator/bin/python"),
            "-c",
            "import imaginator as i; print(i.__version__)",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd="/",
    ).stdout.strip()


def test_the_installed_service_survives_moving_the_clone(tmp_path):
    clone = tmp_path / "clone"
    shutil.copytree(REPO, clone, ignore=shutil.ignore_patterns(*LEFT_OUT), symlinks=True)
    root = tmp_path / "root"
    result = install(clone, root)
    assert f"installed in {root}/opt/imaginator" in result.stdout

    moved = tmp_path / "moved"
    clone.rename(moved)

    bindir = root / "usr/local/bin"
    for command in COMMANDS:
        link = bindir / command
        assert os.readlink(link) == str(root / "opt/imaginator/bin" / command)
        ran = subprocess.run(
            [str(link), "-h"], capture_output=True, text=True, env={"PATH": PATH}, cwd="/"
        )
        assert ran.returncode == 0, (command, ran)
        assert str(clone) not in (root / "opt/imaginator/bin" / command).read_text()
    assert (
        "-portNum"
        in subprocess.run(
            [str(bindir / "imaginator"), "-h"], capture_output=True, text=True, cwd="/"
        ).stdout
    )

    # The installed init script, helpers and daemon: start, status, stop.
    port = free_port()
    conf = busybox_conf(tmp_path, auto_rebuild=[])
    defaults = root / "etc/default/imaginator"
    defaults.write_text(
        f"CONFIGURATION_URL=file://{conf}\nVARIABLES_FILE=\nSTATE_DIR={tmp_path / 'state'}\n"
        f'EXTRA_FLAGS="-portNum={port} -imageRebuildInterval=0"\n'
    )
    env = {
        "PATH": PATH,
        "IMAGINATOR": str(bindir / "imaginator"),
        "IMAGINATOR_DEFAULTS": str(defaults),
        "IMAGINATOR_LIBDIR": str(root / "usr/local/lib/imaginator"),
        "IMAGINATOR_RUNDIR": str(tmp_path / "run"),
        "IMAGINATOR_LOGDIR": str(tmp_path / "log"),
        "IMAGINATOR_START_TIMEOUT": "120",
    }
    init = root / "etc/init.d/imaginator"

    def service(action: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["/bin/sh", str(init), action], env=env, capture_output=True, text=True, timeout=180
        )

    try:
        started = service("start")
        assert started.returncode == 0, started
        daemon = int((tmp_path / "run/imaginator.daemon.pid").read_text())
        assert listening_pids(port) == {daemon}
        status = service("status")
        assert status.returncode == 0, status
    finally:
        stopped = service("stop")
    assert stopped.returncode == 0, stopped

    # Again, from the moved clone with a change: upgraded in place, settings kept.
    init_py = moved / "imaginator" / "__init__.py"
    init_py.write_text(init_py.read_text().replace('__version__ = "', '__version__ = "9'))
    before = installed_version(root)
    install(moved, root)
    assert installed_version(root) == "9" + before
    assert f"CONFIGURATION_URL=file://{conf}" in defaults.read_text()
