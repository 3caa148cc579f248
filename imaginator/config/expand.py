"""Shell-like ``$VAR`` expansion, as the Go imaginator does it (Go ``os.Expand``).

Syntax (reference §3.7):

* ``$NAME`` with NAME made of ``[A-Za-z0-9_]``, or ``${anything but }}``;
* ``$`` followed by one of ``*#$@!?-0123456789`` is a one-character name, as is
  ``${c}`` for such a character;
* ``$`` at the end, or before a character that cannot start a name, stays a
  literal ``$``; ``${}`` is deleted; an unterminated ``${`` eats the ``${``;
* ``${NAME[<sep><start>:<end>]}`` splits NAME's value on the one character
  ``<sep>`` and re-joins the slice ``[start:end]`` (Python-style negative
  indices, with Go's quirks: ``end >= len`` gives empty, anything malformed or
  out of range gives empty — where Go panics we return empty).

The text is first scanned into literal pieces and variable references, so
expansion, opportunistic expansion and ``referenced_names`` share one parser.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

Lookup = Callable[[str], str | None]

_SPECIAL = frozenset("*#$@!?-0123456789")


def _is_name_char(ch: str) -> bool:
    return ch == "_" or ("0" <= ch <= "9") or ("a" <= ch <= "z") or ("A" <= ch <= "Z")


@dataclass(frozen=True)
class _Ref:
    """A variable reference: ``text`` is what Go hands its mapping function."""

    text: str


_Piece = str | _Ref


def _scan_name(s: str, start: int) -> tuple[str | None, int]:
    """Parse the name after a ``$`` at ``s[start - 1]``.

    Returns ``(name, consumed)``: ``name`` None with ``consumed`` 0 means a
    literal ``$``; ``name`` None with ``consumed`` > 0 means bad syntax whose
    characters are dropped.
    """
    ch = s[start]
    if ch == "{":
        if start + 2 < len(s) and s[start + 1] in _SPECIAL and s[start + 2] == "}":
            return s[start + 1], 3
        close = s.find("}", start + 1)
        if close < 0:
            return None, 1  # unterminated "${": eat "${"
        if close == start + 1:
            return None, 2  # "${}": eat it
        return s[start + 1 : close], close - start + 1
    if ch in _SPECIAL:
        return ch, 1
    end = start
    while end < len(s) and _is_name_char(s[end]):
        end += 1
    if end == start:
        return None, 0
    return s[start:end], end - start


def _scan(text: str) -> list[_Piece]:
    """Split ``text`` into literal strings and ``_Ref`` references."""
    pieces: list[_Piece] = []
    literal_start = 0
    i = 0
    while i < len(text):
        if text[i] == "$" and i + 1 < len(text):
            name, consumed = _scan_name(text, i + 1)
            if name is None and consumed == 0:
                i += 1  # the "$" stays as part of the literal
                continue
            pieces.append(text[literal_start:i])
            if name is not None:
                pieces.append(_Ref(name))
            i += 1 + consumed
            literal_start = i
            continue
        i += 1
    pieces.append(text[literal_start:])
    return [p for p in pieces if p != ""]


@dataclass(frozen=True)
class _SubExpression:
    name: str
    separator: str
    start: str
    end: str


def _parse_sub_expression(ref: str) -> _SubExpression | str | None:
    """Classify a reference: plain name (str), sub-expression, or malformed (None)."""
    if len(ref) < 5 or not ref.endswith("]"):
        return ref
    bracket = ref.find("[")
    if bracket < 1 or len(ref) < bracket + 4:
        return None
    bounds = ref[bracket + 2 : -1].split(":")
    if len(bounds) != 2:
        return None
    return _SubExpression(ref[:bracket], ref[bracket + 1], bounds[0], bounds[1])


def _go_atoi(text: str) -> int | None:
    """Go ``strconv.Atoi``: optional sign then ASCII digits only."""
    digits = text[1:] if text[:1] in ("+", "-") else text
    if not digits or not all("0" <= c <= "9" for c in digits):
        return None
    return int(text)


def slice_value(value: str, separator: str, start_text: str, end_text: str) -> str:
    """Apply ``[<sep><start>:<end>]`` to ``value``; empty string on any error."""
    parts = value.split(separator)
    count = len(parts)
    start = 0
    if start_text:
        parsed = _go_atoi(start_text)
        if parsed is None:
            return ""
        start = parsed + count if parsed < 0 else parsed
    if end_text:
        parsed = _go_atoi(end_text)
        if parsed is None or parsed >= count:
            return ""
        end = parsed + count if parsed < 0 else parsed
    else:
        end = count
    if not 0 <= start <= end <= count:
        return ""  # Go: "" for negative end below start, a panic otherwise
    return separator.join(parts[start:end])


def _resolve(ref: str, lookup: Callable[[str], str]) -> str:
    """Value of one reference, calling ``lookup`` only for real variable names."""
    parsed = _parse_sub_expression(ref)
    if parsed is None:
        return ""
    if isinstance(parsed, str):
        return lookup(parsed)
    value = lookup(parsed.name)
    if not value:
        return ""
    return slice_value(value, parsed.separator, parsed.start, parsed.end)


def expand(text: str, lookup: Lookup) -> str:
    """Full expansion: unknown (None) or empty variables become empty strings."""

    def get(name: str) -> str:
        return lookup(name) or ""

    return "".join(p if isinstance(p, str) else _resolve(p.text, get) for p in _scan(text))


def expand_opportunistic(text: str, lookup: Lookup) -> str:
    """Expand ``text`` only if every variable it looks up has a non-empty value.

    Used for ``$ARCH`` in bootstrap commands: ``"$dir/$ARCH"`` is left whole at
    load time (``dir`` is unknown then) and expanded at build time.
    """
    missing = False

    def get(name: str) -> str:
        nonlocal missing
        value = lookup(name) or ""
        if not value:
            missing = True
        return value

    result = expand(text, get)
    return text if missing else result


def expand_mapping(text: str, mapping: Mapping[str, str]) -> str:
    """Full expansion with variables from a mapping."""
    return expand(text, mapping.get)


def referenced_names(text: str) -> list[str]:
    """Names of the variables ``text`` would look up, first-seen order, no repeats.

    For a sub-expression ``${NAME[/1:2]}`` that is ``NAME``; malformed
    references look nothing up and are not listed.
    """
    names: list[str] = []
    for piece in _scan(text):
        if isinstance(piece, str):
            continue
        parsed = _parse_sub_expression(piece.text)
        name = parsed.name if isinstance(parsed, _SubExpression) else parsed
        if name is not None and name not in names:
            names.append(name)
    return names
