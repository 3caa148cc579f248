"""``imagetool oci``, ``sbom``, ``diff``, ``push`` argument handling and the
reproducible ``tar`` against a store in a temporary directory."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from imaginator.tools.imagetool import main, parse_args
from tests.support.export_images import DERIVED, SOURCE, make_store


@pytest.fixture
def state_dir(tmp_path):
    make_store(tmp_path / "state" / "store")
    return str(tmp_path / "state")


def run(capsys, *argv) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_oci_writes_a_layout(capsys, state_dir, tmp_path):
    out = tmp_path / "layout"
    status, stdout, err = run(capsys, "-stateDir", state_dir, "oci", DERIVED, str(out))
    assert (status, err) == (0, "")
    assert stdout.startswith(f"oci:{out}:{DERIVED} sha256:")
    index = json.loads((out / "index.json").read_bytes())
    assert index["manifests"][0]["digest"] == stdout.split()[1]


def test_oci_with_source_date_epoch_is_reproducible(capsys, state_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1600000000")
    digests = set()
    for name in ("a", "b"):
        status, stdout, _ = run(capsys, "-stateDir", state_dir, "oci", SOURCE, str(tmp_path / name))
        assert status == 0
        digests.add(stdout.split()[1])
    assert len(digests) == 1
    files = {
        p.relative_to(tmp_path / "a"): p.read_bytes()
        for p in (tmp_path / "a").rglob("*")
        if p.is_file()
    }
    assert files == {
        p.relative_to(tmp_path / "b"): p.read_bytes()
        for p in (tmp_path / "b").rglob("*")
        if p.is_file()
    }


def test_tar_with_source_date_epoch_is_reproducible_and_clamped(
    capsysbinary, state_dir, monkeypatch
):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1600000000")
    outputs = []
    for _ in range(2):
        assert main(["-stateDir", state_dir, "tar", SOURCE, "-"]) == 0
        outputs.append(capsysbinary.readouterr().out)
    assert outputs[0] == outputs[1]
    with tarfile.open(fileobj=io.BytesIO(outputs[0]), mode="r:") as tar:
        members = tar.getmembers()
    assert members[0].name == "."
    assert {m.mtime for m in members} == {1_600_000_000}


@pytest.mark.parametrize("value", ["x", "-1", "1.5", "12345678901234"])
def test_bad_source_date_epoch(capsys, state_dir, monkeypatch, value):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", value)
    status, out, err = run(capsys, "-stateDir", state_dir, "sbom", SOURCE)
    assert (status, out) == (2, "")
    assert err.startswith("imagetool: SOURCE_DATE_EPOCH: expected seconds since 1970")


def test_sbom_spdx_and_cyclonedx(capsysbinary, state_dir):
    assert main(["-stateDir", state_dir, "sbom", DERIVED]) == 0
    spdx = json.loads(capsysbinary.readouterr().out)
    assert spdx["spdxVersion"] == "SPDX-2.3" and len(spdx["packages"]) == 5
    assert main(["-stateDir", state_dir, "sbom", "-sbomFormat=cyclonedx", DERIVED]) == 0
    assert json.loads(capsysbinary.readouterr().out)["bomFormat"] == "CycloneDX"


def test_diff_text_and_json(capsys, state_dir):
    status, out, err = run(capsys, "-stateDir", state_dir, "diff", SOURCE, DERIVED)
    assert (status, err) == (0, "")
    assert out.startswith(f"--- {SOURCE}\n+++ {DERIVED}\n")
    assert "  ^ less 590-2 -> 590-3\n" in out
    for argv in (["diff", "-json", SOURCE, DERIVED], ["-json", "diff", SOURCE, DERIVED]):
        status, out, _ = run(capsys, "-stateDir", state_dir, *argv)
        assert status == 0
        assert json.loads(out)["Packages"]["Upgraded"][0]["Name"] == "less"


def test_diff_of_an_unknown_image(capsys, state_dir):
    status, out, err = run(capsys, "-stateDir", state_dir, "diff", SOURCE, "x/2026-01-01:00:00:00")
    assert (status, out, err) == (1, "", "imagetool: unknown image: x/2026-01-01:00:00:00\n")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["push", SOURCE, "Bad/Ref"], "Bad/Ref: bad repository name 'Bad/Ref'"),
        (
            ["-sbomFormat=swid", "sbom", SOURCE],
            'invalid value "swid" for flag -sbomFormat: want spdx or cyclonedx',
        ),
        (["-json=maybe", "diff", "a", "b"], 'invalid boolean value "maybe" for -json'),
        (
            ["-registryCredentials=", "push", "a", "b"],
            'invalid value "" for flag -registryCredentials: want a file name',
        ),
        (
            ["push", "-registryCA=", "a", "b"],
            'invalid value "" for flag -registryCA: want a file name',
        ),
        (["diff", "a"], 'diff wants OLD NEW, got "a"'),
        (["oci", "a"], 'oci wants NAME DIR, got "a"'),
    ],
)
def test_bad_arguments(capsys, state_dir, argv, message):
    status, out, err = run(capsys, "-stateDir", state_dir, *argv)
    assert (status, out) == (2, "")
    assert err.startswith(f"imagetool: {message}") and err.endswith("; see imagetool -h\n")


def test_push_fails_cleanly_with_a_bad_credentials_file(capsys, state_dir, tmp_path):
    credentials = tmp_path / "credentials.json"
    credentials.write_text('{"username": "u", "password": 42}')
    status, out, err = run(
        capsys,
        "-stateDir",
        state_dir,
        f"-registryCredentials={credentials}",
        "push",
        SOURCE,
        "127.0.0.1:1/x",
    )
    assert (status, out) == (1, "")
    assert err == f"imagetool: {credentials}.password: expected a non-empty string\n"


def test_push_of_an_unknown_image_touches_no_registry(capsys, state_dir):
    status, _, err = run(
        capsys, "-stateDir", state_dir, "push", "x/2026-01-01:00:00:00", "127.0.0.1:1/x"
    )
    assert (status, err) == (1, "imagetool: unknown image: x/2026-01-01:00:00:00\n")


def test_flags_after_the_command():
    parsed = parse_args(["push", "-registryPlainHttp", "-registryCA", "/ca.pem", "n", "r"])
    assert (parsed.registry_plain_http, parsed.registry_ca, parsed.args) == (
        True,
        "/ca.pem",
        ["n", "r"],
    )
    assert parse_args(["-registryPlainHttp=false", "list"]).registry_plain_http is False
    assert Path(parse_args(["-stateDir=/s", "list"]).state_dir) == Path("/s")
