"""The service files build the daemon's command line from /etc/default/imaginator."""

from __future__ import annotations

import subprocess

import pytest

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
        "PLAIN_VARIABLES_FILE=/etc/imaginator/plain-variables\n"
        "STATE_DIR=/srv/imaginator\n"
        'EXTRA_FLAGS="-portNum=7000 -imageRebuildInterval=2h"\n'
    )
    assert command_line(text, tmp_path) == [
        "/usr/local/bin/imaginator",
        "-configurationUrl=https://config.example/conf.json",
        "-stateDir=/srv/imaginator",
        "-imageServerHostname=images.example",
        "-plainVariablesFile=/etc/imaginator/plain-variables",
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


def check(defaults_text: str, tmp_path, imaginator: str = "/bin/true"):
    defaults = tmp_path / "imaginator"
    defaults.write_text(defaults_text)
    return subprocess.run(
        [str(INIT / "imaginator-command"), str(defaults), "--check"],
        capture_output=True,
        text=True,
        env={"IMAGINATOR": imaginator, "PATH": "/usr/bin:/bin"},
    )


@pytest.mark.parametrize(
    "url",
    ["file://{conf}", "file://localhost{conf}", "file:{conf}", "{conf}", "https://u:pw@h/c.json"],
)
def test_check_accepts_an_existing_configuration(tmp_path, url):
    conf = tmp_path / "conf.json"
    conf.write_text("{}")
    result = check(f"CONFIGURATION_URL={url.format(conf=conf)}\nVARIABLES_FILE=\n", tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


@pytest.mark.parametrize("url", ["file://{conf}", "file://localhost{conf}", "{conf}"])
def test_check_names_a_missing_configuration(tmp_path, url):
    conf = tmp_path / "conf.json"
    result = check(f"CONFIGURATION_URL={url.format(conf=conf)}\n", tmp_path)
    assert result.returncode == 6
    assert result.stderr == (
        f"imaginator: {conf} does not exist (CONFIGURATION_URL in {tmp_path / 'imaginator'})\n"
    )


def test_check_names_a_missing_variables_file_without_its_contents(tmp_path):
    conf = tmp_path / "conf.json"
    conf.write_text("{}")
    result = check(f"CONFIGURATION_URL={conf}\nVARIABLES_FILE={tmp_path / 'variables'}\n", tmp_path)
    assert result.returncode == 6
    assert result.stderr == (
        f"imaginator: {tmp_path / 'variables'} does not exist "
        f"(VARIABLES_FILE in {tmp_path / 'imaginator'})\n"
    )


def test_check_needs_the_daemon(tmp_path):
    result = check("CONFIGURATION_URL=https://h/c.json\n", tmp_path, imaginator="/nonexistent")
    assert result.returncode == 5
    assert result.stderr == (
        "imaginator: /nonexistent is not installed (run scripts/install-service)\n"
    )


def test_syntax_and_units():
    for script in ("imaginator-command", "imaginator.init"):
        subprocess.run(["sh", "-n", str(INIT / script)], check=True)
    compile((INIT / "imaginator-health").read_text(), "imaginator-health", "exec")
    unit = (INIT / "imaginator.service").read_text()
    assert (
        "ExecStartPre=/usr/local/lib/imaginator/imaginator-command /etc/default/imaginator --check"
        in unit
    )
    assert "ExecStart=/usr/local/lib/imaginator/imaginator-command /etc/default/imaginator" in unit
    assert "Restart=always" in unit
