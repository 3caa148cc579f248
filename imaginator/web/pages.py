"""The daemon's HTTP pages: status page, build logs (static and live), daemon log, health.

Paths, titles and texts follow the Go imaginator (reference §9) so bookmarks and
scripts keep working; unlike Go, every inserted value is HTML-escaped (Jinja2
autoescape). Every handler only reads in-memory snapshots from a
``StatusSource`` (the builder) and formats them: no I/O, no blocking, so the
pages answer quickly while builds run.

Beyond the Go pages: ``/`` refreshes itself while builds run and answers
``?format=json``; a live log page that outlives its build shows the build's
result with links instead of ``unknown image``; ``/logs`` shows the daemon's
recent log lines and follows them. ``static/livelog.js`` keeps the newest line
of a live log in view unless the reader scrolled up (scripts must come from
``/static``: the Content-Security-Policy forbids inline ones).
"""

from __future__ import annotations

import mimetypes
import resource as _rusage
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote, unquote_to_bytes

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from klein import Klein
from klein.resource import KleinResource
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.server import Request
from werkzeug.exceptions import HTTPException, NotFound

from imaginator.goformats.units import format_bytes, format_duration, format_time
from imaginator.runtime.follower import FOLLOWER_BUFFER_LIMIT
from imaginator.web.live_log import LOG_MARKER, LogFollower, escape_html, wants_html
from imaginator.web.views import (
    JSON,
    current_json,
    dumps,
    result_json,
    result_view,
    rfc3339,
    stage_rows,
    succeeded,
)

if TYPE_CHECKING:
    # Only for annotations: the pages read these records, they never build them,
    # and importing the builder here would pull the whole build machinery in.
    from imaginator.runtime.logbuffer import LogRing
    from imaginator.scheduler import BuildResult, CurrentBuild

_HERE = Path(__file__).resolve().parent
TEMPLATE_DIR = _HERE / "templates"
STATIC_DIR = _HERE / "static"

#: Headers the Go daemon sends with every answer; we send them with ours too.
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"Content-Security-Policy", b"default-src 'self' ;style-src 'self' 'unsafe-inline'"),
    (b"X-Content-Type-Options", b"nosniff"),
    (b"X-Frame-Options", b"DENY"),
    (b"X-XSS-Protection", b"1"),
)
HTML = b"text/html; charset=utf-8"
TEXT = b"text/plain; charset=utf-8"

#: Seconds between two reloads of ``/`` while builds run (durations move).
STATUS_REFRESH_SECONDS = 5
#: Seconds between two reloads of a live page when the reader has no JavaScript.
LIVE_REFRESH_SECONDS = 2

_log = Logger()


class StatusSource(Protocol):
    """What the pages read from the builder; every method must be cheap and non-blocking."""

    def current_builds(self) -> list[CurrentBuild]: ...

    def last_results(self) -> list[BuildResult]: ...

    def current_build(self, stream: str) -> CurrentBuild | None: ...

    def last_result(self, stream: str) -> BuildResult | None: ...

    def stream_names(self) -> list[str]:
        """Bootstrap and normal stream names."""
        ...

    def auto_rebuild_streams(self) -> frozenset[str]: ...

    def build_requests_disabled_until(self) -> float | None:
        """Epoch seconds until which build requests are refused, or ``None``."""
        ...


# Characters left as they are in a query argument: what the Go pages write
# unquoted in image and stream names. Everything else (``&``, ``#``, ``%``,
# ``?``, quotes, spaces, non-ASCII) is %-encoded; ``query_argument`` decodes.
_QUERY_SAFE = "/:@-._~!$()*+,;="


def quote_query(value: str) -> str:
    """``value`` made safe as a raw query string (the Go pages' argument)."""
    return quote(value, safe=_QUERY_SAFE)


def make_environment() -> Environment:
    """The Jinja2 environment for imaginator pages (autoescape on, shared ``base.html``).

    Other page modules can use it to extend ``base.html`` and import ``_macros.html``;
    the filter ``query`` is :func:`quote_query`.
    """
    env = Environment(
        loader=FileSystemLoader(str(TEMPLATE_DIR)),
        autoescape=select_autoescape(enabled_extensions=("html",), default=True),
        undefined=StrictUndefined,
        trim_blocks=False,
        keep_trailing_newline=True,
    )
    env.filters["query"] = quote_query
    return env


def set_security_headers(request: IRequest) -> None:
    for name, value in SECURITY_HEADERS:
        request.setHeader(name, value)


def query_argument(request: IRequest) -> str:
    """The raw query string (all after the first ``?``), URL-decoded: the Go pages' argument."""
    uri: bytes = request.uri
    _, sep, raw = uri.partition(b"?")
    if not sep:
        return ""
    return unquote_to_bytes(raw).decode("utf-8", errors="replace")


def split_format(argument: str) -> tuple[str, str]:
    """``(argument, format)``: ``?format=json`` alone, or after the page's argument
    (``/showImageStream?apps/hello&format=json``); ``format`` is ``""`` if not asked."""
    if argument.startswith("format="):
        return "", argument.removeprefix("format=")
    head, sep, tail = argument.rpartition("&format=")
    if sep and "&" not in tail:
        return head, tail
    return argument, ""


def json_answer(request: IRequest, value: Any, code: int = 200) -> bytes:
    set_security_headers(request)
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", JSON)
    request.setHeader(b"Cache-Control", b"no-store")
    return dumps(value)


def decode_log(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


def _load_static(directory: Path) -> dict[str, tuple[bytes, bytes]]:
    """Read the (few, small) static files once, so serving them never touches the disk."""
    files: dict[str, tuple[bytes, bytes]] = {}
    if not directory.is_dir():
        return files
    for path in sorted(directory.iterdir()):
        if path.is_file() and not path.name.startswith("."):
            ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            if ctype.startswith("text/"):
                ctype += "; charset=utf-8"
            files[path.name] = (ctype.encode("ascii"), path.read_bytes())
    return files


class _SecureKleinResource(KleinResource):
    """Klein's resource, adding the security headers before anything (even a 400 or 500) is sent."""

    def render(self, request: IRequest) -> Any:
        set_security_headers(request)
        return super().render(request)


@dataclass(frozen=True)
class _Cpu:
    process: str
    children: str
    recent_process: str
    recent_children: str


@dataclass(frozen=True)
class _CpuSample:
    """CPU seconds used so far by the daemon and by its (ended) children, at ``at``."""

    at: float
    process: _rusage.struct_rusage
    children: _rusage.struct_rusage


def _cpu_text(user: float, system: float, wall: float) -> str:
    percent = 100.0 * (user + system) / wall if wall > 0 else 0.0
    return f"{percent:.1f}% (User: {format_duration(user)} Sys: {format_duration(system)})"


def _identity(text: str) -> str:
    return text


class StatusPages:
    """The status page, build log pages, live log follower, daemon log, static files, ``/healthz``.

    ``app`` is the ``klein.Klein`` holding the routes; ``resource()`` is the
    twisted.web resource to serve (it also sets the security headers on
    Klein's own error answers). A live log reader may fall ``follow_limit``
    bytes behind before it is dropped; ``followers`` are the live ones.
    ``redact`` removes the secret values from daemon log lines (which should
    not hold any: this is the second line of defence).
    """

    def __init__(
        self,
        *,
        source: StatusSource,
        clock: IReactorTime,
        started_at: float,
        hostname: str,
        version: str,
        log_ring: LogRing | None,
        image_link: Callable[[str], str] | None = None,
        archive_enabled: bool = False,
        follow_limit: int = FOLLOWER_BUFFER_LIMIT,
        redact: Callable[[str], str] = _identity,
    ) -> None:
        self._source = source
        self._clock = clock
        self._started_at = started_at
        self._hostname = hostname
        self._version = version
        self._log_ring = log_ring
        self._image_link = image_link
        self._archive_enabled = archive_enabled
        self._follow_limit = follow_limit
        self._redact = redact
        self.followers: set[LogFollower] = set()
        self._env = make_environment()
        self._templates = {
            name: self._env.get_template(f"{name}.html")
            for name in (
                "status",
                "current_build_log",
                "last_build_log",
                "follow_build_log",
                "logs",
            )
        }
        self._static = _load_static(STATIC_DIR)
        self._cpu_sample: _CpuSample | None = None
        self.app = Klein()
        self._add_routes()

    def resource(self) -> KleinResource:
        return _SecureKleinResource(self.app)

    # -- routing -------------------------------------------------------------

    def _add_routes(self) -> None:
        route = self.app.route
        route("/", methods=["GET", "HEAD"])(self._status)
        route("/showCurrentBuildLog", methods=["GET", "HEAD"])(self._show_current_build_log)
        route("/showLastBuildLog", methods=["GET", "HEAD"])(self._show_last_build_log)
        route("/followBuildLog", methods=["GET"])(self._follow_build_log)
        route("/logs", methods=["GET", "HEAD"])(self._logs)
        route("/healthz", methods=["GET", "HEAD"])(self._healthz)
        route("/static/<string:name>", methods=["GET", "HEAD"])(self._static_file)
        self.app.handle_errors(HTTPException)(self._http_error)

    def _http_error(self, request: IRequest, failure: Failure) -> bytes:
        exc = failure.value
        assert isinstance(exc, HTTPException)
        code = exc.code or 500
        set_security_headers(request)
        request.setResponseCode(code)
        # Keep headers such as Location (werkzeug's slash redirects) or Allow (405).
        for name, value in exc.get_response().headers:
            if name.lower() not in ("content-type", "content-length"):
                request.setHeader(name.encode("latin-1"), value.encode("latin-1"))
        request.setHeader(b"Content-Type", TEXT)
        if code == 404:
            return b"404 page not found\n"
        return f"{code} {exc.name}\n".encode()

    # -- helpers -------------------------------------------------------------

    def _now(self) -> float:
        return self._clock.seconds()

    def _render(self, template: str, **context: Any) -> str:
        return self._templates[template].render(**context)

    def _html(self, request: IRequest, template: str, **context: Any) -> bytes:
        set_security_headers(request)
        request.setHeader(b"Content-Type", HTML)
        return self._render(template, **context).encode("utf-8")

    @staticmethod
    def _text(request: IRequest, text: str) -> bytes:
        set_security_headers(request)
        request.setHeader(b"Content-Type", TEXT)
        return text.encode("utf-8")

    def _unknown_image(self, request: IRequest, stream: str) -> bytes:
        # Plain text, as in Go; text/plain plus nosniff makes the raw name harmless.
        return self._text(request, f"unknown image: {stream}\n")

    def _ago(self, then: float, now: float) -> str:
        return format_duration(max(0.0, now - then))

    def _cpu(self, now: float) -> _Cpu:
        """CPU use since the start, and since the previous status page ("Recent", as in Go)."""
        sample = _CpuSample(
            now,
            _rusage.getrusage(_rusage.RUSAGE_SELF),
            _rusage.getrusage(_rusage.RUSAGE_CHILDREN),
        )
        previous = self._cpu_sample
        self._cpu_sample = sample
        uptime = max(0.0, now - self._started_at)

        def total(usage: _rusage.struct_rusage) -> str:
            return _cpu_text(usage.ru_utime, usage.ru_stime, uptime)

        def recent(usage: _rusage.struct_rusage, before: _rusage.struct_rusage | None) -> str:
            if previous is None or before is None:
                return total(usage)
            return _cpu_text(
                max(0.0, usage.ru_utime - before.ru_utime),
                max(0.0, usage.ru_stime - before.ru_stime),
                max(0.0, now - previous.at),
            )

        return _Cpu(
            process=total(sample.process),
            children=total(sample.children),
            recent_process=recent(sample.process, previous.process if previous else None),
            recent_children=recent(sample.children, previous.children if previous else None),
        )

    def _log_lines(self) -> list[str] | None:
        if self._log_ring is None:
            return None
        return [self._redact(line) for line in self._log_ring.lines()]

    def _result_of(self, stream: str, started_at: float | None = None) -> BuildResult | None:
        """The stream's last result; with ``started_at``, only if it is that build's."""
        result = self._source.last_result(stream)
        if result is None or (started_at is not None and result.started_at != started_at):
            return None
        return result

    # -- the status page -----------------------------------------------------------

    def _status(self, request: IRequest) -> bytes:
        now = self._now()
        if split_format(query_argument(request))[1] == "json":
            return json_answer(request, self._status_json(now))
        source = self._source
        uptime = max(0.0, now - self._started_at)

        disabled = None
        until = source.build_requests_disabled_until()
        if until is not None and until > now:
            disabled = {"until": format_time(until), "remaining": format_duration(until - now)}

        auto = source.auto_rebuild_streams()
        current = [
            {
                "stream": b.stream,
                "auto": b.stream in auto,
                "duration": format_duration(max(0.0, now - b.started_at)),
                "stage": _stage_of(b),
            }
            for b in sorted(source.current_builds(), key=lambda b: b.stream)
        ]

        failed: list[dict[str, Any]] = []
        good: list[dict[str, Any]] = []
        last_failure = None
        for r in sorted(source.last_results(), key=lambda r: r.stream):
            row: dict[str, Any] = {
                "stream": r.stream,
                "duration": format_duration(max(0.0, r.finished_at - r.started_at)),
                "ago": self._ago(r.finished_at, now),
            }
            if not succeeded(r):
                row["error"] = r.error
                failed.append(row)
                if last_failure is None or r.finished_at > last_failure:
                    last_failure = r.finished_at
            else:
                row["image_name"] = r.image_name
                row["skipped"] = r.skipped
                row["link"] = self._image_link(r.image_name) if self._image_link else None
                good.append(row)
        failed_last = None
        if last_failure is not None:
            failed_last = {"at": format_time(last_failure), "ago": self._ago(last_failure, now)}

        return self._html(
            request,
            "status",
            start_time=format_time(self._started_at),
            uptime=format_duration(uptime),
            cpu=self._cpu(now),
            # Kilobytes on Linux; the largest child is, for example, a debootstrap.
            max_rss=format_bytes(_rusage.getrusage(_rusage.RUSAGE_SELF).ru_maxrss * 1024),
            max_child_rss=format_bytes(_rusage.getrusage(_rusage.RUSAGE_CHILDREN).ru_maxrss * 1024),
            hostname=self._hostname,
            disabled=disabled,
            num_streams=len(source.stream_names()),
            current=current,
            refresh=STATUS_REFRESH_SECONDS if current else None,
            failed=failed,
            failed_last=failed_last,
            good=good,
            archive_enabled=self._archive_enabled,
            log_lines=self._log_lines(),
            generated_at=format_time(now),
            version=self._version,
        )

    def _status_json(self, now: float) -> dict[str, Any]:
        """``/?format=json`` (fields in README "Web pages")."""
        source = self._source
        auto = source.auto_rebuild_streams()
        until = source.build_requests_disabled_until()
        return {
            "Hostname": self._hostname,
            "Version": self._version,
            "StartedAt": rfc3339(self._started_at),
            "UptimeSeconds": max(0.0, now - self._started_at),
            "BuildRequestsDisabledUntil": rfc3339(until) if until and until > now else None,
            "NumImageStreams": len(source.stream_names()),
            "CurrentBuilds": [
                current_json(
                    b.stream, b.started_at, b.requestor, b.stream in auto, _stage_now(b), now
                )
                for b in sorted(source.current_builds(), key=lambda b: b.stream)
            ],
            "LastBuilds": [
                result_json(r) for r in sorted(source.last_results(), key=lambda r: r.stream)
            ],
        }

    # -- build logs ----------------------------------------------------------------

    def _show_current_build_log(self, request: IRequest) -> bytes:
        stream = query_argument(request)
        build = self._source.current_build(stream)
        now = self._now()
        if build is None:
            # The build ended (the page reloaded after it): its result, not "unknown image".
            result = self._result_of(stream)
            if result is None:
                return self._unknown_image(request, stream)
            return self._html(
                request,
                "current_build_log",
                stream=stream,
                running=False,
                result=result_view(result, now),
                stages=stage_rows(result.stages),
                log=decode_log(result.log),
                refresh=None,
            )
        return self._html(
            request,
            "current_build_log",
            stream=stream,
            running=True,
            stage=_stage_of(build),
            duration=format_duration(max(0.0, now - build.started_at)),
            log=decode_log(build.log.getvalue()),
            refresh=LIVE_REFRESH_SECONDS,
        )

    def _show_last_build_log(self, request: IRequest) -> bytes:
        stream = query_argument(request)
        result = self._result_of(stream)
        if result is None:
            return self._unknown_image(request, stream)
        return self._html(
            request,
            "last_build_log",
            stream=stream,
            result=result_view(result, self._now()),
            stages=stage_rows(result.stages),
            log=decode_log(result.log),
        )

    def _follow_build_log(self, request: Request) -> bytes | Deferred[None]:
        stream = query_argument(request)
        build = self._source.current_build(stream)
        if build is None:
            return self._unknown_image(request, stream)
        set_security_headers(request)
        request.setHeader(b"Cache-Control", b"no-store")
        request.setHeader(b"Vary", b"Accept")
        log = build.log

        def still_running() -> bool:
            now_building = self._source.current_build(stream)
            return now_building is not None and now_building.log is log

        html = wants_html(request)
        on_end = None
        if html:
            request.setHeader(b"Content-Type", HTML)
            head, _marker, _tail = self._follow_page(stream, None, None).partition(LOG_MARKER)
            request.write(head.encode("utf-8"))

            def on_end() -> None:
                result = self._result_of(stream, build.started_at)
                ended = result is not None or not still_running()
                tail = self._follow_page(stream, result, ended).partition(LOG_MARKER)[2]
                request.write(tail.encode("utf-8"))

        else:
            request.setHeader(b"Content-Type", TEXT)
        follower = LogFollower(
            request,
            log,
            still_running,
            self._clock,
            buffer_limit=self._follow_limit,
            encode=escape_html if html else None,
            on_end=on_end,
        )
        self.followers.add(follower)
        done = follower.start()
        follower.ended.addBoth(lambda _: self.followers.discard(follower))
        return done

    def _follow_page(self, stream: str, result: BuildResult | None, ended: bool | None) -> str:
        """The follow page around ``LOG_MARKER``; its end shows ``result`` (if the build
        ended with one) or says the build still runs (the reader was dropped)."""
        return self._render(
            "follow_build_log",
            stream=stream,
            marker=LOG_MARKER,
            result=result_view(result, self._now()) if result is not None else None,
            stages=stage_rows(result.stages) if result is not None else [],
            ended=ended,
        )

    # -- the daemon's log ------------------------------------------------------------

    def _logs(self, request: IRequest) -> bytes:
        """``/logs``: the daemon's recent log lines; the page follows them."""
        lines = self._log_lines()
        if split_format(query_argument(request))[1] == "text":
            return self._text(request, "".join(line + "\n" for line in lines or ()))
        return self._html(
            request,
            "logs",
            lines=lines,
            refresh=LIVE_REFRESH_SECONDS,
            generated_at=format_time(self._now()),
            version=self._version,
        )

    # -- small answers ---------------------------------------------------------------

    def _healthz(self, request: IRequest) -> bytes:
        return self._text(request, "OK\n")

    def _static_file(self, request: IRequest, name: str) -> bytes:
        found = self._static.get(name)
        if found is None:
            raise NotFound()
        ctype, body = found
        set_security_headers(request)
        request.setHeader(b"Content-Type", ctype)
        request.setHeader(b"Cache-Control", b"max-age=3600")
        return body


def _stage_now(build: CurrentBuild) -> tuple[str, float] | None:
    return build.report.stages.current()


def _stage_of(build: CurrentBuild) -> dict[str, str] | None:
    """The stage a running build is in, for the pages: name and time in it."""
    stage = _stage_now(build)
    if stage is None:
        return None
    return {"name": stage[0], "duration": format_duration(stage[1])}
