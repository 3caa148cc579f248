"""A client of the OCI distribution API (HTTP API v2), enough to push images.

Blobs: ``HEAD`` to see whether the registry has one, then an upload
(``POST`` for a session, then one ``PUT`` of the whole blob or ``PATCH``
chunks and a closing ``PUT``), bodies streamed from files. Manifests: ``GET``
and ``PUT``. Authentication: the registry's ``401`` challenge is answered
with Basic credentials or with a Bearer token fetched from the challenge's
realm (with the credentials, if any). TLS verifies against the system CAs or
a given CA file; plain HTTP is used only for a loopback registry that does not
speak TLS, or when the caller says so. Credentials and tokens never appear in
an error or a log line.

Synchronous and blocking (``http.client``): call it from a thread.
"""

from __future__ import annotations

import base64
import http.client
import ipaddress
import json
import re
import ssl
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import BinaryIO
from urllib.parse import SplitResult, urlencode, urljoin, urlsplit

DEFAULT_REGISTRY = "docker.io"
_DOCKER_HUB_API = "registry-1.docker.io"
_DOCKER_HUB_ALIASES = {"docker.io", "index.docker.io", "registry-1.docker.io"}
#: Blobs up to this size go in one PUT; bigger ones in PATCH chunks of it.
DEFAULT_CHUNK_SIZE = 64 << 20
_MAX_RESPONSE = 4 << 20
_SEND_BLOCK = 1 << 20
_REDIRECTS = 5
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_HOST = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
    r"|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?"
)
_CHALLENGE_PARAM = re.compile(r'(\w+)=(?:"([^"]*)"|([^\s,]*))')


class RegistryError(Exception):
    """A registry operation failed; the message never holds a secret."""


@dataclass(frozen=True)
class Reference:
    """``registry/repository[:tag][@digest]``, as Docker and skopeo write it."""

    registry: str
    repository: str
    tag: str = ""
    digest: str = ""

    def __str__(self) -> str:
        text = f"{self.registry}/{self.repository}"
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def parse_reference(text: str) -> Reference:
    """Parse an image reference; no tag and no digest means ``latest``.

    A first component with a ``.`` or ``:``, or ``localhost``, is the
    registry; otherwise the registry is Docker Hub (``library/`` added to a
    one-component name). ``RegistryError`` for a malformed reference.
    """
    rest, _, digest = text.partition("@")
    if digest and not _DIGEST.fullmatch(digest):
        raise RegistryError(f"{text}: bad digest (expected sha256:<64 hex digits>)")
    first, slash, remainder = rest.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost" or first.startswith("[")):
        registry, path = first, remainder
        if not _HOST.fullmatch(registry):
            raise RegistryError(f"{text}: bad registry host {registry!r}")
    else:
        registry, path = DEFAULT_REGISTRY, rest
    name, colon, tag = path.rpartition(":")
    if colon and "/" not in tag:
        path = name
        if not _TAG.fullmatch(tag):
            raise RegistryError(f"{text}: bad tag {tag!r}")
    else:
        tag = ""
    if registry == DEFAULT_REGISTRY and "/" not in path:
        path = f"library/{path}"
    if not _REPOSITORY.fullmatch(path):
        raise RegistryError(
            f"{text}: bad repository name {path!r} (lower-case letters, digits, separators)"
        )
    if not tag and not digest:
        tag = "latest"
    return Reference(registry, path, tag, digest)


# ---------------------------------------------------------------------- credentials


@dataclass(frozen=True)
class Credentials:
    """A user name and password (``repr`` leaves the password out)."""

    username: str
    password: str = field(repr=False)


def _registry_key(key: str) -> str:
    """``https://host:port/v1/`` -> ``host:port``; Docker Hub's names -> ``docker.io``."""
    if "://" in key:
        key = key.split("://", 1)[1]
    key = key.split("/", 1)[0].lower()
    return DEFAULT_REGISTRY if key in _DOCKER_HUB_ALIASES else key


def load_credentials(path: str, registry: str) -> Credentials | None:
    """The credentials for ``registry`` from the file ``path``.

    The file is Docker's ``config.json`` (``{"auths": {"host:port": {"auth":
    base64("user:password")}}}`` or ``{"username": …, "password": …}`` in an
    entry), or a plain ``{"username": …, "password": …}`` used for any
    registry. ``None`` when ``auths`` has no entry for ``registry``;
    ``RegistryError`` naming the file and key (never a value) when malformed.
    """
    try:
        with open(path, "rb") as f:
            data = f.read(1 << 20)
    except OSError as exc:
        raise RegistryError(f"{path}: {exc.strerror or exc}") from None
    try:
        value = json.loads(data)
    except ValueError:
        raise RegistryError(f"{path}: not JSON") from None
    if not isinstance(value, dict):
        raise RegistryError(f"{path}: expected a JSON object")
    if "auths" in value:
        auths = value["auths"]
        if not isinstance(auths, dict):
            raise RegistryError(f"{path}: auths: expected an object")
        wanted = _registry_key(registry)
        for key, entry in auths.items():
            if _registry_key(key) == wanted:
                return _entry_credentials(entry, f"{path}: auths.{key}")
        return None
    if "username" in value or "password" in value:
        return _entry_credentials(value, path)
    raise RegistryError(f'{path}: expected "auths" or "username" and "password"')


def _entry_credentials(entry: object, where: str) -> Credentials:
    if not isinstance(entry, dict):
        raise RegistryError(f"{where}: expected an object")
    auth = entry.get("auth")
    if auth:
        if not isinstance(auth, str):
            raise RegistryError(f"{where}.auth: expected a string")
        try:
            username, sep, password = base64.b64decode(auth, validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            sep = ""
        if not sep or not username:
            raise RegistryError(f"{where}.auth: not base64 of user:password")
        return Credentials(username, password)
    user, secret = entry.get("username"), entry.get("password")
    for key, item in (("username", user), ("password", secret)):
        if not isinstance(item, str) or (key == "username" and not item):
            raise RegistryError(f"{where}.{key}: expected a non-empty string")
    assert isinstance(user, str) and isinstance(secret, str)
    return Credentials(user, secret)


# ---------------------------------------------------------------------- client


@dataclass(frozen=True)
class Response:
    status: int
    headers: http.client.HTTPMessage
    body: bytes


class _Region:
    """``length`` bytes of an open file from ``offset``, as a request body."""

    def __init__(self, f: BinaryIO, offset: int, length: int) -> None:
        f.seek(offset)
        self._f = f
        self._left = length

    def read(self, size: int = -1) -> bytes:
        if self._left <= 0:
            return b""
        size = self._left if size < 0 else min(size, self._left)
        data = self._f.read(size)
        self._left -= len(data)
        return data


def is_loopback(host: str) -> bool:
    """Whether ``host`` (no port) is ``localhost`` or a loopback address."""
    host = host.strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


Body = bytes | Callable[[], BinaryIO | _Region] | None


def _body_of(region: _Region) -> Callable[[], _Region]:
    """A body that is ``region`` (a function of its own, so each chunk keeps its region)."""
    return lambda: region


class RegistryClient:
    """Talks to one registry (``host[:port]``, ``docker.io`` for Docker Hub).

    ``requests`` counts the requests sent by ``(method, what)``, e.g.
    ``("HEAD", "blob")`` or ``("PUT", "upload")``.
    """

    def __init__(
        self,
        registry: str,
        *,
        credentials: Credentials | None = None,
        ca_file: str | None = None,
        plain_http: bool = False,
        timeout: float = 300.0,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> None:
        self.registry = registry
        self.netloc = _DOCKER_HUB_API if registry == DEFAULT_REGISTRY else registry
        self._credentials = credentials
        self._plain_http = plain_http
        self._timeout = timeout
        self.chunk_size = chunk_size
        try:
            self._tls = ssl.create_default_context(cafile=ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise RegistryError(f"{ca_file}: cannot load CA: {exc}") from None
        self._scheme: str | None = None
        self._authorization: str | None = None
        self.requests: Counter[tuple[str, str]] = Counter()

    # -- blobs and manifests ---------------------------------------------------

    def blob_exists(self, repository: str, digest: str) -> bool:
        """Whether the repository has the blob (``HEAD``)."""
        path = f"/v2/{repository}/blobs/{digest}"
        answer = self.request("HEAD", path, what="blob", scope=repository, expect=(200, 404))
        return answer.status == 200

    def upload_blob(self, repository: str, digest: str, size: int, source: str | bytes) -> None:
        """Upload a blob from the file named ``source`` (or from bytes): one
        ``PUT`` up to ``chunk_size``, else ``PATCH`` chunks then ``PUT``."""
        start = self.request(
            "POST",
            f"/v2/{repository}/blobs/uploads/",
            what="upload",
            scope=repository,
            headers={"Content-Length": "0"},
            expect=(202,),
        )
        location = self._location(start, f"/v2/{repository}/blobs/uploads/")
        if isinstance(source, bytes):
            final = self._put_upload(location, digest, repository, source, len(source))
        elif size <= self.chunk_size:
            final = self._put_upload(location, digest, repository, _opener(source), size)
        else:
            with open(source, "rb") as f:
                offset = 0
                while offset < size:
                    length = min(self.chunk_size, size - offset)
                    region = _Region(f, offset, length)
                    answer = self.request(
                        "PATCH",
                        location,
                        what="upload",
                        scope=repository,
                        headers={
                            "Content-Type": "application/octet-stream",
                            "Content-Range": f"{offset}-{offset + length - 1}",
                            "Content-Length": str(length),
                        },
                        body=_body_of(region),
                        expect=(202,),
                        replayable=False,
                    )
                    location = self._location(answer, location)
                    offset += length
            final = self._put_upload(location, digest, repository, b"", 0)
        returned = final.headers.get("Docker-Content-Digest")
        if returned and returned != digest:
            raise RegistryError(f"{self.registry}: blob stored as {returned}, expected {digest}")

    def _put_upload(
        self, location: str, digest: str, repository: str, body: Body, size: int
    ) -> Response:
        parts = urlsplit(location)
        query = f"{parts.query}&" if parts.query else ""
        query += urlencode({"digest": digest})
        target = parts._replace(query=query).geturl()
        return self.request(
            "PUT",
            target,
            what="upload",
            scope=repository,
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
            body=body,
            expect=(201,),
        )

    def put_manifest(
        self, repository: str, reference: str, media_type: str, data: bytes
    ) -> http.client.HTTPMessage:
        """``PUT`` a manifest (or index) under a tag or digest; the answer's headers."""
        answer = self.request(
            "PUT",
            f"/v2/{repository}/manifests/{reference}",
            what="manifest",
            scope=repository,
            headers={"Content-Type": media_type, "Content-Length": str(len(data))},
            body=data,
            expect=(201,),
        )
        return answer.headers

    def get_manifest(
        self, repository: str, reference: str, accept: str
    ) -> tuple[str, bytes] | None:
        """``(media type, bytes)`` of a manifest, ``None`` if unknown."""
        answer = self.request(
            "GET",
            f"/v2/{repository}/manifests/{reference}",
            what="manifest",
            scope=repository,
            headers={"Accept": accept},
            expect=(200, 404),
        )
        if answer.status == 404:
            return None
        return answer.headers.get("Content-Type", ""), answer.body

    # -- requests ------------------------------------------------------------------

    def request(
        self,
        method: str,
        target: str,
        *,
        what: str,
        scope: str = "",
        headers: dict[str, str] | None = None,
        body: Body = None,
        expect: tuple[int, ...] = (200,),
        replayable: bool = True,
    ) -> Response:
        """Send one request to the registry (``target``: a path or a URL it
        gave), answering an authentication challenge once; ``RegistryError``
        unless the status is in ``expect``."""
        url = urljoin(f"{self._base()}/", target)
        answer = self._send(method, url, headers or {}, body, what)
        if answer.status == 401 and replayable:
            self._authenticate(answer.headers.get("WWW-Authenticate", ""), scope)
            answer = self._send(method, url, headers or {}, body, what)
        if answer.status not in expect:
            raise RegistryError(_describe_failure(method, url, answer))
        return answer

    def _base(self) -> str:
        if self._scheme is None:
            self._scheme = self._choose_scheme()
        return f"{self._scheme}://{self.netloc}"

    def _choose_scheme(self) -> str:
        host = urlsplit(f"//{self.netloc}").hostname or ""
        if self._plain_http:
            return "http"
        if not is_loopback(host):
            return "https"
        # A loopback registry may speak plain HTTP: find out with a handshake.
        conn = self._connection("https", self.netloc)
        try:
            conn.connect()
        except ssl.SSLCertVerificationError as exc:
            raise RegistryError(f"{self.netloc}: TLS: {exc.verify_message}") from None
        except (ssl.SSLError, ConnectionResetError):
            return "http"
        except OSError as exc:
            raise RegistryError(f"{self.netloc}: {exc.strerror or exc}") from None
        finally:
            conn.close()
        return "https"

    def _connection(self, scheme: str, netloc: str) -> http.client.HTTPConnection:
        if scheme == "https":
            return http.client.HTTPSConnection(
                netloc, timeout=self._timeout, context=self._tls, blocksize=_SEND_BLOCK
            )
        return http.client.HTTPConnection(netloc, timeout=self._timeout, blocksize=_SEND_BLOCK)

    def _send(
        self, method: str, url: str, headers: dict[str, str], body: Body, what: str
    ) -> Response:
        for _ in range(_REDIRECTS + 1):
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https"):
                raise RegistryError(f"{self.registry}: refusing to follow a {parts.scheme} URL")
            if parts.scheme == "http" and not (
                self._plain_http or is_loopback(parts.hostname or "")
            ):
                raise RegistryError(f"{self.registry}: refusing plain HTTP to {parts.netloc}")
            sent = dict(headers)
            if self._authorization and parts.netloc == self.netloc:
                sent["Authorization"] = self._authorization
            self.requests[(method, what)] += 1
            answer = self._exchange(method, parts.scheme, parts.netloc, _path(parts), sent, body)
            if answer.status in (301, 302, 303, 307, 308) and method in ("GET", "HEAD"):
                url = urljoin(url, answer.headers.get("Location", ""))
                continue
            return answer
        raise RegistryError(f"{self.registry}: too many redirects")

    def _exchange(
        self, method: str, scheme: str, netloc: str, path: str, headers: dict[str, str], body: Body
    ) -> Response:
        conn = self._connection(scheme, netloc)
        try:
            payload = body() if callable(body) else body
            try:
                conn.request(method, path, body=payload, headers=headers)
                reply = conn.getresponse()
                data = b"" if method == "HEAD" else reply.read(_MAX_RESPONSE + 1)
            finally:
                if payload is not None and hasattr(payload, "close"):
                    payload.close()
            if len(data) > _MAX_RESPONSE:
                raise RegistryError(f"{self.registry}: answer to {method} {path} is too big")
            return Response(reply.status, reply.headers, data)
        except ssl.SSLCertVerificationError as exc:
            raise RegistryError(f"{netloc}: TLS: {exc.verify_message}") from None
        except (OSError, http.client.HTTPException) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise RegistryError(f"{netloc}: {method} {_strip_query(path)}: {reason}") from None
        finally:
            conn.close()

    def _location(self, answer: Response, base: str) -> str:
        location = answer.headers.get("Location")
        if not location:
            raise RegistryError(f"{self.registry}: upload answer without a Location")
        return urljoin(urljoin(f"{self._base()}/", base), location)

    # -- authentication --------------------------------------------------------------

    def _authenticate(self, challenge: str, repository: str) -> None:
        scheme, _, rest = challenge.strip().partition(" ")
        params = {
            m.group(1).lower(): m.group(2) or m.group(3) or ""
            for m in _CHALLENGE_PARAM.finditer(rest)
        }
        if scheme.lower() == "basic":
            if self._credentials is None:
                raise RegistryError(
                    f"{self.registry}: authentication required and no credentials given"
                )
            token = f"{self._credentials.username}:{self._credentials.password}".encode()
            self._authorization = "Basic " + base64.b64encode(token).decode("ascii")
            return
        if scheme.lower() != "bearer" or not params.get("realm"):
            raise RegistryError(f"{self.registry}: unsupported authentication challenge {scheme!r}")
        query = {"service": params.get("service", "")}
        wanted = params.get("scope") or (f"repository:{repository}:pull,push" if repository else "")
        if wanted:
            query["scope"] = wanted
        self._authorization = "Bearer " + self._fetch_token(params["realm"], query)

    def _fetch_token(self, realm: str, query: dict[str, str]) -> str:
        parts = urlsplit(realm)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise RegistryError(f"{self.registry}: bad token realm")
        if parts.scheme == "http" and not (self._plain_http or is_loopback(parts.hostname or "")):
            raise RegistryError(
                f"{self.registry}: refusing plain HTTP to token realm {parts.netloc}"
            )
        extra = urlencode({k: v for k, v in query.items() if v})
        path = _path(parts) + (("&" if parts.query else "?") + extra if extra else "")
        headers = {}
        if self._credentials is not None:
            pair = f"{self._credentials.username}:{self._credentials.password}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
        self.requests[("GET", "token")] += 1
        answer = self._exchange("GET", parts.scheme, parts.netloc, path, headers, None)
        if answer.status != 200:
            raise RegistryError(
                f"{self.registry}: token request to {parts.netloc} refused ({answer.status})"
                + ("" if self._credentials else "; no credentials given")
            )
        try:
            value = json.loads(answer.body)
            token = value.get("token") or value.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise RegistryError(f"{self.registry}: token answer from {parts.netloc} has no token")
        return token


def _opener(path: str) -> Callable[[], BinaryIO]:
    return lambda: open(path, "rb")  # closed by _exchange


def _path(parts: SplitResult) -> str:
    path = parts.path or "/"
    return f"{path}?{parts.query}" if parts.query else path


def _strip_query(path: str) -> str:
    return path.partition("?")[0]


def _describe_failure(method: str, url: str, answer: Response) -> str:
    """``METHOD /path: status reason: CODE: message`` (no query, which may hold upload state)."""
    where = _strip_query(urlsplit(url).path)
    text = (
        f"{method} {where}: {answer.status} {http.client.responses.get(answer.status, '')}".rstrip()
    )
    try:
        errors = json.loads(answer.body).get("errors") or []
        details = "; ".join(
            f"{e.get('code', '')}: {e.get('message', '')}" for e in errors if isinstance(e, dict)
        )
    except (ValueError, AttributeError):
        details = ""
    if details:
        text += f": {details[:300]}"
    return text
