"""Image triggers: which services to restart when matching paths change."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Trigger:
    match_lines: tuple[str, ...]
    service: str
    do_reboot: bool = False
    do_reload: bool = False
    high_impact: bool = False
    sort_name: str = ""
