"""The build log archive pages (reference §9): summaries, build lists and raw logs.

Paths, titles and table layouts follow the Go imaginator; unlike Go every
inserted value is HTML-escaped and query links are URL-quoted. An unknown
stream answers 404 (Go panics). The lists and summaries come from the
archive's in-memory index (cheap, non-blocking); the one page that reads the
disk, ``/showBuildLog``, does so through the injected ``run_in_thread``.
"""

from __future__ import annotations

import posixpath
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from klein import Klein
from twisted.internet.interfaces import IReactorTime
from twisted.web.iweb import IRequest

from imaginator.goformats.units import format_duration, format_time
from imaginator.runtime.archive import (
    INTERNAL_REQUESTOR,
    ArchivedBuild,
    BuildCounts,
    Kind,
)
from imaginator.web.pages import (
    HTML,
    TEXT,
    make_environment,
    query_argument,
    quote_query,
    set_security_headers,
)

#: ``async run_in_thread(fn, *args)``: runs blocking ``fn(*args)`` off the reactor thread.
RunInThread = Callable[..., Awaitable[Any]]

#: Route name part -> (archive kind, the word Go puts in the page title).
_KINDS: tuple[tuple[str, Kind], ...] = (("All", "all"), ("Good", "good"), ("Error", "bad"))

NOT_FOUND = b"404 page not found\n"


class ArchiveSource(Protocol):
    """What the pages read from the archive (``BuildLogArchive`` provides it)."""

    def builds(self, kind: Kind = "all") -> list[ArchivedBuild]: ...

    def stream_builds(self, stream: str, kind: Kind = "all") -> list[ArchivedBuild] | None: ...

    def requestor_builds(self, username: str, kind: Kind = "all") -> list[ArchivedBuild]: ...

    def summary_by_stream(self) -> list[BuildCounts]: ...

    def summary_by_requestor(self) -> list[BuildCounts]: ...

    def read_log(self, image_name: str) -> bytes | None:
        """Blocking: called only through ``run_in_thread``."""
        ...


def clean_argument(value: str) -> str:
    """Go's ``filepath.Clean`` of a query argument, also dropping leading ``/``.

    An empty result is ``.``, which names nothing.
    """
    cleaned = posixpath.normpath(value).lstrip("/") if value else ""
    return cleaned or "."


class ArchivePages:
    """The ``/show*Builds``, ``/showBuildLogArchive`` and ``/showBuildLog`` pages.

    ``archive`` is the (enabled) build log archive, ``threadpool_runner`` an
    ``async run_in_thread(fn, *args)`` callable and ``clock`` gives the time
    for the page footers. ``install(app)`` adds the routes to a Klein app.
    """

    def __init__(
        self, archive: ArchiveSource, threadpool_runner: RunInThread, clock: IReactorTime
    ) -> None:
        self._archive = archive
        self._run_in_thread = threadpool_runner
        self._clock = clock
        env = make_environment()
        env.filters["query"] = quote_query
        self._summary_template = env.get_template("archive.html")
        self._builds_template = env.get_template("archive_builds.html")

    def install(self, app: Klein) -> None:
        """Add the archive routes to ``app``."""

        def route(path: str, handler: Callable[[IRequest], Any]) -> None:
            # Explicit, prefixed endpoint names: no clash with the app's other routes.
            app.route(path, methods=["GET", "HEAD"], endpoint=f"archive:{path}")(handler)

        route("/showBuildLogArchive", self._show_archive)
        route("/showBuildLog", self._show_build_log)
        for word, kind in _KINDS:
            route(f"/show{word}Builds", self._all_handler(kind))
            route(f"/showStream{word}Builds", self._stream_handler(kind))
            route(f"/showRequestor{word}Builds", self._requestor_handler(kind))

    # -- helpers ---------------------------------------------------------------

    def _generated_at(self) -> str:
        return format_time(self._clock.seconds())

    @staticmethod
    def _not_found(request: IRequest) -> bytes:
        set_security_headers(request)
        request.setResponseCode(404)
        request.setHeader(b"Content-Type", TEXT)
        return NOT_FOUND

    def _render_builds(self, request: IRequest, kind: Kind, builds: list[ArchivedBuild]) -> bytes:
        set_security_headers(request)
        request.setHeader(b"Content-Type", HTML)
        rows = [
            {
                "image_name": b.image_name,
                "duration": format_duration(b.duration),
                "error": b.error,
            }
            for b in builds
        ]
        return self._builds_template.render(
            kind=kind,
            show_error=kind != "good",
            builds=rows,
            generated_at=self._generated_at(),
        ).encode("utf-8")

    # -- pages -----------------------------------------------------------------

    def _show_archive(self, request: IRequest) -> bytes:
        streams = self._archive.summary_by_stream()
        requestors = [
            r._replace(name=r.name or INTERNAL_REQUESTOR)
            for r in self._archive.summary_by_requestor()
        ]
        total = BuildCounts(
            "TOTAL",
            sum(s.total for s in streams),
            sum(s.good for s in streams),
            sum(s.bad for s in streams),
        )
        set_security_headers(request)
        request.setHeader(b"Content-Type", HTML)
        return self._summary_template.render(
            streams=streams,
            total=total,
            requestors=requestors,
            generated_at=self._generated_at(),
        ).encode("utf-8")

    def _all_handler(self, kind: Kind) -> Callable[[IRequest], bytes]:
        def show_builds(request: IRequest) -> bytes:
            return self._render_builds(request, kind, self._archive.builds(kind))

        return show_builds

    def _stream_handler(self, kind: Kind) -> Callable[[IRequest], bytes]:
        def show_stream_builds(request: IRequest) -> bytes:
            stream = clean_argument(query_argument(request))
            builds = self._archive.stream_builds(stream, kind)
            if builds is None:
                return self._not_found(request)
            return self._render_builds(request, kind, builds)

        return show_stream_builds

    def _requestor_handler(self, kind: Kind) -> Callable[[IRequest], bytes]:
        def show_requestor_builds(request: IRequest) -> bytes:
            username = clean_argument(query_argument(request))
            if username == INTERNAL_REQUESTOR:
                username = ""
            return self._render_builds(
                request, kind, self._archive.requestor_builds(username, kind)
            )

        return show_requestor_builds

    async def _show_build_log(self, request: IRequest) -> bytes:
        image_name = clean_argument(query_argument(request))
        log = await self._run_in_thread(self._archive.read_log, image_name)
        if log is None:
            return self._not_found(request)
        set_security_headers(request)
        request.setHeader(b"Content-Type", TEXT)
        return log
