"""Tests for imaginator.goformats.versionsort (reference Appendix B)."""

from __future__ import annotations

import pytest

from imaginator.goformats.versionsort import (
    sorted_versions,
    version_compare,
    version_key,
    version_less,
)


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("", "", 0),
        ("", "empty", -1),
        ("empty", "", 1),
        ("abc", "abc", 0),
        ("abc", "abd", -1),
        ("9_x", "10_x", -1),
        ("10_x", "9_x", 1),
        ("file.1.ext", "file.10.ext", -1),
        ("name.1.rc9", "name.1.rc10", -1),
        ("os-v1", "os-v10", -1),
        ("sparse", "sparse.0", -1),
        ("01_a", "1_a", 0),  # equal numerically at the digits, then continue
        ("01_a", "1_b", -1),
        ("001", "1", 0),
        ("token_01", "token_2", -1),
        ("token_2", "token_10", -1),
        ("a1", "a", 1),
        ("a", "a1", -1),
        # digit against non-digit: plain byte comparison
        ("a1", "a_", -1),  # "1" (0x31) < "_" (0x5f)
        ("a1", "a-", 1),  # "1" (0x31) > "-" (0x2d)
        ("a10", "a.", 1),
        ("a9", "aZ", -1),
        ("B", "a", -1),  # bytes, so upper case first
        ("1000000000000000000000", "999999999999999999999", 1),
        ("\u00e9", "z", 1),  # UTF-8 bytes: 0xc3 > "z"
    ],
)
def test_version_compare(a: str, b: str, expected: int) -> None:
    assert version_compare(a, b) == expected
    assert version_compare(b, a) == -expected
    assert version_less(a, b) is (expected < 0)
    assert (version_key(a) < version_key(b)) is (expected < 0)


def test_sorted_versions() -> None:
    names = ["10-last", "2-second", "01-first", "1-also-first", "b", "a", "9-x", "20"]
    # "01-first" and "1-also-first" tie on the number, then "a" < "f".
    assert sorted_versions(names) == [
        "1-also-first",
        "01-first",
        "2-second",
        "9-x",
        "10-last",
        "20",
        "a",
        "b",
    ]


def test_sorted_versions_is_stable_for_equal_names() -> None:
    assert sorted_versions(["1_a", "01_a", "001_a"]) == ["1_a", "01_a", "001_a"]
    assert sorted_versions(["001_a", "1_a"]) == ["001_a", "1_a"]
