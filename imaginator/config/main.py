"""The main configuration (``-configurationUrl``, usually ``conf.json``), typed.

Parsing is a pure function of the document's bytes; ``load_main_config`` adds
the fetching of the document and of the per-stream filter/tags/triggers URLs.

Every field is checked for its type when the document is read, so a mistake
stops start-up with a message naming the file and the key path, e.g.
``conf.json: PackagerTypes.deb.ListCommand.SizeMultiplier: expected a
non-negative integer, got "x"``. Unknown fields are ignored, as in Go.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from imaginator.config.environment import environment_of
from imaginator.config.expand import expand, expand_opportunistic
from imaginator.config.fields import show_value
from imaginator.config.publish import PublishConfig, PublishConfigError, parse_publish, resolve
from imaginator.config.urls import redact_url, resolve_url
from imaginator.goformats.jsonc import ConfigError
from imaginator.goformats.jsonc import loads as jsonc_loads
from imaginator.image.filter import Filter, FilterError, parse_filter_lines
from imaginator.image.triggers import Trigger, TriggersError, parse_triggers

__all__ = [
    "BootstrapStream",
    "CacheConfig",
    "ConfigError",
    "FastPaths",
    "ListCommand",
    "MainConfig",
    "Owners",
    "PackageCache",
    "PackagerType",
    "QuickLink",
    "load_main_config",
    "parse_main_config",
]


@dataclass(frozen=True)
class ListCommand:
    """How to list installed packages: argv, and the factor turning sizes into bytes."""

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
    #: Ours (Go ignores it): run after ``UpdateCommand`` on a stream's latest image,
    #: it prints what an upgrade would change; no output and exit status 0 means
    #: nothing (see ``FastPaths.SkipUnchangedBuilds``).
    pending_upgrades_command: tuple[str, ...] = ()


@dataclass(frozen=True)
class Owners:
    """Owner groups and users stored in the images of a stream."""

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
    #: Plain (not secret) variables: for expanding the command, and in its environment.
    variables: Mapping[str, str] = field(default_factory=dict)
    #: Where new images are pushed (``config.publish``); ``None``: not published.
    publish: PublishConfig | None = None


@dataclass(frozen=True)
class CacheConfig:
    """The optional per-stream build cache (host directory, mount point, byte limit)."""

    base_directory: str = ""
    mount_point: str = ""
    size_limit: int = 0


@dataclass(frozen=True)
class PackageCache:
    """A host directory shared by all builds, mounted read-write at ``mount_point``
    during the package steps (update, upgrade, install) of manifest builds
    whose root has that directory; trimmed to ``size_limit`` bytes (0: no limit).
    With ``keep_in_root`` the root gets a copy of it after those steps (apt's
    lists, which later steps may need)."""

    mount_point: str
    directory: str = ""  # empty: <stateDir>/package-cache
    size_limit: int = 0
    keep_in_root: bool = False


@dataclass(frozen=True)
class FastPaths:
    """Our shortcuts, each with its switch (``FastPaths`` in conf.json; Go ignores it)."""

    #: Build commands run with fsync and friends turned into no-ops (seccomp).
    no_fsync_in_builds: bool = True
    #: A bootstrap build's own tree becomes its image's source-tree cache entry.
    reuse_bootstrap_trees: bool = True
    #: The rebuild cycle skips streams where nothing could change.
    skip_unchanged_builds: bool = False
    #: Shared package download caches (e.g. apt's archives).
    package_caches: tuple[PackageCache, ...] = ()


@dataclass(frozen=True)
class QuickLink:
    """A link on the relationships page: ``url`` is appended to ``/showDirectedGraph``."""

    name: str
    url: str


@dataclass(frozen=True)
class MainConfig:
    """The whole main configuration; ``source`` is where it was read from."""

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
    fast_paths: FastPaths = field(default_factory=FastPaths)


# ------------------------------------------------------------ value readers


class _Invalid(Exception):
    """A bad value at a key path; turned into a ConfigError naming the file."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _object(value: Any, path: str) -> dict[str, Any]:
    """A JSON object (``null`` reads as empty, as Go leaves the zero value)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _Invalid(path, f"expected an object, got {show_value(value)}")
    return value


def _string(value: Any, path: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _Invalid(path, f"expected a string, got {show_value(value)}")
    return value


def _string_list(value: Any, path: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise _Invalid(path, f"expected a list of strings, got {show_value(value)}")
    return tuple(_string(item, _join(path, i)) for i, item in enumerate(value))


def _string_map(value: Any, path: str) -> dict[str, str]:
    return {key: _string(item, _join(path, key)) for key, item in _object(value, path).items()}


def _uint(value: Any, path: str) -> int:
    """A non-negative JSON integer (Go ``uint``: no fractions, no strings)."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _Invalid(path, f"expected a non-negative integer, got {show_value(value)}")
    return value


def _bool(value: Any, path: str, default: bool) -> bool:
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _Invalid(path, f"expected true or false, got {show_value(value)}")
    return value


def _absolute_path(value: Any, path: str, *, required: bool) -> str:
    text = _string(value, path)
    if (text or required) and not text.startswith("/"):
        raise _Invalid(path, f"expected an absolute path, got {show_value(value)}")
    return text


def _filter_lines(value: Any, path: str) -> tuple[str, ...]:
    """Path expressions, each compiled; empty lines are dropped as Go's filter.New does."""
    lines = _string_list(value, path)
    for i, line in enumerate(lines):
        if line == "":
            continue
        try:
            Filter((line,))
        except FilterError as exc:
            raise _Invalid(_join(path, i), str(exc)) from None
    return tuple(line for line in lines if line != "")


# ------------------------------------------------------------------ sections


def _packager_type(name: str, value: Any, path: str) -> PackagerType:
    obj = _object(value, path)
    list_obj = _object(obj.get("ListCommand"), _join(path, "ListCommand"))
    multiplier_path = _join(_join(path, "ListCommand"), "SizeMultiplier")
    multiplier = _uint(list_obj.get("SizeMultiplier"), multiplier_path)
    return PackagerType(
        name=name,
        clean_command=_string_list(obj.get("CleanCommand"), _join(path, "CleanCommand")),
        clean_patterns=_filter_lines(obj.get("CleanPatterns"), _join(path, "CleanPatterns")),
        install_command=_string_list(obj.get("InstallCommand"), _join(path, "InstallCommand")),
        list_command=ListCommand(
            arg_list=_string_list(list_obj.get("ArgList"), _join(path, "ListCommand.ArgList")),
            size_multiplier=max(multiplier, 1),
        ),
        remove_command=_string_list(obj.get("RemoveCommand"), _join(path, "RemoveCommand")),
        update_command=_string_list(obj.get("UpdateCommand"), _join(path, "UpdateCommand")),
        upgrade_command=_string_list(obj.get("UpgradeCommand"), _join(path, "UpgradeCommand")),
        verbatim=_string_list(obj.get("Verbatim"), _join(path, "Verbatim")),
        pending_upgrades_command=_string_list(
            obj.get("PendingUpgradesCommand"), _join(path, "PendingUpgradesCommand")
        ),
    )


def _owners(value: Any, path: str) -> Owners:
    obj = _object(value, path)
    return Owners(
        groups=_string_list(obj.get("Groups"), _join(path, "Groups")),
        users=_string_list(obj.get("Users"), _join(path, "Users")),
    )


def _bootstrap_stream(
    name: str, value: Any, path: str, arch_lookup: Callable[[str], str | None]
) -> BootstrapStream:
    obj = _object(value, path)
    command = _string_list(obj.get("BootstrapCommand"), _join(path, "BootstrapCommand"))
    stream = BootstrapStream(
        name=name,
        bootstrap_command=tuple(expand_opportunistic(arg, arch_lookup) for arg in command),
        filter_lines=_filter_lines(obj.get("FilterLines"), _join(path, "FilterLines")),
        image_filter_url=_string(obj.get("ImageFilterUrl"), _join(path, "ImageFilterUrl")),
        image_tags_url=_string(obj.get("ImageTagsUrl"), _join(path, "ImageTagsUrl")),
        image_triggers_url=_string(obj.get("ImageTriggersUrl"), _join(path, "ImageTriggersUrl")),
        owners=_owners(obj.get("Owners"), _join(path, "Owners")),
        packager_type=_string(obj.get("PackagerType"), _join(path, "PackagerType")),
        variables=_string_map(obj.get("Variables"), _join(path, "Variables")),
    )
    publish_path = _join(path, "Publish")
    try:
        publish = parse_publish(obj.get("Publish"), publish_path)
        if publish is None:
            return stream
        environment = environment_of(name, stream.variables, arch_lookup("ARCH") or "")
        resolve(publish, environment.get, publish_path)
    except PublishConfigError as exc:
        raise _Invalid(exc.path, exc.message) from None
    return dataclasses.replace(stream, publish=publish)


def _bootstrap_streams(
    value: Any, packager_types: Mapping[str, PackagerType], arch: str
) -> dict[str, BootstrapStream]:
    """Streams keyed by their ``$ARCH``-expanded names; errors use the original keys."""
    path = "BootstrapStreams"
    arch_lookup = {"ARCH": arch}.get
    streams: dict[str, BootstrapStream] = {}
    for key, stream_value in _object(value, path).items():
        stream_path = _join(path, key)
        name = expand(key, arch_lookup)
        if name in streams:
            raise _Invalid(path, f"duplicate bootstrap stream: {name}")
        stream = _bootstrap_stream(name, stream_value, stream_path, arch_lookup)
        if stream.packager_type not in packager_types:
            raise _Invalid(
                _join(stream_path, "PackagerType"),
                f"packager type {show_value(stream.packager_type)} unknown",
            )
        streams[name] = stream
    return dict(sorted(streams.items()))


def _cache(value: Any, path: str) -> CacheConfig | None:
    if value is None:
        return None
    obj = _object(value, path)
    return CacheConfig(
        base_directory=_string(obj.get("BaseDirectory"), _join(path, "BaseDirectory")),
        mount_point=_string(obj.get("MountPoint"), _join(path, "MountPoint")),
        size_limit=_uint(obj.get("SizeLimit"), _join(path, "SizeLimit")),
    )


def _package_caches(value: Any, path: str) -> tuple[PackageCache, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise _Invalid(path, f"expected a list of objects, got {show_value(value)}")
    caches = []
    for i, item in enumerate(value):
        item_path = _join(path, i)
        obj = _object(item, item_path)
        mount_point = _absolute_path(
            obj.get("MountPoint"), _join(item_path, "MountPoint"), required=True
        )
        if mount_point.rstrip("/") == "" or ".." in mount_point.split("/"):
            raise _Invalid(_join(item_path, "MountPoint"), f"not usable: {show_value(mount_point)}")
        caches.append(
            PackageCache(
                mount_point=mount_point,
                directory=_absolute_path(
                    obj.get("Directory"), _join(item_path, "Directory"), required=False
                ),
                size_limit=_uint(obj.get("SizeLimit"), _join(item_path, "SizeLimit")),
                keep_in_root=_bool(
                    obj.get("KeepInRoot"), _join(item_path, "KeepInRoot"), default=False
                ),
            )
        )
    return tuple(caches)


def _fast_paths(value: Any, path: str) -> FastPaths:
    obj = _object(value, path)
    default = FastPaths()
    return FastPaths(
        no_fsync_in_builds=_bool(
            obj.get("NoFsyncInBuilds"), _join(path, "NoFsyncInBuilds"), default.no_fsync_in_builds
        ),
        reuse_bootstrap_trees=_bool(
            obj.get("ReuseBootstrapTrees"),
            _join(path, "ReuseBootstrapTrees"),
            default.reuse_bootstrap_trees,
        ),
        skip_unchanged_builds=_bool(
            obj.get("SkipUnchangedBuilds"),
            _join(path, "SkipUnchangedBuilds"),
            default.skip_unchanged_builds,
        ),
        package_caches=_package_caches(obj.get("PackageCaches"), _join(path, "PackageCaches")),
    )


def _quick_links(value: Any, path: str) -> tuple[QuickLink, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise _Invalid(path, f"expected a list of objects, got {show_value(value)}")
    links = []
    for i, item in enumerate(value):
        item_path = _join(path, i)
        obj = _object(item, item_path)
        links.append(
            QuickLink(
                name=_string(obj.get("Name"), _join(item_path, "Name")),
                url=_string(obj.get("URL"), _join(item_path, "URL")),
            )
        )
    return tuple(links)


def _main_config(document: Any, source: str, arch: str) -> MainConfig:
    top = _object(document, "(top level)")
    packager_types = {
        name: _packager_type(name, value, _join("PackagerTypes", name))
        for name, value in _object(top.get("PackagerTypes"), "PackagerTypes").items()
    }
    arch_lookup = {"ARCH": arch}.get
    auto_rebuild = _string_list(top.get("ImageStreamsToAutoRebuild"), "ImageStreamsToAutoRebuild")
    return MainConfig(
        source=source,
        bind_mounts=_string_list(top.get("BindMounts"), "BindMounts"),
        bootstrap_streams=_bootstrap_streams(top.get("BootstrapStreams"), packager_types, arch),
        cache=_cache(top.get("Cache"), "Cache"),
        image_streams_check_interval=_uint(
            top.get("ImageStreamsCheckInterval"), "ImageStreamsCheckInterval"
        ),
        image_streams_to_auto_rebuild=tuple(
            expand_opportunistic(name, arch_lookup) for name in auto_rebuild
        ),
        image_streams_url=_string(top.get("ImageStreamsUrl"), "ImageStreamsUrl"),
        mtimes_copy_filter_lines=_filter_lines(
            top.get("MtimesCopyFilterLines"), "MtimesCopyFilterLines"
        ),
        packager_types=packager_types,
        relationships_quick_links=_quick_links(
            top.get("RelationshipsQuickLinks"), "RelationshipsQuickLinks"
        ),
        fast_paths=_fast_paths(top.get("FastPaths"), "FastPaths"),
    )


def parse_main_config(data: bytes, source: str, arch: str) -> MainConfig:
    """Parse and validate a main configuration document.

    ``source`` names the document in errors; ``arch`` is the GOARCH name that
    ``$ARCH`` expands to. Raises ``ConfigError`` naming the file and key path.
    """
    document = jsonc_loads(data, source)
    try:
        return _main_config(document, source, arch)
    except _Invalid as exc:
        raise ConfigError(f"{source}: {exc}") from None


# ------------------------------------------------------------------ loading

Fetch = Callable[[str], Awaitable[bytes]]


async def _fetch(fetch: Fetch, url: str, where: str) -> bytes:
    try:
        return await fetch(url)
    except Exception as exc:
        raise ConfigError(f"{where}: {redact_url(url)}: {exc}") from None


def _parse_tags(data: bytes, url: str, where: str) -> dict[str, str]:
    document = jsonc_loads(data, f"{where}: {url}")
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise ConfigError(f"{where}: {url}: expected a JSON object, got {show_value(document)}")
    for key, value in document.items():
        if not isinstance(value, str):
            raise ConfigError(f"{where}: {url}: {key}: expected a string, got {show_value(value)}")
    return dict(document)


def _parse_image_filter(data: bytes, url: str, where: str) -> tuple[str, ...]:
    text = data.decode("utf-8", errors="replace")
    lines = tuple(parse_filter_lines(text))
    try:
        Filter(lines)
    except FilterError as exc:
        raise ConfigError(f"{where}: {url}: {exc}") from None
    return lines


async def _load_stream_urls(stream: BootstrapStream, fetch: Fetch, source: str) -> BootstrapStream:
    """Fill in the image filter, tags and triggers a bootstrap stream's URLs name."""
    where = f"{source}: {_join('BootstrapStreams', stream.name)}"
    changes: dict[str, Any] = {}
    if stream.image_filter_url:
        url, here = stream.image_filter_url, f"{where}.ImageFilterUrl"
        data = await _fetch(fetch, url, here)
        changes["image_filter"] = _parse_image_filter(data, redact_url(url), here)
    if stream.image_tags_url:
        url, here = stream.image_tags_url, f"{where}.ImageTagsUrl"
        data = await _fetch(fetch, url, here)
        changes["image_tags"] = _parse_tags(data, redact_url(url), here)
    if stream.image_triggers_url:
        url, here = stream.image_triggers_url, f"{where}.ImageTriggersUrl"
        data = await _fetch(fetch, url, here)
        try:
            changes["image_triggers"] = parse_triggers(data, redact_url(url))
        except TriggersError as exc:
            raise ConfigError(f"{here}: {exc}") from None
    return dataclasses.replace(stream, **changes) if changes else stream


async def load_main_config(url: str, fetch: Fetch, arch: str) -> MainConfig:
    """Fetch, parse and complete the main configuration at ``url``.

    ``fetch`` is an async ``fetch(url) -> bytes`` (normally
    ``imaginator.sources.documents.fetch_url`` bound to the reactor and thread
    pool). The per-stream ``ImageFilterUrl``, ``ImageTagsUrl`` and
    ``ImageTriggersUrl`` documents are read too; any failure is a
    ``ConfigError`` naming the stream key and the URL.
    """
    source = redact_url(url)
    try:
        data = await fetch(url)
    except Exception as exc:
        raise ConfigError(f"error reading configuration from: {source}: {exc}") from None
    config = parse_main_config(data, source, arch)
    streams = {}
    for name, stream in config.bootstrap_streams.items():
        stream = dataclasses.replace(
            stream,
            image_filter_url=resolve_url(url, stream.image_filter_url),
            image_tags_url=resolve_url(url, stream.image_tags_url),
            image_triggers_url=resolve_url(url, stream.image_triggers_url),
        )
        streams[name] = await _load_stream_urls(stream, fetch, source)
    return dataclasses.replace(
        config,
        bootstrap_streams=streams,
        image_streams_url=resolve_url(url, config.image_streams_url),
    )
