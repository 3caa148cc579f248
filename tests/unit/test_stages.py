"""Stage timings (runtime.stages) and what a build reports (pipeline.report)."""

from __future__ import annotations

import os

from imaginator.pipeline.report import (
    MAX_FILE_BYTES,
    BuildReport,
    CapturedLog,
    read_manifest_snapshot,
    tree_size,
)
from imaginator.runtime.buildlog import BuildLog
from imaginator.runtime.stages import MAX_STAGES, OTHER, StageRecorder, StageTime, stage_totals


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_stages_are_back_to_back_and_finish_marks_the_failed_one() -> None:
    clock = Clock()
    stages = StageRecorder(clock)
    assert stages.current() is None
    stages.begin("fetch manifest")
    clock.now += 2.5
    assert stages.current() == ("fetch manifest", 2.5)
    stages.begin("scripts/10_x")
    clock.now += 1.0
    stages.begin("scan")
    clock.now += 0.5
    stages.finish(failed=True)
    assert stages.stages() == (
        StageTime("fetch manifest", 2.5),
        StageTime("scripts/10_x", 1.0),
        StageTime("scan", 0.5, failed=True),
    )
    assert stages.current() is None
    stages.begin("late")  # the build is over: nothing more is recorded
    stages.finish()
    assert len(stages.stages()) == 3


def test_stages_are_bounded_and_the_rest_added_up() -> None:
    clock = Clock()
    stages = StageRecorder(clock)
    for i in range(MAX_STAGES + 50):
        stages.begin(f"scripts/{i}" + "x" * 500)
        clock.now += 1.0
    stages.finish(failed=True)
    kept = stages.stages()
    assert len(kept) == MAX_STAGES
    assert all(len(s.name) <= 120 for s in kept)
    assert kept[-1] == StageTime(OTHER, 51.0, failed=True)
    assert sum(s.seconds for s in kept) == MAX_STAGES + 50


def test_stage_totals_add_up_repeated_names_in_first_order() -> None:
    stages = (
        StageTime("fetch manifest", 1.0),
        StageTime("x", 2.0),
        StageTime("fetch manifest", 3.0),
    )
    assert list(stage_totals(stages).items()) == [("fetch manifest", 4.0), ("x", 2.0)]


def test_captured_log_is_bounded_redacted_and_stops() -> None:
    log = BuildLog(lambda: {"PASSWORD": "hunter2"})
    captured = CapturedLog(limit=40)
    log.line("before")
    captured.start(log)
    log.line("Fetching https://u:hunter2@host/repo.git")
    log.line("y" * 100)
    text = captured.stop()
    log.line("after")
    assert text.startswith("Fetching https://u:[REDACTED]@host/")
    assert len(text.encode()) == 40 and captured.truncated
    assert "before" not in text and log._subscribers == []


def test_report_finish_ends_the_capture() -> None:
    log = BuildLog()
    report = BuildReport(StageRecorder(Clock()))
    report.begin("fetch manifest")
    report.fetch_log.start(log)
    report.finish(failed=True)
    assert log._subscribers == []
    assert report.stages.stages()[0].failed


def test_manifest_snapshot(tmp_path) -> None:
    (tmp_path / "manifest").write_text('{"SourceImage": "bootstrap/bb"}\n')
    (tmp_path / "tags.json").write_text('{"Role": "$X", "Key": "hunter2"}\n')
    (tmp_path / "package-list").write_bytes(b"p\n" * MAX_FILE_BYTES)
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "a").write_bytes(b"12345")
    os.symlink("/etc/passwd", tmp_path / "files" / "link")
    snapshot = read_manifest_snapshot(
        str(tmp_path), "Copying manifest tree: /x\n", False, lambda t: t.replace("hunter2", "[R]")
    )
    assert [f.name for f in snapshot.files] == ["manifest", "package-list", "tags.json"]
    manifest, packages, tags = snapshot.files
    assert manifest.text == '{"SourceImage": "bootstrap/bb"}\n' and not manifest.truncated
    assert packages.truncated and len(packages.text) == MAX_FILE_BYTES
    assert tags.text == '{"Role": "$X", "Key": "[R]"}\n'
    sizes = [len(manifest.text), (tmp_path / "tags.json").stat().st_size, 2 * MAX_FILE_BYTES, 5]
    assert snapshot.tree_size == sum(sizes)
    assert snapshot.tree_size == tree_size(str(tmp_path))
    assert snapshot.fetch_log == "Copying manifest tree: /x\n"


def test_manifest_snapshot_of_a_tree_without_those_files(tmp_path) -> None:
    (tmp_path / "manifest").mkdir()  # not a file: left out
    snapshot = read_manifest_snapshot(str(tmp_path), "", False, str)
    assert snapshot.files == () and snapshot.tree_size == 0
