"""The SRPC client over real TLS against our server on 127.0.0.1: a client
certificate, the server verified against the CA (chain and name), and a call
that mixes coder messages with raw bytes, as a remote image store needs."""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import maybeDeferred
from twisted.web.resource import Resource
from twisted.web.server import Site

from imaginator.srpc.client import connect
from imaginator.srpc.framing import SrpcConnectionError
from imaginator.srpc.identity import Authoriser
from imaginator.srpc.server import Call, MethodRegistry
from imaginator.srpc.site import SrpcSite
from imaginator.srpc.tls import make_server_tls_options
from imaginator.tools.certs import make_ca, make_server_cert, make_user_cert

HOST = "127.0.0.1"
OBJECTS = {hashlib.sha512(data).hexdigest(): data for data in (b"one\n", bytes(range(256)) * 300)}


async def get_objects(call: Call) -> None:
    """``ObjectServer.GetObjects`` as the Go objectserver answers it (reference §5.3)."""
    request = await call.read_json()
    hashes = request["Hashes"]
    call.send_json({"ResponseString": "", "ObjectSizes": [len(OBJECTS[h]) for h in hashes]})
    for name in hashes:
        call.write(OBJECTS[name])


async def whoami(call: Call) -> dict[str, Any]:
    return {"Username": call.auth.username}


@dataclass
class Files:
    directory: Path

    def write(self, name: str, data: bytes) -> Path:
        path = self.directory / name
        path.write_bytes(data)
        return path


@dataclass
class Setup:
    port: int
    ca_file: Path
    cert: tuple[Path, Path]
    other_ca_file: Path


async def start_server(tmp_path: Path, server_names: list[str]) -> tuple[Any, Setup]:
    files = Files(tmp_path)
    ca_cert, ca_key = make_ca("test CA")
    server_cert, server_key = make_server_cert(ca_cert, ca_key, server_names)
    user_cert, user_key = make_user_cert(ca_cert, ca_key, "store", methods=["ObjectServer.*"])
    other_ca, _other_key = make_ca("another CA")
    registry = MethodRegistry()
    registry.register("ObjectServer.GetObjects", get_objects, kind="stream")
    registry.register("Test.WhoAmI", whoami)
    options = make_server_tls_options(
        files.write("CA.pem", ca_cert),
        files.write("server.cert", server_cert),
        files.write("server.key", server_key),
    )
    authoriser = Authoriser(frozenset(), frozenset(), frozenset({"Test.WhoAmI"}))
    site = SrpcSite(Site(Resource()), registry, authoriser, options, reactor=reactor)
    port = reactor.listenTCP(0, site, interface=HOST)
    setup = Setup(
        port=port.getHost().port,
        ca_file=tmp_path / "CA.pem",
        cert=(files.write("store.cert", user_cert), files.write("store.key", user_key)),
        other_ca_file=files.write("other-CA.pem", other_ca),
    )
    return (port, site), setup


@pytest_twisted.async_yield_fixture
async def named_server(tmp_path: Path) -> AsyncIterator[Setup]:
    """A server whose certificate names 127.0.0.1 and localhost."""
    (port, site), setup = await start_server(tmp_path, ["localhost", HOST])
    try:
        yield setup
    finally:
        await maybeDeferred(port.stopListening)
        site.abort_connections()


@pytest_twisted.async_yield_fixture
async def misnamed_server(tmp_path: Path) -> AsyncIterator[Setup]:
    """A server whose certificate, from the right CA, names another host."""
    (port, site), setup = await start_server(tmp_path, ["elsewhere.example"])
    try:
        yield setup
    finally:
        await maybeDeferred(port.stopListening)
        site.abort_connections()


async def dial(setup: Setup, ca_file: Path | None, **kwargs: Any) -> Any:
    cert_file, key_file = setup.cert
    return await connect(
        HOST,
        setup.port,
        reactor=reactor,
        cert_file=cert_file,
        key_file=key_file,
        ca_file=ca_file,
        **kwargs,
    )


@pytest_twisted.ensureDeferred
async def test_verified_server_and_a_call_with_raw_bytes(named_server: Setup) -> None:
    client = await dial(named_server, named_server.ca_file)
    assert await client.call("Test.WhoAmI", {}) == {"Username": "store"}
    names = list(OBJECTS)
    async with client.open_call("ObjectServer.GetObjects") as call:
        await call.send({"Exclusive": False, "Hashes": names})
        reply = await call.receive()
        contents = [await call.receive_raw(size) for size in reply["ObjectSizes"]]
    assert contents == [OBJECTS[name] for name in names]
    await client.ping()
    await client.close()


@pytest_twisted.ensureDeferred
async def test_server_of_another_ca_is_refused(named_server: Setup) -> None:
    with pytest.raises(SrpcConnectionError, match=r"TLS error: .*certificate verify failed"):
        client = await dial(named_server, named_server.other_ca_file)
        await client.ping()


@pytest_twisted.ensureDeferred
async def test_server_certificate_for_another_host_is_refused(misnamed_server: Setup) -> None:
    refusal = "TLS error: the server's certificate is not for 127.0.0.1"
    with pytest.raises(SrpcConnectionError, match=f"^{re.escape(refusal)}$"):
        client = await dial(misnamed_server, misnamed_server.ca_file)
        await client.ping()
    # Checking only the chain (verify_hostname=False) accepts it.
    client = await dial(misnamed_server, misnamed_server.ca_file, verify_hostname=False)
    await client.ping()
    await client.close()


@pytest_twisted.ensureDeferred
async def test_without_a_ca_the_server_is_not_verified_as_in_go(misnamed_server: Setup) -> None:
    client = await dial(misnamed_server, None)
    assert await client.call("Test.WhoAmI", {}) == {"Username": "store"}
    await client.close()
