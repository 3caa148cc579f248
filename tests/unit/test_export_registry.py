"""The distribution API client's logic (imaginator.export.registry): references,
credentials files, and the authentication handshake against a small scripted
server on a loopback socket. Pushing to the real registry is in
tests/integration/test_export_registry.py."""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from imaginator.export.registry import (
    Credentials,
    Reference,
    RegistryClient,
    RegistryError,
    is_loopback,
    load_credentials,
    parse_reference,
)

SECRET = "s3cr3t-pa55"
TOKEN = "t0ken-value"
DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:5000/hello", Reference("127.0.0.1:5000", "hello", "latest")),
        ("localhost/a/b:v1", Reference("localhost", "a/b", "v1")),
        ("reg.example.com/x/y:1.0-rc", Reference("reg.example.com", "x/y", "1.0-rc")),
        ("busybox", Reference("docker.io", "library/busybox", "latest")),
        ("me/app:2", Reference("docker.io", "me/app", "2")),
        (f"[::1]:5000/h@{DIGEST}", Reference("[::1]:5000", "h", "", DIGEST)),
        (f"r.io/h:t@{DIGEST}", Reference("r.io", "h", "t", DIGEST)),
    ],
)
def test_parse_reference(text, expected):
    assert parse_reference(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("r.io/Upper", "bad repository name"),
        ("r.io/x:bad/tag", "bad repository name"),
        ("r.io/x:-t", "bad tag"),
        ("r.io/x@sha256:zz", "bad digest"),
        ("bad_host.io:x/y", "bad registry host"),
        ("", "bad repository name"),
    ],
)
def test_bad_references(text, message):
    with pytest.raises(RegistryError, match=message):
        parse_reference(text)


def test_reference_text():
    assert str(Reference("r.io", "a/b", "t", DIGEST)) == f"r.io/a/b:t@{DIGEST}"


def test_loopback():
    assert is_loopback("localhost") and is_loopback("127.1.2.3") and is_loopback("[::1]")
    assert not is_loopback("10.0.0.1") and not is_loopback("registry.example.com")


def write(tmp_path, value) -> str:
    path = tmp_path / "credentials.json"
    path.write_text(value if isinstance(value, str) else json.dumps(value))
    return str(path)


def test_docker_config_with_auth(tmp_path):
    auth = base64.b64encode(f"alice:{SECRET}".encode()).decode()
    path = write(tmp_path, {"auths": {"https://reg.io:5000/v1/": {"auth": auth}}})
    assert load_credentials(path, "reg.io:5000") == Credentials("alice", SECRET)
    assert load_credentials(path, "other.io") is None
    assert SECRET not in repr(Credentials("alice", SECRET))


def test_docker_config_with_username_and_hub_aliases(tmp_path):
    path = write(
        tmp_path,
        {"auths": {"https://index.docker.io/v1/": {"username": "bob", "password": SECRET}}},
    )
    assert load_credentials(path, "docker.io") == Credentials("bob", SECRET)


def test_plain_credentials_apply_to_any_registry(tmp_path):
    path = write(tmp_path, {"username": "carol", "password": SECRET})
    assert load_credentials(path, "anything:1") == Credentials("carol", SECRET)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{", "not JSON"),
        ("[]", "expected a JSON object"),
        ({"auths": []}, "auths: expected an object"),
        ({"auths": {"r.io": {"auth": "bm9jb2xvbg=="}}}, r"auths\.r\.io\.auth: not base64"),
        ({"auths": {"r.io": {"auth": SECRET}}}, r"auths\.r\.io\.auth: not base64"),
        ({"auths": {"r.io": {"username": "u", "password": 5}}}, "password: expected"),
        ({"username": "", "password": SECRET}, "username: expected a non-empty string"),
        ({"token": SECRET}, 'expected "auths"'),
    ],
)
def test_bad_credentials_files_never_show_the_secret(tmp_path, content, message):
    path = write(tmp_path, content)
    with pytest.raises(RegistryError, match=message) as raised:
        load_credentials(path, "r.io")
    assert SECRET not in str(raised.value)
    assert str(raised.value).startswith(path)


def test_missing_credentials_file(tmp_path):
    with pytest.raises(RegistryError, match="No such file"):
        load_credentials(str(tmp_path / "none"), "r.io")


class _Scripted(BaseHTTPRequestHandler):
    """A registry that wants a Bearer token from its /token realm."""

    seen: list[tuple[str, str, str]]

    def log_message(self, *args):
        pass

    def _answer(self, status, body=b"", headers=()):
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self.seen.append(("GET", self.path, self.headers.get("Authorization", "")))
        if self.path.startswith("/token"):
            expected = "Basic " + base64.b64encode(f"alice:{SECRET}".encode()).decode()
            if self.headers.get("Authorization") != expected:
                return self._answer(401, b'{"details":"' + SECRET.encode() + b'"}')
            return self._answer(200, json.dumps({"token": TOKEN}).encode())
        return self._answer(404)

    def do_HEAD(self):
        self.seen.append(("HEAD", self.path, self.headers.get("Authorization", "")))
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            port = self.server.server_address[1]
            challenge = (
                f'Bearer realm="http://127.0.0.1:{port}/token",service="test",'
                f'scope="repository:app:pull,push"'
            )
            return self._answer(401, headers=[("WWW-Authenticate", challenge)])
        return self._answer(200 if self.path.endswith("ab" * 32) else 404)


@pytest.fixture
def scripted():
    seen: list = []
    handler = type("Handler", (_Scripted,), {"seen": seen})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], seen
    server.shutdown()
    server.server_close()
    thread.join()


def test_bearer_token_from_the_realm_with_basic_credentials(scripted):
    port, seen = scripted
    client = RegistryClient(f"127.0.0.1:{port}", credentials=Credentials("alice", SECRET))
    assert client.blob_exists("app", DIGEST)
    assert not client.blob_exists("app", "sha256:" + "cd" * 32)
    token_requests = [s for s in seen if s[1].startswith("/token")]
    assert len(token_requests) == 1  # the token is kept for the next request
    assert "scope=repository%3Aapp%3Apull%2Cpush" in token_requests[0][1]
    assert "service=test" in token_requests[0][1]
    assert client.requests[("GET", "token")] == 1
    assert client.requests[("HEAD", "blob")] == 3


def test_wrong_credentials_fail_without_showing_them(scripted):
    port, _seen = scripted
    client = RegistryClient(
        f"127.0.0.1:{port}", credentials=Credentials("alice", "wrong-" + SECRET)
    )
    with pytest.raises(
        RegistryError, match=r"token request to 127\.0\.0\.1:\d+ refused \(401\)"
    ) as raised:
        client.blob_exists("app", DIGEST)
    assert SECRET not in str(raised.value)
    client = RegistryClient(f"127.0.0.1:{port}")
    with pytest.raises(RegistryError, match="no credentials given"):
        client.blob_exists("app", DIGEST)


def test_plain_http_is_refused_beyond_loopback():
    client = RegistryClient("registry.example.invalid:5000")
    with pytest.raises(RegistryError, match="refusing plain HTTP"):
        client._send("GET", "http://registry.example.invalid:5000/v2/", {}, None, "ping")


def test_a_bad_ca_file_is_named(tmp_path):
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate")
    with pytest.raises(RegistryError, match=f"{bad}: cannot load CA"):
        RegistryClient("r.io", ca_file=str(bad))
