"""Fetching configuration documents by URL: ``file://``, absolute paths, ``http(s)://``.

This is the "plain opener" of the Go daemon (reference §2.1): the main
configuration and the per-stream filter, tags and triggers URLs are read
through it. Local files are read in the thread pool so the reactor never
blocks on the disk. HTTP fetches use treq; a password in the URL's userinfo
is sent as basic authentication and never appears in an error message.
A document is at most ``max_size`` bytes (16 MiB by default): a larger one
is an error naming the URL, and no more of it than that is ever held.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit, urlunsplit

import treq
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool
from twisted.web.http import RESPONSES
from twisted.web.iweb import UNKNOWN_LENGTH, IResponse

from imaginator.config.urls import redact_url
from imaginator.goformats.units import format_bytes
from imaginator.runtime.reactors import IReactorTimeAndTCP, IReactorTimeTCPAndThreads

DEFAULT_HTTP_TIMEOUT = 60.0

MAX_DOCUMENT_SIZE = 16 << 20
"""The largest configuration document fetched (16 MiB)."""


class HttpClient(Protocol):
    """What fetching asks of an HTTP client: the ``treq`` module itself or a
    ``treq.client.HTTPClient`` (tests pass one on a fake agent)."""

    def get(
        self,
        url: str,
        /,
        *,
        timeout: float | None = ...,
        reactor: Any = ...,  # treq types it by a private interface of its own
        auth: tuple[str, str] | None = ...,
    ) -> Awaitable[IResponse]: ...


class FetchError(Exception):
    """A document could not be fetched; the message names the (redacted) URL."""


def _scrub(message: str, url: str) -> str:
    """Remove ``url``'s password from ``message``, in any spelling of it."""
    try:
        password = urlsplit(url).password
    except ValueError:
        return message
    message = message.replace(url, redact_url(url))
    if password:
        for spelling in {password, unquote(password)}:
            message = message.replace(spelling, "***")
    return message


class _TooLarge(Exception):
    """A document passed the size limit."""


def _too_large(shown: str, limit: int) -> FetchError:
    return FetchError(f"{shown}: document larger than {format_bytes(limit)}")


def _read_file(path: str, limit: int) -> bytes:
    with open(path, "rb") as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise _TooLarge()
    return data


def _local_path(url: str) -> str | None:
    """The file path named by ``url`` if it is local (``file://`` or absolute)."""
    if url.startswith("/"):
        return url
    if url.startswith("file:"):
        return unquote(urlsplit(url).path)
    return None


def _split_credentials(url: str) -> tuple[str, tuple[str, str] | None]:
    """``url`` without userinfo, and (user, password) for basic auth if present."""
    parts = urlsplit(url)
    if parts.username is None:
        return url, None
    host = parts.netloc.rpartition("@")[2]
    bare = urlunsplit(parts._replace(netloc=host))
    return bare, (unquote(parts.username), unquote(parts.password or ""))


async def _read_body(response: IResponse, limit: int) -> bytes:
    """The body of ``response``; past ``limit`` bytes the connection is closed."""
    parts: list[bytes] = []
    received = 0
    length = response.length

    def keep(data: bytes) -> None:
        nonlocal received
        received += len(data)
        if received > limit or (length is not UNKNOWN_LENGTH and length > limit):
            raise _TooLarge()
        parts.append(data)

    await treq.collect(response, keep)
    return b"".join(parts)


async def _fetch_http(
    url: str,
    reactor: IReactorTimeAndTCP,
    http_client: HttpClient | None,
    timeout: float,
    limit: int,
) -> bytes:
    bare, auth = _split_credentials(url)
    client: HttpClient = http_client if http_client is not None else treq
    kwargs: dict[str, Any] = {"timeout": timeout, "reactor": reactor}
    if auth is not None:
        kwargs["auth"] = auth
    shown = redact_url(url)
    try:
        response = await client.get(bare, **kwargs)
        body = await _read_body(response, limit)
    except _TooLarge:
        raise _too_large(f"GET {shown}", limit) from None
    except Exception as exc:
        raise FetchError(_scrub(f"GET {shown}: {exc}", url)) from None
    if response.code != 200:
        # The server's own reason phrase, as Go's resp.Status shows it.
        raw = getattr(response, "phrase", b"") or RESPONSES.get(response.code, b"")
        phrase = raw.decode("latin-1") if isinstance(raw, bytes) else str(raw)
        raise FetchError(f"GET {shown}: HTTP {response.code} {phrase}".rstrip())
    return body


async def fetch_url(
    url: str,
    *,
    reactor: IReactorTimeTCPAndThreads,
    threadpool: ThreadPool,
    http_client: HttpClient | None = None,
    timeout: float = DEFAULT_HTTP_TIMEOUT,
    max_size: int = MAX_DOCUMENT_SIZE,
) -> bytes:
    """Fetch the document at ``url``.

    ``file:///abs/path`` and ``/abs/path`` are read in ``threadpool``;
    ``http://`` and ``https://`` are fetched with treq (``http_client`` if
    given, e.g. a ``treq.client.HTTPClient``); anything else is
    ``FetchError("unknown scheme: X")``. Non-200 answers are
    ``FetchError("GET <url>: HTTP 404 Not Found")``; a document over
    ``max_size`` bytes is ``FetchError("<url>: document larger than 16 MiB")``.
    """
    path = _local_path(url)
    if path is not None:
        try:
            return await deferToThreadPool(reactor, threadpool, _read_file, path, max_size)
        except _TooLarge:
            raise _too_large(redact_url(url), max_size) from None
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise FetchError(_scrub(f"open {path}: {reason}", url)) from None
    try:
        scheme = urlsplit(url).scheme
    except ValueError as exc:
        raise FetchError(_scrub(f"bad URL {redact_url(url)}: {exc}", url)) from None
    if scheme in ("http", "https"):
        return await _fetch_http(url, reactor, http_client, timeout, max_size)
    raise FetchError(f"unknown scheme: {scheme}")
