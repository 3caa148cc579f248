"""``builder-tool``'s remote commands, as a subprocess, against an in-process server.

The server is a bare :class:`SrpcSite` (no pages) with the real
:class:`ImaginatorService` over a harness builder on the real reactor, so
``build-image`` runs a real ``bootstrap/bb`` build. Certificates come from
``imaginator.tools.certs``.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.utils import getProcessOutputAndValue

from imaginator.rpc.service import PUBLIC_METHODS, ExpirationLimits, ImaginatorService
from imaginator.srpc.identity import Authoriser
from imaginator.srpc.server import MethodRegistry
from imaginator.srpc.site import SrpcSite
from imaginator.srpc.tls import make_server_tls_options
from imaginator.tools.certs import make_ca, make_server_cert, make_user_cert
from tests.support.configs import clean_env
from tests.support.harness import make_harness

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="builds need root")

BB = "bootstrap/bb"
HOST = "127.0.0.1"


class Server:
    """The Imaginator service on an ephemeral port of 127.0.0.1."""

    def __init__(self, harness, pki: Path | None, *, permit_insecure: bool = False) -> None:
        registry = MethodRegistry()
        ImaginatorService(
            builder=harness.builder,
            auto=None,
            deps=None,
            clock=reactor,
            limits=ExpirationLimits(),
        ).register(registry)
        tls = None
        if pki is not None:
            tls = make_server_tls_options(pki / "CA.pem", pki / "server.cert", pki / "server.key")
        site = SrpcSite(
            Factory.forProtocol(Protocol),
            registry,
            Authoriser(frozenset(), frozenset(), PUBLIC_METHODS),
            tls,
            reactor=reactor,
            permit_insecure=permit_insecure,
        )
        self.listening = reactor.listenTCP(0, site, interface=HOST)
        self.port = self.listening.getHost().port

    async def stop(self) -> None:
        await self.listening.stopListening()


def make_pki(root: Path) -> tuple[bytes, bytes]:
    root.mkdir()
    ca = make_ca("test CA")
    (root / "CA.pem").write_bytes(ca[0])
    cert, key = make_server_cert(*ca, ["localhost", HOST])
    (root / "server.cert").write_bytes(cert)
    (root / "server.key").write_bytes(key)
    return ca


def user_dir(root: Path, ca, name: str, **kwargs) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    cert, key = make_user_cert(*ca, name, **kwargs)
    (root / f"{name}.cert").write_bytes(cert)
    (root / f"{name}.key").write_bytes(key)
    return root


async def tool(port: int, cert_dir: Path, *args: str) -> tuple[int, str, str]:
    env = clean_env()
    env["HOME"] = str(cert_dir.parent)
    out, err, code = await getProcessOutputAndValue(
        sys.executable,
        [
            "-m",
            "imaginator.tools.builder_tool",
            f"-imaginatorHostname={HOST}",
            f"-imaginatorPortNum={port}",
            f"-certDirectory={cert_dir}",
            *args,
        ],
        env=env,
        reactor=reactor,
    )
    return code, out.decode(), err.decode()


@pytest_twisted.ensureDeferred
async def test_remote_commands_over_tls(tmp_path):
    ca = make_pki(tmp_path / "pki")
    ops = user_dir(tmp_path / "ops-ssl", ca, "ops", methods=["Imaginator.*"])
    user_dir(ops, ca, "zz-plain")  # fewer methods: never chosen over ops
    nobody = user_dir(tmp_path / "nobody-ssl", ca, "nobody")
    harness = await make_harness(tmp_path / "h")
    server = Server(harness, tmp_path / "pki")
    try:
        code, out, err = await tool(server.port, ops, "build-image", BB)
        assert code == 0, err
        name = out.removesuffix("\n")
        assert out.endswith("\n") and name.startswith(f"{BB}/")
        assert err.startswith(f"Building: {BB} for: ops\n")
        assert f"Uploaded {name} in " in err
        assert harness.store.get_image(name).created_for == "ops"

        assert await tool(server.port, ops, "-disableFor=30m", "disable-build-requests") == (
            0,
            "",
            "",
        )
        code, out, err = await tool(server.port, ops, "build-image", BB)
        assert (code, out) == (1, "")
        # A refusal streams no log, so there is no end-of-log banner.
        assert re.fullmatch(r"error building image: builds disabled until .+ \(for .+\)\n", err), (
            err
        )
        assert await tool(server.port, ops, "enable-build-requests") == (0, "", "")

        code, out, err = await tool(server.port, ops, "get-dependencies")
        assert (code, err) == (0, "")
        assert json.loads(out)["StreamToSource"] is None
        assert out.startswith('{\n    "FetchLog": null,\n')
        assert await tool(server.port, ops, "disable-auto-builds") == (
            1,
            "",
            "error disabling auto builds: auto builds not configured\n",
        )
        assert await tool(server.port, ops, "replace-idle-slaves") == (
            1,
            "",
            "error replacing idle slaves: no SlaveDriver configured\n",
        )

        assert await tool(server.port, nobody, "disable-build-requests") == (
            1,
            "",
            "error disabling build requests: access to method denied\n",
        )
        code, _out, err = await tool(server.port, nobody, "build-image", BB)
        assert code == 1
        assert err == f"error building image: no permission to build: {BB}\n"
        none = tmp_path / "no-ssl"
        code, _out, err = await tool(server.port, none, "get-dependencies")
        assert code == 1
        assert err == f"Error dialing: {HOST}:{server.port}: missing certificate\n"
    finally:
        await server.stop()
        harness.stop()


@pytest_twisted.ensureDeferred
async def test_plain_connections_and_dial_failure(tmp_path):
    ca = make_ca("test CA")
    harness = await make_harness(tmp_path / "h")
    server = Server(harness, None, permit_insecure=True)
    try:
        # No certificates: the plain path. With one: the TLS path is absent (404), so plain.
        for cert_dir in (tmp_path / "none", user_dir(tmp_path / "ssl", ca, "someone")):
            code, out, err = await tool(server.port, cert_dir, "get-digraph")
            assert (code, out, err) == (0, "", "")
        code, out, err = await tool(
            server.port, tmp_path / "none", "-expiresIn=20m", "build-image", BB
        )
        assert code == 0, err
        assert out.startswith(f"{BB}/")
        image = harness.store.get_image(out.removesuffix("\n"))
        assert image.expires_at and image.created_for == ""
    finally:
        await server.stop()
        harness.stop()
    code, out, err = await tool(server.port, tmp_path / "none", "start-auto-builds")
    assert (code, out) == (1, "")
    assert err == (
        f"Error dialing: {HOST}:{server.port}: dial tcp {HOST}:{server.port}: "
        "connect: connection refused\n"
    )
