"""fetch_manifest against real repositories served over real smart HTTP and local paths.

Repositories are made with dulwich. They are served on 127.0.0.1 by two
servers: dulwich's own WSGI git application, and git's ``git-http-backend``
(run as a CGI program behind a small WSGI bridge) so that the behaviour of
the server everyone actually runs (protocol v2, commit ids served shallowly)
is covered too. One server sits behind HTTP basic auth.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import stat
import subprocess
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest
from dulwich import porcelain
from dulwich.objects import Blob, Commit, Tree
from dulwich.repo import Repo
from dulwich.server import DictBackend
from dulwich.web import make_wsgi_chain

from imaginator.sources.git import FetchResult, GitFetchError, fetch_manifest
from imaginator.sources.gitfetch import Fetcher
from imaginator.sources.gittransport import FetchWatch, make_client

IDENTITY = b"Test <test@example.org>"
USER = "builder"
PASSWORD = "s3cr3t-p@ss"

GIT_HTTP_BACKEND = shutil.which("git-http-backend") or "/usr/lib/git-core/git-http-backend"
HAVE_GIT_HTTP_BACKEND = os.access(GIT_HTTP_BACKEND, os.X_OK)

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


# ---------------------------------------------------------------- repository


@dataclass(frozen=True)
class SourceRepo:
    """A test repository and the commits in it."""

    path: Path
    first: str  # README "one"; reachable only through history
    second: str  # README "two"; branch dev, annotated tag v2, lightweight tag light
    third: str  # README "three"; branch main (the default)


def _write(root: Path, rel: str, text: str, mode: int = 0o644) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def _commit(root: Path, message: str) -> str:
    porcelain.add(
        str(root), paths=[str(root / name) for name in os.listdir(root) if name != ".git"]
    )
    commit_id = porcelain.commit(
        str(root), message=message.encode(), author=IDENTITY, committer=IDENTITY
    )
    return commit_id.decode("ascii")


def make_source_repo(root: Path) -> SourceRepo:
    """A repository whose default branch is ``main`` (there is no ``master``)."""
    repo = Repo.init(str(root), mkdir=True, default_branch=b"main")
    repo.close()
    _write(root, "README", "one\n")
    _write(root, "manifest/scripts/10_setup", "#!/bin/sh\necho setup\n", 0o755)
    _write(root, "manifest/files/etc/motd", "one\n")
    _write(root, "manifest/build-config.json", "{}\n")
    (root / "manifest/link").symlink_to("files/etc/motd")
    (root / "manifest/abs-link").symlink_to("/etc/passwd")
    first = _commit(root, "one")

    _write(root, "README", "two\n")
    _write(root, "manifest/files/etc/motd", "two\n")
    second = _commit(root, "two")
    porcelain.branch_create(str(root), "dev", second)
    porcelain.tag_create(
        str(root), "v2", author=IDENTITY, message="release 2", annotated=True, objectish=second
    )
    porcelain.tag_create(str(root), "light", objectish=second)

    _write(root, "README", "three\n")
    third = _commit(root, "three")
    return SourceRepo(root, first, second, third)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> SourceRepo:
    # Named like a bare repository so both servers can serve it as /repo.git.
    return make_source_repo(tmp_path_factory.mktemp("srv") / "repo.git")


# ------------------------------------------------------------------- servers


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def _serve(app: WSGIApp) -> Iterator[str]:
    """Serve ``app`` on 127.0.0.1 (ephemeral port) in a thread; yield the base URL."""
    server: WSGIServer = make_server("127.0.0.1", 0, app, handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def git_http_backend_app(project_root: Path, home: Path) -> WSGIApp:
    """WSGI app that runs git's own ``git-http-backend`` CGI for each request."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("HTTP_TRANSFER_ENCODING", "").lower() == "chunked":
            start_response("411 Length Required", [("Content-Type", "text/plain")])
            return [b"chunked request bodies are not supported by this test bridge\n"]
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_PROJECT_ROOT": str(project_root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "GATEWAY_INTERFACE": "CGI/1.1",
            "REQUEST_METHOD": environ["REQUEST_METHOD"],
            "PATH_INFO": environ.get("PATH_INFO", ""),
            "QUERY_STRING": environ.get("QUERY_STRING", ""),
            "CONTENT_TYPE": environ.get("CONTENT_TYPE", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_ADDR": environ.get("REMOTE_ADDR", "127.0.0.1"),
        }
        for key in ("HTTP_GIT_PROTOCOL", "HTTP_CONTENT_ENCODING"):
            if key in environ:
                env[key] = environ[key]
        proc = subprocess.run(
            [GIT_HTTP_BACKEND], input=body, env=env, capture_output=True, check=False, timeout=60
        )
        head, _, payload = proc.stdout.partition(b"\r\n\r\n")
        status = "200 OK"
        headers = []
        for line in head.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = value.strip()
            elif name:
                headers.append((name.strip(), value.strip()))
        start_response(status, headers)
        return [payload]

    return app


def basic_auth(app: WSGIApp, user: str, password: str) -> WSGIApp:
    """Wrap ``app`` so that only requests with these basic-auth credentials get through."""
    expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("HTTP_AUTHORIZATION") != expected:
            start_response(
                "401 Unauthorized",
                [("WWW-Authenticate", 'Basic realm="git"'), ("Content-Type", "text/plain")],
            )
            return [b"unauthorized\n"]
        return app(environ, start_response)

    return guarded


def dulwich_app(source: SourceRepo) -> WSGIApp:
    return make_wsgi_chain(DictBackend({"/repo.git": Repo(str(source.path))}))


SERVERS = [
    "dulwich",
    pytest.param(
        "git-http-backend",
        marks=pytest.mark.skipif(not HAVE_GIT_HTTP_BACKEND, reason="git-http-backend not found"),
    ),
]


@pytest.fixture(scope="module", params=SERVERS)
def repo_url(
    request: pytest.FixtureRequest, source: SourceRepo, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """URL of ``source`` served over smart HTTP by each kind of server."""
    if request.param == "dulwich":
        app = dulwich_app(source)
    else:
        app = git_http_backend_app(source.path.parent, tmp_path_factory.mktemp("home"))
    for base in _serve(app):
        yield f"{base}/repo.git"


@pytest.fixture(scope="module")
def auth_base(source: SourceRepo) -> Iterator[str]:
    """Base URL (no credentials) of a server that serves ``source`` only with basic auth."""
    yield from _serve(basic_auth(dulwich_app(source), USER, PASSWORD))


# -------------------------------------------------------------------- helpers


class Log:
    """Collects log lines."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, line: str) -> None:
        self.lines.append(line)

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def fetch(url: str, ref: str, dest: Path, **kwargs: Any) -> tuple[FetchResult, Log]:
    log = Log()
    result = fetch_manifest(url, ref, str(dest), log=log, **kwargs)
    return result, log


def fetch_error(url: str, ref: str, dest: Path, **kwargs: Any) -> tuple[GitFetchError, Log]:
    log = Log()
    with pytest.raises(GitFetchError) as info:
        fetch_manifest(url, ref, str(dest), log=log, **kwargs)
    return info.value, log


def listing(root: Path) -> dict[str, str]:
    """Every entry below ``root``: relative path → kind, mode or link target."""
    entries: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                entries[rel] = "-> " + os.readlink(path)
            elif stat.S_ISDIR(st.st_mode):
                entries[rel] = "dir"
            else:
                entries[rel] = f"{stat.S_IMODE(st.st_mode):o}"
    return entries


FULL_TREE = {
    "README": "644",
    "manifest": "dir",
    "manifest/abs-link": "-> /etc/passwd",
    "manifest/build-config.json": "644",
    "manifest/files": "dir",
    "manifest/files/etc": "dir",
    "manifest/files/etc/motd": "644",
    "manifest/link": "-> files/etc/motd",
    "manifest/scripts": "dir",
    "manifest/scripts/10_setup": "755",
}

MANIFEST_TREE = {
    key.removeprefix("manifest/"): value
    for key, value in FULL_TREE.items()
    if key.startswith("manifest/")
}


def assert_only_dest_left(dest: Path) -> None:
    """The scratch repository beside ``dest`` is gone; nothing but ``dest`` remains."""
    assert sorted(p.name for p in dest.parent.iterdir()) == [dest.name]


# --------------------------------------------------------------- over HTTP


def test_default_branch(repo_url: str, source: SourceRepo, tmp_path: Path) -> None:
    dest = tmp_path / "manifest"
    result, log = fetch(repo_url, "", dest)
    assert result == FetchResult(commit_id=source.third, branch="main")
    assert (dest / "README").read_text() == "three\n"
    assert listing(dest) == FULL_TREE
    assert log.lines[0] == f"Cloning repository: {repo_url} branch: (default)"
    assert re.fullmatch(
        r"Downloaded partial repository in \S+, size: \d+ [KMGT]?i?B \(\d+ [KMGT]?i?B/s\)",
        log.lines[-1],
    )
    assert_only_dest_left(dest)


def test_named_branch(repo_url: str, source: SourceRepo, tmp_path: Path) -> None:
    dest = tmp_path / "m"
    result, log = fetch(repo_url, "dev", dest)
    assert result == FetchResult(commit_id=source.second, branch="dev")
    assert (dest / "README").read_text() == "two\n"
    assert (dest / "manifest/files/etc/motd").read_text() == "two\n"
    assert log.lines[0] == f"Cloning repository: {repo_url} branch: dev"


def test_full_ref_name(repo_url: str, source: SourceRepo, tmp_path: Path) -> None:
    result, _ = fetch(repo_url, "refs/heads/main", tmp_path / "m")
    assert result.commit_id == source.third


@pytest.mark.parametrize("tag", ["v2", "light"])
def test_tag(repo_url: str, source: SourceRepo, tmp_path: Path, tag: str) -> None:
    dest = tmp_path / "m"
    result, _ = fetch(repo_url, tag, dest)
    # An annotated tag is peeled: the commit id is the commit's, not the tag object's.
    assert result == FetchResult(commit_id=source.second, branch=tag)
    assert (dest / "README").read_text() == "two\n"


def test_commit_id_not_at_any_tip(repo_url: str, source: SourceRepo, tmp_path: Path) -> None:
    # dulwich's server refuses unadvertised wants (the full-fetch fallback
    # kicks in); git-http-backend serves them shallowly over protocol v2.
    dest = tmp_path / "m"
    result, _ = fetch(repo_url, source.first, dest)
    assert result == FetchResult(commit_id=source.first, branch=source.first)
    assert (dest / "README").read_text() == "one\n"
    assert listing(dest) == FULL_TREE
    assert_only_dest_left(dest)


def test_commit_id_at_a_tip(repo_url: str, source: SourceRepo, tmp_path: Path) -> None:
    result, _ = fetch(repo_url, source.third.upper(), tmp_path / "m")
    assert result.commit_id == source.third


def test_abbreviated_commit_id(repo_url: str, source: SourceRepo, tmp_path: Path) -> None:
    dest = tmp_path / "m"
    result, _ = fetch(repo_url, source.first[:10], dest)
    assert result.commit_id == source.first
    assert (dest / "README").read_text() == "one\n"


def test_manifest_directory(repo_url: str, source: SourceRepo, tmp_path: Path) -> None:
    dest = tmp_path / "m"
    result, _ = fetch(repo_url, "", dest, directory="manifest")
    assert result.commit_id == source.third
    assert listing(dest) == MANIFEST_TREE
    assert (dest / "scripts/10_setup").read_text().startswith("#!/bin/sh")
    assert_only_dest_left(dest)


def test_nested_manifest_directory(repo_url: str, tmp_path: Path) -> None:
    dest = tmp_path / "m"
    fetch(repo_url, "dev", dest, directory="/manifest/files/")
    assert listing(dest) == {"etc": "dir", "etc/motd": "644"}
    assert (dest / "etc/motd").read_text() == "two\n"


@pytest.mark.parametrize(
    ("directory", "reason"),
    [
        ("nope", "nope does not exist in repository"),
        ("manifest/nope", "manifest/nope does not exist in repository"),
        ("README/x", "README/x does not exist in repository"),
        ("README", "README exists in repository but is not a directory"),
        # A symlink to a directory is not a directory: it is never followed.
        ("manifest/link", "manifest/link exists in repository but is not a directory"),
    ],
)
def test_manifest_directory_errors(
    repo_url: str, tmp_path: Path, directory: str, reason: str
) -> None:
    dest = tmp_path / "m"
    error, _ = fetch_error(repo_url, "", dest, directory=directory)
    assert error.reason == reason
    assert str(error) == f"{repo_url}: {reason}"
    assert list(dest.iterdir()) == []
    assert_only_dest_left(dest)


@pytest.mark.parametrize("ref", ["no-such-branch", "f" * 40, "deadbeef"])
def test_missing_ref(repo_url: str, tmp_path: Path, ref: str) -> None:
    dest = tmp_path / "m"
    error, _ = fetch_error(repo_url, ref, dest)
    assert ref in str(error)
    assert repo_url in str(error)
    assert "no such branch, tag or commit" in error.reason
    assert_only_dest_left(dest)


def test_missing_repository(repo_url: str, tmp_path: Path) -> None:
    url = repo_url.replace("/repo.git", "/other.git")
    error, _ = fetch_error(url, "", tmp_path / "m")
    assert url in str(error)


def test_shallow_fetch_transfers_one_commit(
    repo_url: str, source: SourceRepo, tmp_path: Path
) -> None:
    # Drive the fetch step by itself to look into the scratch repository.
    repo = Repo.init_bare(str(tmp_path), mkdir=False)

    def fail(reason: str) -> GitFetchError:
        return GitFetchError(repo_url, reason)

    with FetchWatch(60.0, 30.0) as watch:
        client, path = make_client(repo_url, None, None, watch)
        fetcher = Fetcher(client, path, repo, "main", 1, lambda _data: None, fail)
        commit_id, branch = fetcher.run()
        client.close()
    assert (commit_id.decode(), branch) == (source.third, "main")
    assert source.second.encode() not in repo.object_store
    assert source.first.encode() not in repo.object_store
    repo.close()


def test_commit_id_fetch_strategy(
    request: pytest.FixtureRequest, repo_url: str, source: SourceRepo, tmp_path: Path
) -> None:
    repo = Repo.init_bare(str(tmp_path), mkdir=False)

    def fail(reason: str) -> GitFetchError:
        return GitFetchError(repo_url, reason)

    with FetchWatch(60.0, 30.0) as watch:
        client, path = make_client(repo_url, None, None, watch)
        fetcher = Fetcher(client, path, repo, source.first, 1, lambda _data: None, fail)
        assert fetcher.run()[0].decode() == source.first
        client.close()
    later_commits_fetched = source.third.encode() in repo.object_store
    repo.close()
    if "git-http-backend" in request.node.callspec.id:
        # git serves any reachable commit over protocol v2: one shallow fetch.
        assert not later_commits_fetched
    else:
        # dulwich refuses unadvertised wants: fallback to a full fetch.
        assert later_commits_fetched


# ------------------------------------------------------------ authentication


def test_basic_auth_right_password(auth_base: str, source: SourceRepo, tmp_path: Path) -> None:
    host = auth_base.removeprefix("http://")
    url = f"http://{USER}:{PASSWORD.replace('@', '%40')}@{host}/repo.git"
    dest = tmp_path / "m"
    result, log = fetch(url, "", dest, directory="manifest")
    assert result == FetchResult(commit_id=source.third, branch="main")
    assert listing(dest) == MANIFEST_TREE
    assert (
        log.lines[0] == f"Cloning repository: http://{USER}:***@{host}/repo.git branch: (default)"
    )
    assert "s3cr3t" not in log.text


def test_basic_auth_wrong_password(auth_base: str, tmp_path: Path) -> None:
    host = auth_base.removeprefix("http://")
    wrong = "wr0ng-Passw0rd"
    dest = tmp_path / "m"
    error, log = fetch_error(f"http://{USER}:{wrong}@{host}/repo.git", "main", dest)
    assert error.reason == "authentication failed (HTTP 401)"
    assert str(error) == f"http://{USER}:***@{host}/repo.git: authentication failed (HTTP 401)"
    for text in (str(error), repr(error), error.url, log.text):
        assert wrong not in text
    assert error.__cause__ is None
    assert_only_dest_left(dest)


def test_basic_auth_missing_credentials(auth_base: str, tmp_path: Path) -> None:
    error, _ = fetch_error(f"{auth_base}/repo.git", "main", tmp_path / "m")
    assert error.reason == "authentication required (HTTP 401)"


def test_connection_refused(tmp_path: Path) -> None:
    # A port that was just free (and is closed again) on the loopback address.
    server = make_server("127.0.0.1", 0, lambda e, s: [], handler_class=_QuietHandler)
    port = server.server_port
    server.server_close()
    url = f"http://u:hunter2@127.0.0.1:{port}/repo.git"
    error, log = fetch_error(url, "", tmp_path / "m", stall_timeout=5.0)
    assert str(error).startswith(f"http://u:***@127.0.0.1:{port}/repo.git: ")
    assert "hunter2" not in str(error) and "hunter2" not in log.text


# ------------------------------------------------------------- local paths


@pytest.mark.parametrize("form", ["file", "path"])
def test_local_repository(source: SourceRepo, tmp_path: Path, form: str) -> None:
    url = source.path.as_uri() if form == "file" else str(source.path)
    dest = tmp_path / "m"
    result, log = fetch(url, "", dest)
    assert result == FetchResult(commit_id=source.third, branch="main")
    assert listing(dest) == FULL_TREE
    assert not (dest / ".git").exists()
    assert log.lines[0] == f"Cloning repository: {url} branch: (default)"
    assert_only_dest_left(dest)


def test_local_repository_refs_and_directory(source: SourceRepo, tmp_path: Path) -> None:
    url = source.path.as_uri()
    assert fetch(url, "v2", tmp_path / "a")[0].commit_id == source.second
    assert fetch(url, source.first, tmp_path / "b")[0].commit_id == source.first
    fetch(url, "dev", tmp_path / "c", directory="manifest")
    assert listing(tmp_path / "c") == MANIFEST_TREE
    error, _ = fetch_error(url, "nope", tmp_path / "d")
    assert error.reason == "nope: no such branch, tag or commit"


def test_modes_and_symlinks(source: SourceRepo, tmp_path: Path) -> None:
    dest = tmp_path / "m"
    old_umask = os.umask(0o077)
    try:
        fetch(str(source.path), "", dest, directory="manifest")
    finally:
        os.umask(old_umask)
    # Modes are git's (0755/0644), not the umask's.
    assert stat.S_IMODE((dest / "scripts/10_setup").stat().st_mode) == 0o755
    assert stat.S_IMODE((dest / "build-config.json").stat().st_mode) == 0o644
    assert os.access(dest / "scripts/10_setup", os.X_OK)
    assert (dest / "link").is_symlink() and os.readlink(dest / "link") == "files/etc/motd"
    assert (dest / "link").read_text() == "one\n" or (dest / "link").read_text() == "two\n"
    assert (dest / "abs-link").is_symlink() and os.readlink(dest / "abs-link") == "/etc/passwd"


def test_existing_dest_is_used_and_missing_parents_made(source: SourceRepo, tmp_path: Path) -> None:
    existing = tmp_path / "existing"
    existing.mkdir()
    fetch(str(source.path), "", existing, directory="manifest/scripts")
    assert listing(existing) == {"10_setup": "755"}
    fetch(str(source.path), "", tmp_path / "a" / "b", directory="manifest/scripts")
    assert listing(tmp_path / "a" / "b") == {"10_setup": "755"}


def test_not_a_repository(tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    error, _ = fetch_error(str(tmp_path / "plain"), "", tmp_path / "m")
    assert error.url == str(tmp_path / "plain")
    assert "not a git repository" in error.reason


def test_empty_repository(tmp_path: Path) -> None:
    Repo.init(str(tmp_path / "empty"), mkdir=True, default_branch=b"main").close()
    error, _ = fetch_error(str(tmp_path / "empty"), "", tmp_path / "m")
    assert error.reason == "repository is empty"


# ----------------------------------------------------------- hostile trees


def _hostile_repo(root: Path, entries: list[tuple[bytes, int, bytes | None]]) -> str:
    """A repository whose ``main`` commit's tree has ``entries`` verbatim.

    Each entry is (name, mode, blob content); content ``None`` means a
    sub-tree holding one file ``pwned``.
    """
    repo = Repo.init(str(root), mkdir=True, default_branch=b"main")
    store = repo.object_store
    tree = Tree()
    for name, mode, content in entries:
        if content is None:
            inner_blob = Blob.from_string(b"pwned\n")
            store.add_object(inner_blob)
            inner = Tree()
            inner.add(b"pwned", 0o100644, inner_blob.id)
            store.add_object(inner)
            tree.add(name, mode, inner.id)
        else:
            blob = Blob.from_string(content)
            store.add_object(blob)
            tree.add(name, mode, blob.id)
    store.add_object(tree)
    commit = Commit()
    commit.tree = tree.id
    commit.author = commit.committer = IDENTITY
    commit.author_time = commit.commit_time = 1_700_000_000
    commit.author_timezone = commit.commit_timezone = 0
    commit.message = b"hostile\n"
    store.add_object(commit)
    repo.refs[b"refs/heads/main"] = commit.id
    repo.close()
    return str(root)


@pytest.mark.parametrize(
    "entry",
    [
        (b"..", 0o040000, None),
        (b".git", 0o040000, None),
        (b".GIT", 0o040000, None),
        (b".git", 0o100644, b"[core]\n"),
        (b"../../pwned", 0o100644, b"pwned\n"),
        (b"a/../../pwned", 0o100644, b"pwned\n"),
        (b"/tmp/pwned", 0o100644, b"pwned\n"),
        (b".", 0o040000, None),
    ],
)
def test_hostile_names_are_refused(tmp_path: Path, entry: tuple[bytes, int, bytes | None]) -> None:
    url = _hostile_repo(tmp_path / "evil", [(b"ok", 0o100644, b"fine\n"), entry])
    work = tmp_path / "work"
    work.mkdir()
    dest = work / "m"
    error, _ = fetch_error(url, "", dest)
    assert "invalid path in repository" in error.reason
    # Nothing was written beside or above dest, and no .git inside it.
    assert sorted(p.name for p in work.iterdir()) == ["m"]
    assert not any(p.name == "pwned" for p in tmp_path.rglob("*") if "evil" not in p.parts)
    assert not any(p.name.lower() == ".git" for p in dest.rglob("*"))


def test_symlinks_are_never_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_text("original\n")
    url = _hostile_repo(
        tmp_path / "evil",
        [
            (b"escape", 0o120000, str(outside).encode()),
            (b"victim", 0o120000, str(outside / "victim").encode()),
            (b"zzz", 0o100644, b"overwrite?\n"),
        ],
    )
    dest = tmp_path / "m"
    result, _ = fetch(url, "", dest)
    assert len(result.commit_id) == 40
    assert listing(dest) == {
        "escape": f"-> {outside}",
        "victim": f"-> {outside / 'victim'}",
        "zzz": "644",
    }
    assert sorted(p.name for p in outside.iterdir()) == ["victim"]
    assert (outside / "victim").read_text() == "original\n"
    # A symlinked directory is not a directory to extract from.
    error, _ = fetch_error(url, "", tmp_path / "n", directory="escape")
    assert error.reason == "escape exists in repository but is not a directory"


def test_unknown_mode_and_submodule(tmp_path: Path) -> None:
    url = _hostile_repo(
        tmp_path / "sub", [(b"module", 0o160000, b"x"), (b"file", 0o100664, b"data\n")]
    )
    dest = tmp_path / "m"
    fetch(url, "", dest)
    # A submodule becomes an empty directory, like git's checkout.
    assert listing(dest) == {"module": "dir", "file": "644"}
