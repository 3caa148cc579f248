"""Dependency generation from real git repositories and a real ``dir://`` tree.

Two repositories made with dulwich (default branch ``main``, so the fetch
must follow the remote's HEAD) are fetched through ``file://`` URLs by the
real :func:`~imaginator.sources.git.fetch_manifest`, on the real
reactor and its thread pool. The graph page is then rendered with the real
``dot``.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from dulwich import porcelain
from dulwich.repo import Repo
from twisted.internet import reactor as _reactor
from twisted.web.test.requesthelper import DummyRequest

from imaginator.config.streams import StreamsDocument, parse_streams
from imaginator.deps import DependencyData, DependencyGenerator, graphviz_dot
from imaginator.sources.git import fetch_manifest
from imaginator.web.graph_pages import DotError, GraphPages, spawn_dot

reactor: Any = _reactor

IDENTITY = b"Test <test@example.org>"
ARCH = "amd64"
HAVE_DOT = shutil.which("dot") is not None


class Registry:
    """The part of a StreamsRegistry the generator uses."""

    def __init__(self, document: StreamsDocument) -> None:
        self.document = document

    def current(self) -> StreamsDocument:
        return self.document

    def subscribe(self, callback: Callable[[StreamsDocument], object]) -> Callable[[], None]:
        return lambda: None


def make_repo(root: Path, files: dict[str, str]) -> None:
    """A repository with one commit of ``files`` on branch ``main``."""
    root.mkdir(parents=True)
    Repo.init(str(root), default_branch=b"main").close()
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    porcelain.add(str(root), paths=[str(root / name) for name in files])
    porcelain.commit(str(root), message=b"manifests", author=IDENTITY, committer=IDENTITY)


def manifest(source: str) -> str:
    return json.dumps({"SourceImage": source}) + "\n"


class CountingFetch:
    """The real fetch, counting calls per URL (called in pool threads)."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, url: str, dest: str, log: Callable[[str], None]) -> None:
        with self._lock:
            self.calls.append(url)
        fetch_manifest(url, "", dest, log=log)


def setup_streams(tmp_path: Path) -> tuple[StreamsDocument, dict[str, str]]:
    repos = tmp_path / "repos"
    make_repo(
        repos / "one",
        {
            "a/manifest": manifest("bootstrap/bb"),
            "a/scripts/10_x": "#!/bin/sh\n",
            "b/manifest": manifest("apps/a"),
            "b/files/etc/motd": "hello\n",
        },
    )
    make_repo(repos / "two", {"manifest": manifest("users/$IMAGE_STREAM_LEAF_NAME/base")})
    tree = tmp_path / "tree"
    (tree / "d").mkdir(parents=True)
    (tree / "d" / "manifest").write_text(manifest("nowhere/$ARCH"))
    document = {
        "Streams": {
            "apps/a": {"ManifestUrl": f"file://{repos}/one", "ManifestDirectory": "a"},
            # The same repository through a variable of the variables file.
            "apps/b": {"ManifestUrl": "file://$REPOS/one", "ManifestDirectory": "b"},
            "apps/c": {"ManifestUrl": f"file://{repos}/two"},
            "apps/d": {"ManifestUrl": f"dir://{tree}", "ManifestDirectory": "d"},
        },
        "StreamPatterns": {"users/[^/]+/base": {"ManifestUrl": f"file://{repos}/two"}},
    }
    secrets = {"REPOS": str(repos)}
    return parse_streams(json.dumps(document), "streams.json", ARCH), secrets


async def generate(tmp_path: Path) -> tuple[DependencyData, CountingFetch, Path]:
    document, secrets = setup_streams(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    fetch = CountingFetch()
    generator = DependencyGenerator(
        reactor=reactor,
        clock=reactor,
        threadpool=reactor.getThreadPool(),
        streams=Registry(document),
        bootstrap_streams=["bootstrap/bb"],
        secrets=lambda: secrets,
        arch=ARCH,
        tmpdir=str(work),
        fetch=fetch,
    )
    data = await generator.get(5)
    assert data is not None
    return data, fetch, work


@pytest_twisted.ensureDeferred
async def test_generation_from_real_repositories(tmp_path: Path) -> None:
    data, fetch, work = await generate(tmp_path)
    assert data.last_attempt_error == ""
    assert data.stream_to_source == {
        "apps/a": "bootstrap/bb",
        "apps/b": "apps/a",
        "apps/c": "users/c/base",
        "apps/d": "nowhere/amd64",
    }
    assert data.pattern_sources == {"users/c/base"}
    assert data.unbuildable_sources == {"nowhere/amd64"}
    # One fetch per distinct expanded URL: apps/a and apps/b share theirs.
    repos = tmp_path / "repos"
    assert sorted(fetch.calls) == [f"file://{repos}/one", f"file://{repos}/two"]
    log = data.fetch_log
    assert log.count("Cloning repository: ") == 2
    assert log.count("Downloaded partial repository in ") == 2
    # The variables file's value never shows.
    assert str(repos) not in log
    assert log.splitlines()[-2].startswith("Cumulative fetch time: ")
    assert log.splitlines()[-1].startswith("Generated dependencies in: ")
    assert list(work.iterdir()) == []


@pytest_twisted.ensureDeferred
async def test_a_missing_repository_fails_the_run(tmp_path: Path) -> None:
    document, secrets = setup_streams(tmp_path)
    missing = tmp_path / "no-such-repo"
    streams = dict(document.streams)
    streams["apps/e"] = parse_streams(
        json.dumps({"Streams": {"apps/e": {"ManifestUrl": f"file://{missing}"}}}),
        "streams.json",
        ARCH,
    ).streams["apps/e"]
    generator = DependencyGenerator(
        reactor=reactor,
        clock=reactor,
        threadpool=reactor.getThreadPool(),
        streams=Registry(StreamsDocument(streams=streams, patterns=document.patterns)),
        bootstrap_streams=["bootstrap/bb"],
        secrets=lambda: secrets,
        arch=ARCH,
        tmpdir=str(tmp_path),
    )
    data = await generator.get(5)
    assert data is not None and not data.has_data
    assert data.last_attempt_error.startswith(f"stream: apps/e: file://{missing}: ")
    assert f"Error fetching file://{missing}: " in data.fetch_log


@pytest.mark.skipif(not HAVE_DOT, reason="Graphviz dot is not installed")
@pytest_twisted.ensureDeferred
async def test_graph_page_with_real_dot(tmp_path: Path) -> None:
    data, _fetch, _work = await generate(tmp_path)

    class Generator:
        bootstrap_streams = frozenset({"bootstrap/bb"})

        async def get(self, max_age: float) -> DependencyData:
            return data

    pages = GraphPages(
        Generator(), reactor, (), spawn_dot(reactor), auto_rebuild=lambda: ["apps/a"]
    )
    request = DummyRequest([b"showDirectedGraph"])
    request.args = {b"exclude": [b"nowhere"]}
    body = (await pages.show(request)).decode()
    assert "<svg" in body and "</svg>" in body
    assert "<?xml" not in body
    assert "error rendering graph" not in body
    assert "<title>apps/b&#45;&gt;apps/a</title>" in body
    assert "<title>users/c/base</title>" in body
    # Excluded, and its dependent apps/d with it.
    assert "nowhere/amd64" not in body
    assert "apps/d" not in body
    assert request.responseHeaders.getRawHeaders(b"X-Frame-Options") == [b"DENY"]


@pytest.mark.skipif(not HAVE_DOT, reason="Graphviz dot is not installed")
@pytest_twisted.ensureDeferred
async def test_spawn_dot_reports_errors() -> None:
    run_dot = spawn_dot(reactor)
    data = DependencyData(generated_at=1.0, stream_to_source={"x": "y"})
    svg = await run_dot(graphviz_dot(data, [], [], []))
    assert b"<svg" in svg
    with pytest.raises(DotError, match=r"^dot: exit status 1: .*syntax error"):
        await run_dot("digraph all { -> }\n")
    with pytest.raises(DotError):
        await spawn_dot(reactor, executable=os.devnull)("digraph all {}\n")
