"""The build log archive (imaginator.runtime.archive): layout, quota, reload and queries."""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from twisted.logger import LogEvent, formatEvent, globalLogPublisher

from imaginator.goformats.units import format_bytes
from imaginator.runtime.archive import (
    BUILD_INFO,
    BUILD_LOG,
    TEMP_PREFIX,
    ArchivedBuild,
    ArchiveError,
    BuildCounts,
    BuildInfo,
    BuildLogArchive,
    archive_enabled,
    archive_name,
    check_image_name,
)
from imaginator.scheduler import BuildResult
from tests.support.vectors import VECTORS

MiB = 1 << 20
FAILED_ERROR = "error processing manifest: error running script: 1_fail: exit status 1"
GOOD = BuildInfo(duration_ns=22718390, requestor="peer-client")
FAILED = BuildInfo(duration_ns=9711908, error=FAILED_ERROR, requestor="peer-client")


@pytest.fixture
def logged() -> Iterator[list[LogEvent]]:
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def texts(events: list[LogEvent]) -> list[str]:
    return [formatEvent(e) for e in events]


def vector(name: str) -> bytes:
    return (VECTORS / name).read_bytes()


def make_archive(top: Path, quota: int = 100 * MiB) -> BuildLogArchive:
    archive = BuildLogArchive(str(top), quota)
    archive.load()
    return archive


def tree(top: Path) -> set[str]:
    """Every path under ``top``, relative, with ``/`` after directories."""
    out = set()
    for dirpath, dirnames, filenames in os.walk(top):
        rel = os.path.relpath(dirpath, top)
        for d in dirnames:
            out.add(os.path.normpath(os.path.join(rel, d)) + "/")
        for f in filenames:
            out.add(os.path.normpath(os.path.join(rel, f)))
    return out


def set_age(top: Path, image_name: str, mtime: float) -> None:
    os.utime(top / image_name / BUILD_LOG, (mtime, mtime))


# -- buildInfo ----------------------------------------------------------------------


def test_build_info_json_matches_go_vectors_byte_for_byte() -> None:
    assert GOOD.to_json() == vector("archive-buildInfo-good.json")
    assert FAILED.to_json() == vector("archive-buildInfo-failed.json")


def test_build_info_parses_go_vectors() -> None:
    assert BuildInfo.from_json(vector("archive-buildInfo-good.json")) == GOOD
    assert BuildInfo.from_json(vector("archive-buildInfo-failed.json")) == FAILED


def test_build_info_omits_zero_fields_and_escapes_like_go() -> None:
    assert BuildInfo().to_json() == b"{}\n"
    assert BuildInfo(error="x").to_json() == b'{\n    "Error": "x"\n}\n'
    hostile = BuildInfo(error='a<b>&"c"\n\u2028é\udcff', requestor="bob")
    data = hostile.to_json()
    assert data == (
        b"{\n"
        b'    "Error": "a\\u003cb\\u003e\\u0026\\"c\\"\\n\\u2028\xc3\xa9\\ufffd",\n'
        b'    "RequestorUsername": "bob"\n'
        b"}\n"
    )
    parsed = BuildInfo.from_json(data)
    assert parsed.error == 'a<b>&"c"\n\u2028é\ufffd'


@pytest.mark.parametrize(
    "data", [b"", b"[]", b'{"Duration": "1s"}', b'{"Duration": true}', b'{"Error": 3}']
)
def test_build_info_rejects_malformed(data: bytes) -> None:
    with pytest.raises(ValueError):
        BuildInfo.from_json(data)


def test_build_info_from_result() -> None:
    result = BuildResult(
        stream="apps/broken",
        image_name="",
        started_at=100.0,
        finished_at=100.009711908,
        log=b"",
        error=FAILED_ERROR,
        requestor="peer-client",
    )
    info = BuildInfo.from_result(result)
    assert info.error == FAILED_ERROR and info.requestor == "peer-client"
    assert abs(info.duration_ns - 9711908) < 1000


# -- naming -------------------------------------------------------------------------


def test_archive_name_success_and_failure() -> None:
    good = BuildResult("apps/hello", "apps/hello/2026-11-27:10:53:19", 0.0, 1.0, b"")
    bad = BuildResult("apps/broken", "", 0.0, 1.0, b"", error="boom")
    assert archive_name(good, "2026-11-27:10:53:20") == "apps/hello/2026-11-27:10:53:19"
    assert archive_name(bad, "2026-11-27:10:53:20") == "apps/broken/2026-11-27:10:53:20"


def test_archive_enabled() -> None:
    assert archive_enabled("/var/log/imaginator", 2 * MiB)
    assert not archive_enabled("", 2 * MiB)
    assert not archive_enabled("/var/log/imaginator", MiB)
    assert archive_enabled("/var/log/imaginator", MiB + 1)


HOSTILE_NAMES = [
    "",
    "/etc/evil/2026",
    "../evil/2026",
    "apps/../../evil",
    "apps/hello/..",
    "apps//hello",
    "apps/hello/",
    "./apps/hello",
    "apps/\0/x",
    f"apps/{TEMP_PREFIX}x/2026",
]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_names_refused(tmp_path: Path, name: str) -> None:
    top = tmp_path / "archive"
    archive = make_archive(top)
    with pytest.raises(ArchiveError):
        check_image_name(name)
    with pytest.raises(ArchiveError):
        archive.add(name, GOOD, b"log\n")
    assert tree(tmp_path) == {"archive/"}
    assert archive.builds() == []
    assert archive.read_log(name) is None


def test_read_log_does_not_escape_the_archive(tmp_path: Path) -> None:
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / BUILD_LOG).write_bytes(b"secret")
    archive = make_archive(tmp_path / "archive")
    assert archive.read_log("../secret") is None
    assert archive.read_log(str(tmp_path / "secret")) is None


# -- adding -------------------------------------------------------------------------


def test_add_writes_go_layout(tmp_path: Path) -> None:
    archive = make_archive(tmp_path)
    good_log = vector("archive-buildLog-good.txt")
    failed_log = vector("archive-buildLog-failed.txt")
    archive.add("apps/hello/2026-11-27:10:53:19", GOOD, good_log)
    archive.add("apps/broken/2026-11-27:10:53:19", FAILED, failed_log)

    assert tree(tmp_path) == {
        "apps/",
        "apps/hello/",
        "apps/hello/2026-11-27:10:53:19/",
        "apps/hello/2026-11-27:10:53:19/buildInfo",
        "apps/hello/2026-11-27:10:53:19/buildLog",
        "apps/broken/",
        "apps/broken/2026-11-27:10:53:19/",
        "apps/broken/2026-11-27:10:53:19/buildInfo",
        "apps/broken/2026-11-27:10:53:19/buildLog",
    }
    hello = tmp_path / "apps/hello/2026-11-27:10:53:19"
    broken = tmp_path / "apps/broken/2026-11-27:10:53:19"
    assert (hello / BUILD_INFO).read_bytes() == vector("archive-buildInfo-good.json")
    assert (broken / BUILD_INFO).read_bytes() == vector("archive-buildInfo-failed.json")
    assert (hello / BUILD_LOG).read_bytes() == good_log
    assert (broken / BUILD_LOG).read_bytes() == failed_log
    for entry in (hello, broken):
        assert stat.S_IMODE(entry.stat().st_mode) == 0o755
        for name in (BUILD_INFO, BUILD_LOG):
            assert stat.S_IMODE((entry / name).stat().st_mode) == 0o644
    assert archive.read_log("apps/hello/2026-11-27:10:53:19") == good_log
    assert archive.read_log("apps/hello/2026-11-27:10:53:20") is None
    assert archive.read_log("apps/hello") is None

    builds = archive.builds()
    assert [b.image_name for b in builds] == [
        "apps/hello/2026-11-27:10:53:19",
        "apps/broken/2026-11-27:10:53:19",
    ]
    hello_build = builds[0]
    assert hello_build.stream == "apps/hello"
    assert hello_build.duration == pytest.approx(0.02271839)
    assert (hello_build.error, hello_build.requestor) == ("", "peer-client")
    assert hello_build.archived_at == (hello / BUILD_LOG).stat().st_mtime
    assert builds[1].error == FAILED_ERROR and not builds[1].good


def test_add_mode_ignores_umask(tmp_path: Path) -> None:
    archive = make_archive(tmp_path)
    old = os.umask(0o077)
    try:
        archive.add("s/1", GOOD, b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "s/1" / BUILD_LOG).stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "s/1" / BUILD_INFO).stat().st_mode) == 0o644


def test_add_existing_entry_fails(tmp_path: Path) -> None:
    archive = make_archive(tmp_path)
    archive.add("s/1", GOOD, b"first")
    with pytest.raises(ArchiveError):
        archive.add("s/1", FAILED, b"second")
    assert archive.read_log("s/1") == b"first"
    # A directory on disk the index does not know about (another writer) is refused too.
    (tmp_path / "s/2").mkdir()
    with pytest.raises(ArchiveError):
        archive.add("s/2", GOOD, b"x")
    assert not (tmp_path / "s/2" / BUILD_LOG).exists()
    # So are names inside an entry, and names whose directory is a stream.
    with pytest.raises(ArchiveError):
        archive.add("s/1/nested", GOOD, b"x")
    with pytest.raises(ArchiveError):
        archive.add("s", GOOD, b"x")
    assert [b.image_name for b in archive.builds()] == ["s/1"]
    assert not [p for p in tree(tmp_path) if TEMP_PREFIX in p]


def test_add_failure_leaves_nothing_behind(tmp_path: Path) -> None:
    archive = make_archive(tmp_path)
    (tmp_path / "file").write_bytes(b"")  # a file where a stream directory should be
    with pytest.raises(ArchiveError):
        archive.add("file/1", GOOD, b"x")
    assert tree(tmp_path) == {"file"}
    assert len(archive) == 0 and archive.total_size == 0


def test_add_without_load_works(tmp_path: Path) -> None:
    archive = BuildLogArchive(str(tmp_path / "new"), 100 * MiB)
    archive.add("s/1", GOOD, b"x")
    assert archive.block_unit >= 512
    assert archive.read_log("s/1") == b"x"


# -- quota --------------------------------------------------------------------------


def test_block_unit_and_costs(tmp_path: Path) -> None:
    archive = make_archive(tmp_path)
    unit = archive.block_unit
    assert unit >= 512 and unit % 512 == 0
    assert archive.cost(0) == unit
    assert archive.cost(1) == 2 * unit
    assert archive.cost(unit) == 2 * unit
    assert archive.cost(unit + 1) == 3 * unit
    archive.add("s/1", GOOD, b"x" * (unit + 1))
    archive.add("s/2", GOOD, b"")
    assert archive.total_size == 4 * unit
    assert not [p for p in tree(tmp_path) if TEMP_PREFIX in p]


def test_quota_trims_oldest_to_95_percent(tmp_path: Path, logged: list[LogEvent]) -> None:
    probe = make_archive(tmp_path / "probe")
    unit = probe.block_unit
    quota = 20 * unit
    archive = make_archive(tmp_path / "a", quota)
    log = b"l" * unit  # cost 2U each
    for i in range(9):
        archive.add(f"s/{i}", GOOD, log)
    assert archive.total_size == 18 * unit
    assert not [t for t in texts(logged) if "Deleted" in t]

    # 2U + 18U is not < 20U: trim to 95 % of 20U = 19U (2U + 19U > 20U, so 17U).
    archive.add("t/9", FAILED, log)
    assert [b.image_name for b in archive.builds()][:2] == ["s/1", "s/2"]
    assert len(archive) == 9
    assert archive.total_size == 18 * unit
    assert not (tmp_path / "a/s/0").exists()
    assert archive.read_log("s/0") is None
    assert texts(logged)[-1] == f"Deleted 1 archived build logs consuming {format_bytes(2 * unit)}"

    # A bigger entry deletes more.
    archive.add("t/10", GOOD, b"l" * (5 * unit))  # cost 6U
    # target 19U - 6U = 13U: delete s/1..s/3 (18U -> 12U), then add: 18U.
    assert [b.image_name for b in archive.builds()] == [
        "s/4",
        "s/5",
        "s/6",
        "s/7",
        "s/8",
        "t/9",
        "t/10",
    ]
    assert archive.total_size == 18 * unit
    assert texts(logged)[-1] == f"Deleted 3 archived build logs consuming {format_bytes(6 * unit)}"
    on_disk = {p for p in tree(tmp_path / "a") if p.endswith(BUILD_LOG)}
    assert on_disk == {f"{b.image_name}/{BUILD_LOG}" for b in archive.builds()}


def test_quota_entry_larger_than_quota_empties_archive(tmp_path: Path) -> None:
    probe = make_archive(tmp_path / "probe")
    unit = probe.block_unit
    archive = make_archive(tmp_path / "a", 4 * unit)
    archive.add("x/s/1", GOOD, b"a")
    archive.add("y/2", GOOD, b"b" * (10 * unit))
    assert [b.image_name for b in archive.builds()] == ["y/2"]
    # The emptied stream directories are pruned, the archive directory stays.
    assert tree(tmp_path / "a") == {"y/", "y/2/", "y/2/buildInfo", "y/2/buildLog"}
    assert archive.summary_by_stream() == [BuildCounts("y", 1, 1, 0)]
    assert archive.stream_builds("x/s") is None


def test_concurrent_adds_are_consistent(tmp_path: Path) -> None:
    probe = make_archive(tmp_path / "probe")
    unit = probe.block_unit
    archive = make_archive(tmp_path / "a", 30 * unit)
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(15):
                archive.add(f"w{n}/{i:03d}", GOOD, b"z" * unit)
                archive.builds()
                archive.summary_by_stream()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    builds = archive.builds()
    assert archive.total_size == 2 * unit * len(builds) < 30 * unit
    on_disk = {p for p in tree(tmp_path / "a") if p.endswith(BUILD_LOG)}
    assert on_disk == {f"{b.image_name}/{BUILD_LOG}" for b in builds}


# -- load ---------------------------------------------------------------------------


def test_load_after_restart(tmp_path: Path, logged: list[LogEvent]) -> None:
    first = make_archive(tmp_path)
    first.add("apps/hello/2026-11-27:10:53:19", GOOD, vector("archive-buildLog-good.txt"))
    first.add("apps/broken/2026-11-27:10:53:19", FAILED, vector("archive-buildLog-failed.txt"))
    first.add("bootstrap/bb/2026-11-27:10:53:18", BuildInfo(duration_ns=33_100_000), b"bb\n")
    # Make the ages differ from the add order: bb oldest, then broken, then hello.
    set_age(tmp_path, "bootstrap/bb/2026-11-27:10:53:18", 1_000.0)
    set_age(tmp_path, "apps/broken/2026-11-27:10:53:19", 2_000.0)
    set_age(tmp_path, "apps/hello/2026-11-27:10:53:19", 3_000.0)
    # Leftovers and noise the loader must cope with.
    (tmp_path / f"apps/{TEMP_PREFIX}abc").mkdir()
    (tmp_path / f"apps/{TEMP_PREFIX}abc" / BUILD_LOG).write_bytes(b"half")
    (tmp_path / "apps/notes").mkdir()
    (tmp_path / "apps/notes/readme").write_bytes(b"not an entry")
    (tmp_path / "old/s/1").mkdir(parents=True)  # written by Go without buildInfo
    (tmp_path / "old/s/1" / BUILD_LOG).write_bytes(b"old")
    set_age(tmp_path, "old/s/1", 500.0)
    (tmp_path / "bad/s/1").mkdir(parents=True)
    (tmp_path / "bad/s/1" / BUILD_LOG).write_bytes(b"bad")
    (tmp_path / "bad/s/1" / BUILD_INFO).write_bytes(b"{not json")
    set_age(tmp_path, "bad/s/1", 4_000.0)
    (tmp_path / "link/s/1").mkdir(parents=True)
    (tmp_path / "link/s/1" / BUILD_LOG).symlink_to(tmp_path / "old/s/1" / BUILD_LOG)

    second = make_archive(tmp_path)
    builds = second.builds()
    assert [b.image_name for b in builds] == [
        "old/s/1",
        "bootstrap/bb/2026-11-27:10:53:18",
        "apps/broken/2026-11-27:10:53:19",
        "apps/hello/2026-11-27:10:53:19",
        "bad/s/1",
    ]
    assert builds[0] == ArchivedBuild("old/s/1", "old/s", 0.0, "", "", 500.0)
    assert builds[1].duration == pytest.approx(0.0331)
    assert builds[2].error == FAILED_ERROR and builds[2].requestor == "peer-client"
    assert builds[4].error == "" and builds[4].archived_at == 4_000.0
    assert not (tmp_path / f"apps/{TEMP_PREFIX}abc").exists()
    unit = second.block_unit
    sizes = [len(vector(n)) for n in ("archive-buildLog-good.txt", "archive-buildLog-failed.txt")]
    expected = sum(second.cost(n) for n in [*sizes, 3, 3, 3])
    assert second.total_size == expected
    assert expected % unit == 0
    assert any(
        t.startswith(f"Loaded build log archive {format_bytes(expected)} in ")
        for t in texts(logged)
    )
    assert second.read_log("apps/hello/2026-11-27:10:53:19") == vector("archive-buildLog-good.txt")
    # The reloaded archive keeps working: the oldest entry goes first.
    third = BuildLogArchive(str(tmp_path), expected + unit)
    third.load()
    third.add("new/s/1", GOOD, b"n")
    assert third.builds()[0].image_name == "bootstrap/bb/2026-11-27:10:53:18"
    assert not (tmp_path / "old").exists()


def test_load_creates_missing_directory(tmp_path: Path) -> None:
    archive = make_archive(tmp_path / "a" / "b")
    assert (tmp_path / "a" / "b").is_dir()
    assert archive.builds() == [] and archive.total_size == 0
    assert tree(tmp_path / "a" / "b") == set()  # the block-size probe is gone


# -- queries ------------------------------------------------------------------------


@pytest.fixture
def populated(tmp_path: Path) -> BuildLogArchive:
    archive = make_archive(tmp_path)
    entries = [
        ("bootstrap/bb/2026-11-27:10:52:23", BuildInfo(17_400_000, "quote bug", "peer-client")),
        ("apps/hello/2026-11-27:10:52:25", BuildInfo(927_000_000, "quote bug", "")),
        ("bootstrap/bb/2026-11-27:10:53:19", BuildInfo(533_000_000, "", "peer-client")),
        ("apps/hello/2026-11-27:10:53:19", BuildInfo(22_718_390, "", "peer-client")),
        ("apps/broken/2026-11-27:10:52:26", BuildInfo(1_030_000_000, "quote bug", "")),
        ("bootstrap/bb/2026-11-27:10:53:18", BuildInfo(33_100_000, "", "alice")),
        ("apps/broken/2026-11-27:10:53:19", FAILED),
    ]
    for name, info in entries:
        archive.add(name, info, name.encode())
    return archive


def names(builds: list[ArchivedBuild] | None) -> list[str]:
    assert builds is not None
    return [b.image_name for b in builds]


def test_builds_by_kind_in_age_order(populated: BuildLogArchive) -> None:
    assert names(populated.builds()) == [
        "bootstrap/bb/2026-11-27:10:52:23",
        "apps/hello/2026-11-27:10:52:25",
        "bootstrap/bb/2026-11-27:10:53:19",
        "apps/hello/2026-11-27:10:53:19",
        "apps/broken/2026-11-27:10:52:26",
        "bootstrap/bb/2026-11-27:10:53:18",
        "apps/broken/2026-11-27:10:53:19",
    ]
    assert names(populated.builds("good")) == [
        "bootstrap/bb/2026-11-27:10:53:19",
        "apps/hello/2026-11-27:10:53:19",
        "bootstrap/bb/2026-11-27:10:53:18",
    ]
    assert names(populated.builds("bad")) == [
        "bootstrap/bb/2026-11-27:10:52:23",
        "apps/hello/2026-11-27:10:52:25",
        "apps/broken/2026-11-27:10:52:26",
        "apps/broken/2026-11-27:10:53:19",
    ]
    with pytest.raises(ValueError):
        populated.builds("none")  # type: ignore[arg-type]


def test_stream_builds_sorted_by_name(populated: BuildLogArchive) -> None:
    assert names(populated.stream_builds("bootstrap/bb")) == [
        "bootstrap/bb/2026-11-27:10:52:23",
        "bootstrap/bb/2026-11-27:10:53:18",
        "bootstrap/bb/2026-11-27:10:53:19",
    ]
    assert names(populated.stream_builds("bootstrap/bb", "good")) == [
        "bootstrap/bb/2026-11-27:10:53:18",
        "bootstrap/bb/2026-11-27:10:53:19",
    ]
    assert names(populated.stream_builds("apps/broken", "good")) == []
    assert populated.stream_builds("apps") is None
    assert populated.stream_builds("no/such") is None


def test_requestor_builds(populated: BuildLogArchive) -> None:
    assert names(populated.requestor_builds("")) == [
        "apps/broken/2026-11-27:10:52:26",
        "apps/hello/2026-11-27:10:52:25",
    ]
    assert names(populated.requestor_builds("peer-client", "good")) == [
        "apps/hello/2026-11-27:10:53:19",
        "bootstrap/bb/2026-11-27:10:53:19",
    ]
    assert names(populated.requestor_builds("peer-client", "bad")) == [
        "apps/broken/2026-11-27:10:53:19",
        "bootstrap/bb/2026-11-27:10:52:23",
    ]
    assert populated.requestor_builds("nobody") == []


def test_summaries(populated: BuildLogArchive) -> None:
    assert populated.summary_by_stream() == [
        ("apps/broken", 2, 0, 2),
        ("apps/hello", 2, 1, 1),
        ("bootstrap/bb", 3, 2, 1),
    ]
    assert populated.summary_by_requestor() == [
        ("peer-client", 4, 2, 2),
        ("", 2, 0, 2),
        ("alice", 1, 1, 0),
    ]
    row = populated.summary_by_requestor()[0]
    assert (row.name, row.total, row.good, row.bad) == ("peer-client", 4, 2, 2)


def test_query_results_are_snapshots(populated: BuildLogArchive) -> None:
    before = populated.builds()
    populated.add("apps/hello/2026-11-27:11:00:00", GOOD, b"more")
    assert len(before) == 7 and len(populated.builds()) == 8
    assert populated.summary_by_stream()[1] == ("apps/hello", 3, 2, 1)


def test_an_identical_build_is_archived_under_its_own_entry() -> None:
    # Its image name is the latest image's, archived by the build that made it.
    same = BuildResult(
        "apps/hello", "apps/hello/2026-11-27:10:53:19", 0.0, 1.0, b"", identical=True
    )
    assert archive_name(same, "2026-11-28:09:00:00") == "apps/hello/2026-11-28:09:00:00"
