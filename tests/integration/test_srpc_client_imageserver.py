"""Our SRPC client against the unmodified Go imageserver (``../shared/peers``).

Over TLS with a client certificate, verifying the imageserver's certificate
against the CA, the JSON coder: the calls a remote image store makes that work
over JSON (reference §7.2): request/reply (MakeDirectory, CheckObjects), a
coder stream (ListDirectories), raw text lines (ListImages) and a reply
followed by raw object bytes (GetObjects, from objects put in the
imageserver's object directory before it started).

Skipped, with the reason, when the peers are absent; failed instead when
``IMAGINATOR_REQUIRE_PEERS=1``.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import re
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer, protocol, reactor

from imaginator.srpc.client import SrpcClient, connect
from imaginator.srpc.framing import SrpcError
from imaginator.tools.certs import make_ca, make_server_cert, make_user_cert

REPO = Path(__file__).resolve().parents[2]
PEERS = REPO.parent / "shared" / "peers"
HOST = "127.0.0.1"
STARTUP_TIMEOUT = 60.0
OBJECTS = [b"an object\n", bytes(range(256)) * 512]


def imageserver_program() -> Path:
    program = PEERS / "imageserver"
    if not os.access(program, os.X_OK):
        reason = f"the Go peers are absent: no {program}"
        if os.environ.get("IMAGINATOR_REQUIRE_PEERS") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return program


class _Output(protocol.ProcessProtocol):
    """Collects the imageserver's output; fires ``ready`` on "Service ready"."""

    def __init__(self) -> None:
        self.text = ""
        self.ready: defer.Deferred[None] = defer.Deferred()
        self.ended: defer.Deferred[None] = defer.Deferred()

    def childDataReceived(self, fd: int, data: bytes) -> None:
        self.text += data.decode("utf-8", "replace")
        if "Service ready" in self.text and not self.ready.called:
            self.ready.callback(None)

    def processEnded(self, reason: object) -> None:
        if not self.ready.called:
            self.ready.errback(AssertionError(f"imageserver ended:\n{self.text}"))
        self.ended.callback(None)


@dataclass
class Imageserver:
    port: int
    ca_file: Path
    cert: tuple[Path, Path]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def _store_object(objects: Path, data: bytes) -> str:
    """Put ``data`` where the objectserver keeps it (reference §4.3)."""
    name = hashlib.sha512(data).hexdigest()
    path = objects / name[:2] / name[2:4] / name[4:]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return name


@pytest_twisted.async_yield_fixture
async def imageserver() -> AsyncIterator[Imageserver]:
    program = imageserver_program()
    # Its own directory tree, readable by the unprivileged user it runs as
    # (pytest's temporary directories are private to root).
    root = Path(tempfile.mkdtemp(prefix="imaginator-imageserver-", dir="/var/tmp"))
    root.chmod(0o755)
    try:
        ca_cert, ca_key = make_ca("test CA")
        server_cert, server_key = make_server_cert(ca_cert, ca_key, ["localhost", HOST])
        user_cert, user_key = make_user_cert(
            ca_cert, ca_key, "remote-store", methods=["ImageServer.*", "ObjectServer.*"]
        )
        files = {
            "CA.pem": ca_cert,
            "imageserver.cert": server_cert,
            "imageserver.key": server_key,
            "store.cert": user_cert,
            "store.key": user_key,
        }
        for name, data in files.items():
            (root / name).write_bytes(data)
            (root / name).chmod(0o644 if name.endswith((".pem", ".cert")) else 0o600)
        for sub in ("images", "objects", "log"):
            (root / sub).mkdir()
        for data in OBJECTS:
            _store_object(root / "objects", data)
        port = _free_port()
        argv = [
            str(program),
            f"-portNum={port}",
            f"-imageDir={root / 'images'}",
            f"-objectDir={root / 'objects'}",
            f"-logDir={root / 'log'}",
            f"-CAfile={root / 'CA.pem'}",
            f"-certFile={root / 'imageserver.cert'}",
            f"-keyFile={root / 'imageserver.key'}",
            "-alsoLogToStderr",
        ]
        if os.geteuid() == 0:  # the imageserver refuses to run as root
            nobody = pwd.getpwnam("nobody")
            owned = [root / "imageserver.key"]
            for sub in ("images", "objects", "log"):
                owned += [root / sub, *(root / sub).rglob("*")]
            for path in owned:
                os.chown(path, nobody.pw_uid, nobody.pw_gid)
            argv = [
                "setpriv",
                f"--reuid={nobody.pw_uid}",
                f"--regid={nobody.pw_gid}",
                "--clear-groups",
                "--pdeathsig=TERM",
                "--",
                *argv,
            ]
        output = _Output()
        executable = shutil.which(argv[0]) or argv[0]
        environment = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(root)}
        process = reactor.spawnProcess(output, executable, argv, env=environment, path=str(root))
        try:
            await output.ready.addTimeout(STARTUP_TIMEOUT, reactor)
            yield Imageserver(port, root / "CA.pem", (root / "store.cert", root / "store.key"))
        finally:
            if not output.ended.called:
                process.signalProcess("TERM")
            await output.ended.addTimeout(STARTUP_TIMEOUT, reactor)
    finally:
        shutil.rmtree(root, ignore_errors=True)


async def dial(server: Imageserver) -> SrpcClient:
    cert_file, key_file = server.cert
    return await connect(
        HOST,
        server.port,
        reactor=reactor,
        cert_file=cert_file,
        key_file=key_file,
        ca_file=server.ca_file,
        call_timeout=60,
    )


async def list_directories(client: SrpcClient) -> list[str]:
    names = []
    async with client.open_call("ImageServer.ListDirectories") as call:
        while (directory := await call.receive())["Name"]:
            names.append(directory["Name"])
    return names


@pytest_twisted.ensureDeferred
async def test_calls_a_remote_store_makes(imageserver: Imageserver) -> None:
    client = await dial(imageserver)
    await client.ping()
    assert await list_directories(client) == ["."]  # the root
    assert (
        await client.call("ImageServer.MakeDirectory", {"DirectoryName": "a/b", "MakeAll": True})
        == {}
    )
    assert sorted(await list_directories(client)) == [".", "a", "a/b"]
    with pytest.raises(SrpcError, match=r"already exists"):
        await client.call("ImageServer.MakeDirectory", {"DirectoryName": "a", "MakeAll": False})

    async with client.open_call("ImageServer.ListImages") as call:
        assert await call.receive_line() == ""  # no images: the empty line at once

    names = [hashlib.sha512(data).hexdigest() for data in OBJECTS]
    missing = "ab" * 64
    reply = await client.call("ObjectServer.CheckObjects", {"Hashes": [*names, missing]})
    assert reply["ObjectSizes"] == [*(len(data) for data in OBJECTS), 0]

    async with client.open_call("ObjectServer.GetObjects") as call:
        await call.send({"Exclusive": False, "Hashes": names})
        reply = await call.receive()
        assert reply["ResponseString"] == ""
        contents = [await call.receive_raw(size) for size in reply["ObjectSizes"]]
    assert contents == OBJECTS

    async with client.open_call("ObjectServer.GetObjects") as call:
        await call.send({"Exclusive": False, "Hashes": [missing]})
        reply = await call.receive()
    assert re.match(r"unknown object: (ab)+$", reply["ResponseString"])
    await client.ping()  # still in step after all of it
    await client.close()
