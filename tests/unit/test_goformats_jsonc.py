"""Tests for imaginator.goformats.jsonc: JSON with whole-line comments."""

from __future__ import annotations

import pytest

from imaginator.config.main import ConfigError
from imaginator.goformats import jsonc


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"a": 1}', {"a": 1}),
        ('# comment\n{"a": 1}', {"a": 1}),
        ('// comment\n{"a": 1}', {"a": 1}),
        ('! comment\n{"a": 1}', {"a": 1}),
        ('{\n  # indented hash\n  "a": 1\n}', {"a": 1}),
        ('{\n\t// tab-indented slashes\n  "a": 1\n}', {"a": 1}),
        ('{\n \t ! mixed blanks\n  "a": 1\n}', {"a": 1}),
        ('{"a": "#not a comment"}', {"a": "#not a comment"}),
        ('{"a":\n"//x"}', {"a": "//x"}),
        ('{"url": "http://x/y"}', {"url": "http://x/y"}),
        ("[1,\n# 2,\n3]", [1, 3]),
        ("# only a comment\nnull", None),
        ('{"a": 1}\r\n# windows comment\r\n', {"a": 1}),
        (b'{"bytes": "\xc3\xa9"}', {"bytes": "\u00e9"}),
    ],
)
def test_loads_accepts(text: str | bytes, expected: object) -> None:
    assert jsonc.loads(text, "f.json") == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # The dropped comment line still counts, so errors point at the real line.
        ('{\n# c\n  "a": 1\n  "b": 2}', "conf.json: line 4 column 3: Expecting ',' delimiter"),
        (
            '{"a": 1} // trailing comments are not comments',
            "conf.json: line 1 column 10: Extra data",
        ),
        ("/ not a comment\n{}", "conf.json: line 1 column 1: Expecting value"),
        ("", "conf.json: line 1 column 1: Expecting value"),
        ('{"a": NaN}', "conf.json: invalid JSON constant NaN"),
        ('{"a": Infinity}', "conf.json: invalid JSON constant Infinity"),
    ],
)
def test_loads_errors_name_source_and_position(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        jsonc.loads(text, "conf.json")
    assert str(info.value) == message


def test_line_separator_inside_string_is_not_a_line_break() -> None:
    # Go splits on "\n" only; U+2028 inside a string must not start a "line".
    assert jsonc.loads('{"a": "x\u2028# y"}', "f") == {"a": "x\u2028# y"}


@pytest.mark.parametrize(
    ("line", "is_comment"),
    [("#", True), ("  //x", True), ("\t!", True), ("/", False), (" x#", False), ("", False)],
)
def test_is_comment_line(line: str, is_comment: bool) -> None:
    assert jsonc.is_comment_line(line) is is_comment
