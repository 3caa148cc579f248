"""A stream's ``Publish`` setting: the registry its new images are pushed to.

Written in the image-streams document (manifest streams) or in ``conf.json``
(bootstrap streams), either as a reference string or as an object::

    "Publish": "registry.example:5000/images/apps-hello"
    "Publish": {"Reference": "registry.example:5000/images/apps-hello",
                "Tags": ["latest", "$ARCH"]}

``Reference`` is ``host[:port]/repository``: the registry's host always comes
first (there is no implicit Docker Hub) and it carries no tag or digest (each
image is pushed under its own tag plus ``Tags``). Both are expanded with the
stream environment (``config.environment``: the stream's ``Variables``,
``ARCH``, ``IMAGE_STREAM``, …), never with the variables file: a reference is
shown on the stream's page and in the daemon log, so it must not hold a
secret (credentials come from ``-registryCredentials``). Field names match
case-insensitively and unknown fields are ignored, as Go's ``encoding/json``
does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from imaginator.config.expand import Lookup, expand
from imaginator.config.fields import FieldReader, show_value
from imaginator.export.registry import RegistryError, parse_reference
from imaginator.goformats.jsonc import ConfigError

__all__ = ["PublishConfig", "PublishConfigError", "PublishTarget", "parse_publish", "resolve"]


@dataclass(frozen=True)
class PublishConfig:
    """The setting as written (variables not expanded yet).

    ``reference_key`` is the key path suffix errors about the reference name
    (``.Reference`` for the object form, empty for the string form).
    """

    reference: str
    tags: tuple[str, ...] = ()
    reference_key: str = field(default=".Reference", compare=False)


@dataclass(frozen=True)
class PublishTarget:
    """Where a stream's images go: ``registry/repository`` and the extra tags."""

    registry: str
    repository: str
    tags: tuple[str, ...] = ()

    def __str__(self) -> str:
        return f"{self.registry}/{self.repository}"


class PublishConfigError(ConfigError):
    """A bad ``Publish`` setting: ``path`` is the key path, ``message`` what is wrong."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


def parse_publish(value: Any, path: str) -> PublishConfig | None:
    """The ``Publish`` value at key path ``path``; ``None`` when absent or empty."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return PublishConfig(value, reference_key="")
    if not isinstance(value, dict):
        raise PublishConfigError(
            path, f"expected a registry reference or an object, got {show_value(value)}"
        )
    reference = FieldReader.get(value, "Reference")
    if not isinstance(reference, str) or not reference:
        raise PublishConfigError(
            f"{path}.Reference",
            f"expected a registry reference (host[:port]/repository), got {show_value(reference)}",
        )
    tags = FieldReader.get(value, "Tags")
    if tags is None:
        tags = []
    if not isinstance(tags, list):
        got = show_value(tags)
        raise PublishConfigError(f"{path}.Tags", f"expected a list of strings, got {got}")
    for index, tag in enumerate(tags):
        if not isinstance(tag, str):
            raise PublishConfigError(
                f"{path}.Tags[{index}]", f"expected a string, got {show_value(tag)}"
            )
    return PublishConfig(reference, tuple(tags))


def resolve(config: PublishConfig, lookup: Lookup, path: str) -> PublishTarget:
    """Expand ``config`` with ``lookup`` (the stream environment) and check it.

    Raises ``PublishConfigError`` naming ``path`` (the ``Publish`` key) and
    the part that is wrong.
    """
    where = f"{path}{config.reference_key}"
    text = expand(config.reference, lookup)
    first, slash, rest = text.partition("/")
    is_host = "." in first or ":" in first or first == "localhost" or first.startswith("[")
    if not slash or not rest or not is_host:
        got = show_value(text)
        raise PublishConfigError(
            where, f"expected host[:port]/repository (the registry's host first), got {got}"
        )
    if "@" in text:
        raise PublishConfigError(where, f"a digest cannot be pushed to, got {show_value(text)}")
    if ":" in rest.rsplit("/", 1)[-1]:
        raise PublishConfigError(
            where, f"no tag in the reference (put tags in Tags), got {show_value(text)}"
        )
    try:
        reference = parse_reference(text)
    except RegistryError as exc:
        raise PublishConfigError(where, str(exc)) from None
    tags: list[str] = []
    for index, written in enumerate(config.tags):
        tag = expand(written, lookup)
        try:
            parse_reference(f"{reference.registry}/{reference.repository}:{tag}")
        except RegistryError:
            raise PublishConfigError(
                f"{path}.Tags[{index}]",
                f"bad tag {show_value(tag)} (letters, digits, '_', '.', '-'; at most 128)",
            ) from None
        if tag not in tags:
            tags.append(tag)
    return PublishTarget(reference.registry, reference.repository, tuple(tags))
