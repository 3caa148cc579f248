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
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor

from imaginator.srpc.client import SrpcClient, connect
from imaginator.srpc.framing import SrpcError
from tests.support.imageserver import HOST, GoImageserver

OBJECTS = [b"an object\n", bytes(range(256)) * 512]
USER = "remote-store"


def _store_object(objects: Path, data: bytes) -> str:
    """Put ``data`` where the objectserver keeps it (reference §4.3)."""
    name = hashlib.sha512(data).hexdigest()
    path = objects / name[:2] / name[2:4] / name[4:]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return name


@pytest_twisted.async_yield_fixture
async def imageserver(go_imageserver_peer) -> AsyncIterator[GoImageserver]:
    """The Go imageserver with :data:`OBJECTS` stored before it starts."""
    server = GoImageserver()
    try:
        for data in OBJECTS:
            _store_object(server.objects_dir, data)
        server.add_client_cert(USER, methods=("ImageServer.*", "ObjectServer.*"))
        await server.start()
        yield server
    finally:
        await server.stop()
        server.cleanup()


async def dial(server: GoImageserver) -> SrpcClient:
    cert_file, key_file = server.client_cert(USER)
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
async def test_calls_a_remote_store_makes(imageserver: GoImageserver) -> None:
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
