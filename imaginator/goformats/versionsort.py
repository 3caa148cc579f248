"""Version-string order (reference Appendix B): ``file.9`` sorts before ``file.10``.

Used for the order in which manifest scripts run and for trigger ``SortName``.
Strings are compared as UTF-8 bytes, left to right; where both sides have a
digit, the whole digit runs are compared as integers and, if equal, the
comparison carries on after each run (so ``01_a`` and ``1_a`` are equal). A
string that is a prefix of the other sorts first.
"""

from __future__ import annotations

from collections.abc import Iterable

_ZERO, _NINE = ord("0"), ord("9")

# A key token: (byte, 0) for a non-digit byte, (ord("0"), number) for a digit
# run. Non-digit bytes are never in 0x30-0x39, so a digit run compares with a
# non-digit byte exactly as its first digit would, and two runs numerically.
Token = tuple[int, int]


def _is_digit(byte: int) -> bool:
    return _ZERO <= byte <= _NINE


def version_key(name: str) -> tuple[Token, ...]:
    """A sort key such that ``version_key(a) < version_key(b)`` iff ``a`` sorts first."""
    data = name.encode("utf-8", errors="surrogateescape")
    tokens: list[Token] = []
    i = 0
    while i < len(data):
        if _is_digit(data[i]):
            end = i
            while end < len(data) and _is_digit(data[end]):
                end += 1
            tokens.append((_ZERO, int(data[i:end])))
            i = end
        else:
            tokens.append((data[i], 0))
            i += 1
    return tuple(tokens)


def version_compare(a: str, b: str) -> int:
    """-1, 0 or 1 as ``a`` sorts before, equal to, or after ``b``."""
    key_a, key_b = version_key(a), version_key(b)
    return (key_a > key_b) - (key_a < key_b)


def version_less(a: str, b: str) -> bool:
    """True if ``a`` sorts strictly before ``b`` (Go ``verstr.Less``)."""
    return version_key(a) < version_key(b)


def sorted_versions(names: Iterable[str]) -> list[str]:
    """``names`` in version-string order (stable for names that compare equal)."""
    return sorted(names, key=version_key)
