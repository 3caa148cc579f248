"""What ``imagetool``'s command modules share: the parsed command line,
its two errors and small helpers."""

from __future__ import annotations

from dataclasses import dataclass, field

from imaginator.image.model import Image
from imaginator.store.local import LocalImageStore

DEFAULT_STATE_DIR = "/var/lib/imaginator"
DEFAULT_CERT_DIRECTORY = "~/.ssl"
DEFAULT_CA_FILE = "/etc/ssl/CA.pem"
DEFAULT_IMAGE_SERVER_PORT = 6971


class UsageError(Exception):
    """A bad argument found after parsing (a registry reference, the port,
    ``SOURCE_DATE_EPOCH``): exit status 2, as for a bad flag."""


class CommandError(Exception):
    """A command failed (exit status 1)."""


@dataclass
class Arguments:
    """The parsed command line (and ``SOURCE_DATE_EPOCH``)."""

    state_dir: str = DEFAULT_STATE_DIR
    command: str = ""
    args: list[str] = field(default_factory=list)
    json: bool = False
    summary: bool = False
    sbom_format: str = "spdx"
    registry_credentials: str = ""
    registry_ca: str = ""
    registry_plain_http: bool = False
    source_date_epoch: int | None = None
    image_server_hostname: str = ""
    image_server_port: int = DEFAULT_IMAGE_SERVER_PORT
    cert_directory: str = DEFAULT_CERT_DIRECTORY
    ca_file: str = DEFAULT_CA_FILE


def load_image(store: LocalImageStore, name: str) -> Image:
    """The image ``name``; ``CommandError`` if there is none."""
    image = store.get_image(name)
    if image is None:
        raise CommandError(f"unknown image: {name}")
    return image


def printable(text: str) -> str:
    """Bytes of non-UTF-8 file names become U+FFFD, as Go prints them."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
