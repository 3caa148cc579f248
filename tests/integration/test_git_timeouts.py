"""Git fetches end: stuck remotes over real sockets, http(s) and ssh.

The remotes are real listening sockets on 127.0.0.1 that accept a
connection and then never answer (or answer the HTTP headers and then
nothing). Each fetch must fail with a reason naming the limit it hit and the
repository's public URL, and must leave no connection behind.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from dulwich.client import SSHGitClient
from dulwich.repo import Repo

from imaginator.sources.git import GitFetchError, fetch_manifest
from imaginator.sources.gitfetch import Fetcher
from imaginator.sources.gittransport import FetchTimeout, FetchWatch, make_client
from tests.support.gitserver import commit_all, init_repo, write_tree

PASSWORD = "hunter2-secret"

HEADERS_ONLY = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: application/x-git-upload-pack-advertisement\r\n"
    b"Content-Length: 1000\r\n"
    b"\r\n"
)


@dataclass
class StuckRemote:
    """A TCP server that accepts connections and then says ``greeting`` at most.

    ``greeting`` is sent once the client has sent a blank line (the end of
    HTTP request headers); ``None`` means never say anything. ``ended`` is
    set when a client closed or shut down a connection it had opened.
    """

    greeting: bytes | None = None
    port: int = 0
    connections: int = 0
    ended: threading.Event = field(default_factory=threading.Event)

    def serve(self, listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._talk, args=(conn,), daemon=True).start()

    def _talk(self, conn: socket.socket) -> None:
        received = b""
        with conn:
            while data := conn.recv(4096):
                received += data
                if self.greeting is not None and b"\r\n\r\n" in received:
                    conn.sendall(self.greeting)
                    received = b""
        self.ended.set()


@pytest.fixture
def stuck_remote(request: pytest.FixtureRequest) -> Iterator[StuckRemote]:
    remote = StuckRemote(greeting=getattr(request, "param", None))
    listener = socket.create_server(("127.0.0.1", 0))
    remote.port = listener.getsockname()[1]
    thread = threading.Thread(target=remote.serve, args=(listener,), daemon=True)
    thread.start()
    try:
        yield remote
    finally:
        listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        thread.join(timeout=10)


def fetch_error(url: str, tmp_path: Path, **limits: float) -> GitFetchError:
    lines: list[str] = []
    with pytest.raises(GitFetchError) as info:
        fetch_manifest(url, "", str(tmp_path / "m"), log=lines.append, **limits)
    error = info.value
    assert PASSWORD not in str(error) and PASSWORD not in "\n".join(lines)
    assert error.__cause__ is None
    assert os.listdir(tmp_path / "m") == []
    return error


# ------------------------------------------------------------------- http


@pytest.mark.parametrize(
    "stuck_remote", [None, HEADERS_ONLY], indirect=True, ids=["silent", "headers"]
)
def test_http_stall(stuck_remote: StuckRemote, tmp_path: Path) -> None:
    url = f"http://builder:{PASSWORD}@127.0.0.1:{stuck_remote.port}/repo.git"
    error = fetch_error(url, tmp_path, stall_timeout=0.2, fetch_timeout=60.0)
    assert str(error) == (
        f"http://builder:***@127.0.0.1:{stuck_remote.port}/repo.git: "
        "timed out: no answer from the remote for 200ms"
    )


@pytest.mark.parametrize(
    "stuck_remote", [None, HEADERS_ONLY], indirect=True, ids=["silent", "headers"]
)
def test_http_deadline(stuck_remote: StuckRemote, tmp_path: Path) -> None:
    url = f"http://builder:{PASSWORD}@127.0.0.1:{stuck_remote.port}/repo.git"
    error = fetch_error(url, tmp_path, stall_timeout=3600.0, fetch_timeout=0.3)
    assert str(error) == (
        f"http://builder:***@127.0.0.1:{stuck_remote.port}/repo.git: "
        "timed out: the fetch took longer than 300ms"
    )
    # The blocked read was ended by shutting the connection down, and no
    # new connection was opened after the deadline.
    assert stuck_remote.ended.wait(timeout=10)
    assert stuck_remote.connections == 1


@pytest.mark.parametrize(
    ("limits", "reason"),
    [
        ({"stall_timeout": 0.2, "fetch_timeout": 60.0}, "no answer from the remote for 200ms"),
        ({"stall_timeout": 3600.0, "fetch_timeout": 0.3}, "the fetch took longer than 300ms"),
    ],
    ids=["stall", "deadline"],
)
def test_https_remote_that_never_starts_tls(
    stuck_remote: StuckRemote, tmp_path: Path, limits: dict[str, float], reason: str
) -> None:
    url = f"https://builder:{PASSWORD}@127.0.0.1:{stuck_remote.port}/repo.git"
    error = fetch_error(url, tmp_path, **limits)
    assert str(error) == (
        f"https://builder:***@127.0.0.1:{stuck_remote.port}/repo.git: timed out: {reason}"
    )


# -------------------------------------------------------------------- ssh

needs_ssh = pytest.mark.skipif(shutil.which("ssh") is None, reason="needs the ssh client")


@needs_ssh
def test_ssh_stall(stuck_remote: StuckRemote, tmp_path: Path) -> None:
    url = f"ssh://git@127.0.0.1:{stuck_remote.port}/repo.git"
    error = fetch_error(url, tmp_path, stall_timeout=0.5, fetch_timeout=3600.0)
    assert str(error) == f"{url}: timed out: no answer from the remote for 500ms"
    # ssh was killed, so its connection ended.
    assert stuck_remote.ended.wait(timeout=10)


@needs_ssh
def test_ssh_deadline(stuck_remote: StuckRemote, tmp_path: Path) -> None:
    url = f"ssh://git@127.0.0.1:{stuck_remote.port}/repo.git"
    error = fetch_error(url, tmp_path, stall_timeout=3600.0, fetch_timeout=0.5)
    assert str(error) == f"{url}: timed out: the fetch took longer than 500ms"
    assert stuck_remote.ended.wait(timeout=10)


# ----------------------------------------------------------------- git://


def test_git_protocol_stall(stuck_remote: StuckRemote, tmp_path: Path) -> None:
    url = f"git://127.0.0.1:{stuck_remote.port}/repo.git"
    error = fetch_error(url, tmp_path, stall_timeout=0.2, fetch_timeout=3600.0)
    assert str(error) == f"{url}: timed out: no answer from the remote for 200ms"


def test_git_protocol_deadline(stuck_remote: StuckRemote, tmp_path: Path) -> None:
    url = f"git://127.0.0.1:{stuck_remote.port}/repo.git"
    error = fetch_error(url, tmp_path, stall_timeout=3600.0, fetch_timeout=0.3)
    assert str(error) == f"{url}: timed out: the fetch took longer than 300ms"
    # The blocked read was ended by shutting the connection down.
    assert stuck_remote.ended.wait(timeout=10)
    assert stuck_remote.connections == 1


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_a_real_fetch_over_the_git_protocol(tmp_path: Path) -> None:
    """A whole fetch over the watched ``git://`` socket, from ``git daemon``
    (one ``--inetd`` child per connection, on a listener of the test's own)."""
    (tmp_path / "repos").mkdir()
    source = init_repo(tmp_path / "repos" / "source")
    write_tree(source, {"hello/package-list": (0o644, "busybox\n")})
    commit = commit_all(source, "first")
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    daemon = ["git", "daemon", "--inetd", "--export-all", f"--base-path={tmp_path / 'repos'}"]

    def serve() -> None:
        with suppress(OSError):
            conn, _ = listener.accept()
            with conn:
                subprocess.run(daemon, stdin=conn, stdout=conn, check=False, timeout=60)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        fetched = fetch_manifest(
            f"git://127.0.0.1:{port}/source",
            "",
            str(tmp_path / "m"),
            directory="hello",
            log=lambda _line: None,
            stall_timeout=30.0,
            fetch_timeout=60.0,
        )
    finally:
        listener.close()
        thread.join(timeout=60)
    assert (tmp_path / "m" / "package-list").read_text() == "busybox\n"
    assert (fetched.commit_id, fetched.branch) == (commit, "main")


# ------------------------------------------------------------ the watch


def test_expire_ends_a_blocked_read_on_a_watched_socket() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs, FetchWatch(3600.0, 3600.0) as watch:
        watch.add_socket(ours)
        threading.Thread(target=watch.expire, daemon=True).start()
        assert ours.recv(1) == b""  # would block forever without the shutdown
        assert watch.expired
        with pytest.raises(FetchTimeout, match="took longer than 1h0m0s"):
            watch.check()


def test_the_deadline_timer_expires_the_watch() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs, FetchWatch(0.1, 3600.0) as watch:
        watch.add_socket(ours)
        assert ours.recv(1) == b""
        assert watch.expired


def test_sockets_opened_after_the_deadline_are_shut_down_at_once() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs, FetchWatch(3600.0, 3600.0) as watch:
        watch.expire()
        watch.add_socket(ours)
        assert ours.recv(1) == b""


def test_leaving_the_watch_stops_the_timer() -> None:
    with FetchWatch(3600.0, 3600.0) as watch:
        timers = [t for t in threading.enumerate() if t.name == "git fetch deadline"]
        assert timers
    for timer in timers:
        timer.join(timeout=10)
        assert not timer.is_alive()
    assert not watch.expired


@pytest.mark.parametrize(("fetch_timeout", "stall_timeout"), [(0, 1), (1, 0), (-1, 1)])
def test_limits_must_be_positive(fetch_timeout: float, stall_timeout: float) -> None:
    with pytest.raises(ValueError, match="must be positive"):
        FetchWatch(fetch_timeout, stall_timeout)


# ------------------------------------------- a real fetch through the ssh pipes


@pytest.mark.skipif(shutil.which("git-upload-pack") is None, reason="needs git-upload-pack")
def test_a_real_fetch_through_the_watched_ssh_pipes(tmp_path: Path) -> None:
    """The stall-limited reads of the ``ssh`` child carry a whole fetch.

    A stand-in for ``ssh`` runs the remote command (its last argument) here,
    so ``git-upload-pack`` speaks the git protocol over the child's pipes.
    """
    source = init_repo(tmp_path / "source")
    write_tree(source, {"manifest/package-list": (0o644, "busybox\n")})
    commit = commit_all(source, "first")
    fake_ssh = tmp_path / "fake-ssh"
    fake_ssh.write_text('#!/bin/sh\nfor last; do :; done\nexec sh -c "$last"\n')
    fake_ssh.chmod(0o755)
    repo = Repo.init_bare(str(tmp_path / "scratch"), mkdir=True)

    def fail(reason: str) -> GitFetchError:
        return GitFetchError("ssh://git@localhost", reason)

    with FetchWatch(3600.0, 3600.0) as watch:
        client, path = make_client(f"ssh://git@localhost{source}", None, None, watch)
        assert isinstance(client, SSHGitClient)
        client.ssh_command = str(fake_ssh)
        try:
            fetcher = Fetcher(client, path, repo, "", 1, lambda _data: None, fail)
            commit_id, branch = fetcher.run()
        finally:
            client.close()
            repo.close()
    assert (commit_id.decode(), branch) == (commit, "main")
