"""JSON with comment lines: the format of every JSON file the daemon reads.

The Go imaginator reads ``conf.json``, the streams file, manifests, tags,
triggers, owners and variables through a reader that drops whole lines whose
first non-blank characters (blank = space or tab) are ``#``, ``//`` or ``!``.
Trailing comments after a value are *not* comments. We blank those lines
rather than delete them so that the line numbers in syntax errors still point
into the original file.

``ConfigError`` lives here (the lowest configuration module) and is re-exported
by ``imaginator.config.main``, which is where callers import it from.
"""

from __future__ import annotations

import json
from typing import Any

_COMMENT_PREFIXES = ("#", "//", "!")


class ConfigError(Exception):
    """A configuration problem; the message names the file and the key path."""


def is_comment_line(line: str) -> bool:
    """True if ``line`` is a comment line (after leading spaces and tabs)."""
    return line.lstrip(" \t").startswith(_COMMENT_PREFIXES)


def strip_comment_lines(text: str) -> str:
    """Return ``text`` with every comment line emptied (line breaks kept).

    Lines are split on ``\\n`` only, as Go's reader does, so other Unicode
    line separators inside strings are left alone.
    """
    return "\n".join("" if is_comment_line(line) else line for line in text.split("\n"))


def _reject_constant(name: str) -> Any:
    # Python's json accepts NaN/Infinity; Go's encoding/json (and JSON) do not.
    raise ValueError(f"invalid JSON constant {name}")


def loads(data: bytes | str, source: str) -> Any:
    """Decode a JSON document that may contain comment lines.

    ``source`` names the document (file name or redacted URL) in errors, which
    are raised as ``ConfigError("<source>: line L column C: <reason>")``.
    Invalid UTF-8 is replaced, as Go's decoder does.
    """
    text = data.decode("utf-8", errors="replace") if isinstance(data, bytes) else data
    stripped = strip_comment_lines(text)
    try:
        return json.loads(stripped, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{source}: line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}") from None
