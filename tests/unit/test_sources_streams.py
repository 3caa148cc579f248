"""Tests for imaginator.sources.watch, .streams and .variables, driven by a Clock and fake fetching.

The fake reactor runs thread-pool work synchronously (a ``Clock`` whose
``callFromThread`` calls at once, and a thread pool that runs the function in
the caller's thread), so every check completes inside ``clock.advance`` and
the tests are deterministic. Documents come from :class:`FakeRemote`, which
can also hold a fetch open to test overlapping checks and cancellation.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import LogEvent, formatEvent, globalLogPublisher

from imaginator.config.streams import StreamsDocument
from imaginator.config.variables import REDACTED
from imaginator.goformats.jsonc import ConfigError
from imaginator.sources.documents import FetchError
from imaginator.sources.streams import StreamsRegistry
from imaginator.sources.variables import VariablesFile
from imaginator.sources.watch import DocumentLocation, DocumentSource, locate_document
from tests.support.fakes import FakeReactor, SyncThreadPool, fired, has_fired

# ------------------------------------------------------------------- fakes


class FakeRemote:
    """Documents and inode numbers by URL/path; records every call.

    A value may be bytes or an exception to raise. With ``hold`` set, fetches
    return Deferreds that the test fires through :meth:`release`.
    """

    def __init__(self) -> None:
        self.documents: dict[str, bytes | Exception] = {}
        self.inodes: dict[str, int | Exception] = {}
        self.fetches: list[str] = []
        self.stats: list[str] = []
        self.hold = False
        self.held: list[tuple[str, Deferred[bytes]]] = []

    def fetch(self, url: str) -> Deferred[bytes]:
        self.fetches.append(url)
        if self.hold:
            d: Deferred[bytes] = Deferred()
            self.held.append((url, d))
            return d
        value = self.documents[url]
        return fail(value) if isinstance(value, Exception) else succeed(value)

    def release(self) -> None:
        """Answer every held fetch with the current document."""
        held, self.held = self.held, []
        for url, d in held:
            value = self.documents[url]
            if isinstance(value, Exception):
                d.errback(value)
            else:
                d.callback(value)

    def inode_of(self, path: str) -> Deferred[int]:
        self.stats.append(path)
        value = self.inodes.get(path, FileNotFoundError(f"stat {path}: No such file or directory"))
        return fail(value) if isinstance(value, Exception) else succeed(value)


class Recorder:
    """Collects what a DocumentSource delivers."""

    def __init__(self) -> None:
        self.documents: list[bytes] = []
        self.errors: list[str] = []


@pytest.fixture
def clock() -> FakeReactor:
    return FakeReactor()


@pytest.fixture
def remote() -> FakeRemote:
    return FakeRemote()


@pytest.fixture
def logged() -> Iterator[list[LogEvent]]:
    events: list[LogEvent] = []
    observer = events.append
    globalLogPublisher.addObserver(observer)
    yield events
    globalLogPublisher.removeObserver(observer)


def texts(events: list[LogEvent]) -> list[str]:
    return [formatEvent(event) for event in events]


def make_source(
    url: str, clock: FakeReactor, remote: FakeRemote, recorder: Recorder, **kwargs: Any
) -> DocumentSource:
    kwargs.setdefault("check_interval", 60)
    return DocumentSource(
        url,
        reactor=clock,
        clock=clock,
        threadpool=SyncThreadPool(),
        on_document=recorder.documents.append,
        on_error=recorder.errors.append,
        name="test document",
        fetch=remote.fetch,
        inode_of=remote.inode_of,
        **kwargs,
    )


# --------------------------------------------------------------- locations


@pytest.mark.parametrize(
    ("url", "location"),
    [
        ("/etc/imaginator/streams.json", DocumentLocation("local", "/etc/imaginator/streams.json")),
        ("file:///etc/a%20b.json", DocumentLocation("local", "/etc/a b.json")),
        ("https://h/x/streams.json", DocumentLocation("http", "https://h/x/streams.json")),
        ("http://h/x.json?v=1", DocumentLocation("http", "http://h/x.json?v=1")),
        (
            "git@github.com:org/conf.git/imaginator/streams.json",
            DocumentLocation("git", "git@github.com:org/conf.git", "imaginator/streams.json"),
        ),
        (
            "https://u:p@h/org/conf.git?imaginator/streams.json",
            DocumentLocation("git", "https://u:p@h/org/conf.git", "imaginator/streams.json"),
        ),
        (
            "file:///srv/conf.git?a/streams.json",
            DocumentLocation("git", "file:///srv/conf.git", "a/streams.json"),
        ),
    ],
)
def test_locate_document(url: str, location: DocumentLocation) -> None:
    assert locate_document(url) == location


def test_relative_paths_are_local_files() -> None:
    assert locate_document("conf/streams.json") == DocumentLocation(
        "local", os.path.abspath("conf/streams.json")
    )


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://h/x.json", "unknown scheme: ftp"),
        ("dir:///x", "unknown scheme: dir"),
        ("git@h:org/conf.git", "missing .git/ in Git URL"),
        ("file:///srv/conf.git?/", "missing path in repository"),
    ],
)
def test_locate_document_errors(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        locate_document(url)


def test_unknown_scheme_stops_construction(clock: FakeReactor, remote: FakeRemote) -> None:
    with pytest.raises(ConfigError, match="unknown scheme: ftp"):
        make_source("ftp://user:pw@h/x", clock, remote, Recorder())


# -------------------------------------------------------- DocumentSource: HTTP

URL = "https://conf.example/streams.json"


def test_http_fetched_at_start_and_every_interval(clock: FakeReactor, remote: FakeRemote) -> None:
    remote.documents[URL] = b"one"
    recorder = Recorder()
    source = make_source(URL, clock, remote, recorder, check_interval=60)
    first = source.first_document
    assert not first.called
    source.startService()
    assert recorder.documents == [b"one"]
    assert fired(first) is None
    assert fired(source.first_document) is None  # later waiters fire at once

    clock.advance(59)
    assert remote.fetches == [URL]
    clock.advance(1)
    assert remote.fetches == [URL, URL]
    assert recorder.documents == [b"one"]  # unchanged: ignored

    remote.documents[URL] = b"two"
    clock.advance(60)
    assert recorder.documents == [b"one", b"two"]
    assert recorder.errors == []
    source.stopService()


def test_unchanged_documents_are_ignored_with_a_debug_log(
    clock: FakeReactor, remote: FakeRemote, logged: list[LogEvent]
) -> None:
    remote.documents[URL] = b"same"
    recorder = Recorder()
    source = make_source(URL, clock, remote, recorder, check_interval=10)
    source.startService()
    clock.advance(10)
    assert recorder.documents == [b"same"]
    assert any("ignoring unchanged configuration" in text for text in texts(logged))
    source.stopService()


def test_zero_interval_fetches_once(clock: FakeReactor, remote: FakeRemote) -> None:
    remote.documents[URL] = b"one"
    source = make_source(URL, clock, remote, Recorder(), check_interval=0)
    source.startService()
    clock.advance(3600)
    assert remote.fetches == [URL]
    assert clock.getDelayedCalls() == []
    source.stopService()


def test_fetch_errors_are_reported_redacted_and_watching_goes_on(
    clock: FakeReactor, remote: FakeRemote
) -> None:
    url = "https://builder:hunter2@conf.example/streams.json"
    remote.documents[url] = FetchError(f"GET {url}: HTTP 404 Not Found")
    recorder = Recorder()
    source = make_source(url, clock, remote, recorder, check_interval=30)
    source.startService()
    assert recorder.errors == [
        "GET https://builder:***@conf.example/streams.json: HTTP 404 Not Found"
    ]
    assert source.last_error == recorder.errors[0]
    clock.advance(30)
    assert len(recorder.errors) == 2  # remote failures are reported every time

    remote.documents[url] = b"fixed"
    clock.advance(30)
    assert recorder.documents == [b"fixed"]
    assert source.last_error is None
    assert all("hunter2" not in error for error in recorder.errors)
    source.stopService()


def test_passwords_are_scrubbed_from_any_error(clock: FakeReactor, remote: FakeRemote) -> None:
    url = "https://u:p%40ss@h/x.json"
    remote.documents[url] = RuntimeError("connection to u:p@ss@h failed (p%40ss)")
    recorder = Recorder()
    make_source(url, clock, remote, recorder).startService()
    assert recorder.errors == ["RuntimeError: connection to u:***@h failed (***)"]


def test_shown_url_replaces_every_spelling_of_the_url(
    clock: FakeReactor, remote: FakeRemote
) -> None:
    url = "https://h/tok3n/org/conf.git?streams.json"
    remote.documents[url] = FetchError("https://h/tok3n/org/conf.git: not found")
    recorder = Recorder()
    source = make_source(url, clock, remote, recorder, shown_url="https://h/$TOKEN/org/conf.git")
    source.startService()
    assert recorder.errors == ["https://h/$TOKEN/org/conf.git: not found"]


def test_on_document_errors_do_not_stop_the_source(
    clock: FakeReactor, remote: FakeRemote, logged: list[LogEvent]
) -> None:
    remote.documents[URL] = b"one"

    def explode(data: bytes) -> None:
        raise ValueError("boom")

    source = DocumentSource(
        URL,
        reactor=clock,
        clock=clock,
        threadpool=SyncThreadPool(),
        check_interval=5,
        on_document=explode,
        on_error=lambda message: None,
        name="test document",
        fetch=remote.fetch,
    )
    source.startService()
    assert source.first_document.called
    remote.documents[URL] = b"two"
    clock.advance(5)
    assert remote.fetches == [URL, URL]
    assert sum("Error handling new test document" in text for text in texts(logged)) == 2
    source.stopService()


def test_checks_never_overlap(clock: FakeReactor, remote: FakeRemote) -> None:
    remote.documents[URL] = b"one"
    remote.hold = True
    recorder = Recorder()
    source = make_source(URL, clock, remote, recorder, check_interval=10)
    source.startService()
    clock.advance(100)
    assert remote.fetches == [URL]  # the next check is timed from the end of this one
    remote.release()
    assert recorder.documents == [b"one"]
    clock.advance(9)
    assert remote.fetches == [URL]
    clock.advance(1)
    assert remote.fetches == [URL, URL]
    source.stopService()


def test_stop_cancels_the_timer_and_the_running_check(
    clock: FakeReactor, remote: FakeRemote
) -> None:
    remote.documents[URL] = b"one"
    remote.hold = True
    recorder = Recorder()
    source = make_source(URL, clock, remote, recorder, check_interval=10)
    source.startService()
    ((_url, held),) = remote.held
    source.stopService()
    assert held.called  # cancelled
    assert recorder.documents == [] and recorder.errors == []
    clock.advance(100)
    assert remote.fetches == [URL]
    assert fired(source.idle()) is None


def test_git_documents_go_through_fetch(clock: FakeReactor, remote: FakeRemote) -> None:
    url = "git@git.example:org/conf.git/imaginator/streams.json"
    remote.documents[url] = b"from git"
    recorder = Recorder()
    source = make_source(url, clock, remote, recorder, check_interval=300)
    source.startService()
    assert recorder.documents == [b"from git"]
    assert remote.stats == []  # no inode polling for remote documents
    clock.advance(300)
    assert remote.fetches == [url, url]
    source.stopService()


# ------------------------------------------------------- DocumentSource: local

PATH = "/etc/imaginator/image-streams.json"


def test_local_file_read_at_start_and_on_inode_change_only(
    clock: FakeReactor, remote: FakeRemote
) -> None:
    remote.documents[PATH] = b"one"
    remote.inodes[PATH] = 100
    recorder = Recorder()
    source = make_source(f"file://{PATH}", clock, remote, recorder, check_interval=0)
    source.startService()
    assert recorder.documents == [b"one"]
    assert remote.fetches == [PATH]

    remote.documents[PATH] = b"edited in place"
    clock.advance(1)
    clock.advance(1)
    assert remote.stats == [PATH] * 3  # polled every second despite check_interval 0 ...
    assert remote.fetches == [PATH]  # ... but not re-read: same inode

    remote.inodes[PATH] = 101
    clock.advance(1)
    assert recorder.documents == [b"one", b"edited in place"]

    remote.inodes[PATH] = 102  # replaced by an identical file
    clock.advance(1)
    assert len(remote.fetches) == 3
    assert recorder.documents == [b"one", b"edited in place"]
    source.stopService()


def test_local_poll_interval_is_configurable(clock: FakeReactor, remote: FakeRemote) -> None:
    remote.documents[PATH] = b"one"
    remote.inodes[PATH] = 1
    source = make_source(PATH, clock, remote, Recorder(), local_poll=15)
    source.startService()
    clock.advance(14)
    assert remote.stats == [PATH]
    clock.advance(1)
    assert remote.stats == [PATH, PATH]
    source.stopService()


def test_missing_local_file_reported_once_then_picked_up(
    clock: FakeReactor, remote: FakeRemote
) -> None:
    recorder = Recorder()
    source = make_source(PATH, clock, remote, recorder)
    source.startService()
    clock.advance(1)
    clock.advance(1)
    assert recorder.errors == [f"stat {PATH}: No such file or directory"]
    assert source.last_error == recorder.errors[0]

    remote.inodes[PATH] = 7
    remote.documents[PATH] = b"here now"
    clock.advance(1)
    assert recorder.documents == [b"here now"]
    assert source.last_error is None

    del remote.inodes[PATH]
    clock.advance(1)
    assert len(recorder.errors) == 2  # a new outage is reported again
    remote.inodes[PATH] = 7  # back with the same inode and content
    clock.advance(1)
    assert len(remote.fetches) == 2  # re-read, since the inode was forgotten ...
    assert recorder.documents == [b"here now"]  # ... but identical, so not delivered
    source.stopService()


def test_local_read_error_is_retried(clock: FakeReactor, remote: FakeRemote) -> None:
    remote.inodes[PATH] = 5
    remote.documents[PATH] = FetchError(f"open {PATH}: Permission denied")
    recorder = Recorder()
    source = make_source(PATH, clock, remote, recorder)
    source.startService()
    assert recorder.errors == [f"open {PATH}: Permission denied"]
    remote.documents[PATH] = b"readable"
    clock.advance(1)
    assert recorder.documents == [b"readable"]
    source.stopService()


def test_real_files_through_the_default_stat_and_read(clock: FakeReactor, tmp_path: Path) -> None:
    path = tmp_path / "streams.json"
    path.write_bytes(b"one")
    recorder = Recorder()
    pool = SyncThreadPool()
    source = DocumentSource(
        str(path),
        reactor=clock,
        clock=clock,
        threadpool=pool,
        check_interval=0,
        on_document=recorder.documents.append,
        on_error=recorder.errors.append,
        name="streams",
    )
    source.startService()
    assert recorder.documents == [b"one"]
    assert pool.calls == 2  # stat and read, both in the pool

    path.write_bytes(b"in place")
    clock.advance(1)
    assert recorder.documents == [b"one"]

    replacement = tmp_path / "streams.json.new"
    replacement.write_bytes(b"two")
    replacement.rename(path)
    clock.advance(1)
    assert recorder.documents == [b"one", b"two"]

    path.unlink()
    clock.advance(1)
    assert recorder.errors == [f"stat {path}: No such file or directory"]
    source.stopService()


# --------------------------------------------------- DocumentSource: reload_now


def test_reload_now_rereads_a_local_file_whatever_its_inode(
    clock: FakeReactor, remote: FakeRemote
) -> None:
    remote.documents[PATH] = b"one"
    remote.inodes[PATH] = 1
    recorder = Recorder()
    source = make_source(PATH, clock, remote, recorder)
    source.startService()
    assert fired(source.reload_now()) is False
    remote.documents[PATH] = b"edited"
    assert fired(source.reload_now()) is True
    assert recorder.documents == [b"one", b"edited"]
    source.stopService()


def test_reload_now_works_before_start_and_for_once_only_sources(
    clock: FakeReactor, remote: FakeRemote
) -> None:
    remote.documents[URL] = b"one"
    recorder = Recorder()
    source = make_source(URL, clock, remote, recorder, check_interval=0)
    assert fired(source.reload_now()) is True
    assert source.first_document.called
    remote.documents[URL] = FetchError("GET x: HTTP 500 Internal Server Error")
    assert fired(source.reload_now()) is False
    assert recorder.errors == ["GET x: HTTP 500 Internal Server Error"]


def test_reload_requests_wait_for_the_running_check_and_share_one_fetch(
    clock: FakeReactor, remote: FakeRemote
) -> None:
    remote.documents[URL] = b"one"
    remote.hold = True
    recorder = Recorder()
    source = make_source(URL, clock, remote, recorder)
    source.startService()
    first = source.reload_now()
    second = source.reload_now()
    assert remote.fetches == [URL]  # the start-up check is still running
    remote.documents[URL] = b"two"
    remote.release()  # start-up check delivers "two"; the shared reload starts
    assert remote.fetches == [URL, URL]
    assert not first.called and not second.called
    remote.release()  # unchanged
    assert fired(first) is True  # a new document arrived since the request
    assert fired(second) is True
    assert recorder.documents == [b"two"]
    third = source.reload_now()
    remote.release()
    assert fired(third) is False
    source.stopService()


def test_reload_cancelled_by_stop_fires_false(clock: FakeReactor, remote: FakeRemote) -> None:
    remote.documents[URL] = b"one"
    remote.hold = True
    source = make_source(URL, clock, remote, Recorder())
    source.startService()
    remote.release()
    reload = source.reload_now()
    source.stopService()
    assert fired(reload) is False


# ----------------------------------------------------------- StreamsRegistry

STREAMS_ONE = b'{"Streams": {"base/$ARCH": {"ManifestUrl": "dir:///m/base"}}}'
STREAMS_TWO = b"""# comment
{"Streams": {"base/$ARCH": {"ManifestUrl": "dir:///m/base"},
             "apps/web": {"ManifestUrl": "dir:///m/web"}},
 "StreamPatterns": {"users/.*": {"ManifestUrl": "dir:///m/u"}}}"""


def make_registry(
    url: str,
    clock: FakeReactor,
    remote: FakeRemote,
    state_dir: Path,
    secrets: dict[str, str] | None = None,
    **kwargs: Any,
) -> StreamsRegistry:
    secrets = secrets if secrets is not None else {}
    return StreamsRegistry(
        source_url=url,
        state_dir=str(state_dir),
        arch="amd64",
        reactor=clock,
        clock=clock,
        threadpool=SyncThreadPool(),
        check_interval=kwargs.pop("check_interval", 60),
        secrets=lambda: secrets,
        fetch=remote.fetch,
        inode_of=remote.inode_of,
        **kwargs,
    )


def test_empty_url_means_no_normal_streams(
    clock: FakeReactor, remote: FakeRemote, tmp_path: Path
) -> None:
    clock.advance(42)
    registry = make_registry("", clock, remote, tmp_path)
    assert registry.loaded.called and registry.is_loaded
    assert registry.current() == StreamsDocument()
    assert registry.loaded_at == 42
    registry.startService()
    clock.advance(10)
    assert remote.fetches == [] and clock.getDelayedCalls() == []
    assert registry.last_error() is None
    assert fired(Deferred.fromCoroutine(registry.ensure_known("x", lambda doc: False))) is False
    registry.stopService()


def test_url_expanding_to_nothing_means_no_normal_streams(
    clock: FakeReactor, remote: FakeRemote, tmp_path: Path
) -> None:
    registry = make_registry("$STREAMS_URL", clock, remote, tmp_path)
    assert registry.is_loaded and registry.source is None


def test_documents_are_applied_cached_and_announced(
    clock: FakeReactor, remote: FakeRemote, tmp_path: Path, logged: list[LogEvent]
) -> None:
    remote.documents[URL] = STREAMS_ONE
    state = tmp_path / "state"
    registry = make_registry(URL, clock, remote, state)
    seen: list[StreamsDocument] = []
    registry.subscribe(seen.append)
    loaded = registry.loaded
    assert not loaded.called and registry.loaded_at is None
    clock.advance(3)
    registry.startService()
    assert fired(loaded) is None
    assert list(registry.current().streams) == ["base/amd64"]
    assert seen == [registry.current()]
    assert registry.loaded_at == 3 and not registry.from_cache

    cache = state / "image-streams.json"
    assert cache.read_bytes() == STREAMS_ONE
    assert stat.S_IMODE(cache.stat().st_mode) == 0o600
    assert not (state / "image-streams.json~").exists()
    assert fired(registry.cache_flushed()) is None

    remote.documents[URL] = STREAMS_TWO
    clock.advance(60)
    assert sorted(registry.current().streams) == ["apps/web", "base/amd64"]
    assert [key for key, _regex, _config in registry.current().patterns] == ["users/.*"]
    assert len(seen) == 2 and registry.loaded_at == 63
    assert cache.read_bytes() == STREAMS_TWO
    assert any("Loaded image streams configuration from" in text for text in texts(logged))
    registry.stopService()


def test_unsubscribe(clock: FakeReactor, remote: FakeRemote, tmp_path: Path) -> None:
    remote.documents[URL] = STREAMS_ONE
    registry = make_registry(URL, clock, remote, tmp_path)
    seen: list[StreamsDocument] = []
    unsubscribe = registry.subscribe(seen.append)
    unsubscribe()
    unsubscribe()
    registry.startService()
    assert seen == [] and registry.is_loaded
    registry.stopService()


def test_subscriber_errors_are_logged_and_others_still_called(
    clock: FakeReactor, remote: FakeRemote, tmp_path: Path, logged: list[LogEvent]
) -> None:
    remote.documents[URL] = STREAMS_ONE
    registry = make_registry(URL, clock, remote, tmp_path)

    def broken(document: StreamsDocument) -> None:
        raise RuntimeError("subscriber bug")

    seen: list[StreamsDocument] = []
    registry.subscribe(broken)
    registry.subscribe(seen.append)
    registry.startService()
    assert len(seen) == 1 and registry.is_loaded
    assert any("Error in image streams subscriber" in text for text in texts(logged))
    registry.stopService()


def test_bad_document_is_logged_and_previous_kept(
    clock: FakeReactor, remote: FakeRemote, tmp_path: Path, logged: list[LogEvent]
) -> None:
    remote.documents[URL] = STREAMS_ONE
    registry = make_registry(URL, clock, remote, tmp_path)
    seen: list[StreamsDocument] = []
    registry.subscribe(seen.append)
    registry.startService()
    good = registry.current()

    remote.documents[URL] = b'{"Streams": {"a": {"BuilderUsers": "not a list"}}}'
    clock.advance(60)
    assert registry.current() is good
    assert len(seen) == 1
    error = registry.last_error()
    assert error is not None and error.startswith(f"{URL}: Streams.a.BuilderUsers")
    assert any(
        "Error loading image streams configuration: " + error in text for text in texts(logged)
    )
    assert (tmp_path / "image-streams.json").read_bytes() == STREAMS_ONE

    remote.documents[URL] = STREAMS_TWO
    clock.advance(60)
    assert registry.last_error() is None
    assert len(seen) == 2
    registry.stopService()


def test_bad_first_document_leaves_registry_unloaded(
    clock: FakeReactor, remote: FakeRemote, tmp_path: Path
) -> None:
    remote.documents[URL] = b"{not json"
    registry = make_registry(URL, clock, remote, tmp_path)
    registry.startService()
    assert not registry.is_loaded
    assert registry.current() == StreamsDocument()
    assert "line 1 column 2" in (registry.last_error() or "")
    registry.stopService()


def test_url_is_expanded_with_secrets_and_never_shown_expanded(
    clock: FakeReactor, remote: FakeRemote, tmp_path: Path, logged: list[LogEvent]
) -> None:
    secrets = {"TOKEN": "t0ps3cret", "PASS": "hunter2"}
    raw = "https://builder:${PASS}@conf.example/$TOKEN/streams.json"
    expanded = "https://builder:hunter2@conf.example/t0ps3cret/streams.json"
    remote.documents[expanded] = FetchError(
        "GET https://builder:***@conf.example/t0ps3cret/streams.json: HTTP 403 Forbidden"
    )
    registry = make_registry(raw, clock, remote, tmp_path, secrets=secrets)
    registry.startService()
    assert remote.fetches == [expanded]
    assert registry.last_error() == (
        "GET https://builder:***@conf.example/$TOKEN/streams.json: HTTP 403 Forbidden"
    )
    remote.documents[expanded] = b"{bad"
    clock.advance(60)
    error = registry.last_error() or ""
    assert error.startswith("https://builder:***@conf.example/$TOKEN/streams.json: line 1")
    all_text = "\n".join(texts(logged))
    assert "Error fetching image streams configuration" in all_text
    assert "t0ps3cret" not in all_text and "hunter2" not in all_text
    registry.stopService()


def test_secret_values_are_redacted_from_errors(
    clock: FakeReactor, remote: FakeRemote, tmp_path: Path, logged: list[LogEvent]
) -> None:
    secrets = {"TOKEN": "t0ps3cret"}
    url = "https://conf.example/$TOKEN/streams.json"
    remote.documents["https://conf.example/t0ps3cret/streams.json"] = FetchError(
        "server said: bad token t0ps3cret"
    )
    registry = make_registry(url, clock, remote, tmp_path, secrets=secrets)
    registry.startService()
    assert any(f"bad token {REDACTED}" in text for text in texts(logged))
    assert all("t0ps3cret" not in text for text in texts(logged))
    registry.stopService()


def test_cache_used_when_nothing_arrives_within_grace(
    clock: FakeReactor, remote: FakeRemote, tmp_path: Path
) -> None:
    (tmp_path / "image-streams.json").write_bytes(STREAMS_ONE)
    remote.documents[URL] = STREAMS_TWO
    remote.hold = True
    registry = make_registry(URL, clock, remote, tmp_path)
    seen: list[StreamsDocument] = []
    registry.subscribe(seen.append)
    registry.startService()
    clock.advance(4.9)
    assert not registry.is_loaded
    clock.advance(0.1)
    assert registry.is_loaded and registry.from_cache
    assert list(registry.current().streams) == ["base/amd64"]
    assert len(seen) == 1

    remote.release()  # the live document finally arrives
    assert not registry.from_cache
    assert sorted(registry.current().streams) == ["apps/web", "base/amd64"]
    assert len(seen) == 2
    assert (tmp_path / "image-streams.json").read_bytes() == STREAMS_TWO
    registry.stopService()


def test_cache_grace_is_configurable_and_errors_do_not_cut_it_short(
    clock: FakeReactor, remote: FakeRemote, tmp_path: Path
) -> None:
    (tmp_path / "image-streams.json").write_bytes(STREAMS_ONE)
    remote.documents[URL] = FetchError("GET: connection refused")
    registry = make_registry(URL, clock, remote, tmp_path, cache_grace=30, check_interval=10)
    registry.startService()
    clock.advance(29)
    assert not registry.is_loaded
    clock.advance(1)
    assert registry.from_cache
    assert registry.last_error() == "GET: connection refused"
    registry.stopService()


def test_live_document_identical_to_cache_is_not_announced_again(
    clock: FakeReactor, remote: FakeRemote, tmp_path: Path
) -> None:
    (tmp_path / "image-streams.json").write_bytes(STREAMS_ONE)
    remote.documents[URL] = STREAMS_ONE
    remote.hold = True
    registry = make_registry(URL, clock, remote, tmp_path)
    seen: list[StreamsDocument] = []
    registry.subscribe(seen.append)
    registry.startService()
    clock.advance(5)
    assert registry.from_cache
    cached = registry.current()
    remote.release()
    assert not registry.from_cache
    assert registry.current() is cached and len(seen) == 1
    registry.stopService()


def test_no_cache_file_keeps_waiting_for_the_live_source(
    clock: FakeReactor, remote: FakeRemote, tmp_path: Path
) -> None:
    remote.documents[URL] = STREAMS_ONE
    remote.hold = True
    registry = make_registry(URL, clock, remote, tmp_path)
    registry.startService()
    clock.advance(5)
    assert not registry.is_loaded
    remote.release()
    assert registry.is_loaded and not registry.from_cache
    registry.stopService()


def test_bad_cache_file_is_ignored(
    clock: FakeReactor, remote: FakeRemote, tmp_path: Path, logged: list[LogEvent]
) -> None:
    (tmp_path / "image-streams.json").write_bytes(b"{broken")
    remote.documents[URL] = STREAMS_ONE
    remote.hold = True
    registry = make_registry(URL, clock, remote, tmp_path)
    registry.startService()
    clock.advance(5)
    assert not registry.is_loaded
    assert any("Error loading image streams cache" in text for text in texts(logged))
    registry.stopService()


def test_cache_not_used_once_a_document_is_in_force(
    clock: FakeReactor, remote: FakeRemote, tmp_path: Path
) -> None:
    remote.documents[URL] = STREAMS_TWO
    registry = make_registry(URL, clock, remote, tmp_path)
    registry.startService()
    (tmp_path / "image-streams.json").write_bytes(STREAMS_ONE)
    clock.advance(5)
    assert not registry.from_cache
    assert len(registry.current().streams) == 2
    registry.stopService()


def test_ensure_known_reloads_once(clock: FakeReactor, remote: FakeRemote, tmp_path: Path) -> None:
    remote.documents[URL] = STREAMS_ONE
    registry = make_registry(URL, clock, remote, tmp_path, check_interval=0)
    registry.startService()

    def knows(name: str) -> Callable[[StreamsDocument], bool]:
        return lambda document: name in document.streams

    assert fired(Deferred.fromCoroutine(registry.ensure_known("base/amd64", knows("base/amd64"))))
    assert remote.fetches == [URL]
    remote.documents[URL] = STREAMS_TWO
    assert fired(Deferred.fromCoroutine(registry.ensure_known("apps/web", knows("apps/web"))))
    assert remote.fetches == [URL, URL]
    assert not fired(Deferred.fromCoroutine(registry.ensure_known("nope", knows("nope"))))
    assert remote.fetches == [URL, URL, URL]
    registry.stopService()


def test_stop_cancels_grace_timer(clock: FakeReactor, remote: FakeRemote, tmp_path: Path) -> None:
    remote.hold = True
    registry = make_registry(URL, clock, remote, tmp_path)
    registry.startService()
    registry.stopService()
    assert clock.getDelayedCalls() == []


def test_unknown_scheme_is_a_config_error_without_secrets(
    clock: FakeReactor, remote: FakeRemote, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as info:
        make_registry("ftp://$TOKEN/x", clock, remote, tmp_path, secrets={"TOKEN": "s3"})
    assert str(info.value) == "unknown scheme: ftp"


def test_cache_write_failure_is_logged(
    clock: FakeReactor, remote: FakeRemote, tmp_path: Path, logged: list[LogEvent]
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    remote.documents[URL] = STREAMS_ONE
    registry = make_registry(URL, clock, remote, blocker)
    registry.startService()
    assert registry.is_loaded
    assert any("Error writing image streams cache" in text for text in texts(logged))
    registry.stopService()


# -------------------------------------------------------------- VariablesFile


def make_variables(
    path: str, clock: FakeReactor, remote: FakeRemote | None = None
) -> VariablesFile:
    return VariablesFile(
        path,
        reactor=clock,
        clock=clock,
        threadpool=SyncThreadPool(),
        fetch=remote.fetch if remote else None,
        inode_of=remote.inode_of if remote else None,
    )


def test_variables_loaded_at_start(
    clock: FakeReactor, tmp_path: Path, logged: list[LogEvent]
) -> None:
    path = tmp_path / "variables.json"
    path.write_text('{"GIT_PASSWORD": "hunter2", "MIRROR": "mirror.example"}\n')
    variables = make_variables(str(path), clock)
    assert variables.values() == {}
    variables.load_initial()
    assert variables.values() == {"GIT_PASSWORD": "hunter2", "MIRROR": "mirror.example"}
    assert variables.redact("pw hunter2 at mirror.example") == f"pw {REDACTED} at {REDACTED}"
    with pytest.raises(TypeError):
        variables.values()["X"] = "y"  # type: ignore[index]
    assert any(text.startswith("Loaded variables") for text in texts(logged))


def test_no_variables_file(clock: FakeReactor) -> None:
    variables = make_variables("", clock)
    variables.load_initial()
    variables.startService()
    assert variables.values() == {} and variables.redact("text") == "text"
    assert variables.source is None
    variables.stopService()


def test_missing_variables_file_is_a_config_error(clock: FakeReactor, tmp_path: Path) -> None:
    path = tmp_path / "missing"
    with pytest.raises(ConfigError, match=f"^{path}: No such file or directory$"):
        make_variables(str(path), clock).load_initial()


def test_bad_variables_file_names_the_file_not_the_values(
    clock: FakeReactor, tmp_path: Path
) -> None:
    path = tmp_path / "vars"
    path.write_text("GOOD=hunter2\nbad line hunter2\n")
    with pytest.raises(ConfigError) as info:
        make_variables(str(path), clock).load_initial()
    assert str(path) in str(info.value) and "hunter2" not in str(info.value)


def test_variables_must_be_a_local_file(clock: FakeReactor) -> None:
    with pytest.raises(ConfigError, match="must be a local file"):
        make_variables("https://u:pw@h/vars", clock)


def test_variables_swapped_when_the_file_is_replaced(
    clock: FakeReactor, remote: FakeRemote, tmp_path: Path, logged: list[LogEvent]
) -> None:
    path = str(tmp_path / "vars")
    Path(path).write_text("A=one\n")
    remote.documents[path] = b"A=one\n"
    remote.inodes[path] = 1
    variables = make_variables(path, clock, remote)
    variables.load_initial()
    variables.startService()  # same content at start: nothing new
    assert sum("Loaded" in text for text in texts(logged)) == 1

    remote.documents[path] = b"A=two\nB=three\n"
    clock.advance(1)
    assert variables.values() == {"A": "one"}  # same inode: not re-read
    remote.inodes[path] = 2
    clock.advance(1)
    assert variables.values() == {"A": "two", "B": "three"}
    assert variables.redact("one two three") == f"one {REDACTED} {REDACTED}"
    assert any(text.startswith("Loaded new variables") for text in texts(logged))

    remote.documents[path] = b"bad line with s3cret\n"
    remote.inodes[path] = 3
    clock.advance(1)
    assert variables.values() == {"A": "two", "B": "three"}
    errors = [text for text in texts(logged) if text.startswith("Error loading variables")]
    assert errors == [f"Error loading variables: {path}: line 1: expected NAME=Value"]

    del remote.inodes[path]
    clock.advance(1)
    assert variables.values() == {"A": "two", "B": "three"}
    assert any(f"Error reading variables file: stat {path}" in text for text in texts(logged))
    variables.stopService()
    assert all("s3cret" not in text and "three" not in text for text in texts(logged))


def test_variables_watched_without_initial_load(clock: FakeReactor, remote: FakeRemote) -> None:
    remote.documents["/etc/vars"] = b'{"X": "y"}'
    remote.inodes["/etc/vars"] = 9
    variables = make_variables("file:///etc/vars", clock, remote)
    variables.startService()
    assert variables.values() == {"X": "y"}
    variables.stopService()


def test_registry_stop_waits_for_the_cache_write_in_flight(
    clock: FakeReactor, remote: FakeRemote, tmp_path: Path
) -> None:
    pool = SyncThreadPool(auto=False)
    remote.documents[URL] = STREAMS_ONE
    registry = StreamsRegistry(
        source_url=URL,
        state_dir=str(tmp_path),
        arch="amd64",
        reactor=clock,
        clock=clock,
        threadpool=pool,
        check_interval=60,
        secrets=dict,
        fetch=remote.fetch,
        inode_of=remote.inode_of,
    )
    registry.startService()
    assert registry.is_loaded and pool.queue  # the cache write waits for a thread
    stopped = registry.stopService()
    assert not has_fired(stopped)
    pool.run_all()
    assert fired(stopped) is None
    assert (tmp_path / "image-streams.json").read_bytes() == STREAMS_ONE
    assert clock.getDelayedCalls() == []


def test_variables_stop_is_a_deferred_and_ends_the_polling(
    clock: FakeReactor, remote: FakeRemote, tmp_path: Path
) -> None:
    path = str(tmp_path / "variables")
    remote.inodes[path] = 1
    remote.documents[path] = b"A=1\n"
    variables = make_variables(path, clock, remote)
    variables.startService()
    assert variables.values() == {"A": "1"}
    assert fired(variables.stopService()) is None
    polls = len(remote.stats)
    clock.advance(10)
    assert len(remote.stats) == polls
    assert clock.getDelayedCalls() == []
