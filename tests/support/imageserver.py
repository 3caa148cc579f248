"""The unmodified Go imageserver (``../shared/peers/imageserver``) as a test peer.

:class:`GoImageserver` runs it on a loopback port with directories of its own
under ``/var/tmp`` (readable by the unprivileged user it runs as: it refuses
to run as root, so as root it runs as ``nobody``), a CA made for the test, its
own certificate for ``localhost`` and ``127.0.0.1``, and client certificates:
``imaginator.cert`` (the daemon: the imageserver and objectserver methods, as
``imaginator-certs init -methods`` grants them) and ``reader.cert`` (no method
powers). It can be killed and started again on the same port and data.

:func:`peers` finds the Go programs; without them a test skips with the
reason, or fails when ``IMAGINATOR_REQUIRE_PEERS=1``.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import tempfile
from pathlib import Path

import pytest
from twisted.internet import defer, protocol
from twisted.internet import reactor as global_reactor

from imaginator.tools.certs import IMAGESERVER_METHODS, make_ca, make_server_cert, make_user_cert

REPO = Path(__file__).resolve().parents[2]
PEERS = REPO.parent / "shared" / "peers"
HOST = "127.0.0.1"
STARTUP_TIMEOUT = 60.0


def peers(*programs: str) -> Path:
    """The peers directory, if it has ``programs``; else skip (or fail under
    ``IMAGINATOR_REQUIRE_PEERS=1``) with the reason."""
    for name in programs or ("imageserver",):
        program = PEERS / name
        if not os.access(program, os.X_OK):
            reason = f"the Go peers are absent: no {program}"
            if os.environ.get("IMAGINATOR_REQUIRE_PEERS") == "1":
                pytest.fail(reason)
            pytest.skip(reason)
    return PEERS


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


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


class GoImageserver:
    """One Go imageserver; ``await start()``, ``await kill()``, ``cleanup()``."""

    def __init__(self, reactor=global_reactor) -> None:
        self.program = peers("imageserver") / "imageserver"
        self.reactor = reactor
        self.root = Path(tempfile.mkdtemp(prefix="imaginator-imageserver-", dir="/var/tmp"))
        self.root.chmod(0o755)
        self.port = free_port()
        self._process = None
        self._output: _Output | None = None
        self._make_files()

    # -- files

    @property
    def ca_file(self) -> Path:
        return self.root / "CA.pem"

    @property
    def objects_dir(self) -> Path:
        return self.root / "objects"

    @property
    def images_dir(self) -> Path:
        return self.root / "images"

    def client_cert(self, name: str = "imaginator") -> tuple[Path, Path]:
        return self.root / f"{name}.cert", self.root / f"{name}.key"

    def _make_files(self) -> None:
        ca_cert, ca_key = make_ca("test CA")
        server_cert, server_key = make_server_cert(ca_cert, ca_key, ["localhost", HOST])
        daemon_cert, daemon_key = make_server_cert(
            ca_cert, ca_key, ["imaginator-test"], methods=IMAGESERVER_METHODS
        )
        reader_cert, reader_key = make_user_cert(ca_cert, ca_key, "reader")
        files = {
            "CA.pem": ca_cert,
            "CA.key": ca_key,
            "imageserver.cert": server_cert,
            "imageserver.key": server_key,
            "imaginator.cert": daemon_cert,
            "imaginator.key": daemon_key,
            "reader.cert": reader_cert,
            "reader.key": reader_key,
        }
        for name, data in files.items():
            (self.root / name).write_bytes(data)
            (self.root / name).chmod(0o644 if name.endswith((".pem", ".cert")) else 0o600)
        for sub in ("images", "objects", "log"):
            (self.root / sub).mkdir()

    def object_count(self) -> int:
        """Objects the objectserver stores (files under its directory)."""
        return sum(1 for path in self.objects_dir.rglob("*") if path.is_file())

    # -- the process

    def _argv(self) -> list[str]:
        root = self.root
        argv = [
            str(self.program),
            f"-portNum={self.port}",
            f"-imageDir={root / 'images'}",
            f"-objectDir={root / 'objects'}",
            f"-logDir={root / 'log'}",
            f"-CAfile={root / 'CA.pem'}",
            f"-certFile={root / 'imageserver.cert'}",
            f"-keyFile={root / 'imageserver.key'}",
            "-alsoLogToStderr",
        ]
        if os.geteuid() != 0:
            return argv
        nobody = pwd.getpwnam("nobody")
        owned = [root / "imageserver.key"]
        for sub in ("images", "objects", "log"):
            owned += [root / sub, *(root / sub).rglob("*")]
        for path in owned:
            os.chown(path, nobody.pw_uid, nobody.pw_gid)
        return [
            "setpriv",
            f"--reuid={nobody.pw_uid}",
            f"--regid={nobody.pw_gid}",
            "--clear-groups",
            "--pdeathsig=TERM",
            "--",
            *argv,
        ]

    async def start(self) -> None:
        argv = self._argv()
        self._output = _Output()
        executable = shutil.which(argv[0]) or argv[0]
        environment = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(self.root)}
        self._process = self.reactor.spawnProcess(
            self._output, executable, argv, env=environment, path=str(self.root)
        )
        await self._output.ready.addTimeout(STARTUP_TIMEOUT, self.reactor)

    @property
    def output(self) -> str:
        return self._output.text if self._output is not None else ""

    async def stop(self, signal: str = "TERM") -> None:
        if self._output is not None and not self._output.ended.called:
            self._process.signalProcess(signal)
            await self._output.ended.addTimeout(STARTUP_TIMEOUT, self.reactor)

    async def kill(self) -> None:
        await self.stop("KILL")

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
