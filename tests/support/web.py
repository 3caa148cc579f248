"""Rendering Klein pages in unit tests: a recording request, its answer, common checks."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from twisted.web import server
from twisted.web.test.requesthelper import DummyChannel


class Request(server.Request):
    """A twisted.web request on a dummy channel that records what is written."""

    def __init__(self, target: bytes, method: bytes = b"GET", port: int = 6975) -> None:
        super().__init__(DummyChannel(), False)
        path = target.partition(b"?")[0]
        self.uri = target
        self.path = path
        self.method = method
        self.clientproto = b"HTTP/1.1"
        self.prepath: list[bytes] = []
        self.postpath = path.split(b"/")[1:]
        self.setHost(b"localhost", port)
        self.written: list[bytes] = []
        self.finish_count = 0

    def write(self, data: bytes) -> None:
        assert not self.finished, "write after finish"
        self.written.append(data)

    def finish(self) -> None:
        self.finish_count += 1
        if not self.finished:
            self.finished = True
            self._cleanup()


@dataclass
class Answer:
    code: int
    headers: dict[str, str]
    body: bytes
    request: Request | None = None

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")


def start(resource: Any, target: str, method: bytes = b"GET") -> Request:
    """Render ``target`` on ``resource``; the request may finish later."""
    req = Request(target.encode("utf-8"), method)
    resource.render(req)
    return req


def answer(req: Request) -> Answer:
    """The request's status, headers (lower-case names) and body so far."""
    headers = {
        name.decode().lower(): b", ".join(values).decode()
        for name, values in req.responseHeaders.getAllRawHeaders()
    }
    return Answer(req.code, headers, b"".join(req.written), req)


def assert_security_headers(a: Answer) -> None:
    assert a.headers["x-frame-options"] == "DENY"
    assert a.headers["x-xss-protection"] == "1"
    assert a.headers["x-content-type-options"] == "nosniff"
    assert (
        a.headers["content-security-policy"]
        == "default-src 'self' ;style-src 'self' 'unsafe-inline'"
    )


def tables(body: str) -> list[list[tuple[str, list[str]]]]:
    """Every table: its rows as (``<tr>`` attributes, cell HTML), header rows included."""
    out = []
    for table in re.findall(r"<table[^>]*>(.*?)</table>", body, re.S):
        rows = []
        for attrs, inner in re.findall(r"<tr([^>]*)>(.*?)</tr>", table, re.S):
            cells = [c.strip() for c in re.findall(r"<t[dh]>(.*?)</t[dh]>", inner, re.S)]
            rows.append((attrs.strip(), cells))
        out.append(rows)
    return out
