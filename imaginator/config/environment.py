"""The stream environment (reference §3.6): what a stream's own settings may use.

A stream's ``Variables``, each expanded where only ``IMAGE_STREAM`` is known,
overridden by ``ARCH``, ``IMAGE_STREAM``, ``IMAGE_STREAM_DIRECTORY_NAME`` and
``IMAGE_STREAM_LEAF_NAME``. Nothing here is secret: the variables file is not
part of it. Shared by manifest streams (``streams.stream_environment``) and by
the publishing settings of bootstrap and manifest streams.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping

from imaginator.config.expand import expand


def go_path_dir(name: str) -> str:
    """Go ``path.Dir``: everything before the last slash, cleaned (``.`` if none)."""
    head = name[: name.rfind("/") + 1]
    cleaned = posixpath.normpath(head) if head else "."
    return "/" + cleaned.lstrip("/") if cleaned.startswith("//") else cleaned


def go_path_base(name: str) -> str:
    """Go ``path.Base``: the last element, trailing slashes removed."""
    if name == "":
        return "."
    stripped = name.rstrip("/")
    if stripped == "":
        return "/"
    return stripped[stripped.rfind("/") + 1 :]


def environment_of(stream: str, variables: Mapping[str, str], arch: str) -> dict[str, str]:
    """The stream environment of ``stream`` with its plain ``variables``."""
    only_stream = {"IMAGE_STREAM": stream}.get
    env = {name: expand(value, only_stream) for name, value in variables.items()}
    env.update(
        ARCH=arch,
        IMAGE_STREAM=stream,
        IMAGE_STREAM_DIRECTORY_NAME=go_path_dir(stream),
        IMAGE_STREAM_LEAF_NAME=go_path_base(stream),
    )
    return env
