"""The image stream relationships page, ``/showDirectedGraph`` (reference §9).

GET shows the dependency graph (§7.3) of the data the
:class:`~imaginator.deps.DependencyGenerator` holds now, as inline SVG
rendered by Graphviz's ``dot -Tsvg``; ``exclude=`` and ``include=`` query
parameters (repeatable) select the streams shown. Below it come the quick
links of the main configuration, the fetch log of the latest generation
attempt, and a "Regenerate" button; POST regenerates (max age 2 s) and
redirects back.

``dot`` is run through an injected ``run_dot(dot_text) -> bytes`` coroutine
function; :func:`spawn_dot` makes one that runs it through the process
module, with a deadline and a cap on the SVG it keeps. Every inserted value
is HTML-escaped except the SVG, which Graphviz escapes itself.
"""

from __future__ import annotations

import shutil
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Protocol

from klein import Klein
from markupsafe import Markup
from twisted.internet.interfaces import IReactorTime
from twisted.web.iweb import IRequest

from imaginator.deps import MIN_MAX_AGE, DependencyData, graphviz_dot
from imaginator.goformats.units import format_time
from imaginator.runtime.process import (
    MAX_CAPTURED_OUTPUT,
    CommandError,
    ProcessReactor,
    ProcessRunner,
)
from imaginator.runtime.sandbox import base_environment
from imaginator.web.pages import HTML, make_environment, set_security_headers

__all__ = ["PATH", "DotError", "GraphPages", "RunDot", "spawn_dot"]

PATH = "/showDirectedGraph"

RunDot = Callable[[str], Awaitable[bytes]]
"""Renders DOT text to SVG (``dot -Tsvg``); raises on failure."""

REGENERATE_AGE = MIN_MAX_AGE
"""Data older than this (seconds) get a "Regenerate" button."""

DOT_TIMEOUT = 60.0
"""Seconds ``dot`` may take to draw a graph."""

DOT_OUTPUT_LIMIT = MAX_CAPTURED_OUTPUT
"""The largest SVG kept from ``dot`` (16 MiB); a larger one is an error."""


class DotError(Exception):
    """``dot`` could not render a graph; the message says why."""


class DependencySource(Protocol):
    """What the page needs from the dependency generator."""

    @property
    def bootstrap_streams(self) -> Collection[str]: ...

    async def get(self, max_age: float) -> DependencyData | None: ...


class QuickLinkLike(Protocol):
    """A quick link: ``url`` is appended to ``/showDirectedGraph``."""

    @property
    def name(self) -> str: ...

    @property
    def url(self) -> str: ...


def spawn_dot(
    reactor: ProcessReactor,
    executable: str = "dot",
    *,
    runner: ProcessRunner | None = None,
    timeout: float = DOT_TIMEOUT,
    output_limit: int = DOT_OUTPUT_LIMIT,
) -> RunDot:
    """A :data:`RunDot` running ``executable -Tsvg`` through the process module.

    The DOT text goes to its standard input. ``runner`` (default: a new one on
    ``reactor``) runs it with a deadline of ``timeout`` seconds and keeps at
    most ``output_limit`` bytes of its output. A failure, a deadline passed or
    a larger output raises :class:`DotError` saying so (with its standard
    error when it has one).
    """
    processes = runner if runner is not None else ProcessRunner(reactor)

    async def run_dot(dot_text: str) -> bytes:
        path = shutil.which(executable) or executable
        try:
            result = await processes.run(
                [path, "-Tsvg"],
                log=None,
                env=base_environment(),
                stdin=dot_text.encode("utf-8"),
                capture_stdout=True,
                capture_stderr=True,
                capture_limit=output_limit,
                deadline=reactor.seconds() + timeout,
                step="dot",
            )
        except CommandError as exc:
            detail = exc.stderr.decode("utf-8", "replace").strip()
            raise DotError(f"{executable}: {exc}" + (f": {detail}" if detail else "")) from None
        return result.stdout

    return run_dot


def _svg_element(output: bytes) -> str:
    """The ``<svg …>…</svg>`` part of dot's output (no XML prolog or DOCTYPE)."""
    text = output.decode("utf-8", "replace")
    start = text.find("<svg")
    if start < 0:
        raise DotError("no SVG in dot output")
    return text[start:].rstrip() + "\n"


def _params(request: IRequest, name: bytes) -> list[str]:
    """The non-empty values of a repeatable query parameter, decoded."""
    values = (request.args or {}).get(name, [])
    return [v.decode("utf-8", "replace") for v in values if v]


class GraphPages:
    """``/showDirectedGraph`` GET and POST, to be installed on the daemon's Klein app.

    ``generator`` is the :class:`~imaginator.deps.DependencyGenerator`;
    ``quick_links`` are the ``RelationshipsQuickLinks`` (objects with
    ``name`` and ``url``); ``run_dot`` renders DOT to SVG;
    ``auto_rebuild()`` names the auto-rebuilt streams (drawn bold);
    ``version`` goes into the footer.
    """

    def __init__(
        self,
        generator: DependencySource,
        clock: IReactorTime,
        quick_links: Sequence[QuickLinkLike],
        run_dot: RunDot,
        *,
        auto_rebuild: Callable[[], Collection[str]] = lambda: (),
        version: str = "",
    ) -> None:
        self._generator = generator
        self._clock = clock
        self._quick_links = tuple(quick_links)
        self._run_dot = run_dot
        self._auto_rebuild = auto_rebuild
        self._version = version
        self._template = make_environment().get_template("graph.html")

    def install(self, app: Klein) -> None:
        """Add the GET/HEAD and POST routes of ``/showDirectedGraph`` to ``app``."""
        app.route(PATH, methods=["GET", "HEAD"])(self.show)
        app.route(PATH, methods=["POST"])(self.regenerate)

    async def show(self, request: IRequest) -> bytes:
        """The page (GET): the graph of the data held now; never starts a generation."""
        data = await self._generator.get(0)
        now = self._clock.seconds()
        has_data = data is not None and data.has_data
        svg: Markup | None = None
        dot = ""
        render_error = ""
        if data is not None and has_data:
            dot = graphviz_dot(
                data,
                _params(request, b"exclude"),
                _params(request, b"include"),
                self._auto_rebuild(),
                bootstrap=self._generator.bootstrap_streams,
            )
            try:
                svg = Markup(_svg_element(await self._run_dot(dot)))
            except Exception as exc:
                render_error = str(exc) or type(exc).__name__
        failed = data is not None and bool(data.last_attempt_error)
        body = self._template.render(
            has_data=has_data,
            svg=svg,
            dot=dot,
            render_error=render_error,
            quick_links=self._quick_links,
            fetch_log=data.fetch_log if data is not None and data.last_attempt_at else None,
            failed=failed,
            generated_at=format_time(data.generated_at) if data is not None and has_data else "",
            attempt_at=format_time(data.last_attempt_at) if data is not None else "",
            error=data.last_attempt_error if data is not None else "",
            regenerate=data is None or not has_data or now - data.generated_at > REGENERATE_AGE,
            page_generated_at=format_time(now),
            version=self._version,
        )
        set_security_headers(request)
        request.setHeader(b"Content-Type", HTML)
        return body.encode("utf-8")

    async def regenerate(self, request: IRequest) -> bytes:
        """POST: regenerate unless the last attempt is under 2 s old, then 302 to the page."""
        await self._generator.get(REGENERATE_AGE)
        set_security_headers(request)
        request.redirect(PATH.encode("ascii"))
        return b""
