"""Tests for imaginator.sources.documents: local files, a real local HTTP server, errors."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from treq.client import HTTPClient
from twisted.internet import reactor as _reactor
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from imaginator.sources.documents import MAX_DOCUMENT_SIZE, FetchError, fetch_url, redact_url

reactor: Any = _reactor


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://host/x.json", "https://host/x.json"),
        ("https://user@host/x.json", "https://user@host/x.json"),
        ("https://user:s3cret@host/x.json", "https://user:***@host/x.json"),
        ("https://user:s3cret@host:8443/x?q=1", "https://user:***@host:8443/x?q=1"),
        ("https://user:p%40ss@host/", "https://user:***@host/"),
        ("file:///etc/conf.json", "file:///etc/conf.json"),
        ("/etc/conf.json", "/etc/conf.json"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


async def fetch(url: str, **kwargs: Any) -> bytes:
    return await fetch_url(url, reactor=reactor, threadpool=reactor.getThreadPool(), **kwargs)


@pytest_twisted.ensureDeferred
async def test_reads_file_urls_and_absolute_paths(tmp_path: Path) -> None:
    path = tmp_path / "conf dir" / "conf.json"
    path.parent.mkdir()
    path.write_bytes(b'{"a": 1}\n')
    assert await fetch(str(path)) == b'{"a": 1}\n'
    assert await fetch("file://" + str(path).replace(" ", "%20")) == b'{"a": 1}\n'


@pytest_twisted.ensureDeferred
async def test_missing_file_is_a_fetch_error(tmp_path: Path) -> None:
    missing = tmp_path / "missing.json"
    with pytest.raises(FetchError) as info:
        await fetch(f"file://{missing}")
    assert str(info.value) == f"open {missing}: No such file or directory"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://host/x", "unknown scheme: ftp"),
        ("git@github.com:org/repo.git", "unknown scheme: "),
        ("relative/path.json", "unknown scheme: "),
        ("dir:///x", "unknown scheme: dir"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_unknown_schemes(url: str, message: str) -> None:
    with pytest.raises(FetchError) as info:
        await fetch(url)
    assert str(info.value) == message


class _Document(Resource):
    """Serves fixed bodies; records the Authorization header it saw."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.authorizations: list[bytes | None] = []

    def render_GET(self, request: Any) -> bytes:
        self.authorizations.append(request.getHeader(b"authorization"))
        if request.path == b"/conf.json":
            return b'{"ImageStreamsUrl": "x"}'
        if request.path == b"/trouble":
            request.setResponseCode(599, b"Custom Trouble")
            return b"oops"
        if request.path == b"/big":
            return b"b" * 2000
        if request.path == b"/chunked":
            # No Content-Length: the size is only known by reading.
            for _ in range(100):
                request.write(b"c" * 1000)
            request.finish()
            return NOT_DONE_YET
        request.setResponseCode(404)
        return b"not here"


@pytest_twisted.async_yield_fixture
async def server() -> AsyncIterator[tuple[str, _Document]]:
    resource = _Document()
    port = reactor.listenTCP(0, Site(resource), interface="127.0.0.1")
    try:
        yield f"127.0.0.1:{port.getHost().port}", resource
    finally:
        await port.stopListening()


@pytest_twisted.async_yield_fixture
async def client() -> AsyncIterator[HTTPClient]:
    pool = HTTPConnectionPool(reactor, persistent=False)
    try:
        yield HTTPClient(Agent(reactor, pool=pool))
    finally:
        await pool.closeCachedConnections()


@pytest_twisted.ensureDeferred
async def test_http_get(server: tuple[str, _Document], client: HTTPClient) -> None:
    address, resource = server
    body = await fetch(f"http://{address}/conf.json", http_client=client)
    assert body == b'{"ImageStreamsUrl": "x"}'
    assert resource.authorizations == [None]


@pytest_twisted.ensureDeferred
async def test_http_get_with_the_default_client(server: tuple[str, _Document]) -> None:
    address, _ = server
    assert await fetch(f"http://{address}/conf.json") == b'{"ImageStreamsUrl": "x"}'


@pytest.mark.parametrize(
    ("path", "status"), [("/missing", "404 Not Found"), ("/trouble", "599 Custom Trouble")]
)
@pytest_twisted.ensureDeferred
async def test_http_status_other_than_200_is_an_error(
    server: tuple[str, _Document], client: HTTPClient, path: str, status: str
) -> None:
    address, _ = server
    with pytest.raises(FetchError) as info:
        await fetch(f"http://{address}{path}", http_client=client)
    assert str(info.value) == f"GET http://{address}{path}: HTTP {status}"


@pytest_twisted.ensureDeferred
async def test_userinfo_is_sent_as_basic_auth_and_never_shown(
    server: tuple[str, _Document], client: HTTPClient
) -> None:
    address, resource = server
    base = f"http://fred:s3cr%3At@{address}"
    assert await fetch(f"{base}/conf.json", http_client=client) == b'{"ImageStreamsUrl": "x"}'
    assert resource.authorizations == [b"Basic " + base64.b64encode(b"fred:s3cr:t")]
    with pytest.raises(FetchError) as info:
        await fetch(f"{base}/missing", http_client=client)
    assert str(info.value) == f"GET http://fred:***@{address}/missing: HTTP 404 Not Found"


@pytest_twisted.ensureDeferred
async def test_connection_errors_hide_the_password(client: HTTPClient) -> None:
    # A port that was just closed refuses connections.
    port = reactor.listenTCP(0, Site(Resource()), interface="127.0.0.1")
    number = port.getHost().port
    await port.stopListening()
    url = f"http://fred:s3cret@127.0.0.1:{number}/conf.json"
    with pytest.raises(FetchError) as info:
        await fetch(url, http_client=client)
    message = str(info.value)
    assert message.startswith(f"GET http://fred:***@127.0.0.1:{number}/conf.json: ")
    assert "s3cret" not in message


@pytest_twisted.ensureDeferred
async def test_documents_over_the_size_limit_are_refused(
    server: tuple[str, _Document], client: HTTPClient, tmp_path: Path
) -> None:
    assert MAX_DOCUMENT_SIZE == 16 << 20
    address, _ = server
    for path in ("/big", "/chunked"):
        url = f"http://fred:s3cret@{address}{path}"
        with pytest.raises(FetchError) as info:
            await fetch(url, http_client=client, max_size=1000)
        assert (
            str(info.value) == f"GET http://fred:***@{address}{path}: document larger than 1000 B"
        )
    assert await fetch(f"http://{address}/big", http_client=client, max_size=2000) == b"b" * 2000
    local = tmp_path / "conf.json"
    local.write_bytes(b"x" * 1001)
    with pytest.raises(FetchError) as info:
        await fetch(f"file://{local}", max_size=1000)
    assert str(info.value) == f"file://{local}: document larger than 1000 B"
    assert await fetch(str(local), max_size=1001) == b"x" * 1001
