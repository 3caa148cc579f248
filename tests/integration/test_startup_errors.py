"""Start-up refuses bad configuration with one clear line and a non-zero exit."""

from __future__ import annotations

import json

import pytest
import pytest_twisted

from tests.support.configs import busybox_conf
from tests.support.daemon import Daemon


def conf_with(tmp_path, mutate):
    path = busybox_conf(tmp_path)
    document = json.loads(path.read_text())
    mutate(document)
    path.write_text(json.dumps(document))
    return path


def set_size_multiplier(doc):
    doc["PackagerTypes"]["busybox"]["ListCommand"]["SizeMultiplier"] = "x"


def unknown_packager(doc):
    doc["BootstrapStreams"]["bootstrap/busybox"]["PackagerType"] = "nope"


def bad_regex(doc):
    doc["BootstrapStreams"]["bootstrap/busybox"]["FilterLines"] = ["/ok", "(unclosed"]


def publish_with_tag(doc):
    doc["BootstrapStreams"]["bootstrap/busybox"]["Publish"] = "localhost:5000/bb:latest"


CASES = [
    ("missing", None, "conf.json"),
    ("not-json", "{ this is not json", "conf.json"),
    ("wrong-type", set_size_multiplier, "PackagerTypes.busybox.ListCommand.SizeMultiplier"),
    ("unknown-packager", unknown_packager, "PackagerType"),
    ("bad-regex", bad_regex, "FilterLines"),
    ("bad-publish", publish_with_tag, "BootstrapStreams.bootstrap/busybox.Publish: no tag"),
]


@pytest.mark.parametrize(("case", "change", "expected"), CASES, ids=[c[0] for c in CASES])
@pytest_twisted.ensureDeferred
async def test_bad_configuration_stops_startup(tmp_path, case, change, expected):
    if change is None:
        conf = tmp_path / "conf.json"
    elif isinstance(change, str):
        conf = tmp_path / "conf.json"
        conf.write_text(change)
    else:
        conf = conf_with(tmp_path, change)
    daemon = Daemon(
        ["-portNum=0", f"-stateDir={tmp_path / 'state'}", f"-configurationUrl=file://{conf}"]
    ).start()
    code = await daemon.ended.addTimeout(60, daemon.reactor)
    assert code != 0
    errors = [line for line in daemon.stderr if line.startswith("imaginator: ")]
    assert len(errors) == 1, daemon.output()
    assert "conf.json" in errors[0]
    assert expected in errors[0]
    assert not any("Traceback" in line for line in daemon.stderr), daemon.output()


@pytest_twisted.ensureDeferred
async def test_help_lists_flags_and_exits_zero():
    daemon = Daemon(["-h"]).start()
    code = await daemon.ended.addTimeout(60, daemon.reactor)
    assert code == 0
    text = "\n".join(daemon.stdout)
    assert "  -portNum uint\n" in text and "(default 6975)" in text
    assert "-configurationUrl" in text


@pytest_twisted.ensureDeferred
async def test_a_bad_flag_is_one_line_and_exit_2():
    daemon = Daemon(["-stateDir=/nonexistent", "-portNum=abc"]).start()
    code = await daemon.ended.addTimeout(60, daemon.reactor)
    assert code == 2
    assert daemon.stdout == []
    assert daemon.stderr == [
        'imaginator: invalid value "abc" for flag -portNum: want an integer; see imaginator -h'
    ]


@pytest_twisted.ensureDeferred
async def test_a_bad_registry_credentials_file_stops_startup(tmp_path):
    credentials = tmp_path / "registry.json"
    credentials.write_text('{"username": "alice", "password": "s3cret"')  # cut short
    daemon = Daemon(
        [
            "-portNum=0",
            f"-stateDir={tmp_path / 'state'}",
            f"-configurationUrl=file://{busybox_conf(tmp_path)}",
            f"-registryCredentials={credentials}",
        ]
    ).start()
    code = await daemon.ended.addTimeout(60, daemon.reactor)
    assert code != 0
    assert [line for line in daemon.stderr if line.startswith("imaginator: ")] == [
        f"imaginator: -registryCredentials={credentials}: not JSON"
    ], daemon.output()
    assert "s3cret" not in daemon.output()
