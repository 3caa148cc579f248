"""URLs inside configuration documents: resolving relative ones, hiding passwords."""

from __future__ import annotations

from urllib.parse import urljoin, urlsplit, urlunsplit

__all__ = ["redact_url", "resolve_url"]


def resolve_url(base: str, reference: str) -> str:
    """``reference`` resolved against the URL of the document that names it.

    Absolute URLs and absolute paths are returned unchanged; a relative one
    (``filters/Debian-12``) is taken relative to ``base``, so a configuration
    tree can be moved as a whole. Empty stays empty.
    """
    if not reference or "://" in reference or reference.startswith("/"):
        return reference
    return urljoin(base, reference)


def redact_url(url: str) -> str:
    """``url`` with the password of its userinfo (if any) replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.password is None:
        return url
    userinfo, _, host = parts.netloc.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
