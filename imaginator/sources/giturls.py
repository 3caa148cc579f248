"""Git repository URLs: the forms the streams file uses, credentials, the public form.

A repository URL may carry a password in its userinfo
(``https://user:secret@host/r.git``, usually expanded from the variables
file). :func:`strip_credentials` takes the credentials out so they can be
handed to dulwich explicitly (never written to a git config); everything
user-visible names the repository by :func:`public_url` (password replaced by
``***``), and :func:`redact` scrubs every spelling of the password
(:func:`secret_forms`) out of transport error texts as a second line of
defence. :class:`GitFetchError`, the one error of a fetch, carries the public
URL only.

:func:`is_repo_url` and :func:`split_repo_url` recognise the streams-file
forms that name a file inside a repository (reference §3.1).
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import quote, unquote, urlsplit, urlunsplit

__all__ = [
    "GitFetchError",
    "is_repo_url",
    "public_url",
    "redact",
    "secret_forms",
    "split_repo_url",
    "strip_credentials",
]

_REDACTED = "***"


class GitFetchError(Exception):
    """Any failure to fetch or check out a manifest.

    ``url`` is the repository's public URL (password replaced by ``***``),
    ``reason`` the failure on its own (e.g. ``"conf does not exist in
    repository"``, the Go imaginator's wording); ``str()`` is
    ``"<url>: <reason>"``. Neither ever contains the password.
    """

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(url, reason)
        self.url = url
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.url}: {self.reason}"


def _split_userinfo(netloc: str) -> tuple[str | None, str]:
    """Split a URL netloc into (raw userinfo or None, host[:port])."""
    userinfo, at, hostport = netloc.rpartition("@")
    return (userinfo if at else None), hostport


def public_url(url: str) -> str:
    """``url`` with the password of its userinfo replaced by ``***``.

    ``https://user:secret@host/r.git`` becomes ``https://user:***@host/r.git``;
    URLs without a password, scp-like ``git@host:path`` forms and plain paths
    come back unchanged. This is the only form of a repository URL that goes
    into log lines and error messages.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if not parts.scheme or not parts.netloc:
        return url
    userinfo, hostport = _split_userinfo(parts.netloc)
    if userinfo is None or ":" not in userinfo:
        return url
    user = userinfo.partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:{_REDACTED}@{hostport}"))


def strip_credentials(url: str) -> tuple[str, str | None, str | None]:
    """Split ``url`` into (URL without userinfo, username, password).

    Username and password are percent-decoded. Non-URL forms (scp-like,
    plain paths) are returned unchanged with no credentials: the scp form's
    ``user@`` is part of the address, not a secret.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return url, None, None
    if not parts.scheme or not parts.netloc:
        return url, None, None
    userinfo, hostport = _split_userinfo(parts.netloc)
    if userinfo is None:
        return url, None, None
    user, colon, password = userinfo.partition(":")
    clean = urlunsplit(parts._replace(netloc=hostport))
    return clean, unquote(user) or None, (unquote(password) if colon else None)


def is_repo_url(url: str) -> bool:
    """Whether a streams-file URL names a file inside a git repository.

    True for ``git@host:org/repo.git/path`` and for
    ``http(s)://host/org/repo.git?path`` (reference §3.1); every other URL is
    a plain file or HTTP document.
    """
    if url.startswith("git@"):
        return True
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and parts.path.endswith(".git") and bool(parts.query)


def split_repo_url(url: str) -> tuple[str, str]:
    """Split a streams-file git URL into (repository URL, path in repository).

    ``git@host:org/repo.git/path/in/repo`` → ``("git@host:org/repo.git",
    "path/in/repo")``; ``https://host/org/repo.git?path/in/repo`` →
    ``("https://host/org/repo.git", "path/in/repo")`` (the query string,
    percent-decoded, is the path; userinfo stays in the repository URL).
    Raises ``ValueError`` for any other form (see :func:`is_repo_url`).
    """
    if url.startswith("git@"):
        host_end = url.find(":")
        pos = url.find(".git/", host_end + 1) if host_end > 0 else -1
        if pos < 0:
            raise ValueError(f"missing .git/ in Git URL: {public_url(url)}")
        path = url[pos + len(".git/") :].strip("/")
        if not path:
            raise ValueError(f"missing path in repository in Git URL: {public_url(url)}")
        return url[: pos + len(".git")], path
    if not is_repo_url(url):
        raise ValueError(f"not a Git repository URL: {public_url(url)}")
    parts = urlsplit(url)
    path = unquote(parts.query).strip("/")
    if not path:
        raise ValueError(f"missing path in repository in Git URL: {public_url(url)}")
    return urlunsplit(parts._replace(query="", fragment="")), path


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every occurrence of each non-empty secret replaced by ``***``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, _REDACTED)
    return text


def secret_forms(password: str | None) -> list[str]:
    """The spellings of ``password`` that could appear in an error text."""
    if not password:
        return []
    forms = {password, quote(password, safe=""), quote(password)}
    return sorted(forms, key=len, reverse=True)
