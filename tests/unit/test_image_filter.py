"""Tests for imaginator.image.filter (srpc-rpc-image-model.md §4.4)."""

from __future__ import annotations

import pytest

from imaginator.image.filter import (
    Filter,
    FilterError,
    compile_path_expression,
    parse_filter_lines,
    translate_re2,
)


@pytest.mark.parametrize(
    ("expression", "kind", "literal"),
    [
        ("/etc/fstab", "prefix", "/etc/fstab"),
        ("/etc/[.]hidden", "prefix", "/etc/.hidden"),
        ("/etc/fstab$", "exact", "/etc/fstab"),
        ("/[a]b$", "exact", "/ab"),
        ("$", "exact", ""),
        ("/var/log/.*", "prefix", "/var/log/"),
        ("/.*", "prefix", "/"),
        ("/tmp(|/.*)$", "tree", "/tmp"),
        ("/etc/ssh/ssh_host_.*_key(|[.]pub)$", "prefix_regexp", "/etc/ssh/ssh_host_"),
        ("/a.*b", "prefix_regexp", "/a"),
        ("/x.*$", "prefix_regexp", "/x"),
        (".*/__pycache__/.*", "contains", "/__pycache__/"),
        ("/.*app-log.*", "contains", "app-log"),
        ("/.*/tests/.*", "contains", "/tests/"),
        ("/.*a[.]b.*", "contains", "a.b"),
        ("/file.log", "regexp", ""),
        ("/foo(|.*)$", "regexp", ""),
        ("a.*b", "regexp", ""),  # plain prefix too short for prefix_regexp
        ("(|/.*)$", "regexp", ""),  # tree needs a non-empty prefix
        ("/x[^a]", "regexp", ""),
        ("a|b", "regexp", ""),
        ("/.*a.*", "regexp", ""),  # contains needs length >= 7
        ("/.*a b.*", "regexp", ""),  # contains needs a plain middle
    ],
)
def test_compile_shapes(expression: str, kind: str, literal: str) -> None:
    matcher = compile_path_expression(expression)
    assert (matcher.kind, matcher.literal) == (kind, literal)
    assert matcher.optimised is (kind != "regexp")


MATCH_CASES = [
    # anchored at the start only
    ("/etc/fstab", "/etc/fstab", True),
    ("/etc/fstab", "/etc/fstab.bak", True),
    ("/etc/fstab", "/x/etc/fstab", False),
    ("/etc/fstab$", "/etc/fstab.bak", False),
    ("/etc/fstab$", "/etc/fstab", True),
    ("/var/log/.*", "/var/log/", True),
    ("/var/log/.*", "/var/log", False),
    ("/tmp(|/.*)$", "/tmp", True),
    ("/tmp(|/.*)$", "/tmp/file", True),
    ("/tmp(|/.*)$", "/tmpfile", False),
    ("/tmp(|/.*)$", "/tm", False),
    ("/etc/ssh/ssh_host_.*_key(|[.]pub)$", "/etc/ssh/ssh_host_rsa_key", True),
    ("/etc/ssh/ssh_host_.*_key(|[.]pub)$", "/etc/ssh/ssh_host_rsa_key.pub", True),
    ("/etc/ssh/ssh_host_.*_key(|[.]pub)$", "/etc/ssh/ssh_config", False),
    ("/etc/ssh/ssh_host_.*_key(|[.]pub)$", "/etc/ssh/ssh_host_rsa_key.bak", False),
    ("/file.log", "/file.log", True),
    ("/file.log", "/file%log", True),
    ("/foo(|.*)$", "/foobar", True),
    (".*/__pycache__/.*", "/__pycache__/dir", True),
    (".*/__pycache__/.*", "/usr/lib/__pycache__/dir/file", True),
    (".*/__pycache__/.*", "usr/__pycache__/x", False),  # contains needs a leading "/"
    ("/.*app-log.*", "/.myapp-log.err", True),
    ("/.*app-log.*", "/.myprog-log.err", False),
    # The Go quirk: as a regex "/.*/tests/.*" needs "//tests/" at least; Go's
    # contains test matches "/tests/x" anyway, and so do we.
    ("/.*/tests/.*", "/tests/x", True),
    ("/.*/tests/.*", "/usr/tests/x", True),
    # a real regex "^a|b": "b" may match anywhere (Go MatchString searches)
    ("a|b", "xxb", True),
    ("a|b", "ax", True),
    ("a|b", "xa", False),
    ("/x[^a]", "/xb", True),
    ("/x[^a]", "/xa", False),
    # prefix then a searched remainder
    ("/a.*b", "/a/x/b", True),
    ("/a.*b", "/ax", False),
    ("/a.*b", "/b", False),
    ("/x.*$", "/x", True),
    # RE2 syntax translated for Python
    ("/etc/x\\z", "/etc/x", True),
    ("/etc/x\\z", "/etc/x/y", False),
    ("\\Q/a.b\\E", "/a.b", True),
    ("\\Q/a.b\\E", "/axb", False),
    ("(?i)/etc", "/ETC/passwd", True),
    ("/a(?i)b|c", "/aB", True),
    ("/a(?i)b|c", "xC", True),  # RE2 keeps the flag in the next alternative
    ("/a(?i)b|c", "/Ab", False),
    ("(/a(?i)b)c", "/aBc", True),
    ("(/a(?i)b)c", "/aBC", False),  # the flag ends with its group
    ("/[[:digit:]]+$", "/123", True),
    ("/[[:digit:]]+$", "/12a", False),
    ("/[[:alpha:][:digit:]]$", "/x", True),
    ("/\\x{41}", "/A", True),
    ("/(?<name>x)y", "/xy", True),
    ("/(?P<name>x)y", "/xy", True),
    ("/(?:a|b)c", "/bc", True),
    ("/(?:a|b)c", "/c", False),
    ("/(?i:a)b", "/Ab", True),
    ("/(?i:a)b", "/AB", False),
    ("/\\d", "/\u0663", False),  # RE2 classes are ASCII
    ("/[]]", "/]", True),
    ("/[a&&b]", "/&", True),  # no set operations in RE2
    ("/x+?y", "/xxy", True),  # lazy repeat is fine
    ("/x\\*+", "/x**", True),  # escaped "*" is no repeat
]


@pytest.mark.parametrize(("expression", "path", "expected"), MATCH_CASES)
def test_match(expression: str, path: str, expected: bool) -> None:
    assert Filter((expression,)).match(path) is expected


@pytest.mark.parametrize(
    ("lines", "path", "expected"),
    [
        ((), "/anything", False),
        (("/a", "/b"), "/b/c", True),
        (("/a", "/b"), "/c", False),
        (("!", "/a"), "/a/x", False),  # "!" inverts the whole filter
        (("/a", "!"), "/c", True),
        (("!",), "/c", True),
    ],
)
def test_filter_lines_and_inversion(lines: tuple[str, ...], path: str, expected: bool) -> None:
    assert Filter(lines).match(path) is expected


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("", "empty expression"),
        ("(", 'bad regular expression "(": missing closing )'),
        ("/a(", 'bad regular expression "/a(": missing closing )'),
        ("/ab.*(", 'bad regular expression "/ab.*(": missing closing )'),
        ("/x)", 'bad regular expression "/x)": unbalanced parenthesis'),
        ("/x[", 'bad regular expression "/x[": missing closing ]'),
        ("/x*+", 'bad regular expression "/x*+": invalid nested repetition operator'),
        ("/x+?+", 'bad regular expression "/x+?+": invalid nested repetition operator'),
        ("/x**", 'bad regular expression "/x**": multiple repeat'),
        ("(?=x)", 'bad regular expression "(?=x)": invalid or unsupported Perl syntax: lookaround'),
        ("/(a)\\1", 'bad regular expression "/(a)\\\\1": invalid escape sequence: \\1'),
        ("/a\\Z", 'bad regular expression "/a\\\\Z": invalid escape sequence: \\Z'),
        ("(?U)a", 'bad regular expression "(?U)a": ungreedy flag U is not supported'),
        ("(?x)a", 'bad regular expression "(?x)a": invalid or unsupported Perl syntax: (?'),
        ("()(?)", 'bad regular expression "()(?)": invalid or unsupported Perl syntax: (?'),
        ("/\\pL", 'bad regular expression "/\\\\pL": bad escape \\p'),
        ("/x\\", 'bad regular expression "/x\\\\": trailing backslash at end of expression'),
    ],
)
def test_errors_name_the_expression(expression: str, message: str) -> None:
    with pytest.raises(FilterError) as info:
        Filter(("/ok", expression))
    assert str(info.value) == message


def test_translate_re2_leaves_plain_syntax_alone() -> None:
    assert translate_re2("^/a(b|c)[x-z]+\\.d$") == "^/a(b|c)[x-z]+\\.d$"
    assert translate_re2("^(?i)a|b") == "^(?i:a)|(?i:b)"


def test_json_round_trip_and_equality() -> None:
    flt = Filter(("/etc/fstab", "!"))
    assert flt.to_json() == {"FilterLines": ["/etc/fstab", "!"]}
    assert Filter.from_json(flt.to_json()) == flt
    assert Filter.from_json(None) is None
    assert Filter.from_json({"FilterLines": None}) == Filter(())
    assert Filter(["/a"]).lines == ("/a",)  # any iterable; stored as a tuple
    assert Filter(("/a",)) != Filter(("/b",))


def test_unoptimised_lines() -> None:
    flt = Filter(("/etc/fstab", "/file.log", "!", "a|b"))
    assert flt.unoptimised_lines() == ["/file.log", "a|b"]
    assert flt.inverted


@pytest.mark.parametrize(
    ("text", "lines"),
    [
        ("", []),
        ("/a\n/b\n", ["/a", "/b"]),
        ("/a\n\n# comment\n/b", ["/a", "/b"]),
        (" # not a comment\n", [" # not a comment"]),
        ("/a \n", ["/a "]),  # no trimming
        ("/a\r\n/b\r\n", ["/a", "/b"]),
        ("!\n/x", ["!", "/x"]),
    ],
)
def test_parse_filter_lines(text: str, lines: list[str]) -> None:
    assert parse_filter_lines(text) == lines
