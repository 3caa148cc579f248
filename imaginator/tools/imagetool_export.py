"""``imagetool``'s export commands: ``oci``, ``push``, ``sbom`` and ``diff``.

They read the embedded store directly (``LocalImageStore`` is the export
room's ``ImageReader``) and run in the foreground; progress of ``push`` goes
to stderr, results to stdout.
"""

from __future__ import annotations

import json
import os
import sys

from imaginator.export.diff import diff_images, diff_to_json, render_text
from imaginator.export.oci import ExportOptions, export_image
from imaginator.export.push import push_image
from imaginator.export.registry import (
    RegistryClient,
    RegistryError,
    load_credentials,
    parse_reference,
)
from imaginator.export.sbom import image_sbom
from imaginator.store.local import LocalImageStore
from imaginator.tools.imagetool_base import Arguments, UsageError, load_image, printable


def cmd_oci(store: LocalImageStore, arguments: Arguments, name: str, directory: str) -> None:
    """Write the image as an OCI image layout into ``directory``; print
    ``oci:DIR:REF`` and the manifest digest."""
    options = ExportOptions(source_date_epoch=arguments.source_date_epoch)
    exported = export_image(store, name, directory, options)
    sys.stdout.write(printable(f"oci:{directory}:{name} {exported.manifest['digest']}") + "\n")


def cmd_push(store: LocalImageStore, arguments: Arguments, name: str, ref: str) -> None:
    """Push the image (and its SBOM) to the registry reference ``ref``; print
    ``REF@DIGEST``."""
    try:
        target = parse_reference(ref)
    except RegistryError as exc:
        raise UsageError(str(exc)) from None
    load_image(store, name)  # an unknown image fails before any registry work
    credentials = None
    if arguments.registry_credentials:
        credentials = load_credentials(arguments.registry_credentials, target.registry)
    client = RegistryClient(
        target.registry,
        credentials=credentials,
        ca_file=arguments.registry_ca or None,
        plain_http=arguments.registry_plain_http,
    )

    def say(line: str) -> None:
        print(f"{line}", file=sys.stderr)

    result = push_image(
        store,
        name,
        target,
        client,
        options=ExportOptions(source_date_epoch=arguments.source_date_epoch),
        work_directory=os.environ.get("TMPDIR") or None,
        log=say,
    )
    say(
        f"{result.blobs_sent} blobs sent ({result.bytes_sent} bytes), "
        f"{result.blobs_present} already there"
    )
    repository = f"{target.registry}/{target.repository}"
    sys.stdout.write(f"{repository}@{result.manifest_digest}\n")


def cmd_sbom(store: LocalImageStore, arguments: Arguments, name: str) -> None:
    """Print the image's SBOM (``-sbomFormat``: ``spdx`` or ``cyclonedx``)."""
    image = load_image(store, name)
    document = image_sbom(
        store,
        name,
        image,
        kind=arguments.sbom_format,
        source_date_epoch=arguments.source_date_epoch,
    )
    sys.stdout.buffer.write(document)
    sys.stdout.buffer.flush()


def cmd_diff(store: LocalImageStore, arguments: Arguments, old_name: str, new_name: str) -> None:
    """Print what changed from image ``old_name`` to ``new_name`` (``-json``:
    as JSON)."""
    old, new = load_image(store, old_name), load_image(store, new_name)
    diff = diff_images(old_name, old, new_name, new)
    if arguments.json:
        text = json.dumps(diff_to_json(diff), indent=4, ensure_ascii=False) + "\n"
    else:
        text = render_text(diff)
    sys.stdout.write(printable(text))
