"""Reading typed fields out of decoded JSON the way Go's ``encoding/json`` does.

Field names match case-insensitively (the last matching key wins), ``null``
means "absent", and a wrong type is an error naming where it was found. The
error class is the caller's (``ConfigError`` for configuration files,
``ManifestError`` for manifests), so messages read the same everywhere.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

_MISSING: Any = object()


def show_value(value: Any) -> str:
    """A bad value as JSON, shortened, for error messages."""
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


class FieldReader:
    """Typed accessors that raise ``error(f"{where}: expected …")`` on a mismatch."""

    def __init__(self, error: type[Exception]) -> None:
        self.error = error

    @staticmethod
    def get(obj: Mapping[str, Any], name: str) -> Any:
        """The value of struct field ``name`` (case-insensitive, last wins), or None."""
        value = _MISSING
        folded = name.casefold()
        for key, item in obj.items():
            if key == name or key.casefold() == folded:
                value = item
        return None if value is _MISSING else value

    def string(self, value: Any, where: str) -> str:
        if value is None:
            return ""
        if not isinstance(value, str):
            raise self.error(f"{where}: expected a string")
        return value

    def string_list(self, value: Any, where: str) -> tuple[str, ...]:
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str | None) for v in value):
            raise self.error(f"{where}: expected a list of strings")
        return tuple(v or "" for v in value)

    def object(self, value: Any, where: str) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.error(f"{where}: expected an object")
        return value

    def string_map(self, value: Any, where: str) -> dict[str, str]:
        if value is not None and not isinstance(value, dict):
            raise self.error(f"{where}: expected an object of strings")
        return {key: self.string(item, f"{where}.{key}") for key, item in (value or {}).items()}
