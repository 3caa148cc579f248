"""Pure parts of the git source: URL redaction and splitting (giturls), clients
(gittransport), ref resolution (gitfetch), entry names (gitcheckout)."""

from __future__ import annotations

import pickle

import pytest
from dulwich.client import LocalGitClient, SSHGitClient, Urllib3HttpGitClient
from dulwich.errors import GitProtocolError
from urllib3.exceptions import MaxRetryError, ReadTimeoutError

from imaginator.sources import gitcheckout, gitfetch, giturls
from imaginator.sources.gittransport import FetchWatch, describe, make_client
from imaginator.sources.giturls import (
    GitFetchError,
    is_repo_url,
    public_url,
    split_repo_url,
)

SHA_A = b"a" * 40
SHA_B = b"b" * 40
SHA_T = b"c" * 40
#: The limits given to clients made here (never entered: no fetch runs).
WATCH = FetchWatch(60.0, 5.0)


# ---------------------------------------------------------------- public_url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://user:s3cret@git.example/org/r.git", "https://user:***@git.example/org/r.git"),
        (
            "http://user:s3cret@127.0.0.1:8080/r.git?conf/streams.json",
            "http://user:***@127.0.0.1:8080/r.git?conf/streams.json",
        ),
        ("ssh://git:pw@host:2222/org/r.git", "ssh://git:***@host:2222/org/r.git"),
        ("https://us%40er:p%3Aw@host/r.git", "https://us%40er:***@host/r.git"),
        # An unescaped "@" in the password: the host is after the last "@".
        ("https://user:p@ss@host/r.git", "https://user:***@host/r.git"),
        ("https://user:@host/r.git", "https://user:***@host/r.git"),
        ("https://user@host/r.git", "https://user@host/r.git"),
        ("https://host/r.git", "https://host/r.git"),
        ("git@github.com:org/r.git", "git@github.com:org/r.git"),
        ("file:///srv/git/r.git", "file:///srv/git/r.git"),
        ("/srv/git/r.git", "/srv/git/r.git"),
        ("", ""),
    ],
)
def test_public_url(url: str, expected: str) -> None:
    assert public_url(url) == expected


def test_public_url_never_contains_password() -> None:
    for url in (
        "https://u:hunter2@h/r.git",
        "https://u:hunter2@h:1/r.git?x",
        "ssh://u:hunter2@h/r",
    ):
        assert "hunter2" not in public_url(url)


# ----------------------------------------------------------- credentials


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://user:pw@host/r.git", ("https://host/r.git", "user", "pw")),
        ("https://us%40er:p%3Aw%2F@host:81/r.git", ("https://host:81/r.git", "us@er", "p:w/")),
        ("https://token@host/r.git", ("https://host/r.git", "token", None)),
        ("https://user:@host/r.git", ("https://host/r.git", "user", "")),
        ("https://host/r.git", ("https://host/r.git", None, None)),
        ("git@host:org/r.git", ("git@host:org/r.git", None, None)),
        ("/srv/r.git", ("/srv/r.git", None, None)),
    ],
)
def test_strip_credentials(url: str, expected: tuple[str, str | None, str | None]) -> None:
    assert giturls.strip_credentials(url) == expected


def test_clients_get_credentials_explicitly() -> None:
    client, path = make_client("https://host/org/r.git", "user", "pw", WATCH)
    assert isinstance(client, Urllib3HttpGitClient)
    assert path == "/org/r.git"
    assert client._username == "user" and client._password == "pw"
    # Not remembered as a credential-bearing URL anywhere.
    assert client._url_with_auth is None
    assert "pw" not in client.get_url(path)


def test_ssh_and_local_clients() -> None:
    client, path = make_client("git@example.org:org/r.git", None, None, WATCH)
    assert isinstance(client, SSHGitClient)
    assert client.host == "example.org" and client.username == "git"
    assert path == "org/r.git"
    client, path = make_client("ssh://git@example.org:2222/org/r.git", None, "pw", WATCH)
    assert isinstance(client, SSHGitClient)
    assert client.port == 2222 and client.password == "pw"
    client, path = make_client("file:///srv/r.git", None, None, WATCH)
    assert isinstance(client, LocalGitClient) and path == "/srv/r.git"
    client, path = make_client("/srv/r.git", None, None, WATCH)
    assert isinstance(client, LocalGitClient) and path == "/srv/r.git"


def test_redact_all_spellings_of_password() -> None:
    forms = giturls.secret_forms("p@ss word/")
    text = "bad p@ss word/ and p%40ss%20word%2F and p%40ss%20word/"
    redacted = giturls.redact(text, forms)
    assert "p@ss" not in redacted and "p%40ss" not in redacted
    assert giturls.secret_forms(None) == [] and giturls.secret_forms("") == []


def test_git_fetch_error_text() -> None:
    error = GitFetchError("https://u:***@h/r.git", "conf does not exist in repository")
    assert str(error) == "https://u:***@h/r.git: conf does not exist in repository"
    assert error.url == "https://u:***@h/r.git"
    assert error.reason == "conf does not exist in repository"
    copy = pickle.loads(pickle.dumps(error))
    assert (str(copy), copy.url, copy.reason) == (str(error), error.url, error.reason)


# ----------------------------------------------------------- streams URLs


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "git@github.com:org/repo.git/path/in/repo.json",
            ("git@github.com:org/repo.git", "path/in/repo.json"),
        ),
        ("git@host:repo.git/streams.json", ("git@host:repo.git", "streams.json")),
        (
            "https://host/org/repo.git?path/in/repo.json",
            ("https://host/org/repo.git", "path/in/repo.json"),
        ),
        (
            "http://user:pw@127.0.0.1:8080/repo.git?conf/streams.json",
            ("http://user:pw@127.0.0.1:8080/repo.git", "conf/streams.json"),
        ),
        ("https://host/repo.git?dir%20x/s.json", ("https://host/repo.git", "dir x/s.json")),
    ],
)
def test_split_repo_url(url: str, expected: tuple[str, str]) -> None:
    assert is_repo_url(url)
    assert split_repo_url(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "https://host/streams.json",
        "https://host/streams.json?x=1",
        "https://host/repo.git",
        "file:///etc/streams.json",
        "/etc/streams.json",
    ],
)
def test_not_repo_urls(url: str) -> None:
    assert not is_repo_url(url)
    with pytest.raises(ValueError, match="not a Git repository URL"):
        split_repo_url(url)


def test_split_repo_url_errors_redact_password() -> None:
    with pytest.raises(ValueError, match=r"missing \.git/ in Git URL"):
        split_repo_url("git@host:org/repo/streams.json")
    with pytest.raises(ValueError, match="missing path") as info:
        split_repo_url("https://user:hunter2@host/repo.git?/")
    assert "hunter2" not in str(info.value)


# ----------------------------------------------------------- ref resolution

REFS = {
    b"HEAD": SHA_A,
    b"refs/heads/main": SHA_A,
    b"refs/heads/dev": SHA_B,
    b"refs/tags/v1": SHA_T,
    b"refs/tags/v1^{}": SHA_B,
}


def test_resolve_default_branch() -> None:
    target = gitfetch.resolve_ref("", REFS)
    assert target.want == SHA_A and target.advertised
    assert gitfetch.resolve_ref("HEAD", REFS).want == SHA_A
    assert gitfetch.resolve_ref("", {b"refs/heads/x": SHA_A}).missing_head


def test_resolve_names() -> None:
    assert gitfetch.resolve_ref("dev", REFS).want == SHA_B
    assert gitfetch.resolve_ref("v1", REFS).want == SHA_T
    assert gitfetch.resolve_ref("refs/heads/dev", REFS).want == SHA_B
    missing = gitfetch.resolve_ref("nope", REFS)
    assert missing.want is None and not missing.abbreviated


def test_resolve_commit_ids() -> None:
    tip = gitfetch.resolve_ref(SHA_B.decode().upper(), REFS)
    assert tip.want == SHA_B and tip.advertised
    other = gitfetch.resolve_ref("d" * 40, REFS)
    assert other.want == b"d" * 40 and not other.advertised
    # A peeled tag value is not something a v0 server advertises as a ref.
    assert not gitfetch.resolve_ref("e" * 64, {b"refs/tags/x^{}": b"e" * 64}).advertised
    short = gitfetch.resolve_ref("abcdef1", REFS)
    assert short.want is None and short.abbreviated
    assert not gitfetch.resolve_ref("abc", REFS).abbreviated


def test_all_ref_wants_skips_peeled_and_other_namespaces() -> None:
    refs = dict(REFS)
    refs[b"refs/pull/1/head"] = b"f" * 40
    assert gitfetch.all_ref_wants(refs) == sorted({SHA_A, SHA_B, SHA_T})


def test_default_branch_name() -> None:
    assert gitfetch.default_branch({b"HEAD": b"refs/heads/trunk"}, REFS) == "trunk"
    assert gitfetch.default_branch({}, REFS) == "main"
    assert gitfetch.default_branch({}, {b"HEAD": SHA_B, b"refs/heads/dev": SHA_B}) == "dev"
    assert gitfetch.default_branch({}, {b"HEAD": SHA_B}) == ""
    assert gitfetch.default_branch({}, {}) == ""


def test_progress_lines_keep_final_state_of_each_line() -> None:
    lines: list[str] = []
    progress = gitfetch.ProgressLines(lines.append)
    progress(b"Counting objects: 1\rCounting objects: 2")
    progress(b"\rCounting objects: 3, done.\nCompressing\x1b[K objects: 100%\n\n")
    assert lines == ["Counting objects: 3, done.", "Compressing[K objects: 100%"]


@pytest.mark.parametrize("name", [b"", b".", b"..", b".git", b".GIT", b"a/b", b"../x", b"a\0b"])
def test_hostile_names_rejected(name: bytes) -> None:
    def fail(reason: str) -> GitFetchError:
        return GitFetchError("u", reason)

    with pytest.raises(GitFetchError, match="invalid path in repository"):
        gitcheckout.check_name(name, b"dir", fail)


def test_ordinary_names_accepted() -> None:
    def fail(reason: str) -> GitFetchError:
        raise AssertionError(reason)

    for name in (b"a", b".gitignore", b"..a", b"git", b"\xff"):
        gitcheckout.check_name(name, b"", fail)


# --------------------------------------------------------------- describe


def _read_timeout_through_dulwich() -> GitProtocolError:
    """What dulwich raises when urllib3 gave up after read timeouts."""
    reason = ReadTimeoutError(None, "/r.git/info/refs", "Read timed out.")  # type: ignore[arg-type]
    retries = MaxRetryError(None, "/r.git/info/refs", reason)  # type: ignore[arg-type]
    try:
        raise GitProtocolError(str(retries)) from retries
    except GitProtocolError as exc:
        return exc


def test_describe_a_timed_out_read_of_the_transfer() -> None:
    assert describe(_read_timeout_through_dulwich(), False, WATCH) == (
        "timed out: no answer from the remote for 5s"
    )


def test_describe_with_and_without_the_watch() -> None:
    expired = FetchWatch(60.0, 5.0)
    expired.expire()
    assert describe(OSError("disk full"), False, expired) == (
        "timed out: the fetch took longer than 1m0s"
    )
    # Without the watch (a failure after the transfer) the error speaks for itself.
    assert describe(OSError("disk full"), False) == "disk full"
    assert "Max retries exceeded" in describe(_read_timeout_through_dulwich(), False)
