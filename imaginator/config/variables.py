"""The secret variables file (``-variablesFile``) and redaction of its values.

The file is a JSON object of strings (what the Go imaginator reads, comment
lines allowed) or ``NAME=Value`` lines (what its README describes); both are
accepted. Every value is a secret: ``make_redactor`` returns the function that
removes them from any text leaving the daemon.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping

from imaginator.config.main import ConfigError
from imaginator.goformats.jsonc import loads as jsonc_loads
from imaginator.runtime.redact import REDACTED, Redactor

__all__ = ["REDACTED", "make_redactor", "parse_variables"]

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def parse_variables(data: bytes, source: str) -> dict[str, str]:
    """Parse a variables file; errors name the file and the line or key (never a value)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{source}: not UTF-8 text") from None
    stripped = "\n".join(
        line for line in text.splitlines() if not line.lstrip().startswith(("#", "//", "!"))
    ).strip()
    if stripped.startswith("{"):
        return _parse_json(text, source)
    return _parse_lines(text, source)


def _parse_json(text: str, source: str) -> dict[str, str]:
    try:
        document = jsonc_loads(text, source)
    except ConfigError:
        raise
    except json.JSONDecodeError as exc:  # pragma: no cover - jsonc raises ConfigError
        raise ConfigError(f"{source}: {exc}") from None
    if not isinstance(document, dict):
        raise ConfigError(f"{source}: expected a JSON object of strings")
    result = {}
    for name, value in document.items():
        if not isinstance(value, str):
            raise ConfigError(f"{source}: {name}: expected a string value")
        result[name] = value
    return result


def _parse_lines(text: str, source: str) -> dict[str, str]:
    result = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, has_value, value = line.partition("=")
        name = name.strip()
        if not has_value or not _NAME.match(name):
            raise ConfigError(f"{source}: line {number}: expected NAME=Value")
        result[name] = value
    return result


def make_redactor(secrets: Mapping[str, str]) -> Callable[[str], str]:
    """A function replacing every non-empty secret value in a text by ``[REDACTED]``.

    A secret containing another is removed whole, and overlapping secrets
    leave nothing of either (see :class:`~imaginator.runtime.redact.Redactor`).
    """
    return Redactor(secrets.values())
