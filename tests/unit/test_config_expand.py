"""Tests for imaginator.config.expand: Go os.Expand plus sub-expressions (§3.7)."""

from __future__ import annotations

import pytest

from imaginator.config.expand import (
    expand,
    expand_mapping,
    expand_opportunistic,
    referenced_names,
    slice_value,
)

STREAM = "users/fred/generic/base/Debian-10/amd64"
VARS = {
    "ARCH": "amd64",
    "IMAGE_STREAM": STREAM,
    "A": "a",
    "A_1": "a1",
    "EMPTY": "",
    "1": "one",
    "*": "star",
    "$": "dollar",
    "-": "dash",
    "x y": "spaced",
    "A[]": "odd",
}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ""),
        ("plain text", "plain text"),
        ("$ARCH", "amd64"),
        ("${ARCH}", "amd64"),
        ("x-$ARCH-y", "x-amd64-y"),
        ("$A_1.", "a1."),  # names are [A-Za-z0-9_]+
        ("$Ab", ""),  # longest run of name characters is the name
        ("$A/b", "a/b"),
        ("$UNKNOWN!", "!"),  # unknown -> empty in full mode
        ("$EMPTY|", "|"),
        ("${x y}", "spaced"),  # braces take anything but "}"
        ("$1abc", "oneabc"),  # special one-character names
        ("$*", "star"),
        ("$$", "dollar"),
        ("$-x", "dashx"),
        ("${*}", "star"),
        ("${1}2", "one2"),
        ("$", "$"),  # "$" at the end stays
        ("a$", "a$"),
        ("$ x", "$ x"),  # "$" before a non-name character stays
        ("$.", "$."),
        ("$/", "$/"),
        ("$\u00e9", "$\u00e9"),
        ("a${}b", "ab"),  # "${}" is deleted
        ("a${b", "ab"),  # unterminated "${" eats only "${"
        ("a${", "a"),
        ("${A}${A}", "aa"),
        ("$A$A", "aa"),
        ("${A[]}", "odd"),  # too short to be a sub-expression: a plain name
    ],
)
def test_expand_full(text: str, expected: str) -> None:
    assert expand(text, VARS.get) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # The examples of the reference.
        ("${IMAGE_STREAM[/:]}", STREAM),
        ("${IMAGE_STREAM[/2:-1]}", "generic/base/Debian-10"),
        ("${IMAGE_STREAM[/-2:]}", "Debian-10/amd64"),
        ("${IMAGE_STREAM[/0:1]}", "users"),
        ("${IMAGE_STREAM[/:2]}", "users/fred"),
        ("${IMAGE_STREAM[/5:]}", "amd64"),
        ("${IMAGE_STREAM[/-1:]}", "amd64"),
        ("${IMAGE_STREAM[/+1:+2]}", "fred"),  # Go Atoi accepts a sign
        ("${IMAGE_STREAM[/6:]}", ""),  # start == len: empty slice
        ("${IMAGE_STREAM[-1:]}", "10/amd64"),  # "-" as the separator
        ("${IMAGE_STREAM[e:1]}", "us"),
        # end >= len -> empty
        ("${IMAGE_STREAM[/0:6]}", ""),
        ("${IMAGE_STREAM[/:99]}", ""),
        # negative end below start -> empty
        ("${IMAGE_STREAM[/3:-4]}", ""),
        # positive end below start: Go panics, we return empty
        ("${IMAGE_STREAM[/3:1]}", ""),
        # start out of range: Go panics, we return empty
        ("${IMAGE_STREAM[/7:]}", ""),
        ("${IMAGE_STREAM[/-9:]}", ""),
        # malformed -> empty
        ("${IMAGE_STREAM[/1]}", ""),
        ("${IMAGE_STREAM[/1:2:3]}", ""),
        ("${IMAGE_STREAM[/x:]}", ""),
        ("${IMAGE_STREAM[/:y]}", ""),
        ("${IMAGE_STREAM[/ 1:]}", ""),
        ("${[/1:2]}", ""),  # no name before "["
        ("${NOBRACKET]}", ""),
        ("${A[/]}", ""),  # shorter than name + 4
        # unknown or empty variable -> empty
        ("${UNKNOWN[/1:]}", ""),
        ("${EMPTY[/:]}", ""),
        ("<${IMAGE_STREAM[/-2:-1]}>", "<Debian-10>"),
    ],
)
def test_sub_expressions(text: str, expected: str) -> None:
    assert expand(text, VARS.get) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("$ARCH", "amd64"),
        ("base/$ARCH", "base/amd64"),
        ("$dir/$ARCH", "$dir/$ARCH"),  # any unknown variable: unchanged
        ("${dir}", "${dir}"),
        ("$ARCH$EMPTY", "$ARCH$EMPTY"),  # empty counts as missing
        ("no variables", "no variables"),
        ("$ ", "$ "),
        ("a${}b", "ab"),  # no variable looked up, so the expansion stands
        ("${IMAGE_STREAM[/-1:]}", "amd64"),
        ("${UNKNOWN[/-1:]}", "${UNKNOWN[/-1:]}"),
        ("${IMAGE_STREAM[/9:]}/$ARCH", "/amd64"),  # empty slice is not "missing"
    ],
)
def test_expand_opportunistic(text: str, expected: str) -> None:
    assert expand_opportunistic(text, VARS.get) == expected


def test_expand_mapping_and_lookup_returning_none() -> None:
    assert expand_mapping("$A-$B", {"A": "1"}) == "1-"
    assert expand("$A", lambda name: None) == ""


def test_lookup_receives_plain_names() -> None:
    seen: list[str] = []

    def lookup(name: str) -> str:
        seen.append(name)
        return "v/w"

    assert expand("${X[/1:]} $Y ${Z}", lookup) == "w v/w v/w"
    assert seen == ["X", "Y", "Z"]


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("", []),
        ("$A ${B} $A", ["A", "B"]),
        ("${IMAGE_STREAM[/1:]}/$ARCH", ["IMAGE_STREAM", "ARCH"]),
        ("$1$*", ["1", "*"]),
        ("$ ${} ${x", []),
        ("${[/1:2]}", []),
    ],
)
def test_referenced_names(text: str, names: list[str]) -> None:
    assert referenced_names(text) == names


@pytest.mark.parametrize(
    ("value", "sep", "start", "end", "expected"),
    [
        ("a:b:c", ":", "", "", "a:b:c"),
        ("a:b:c", ":", "1", "", "b:c"),
        ("a:b:c", ":", "", "-1", "a:b"),
        ("a:b:c", ":", "-3", "-2", "a"),
        ("a:b:c", ":", "2", "2", ""),
        ("a:b:c", ":", "", "3", ""),
        ("abc", ":", "0", "", "abc"),
    ],
)
def test_slice_value(value: str, sep: str, start: str, end: str, expected: str) -> None:
    assert slice_value(value, sep, start, end) == expected
