"""Real git repositories for tests, and a smart-HTTP server for them (dulwich)."""

from __future__ import annotations

import base64
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from dulwich import porcelain
from dulwich.repo import Repo
from dulwich.server import DictBackend
from dulwich.web import make_wsgi_chain

IDENTITY = b"Test <test@example.invalid>"
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def write_tree(root: Path, files: dict[str, tuple[int, str]]) -> None:
    """Write ``{relative path: (mode, text)}`` under ``root``."""
    for relative, (mode, text) in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(mode)


def init_repo(root: Path) -> Path:
    Repo.init(str(root), mkdir=True, default_branch=b"main").close()
    return root


def commit_all(root: Path, message: str) -> str:
    """Stage everything (deletions too) and commit; returns the commit id."""
    repo = Repo(str(root))
    try:
        index = repo.open_index()
        for path in list(index):
            if not (root / path.decode()).exists():
                del index[path]
        index.write()
    finally:
        repo.close()
    paths = [str(p) for p in root.rglob("*") if ".git" not in p.relative_to(root).parts]
    porcelain.add(str(root), paths=paths)
    commit = porcelain.commit(
        str(root), message=message.encode(), author=IDENTITY, committer=IDENTITY
    )
    return commit.decode("ascii")


def parse_manifest_vector(text: str) -> dict[str, dict[str, tuple[int, str]]]:
    """``config-manifests.txt`` → ``{tree: {path: (mode, contents)}}``."""
    trees: dict[str, dict[str, tuple[int, str]]] = {}
    sections = re.split(r"^=== (\S+) \((0o[0-7]+)\)\n", text, flags=re.M)
    for i in range(1, len(sections), 3):
        tree, _, path = sections[i].partition("/")
        body = sections[i + 2]
        if i + 3 < len(sections):
            body = body.removesuffix("\n")
        trees.setdefault(tree, {})[path] = (int(sections[i + 1], 8), body)
    return trees


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def basic_auth(app: WSGIApp, user: str, password: str) -> WSGIApp:
    expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("HTTP_AUTHORIZATION") != expected:
            start_response("401 Unauthorized", [("WWW-Authenticate", 'Basic realm="git"')])
            return [b"unauthorized\n"]
        return app(environ, start_response)

    return guarded


@contextmanager
def serve_repos(repos: dict[str, Path], auth: tuple[str, str] | None = None) -> Iterator[str]:
    """Serve ``{"/name.git": path}`` over smart HTTP on 127.0.0.1; yields the base URL.

    The server runs in its own thread (it is the remote end, not part of the
    code under test) and is shut down on exit.
    """
    app: WSGIApp = make_wsgi_chain(DictBackend({k: Repo(str(v)) for k, v in repos.items()}))
    if auth is not None:
        app = basic_auth(app, *auth)
    server = make_server("127.0.0.1", 0, app, handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
