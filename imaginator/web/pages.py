"""The daemon's HTTP pages: status page, build logs (static and live) and health check.

Paths, titles and texts follow the Go imaginator (reference §9) so bookmarks and
scripts keep working; unlike Go, every inserted value is HTML-escaped (Jinja2
autoescape). Every handler only reads in-memory snapshots from a
``StatusSource`` (the builder) and formats them: no I/O, no blocking, so the
pages answer quickly while builds run.
"""

from __future__ import annotations

import mimetypes
import resource as _rusage
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import unquote_to_bytes

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from klein import Klein
from klein.resource import KleinResource
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from werkzeug.exceptions import HTTPException, NotFound

from imaginator.goformats.units import format_bytes, format_duration, format_time
from imaginator.runtime.follower import FOLLOWER_BUFFER_LIMIT, LogPump

if TYPE_CHECKING:
    # Only for annotations: the pages read these records, they never build them,
    # and importing the builder here would pull the whole build machinery in.
    from imaginator.runtime.buildlog import BuildLog
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

#: How often a live log follower checks whether its build is still running
#: (until ``BuildLog`` can say so itself through ``on_close``).
FOLLOW_POLL_SECONDS = 2.0

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


def make_environment() -> Environment:
    """The Jinja2 environment for imaginator pages (autoescape on, shared ``base.html``).

    Other page modules can use it to extend ``base.html`` and import ``_macros.html``.
    """
    return Environment(
        loader=FileSystemLoader(str(TEMPLATE_DIR)),
        autoescape=select_autoescape(enabled_extensions=("html",), default=True),
        undefined=StrictUndefined,
        trim_blocks=False,
        keep_trailing_newline=True,
    )


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


class StatusPages:
    """The status page, build log pages, live log follower, static files and ``/healthz``.

    ``app`` is the ``klein.Klein`` holding the routes; ``resource()`` is the
    twisted.web resource to serve (it also sets the security headers on
    Klein's own error answers). A live log reader may fall ``follow_limit``
    bytes behind before it is dropped; ``followers`` are the live ones.
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
        self.followers: set[LogFollower] = set()
        self._env = make_environment()
        self._templates = {
            name: self._env.get_template(f"{name}.html")
            for name in ("status", "current_build_log", "last_build_log")
        }
        self._static = _load_static(STATIC_DIR)
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

    def _html(self, request: IRequest, template: str, **context: Any) -> bytes:
        set_security_headers(request)
        request.setHeader(b"Content-Type", HTML)
        return self._templates[template].render(**context).encode("utf-8")

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

    def _cpu(self, uptime: float) -> _Cpu:
        def describe(usage: _rusage.struct_rusage) -> str:
            total = usage.ru_utime + usage.ru_stime
            percent = 100.0 * total / uptime if uptime > 0 else 0.0
            return (
                f"{percent:.1f}% (User: {format_duration(usage.ru_utime)}"
                f" Sys: {format_duration(usage.ru_stime)})"
            )

        return _Cpu(
            process=describe(_rusage.getrusage(_rusage.RUSAGE_SELF)),
            children=describe(_rusage.getrusage(_rusage.RUSAGE_CHILDREN)),
        )

    # -- pages -----------------------------------------------------------------

    def _status(self, request: IRequest) -> bytes:
        now = self._now()
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
            if r.error or not r.image_name:
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

        max_rss_kib = _rusage.getrusage(_rusage.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        return self._html(
            request,
            "status",
            start_time=format_time(self._started_at),
            uptime=format_duration(uptime),
            cpu=self._cpu(uptime),
            max_rss=format_bytes(max_rss_kib * 1024),
            hostname=self._hostname,
            disabled=disabled,
            num_streams=len(source.stream_names()),
            current=current,
            failed=failed,
            failed_last=failed_last,
            good=good,
            archive_enabled=self._archive_enabled,
            log_lines=self._log_ring.lines() if self._log_ring is not None else None,
            generated_at=format_time(now),
            version=self._version,
        )

    def _show_current_build_log(self, request: IRequest) -> bytes:
        stream = query_argument(request)
        build = self._source.current_build(stream)
        if build is None:
            return self._unknown_image(request, stream)
        return self._html(
            request,
            "current_build_log",
            stream=stream,
            log=decode_log(build.log.getvalue()),
        )

    def _show_last_build_log(self, request: IRequest) -> bytes:
        stream = query_argument(request)
        result = self._source.last_result(stream)
        if result is None:
            return self._unknown_image(request, stream)
        return self._html(request, "last_build_log", stream=stream, log=decode_log(result.log))

    def _follow_build_log(self, request: IRequest) -> bytes | Deferred[None]:
        stream = query_argument(request)
        build = self._source.current_build(stream)
        if build is None:
            return self._unknown_image(request, stream)
        set_security_headers(request)
        request.setHeader(b"Content-Type", TEXT)
        request.setHeader(b"Cache-Control", b"no-store")
        log = build.log

        def still_running() -> bool:
            now_building = self._source.current_build(stream)
            return now_building is not None and now_building.log is log

        follower = LogFollower(
            request, log, still_running, self._clock, buffer_limit=self._follow_limit
        )
        self.followers.add(follower)
        done = follower.start()
        follower.ended.addBoth(lambda _: self.followers.discard(follower))
        return done

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


class LogFollower:
    """Streams one build's log to one HTTP client while the build runs.

    Sends what the log holds, then every chunk as ``BuildLog`` delivers it,
    at the client's pace (a :class:`~imaginator.runtime.follower.LogPump`
    registered on the request): a client more than ``buffer_limit`` bytes
    behind gets ``[log follower too slow: N bytes dropped; reload]`` and the
    response ends. The response also ends when the build is over: when
    ``BuildLog.on_close`` (if the log has it) reports so, or when
    ``still_running()`` turns false, checked after every chunk and every
    ``poll_seconds`` on ``clock``. A client that goes away is unsubscribed at
    once.

    ``start()`` returns a Deferred that fires (with ``None``) when the
    response should be finished; Klein then finishes the request. Cancelling
    it (Klein does so when the client disconnects) stops following.
    ``ended`` fires when following stops, for any reason.
    """

    def __init__(
        self,
        request: IRequest,
        log: BuildLog,
        still_running: Callable[[], bool],
        clock: IReactorTime,
        poll_seconds: float = FOLLOW_POLL_SECONDS,
        buffer_limit: int = FOLLOWER_BUFFER_LIMIT,
    ) -> None:
        self._request = request
        self._log = log
        self._still_running = still_running
        self._clock = clock
        self._poll_seconds = poll_seconds
        self._pump = LogPump(log, request, request.write, limit=buffer_limit, on_dropped=self._end)
        self._unsubscribe: Callable[[], object] | None = None
        self._close_unsubscribe: Callable[[], object] | None = None
        self._timer: IDelayedCall | None = None
        self._stopped = False
        self.done: Deferred[None] = Deferred(lambda _d: self._stop())
        self.ended: Deferred[None] = Deferred()

    @property
    def following(self) -> bool:
        return not self._stopped

    @property
    def buffered(self) -> int:
        """Bytes of log waiting here for the client."""
        return self._pump.buffered

    def start(self) -> Deferred[None]:
        self._request.notifyFinish().addErrback(self._client_gone)
        self._pump.start()
        if self._stopped:  # dropped while sending what the log holds
            return self.done
        self._unsubscribe = self._log.subscribe(self._on_chunk)
        on_close = getattr(self._log, "on_close", None)
        if callable(on_close):
            undo = on_close(self._on_close)
            if callable(undo):
                self._close_unsubscribe = undo
        if not self._stopped:
            self._check()
        if not self._stopped:
            self._timer = self._clock.callLater(self._poll_seconds, self._tick)
        return self.done

    def _on_chunk(self, _data: bytes) -> None:
        # The pump has sent the chunk (it subscribed first); only check here.
        if not self._stopped:
            self._check()

    def _on_close(self, *_args: object) -> None:
        self._end()

    def _tick(self) -> None:
        self._timer = None
        if self._stopped:
            return
        self._check()
        if not self._stopped:
            self._timer = self._clock.callLater(self._poll_seconds, self._tick)

    def _check(self) -> None:
        try:
            running = self._still_running()
        except Exception:
            _log.failure("Error checking whether a followed build still runs")
            running = False
        if not running:
            self._end()

    def _end(self) -> None:
        if self._stopped:
            return
        self._pump.finish()
        self._stop()
        self.done.callback(None)

    def _client_gone(self, _failure: Failure) -> None:
        self._stop()

    def _stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._pump.stop()
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._close_unsubscribe is not None:
            try:
                self._close_unsubscribe()
            except Exception:
                _log.failure("Error removing a build log close callback")
            self._close_unsubscribe = None
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self.ended.callback(None)
