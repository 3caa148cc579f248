"""The pages beyond the Go ones, on the real daemon after a real build.

The busybox stream's command prints a value of the variables file: it is a
secret, and no page, JSON answer, metric or download may show it.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest_twisted
import treq

from imaginator.store.local import LocalImageStore
from imaginator.tools.imagetool import write_tar
from tests.support.configs import BUSYBOX, busybox_conf, sample_document
from tests.support.daemon import Daemon
from tests.support.prometheus import parse

SECRET = "s3cr3t-token-4711"
BUILD_TIMEOUT = 120


@pytest_twisted.ensureDeferred
async def test_json_metrics_stages_logs_and_tarball_of_a_real_build(tmp_path: Path) -> None:
    command = list(sample_document()["BootstrapStreams"][BUSYBOX]["BootstrapCommand"])
    command[-1] += "; echo token=$TOKEN"
    conf = busybox_conf(tmp_path, command=command)
    (tmp_path / "variables").write_text(f"TOKEN={SECRET}\n")
    daemon = Daemon(
        [
            "-portNum=0",
            f"-stateDir={tmp_path / 'state'}",
            f"-configurationUrl=file://{conf}",
            f"-variablesFile={tmp_path / 'variables'}",
            "-buildLogDir=",
        ]
    ).start()
    answers: dict[str, tuple[int, bytes]] = {}
    try:
        port = await daemon.wait_listening()
        line = await daemon.wait_for(r"Built image: (\S+)", timeout=BUILD_TIMEOUT)
        name = line.split("Built image: ")[1].split()[0]
        for path in (
            "/",
            "/?format=json",
            "/showImageStreams?format=json",
            f"/showImageStream?{BUSYBOX}",
            f"/showImageStream?{BUSYBOX}&format=json",
            f"/showCurrentBuildLog?{BUSYBOX}",
            f"/showLastBuildLog?{BUSYBOX}",
            "/logs",
            "/logs?format=text",
            "/metrics",
            f"/imageTarball?{name}",
        ):
            response = await treq.get(f"http://127.0.0.1:{port}{path}")
            answers[path] = (response.code, await treq.content(response))
    finally:
        await daemon.stop()
    for path, (code, body) in answers.items():
        assert code == 200, path
        assert SECRET.encode() not in body, path
    assert b"token=[REDACTED]" in answers[f"/showLastBuildLog?{BUSYBOX}"][1]

    status = json.loads(answers["/?format=json"][1])
    (last,) = status["LastBuilds"]
    assert last["Stream"] == BUSYBOX and last["Succeeded"] and last["ImageName"] == name
    stages = [s["Name"] for s in last["Stages"]]
    assert stages == [
        "bootstrap command",
        "clean packages",
        "list packages",
        "scan",
        "copy mtimes",
        "tests",
        "store",
    ]
    stream = json.loads(answers[f"/showImageStream?{BUSYBOX}&format=json"][1])
    assert stream["LatestImage"]["Name"] == name
    assert stream["Images"][0]["Name"] == name and stream["Images"][0]["Expired"] is False
    assert stream["Configuration"]["BootstrapCommand"][-1].endswith("echo token=$TOKEN")

    finished = answers[f"/showCurrentBuildLog?{BUSYBOX}"][1].decode()
    assert f'<a href="showImage?{name}">{name}</a>' in finished  # not "unknown image"
    assert "<td>bootstrap command</td>" in finished

    families = parse(answers["/metrics"][1].decode())
    stage_samples = families["imaginator_build_stage_seconds"]["samples"]
    assert {dict(labels)["stage"] for labels in stage_samples} == set(stages)
    assert families["imaginator_builds_total"]["samples"] == {frozenset({("stream", BUSYBOX)}): 1}
    assert families["imaginator_builds_failed_total"]["samples"] == {
        frozenset({("stream", BUSYBOX)}): 0
    }

    assert b"Built image: " + name.encode() in answers["/logs?format=text"][1]

    store = LocalImageStore(str(tmp_path / "state" / "store"))
    expected = io.BytesIO()
    write_tar(store.get_image(name), store, expected)
    assert answers[f"/imageTarball?{name}"][1] == expected.getvalue()
