"""Go's ``encoding/json``, byte for byte: the one place that writes it.

Everything the daemon sends or stores as JSON that a Go program reads or
writes too (image records, SRPC messages, ``buildInfo`` files, builder-tool's
output, the pages' configuration dumps) goes through :func:`marshal` (or
:func:`marshal_text`), so the Go rules live here once (reference §1.6, §1.9):

* mappings keep their order (build dicts in Go's struct-field order, or sorted
  for Go maps); integer keys become decimal strings;
* ``bytes`` are standard base64 with padding, like Go's ``[]byte``;
* ``<``, ``>``, ``&``, U+2028 and U+2029 are escaped (Go's HTML-safe output);
* invalid UTF-8 (a lone surrogate, as ``surrogateescape`` decoding leaves it)
  is written as the escape ``\\ufffd``, one per bad byte, as Go does;
* floats use Go's shortest round-trip formatting (``1``, ``1e-7``, ``1e+21``);
  NaN and the infinities are refused;
* ``indent`` gives ``json.MarshalIndent(v, "", indent)``: one element per line,
  ``"key": value``, and ``{}``/``[]`` for empty containers.

Two encoders produce the same text: a small reference encoder written here,
and, for values made only of dicts, lists, tuples, strings, integers, booleans,
``None`` and bytes (image records, almost every RPC message), the standard
library's C encoder, about four times faster on a large image. The tests hold
the two to each other.

:func:`decode_json` is the strict decoder of the SRPC JSON coder.
"""

from __future__ import annotations

import base64
import decimal
import json
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["JsonDecodeError", "decode_json", "go_float", "marshal", "marshal_text"]

_HTML_ESCAPES = {
    ord("<"): "\\u003c",
    ord(">"): "\\u003e",
    ord("&"): "\\u0026",
    0x2028: "\\u2028",
    0x2029: "\\u2029",
}
_SURROGATE = re.compile("[\ud800-\udfff]")
_quote_string: Callable[[str], str] = json.encoder.encode_basestring
_BYTES_LIKE = (bytes, bytearray, memoryview)


class JsonDecodeError(ValueError):
    """Bytes that are not one JSON value; ``text`` is what a peer is told."""

    def __init__(self, text: str, position: int = 0) -> None:
        super().__init__(text)
        self.text = text
        self.position = position


# ===================================================================== encoding


def marshal(value: Any, *, indent: str | None = None) -> bytes:
    """``value`` as Go's ``json.Marshal`` (or ``json.MarshalIndent`` with
    ``indent``) writes it, without a trailing LF.

    Raises ``TypeError`` for what Go could not have held (sets, ``None`` or
    float keys, other objects) and ``ValueError`` for NaN and infinities.
    """
    text = marshal_text(value, indent=indent)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATE.sub(lambda _match: "\\ufffd", text).encode("utf-8")


def marshal_text(value: Any, *, indent: str | None = None) -> str:
    """:func:`marshal` as text, except that lone surrogates are left in place.

    For callers that keep names that are not UTF-8 byte-exact: they encode
    the text with ``surrogateescape`` (the embedded store's image records).
    """
    if indent is None and _plain(value):
        text = _C_ENCODER.encode(value)
    else:
        parts: list[str] = []
        _encode_value(value, parts, None if indent is None else "\n", indent or "")
        text = "".join(parts)
    return text.translate(_HTML_ESCAPES)


def go_float(value: float) -> str:
    """A float64 as Go's ``encoding/json`` formats it (shortest round-trip)."""
    if math.isnan(value) or math.isinf(value):
        raise ValueError(f"json: unsupported value: {value!r}")
    magnitude = abs(value)
    if magnitude != 0 and (magnitude < 1e-6 or magnitude >= 1e21):
        text = repr(value)  # exponent form, e.g. 1e-07 or 1.5e+21
        mantissa, _, exponent = text.partition("e")
        sign, digits = exponent[0], exponent[1:].lstrip("0") or "0"
        if sign == "+" and len(digits) < 2:
            digits = digits.rjust(2, "0")
        return f"{mantissa}e{sign}{digits}"
    return format(decimal.Decimal(repr(value)).normalize(), "f")


# ----------------------------------------------------------- the reference encoder


def _encode_value(value: Any, parts: list[str], newline: str | None, indent: str) -> None:
    """Append ``value``'s JSON to ``parts``; ``newline`` is None for compact
    output, else LF plus the indentation of the current depth."""
    if isinstance(value, str):
        parts.append(_quote_string(value))
    elif value is None:
        parts.append("null")
    elif value is True:
        parts.append("true")
    elif value is False:
        parts.append("false")
    elif isinstance(value, int):
        parts.append(int.__repr__(value))
    elif isinstance(value, float):
        parts.append(go_float(value))
    elif isinstance(value, Mapping):
        _encode_object(value, parts, newline, indent)
    elif isinstance(value, list | tuple):
        _encode_array(value, parts, newline, indent)
    elif isinstance(value, _BYTES_LIKE):
        parts.append('"' + base64.b64encode(value).decode("ascii") + '"')
    else:
        raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def _encode_object(
    value: Mapping[Any, Any], parts: list[str], newline: str | None, indent: str
) -> None:
    inner = None if newline is None else newline + indent
    parts.append("{")
    first = True
    for key, item in value.items():
        if isinstance(key, bool) or not isinstance(key, str | int):
            raise TypeError(f"cannot encode a {type(key).__name__} key as JSON")
        if not first:
            parts.append(",")
        first = False
        if inner is not None:
            parts.append(inner)
        parts.append(_quote_string(key if isinstance(key, str) else int.__repr__(key)))
        parts.append(":" if inner is None else ": ")
        _encode_value(item, parts, inner, indent)
    if newline is not None and not first:
        parts.append(newline)
    parts.append("}")


def _encode_array(
    value: list[Any] | tuple[Any, ...], parts: list[str], newline: str | None, indent: str
) -> None:
    inner = None if newline is None else newline + indent
    parts.append("[")
    for index, item in enumerate(value):
        if index:
            parts.append(",")
        if inner is not None:
            parts.append(inner)
        _encode_value(item, parts, inner, indent)
    if newline is not None and value:
        parts.append(newline)
    parts.append("]")


# ----------------------------------------------------------- the fast path


def _base64_default(value: Any) -> str:
    if isinstance(value, _BYTES_LIKE):
        return base64.b64encode(value).decode("ascii")
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")  # _plain admits no other


# The C encoder writes what the reference encoder writes for plain values:
# the same string quoting (ensure_ascii=False), separators and integers.
_C_ENCODER = json.JSONEncoder(
    ensure_ascii=False,
    separators=(",", ":"),
    allow_nan=False,
    check_circular=False,
    default=_base64_default,
)


def _plain(value: Any) -> bool:
    """Whether the C encoder writes ``value`` exactly as the reference encoder:
    no floats (Python formats them differently), no mapping that is not a
    dict, no key but ``str`` and ``int``. Exact types are tested first: this
    walk costs a fifth of the encoding it saves."""
    kind = type(value)
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str and not _plain_key(key):
                return False
            kind = type(item)
            if kind is str or kind is int or kind is bool or item is None:
                continue
            if not _plain(item):
                return False
        return True
    if kind is list or kind is tuple:
        for item in value:
            kind = type(item)
            if kind is str or kind is int or kind is bool or item is None:
                continue
            if not _plain(item):
                return False
        return True
    if kind is str or kind is int or kind is bool or value is None:
        return True
    # Container subclasses (named tuples, ordered dicts) take the reference
    # path; str and int subclasses (enums) are written by both as their value.
    scalar = isinstance(value, (str, int, *_BYTES_LIKE))
    return scalar and not isinstance(value, dict | list | tuple)


def _plain_key(key: Any) -> bool:
    return isinstance(key, str) or (isinstance(key, int) and not isinstance(key, bool))


# ===================================================================== decoding


def decode_json(raw: bytes) -> Any:
    """One complete JSON value, strictly: no NaN or Infinity, nothing after it.

    Invalid UTF-8 becomes U+FFFD, as in Go. Raises :class:`JsonDecodeError`.
    """
    text = raw.decode("utf-8", "replace")
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise JsonDecodeError(f"invalid JSON: {exc.msg} at offset {exc.pos}", exc.pos) from None
    except ValueError as exc:
        raise JsonDecodeError(str(exc)) from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"invalid character {name[0]!r} looking for beginning of value")
