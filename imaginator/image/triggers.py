"""Image triggers: which services to restart when matching paths change.

A trigger names a service and the path expressions (filter-line semantics,
srpc-rpc-image-model.md §4.4) whose change should restart, reload or reboot.
Triggers come from a manifest's ``triggers``/``triggers.add`` file or a
bootstrap stream's ``ImageTriggersUrl`` (a bare JSON array, comment lines
allowed) and are stored in the image as ``{"Triggers": [...]}``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from imaginator.goformats.jsonc import ConfigError
from imaginator.goformats.jsonc import loads as jsonc_loads
from imaginator.image.filter import FilterError, compile_path_expression


@dataclass(frozen=True)
class Trigger:
    """One trigger: restart (or reload, or reboot for) ``service`` on a match."""

    match_lines: tuple[str, ...]
    service: str
    do_reboot: bool = False
    do_reload: bool = False
    high_impact: bool = False
    sort_name: str = ""


class TriggersError(ValueError):
    """Triggers that cannot be decoded or whose match lines do not compile."""


def _string(value: Any, path: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise TriggersError(f"{path}: expected a string, got {_describe(value)}")
    return value


def _boolean(value: Any, path: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise TriggersError(f"{path}: expected true or false, got {_describe(value)}")
    return value


def _describe(value: Any) -> str:
    """A short JSON rendering of a bad value for error messages."""
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 40 else text[:37] + "..."


def _match_lines(value: Any, path: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise TriggersError(f"{path}: expected a list of strings, got {_describe(value)}")
    lines = tuple(_string(item, f"{path}[{i}]") for i, item in enumerate(value))
    for i, line in enumerate(lines):
        try:
            compile_path_expression(line)
        except FilterError as exc:
            raise TriggersError(f"{path}[{i}]: {exc}") from None
    return lines


def _trigger_from_json(obj: Any, path: str) -> Trigger:
    """One trigger object; unknown keys ignored, null means the zero value."""
    if not isinstance(obj, dict):
        raise TriggersError(f"{path}: expected an object, got {_describe(obj)}")
    return Trigger(
        match_lines=_match_lines(obj.get("MatchLines"), f"{path}.MatchLines"),
        service=_string(obj.get("Service"), f"{path}.Service"),
        do_reboot=_boolean(obj.get("DoReboot"), f"{path}.DoReboot"),
        do_reload=_boolean(obj.get("DoReload"), f"{path}.DoReload"),
        high_impact=_boolean(obj.get("HighImpact"), f"{path}.HighImpact"),
        sort_name=_string(obj.get("SortName"), f"{path}.SortName"),
    )


def _triggers_from_list(items: Any, path: str) -> tuple[Trigger, ...]:
    if items is None:
        return ()
    if not isinstance(items, list):
        raise TriggersError(f"{path or 'triggers'}: expected a list, got {_describe(items)}")
    return tuple(_trigger_from_json(item, f"{path}[{i}]") for i, item in enumerate(items))


def parse_triggers(data: bytes | str, source: str) -> tuple[Trigger, ...]:
    """Decode a triggers file (a bare JSON array of trigger objects).

    Every error is a ``TriggersError`` starting ``error decoding triggers``
    and naming ``source`` and, for bad values, the element's key path.
    """
    prefix = f"error decoding triggers {source}"
    try:
        return _triggers_from_list(jsonc_loads(data, source), "")
    except ConfigError as exc:
        raise TriggersError(f"error decoding triggers {exc}") from None
    except TriggersError as exc:
        raise TriggersError(f"{prefix}: {exc}") from None


def _trigger_to_json(trigger: Trigger) -> dict[str, Any]:
    item: dict[str, Any] = {
        "MatchLines": list(trigger.match_lines),
        "Service": trigger.service,
    }
    if trigger.sort_name:
        item["SortName"] = trigger.sort_name
    for key, value in (
        ("DoReboot", trigger.do_reboot),
        ("DoReload", trigger.do_reload),
        ("HighImpact", trigger.high_impact),
    ):
        if value:
            item[key] = True
    return item


def triggers_to_json(triggers: tuple[Trigger, ...] | None) -> dict[str, Any] | None:
    """The image-model form ``{"Triggers": [...]}``; ``None`` stays ``None``."""
    if triggers is None:
        return None
    return {"Triggers": [_trigger_to_json(t) for t in triggers]}


def triggers_from_json(obj: Any) -> tuple[Trigger, ...] | None:
    """Inverse of ``triggers_to_json`` (raises ``TriggersError`` on bad input)."""
    if obj is None:
        return None
    if not isinstance(obj, dict):
        raise TriggersError(f"Triggers: expected an object, got {_describe(obj)}")
    return _triggers_from_list(obj.get("Triggers"), "Triggers")


def merge_triggers(
    old: tuple[Trigger, ...] | None, add: Iterable[Trigger]
) -> tuple[Trigger, ...] | None:
    """Merge ``add`` (a ``triggers.add`` file) onto ``old`` (the source image's).

    Triggers with the same (Service, DoReload) become one: match lines
    unioned and sorted, DoReboot and HighImpact OR-ed, SortName dropped. The
    result is sorted by Service, the DoReload variant first; empty -> None.
    """
    merged: dict[tuple[str, bool], tuple[set[str], bool, bool]] = {}
    for trigger in (*(old or ()), *add):
        key = (trigger.service, trigger.do_reload)
        lines, reboot, impact = merged.get(key, (set(), False, False))
        lines.update(trigger.match_lines)
        merged[key] = (lines, reboot or trigger.do_reboot, impact or trigger.high_impact)
    if not merged:
        return None
    return tuple(
        Trigger(
            match_lines=tuple(sorted(lines)),
            service=service,
            do_reboot=reboot,
            do_reload=reload,
            high_impact=impact,
        )
        for (service, reload), (lines, reboot, impact) in sorted(
            merged.items(), key=lambda kv: (kv[0][0], not kv[0][1])
        )
    )
