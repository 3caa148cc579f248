"""The blocking helpers of publishing (imaginator.publish.push) and the
start-up check of ``-registryCredentials`` and ``-registryCA``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from imaginator.export.registry import RegistryError
from imaginator.flags import FLAGS
from imaginator.lifecycle import StartupError, registry_settings
from imaginator.publish.push import RegistrySettings, check_registry_file, image_tag
from imaginator.tools.certs import make_ca

PASSWORD = "s3cret-registry-password"


def options(**overrides: Any) -> dict[str, Any]:
    values = {flag.name: flag.parse(flag.default) for flag in FLAGS}
    values.update(overrides)
    return values


@pytest.mark.parametrize(
    ("name", "tag"),
    [
        ("apps/hello/Debian-12/amd64/2024-05-01:12:30:00", "2024-05-01_12-30-00"),
        ("bootstrap/busybox/2026-01-02:03:04:05", "2026-01-02_03-04-05"),
        ("odd/.name:with spaces", "name-with-spaces"),
        ("odd/...", "image"),
    ],
)
def test_image_tag(name: str, tag: str) -> None:
    assert image_tag(name) == tag


def test_no_registry_flags_need_no_files() -> None:
    assert registry_settings(options()) == RegistrySettings("", "")


def test_good_registry_files(tmp_path: Path) -> None:
    credentials = tmp_path / "credentials.json"
    credentials.write_text(json.dumps({"username": "alice", "password": PASSWORD}))
    ca = tmp_path / "ca.pem"
    ca.write_bytes(make_ca("registry CA")[0])
    settings = registry_settings(options(registryCredentials=str(credentials), registryCA=str(ca)))
    assert settings == RegistrySettings(str(credentials), str(ca))


@pytest.mark.parametrize(
    ("flag", "content", "problem"),
    [
        ("registryCredentials", None, "No such file or directory"),
        ("registryCredentials", "{not json", "not JSON"),
        ("registryCredentials", '{"auths": []}', "auths: expected an object"),
        ("registryCredentials", f'{{"username": 1, "password": "{PASSWORD}"}}', "username"),
        ("registryCA", None, "No such file or directory"),
        ("registryCA", "not a certificate", "no usable PEM certificate in the file"),
    ],
)
def test_bad_registry_files_stop_start_up_naming_the_flag(
    tmp_path: Path, flag: str, content: str | None, problem: str
) -> None:
    path = tmp_path / "file"
    if content is not None:
        path.write_text(content)
    with pytest.raises(StartupError) as info:
        registry_settings(options(**{flag: str(path)}))
    message = str(info.value)
    assert message.startswith(f"-{flag}={path}: ")
    assert problem in message
    assert PASSWORD not in message
    assert message.count(str(path)) == 1


def test_check_registry_file_raises_registry_errors(tmp_path: Path) -> None:
    with pytest.raises(RegistryError):
        check_registry_file("registryCA", str(tmp_path / "missing"))
