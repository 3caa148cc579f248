"""The pure parts of ``bench/compare_go.py``: log parsing, statistics, the report table.

The benchmark itself is not a test (it times things and needs the Go peers);
these check that it reads both daemons' logs correctly, using the Go
imaginator's recorded build logs where there is one.
"""

from __future__ import annotations

import datetime

import pytest

from bench.compare_figures import (
    LogEvent,
    Row,
    Summary,
    build_seconds,
    built_images,
    cycle_seconds,
    format_ratio,
    format_summary,
    format_value,
    parse_build_log,
    parse_daemon_log,
    parse_go_duration,
    ratio,
    render_table,
    skipped_builds,
    span,
)
from bench.compare_setup import (
    DEBIAN_STREAMS,
    FAST_PATHS_CHOICES,
    FAST_PATHS_OFF,
    fast_paths_setting,
    load_sample,
    parse_variables,
)
from tests.support.vectors import VECTORS


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0s", 0.0),
        ("0", 0.0),
        ("850ns", 850e-9),
        ("4.6µs", 4.6e-6),
        ("4.6μs", 4.6e-6),
        ("12us", 12e-6),
        ("543ms", 0.543),
        ("1.23s", 1.23),
        ("1m30s", 90.0),
        ("2h0m0s", 7200.0),
        ("1d2h3m4s", 86400 + 7200 + 180 + 4),
        ("1w1d0h0m0s", 8 * 86400),
        ("-1.5s", -1.5),
    ],
)
def test_go_durations(text, seconds):
    assert parse_go_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "12", "abc", "1x", "1m30", "ms", "1s junk"])
def test_not_go_durations(text):
    with pytest.raises(ValueError, match="not a Go duration"):
        parse_go_duration(text)


def test_go_bootstrap_build_log():
    figures = parse_build_log((VECTORS / "build-log-bb.txt").read_text())
    assert figures.command_seconds == pytest.approx(0.0143)
    assert figures.uploaded_objects == 4
    assert (figures.total_seconds, figures.image_name, figures.identical) == (None, None, False)


def test_go_published_build_log():
    figures = parse_build_log((VECTORS / "archive-buildLog-good.txt").read_text())
    assert figures.total_seconds == pytest.approx(0.0227)
    assert figures.image_name == "apps/hello/2026-11-27:10:53:19"
    assert figures.command_seconds is None
    assert figures.uploaded_objects == 4


def test_identical_build_log_and_recursive_scans_add_up():
    log = (
        "Building: bench/base for: bench\n"
        "Scanned file-system and uploaded 4 objects (1936 KiB) in 17.7ms (106 MiB/s)\n"
        "Scanned file-system and uploaded 0 objects (0 B) in 8.58ms (0 B/s)\n"
        "Identical to bench/base/2026-12-03:15:05:14: no new image published, extended it\n"
    )
    figures = parse_build_log(log)
    assert figures.identical
    assert figures.image_name == "bench/base/2026-12-03:15:05:14"
    assert figures.uploaded_objects == 4
    assert figures.total_seconds is None


def test_build_log_without_figures():
    figures = parse_build_log("Building: x for: y\nError building image: x: boom\n")
    assert figures.uploaded_objects is None
    assert not figures.identical


GO_LOG = """\
2026/12/03 15:05:57.729331 bench requested building image for stream: bench/app
2026/12/03 15:05:57.877109 Built image: bench/app/2026-12-03:15:05:57 in 147ms
2026/12/03 15:05:57.890592 Starting automatic image build cycle
2026/12/03 15:05:58.331718 Built image: bootstrap/busybox/2026-12-03:15:05:58 in 440ms
2026/12/03 15:05:58.672969 Completed automatic image build cycle in 782ms
"""

OURS_LOG = """\
2026-12-03T15:05:14+0000 [imaginator.rpc.service#info] bench requested building image
2026-12-03T15:05:14+0000 [scheduler#info] Built image: bench/base/2026-12-03:15:05:14 in 262ms
2026-12-03T15:05:14+0000 [scheduler#info] Built image: bench/base/2026-12-03:15:05:14 in 198ms
\tTraceback (most recent call last):
2026-12-03T15:05:15+0000 [imaginator.autobuild#info] Starting automatic image build cycle
2026-12-03T15:06:20+0000 [imaginator.autobuild#info] Completed automatic image build cycle in 1m5s
"""


def test_go_daemon_log():
    events = parse_daemon_log(GO_LOG)
    assert len(events) == 5
    assert events[0].at == datetime.datetime(2026, 12, 3, 15, 5, 57, 729331)
    assert events[0].message == "bench requested building image for stream: bench/app"
    assert build_seconds(events, "bench/app/2026-12-03:15:05:57") == pytest.approx(0.147)
    assert build_seconds(events, "bench/app/2026-12-03:15:05:58") is None
    assert cycle_seconds(events) == pytest.approx(0.782)
    assert span(events, "^Starting automatic", "^Completed automatic") == pytest.approx(0.782377)


def test_our_daemon_log():
    events = parse_daemon_log(OURS_LOG)
    assert [e.at.second for e in events] == [14, 14, 14, 15, 20]  # the traceback line is not one
    assert built_images(events) == [
        ("bench/base/2026-12-03:15:05:14", pytest.approx(0.262)),
        ("bench/base/2026-12-03:15:05:14", pytest.approx(0.198)),
    ]
    # An identical rebuild names the image it equals: the last line is the rebuild's.
    assert build_seconds(events, "bench/base/2026-12-03:15:05:14") == pytest.approx(0.198)
    assert cycle_seconds(events) == pytest.approx(65.0)


def test_our_identical_rebuild_has_a_duration():
    events = parse_daemon_log(
        "2026-12-05T23:45:37+0000 [imaginator.scheduler#info] Built image: "
        "bench/base/2026-12-05:23:45:37 in 6.93s\n"
        "2026-12-05T23:45:41+0000 [imaginator.scheduler#info] Identical to "
        "bench/base/2026-12-05:23:45:37: no new image published (3.53s)\n"
    )
    # Only published images count as built (the cycle's "images published")...
    assert built_images(events) == [("bench/base/2026-12-05:23:45:37", pytest.approx(6.93))]
    # ...but the identical rebuild's own duration is what the rebuild took.
    assert build_seconds(events, "bench/base/2026-12-05:23:45:37") == pytest.approx(3.53)


def test_our_skipped_builds():
    events = parse_daemon_log(
        "2026-12-05T23:46:01+0000 [imaginator.scheduler#info] Skipped bench/app: nothing could"
        " change (same manifest commit c, same source image bench/base/1): kept bench/app/1"
        " (120ms)\n"
        "2026-12-05T23:46:01+0000 [imaginator.scheduler#info] Built image: bench/x/1 in 1s\n"
    )
    assert skipped_builds(events) == ["bench/app"]
    assert built_images(events) == [("bench/x/1", 1.0)]


def test_cycle_from_timestamps_when_the_line_has_no_duration():
    at = datetime.datetime(2026, 1, 1, 10, 0, 0)
    events = [
        LogEvent(at, "Starting automatic image build cycle"),
        LogEvent(at + datetime.timedelta(seconds=3.5), "Completed automatic image build cycle"),
    ]
    assert cycle_seconds(events) == pytest.approx(3.5)
    assert cycle_seconds(events[:1]) is None
    assert span(events, "^Completed", "^Starting") is None


def test_summaries_skip_missing_samples():
    summary = Summary.of([3.0, None, 1.0, 2.0, 10.0])
    assert summary == Summary(1.0, 2.5, 10.0, 4)
    assert Summary.of([None, None]) is None
    assert Summary.of([]) is None


def test_ratio_of_medians():
    go, ours = Summary.of([2.0, 4.0, 6.0]), Summary.of([1.0, 1.0, 5.0])
    assert ratio(ours, go) == pytest.approx(0.25)
    assert ratio(ours, None) is None
    assert ratio(None, go) is None
    assert ratio(ours, Summary.of([0.0])) is None


@pytest.mark.parametrize(
    ("value", "kind", "text"),
    [
        (0.0456, "s", "46 ms"),
        (1.234, "s", "1.2 s"),
        (123.4, "s", "123 s"),
        (3, "n", "3"),
        (2.5, "n", "2.5"),
        (72.4, "MiB", "72 MiB"),
        (163.2, "%", "163%"),
    ],
)
def test_format_value(value, kind, text):
    assert format_value(value, kind) == text


def test_format_value_rejects_unknown_kinds():
    with pytest.raises(ValueError, match="unknown kind"):
        format_value(1.0, "furlongs")


def test_format_summary_and_ratio():
    assert format_summary(Summary(1.0, 2.0, 3.0, 3), "s") == "1.0 s / 2.0 s / 3.0 s"
    assert format_summary(Summary(5, 5, 5, 3), "n") == "5"
    assert format_summary(None, "s") == "—"
    assert format_ratio(0.4249) == "0.42x"
    assert format_ratio(None) == "—"


def test_render_table():
    table = render_table(
        [
            Row("bootstrap build", "s", [10.0, 12.0, 11.0], [5.0, 6.0, None]),
            Row("  objects stored", "n", [0, 0, 0], [0, 0, 0]),
            Row("not measured", "s", [None], []),
        ]
    )
    assert table == (
        "figure               Go min / median / max  ours min / median / max  ours/Go\n"
        "----------------  ------------------------  -----------------------  -------\n"
        "bootstrap build   10.0 s / 11.0 s / 12.0 s    5.0 s / 5.5 s / 6.0 s    0.50x\n"
        "  objects stored                         0                        0        —\n"
        "not measured                             —                        —        —\n"
    )


def test_variables_files():
    assert parse_variables("# mirror\nDEBIAN_MIRROR=http://m/debian\n\nX=a=b\n") == {
        "DEBIAN_MIRROR": "http://m/debian",
        "X": "a=b",
    }
    assert parse_variables('// comment\n{"DEBIAN_MIRROR": "http://m/debian"}\n') == {
        "DEBIAN_MIRROR": "http://m/debian"
    }


def test_fast_paths_choices_switch_off_all_or_one() -> None:
    sample = {
        "NoFsyncInBuilds": True,
        "ReuseBootstrapTrees": True,
        "SkipUnchangedBuilds": True,
        "PackageCaches": [{"MountPoint": "/var/cache/apt/archives"}],
    }
    assert fast_paths_setting(sample, "sample") == sample
    assert fast_paths_setting(sample, "off") == FAST_PATHS_OFF
    assert fast_paths_setting(sample, "without-PackageCaches") == {**sample, "PackageCaches": []}
    assert fast_paths_setting(sample, "without-NoFsyncInBuilds") == {
        **sample,
        "NoFsyncInBuilds": False,
    }
    assert set(FAST_PATHS_CHOICES) == {"sample", "off"} | {f"without-{n}" for n in FAST_PATHS_OFF}
    with pytest.raises(ValueError, match="unknown fast paths choice"):
        fast_paths_setting(sample, "without-Nothing")


def test_each_bootstrap_program_has_its_stream_in_the_sample() -> None:
    streams = load_sample()["BootstrapStreams"]
    for program, key in DEBIAN_STREAMS.items():
        assert streams[key]["BootstrapCommand"][0] == program
