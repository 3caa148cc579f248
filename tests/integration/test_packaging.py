"""The installed package: console scripts, the twistd plugin and its refusals.

These run the copies that ``scripts/install`` put into ``.venv`` (not the
source tree), from ``/`` and without ``PYTHONPATH``.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.support.configs import REPO

VENV = REPO / ".venv"
BIN = VENV / "bin"


def installed_env() -> dict[str, str]:
    return {"PATH": f"{BIN}:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}


def run(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        argv, cwd="/", env=installed_env(), capture_output=True, text=True, timeout=120, **kwargs
    )


def test_console_scripts_are_installed():
    for name in ("imaginator", "imagetool", "twistd"):
        assert (BIN / name).exists(), f"{name} missing: run scripts/install"


def test_installed_copy_is_not_the_source_tree():
    result = run([str(BIN / "python"), "-c", "import imaginator; print(imaginator.__file__)"])
    assert result.returncode == 0, result.stderr
    assert "site-packages" in result.stdout


def test_plugin_is_shipped_and_found_by_twistd():
    result = run([str(BIN / "twistd"), "--help"])
    assert result.returncode == 0, result.stderr
    assert "imaginator" in result.stdout
    plugins = list(VENV.glob("lib/python3*/site-packages/twisted/plugins/imaginator_plugin.py"))
    assert plugins, "twisted/plugins/imaginator_plugin.py not installed"
    assert (plugins[0].parent / "dropin.cache").exists()


def test_imaginator_help_lists_every_flag():
    result = run([str(BIN / "imaginator"), "-h"])
    assert result.returncode == 0, result.stderr
    assert "-portNum uint" in result.stdout
    assert "(default 6975)" in result.stdout
    assert "-imageRebuildInterval duration" in result.stdout


def test_unknown_flag_is_refused():
    result = run([str(BIN / "imaginator"), "-bogus=1"])
    assert result.returncode == 2
    assert result.stderr == (
        "imaginator: flag provided but not defined: -bogus; see imaginator -h\n"
    )


def test_installed_builder_tool_names_an_unknown_command():
    result = run([str(BIN / "builder-tool"), "build-imag", "x"])
    assert result.returncode == 2
    assert result.stderr == 'builder-tool: unknown command "build-imag"; see builder-tool -h\n'


def test_twistd_plugin_refuses_a_umask_other_than_022(tmp_path: Path):
    result = run(
        [str(BIN / "twistd"), "-n", "--pidfile=", "imaginator", f"--stateDir={tmp_path}"],
        umask=0o077,
    )
    assert result.returncode != 0
    assert "umask is 077, must be 022" in result.stdout + result.stderr


def test_templates_and_static_files_are_installed():
    web = list(VENV.glob("lib/python3*/site-packages/imaginator/web"))
    assert web, "imaginator.web not installed"
    assert (web[0] / "templates" / "status.html").exists()
    assert list((web[0] / "static").iterdir())
