"""Configurations for tests, built from the sample configuration's busybox distribution."""

from __future__ import annotations

import json
import os
from pathlib import Path

from imaginator.goformats.jsonc import loads

REPO = Path(__file__).resolve().parents[2]
SAMPLE_CONF = REPO / "sample-config" / "conf.json"
BUSYBOX = "bootstrap/busybox"


def sample_document() -> dict:
    return loads(SAMPLE_CONF.read_bytes(), str(SAMPLE_CONF))


def busybox_conf(
    tmp: Path,
    *,
    command: list[str] | None = None,
    auto_rebuild: list[str] | None = None,
    extra_streams: dict | None = None,
) -> Path:
    """Write a conf.json with the sample busybox stream (optionally another command)."""
    sample = sample_document()
    stream = dict(sample["BootstrapStreams"][BUSYBOX])
    if command is not None:
        stream["BootstrapCommand"] = command
    document = {
        "BootstrapStreams": {BUSYBOX: stream, **(extra_streams or {})},
        "PackagerTypes": {"busybox": sample["PackagerTypes"]["busybox"]},
        "ImageStreamsToAutoRebuild": auto_rebuild if auto_rebuild is not None else [BUSYBOX],
    }
    path = tmp / "conf.json"
    path.write_text(json.dumps(document, indent=4))
    return path


def debian_mirror() -> str:
    """The mirror this host's apt sources use (as scripts/setup-host derives it)."""
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / "debian-mirror")],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env["PYTHONPATH"] = str(REPO)
    env["PYTHONUNBUFFERED"] = "1"
    return env
