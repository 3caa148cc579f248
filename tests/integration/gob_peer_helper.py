"""Run inside ``unshare --net`` by test_gob_imageserver_peer.py: our GOB against
the real Go imageserver, over plain SRPC on loopback.

It starts the imageserver as ``nobody`` (a certificate, no CA: insecure SRPC),
then makes calls whose bytes our ``Encoder`` writes and whose answers our
``Decoder`` reads, and checks what the server did. Exit status 0 means every
check held; anything else prints what failed.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from imaginator.goformats.gob import Decoder, Encoder, TypeIds
from imaginator.image.model import (
    Annotation,
    DirectoryInode,
    FileSystem,
    Image,
    Package,
    RegularInode,
    SpecialInode,
    SymlinkInode,
)
from imaginator.image.triggers import Trigger
from imaginator.store import imageserver_messages as m


class Client:
    """A minimal synchronous SRPC client (GOB coder), enough for the checks."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.sendall(b"CONNECT /_goSRPC_/ HTTP/1.0\n\n")
        self.buffer = b""
        connected = b"HTTP/1.0 200 Connected to Go SRPC\n\n"
        assert self._exact(len(connected)) == connected
        self.ids = TypeIds()

    def _more(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("imageserver closed the connection")
        self.buffer += data

    def _exact(self, count: int) -> bytes:
        while len(self.buffer) < count:
            self._more()
        data, self.buffer = self.buffer[:count], self.buffer[count:]
        return data

    def line(self) -> str:
        while b"\n" not in self.buffer:
            self._more()
        text, _, self.buffer = self.buffer.partition(b"\n")
        return text.decode()

    def read(self, decoder: Decoder, kind):
        decoder.push(self.buffer)
        self.buffer = b""
        while (value := decoder.next(kind.SCHEMA)) is None:
            self._more()
            decoder.push(self.buffer)
            self.buffer = b""
        self.buffer = decoder.take_buffered()
        return kind.from_gob(value)

    def call(self, method: str, request, reply_kind):
        self.sock.sendall(method.encode() + b"\n")
        assert self.line() == "", method
        self.sock.sendall(Encoder(self.ids).encode(request.SCHEMA, request.to_gob()))
        status = self.line()
        assert status == "", f"{method}: {status}"
        return self.read(Decoder(), reply_kind)

    def add_objects(self, objects: list[bytes]) -> list[m.AddObjectResponse]:
        self.sock.sendall(b"ObjectServer.AddObjects\n")
        assert self.line() == ""
        encoder = Encoder(self.ids)
        for data in objects:
            request = m.AddObjectRequest(len(data), hashlib.sha512(data).digest())
            self.sock.sendall(encoder.encode(request.SCHEMA, request.to_gob()) + data)
        end = m.AddObjectRequest(0)
        self.sock.sendall(encoder.encode(end.SCHEMA, end.to_gob()))
        decoder = Decoder()
        return [self.read(decoder, m.AddObjectResponse) for _ in objects]

    def get_objects(self, hashes: list[bytes]) -> list[bytes]:
        self.sock.sendall(b"ObjectServer.GetObjects\n")
        assert self.line() == ""
        request = m.GetObjectsRequest(hashes)
        self.sock.sendall(Encoder(self.ids).encode(request.SCHEMA, request.to_gob()))
        reply = self.read(Decoder(), m.GetObjectsResponse)
        assert reply.response_string == "", reply.response_string
        return [self._exact(size) for size in reply.object_sizes]


def start_imageserver(peers: Path, root: Path) -> tuple[subprocess.Popen, int]:
    nobody = pwd.getpwnam("nobody")
    for sub in ("images", "objects"):
        (root / sub).mkdir()
        os.chown(root / sub, nobody.pw_uid, nobody.pw_gid)
    certs = [sys.executable, "-m", "imaginator.tools.certs", "init"]
    files = [f"-caFile={root}/ca.pem", f"-caKeyFile={root}/ca.key"]
    files += [f"-certFile={root}/cert.pem", f"-keyFile={root}/key.pem"]
    subprocess.run(
        [*certs, *files],
        check=True,
        capture_output=True,
    )
    (root / "key.pem").chmod(0o644)  # a throw-away key nobody must read
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    argv = [
        "setpriv",
        f"--reuid={nobody.pw_uid}",
        f"--regid={nobody.pw_gid}",
        "--clear-groups",
        "--pdeathsig=TERM",
        str(peers / "imageserver"),
        f"-portNum={port}",
        f"-imageDir={root / 'images'}",
        f"-objectDir={root / 'objects'}",
        "-logDir=",
        f"-CAfile={root / 'no-ca.pem'}",
        f"-certFile={root / 'cert.pem'}",
        f"-keyFile={root / 'key.pem'}",
        "-permitInsecureMode",
    ]
    server = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return server, port
        if server.poll() is not None:
            raise RuntimeError(f"imageserver exited with {server.returncode}")
        time.sleep(0.1)
    raise RuntimeError("imageserver did not start")


def image(data: bytes, log: bytes) -> Image:
    content = hashlib.sha512(data).digest()
    root = DirectoryInode([("bin", 2), ("dev", 5), ("file", 3), ("link", 4)], 0o40755)
    table = {
        2: DirectoryInode([], 0o40700, 1, 2),
        3: RegularInode(0o100644, 0, 0, 1_700_000_000, 5, len(data), content),
        4: SymlinkInode(0, 0, "file"),
        5: SpecialInode(0o20666, 0, 0, 1_700_000_000, 0, 0x103),
    }
    fs = FileSystem(table, root)
    fs.recompute_totals()
    return Image(
        build_branch="main",
        created_for="python",
        filter=("/tmp/.*",),
        file_system=fs,
        triggers=(Trigger(("/file",), "svc", do_reload=True),),
        build_log=Annotation(object=hashlib.sha512(log).digest()),
        expires_at=(int(time.time()) + 3600) * 10**9,
        packages=(Package("pkg", 42, "1.0"),),
        tags={"Role": "test"},
    )


def main() -> int:
    peers = Path(sys.argv[1])
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    root = Path(tempfile.mkdtemp(prefix="gob-peer-", dir="/var/tmp"))
    root.chmod(0o755)
    server = None
    try:
        server, port = start_imageserver(peers, root)
        client = Client(port)
        data, log = b"content made by python\n", b"the build log\n"
        added = client.add_objects([data, log])
        assert [r.added for r in added] == [True, True], added
        assert added[0].hash == hashlib.sha512(data).digest()
        sizes = client.call(
            "ObjectServer.CheckObjects",
            m.CheckObjectsRequest([added[0].hash, bytes(64)]),
            m.CheckObjectsResponse,
        )
        assert sizes.object_sizes == [len(data), 0], sizes
        client.call(
            "ImageServer.MakeDirectory",
            m.MakeDirectoryRequest("py/x", True),
            m.MakeDirectoryResponse,
        )
        ours = image(data, log)
        client.call("ImageServer.AddImage", m.AddImageRequest("py/x/1", ours), m.AddImageResponse)
        latest = client.call(
            "ImageServer.FindLatestImage",
            m.FindLatestImageRequest("py/x"),
            m.FindLatestImageResponse,
        )
        assert latest == m.FindLatestImageResponse("py/x/1"), latest
        got = client.call("ImageServer.GetImage", m.GetImageRequest("py/x/1"), m.GetImageResponse)
        stored = got.image
        assert stored.created_on > 0
        ours.created_on, ours.created_by = stored.created_on, stored.created_by
        # The server keeps times to the nanosecond and our zone offset.
        assert stored == ours, (stored, ours)
        later = ours.expires_at + 3600 * 10**9
        change = client.call(
            "ImageServer.ChangeImageExpiration",
            m.ChangeImageExpirationRequest(later, "py/x/1"),
            m.ChangeImageExpirationResponse,
        )
        assert change.error == "", change
        expiry = client.call(
            "ImageServer.GetImageExpiration",
            m.GetImageExpirationRequest("py/x/1"),
            m.GetImageExpirationResponse,
        )
        assert expiry.expires_at == later, expiry
        assert client.get_objects([added[1].hash, added[0].hash]) == [log, data]
        print("all checks held")
        return 0
    finally:
        if server is not None:
            server.terminate()
            server.wait(30)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
