"""Path filters: lists of regular expressions matched against file paths.

A filter decides which paths a scan leaves out of an image and which paths a
dominator leaves alone on a machine (srpc-rpc-image-model.md §4.4). Each line is
a Go RE2 expression anchored at the *start* only (``/etc/fstab`` also matches
``/etc/fstab.bak``); a line that is exactly ``!`` inverts the filter.

Go compiles common shapes to plain string tests, and one of them (``/.*word.*``)
does not agree with the regular expression it stands for; we compile the same
shapes the same way so that images filter identically. Everything else is an
RE2 expression translated to Python ``re`` syntax (``\\z``, ``\\Q…\\E``,
``\\x{…}``, POSIX classes, ``(?i)`` in mid-expression, ``(?<name>``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

INVERT_LINE = "!"


class FilterError(ValueError):
    """An expression that cannot be compiled; the message names the expression."""


# ----------------------------------------------------- RE2 -> Python syntax

_POSIX_CLASSES = {
    "alnum": "0-9A-Za-z",
    "alpha": "A-Za-z",
    "ascii": "\\x00-\\x7f",
    "blank": "\\t ",
    "cntrl": "\\x00-\\x1f\\x7f",
    "digit": "0-9",
    "graph": "!-~",
    "lower": "a-z",
    "print": " -~",
    "punct": "!-/:-@\\[-`{-~",
    "space": "\\t\\n\\v\\f\\r ",
    "upper": "A-Z",
    "word": "0-9A-Za-z_",
    "xdigit": "0-9A-Fa-f",
}

_RE2_FLAGS = frozenset("imsU-")


class _Unsupported(Exception):
    """RE2 rejects (or Python cannot express) this construct."""


def _translate_escape(pattern: str, i: int, in_class: bool) -> tuple[str, int]:
    """Translate the escape starting at ``pattern[i] == "\\"``; return (text, next index)."""
    if i + 1 >= len(pattern):
        raise _Unsupported("trailing backslash at end of expression")
    ch = pattern[i + 1]
    if ch == "z" and not in_class:
        return "\\Z", i + 2
    if ch == "Z":
        raise _Unsupported("invalid escape sequence: \\Z")
    if "1" <= ch <= "9":
        raise _Unsupported(f"invalid escape sequence: \\{ch}")
    if ch == "Q" and not in_class:
        end = pattern.find("\\E", i + 2)
        literal = pattern[i + 2 :] if end < 0 else pattern[i + 2 : end]
        return re.escape(literal), len(pattern) if end < 0 else end + 2
    if ch == "x" and pattern[i + 2 : i + 3] == "{":
        end = pattern.find("}", i + 3)
        digits = pattern[i + 3 : end] if end > 0 else ""
        if not digits or not all(c in "0123456789abcdefABCDEF" for c in digits):
            raise _Unsupported("invalid escape sequence: \\x{")
        if int(digits, 16) > 0x10FFFF:
            raise _Unsupported(f"invalid escape sequence: \\x{{{digits}}}")
        return f"\\U{int(digits, 16):08x}", end + 1
    return pattern[i : i + 2], i + 2


def _translate_class(pattern: str, i: int) -> tuple[str, int]:
    """Translate the bracket expression starting at ``pattern[i] == "["``."""
    out = ["["]
    i += 1
    if pattern[i : i + 1] == "^":
        out.append("^")
        i += 1
    if pattern[i : i + 1] == "]":
        out.append("\\]")  # a leading "]" is a literal
        i += 1
    while i < len(pattern):
        ch = pattern[i]
        if ch == "]":
            out.append("]")
            return "".join(out), i + 1
        if ch == "\\":
            text, i = _translate_escape(pattern, i, in_class=True)
            out.append(text)
            continue
        if ch == "[" and pattern[i + 1 : i + 2] == ":":
            end = pattern.find(":]", i + 2)
            name = pattern[i + 2 : end] if end > 0 else ""
            if name in _POSIX_CLASSES:
                out.append(_POSIX_CLASSES[name])
                i = end + 2
                continue
            if name.startswith("^") and name[1:] in _POSIX_CLASSES:
                raise _Unsupported(f"negated POSIX class [:{name}:] is not supported")
        if ch in "[&~|":
            out.append("\\" + ch)  # literal in RE2; set operators to Python
        else:
            out.append(ch)
        i += 1
    raise _Unsupported("missing closing ]")


def _parse_group_open(pattern: str, i: int) -> tuple[str, str | None, int]:
    """Look at ``(`` at ``i``: return (text to emit, flags of a ``(?flags)`` or None, next)."""
    if pattern[i + 1 : i + 2] != "?":
        return "(", None, i + 1
    rest = pattern[i + 2 :]
    if rest.startswith(("=", "!", "<=", "<!")):
        raise _Unsupported("invalid or unsupported Perl syntax: lookaround")
    if rest.startswith("#"):
        raise _Unsupported("invalid or unsupported Perl syntax: (?#")
    if rest.startswith("<") and not rest.startswith("<="):
        return "(?P<", None, i + 3  # Go 1.22 named group syntax
    if rest.startswith("P"):
        return "(?P", None, i + 3
    end = i + 2
    while end < len(pattern) and pattern[end] in _RE2_FLAGS:
        end += 1
    flags = pattern[i + 2 : end]
    if end >= len(pattern) or pattern[end] not in ":)" or (not flags and pattern[end] == ")"):
        raise _Unsupported("invalid or unsupported Perl syntax: (?")
    if "U" in flags:
        raise _Unsupported("ungreedy flag U is not supported")
    if pattern[end] == ":":
        return f"(?{flags}:", None, end + 1
    return "", flags, end + 1


def translate_re2(pattern: str) -> str:
    """Rewrite an RE2 expression in Python ``re`` syntax.

    Raises ``_Unsupported`` for constructs RE2 rejects (lookaround,
    backreferences, ``\\Z``, possessive ``*+``) or that we cannot express
    (``(?U)``).
    Mid-expression ``(?flags)`` become scoped ``(?flags:…)`` groups running to
    the end of the enclosing group, re-opened after each ``|``.
    """
    out: list[str] = []
    # One list of active "(?flags)" scopes per open group; [0] is top level.
    scopes: list[list[str]] = [[]]
    i = 0
    after_repeat = False  # the previous token was a bare *, + or ?
    while i < len(pattern):
        ch = pattern[i]
        if ch == "+" and after_repeat:
            # Python 3.11 reads "*+" as possessive; RE2 rejects it.
            raise _Unsupported("invalid nested repetition operator")
        after_repeat = ch in "*+?"
        if ch == "\\":
            text, i = _translate_escape(pattern, i, in_class=False)
            out.append(text)
        elif ch == "[":
            text, i = _translate_class(pattern, i)
            out.append(text)
        elif ch == "(":
            text, flags, i = _parse_group_open(pattern, i)
            if flags is None:
                out.append(text)
                scopes.append([])
            else:
                out.append(f"(?{flags}:")
                scopes[-1].append(flags)
        elif ch == "|":
            active = scopes[-1]
            out.append(")" * len(active) + "|" + "".join(f"(?{f}:" for f in active))
            i += 1
        elif ch == ")":
            out.append(")" * len(scopes[-1]) + ")")
            if len(scopes) > 1:
                scopes.pop()
            else:
                scopes[0] = []  # unbalanced ")": let re report it
            i += 1
        else:
            out.append(ch)
            i += 1
    out.append(")" * len(scopes[-1]))
    if len(scopes) > 1:
        raise _Unsupported("missing closing )")
    return "".join(out)


def compile_re2(expression: str, original: str | None = None) -> re.Pattern[str]:
    """Compile RE2 ``expression`` (already including any ``^``) for Python.

    ``original`` is the filter line named in the error message.
    """
    shown = json.dumps(expression if original is None else original, ensure_ascii=False)
    try:
        return re.compile(translate_re2(expression), re.ASCII)
    except (_Unsupported, re.error, OverflowError) as exc:
        reason = exc.msg if isinstance(exc, re.error) else str(exc)
        raise FilterError(f"bad regular expression {shown}: {reason}") from None


# ---------------------------------------------------------- path matchers


def _is_plain(ch: str) -> bool:
    return ch in "-/_" or "0" <= ch <= "9" or "a" <= ch <= "z" or "A" <= ch <= "Z"


def _single_char_class(expression: str, i: int, limit: int) -> str | None:
    """The literal ``x`` if ``expression[i:]`` starts with a ``[x]`` (x not ``^``)."""
    if expression[i] == "[" and i + 2 < limit and expression[i + 2] == "]":
        middle = expression[i + 1]
        if middle != "^":
            return middle
    return None


@dataclass(frozen=True)
class PathMatcher:
    """One compiled filter expression.

    ``kind`` is ``prefix``, ``exact``, ``tree``, ``contains``,
    ``prefix_regexp`` (literal prefix then a regex on the rest) or ``regexp``;
    ``literal`` is the string the fast paths test.
    """

    expression: str
    kind: str
    literal: str = ""
    regex: re.Pattern[str] | None = None

    @property
    def optimised(self) -> bool:
        """False if every test runs the full regular expression."""
        return self.kind != "regexp"

    def match(self, path: str) -> bool:
        """True if ``path`` matches, with Go's fast-path semantics."""
        lit = self.literal
        if self.kind == "prefix":
            return path.startswith(lit)
        if self.kind == "exact":
            return path == lit
        if self.kind == "tree":
            return path == lit or (path.startswith(lit) and path[len(lit) : len(lit) + 1] == "/")
        if self.kind == "contains":
            return path.startswith("/") and lit in path
        assert self.regex is not None
        if self.kind == "prefix_regexp":
            # Go matches "^" + remainder against the rest of the path as a new string.
            return path.startswith(lit) and self.regex.search(path[len(lit) :]) is not None
        # search, not match: like Go's MatchString, "^a|b" finds "b" anywhere.
        return self.regex.search(path) is not None


def _compile_contains(expression: str) -> PathMatcher | None:
    """``/.*word.*`` or ``.*/word.*`` (length >= 7, plain middle) -> contains test."""
    if len(expression) < 7 or not expression.endswith(".*"):
        return None
    if expression.startswith("/.*"):
        i = 3
    elif expression.startswith(".*/"):
        i = 2  # the "/" is part of the middle
    else:
        return None
    limit = len(expression) - 2
    middle: list[str] = []
    while i < limit:
        ch = expression[i]
        if _is_plain(ch):
            middle.append(ch)
            i += 1
            continue
        literal = _single_char_class(expression, i, limit)
        if literal is None:
            return None
        middle.append(literal)
        i += 3
    if not middle:
        return None
    return PathMatcher(expression, "contains", "".join(middle))


def compile_path_expression(expression: str) -> PathMatcher:
    """Compile one filter line the way Go's ``pathregexp.Compile`` does.

    Raises ``FilterError`` for an empty or invalid expression.
    """
    if expression == "":
        raise FilterError("empty expression")
    contains = _compile_contains(expression)
    if contains is not None:
        return contains
    prefix: list[str] = []
    length = len(expression)
    i = 0
    while i < length:
        ch = expression[i]
        if _is_plain(ch):
            prefix.append(ch)
            i += 1
            continue
        literal = _single_char_class(expression, i, length)
        if literal is not None:
            prefix.append(literal)
            i += 3
            continue
        plain = "".join(prefix)
        if ch == "$" and i == length - 1:
            return PathMatcher(expression, "exact", plain)
        if ch == "." and i == length - 2 and expression[i + 1] == "*":
            return PathMatcher(expression, "prefix", plain)
        if ch == "." and len(plain) > 1 and i + 2 < length and expression[i + 1] == "*":
            regex = compile_re2("^" + expression[i:], expression)
            return PathMatcher(expression, "prefix_regexp", plain, regex)
        if expression[i:] == "(|/.*)$" and plain:
            return PathMatcher(expression, "tree", plain)
        return PathMatcher(expression, "regexp", "", compile_re2("^" + expression, expression))
    return PathMatcher(expression, "prefix", "".join(prefix))


# ------------------------------------------------------------------ filter


@dataclass(frozen=True)
class Filter:
    """A compiled list of filter lines; ``match(path)`` says if the filter covers it.

    ``lines`` keeps the lines as given (including a ``!``), which is what the
    image JSON stores.
    """

    lines: tuple[str, ...]
    _matchers: tuple[PathMatcher, ...] = field(init=False, repr=False, compare=False)
    _inverted: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        lines = tuple(self.lines)
        for line in lines:
            if not isinstance(line, str):
                raise FilterError(f"filter line is not a string: {line!r}")
        matchers = tuple(compile_path_expression(x) for x in lines if x != INVERT_LINE)
        object.__setattr__(self, "lines", lines)
        object.__setattr__(self, "_matchers", matchers)
        object.__setattr__(self, "_inverted", INVERT_LINE in lines)

    @property
    def inverted(self) -> bool:
        return self._inverted

    def match(self, path: str) -> bool:
        """True if any expression matches ``path`` (the opposite when inverted)."""
        matched = any(m.match(path) for m in self._matchers)
        return matched != self._inverted

    def unoptimised_lines(self) -> list[str]:
        """Lines that run a full regular expression (listed in build logs)."""
        return [m.expression for m in self._matchers if not m.optimised]

    def to_json(self) -> dict[str, list[str]]:
        """The image-model JSON form ``{"FilterLines": [...]}``."""
        return {"FilterLines": list(self.lines)}

    @classmethod
    def from_json(cls, obj: Any) -> Filter | None:
        """Inverse of ``to_json``; ``None`` (a sparse image) stays ``None``."""
        if obj is None:
            return None
        if not isinstance(obj, dict):
            raise FilterError("filter JSON is not an object")
        lines = obj.get("FilterLines")
        if lines is None:
            return cls(())
        if not isinstance(lines, list):
            raise FilterError("FilterLines is not a list")
        return cls(tuple(lines))


def parse_filter_lines(text: str) -> list[str]:
    """Lines of a filter file: empty lines and lines starting with ``#`` dropped.

    No other trimming, as in Go: ``" #x"`` is an expression. A ``\r`` before
    the newline is dropped (Go's line scanner does that).
    """
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    return [line for line in lines if line != "" and not line.startswith("#")]
