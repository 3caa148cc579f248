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

import contextlib
import os
import pwd
import shutil
import signal as signal_module
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


class GoProcess(protocol.ProcessProtocol):
    """A Go program started by a test: its output collected, lines waited for."""

    def __init__(self, name: str, reactor=global_reactor) -> None:
        self.name = name
        self.reactor = reactor
        self.text = ""
        self.ended: defer.Deferred[None] = defer.Deferred()
        self._waiting: list[tuple[str, defer.Deferred[None]]] = []
        self.process = None

    def start(self, argv: list[str], env: dict[str, str], cwd: Path) -> GoProcess:
        executable = shutil.which(argv[0]) or argv[0]
        self.process = self.reactor.spawnProcess(self, executable, argv, env=env, path=str(cwd))
        return self

    def childDataReceived(self, fd: int, data: bytes) -> None:
        self.text += data.decode("utf-8", "replace")
        for item in list(self._waiting):
            if item[0] in self.text:
                self._waiting.remove(item)
                item[1].callback(None)

    def processEnded(self, reason: object) -> None:
        waiting, self._waiting = self._waiting, []
        for text, waiter in waiting:
            waiter.errback(AssertionError(f"{self.name} ended before {text!r}:\n{self.text}"))
        self.ended.callback(None)

    def wait_for(self, text: str, timeout: float = STARTUP_TIMEOUT) -> defer.Deferred[None]:
        """Fires once ``text`` is in the output (fails if the program ends first)."""
        if text in self.text:
            return defer.succeed(None)
        if self.ended.called:
            return defer.fail(AssertionError(f"{self.name} has ended:\n{self.text}"))
        waiter: defer.Deferred[None] = defer.Deferred()
        self._waiting.append((text, waiter))
        return waiter.addTimeout(timeout, self.reactor)

    async def stop(self, signal: str = "TERM") -> None:
        """Signal the program (and its children: ``unshare`` ignores TERM
        while it waits for the program it started) and wait for its end."""
        if self.process is not None and not self.ended.called:
            pid = self.process.pid
            try:
                children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            except OSError:
                children = []
            for child in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(child), getattr(signal_module, f"SIG{signal}"))
            self.process.signalProcess(signal)
            await self.ended.addTimeout(STARTUP_TIMEOUT, self.reactor)


class GoImageserver:
    """One Go imageserver; ``await start()``, ``await kill()``, ``cleanup()``."""

    def __init__(self, reactor=global_reactor) -> None:
        self.program = peers("imageserver") / "imageserver"
        self.reactor = reactor
        self.root = Path(tempfile.mkdtemp(prefix="imaginator-imageserver-", dir="/var/tmp"))
        self.root.chmod(0o755)
        self.port = free_port()
        self._process: GoProcess | None = None
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

    def cert_directory(self, name: str = "imaginator") -> Path:
        """A directory holding only ``<name>.cert`` and ``.key`` (a Go tool's
        ``-certDirectory``)."""
        directory = self.root / f"certs-{name}"
        if not directory.exists():
            directory.mkdir(mode=0o700)
            for path in self.client_cert(name):
                shutil.copy(path, directory / path.name)
        return directory

    def add_client_cert(self, name: str, *, methods: tuple[str, ...] = ()) -> tuple[Path, Path]:
        """One more client certificate of the test's CA."""
        ca_cert, ca_key = self.ca_file.read_bytes(), (self.root / "CA.key").read_bytes()
        cert, key = make_user_cert(ca_cert, ca_key, name, methods=methods)
        (self.root / f"{name}.cert").write_bytes(cert)
        (self.root / f"{name}.key").write_bytes(key)
        (self.root / f"{name}.key").chmod(0o600)
        return self.client_cert(name)

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
        environment = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(self.root)}
        self._process = GoProcess("imageserver", self.reactor)
        self._process.start(self._argv(), environment, self.root)
        await self._process.wait_for("Service ready")

    @property
    def output(self) -> str:
        return self._process.text if self._process is not None else ""

    async def stop(self, signal: str = "TERM") -> None:
        if self._process is not None:
            await self._process.stop(signal)

    async def kill(self) -> None:
        await self.stop("KILL")

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
