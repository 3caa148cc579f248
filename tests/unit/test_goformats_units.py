"""Tests for imaginator.goformats.units: Go duration/size syntax and the Go output formats."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from imaginator.goformats import units

H, M, D = 3600.0, 60.0, 86400.0


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0", 0.0),
        ("-0", 0.0),
        ("+0", 0.0),
        ("90s", 90.0),
        ("1h30m", 5400.0),
        ("1.5h", 5400.0),
        ("300ms", 0.3),
        ("2us", 2e-6),
        ("2\u00b5s", 2e-6),  # micro sign
        ("2\u03bcs", 2e-6),  # Greek mu
        ("10ns", 1e-8),
        ("-1m", -60.0),
        ("+1m", 60.0),
        (".5s", 0.5),
        ("5.s", 5.0),
        ("1h1m1s1ms", 3661.001),
        ("0s", 0.0),
        ("730h", 730 * H),
        ("1.0000000001s", 1.0),  # below a nanosecond: truncated like Go
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert units.parse_duration(text) == pytest.approx(seconds, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize(
    ("text", "ns"),
    [("1.5h", 5_400_000_000_000), ("1ns", 1), ("1.9ns", 1), ("9223372036854775807ns", 2**63 - 1)],
)
def test_parse_duration_ns_exact(text: str, ns: int) -> None:
    assert units.parse_duration_ns(text) == ns


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", 'invalid duration ""'),
        ("-", 'invalid duration "-"'),
        ("1", 'missing unit in duration "1"'),
        ("10", 'missing unit in duration "10"'),
        ("1x", 'unknown unit "x" in duration "1x"'),
        ("1d", 'unknown unit "d" in duration "1d"'),
        ("1 h", 'unknown unit " h" in duration "1 h"'),
        ("h", 'invalid duration "h"'),
        (".s", 'invalid duration ".s"'),
        ("1h-1m", 'unknown unit "h-" in duration "1h-1m"'),
        ("1h.", 'invalid duration "1h."'),
        ("1e3s", 'unknown unit "e" in duration "1e3s"'),
        ("9223372036854775808ns", 'invalid duration "9223372036854775808ns"'),
    ],
)
def test_parse_duration_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        units.parse_duration(text)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (H, "1h0m0s"),
        (15 * M, "15m0s"),
        (1.5, "1.5s"),
        (0.1, "100ms"),
        (24 * H, "24h0m0s"),
        (730 * H, "730h0m0s"),
        (90, "1m30s"),
        (1.5e-3, "1.5ms"),
        (2e-6, "2\u00b5s"),
        (1.001e-6, "1.001\u00b5s"),
        (1e-8, "10ns"),
        (H + 0.5, "1h0m0.5s"),
        (-90, "-1m30s"),
        (-0.25, "-250ms"),
        (59.999999999, "59.999999999s"),
    ],
)
def test_format_go_duration(seconds: float, text: str) -> None:
    assert units.format_go_duration(seconds) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (722e-9, "722ns"),
        (1e-9, "1ns"),
        (4.85e-6, "4.85\u00b5s"),
        (365e-6, "365\u00b5s"),
        (999.9e-6, "1e+03\u00b5s"),  # Go's %.3g, kept
        (0.1e-3, "100\u00b5s"),
        (1.5e-3, "1.5ms"),
        (14.3e-3, "14.3ms"),
        (4e-3, "4ms"),
        (1.234, "1.23s"),
        (45.6, "45.6s"),
        (5, "5s"),
        (59.99, "60s"),
        (60, "1m0s"),
        (90.7, "1m30s"),  # whole seconds from a minute up
        (H, "1h0m0s"),
        (24 * H, "1d0s"),  # the vector "maximum expiration time is 1d0s"
        (25 * H, "1d1h0m0s"),
        (6 * D + 1, "6d1s"),
        (7 * D, "1w0d0s"),
        (8 * D + 61, "1w1d1m1s"),
        (365 * D, "52w1d0s"),
        (365.25 * D, "1y0w0d0s"),
        (2 * 365.25 * D + 8 * D, "2y1w1d0s"),
        (-1.5, "-1.5s"),
        (-24 * H, "-1d0s"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert units.format_duration(seconds) == text


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("0", 0),
        ("1024", 1024),
        ("500B", 500),
        ("1K", 1 << 10),
        ("100M", 100 << 20),
        ("2G", 2 << 30),
        ("3T", 3 << 40),
        ("4P", 4 << 50),
        ("5E", 5 << 60),
        ("1KiB", 1 << 10),
        ("100MiB", 100 << 20),
        ("100 MiB", 100 << 20),
        ("2GiB", 2 << 30),
        ("3TiB", 3 << 40),
        ("4PiB", 4 << 50),
        ("5EiB", 5 << 60),
        ("2kB", 2000),
        ("10MB", 10_000_000),
        ("3GB", 3 * 10**9),
        ("4TB", 4 * 10**12),
        ("5PB", 5 * 10**15),
        ("6EB", 6 * 10**18),
        (" 7 ", 7),
        ("18446744073709551615", 2**64 - 1),
    ],
)
def test_parse_size(text: str, size: int) -> None:
    assert units.parse_size(text) == size


@pytest.mark.parametrize(
    "text",
    ["", "B", "MiB", "-1", "+1", "1.5M", "1k", "1KB", "1 X", "ten", "1\u0663", "1_000", "16EiB"],
)
def test_parse_size_errors(text: str) -> None:
    with pytest.raises(ValueError, match="size") as info:
        units.parse_size(text)
    assert json.dumps(text, ensure_ascii=False) in str(info.value)


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0B"),
        (100 << 20, "100MiB"),
        (1 << 10, "1KiB"),
        (5 << 60, "5EiB"),
        (2000, "2kB"),
        (3 * 10**6, "3MB"),
        (1536, "1536B"),
        (7, "7B"),
    ],
)
def test_format_size(size: int, text: str) -> None:
    assert units.format_size(size) == text


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (500, "500 B"),
        (1023, "1023 B"),
        (1024, "1 KiB"),  # exact multiple of at least one unit
        (1025, "1025 B"),
        (4096, "4 KiB"),
        (150000, "146 KiB"),
        (101 * 1024 + 5, "101 KiB"),
        (1982464, "1936 KiB"),
        (1 << 20, "1 MiB"),
        (100 << 20, "100 MiB"),
        ((100 << 20) + 1, "102400 KiB"),
        (101 << 20, "101 MiB"),
        (876 << 20, "876 MiB"),
        (1 << 30, "1 GiB"),
        (1 << 40, "1 TiB"),
        (200 << 40, "200 TiB"),
        (5 << 50, "5120 TiB"),
    ],
)
def test_format_bytes(n: int, text: str) -> None:
    assert units.format_bytes(n) == text


@pytest.fixture
def timezone(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run with a POSIX TZ string (no tz database needed); restore afterwards."""
    yield None
    monkeypatch.undo()
    time.tzset()


GO_REFERENCE = 1136214245  # Mon Jan 2 15:04:05 UTC 2006


@pytest.mark.parametrize(
    ("tz", "formatted", "stamp"),
    [
        ("UTC0", "02 Jan 2006 15:04:05 UTC", "2006-01-02:15:04:05"),
        ("EST+5", "02 Jan 2006 10:04:05 EST", "2006-01-02:10:04:05"),
        ("XYZ-10", "03 Jan 2006 01:04:05 XYZ", "2006-01-03:01:04:05"),
    ],
)
def test_format_time_and_datestamp_use_local_time(
    monkeypatch: pytest.MonkeyPatch, timezone: None, tz: str, formatted: str, stamp: str
) -> None:
    monkeypatch.setenv("TZ", tz)
    time.tzset()
    assert units.format_time(GO_REFERENCE) == formatted
    assert units.image_datestamp(GO_REFERENCE + 0.9) == stamp


@pytest.mark.parametrize(
    ("machine", "arch"),
    [
        ("x86_64", "amd64"),
        ("AMD64", "amd64"),
        ("aarch64", "arm64"),
        ("arm64", "arm64"),
        ("i386", "386"),
        ("i686", "386"),
        ("armv7l", "arm"),
        ("armv6l", "arm"),
        ("ppc64le", "ppc64le"),
        ("s390x", "s390x"),
        ("riscv64", "riscv64"),
        ("loongarch64", "loong64"),
        ("sparc64", "sparc64"),
    ],
)
def test_go_arch(machine: str, arch: str) -> None:
    assert units.go_arch(machine) == arch


def test_go_arch_defaults_to_this_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(units.platform, "machine", lambda: "aarch64")
    assert units.go_arch() == "arm64"
