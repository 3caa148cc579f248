"""The image streams document (``ImageStreamsUrl``), typed, and the stream variables.

The document (reference §3.2) maps stream names to stream configurations in
``Streams`` and regular expressions to configurations in ``StreamPatterns``;
``$ARCH`` in the keys of both maps is expanded when the document is parsed.
Everything here is pure: fetching and watching the document is the loader's
job, and the variables file's secrets are passed in by the caller.

Field names are matched the way Go's ``encoding/json`` matches struct fields
(case-insensitively, the last matching key winning) and unknown fields are
ignored, so any document the Go imaginator reads is read the same way here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from imaginator.config.environment import environment_of
from imaginator.config.expand import expand
from imaginator.config.fields import FieldReader
from imaginator.config.main import ConfigError
from imaginator.config.publish import PublishConfig, parse_publish, resolve
from imaginator.goformats.jsonc import ConfigError as _JsoncError
from imaginator.goformats.jsonc import loads as jsonc_loads
from imaginator.image.filter import FilterError, compile_re2


@dataclass(frozen=True)
class StreamConfig:
    """One stream configuration object (reference §3.3)."""

    builder_groups: tuple[str, ...] = ()
    builder_users: tuple[str, ...] = ()
    manifest_url: str = ""
    manifest_directory: str = ""
    variables: Mapping[str, str] = field(default_factory=dict)
    #: Where new images are pushed (``config.publish``); ``None``: not published.
    publish: PublishConfig | None = None


@dataclass(frozen=True)
class StreamsDocument:
    """A parsed streams document.

    ``streams`` maps expanded stream names to their configuration;
    ``patterns`` holds ``(expanded key, compiled ^(key)$, configuration)`` in
    document order.
    """

    streams: Mapping[str, StreamConfig] = field(default_factory=dict)
    patterns: tuple[tuple[str, re.Pattern[str], StreamConfig], ...] = ()


# ------------------------------------------------------------ typed fields


_fields = FieldReader(ConfigError)
_get_field = _fields.get
_string = _fields.string
_string_list = _fields.string_list
_string_map = _fields.string_map
_object = _fields.object


def parse_stream_config(obj: Any, where: str) -> StreamConfig:
    """Decode one stream configuration; ``where`` prefixes error messages."""
    obj = _object(obj, where)
    return StreamConfig(
        builder_groups=_string_list(_get_field(obj, "BuilderGroups"), f"{where}.BuilderGroups"),
        builder_users=_string_list(_get_field(obj, "BuilderUsers"), f"{where}.BuilderUsers"),
        manifest_url=_string(_get_field(obj, "ManifestUrl"), f"{where}.ManifestUrl"),
        manifest_directory=_string(
            _get_field(obj, "ManifestDirectory"), f"{where}.ManifestDirectory"
        ),
        variables=_string_map(_get_field(obj, "Variables"), f"{where}.Variables"),
        publish=parse_publish(_get_field(obj, "Publish"), f"{where}.Publish"),
    )


# ---------------------------------------------------------------- document


def expand_key(key: str, arch: str) -> str:
    """A map key with ``$ARCH`` expanded; any other variable becomes empty."""
    return expand(key, {"ARCH": arch}.get)


def compile_pattern(key: str, where: str) -> re.Pattern[str]:
    """Compile a pattern key as the RE2 expression ``^(<key>)$``."""
    try:
        return compile_re2(f"^({key})$", key)
    except FilterError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _expanded_entries(
    section: Any, name: str, source: str, arch: str, duplicate: str
) -> Iterable[tuple[str, str, Any]]:
    """``(expanded key, error path, raw value)`` for each entry of one map section."""
    seen: set[str] = set()
    for key, value in _object(section, f"{source}: {name}").items():
        expanded = expand_key(key, arch)
        if expanded in seen:
            raise ConfigError(f"{source}: {duplicate}: {expanded}")
        seen.add(expanded)
        yield expanded, f"{source}: {name}.{key}", value


def parse_streams(data: bytes | str, source: str, arch: str) -> StreamsDocument:
    """Parse a streams document (comment lines allowed).

    ``source`` names the document in errors (``image-streams.json: Streams.
    apps/x.BuilderUsers: expected a list of strings``); ``arch`` is the value
    of ``$ARCH`` in the keys. Raises ``ConfigError``.
    """
    try:
        document = jsonc_loads(data, source)
    except _JsoncError as exc:
        raise ConfigError(str(exc)) from None
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise ConfigError(f"{source}: expected an object")
    streams: dict[str, StreamConfig] = {}
    for name, where, value in _expanded_entries(
        _get_field(document, "Streams"), "Streams", source, arch, "duplicate stream"
    ):
        config = streams[name] = parse_stream_config(value, where)
        if config.publish is not None:
            # A pattern's is checked when a stream it matches is published:
            # only then is the stream name in its environment known.
            environment = stream_environment(name, config, arch)
            resolve(config.publish, environment.get, f"{where}.Publish")
    patterns = tuple(
        (key, compile_pattern(key, where), parse_stream_config(value, where))
        for key, where, value in _expanded_entries(
            _get_field(document, "StreamPatterns"),
            "StreamPatterns",
            source,
            arch,
            "duplicate stream pattern",
        )
    )
    return StreamsDocument(streams=streams, patterns=patterns)


def lookup(
    doc: StreamsDocument, name: str, bootstrap_names: Collection[str] = ()
) -> StreamConfig | None:
    """The configuration of normal stream ``name``, or None.

    Bootstrap streams come first (None: not a normal stream), then
    ``Streams``, then the patterns; a pattern match returns that pattern's
    configuration. Raises ``ConfigError`` if more than one pattern matches.
    """
    if name in bootstrap_names:
        return None
    config = doc.streams.get(name)
    if config is not None:
        return config
    matches = [cfg for _key, regex, cfg in doc.patterns if regex.fullmatch(name)]
    if len(matches) > 1:
        raise ConfigError(f"multiple stream patterns match: {json.dumps(name, ensure_ascii=False)}")
    return matches[0] if matches else None


# --------------------------------------------------------------- variables


def stream_environment(stream: str, config: StreamConfig, arch: str) -> dict[str, str]:
    """The stream environment of reference §3.6 (see ``config.environment``).

    The stream's ``Variables``, each expanded where only ``IMAGE_STREAM`` is
    known, overridden by ``ARCH``, ``IMAGE_STREAM``,
    ``IMAGE_STREAM_DIRECTORY_NAME`` and ``IMAGE_STREAM_LEAF_NAME``.
    """
    return environment_of(stream, config.variables, arch)


def build_variables(
    stream_env: Mapping[str, str],
    request_variables: Mapping[str, str] | None,
    commit_id: str = "",
    requested_branch: str = "",
) -> dict[str, str]:
    """The build variables of reference §3.6.

    The stream environment with the request's non-empty values on top, plus
    ``MANIFEST_GIT_COMMIT_ID`` and ``REQUESTED_GIT_BRANCH`` when non-empty.
    """
    result = dict(stream_env)
    result.update((k, v) for k, v in (request_variables or {}).items() if v)
    if commit_id:
        result["MANIFEST_GIT_COMMIT_ID"] = commit_id
    if requested_branch:
        result["REQUESTED_GIT_BRANCH"] = requested_branch
    return result


def chained_lookup(*mappings: Mapping[str, str] | None) -> Callable[[str], str | None]:
    """A lookup taking each name from the first mapping that has it (even if empty)."""

    def get(name: str) -> str | None:
        for mapping in mappings:
            if mapping is not None and name in mapping:
                return mapping[name]
        return None

    return get


def manifest_location(
    stream: str,
    config: StreamConfig,
    request_variables: Mapping[str, str] | None,
    secret_variables: Mapping[str, str] | None,
    arch: str,
) -> tuple[str, str]:
    """``(ManifestUrl, ManifestDirectory)`` expanded for a build.

    Variables are looked up in the stream environment, then the request's
    variables, then the variables file (which is where secrets live, so the
    result must never be logged or shown).
    """
    get = chained_lookup(
        stream_environment(stream, config, arch), request_variables, secret_variables
    )
    return expand(config.manifest_url, get), expand(config.manifest_directory, get)


def public_manifest_location(stream: str, config: StreamConfig, arch: str) -> tuple[str, str]:
    """``(ManifestUrl, ManifestDirectory)`` expanded with the stream environment only.

    Safe to display: no request variables and no secrets.
    """
    get = stream_environment(stream, config, arch).get
    return expand(config.manifest_url, get), expand(config.manifest_directory, get)
