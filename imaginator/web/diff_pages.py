"""The image diff page and the SBOM answers of the embedded store's images.

``/diffImages?OLD&NEW`` shows what changed from image ``OLD`` to image ``NEW``
(files, packages, tags, filter, triggers, metadata; ``?OLD&NEW&json`` gives
the same as JSON, as ``imagetool diff -json`` does). ``/showImageSbom?NAME``
answers the image's SPDX 2.3 document, ``/showImageCycloneDx?NAME`` its
CycloneDX 1.5 one. Image records and objects are read through the
asynchronous store; the diff and the documents are computed through the
injected ``run_in_thread`` (a tree walk must not run on the reactor). The
file lists on the page are capped at ``MAX_FILE_ROWS`` rows each.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, Protocol
from urllib.parse import unquote_to_bytes

from klein import Klein
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IRequest

from imaginator.export.diff import ImageDiff, diff_images, diff_to_json
from imaginator.export.sbom import (
    CYCLONEDX_MEDIA_TYPE,
    SPDX_MEDIA_TYPE,
    created_seconds,
    cyclonedx_document,
    distribution,
    dumps_document,
    os_release_object,
    parse_os_release,
    spdx_document,
)
from imaginator.goformats.units import format_time
from imaginator.image.model import Image
from imaginator.store.base import InvalidNameError, StoreError
from imaginator.web.archive_pages import quote_query
from imaginator.web.pages import HTML, TEXT, make_environment, query_argument, set_security_headers

#: ``async run_in_thread(fn, *args)``: runs blocking ``fn(*args)`` off the reactor thread.
RunInThread = Callable[..., Awaitable[Any]]

#: Rows shown per file list (added, removed, changed); the rest is counted.
MAX_FILE_ROWS = 2000
USAGE = b"usage: /diffImages?OLD&NEW (image names; add &json for JSON)\n"
JSON = b"application/json; charset=utf-8"

_log = Logger()


class ImageSource(Protocol):
    """The asynchronous store calls the pages use (``AsyncImageStore``)."""

    async def get_image(self, name: str) -> Image | None: ...

    async def get_object(self, hash_hex: str) -> bytes: ...


def diff_arguments(request: IRequest) -> tuple[str, str, bool] | None:
    """``(old, new, json)`` from the raw query ``OLD&NEW[&json]``; ``None``
    if it has another shape. Each name is URL-decoded on its own, so a name
    with an ``&`` must be written ``%26``."""
    uri: bytes = request.uri
    _, sep, raw = uri.partition(b"?")
    parts = raw.split(b"&") if sep else []
    as_json = len(parts) == 3 and parts[2] == b"json"
    if len(parts) != 2 and not as_json:
        return None
    old, new = (unquote_to_bytes(p).decode("utf-8", "replace") for p in parts[:2])
    if not old or not new:
        return None
    return old, new, as_json


class DiffPages:
    """``/diffImages``, ``/showImageSbom`` and ``/showImageCycloneDx`` on a Klein app.

    ``store`` gives images and objects (``AsyncImageStore``),
    ``run_in_thread`` runs the computations off the reactor, ``clock`` and
    ``version`` make the page footer.
    """

    def __init__(
        self, store: ImageSource, run_in_thread: RunInThread, clock: IReactorTime, version: str
    ) -> None:
        self._store = store
        self._run_in_thread = run_in_thread
        self._clock = clock
        self._version = version
        env = make_environment()
        env.filters["query"] = quote_query
        self._template = env.get_template("diff.html")

    def install(self, app: Klein) -> None:
        """Add the routes to ``app``."""
        routes: tuple[tuple[str, Callable[[IRequest], Any]], ...] = (
            ("/diffImages", self.diff_images),
            ("/showImageSbom", self.show_spdx),
            ("/showImageCycloneDx", self.show_cyclonedx),
        )
        for path, handler in routes:
            app.route(path, methods=["GET", "HEAD"], endpoint=f"export:{path}")(handler)

    # -- answers ---------------------------------------------------------------

    @staticmethod
    def _plain(request: IRequest, body: bytes, code: int = 200, ctype: bytes = TEXT) -> bytes:
        set_security_headers(request)
        request.setResponseCode(code)
        request.setHeader(b"Content-Type", ctype)
        return body

    def _unknown(self, request: IRequest, name: str) -> bytes:
        return self._plain(request, f"unknown image: {name}\n".encode(), 404)

    def _store_error(self, request: IRequest, exc: StoreError) -> bytes:
        _log.warn("Error reading the image store: {error}", error=str(exc))
        return self._plain(request, f"error reading the image store: {exc}\n".encode(), 500)

    async def _image(self, name: str) -> Image | None:
        try:
            return await self._store.get_image(name)
        except InvalidNameError:
            return None

    # -- pages -----------------------------------------------------------------

    async def diff_images(self, request: IRequest) -> bytes:
        """``/diffImages?OLD&NEW[&json]``."""
        arguments = diff_arguments(request)
        if arguments is None:
            return self._plain(request, USAGE, 400)
        old_name, new_name, as_json = arguments
        try:
            old = await self._image(old_name)
            new = await self._image(new_name)
        except StoreError as exc:
            return self._store_error(request, exc)
        for name, image in ((old_name, old), (new_name, new)):
            if image is None:
                return self._unknown(request, name)
        assert old is not None and new is not None
        diff: ImageDiff = await self._run_in_thread(diff_images, old_name, old, new_name, new)
        if as_json:
            body = json.dumps(diff_to_json(diff), indent=4, ensure_ascii=False) + "\n"
            return self._plain(request, body.encode("utf-8", "replace"), ctype=JSON)
        set_security_headers(request)
        request.setHeader(b"Content-Type", HTML)
        page = self._template.render(
            diff=diff,
            old_created=format_time(old.created_on / 1e9) if old.created_on else "",
            new_created=format_time(new.created_on / 1e9) if new.created_on else "",
            max_rows=MAX_FILE_ROWS,
            filter_text="".join(
                [f"+ {line}\n" for line in diff.filter_added]
                + [f"- {line}\n" for line in diff.filter_removed]
            ),
            triggers_text="".join(
                [f"+ {_compact(t)}\n" for t in diff.triggers_added]
                + [f"- {_compact(t)}\n" for t in diff.triggers_removed]
            ),
            generated_at=format_time(self._clock.seconds()),
            version=self._version,
        )
        return page.encode("utf-8", "replace")

    async def show_spdx(self, request: IRequest) -> bytes:
        """``/showImageSbom?NAME``: the SPDX 2.3 JSON document."""
        return await self._sbom(request, "spdx")

    async def show_cyclonedx(self, request: IRequest) -> bytes:
        """``/showImageCycloneDx?NAME``: the CycloneDX 1.5 JSON document."""
        return await self._sbom(request, "cyclonedx")

    async def _sbom(self, request: IRequest, kind: str) -> bytes:
        name = query_argument(request)
        try:
            image = await self._image(name)
            if image is None or image.file_system is None:
                return self._unknown(request, name)
            inode = os_release_object(image.file_system)
            os_release = b"" if inode is None else await self._store.get_object(inode.hash.hex())
        except StoreError as exc:
            return self._store_error(request, exc)
        document: bytes = await self._run_in_thread(_document, kind, name, image, os_release)
        ctype = SPDX_MEDIA_TYPE if kind == "spdx" else CYCLONEDX_MEDIA_TYPE
        return self._plain(request, document, ctype=ctype.encode() + b"; charset=utf-8")


def _document(kind: str, name: str, image: Image, os_release: bytes) -> bytes:
    assert image.file_system is not None
    dist = distribution(image.file_system, parse_os_release(os_release))
    build = spdx_document if kind == "spdx" else cyclonedx_document
    return dumps_document(build(name, image, dist, created_seconds(image)))


def _compact(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)
