"""imaginator.sources (watch, streams, variables) against real files, HTTP and git.

Everything runs on the real reactor and its real thread pool; only time is
fake: timers run on a ``Clock`` the tests advance, and the tests then wait on
Deferreds the code fires (a delivered document, a reported error, the end of
the running check). Nothing sleeps.
"""

from __future__ import annotations

import os
import stat
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest
import pytest_twisted
from dulwich import porcelain
from dulwich.repo import Repo
from dulwich.server import DictBackend
from dulwich.web import make_wsgi_chain
from treq.client import HTTPClient
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from imaginator.config.streams import StreamsDocument
from imaginator.sources.streams import StreamsRegistry
from imaginator.sources.variables import VariablesFile
from imaginator.sources.watch import DocumentSource

reactor: Any = _reactor

IDENTITY = b"Test <test@example.org>"
STREAMS_ONE = b'{"Streams": {"base/$ARCH": {"ManifestUrl": "dir:///m/base"}}}\n'
STREAMS_TWO = b'{"Streams": {"base/$ARCH": {}, "apps/web": {}}}\n'


# ------------------------------------------------------------------ helpers


class Collector:
    """Receives a DocumentSource's callbacks; tests wait for the next one."""

    def __init__(self) -> None:
        self.documents: list[bytes] = []
        self.errors: list[str] = []
        self._document_waiters: list[Deferred[bytes]] = []
        self._error_waiters: list[Deferred[str]] = []

    def on_document(self, data: bytes) -> None:
        self.documents.append(data)
        waiters, self._document_waiters = self._document_waiters, []
        for waiter in waiters:
            waiter.callback(data)

    def on_error(self, message: str) -> None:
        self.errors.append(message)
        waiters, self._error_waiters = self._error_waiters, []
        for waiter in waiters:
            waiter.callback(message)

    def next_document(self) -> Deferred[bytes]:
        waiter: Deferred[bytes] = Deferred()
        self._document_waiters.append(waiter)
        return waiter

    def next_error(self) -> Deferred[str]:
        waiter: Deferred[str] = Deferred()
        self._error_waiters.append(waiter)
        return waiter


def make_source(url: str, clock: Clock, collector: Collector, **kwargs: Any) -> DocumentSource:
    kwargs.setdefault("check_interval", 60)
    return DocumentSource(
        url,
        reactor=reactor,
        clock=clock,
        threadpool=reactor.getThreadPool(),
        on_document=collector.on_document,
        on_error=collector.on_error,
        name="test document",
        **kwargs,
    )


def replace_file(path: Path, data: bytes) -> None:
    """Replace ``path`` by a new file (a new inode), the way deploy tools do."""
    new = path.with_name(path.name + ".new")
    new.write_bytes(data)
    new.rename(path)


def next_update(registry: StreamsRegistry) -> Deferred[StreamsDocument]:
    """Fires with the next document the registry puts in force."""
    waiter: Deferred[StreamsDocument] = Deferred()

    def once(document: StreamsDocument) -> None:
        unsubscribe()
        waiter.callback(document)

    unsubscribe = registry.subscribe(once)
    return waiter


# ------------------------------------------------------------------- servers


class Document(Resource):
    """Serves one body with a settable status; can also hold requests open."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.body = b""
        self.code = 200
        self.hold = False
        self.held: list[Any] = []

    def render_GET(self, request: Any) -> Any:
        if self.hold:
            self.held.append(request)
            return NOT_DONE_YET
        request.setResponseCode(self.code)
        return self.body

    def release(self) -> None:
        """Answer the held requests, and serve later ones at once."""
        self.hold = False
        held, self.held = self.held, []
        for request in held:
            if not request._disconnected:
                request.write(self.body)
                request.finish()


@pytest_twisted.async_yield_fixture
async def http_server() -> AsyncIterator[tuple[str, Document]]:
    resource = Document()
    port = reactor.listenTCP(0, Site(resource), interface="127.0.0.1")
    try:
        yield f"127.0.0.1:{port.getHost().port}", resource
    finally:
        resource.release()
        await port.stopListening()


@pytest_twisted.async_yield_fixture
async def client() -> AsyncIterator[HTTPClient]:
    pool = HTTPConnectionPool(reactor, persistent=False)
    try:
        yield HTTPClient(Agent(reactor, pool=pool))
    finally:
        await pool.closeCachedConnections()


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def git_http_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """dulwich's smart-HTTP server for one repository at ``/conf.git``, in a thread."""
    root = tmp_path / "served" / "conf.git"
    root.parent.mkdir()
    make_repo(root)
    backend = DictBackend({"/conf.git": Repo(str(root))})
    server: WSGIServer = make_server(
        "127.0.0.1", 0, make_wsgi_chain(backend), handler_class=_QuietHandler
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/conf.git", root
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


# -------------------------------------------------------------- repositories


def make_repo(root: Path) -> None:
    """A working repository (default branch ``main``) holding the streams file."""
    Repo.init(str(root), mkdir=True, default_branch=b"main").close()
    (root / "conf").mkdir()
    (root / "conf" / "image-streams.json").write_bytes(STREAMS_ONE)
    (root / "README").write_text("configuration\n")
    (root / "conf" / "link.json").symlink_to("/etc/passwd")
    commit(root, "one")


def commit(root: Path, message: str) -> None:
    paths = [str(p) for p in root.rglob("*") if ".git" not in p.relative_to(root).parts]
    porcelain.add(str(root), paths=paths)
    porcelain.commit(str(root), message=message.encode(), author=IDENTITY, committer=IDENTITY)


@pytest.fixture
def scratch_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private default temporary directory, to check git checkouts are removed."""
    directory = tmp_path / "tmp"
    directory.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(directory))
    return directory


# -------------------------------------------------------------- local files


@pytest_twisted.ensureDeferred
async def test_local_file_delivered_at_start_and_when_replaced(tmp_path: Path) -> None:
    path = tmp_path / "image-streams.json"
    path.write_bytes(b"one")
    clock = Clock()
    collector = Collector()
    source = make_source(f"file://{path}", clock, collector, check_interval=0)
    first = source.first_document
    source.startService()
    try:
        await first
        await source.idle()  # the check that delivered it has finished
        assert collector.documents == [b"one"]

        path.write_bytes(b"edited in place")
        clock.advance(1)
        await source.idle()
        assert collector.documents == [b"one"]  # same inode: not a new document

        arrived = collector.next_document()
        replace_file(path, b"two")
        clock.advance(1)
        assert await arrived == b"two"
        await source.idle()

        replace_file(path, b"two")  # new inode, same content
        clock.advance(1)
        await source.idle()
        assert collector.documents == [b"one", b"two"]

        path.write_bytes(b"three")  # in place again; an explicit reload reads it
        assert await source.reload_now() is True
        assert collector.documents[-1] == b"three"
        assert await source.reload_now() is False

        failed = collector.next_error()
        path.unlink()
        clock.advance(1)
        assert await failed == f"stat {path}: No such file or directory"
        await source.idle()
        clock.advance(1)
        await source.idle()
        assert len(collector.errors) == 1  # an outage is reported once

        arrived = collector.next_document()
        path.write_bytes(b"back")
        clock.advance(1)
        assert await arrived == b"back"
        await source.idle()
    finally:
        source.stopService()


# -------------------------------------------------------------------- HTTP


@pytest_twisted.ensureDeferred
async def test_http_document_polled_every_interval(
    http_server: tuple[str, Document], client: HTTPClient
) -> None:
    address, resource = http_server
    resource.body = b"one"
    url = f"http://fred:s3cret@{address}/streams.json"
    clock = Clock()
    collector = Collector()
    source = make_source(url, clock, collector, check_interval=30, http_client=client)
    first = source.first_document
    source.startService()
    try:
        await first
        await source.idle()  # the check that delivered it has finished
        assert collector.documents == [b"one"]

        clock.advance(30)
        await source.idle()
        assert collector.documents == [b"one"]  # unchanged

        arrived = collector.next_document()
        resource.body = b"two"
        clock.advance(30)
        assert await arrived == b"two"
        await source.idle()

        failed = collector.next_error()
        resource.code = 404
        clock.advance(30)
        message = await failed
        await source.idle()
        assert message == f"GET http://fred:***@{address}/streams.json: HTTP 404 Not Found"
        assert source.last_error == message

        arrived = collector.next_document()
        resource.code = 200
        resource.body = b"three"
        clock.advance(30)
        assert await arrived == b"three"
        await source.idle()
        assert source.last_error is None
        assert all("s3cret" not in error for error in collector.errors)
    finally:
        source.stopService()


@pytest_twisted.ensureDeferred
async def test_http_once_only(http_server: tuple[str, Document], client: HTTPClient) -> None:
    address, resource = http_server
    resource.body = b"one"
    clock = Clock()
    collector = Collector()
    source = make_source(
        f"http://{address}/s.json", clock, collector, check_interval=0, http_client=client
    )
    first = source.first_document
    source.startService()
    try:
        await first
        await source.idle()  # the check that delivered it has finished
        resource.body = b"two"
        clock.advance(3600)
        await source.idle()
        assert collector.documents == [b"one"]
        assert clock.getDelayedCalls() == []
        assert await source.reload_now() is True
        assert collector.documents == [b"one", b"two"]
    finally:
        source.stopService()


# --------------------------------------------------------------------- git


@pytest_twisted.ensureDeferred
async def test_git_document_over_file_url(tmp_path: Path, scratch_tmp: Path) -> None:
    repo = tmp_path / "conf.git"
    make_repo(repo)
    clock = Clock()
    collector = Collector()
    source = make_source(f"file://{repo}?conf/image-streams.json", clock, collector)
    first = source.first_document
    source.startService()
    try:
        await first
        await source.idle()  # the check that delivered it has finished
        assert collector.documents == [STREAMS_ONE]
        assert os.listdir(scratch_tmp) == []  # the checkout was removed

        clock.advance(60)
        await source.idle()
        assert collector.documents == [STREAMS_ONE]

        arrived = collector.next_document()
        (repo / "conf" / "image-streams.json").write_bytes(STREAMS_TWO)
        commit(repo, "two")
        clock.advance(60)
        assert await arrived == STREAMS_TWO
        await source.idle()
        assert os.listdir(scratch_tmp) == []
        assert collector.errors == []
    finally:
        source.stopService()


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("conf/missing.json", "conf/missing.json does not exist in repository"),
        ("nodir/streams.json", "nodir does not exist in repository"),
        ("conf/link.json", "conf/link.json is not a regular file"),
        ("conf", "conf is not a regular file"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_git_document_errors(
    tmp_path: Path, scratch_tmp: Path, path: str, reason: str
) -> None:
    repo = tmp_path / "conf.git"
    make_repo(repo)
    collector = Collector()
    source = make_source(f"file://{repo}?{path}", Clock(), collector)
    failed = collector.next_error()
    source.startService()
    try:
        message = await failed
        await source.idle()
        assert message.endswith(reason), message
        assert collector.documents == []
        assert os.listdir(scratch_tmp) == []
    finally:
        source.stopService()


@pytest_twisted.ensureDeferred
async def test_git_document_over_smart_http(
    git_http_server: tuple[str, Path], scratch_tmp: Path
) -> None:
    base, root = git_http_server
    clock = Clock()
    collector = Collector()
    source = make_source(f"{base}?conf/image-streams.json", clock, collector, check_interval=10)
    first = source.first_document
    source.startService()
    try:
        await first
        await source.idle()  # the check that delivered it has finished
        assert collector.documents == [STREAMS_ONE]
        arrived = collector.next_document()
        (root / "conf" / "image-streams.json").write_bytes(STREAMS_TWO)
        commit(root, "two")
        clock.advance(10)
        assert await arrived == STREAMS_TWO
        await source.idle()
        assert os.listdir(scratch_tmp) == []
    finally:
        source.stopService()


# ----------------------------------------------------------- StreamsRegistry


def make_registry(url: str, state_dir: Path, clock: Clock, **kwargs: Any) -> StreamsRegistry:
    secrets: dict[str, str] = kwargs.pop("secrets", {})
    return StreamsRegistry(
        source_url=url,
        state_dir=str(state_dir),
        arch="arm64",
        reactor=reactor,
        clock=clock,
        threadpool=reactor.getThreadPool(),
        check_interval=kwargs.pop("check_interval", 60),
        secrets=lambda: secrets,
        **kwargs,
    )


@pytest_twisted.ensureDeferred
async def test_registry_with_a_local_file_and_its_cache(tmp_path: Path) -> None:
    path = tmp_path / "image-streams.json"
    path.write_bytes(STREAMS_ONE)
    state = tmp_path / "state"
    clock = Clock()
    registry = make_registry(str(path), state, clock)
    loaded = registry.loaded
    registry.startService()
    try:
        await loaded
        await registry.source.idle()  # type: ignore[union-attr]
        assert list(registry.current().streams) == ["base/arm64"]
        await registry.cache_flushed()
        cache = state / "image-streams.json"
        assert cache.read_bytes() == STREAMS_ONE
        assert stat.S_IMODE(cache.stat().st_mode) == 0o600

        updated = next_update(registry)
        replace_file(path, STREAMS_TWO)
        clock.advance(1)
        document = await updated
        await registry.source.idle()  # type: ignore[union-attr]
        assert sorted(document.streams) == ["apps/web", "base/arm64"]
        assert registry.current() is document
        await registry.cache_flushed()
        assert cache.read_bytes() == STREAMS_TWO
        assert not (state / "image-streams.json~").exists()

        replace_file(path, b'{"StreamPatterns": {"(": {}}}')
        clock.advance(1)
        await registry.source.idle()  # type: ignore[union-attr]
        assert registry.current() is document
        assert (registry.last_error() or "").startswith(f"{path}: StreamPatterns")
        await registry.cache_flushed()
        assert cache.read_bytes() == STREAMS_TWO

        def knows_new(doc: StreamsDocument) -> bool:
            return "apps/new" in doc.streams

        assert await registry.ensure_known("apps/new", knows_new) is False
        path.write_bytes(b'{"Streams": {"apps/new": {}}}')  # in place: only a reload sees it
        assert await registry.ensure_known("apps/new", knows_new) is True
        assert registry.last_error() is None
    finally:
        await registry.stopService()


@pytest_twisted.ensureDeferred
async def test_registry_falls_back_to_the_cache_while_the_server_is_silent(
    tmp_path: Path, http_server: tuple[str, Document], client: HTTPClient
) -> None:
    address, resource = http_server
    (tmp_path / "image-streams.json").write_bytes(STREAMS_ONE)
    resource.hold = True
    resource.body = STREAMS_TWO
    clock = Clock()
    registry = make_registry(
        f"http://{address}/$WHICH.json",
        tmp_path,
        clock,
        secrets={"WHICH": "streams"},
        http_client=client,
    )
    loaded = registry.loaded
    registry.startService()
    try:
        clock.advance(5)
        await loaded
        assert registry.from_cache
        assert list(registry.current().streams) == ["base/arm64"]

        updated = next_update(registry)
        resource.release()
        document = await updated
        assert not registry.from_cache
        assert sorted(document.streams) == ["apps/web", "base/arm64"]
        await registry.cache_flushed()
        assert (tmp_path / "image-streams.json").read_bytes() == STREAMS_TWO
    finally:
        await registry.stopService()


@pytest_twisted.ensureDeferred
async def test_registry_reads_streams_from_git_with_secret_expansion(
    tmp_path: Path, scratch_tmp: Path
) -> None:
    repo = tmp_path / "conf.git"
    make_repo(repo)
    clock = Clock()
    registry = make_registry(
        "file://$CONF_REPO?conf/image-streams.json",
        tmp_path / "state",
        clock,
        secrets={"CONF_REPO": str(repo)},
        check_interval=0,
    )
    loaded = registry.loaded
    registry.startService()
    try:
        await loaded
        assert list(registry.current().streams) == ["base/arm64"]
        assert os.listdir(scratch_tmp) == []
    finally:
        await registry.stopService()


# -------------------------------------------------------------- VariablesFile


@pytest_twisted.ensureDeferred
async def test_variables_file_swapped_when_replaced(tmp_path: Path) -> None:
    path = tmp_path / "variables"
    path.write_text('{"GIT_PASSWORD": "hunter2"}\n')
    clock = Clock()
    variables = VariablesFile(
        str(path), reactor=reactor, clock=clock, threadpool=reactor.getThreadPool()
    )
    variables.load_initial()
    assert variables.values() == {"GIT_PASSWORD": "hunter2"}
    variables.startService()
    try:
        assert variables.source is not None
        await variables.source.idle()
        replace_file(path, b"GIT_PASSWORD=correct-horse\n")
        clock.advance(1)
        await variables.source.idle()
        assert variables.values() == {"GIT_PASSWORD": "correct-horse"}
        assert variables.redact("pw=correct-horse hunter2") == "pw=[REDACTED] hunter2"

        replace_file(path, b"not a variables file\n")
        clock.advance(1)
        await variables.source.idle()
        assert variables.values() == {"GIT_PASSWORD": "correct-horse"}
    finally:
        variables.stopService()
