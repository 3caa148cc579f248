"""A strict reader of the Prometheus text exposition format (version 0.0.4).

Enough of the format to prove that ``/metrics`` is valid: every family has
one ``# HELP`` and one ``# TYPE`` before its samples, names and label names
are well formed, label values use only the three escapes the format has,
values are numbers, and no sample (name and label set) appears twice.
"""

from __future__ import annotations

import math
import re

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = r"[a-zA-Z_][a-zA-Z0-9_]*"
_VALUE = r'"(?:[^"\\\n]|\\[\\"n])*"'
_SAMPLE = re.compile(
    rf"^(?P<name>{_NAME})(?:\{{(?P<labels>(?:{_LABEL}={_VALUE})(?:,{_LABEL}={_VALUE})*)\}})?"
    r" (?P<value>\S+)$"
)
_PAIR = re.compile(rf"({_LABEL})=({_VALUE})")
_TYPES = {"counter", "gauge", "histogram", "summary", "untyped"}


def _unescape(quoted: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), quoted[1:-1])


def parse(text: str) -> dict[str, dict]:
    """Families by name: ``{"type", "help", "samples": {frozenset(labels.items()): value}}``.

    Raises ``AssertionError`` naming the line for anything the format does not allow.
    """
    assert text.endswith("\n"), "the exposition must end with a newline"
    families: dict[str, dict] = {}
    for number, line in enumerate(text.splitlines(), 1):
        where = f"line {number}: {line!r}"
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            _hash, keyword, rest = line.split(" ", 2)
            name, _sep, value = rest.partition(" ")
            assert re.fullmatch(_NAME, name), where
            family = families.setdefault(name, {"type": None, "help": None, "samples": {}})
            key = keyword.lower()
            assert family[key] is None, f"{where}: second {keyword}"
            assert not family["samples"], f"{where}: {keyword} after samples"
            if key == "type":
                assert value in _TYPES, where
            family[key] = value
            continue
        assert line and not line.startswith("#"), f"{where}: unexpected"
        match = _SAMPLE.match(line)
        assert match, f"{where}: not a sample"
        name = match["name"]
        family = families.get(name)
        assert family is not None and family["type"] is not None, f"{where}: no TYPE before"
        labels = frozenset((k, _unescape(v)) for k, v in _PAIR.findall(match["labels"] or ""))
        assert len(labels) == len(_PAIR.findall(match["labels"] or "")), f"{where}: label twice"
        assert labels not in family["samples"], f"{where}: sample twice"
        value = float(match["value"])  # raises for anything that is not a number
        assert not math.isnan(value), where
        family["samples"][labels] = value
    return families
