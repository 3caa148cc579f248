"""The service files build the daemon's command line from /etc/default/imaginator."""

from __future__ import annotations

import subprocess

from tests.support.configs import REPO

INIT = REPO / "init"


def command_line(defaults_text: str, tmp_path) -> list[str]:
    defaults = tmp_path / "imaginator"
    defaults.write_text(defaults_text)
    result = subprocess.run(
        [str(INIT / "imaginator-command"), str(defaults)],
        capture_output=True,
        text=True,
        env={"IMAGINATOR": "/usr/local/bin/imaginator", "PATH": "/usr/bin:/bin"},
        check=True,
    )
    return result.stdout.splitlines()


def test_the_shipped_defaults(tmp_path):
    assert command_line((INIT / "default.imaginator").read_text(), tmp_path) == [
        "/usr/local/bin/imaginator",
        "-configurationUrl=file:///etc/imaginator/conf.json",
        "-stateDir=/var/lib/imaginator",
        "-variablesFile=/etc/imaginator/variables",
    ]


def test_every_setting(tmp_path):
    text = (
        "CONFIGURATION_URL=https://config.example/conf.json\n"
        "IMAGE_SERVER_HOSTNAME=images.example\n"
        "VARIABLES_FILE=\n"
        "STATE_DIR=/srv/imaginator\n"
        'EXTRA_FLAGS="-portNum=7000 -imageRebuildInterval=2h"\n'
    )
    assert command_line(text, tmp_path) == [
        "/usr/local/bin/imaginator",
        "-configurationUrl=https://config.example/conf.json",
        "-stateDir=/srv/imaginator",
        "-imageServerHostname=images.example",
        "-portNum=7000",
        "-imageRebuildInterval=2h",
    ]


def test_exec_mode_runs_the_command(tmp_path):
    defaults = tmp_path / "imaginator"
    defaults.write_text("VARIABLES_FILE=\n")
    result = subprocess.run(
        [str(INIT / "imaginator-command"), str(defaults), "--exec"],
        capture_output=True,
        text=True,
        env={"IMAGINATOR": "/bin/echo", "PATH": "/usr/bin:/bin"},
        check=True,
    )
    assert result.stdout == (
        "-configurationUrl=file:///etc/imaginator/conf.json -stateDir=/var/lib/imaginator\n"
    )


def test_shell_syntax():
    for script in ("imaginator-command", "imaginator.init"):
        subprocess.run(["sh", "-n", str(INIT / script)], check=True)
    unit = (INIT / "imaginator.service").read_text()
    assert "ExecStart=/usr/local/lib/imaginator/imaginator-command /etc/default/imaginator" in unit
    assert "Restart=always" in unit
