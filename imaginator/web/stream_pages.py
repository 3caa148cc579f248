"""Image stream pages, image pages of the embedded store and the image list.

``/showImageStreams`` and ``/showImageStream?<name>`` follow the Go
imaginator (reference §9) with two deliberate differences: every inserted
value is HTML-escaped, and the stream page never fetches the manifest (a page
view must not start network or git work); it shows what the stream's latest
image records instead (``BuildCommitId``, ``BuildBranch``, ``SourceImage``),
the last build result and the stream's images.

``/showImage?<name>``, ``/showImageBuildLog?<name>`` and ``/listImages`` are
our additions for the embedded store; ``/metrics`` (``web.metrics``) is
installed with them. Store reads go through the ``AsyncImageStore`` (its
thread pool), so no handler blocks the reactor; what is rendered on the
reactor is capped (``MAX_FILES`` file entries, ``MAX_IMAGE_DETAILS`` image
records read per stream page).

Displayed manifest locations are expanded with the stream environment only
(never with the variables file, which holds the secrets), and a password in a
URL's userinfo is shown as ``***``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from klein import Klein
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IRequest

from imaginator.config.main import BootstrapStream, MainConfig
from imaginator.config.streams import StreamConfig, public_manifest_location
from imaginator.config.urls import redact_url
from imaginator.goformats.units import format_bytes, format_duration, format_time
from imaginator.image.model import Image
from imaginator.store.base import InvalidNameError, StoreError
from imaginator.web.image_views import (
    MAX_FILES,
    count_entries,
    created_text,
    directory_of,
    expiry_text,
    file_rows,
    http_url,
    lines_json,
    mapping_json,
    packager_view,
    triggers_json,
)
from imaginator.web.metrics import BuildCounters, MetricsPage
from imaginator.web.pages import (
    HTML,
    TEXT,
    json_answer,
    make_environment,
    query_argument,
    set_security_headers,
    split_format,
)
from imaginator.web.publish_view import PublishState, publish_context
from imaginator.web.stream_json import bootstrap_json, normal_json, stream_json, streams_json
from imaginator.web.views import stage_rows

__all__ = ["MAX_FILES", "MAX_IMAGE_DETAILS", "StreamPages"]

#: Image records read (in the thread pool) for the image table of a stream page.
MAX_IMAGE_DETAILS = 20

NOT_FOUND = b"404 page not found\n"

_log = Logger()


class StreamSource(Protocol):
    """What the pages read from the builder (all cheap, in-memory)."""

    config: MainConfig

    def normal_streams(self) -> Mapping[str, StreamConfig]: ...

    def stream_names(self) -> list[str]: ...

    def auto_rebuild_streams(self) -> frozenset[str]: ...

    def last_result(self, stream: str) -> Any: ...

    def last_results(self) -> list[Any]: ...

    def current_builds(self) -> list[Any]: ...

    def running_count(self) -> int: ...


class ImageSource(Protocol):
    """The asynchronous image store calls the pages use (``AsyncImageStore``)."""

    async def list_images(self) -> list[str]: ...

    async def get_image(self, name: str) -> Image | None: ...

    async def find_latest_image(self, directory: str) -> str | None: ...

    async def get_object(self, hash_hex: str) -> bytes: ...


# ------------------------------------------------------------------ view data


@dataclass(frozen=True)
class StreamRow:
    """One row of ``/showImageStreams``; bootstrap streams have empty manifest columns."""

    name: str
    auto: bool
    normal: bool = False
    manifest_url: str = ""
    manifest_directory: str = ""
    expanded_directory: str = ""


@dataclass(frozen=True)
class SourceLink:
    """A ``SourceImage`` value: ``image`` links ``showImage?``, ``stream`` ``showImageStream?``."""

    image: str
    stream: str


@dataclass(frozen=True)
class ImageRow:
    """An image of a stream; ``read`` is false (and the rest empty) when its record
    was not read. ``expired``: past its expiry, to be deleted by the next collection."""

    name: str
    created: str = ""
    expires: str = ""
    expired: bool = False
    read: bool = False
    created_on: int = 0
    expires_at: int = 0


# ------------------------------------------------------------------ the pages


class StreamPages:
    """The stream, image and image list pages (and ``/metrics``), installed on a Klein app.

    ``builder`` gives the configuration and build state (``Builder``),
    ``store`` the images (``AsyncImageStore``), ``clock`` the time (page
    footers, uptime), ``arch`` the ``$ARCH`` of stream environments and
    ``version`` the footer's version; ``counters`` (fed by the builder)
    adds the build counters to ``/metrics``; ``publishing`` (the publisher)
    each stream's publishing state.
    """

    def __init__(
        self,
        builder: StreamSource,
        store: ImageSource,
        clock: IReactorTime,
        arch: str,
        version: str,
        *,
        started_at: float | None = None,
        counters: BuildCounters | None = None,
        publishing: PublishState | None = None,
    ) -> None:
        self._builder = builder
        self._publishing = publishing
        self._store = store
        self._clock = clock
        self._arch = arch
        self._version = version
        self._started_at = clock.seconds() if started_at is None else started_at
        self._counters = counters
        env = make_environment()
        self._templates = {
            name: env.get_template(f"{name}.html")
            for name in ("streams", "stream", "image", "images")
        }

    def install(self, app: Klein) -> None:
        """Add the routes to ``app``."""
        routes: tuple[tuple[str, Callable[[IRequest], Any]], ...] = (
            ("/showImageStreams", self.show_streams),
            ("/showImageStream", self.show_stream),
            ("/showImage", self.show_image),
            ("/showImageBuildLog", self.show_image_build_log),
            ("/listImages", self.list_images),
        )
        for path, handler in routes:
            app.route(path, methods=["GET", "HEAD"], endpoint=f"streams:{path}")(handler)
        MetricsPage(
            self._builder,
            self._store,
            self._clock,
            self._started_at,
            counters=self._counters,
            publishing=self._publishing,
        ).install(app)

    # -- answers ---------------------------------------------------------------

    def _html(self, request: IRequest, template: str, **context: Any) -> bytes:
        set_security_headers(request)
        request.setHeader(b"Content-Type", HTML)
        body = self._templates[template].render(
            generated_at=format_time(self._clock.seconds()), version=self._version, **context
        )
        return body.encode("utf-8")

    @staticmethod
    def _plain(request: IRequest, body: bytes, code: int = 200) -> bytes:
        set_security_headers(request)
        request.setResponseCode(code)
        request.setHeader(b"Content-Type", TEXT)
        return body

    def _not_found(self, request: IRequest) -> bytes:
        return self._plain(request, NOT_FOUND, 404)

    def _store_error(self, request: IRequest, exc: StoreError) -> bytes:
        _log.warn("Error reading the image store: {error}", error=str(exc))
        return self._plain(request, f"error reading the image store: {exc}\n".encode(), 500)

    # -- store access ----------------------------------------------------------

    async def _image(self, name: str) -> Image | None:
        """The image ``name``; ``None`` for a missing image or an impossible name."""
        try:
            return await self._store.get_image(name)
        except InvalidNameError:
            return None

    async def _image_quietly(self, name: str) -> Image | None:
        """Like ``_image`` but an unreadable record is logged and reads as missing."""
        try:
            return await self._image(name)
        except StoreError as exc:
            _log.warn("Cannot read image {name}: {error}", name=name, error=str(exc))
            return None

    async def _latest_name(self, stream: str) -> str | None:
        try:
            return await self._store.find_latest_image(stream)
        except StoreError:
            return None

    # -- configuration ----------------------------------------------------------

    def _known_streams(self) -> set[str]:
        return set(self._builder.config.bootstrap_streams) | set(self._builder.normal_streams())

    def _stream_rows(self) -> list[StreamRow]:
        bootstrap = self._builder.config.bootstrap_streams
        normal = self._builder.normal_streams()
        auto = self._builder.auto_rebuild_streams()
        rows = []
        for name in sorted(set(bootstrap) | set(normal)):
            config = None if name in bootstrap else normal.get(name)
            if config is None:
                rows.append(StreamRow(name, name in auto))
                continue
            _url, expanded = public_manifest_location(name, config, self._arch)
            rows.append(
                StreamRow(
                    name,
                    name in auto,
                    normal=True,
                    manifest_url=redact_url(config.manifest_url),
                    manifest_directory=config.manifest_directory,
                    expanded_directory=expanded,
                )
            )
        return rows

    def _source_link(self, source: str) -> SourceLink | None:
        if not source:
            return None
        known = self._known_streams()
        if source in known:
            return SourceLink(image="", stream=source)
        directory = directory_of(source)
        return SourceLink(image=source, stream=directory if directory in known else "")

    def _bootstrap_context(self, stream: BootstrapStream) -> dict[str, Any]:
        packager = self._builder.config.packager_types.get(stream.packager_type)
        return {
            "bootstrap_command": " ".join(stream.bootstrap_command),
            "filter_json": lines_json(stream.filter_lines),
            "packager_type": stream.packager_type,
            "packager": packager_view(packager) if packager is not None else None,
            "image_filter_json": lines_json(stream.image_filter),
            "image_triggers_json": triggers_json(stream.image_triggers),
            "image_tags_json": mapping_json(stream.image_tags),
        }

    def _normal_context(self, name: str, stream: StreamConfig) -> dict[str, Any]:
        url, directory = public_manifest_location(name, stream, self._arch)
        return {
            "builder_groups": ", ".join(stream.builder_groups),
            "builder_users": ", ".join(stream.builder_users),
            "manifest_url": redact_url(stream.manifest_url),
            "expanded_url": redact_url(url),
            "manifest_directory": stream.manifest_directory,
            "expanded_directory": directory,
            "variables_json": mapping_json(stream.variables),
        }

    def _kind_context(self, name: str) -> dict[str, Any] | None:
        """The kind-specific part of a stream page; ``None`` for an unknown stream."""
        bootstrap = self._builder.config.bootstrap_streams.get(name)
        if bootstrap is not None:
            return {"bootstrap": True, **self._bootstrap_context(bootstrap)}
        normal = self._builder.normal_streams().get(name)
        if normal is not None:
            return {"bootstrap": False, **self._normal_context(name, normal)}
        return None

    # -- build state ------------------------------------------------------------

    def _build_context(self, stream: str) -> dict[str, Any]:
        now = self._clock.seconds()
        current = next((b for b in self._builder.current_builds() if b.stream == stream), None)
        building = None
        if current is not None:
            building = {
                "started": format_time(current.started_at),
                "duration": format_duration(max(0.0, now - current.started_at)),
            }
        result = self._builder.last_result(stream)
        last = None
        if result is not None:
            last = {
                "ok": not result.error and bool(result.image_name),
                "error": result.error,
                "image_name": result.image_name,
                "skipped": result.skipped,
                "finished": format_time(result.finished_at),
                "ago": format_duration(max(0.0, now - result.finished_at)),
                "duration": format_duration(max(0.0, result.finished_at - result.started_at)),
            }
        manifest = result.manifest if result is not None else None
        return {
            "building": building,
            "last": last,
            "stages": stage_rows(result.stages) if result is not None else [],
            "manifest": manifest,
            "manifest_size": format_bytes(manifest.tree_size) if manifest is not None else "",
        }

    # -- images of a stream -------------------------------------------------------

    async def _stream_image_names(self, stream: str) -> list[str]:
        """The images directly in ``stream``'s directory, newest name first."""
        try:
            names = await self._store.list_images()
        except StoreError as exc:
            _log.warn("Cannot list images: {error}", error=str(exc))
            return []
        return sorted((n for n in names if directory_of(n) == stream), reverse=True)

    async def _image_rows(self, names: list[str], known: Mapping[str, Image]) -> list[ImageRow]:
        """A row per name; the records of the first ``MAX_IMAGE_DETAILS`` are read."""
        rows = []
        now_ns = int(self._clock.seconds() * 1e9)
        for index, name in enumerate(names):
            image = known.get(name)
            if image is None and index < MAX_IMAGE_DETAILS:
                image = await self._image_quietly(name)
            if image is None:
                rows.append(ImageRow(name))
                continue
            rows.append(
                ImageRow(
                    name,
                    created_text(image.created_on),
                    expiry_text(image.expires_at),
                    expired=0 < image.expires_at <= now_ns,
                    read=True,
                    created_on=image.created_on,
                    expires_at=image.expires_at,
                )
            )
        return rows

    async def _store_context(self, stream: str) -> dict[str, Any]:
        latest_name = await self._latest_name(stream)
        latest = await self._image_quietly(latest_name) if latest_name else None
        names = await self._stream_image_names(stream)
        known = {latest_name: latest} if latest_name and latest is not None else {}
        return {
            "latest_name": latest_name or "",
            "latest": latest,
            "source": self._source_link(latest.source_image) if latest is not None else None,
            "images": await self._image_rows(names, known),
            "max_details": MAX_IMAGE_DETAILS,
        }

    # -- pages -----------------------------------------------------------------

    def show_streams(self, request: IRequest) -> bytes:
        """``/showImageStreams``: every bootstrap and normal stream with its manifest location."""
        if split_format(query_argument(request))[1] == "json":
            return json_answer(request, streams_json(self._stream_rows()))
        return self._html(request, "streams", streams=self._stream_rows())

    async def show_stream(self, request: IRequest) -> bytes:
        """``/showImageStream?<name>``: configuration, latest image, last build, images
        (``&format=json``: the same as JSON)."""
        name, answer_format = split_format(query_argument(request))
        if answer_format == "json":
            return await self._stream_json(request, name)
        kind = self._kind_context(name)
        if kind is None:
            return self._html(request, "stream", name=name, exists=False)
        store = await self._store_context(name)
        publish = publish_context(self._publishing, name, self._clock.seconds())
        return self._html(
            request,
            "stream",
            name=name,
            exists=True,
            **kind,
            **store,
            **self._build_context(name),
            publish=publish,
        )

    async def _stream_json(self, request: IRequest, name: str) -> bytes:
        bootstrap = self._builder.config.bootstrap_streams.get(name)
        normal = self._builder.normal_streams().get(name)
        if bootstrap is not None:
            config = bootstrap_json(bootstrap)
        elif normal is not None:
            config = normal_json(name, normal, self._arch)
        else:
            return json_answer(request, {"Error": f"unknown stream: {name}"}, 404)
        store = await self._store_context(name)
        building = next((b for b in self._builder.current_builds() if b.stream == name), None)
        last = self._builder.last_result(name)
        value = stream_json(
            name,
            config,
            latest_name=store["latest_name"],
            latest=store["latest"],
            images=store["images"],
            building=building,
            stage=building.report.stages.current() if building is not None else None,
            last=last,
            manifest=last.manifest if last is not None else None,
            auto=name in self._builder.auto_rebuild_streams(),
            now=self._clock.seconds(),
        )
        return json_answer(request, value)

    async def show_image(self, request: IRequest) -> bytes:
        """``/showImage?<name>``: an image of the store; 404 if there is none."""
        name = query_argument(request)
        try:
            image = await self._image(name)
        except StoreError as exc:
            return self._store_error(request, exc)
        if image is None:
            return self._not_found(request)
        return self._html(request, "image", **self._image_context(name, image))

    def _image_context(self, name: str, image: Image) -> dict[str, Any]:
        fs = image.file_system
        stream = directory_of(name)
        return {
            "name": name,
            "image": image,
            "stream": stream,
            "stream_known": stream in self._known_streams(),
            "created": created_text(image.created_on),
            "expires": expiry_text(image.expires_at),
            "source": self._source_link(image.source_image),
            "build_log_object": image.build_log is not None and image.build_log.object is not None,
            "build_log_url": http_url(image.build_log.url if image.build_log else ""),
            "fs": fs,
            "total_size": format_bytes(fs.total_data_bytes) if fs is not None else "",
            "num_entries": count_entries(fs) if fs is not None else 0,
            "files": file_rows(fs) if fs is not None else [],
            "packages": [(p.name, p.version, format_bytes(p.size)) for p in image.packages or ()],
            "tags_json": mapping_json(image.tags),
            "filter_json": lines_json(image.filter),
            "triggers_json": triggers_json(image.triggers),
            "owner_groups": ", ".join(image.owner_groups or ()),
            "owner_users": ", ".join(image.owner_users or ()),
        }

    async def show_image_build_log(self, request: IRequest) -> bytes:
        """``/showImageBuildLog?<name>``: the BuildLog object of an image, as plain text."""
        name = query_argument(request)
        try:
            image = await self._image(name)
            annotation = image.build_log if image is not None else None
            if annotation is None or annotation.object is None:
                return self._not_found(request)
            log = await self._store.get_object(annotation.object.hex())
        except StoreError:
            # MissingObjectError included: the image names a log that is not there.
            return self._not_found(request)
        return self._plain(request, log)

    async def list_images(self, request: IRequest) -> bytes:
        """``/listImages``: every image name, grouped by stream, newest first."""
        try:
            names = await self._store.list_images()
        except StoreError as exc:
            return self._store_error(request, exc)
        groups: dict[str, list[str]] = {}
        for name in names:
            groups.setdefault(directory_of(name), []).append(name)
        known = self._known_streams()
        rows = [
            (stream, stream in known, sorted(groups[stream], reverse=True))
            for stream in sorted(groups)
        ]
        return self._html(request, "images", groups=rows, count=len(names))
