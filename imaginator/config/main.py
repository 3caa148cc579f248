"""The main configuration (``-configurationUrl``, usually ``conf.json``), typed.

Parsing is a pure function of the document's bytes; ``load_main_config`` adds
the fetching of the document and of the per-stream filter/tags/triggers URLs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from imaginator.image.triggers import Trigger


class ConfigError(Exception):
    """A configuration problem; the message names the file and the key path."""


@dataclass(frozen=True)
class ListCommand:
    arg_list: tuple[str, ...] = ()
    size_multiplier: int = 1


@dataclass(frozen=True)
class PackagerType:
    """How to drive a distribution's package manager (one ``PackagerTypes`` entry)."""

    name: str
    clean_command: tuple[str, ...] = ()
    clean_patterns: tuple[str, ...] = ()
    install_command: tuple[str, ...] = ()
    list_command: ListCommand = field(default_factory=ListCommand)
    remove_command: tuple[str, ...] = ()
    update_command: tuple[str, ...] = ()
    upgrade_command: tuple[str, ...] = ()
    verbatim: tuple[str, ...] = ()


@dataclass(frozen=True)
class Owners:
    groups: tuple[str, ...] = ()
    users: tuple[str, ...] = ()


@dataclass(frozen=True)
class BootstrapStream:
    """One ``BootstrapStreams`` entry, its name with ``$ARCH`` expanded.

    ``image_filter``, ``image_tags`` and ``image_triggers`` hold what was read
    from the three URLs at load time (``None``/empty when the URL is unset).
    """

    name: str
    bootstrap_command: tuple[str, ...] = ()
    filter_lines: tuple[str, ...] = ()
    image_filter_url: str = ""
    image_tags_url: str = ""
    image_triggers_url: str = ""
    owners: Owners = field(default_factory=Owners)
    packager_type: str = ""
    image_filter: tuple[str, ...] | None = None
    image_tags: Mapping[str, str] = field(default_factory=dict)
    image_triggers: tuple[Trigger, ...] | None = None


@dataclass(frozen=True)
class CacheConfig:
    base_directory: str = ""
    mount_point: str = ""
    size_limit: int = 0


@dataclass(frozen=True)
class QuickLink:
    name: str
    url: str


@dataclass(frozen=True)
class MainConfig:
    source: str = ""
    bind_mounts: tuple[str, ...] = ()
    bootstrap_streams: Mapping[str, BootstrapStream] = field(default_factory=dict)
    cache: CacheConfig | None = None
    image_streams_check_interval: int = 0
    image_streams_to_auto_rebuild: tuple[str, ...] = ()
    image_streams_url: str = ""
    mtimes_copy_filter_lines: tuple[str, ...] = ()
    packager_types: Mapping[str, PackagerType] = field(default_factory=dict)
    relationships_quick_links: tuple[QuickLink, ...] = ()
