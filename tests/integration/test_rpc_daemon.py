"""The Imaginator RPC methods of the running daemon, over real TLS."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor

from imaginator.srpc.client import connect
from imaginator.srpc.framing import SrpcError
from imaginator.store.local import LocalImageStore
from imaginator.tools.certs import make_ca, make_server_cert, make_user_cert
from tests.support.configs import BUSYBOX, busybox_conf
from tests.support.daemon import Daemon

HOUR = 3600 * 10**9
APP = "apps/app"


def request(stream, *, expires=HOUR, stream_log=True, **extra):
    body = {
        "DisableRecursiveBuild": False,
        "ExpiresIn": expires,
        "GitBranch": "",
        "MaxSourceAge": HOUR,
        "MaximumBuildDuration": 24 * HOUR,
        "ReturnImage": False,
        "StreamBuildLog": stream_log,
        "StreamName": stream,
        "Variables": None,
    }
    body.update(extra)
    return body


class Pki:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir()
        self.ca_cert, self.ca_key = make_ca()
        (root / "CA.pem").write_bytes(self.ca_cert)
        cert, key = make_server_cert(self.ca_cert, self.ca_key, ["localhost"])
        (root / "cert.pem").write_bytes(cert)
        (root / "key.pem").write_bytes(key)

    def user(self, name, *, groups=(), methods=(), ca=None, **kwargs):
        ca_cert, ca_key = ca or (self.ca_cert, self.ca_key)
        cert, key = make_user_cert(ca_cert, ca_key, name, groups=groups, methods=methods, **kwargs)
        (self.root / f"{name}.cert").write_bytes(cert)
        (self.root / f"{name}.key").write_bytes(key)
        return self.root / f"{name}.cert", self.root / f"{name}.key"


@pytest.fixture
def pki(tmp_path):
    return Pki(tmp_path / "pki")


def app_manifest(tmp_path):
    manifest = tmp_path / "app-manifest"
    (manifest / "files" / "etc").mkdir(parents=True)
    (manifest / "files" / "etc" / "app.conf").write_text("app\n")
    (manifest / "manifest").write_text(json.dumps({"SourceImage": BUSYBOX}))
    return manifest


def start_daemon(tmp_path, pki, *extra, more_streams=None, conf_changes=None):
    manifest = app_manifest(tmp_path)
    streams = tmp_path / "image-streams.json"
    streams.write_text(
        json.dumps(
            {
                "Streams": {
                    APP: {
                        "ManifestUrl": f"dir://{manifest}",
                        "BuilderUsers": ["alice"],
                        "BuilderGroups": ["app-devs"],
                    },
                    **(more_streams or {}),
                }
            }
        )
    )
    conf = busybox_conf(tmp_path, auto_rebuild=[])
    document = json.loads(conf.read_text())
    document["ImageStreamsUrl"] = streams.as_uri()
    document.update(conf_changes or {})
    conf.write_text(json.dumps(document))
    return Daemon(
        [
            "-portNum=0",
            f"-stateDir={tmp_path / 'state'}",
            f"-configurationUrl=file://{conf}",
            "-buildLogDir=",
            "-imageRebuildInterval=0",
            f"-CAfile={pki.root / 'CA.pem'}",
            f"-certFile={pki.root / 'cert.pem'}",
            f"-keyFile={pki.root / 'key.pem'}",
            *extra,
        ]
    ).start()


async def client_for(port, cert_key):
    cert, key = cert_key
    return await connect("127.0.0.1", port, reactor=reactor, cert_file=cert, key_file=key)


async def build(client, body):
    log = []

    def on_message(message):
        if message.get("BuildLog"):
            log.append(base64.b64decode(message["BuildLog"]).decode())

    final = await client.call_stream("Imaginator.BuildImage", body, on_message)
    return final, "".join(log)


def open_fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest_twisted.ensureDeferred
async def test_builds_permissions_and_methods(tmp_path, pki):
    daemon = start_daemon(tmp_path, pki)
    try:
        port = await daemon.wait_listening()
        admin = await client_for(port, pki.user("admin", methods=["Imaginator.*"]))
        alice = await client_for(port, pki.user("alice"))
        carol = await client_for(port, pki.user("carol", groups=["app-devs"]))
        bob = await client_for(port, pki.user("bob", groups=["devs"]))

        # Bootstrap streams need method powers.
        final, _log = await build(bob, request(BUSYBOX))
        assert final["ErrorString"] == f"no permission to build: {BUSYBOX}"
        assert final["BuildLog"] is None
        final, log = await build(admin, request(BUSYBOX))
        assert final["ErrorString"] == "", log
        assert final["ImageName"].startswith(BUSYBOX + "/")
        assert log.startswith(f"Building: {BUSYBOX} for: admin\n")
        assert f"Uploaded {final['ImageName']}" in log
        assert final["BuildLog"] is None and final["Image"] is None

        # Stream builders: a listed user, a member of a listed group, nobody else.
        final, log = await build(alice, request(APP))
        assert final["ErrorString"] == "", log
        image = LocalImageStore(str(tmp_path / "state" / "store")).get_image(final["ImageName"])
        assert image.created_for == "alice"
        final, log = await build(carol, request(APP, stream_log=False))
        assert final["ErrorString"] == ""
        assert base64.b64decode(final["BuildLog"]).decode().startswith("Building: apps/app for")
        final, _ = await build(bob, request(APP))
        assert final["ErrorString"] == f"no permission to build: {APP}"

        # Expiration bounds and unknown streams.
        final, _ = await build(alice, request(APP, expires=0))
        assert final["ErrorString"] == "minimum expiration duration is 15m0s"
        final, _ = await build(alice, request(APP, expires=25 * HOUR))
        assert final["ErrorString"] == "maximum expiration time is 1d0s"
        final, _ = await build(admin, request(APP, expires=731 * HOUR))
        assert final["ErrorString"] == "maximum expiration time is 4w2d10h0m0s for you"
        final, _ = await build(alice, request("no/such/stream"))
        assert final["ErrorString"] == "unknown stream: no/such/stream"

        # Methods that need powers.
        with pytest.raises(SrpcError, match="access to method denied"):
            await alice.call("Imaginator.DisableBuildRequests", {"DisableFor": HOUR})
        reply = await admin.call("Imaginator.DisableBuildRequests", {"DisableFor": 25 * HOUR})
        assert reply["Error"] == "cannot disable build requests for more than: 24h0m0s"
        reply = await admin.call("Imaginator.DisableBuildRequests", {"DisableFor": HOUR})
        assert reply["Error"] == "" and reply["DisabledUntil"] != "0001-01-01T00:00:00Z"
        final, _ = await build(alice, request(APP))
        assert final["ErrorString"].startswith("builds disabled until ")
        reply = await admin.call("Imaginator.DisableBuildRequests", {"DisableFor": 0})
        assert reply == {"DisabledUntil": "0001-01-01T00:00:00Z", "Error": ""}
        reply = await admin.call("Imaginator.ReplaceIdleSlaves", {"ImmediateGetNew": True})
        assert reply == {"Error": "no SlaveDriver configured"}
        reply = await admin.call("Imaginator.DisableAutoBuilds", {"DisableFor": HOUR})
        assert reply["Error"] == ""
        reply = await admin.call(
            "Imaginator.StartAutoBuilds", {"WaitForComplete": True, "WaitToStart": True}
        )
        assert reply == {"Error": ""}

        # Public queries.
        deps = await alice.call("Imaginator.GetDependencies", {"MaxAge": 10 * 10**9})
        assert deps["StreamToSource"] == {APP: BUSYBOX}
        assert list(deps) == [
            "FetchLog",
            "GeneratedAt",
            "LastAttemptAt",
            "LastAttemptError",
            "StreamToSource",
            "UnbuildableSources",
            "Error",
        ]
        graph = await alice.call("Imaginator.GetDirectedGraph", {"MaxAge": 0})
        assert base64.b64decode(graph["GraphvizDot"]).decode() == (
            f'digraph all {{\n  "{APP}" -> "{BUSYBOX}"\n}}\n'
        )
        with pytest.raises(SrpcError, match="cannot unmarshal string into Go struct field"):
            await alice.call("Imaginator.GetDependencies", {"MaxAge": "x"})
        await alice.ping()  # still usable
        for client in (admin, alice, carol, bob):
            await client.close()
    finally:
        await daemon.stop()


@pytest_twisted.ensureDeferred
async def test_refusals_and_disconnects_leak_nothing(tmp_path, pki):
    daemon = start_daemon(tmp_path, pki)
    try:
        port = await daemon.wait_listening()
        pid = daemon.transport.pid
        admin_cert = pki.user("admin", methods=["Imaginator.*"])
        warm = await client_for(port, admin_cert)
        await warm.ping()
        await warm.close()
        before = open_fds(pid)

        other_ca = make_ca("another CA")
        for refused in (
            pki.user("mallory", ca=other_ca),
            pki.user("expired", not_before=_past(2), not_after=_past(1)),
        ):
            with pytest.raises(Exception):  # noqa: B017 - any TLS failure will do
                client = await client_for(port, refused)
                await client.ping()
        with pytest.raises(Exception):  # noqa: B017 - no certificate: refused in TLS
            client = await connect("127.0.0.1", port, reactor=reactor, tls=True)
            await client.ping()

        # A client that goes away in the middle of a streamed build.
        client = await client_for(port, admin_cert)
        started = []

        def first_message(message):
            started.append(message)
            client.close()
            raise ConnectionError("client gone")

        with pytest.raises(Exception):  # noqa: B017
            await client.call_stream("Imaginator.BuildImage", request(BUSYBOX), first_message)
        await daemon.wait_for(r"Built image: bootstrap/busybox/")
        assert started

        clients = [await client_for(port, admin_cert) for _ in range(50)]
        for client in clients:
            await client.ping()
        for client in clients:
            await client.close()
        await (await client_for(port, admin_cert)).close()  # let the server see the closes
        assert open_fds(pid) <= before + 1
    finally:
        await daemon.stop()


def _past(days):
    from datetime import UTC, datetime, timedelta

    return datetime.now(UTC) - timedelta(days=days)


def _raw_build_exchange(port, cert, key, body):
    """A BuildImage exchange with a plain stdlib TLS socket; returns every byte received."""
    import socket
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.load_cert_chain(cert, key)
    with socket.create_connection(("127.0.0.1", port), timeout=60) as raw:
        raw.sendall(b"CONNECT /_SRPC_/TLS/JSON HTTP/1.0\n\n")
        head = b""
        while not head.endswith(b"\n\n"):
            head += raw.recv(1)
        with context.wrap_socket(raw) as tls:
            tls.sendall(b"Imaginator.BuildImage\n")
            assert tls.recv(1) == b"\n"
            tls.sendall(json.dumps(body, separators=(",", ":")).encode() + b"\n")
            received = b""
            while b'"ImageName":"' + body["StreamName"].encode() not in received and (
                b'"ErrorString":""' in received or not received
            ):
                chunk = tls.recv(65536)
                if not chunk:
                    break
                received += chunk
            while not received.endswith(b"}\n"):
                received += tls.recv(65536)
            return head, received


@pytest_twisted.ensureDeferred
async def test_build_image_wire_bytes(tmp_path, pki):
    from twisted.internet import threads

    daemon = start_daemon(tmp_path, pki)
    try:
        port = await daemon.wait_listening()
        cert, key = pki.user("admin", methods=["Imaginator.*"])
        head, received = await threads.deferToThread(
            _raw_build_exchange, port, str(cert), str(key), request(BUSYBOX)
        )
    finally:
        await daemon.stop()
    assert head == b"HTTP/1.0 200 Connected to Go SRPC\n\n"
    assert received.startswith(b"\n{")  # the request accepted, then messages
    lines = received[1:].split(b"\n")
    assert lines[-1] == b""
    messages = [json.loads(line) for line in lines[:-1]]
    keys = [
        "Image",
        "ImageName",
        "BuildLog",
        "ErrorString",
        "NeedSourceImage",
        "SourceImage",
        "SourceImageBuildVariables",
        "SourceImageGitCommitId",
    ]
    assert all(list(m) == keys for m in messages)
    *logs, final = messages
    assert logs and all(m["Image"] is None and m["ImageName"] == "" for m in logs)
    first = lines[0]
    assert first.startswith(b'{"Image":null,"ImageName":"","BuildLog":"')
    assert first.endswith(
        b'","ErrorString":"","NeedSourceImage":false,"SourceImage":"",'
        b'"SourceImageBuildVariables":null,"SourceImageGitCommitId":""}'
    )
    log = b"".join(base64.b64decode(m["BuildLog"]) for m in logs).decode()
    assert log.startswith(f"Building: {BUSYBOX} for: admin\n")
    assert final["ImageName"].startswith(BUSYBOX + "/") and final["BuildLog"] is None
    assert f"Uploaded {final['ImageName']}" in log


@pytest_twisted.ensureDeferred
async def test_builder_tool_against_the_daemon(tmp_path, pki):
    import sys

    from twisted.internet.utils import getProcessOutputAndValue

    from tests.support.configs import REPO, clean_env

    certs = tmp_path / "certs"
    certs.mkdir()
    cert, key = pki.user("admin", methods=["Imaginator.*"])
    (certs / "admin.cert").write_bytes(cert.read_bytes())
    (certs / "admin.key").write_bytes(key.read_bytes())
    daemon = start_daemon(tmp_path, pki)
    try:
        port = await daemon.wait_listening()
        tool = [
            "-m",
            "imaginator.tools.builder_tool",
            f"-certDirectory={certs}",
            "-imaginatorHostname=127.0.0.1",
            f"-imaginatorPortNum={port}",
        ]
        out, err, code = await getProcessOutputAndValue(
            sys.executable, [*tool, "build-image", BUSYBOX], env=clean_env(), path=str(REPO)
        )
        assert code == 0, err.decode()
        name = out.decode().strip()
        assert name.startswith(BUSYBOX + "/")
        log = err.decode()
        assert log.startswith(f"Building: {BUSYBOX} for: admin\n")
        assert f"Uploaded {name}" in log
        out, err, code = await getProcessOutputAndValue(
            sys.executable, [*tool, "get-digraph"], env=clean_env(), path=str(REPO)
        )
        assert code == 0, err.decode()
        assert out.decode().startswith("digraph all {\n")
        out, err, code = await getProcessOutputAndValue(
            sys.executable,
            [*tool, "build-image", "no/such/stream"],
            env=clean_env(),
            path=str(REPO),
        )
        assert code == 1
        # No log was streamed: the error alone, without the end-of-log banner.
        assert err.decode() == "error building image: unknown stream: no/such/stream\n"
    finally:
        await daemon.stop()


@pytest_twisted.ensureDeferred
async def test_per_user_build_limit_is_refused_at_the_method_line(tmp_path, pki):
    from twisted.internet import defer, threads

    gate = tmp_path / "gate"
    gate.mkdir()
    fifo = gate / "fifo"
    os.mkfifo(fifo)
    slow = tmp_path / "slow-manifest"
    (slow / "scripts").mkdir(parents=True)
    (slow / "manifest").write_text(json.dumps({"SourceImage": BUSYBOX}))
    (slow / "scripts" / "10_wait").write_text(f"#!/bin/sh\necho waiting\ncat {fifo}\n")
    (slow / "scripts" / "10_wait").chmod(0o755)
    daemon = start_daemon(
        tmp_path,
        pki,
        more_streams={"apps/slow": {"ManifestUrl": f"dir://{slow}", "BuilderUsers": ["alice"]}},
        conf_changes={"BindMounts": [str(gate)]},
    )
    try:
        port = await daemon.wait_listening()
        admin = await client_for(port, pki.user("admin", methods=["Imaginator.*"]))
        final, log = await build(admin, request(BUSYBOX))
        assert not final["ErrorString"], log
        alice_cert = pki.user("alice")
        first = await client_for(port, alice_cert)
        second = await client_for(port, alice_cert)
        waiting = defer.Deferred()

        def on_message(message):
            text = base64.b64decode(message.get("BuildLog") or b"").decode()
            if "waiting" in text and not waiting.called:
                waiting.callback(None)

        running = defer.ensureDeferred(
            first.call_stream("Imaginator.BuildImage", request("apps/slow"), on_message)
        )
        await waiting.addTimeout(60, reactor)
        with pytest.raises(SrpcError, match=r"^alice reached limit of 1 calls for BuildImage$"):
            await second.call_stream("Imaginator.BuildImage", request("apps/slow"), lambda m: 0)

        def release():
            with open(fifo, "w") as handle:
                handle.write("go\n")

        await threads.deferToThread(release)
        final = await running
        assert final["ErrorString"] == "", final
        final, _ = await build(second, request(APP))  # the slot is free again
        assert final["ErrorString"] == ""
    finally:
        await daemon.stop()
