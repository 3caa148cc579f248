"""The daemons ``compare_go.py`` runs: the Go imaginator with its imageserver, and ours.

A *stack* is one daemon (plus the imageserver it stores into, if any) with all
its state in one directory, started fresh for every round so no round inherits
another's caches. Every process is started here, in its own process group,
with a parent-death signal, and is stopped by its process id; ``leftovers``
finds what a crash could leave behind (processes working in the directory,
mounts under it) so the caller can report and remove them.

- The Go imageserver refuses to run as root: it runs as ``nobody`` (setpriv)
  with its own image and object directories and certificate.
- The Go imaginator runs as root in its own mount namespace (``unshare``):
  at start it makes every mount of its namespace private, which in the
  host's namespace would change mount propagation for everything else on the
  machine. Its mounts die with the namespace.
- Ours runs as ``python -m imaginator.cli`` from this repository, as the demo
  runs it (embedded store, or an imageserver of its own with
  ``--ours-backend=imageserver``).

The daemons listen on every interface (neither the Go programs nor ours have a
flag to choose one); only 127.0.0.1 is ever dialled, on random ports, and every
RPC needs a client certificate of the benchmark's own CA.
"""

from __future__ import annotations

import os
import pwd
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from compare_setup import (
    GO_IDENTITY,
    IMAGESERVER_IDENTITY,
    OURS_IDENTITY,
    REPO,
    Workload,
)

HOST = "127.0.0.1"
STARTUP_SECONDS = 60.0
STOP_SECONDS = 60.0
BASE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C"}


class StackError(Exception):
    """A daemon did not start, died, or a request failed; the message says which."""


def free_port() -> int:
    """A TCP port nothing listens on now (the daemon binds it a moment later)."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def _port_open(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex((HOST, port)) == 0


class Child:
    """One started process whose output goes to a file."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        log: Path,
        *,
        env: dict[str, str],
        cwd: Path,
        port: int | None = None,
    ) -> None:
        self.name = name
        self.log = log
        self.port = port
        self._output = open(log, "wb")  # closed in stop()
        self.process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._output,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def text(self, offset: int = 0) -> str:
        """The output from byte ``offset`` on."""
        with open(self.log, "rb") as handle:
            handle.seek(offset)
            return handle.read().decode("utf-8", errors="replace")

    def size(self) -> int:
        return self.log.stat().st_size

    def tail(self, lines: int = 8) -> str:
        return "\n".join(self.text().splitlines()[-lines:])

    def wait_for(self, text: str, port: int | None, deadline: float) -> None:
        """Until ``text`` is in the output and ``port`` accepts connections."""
        while time.monotonic() < deadline:
            if not self.alive():
                raise StackError(
                    f"{self.name} exited with status {self.process.returncode} at start-up:\n"
                    f"{self.tail()}"
                )
            if text in self.text() and (port is None or _port_open(port)):
                return
            time.sleep(0.2)
        raise StackError(f"{self.name} did not start within {STARTUP_SECONDS:.0f}s:\n{self.tail()}")

    def stop(self) -> None:
        """SIGTERM to its process group, SIGKILL after ``STOP_SECONDS``; always reaped.

        The group is signalled only while its leader is alive and not yet reaped,
        so its id cannot belong to anyone else; what outlives the leader is found
        by ``stray_processes``.
        """
        try:
            if self.alive():
                _signal_group(self.pid, signal.SIGTERM)
                try:
                    self.process.wait(STOP_SECONDS)
                except subprocess.TimeoutExpired:
                    _signal_group(self.pid, signal.SIGKILL)
                    self.process.wait(10)
        finally:
            self._output.close()


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(word) for word in text.split()]


def peak_rss_mib(pid: int) -> float | None:
    """The process's peak resident set (``VmHWM``) in MiB; ``None`` once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def count_objects(directory: Path) -> int:
    """Regular files under an object directory (the embedded store's or an imageserver's)."""
    total = 0
    for _base, _dirs, files in os.walk(directory):
        total += len(files)
    return total


@dataclass
class Stack:
    """A running daemon, the store it writes to, and how to reach it."""

    name: str
    port: int
    daemon: Child
    #: The process whose RSS is "the daemon" (under ``unshare`` it is a child).
    daemon_pid: int
    objects: Path
    children: list[Child] = field(default_factory=list)

    def peak_rss(self) -> tuple[float | None, float | None]:
        """(daemon, daemon + imageserver) peak RSS in MiB."""
        daemon = peak_rss_mib(self.daemon_pid)
        total = daemon
        for child in self.children:
            if child is not self.daemon and total is not None:
                store = peak_rss_mib(child.pid)
                total = None if store is None else total + store
        return daemon, total

    def stop(self) -> None:
        """Stop the daemon first (it may be writing to the store), then the rest."""
        errors = []
        for child in [self.daemon, *[c for c in reversed(self.children) if c is not self.daemon]]:
            try:
                child.stop()
            except Exception as exc:  # keep stopping the others
                errors.append(f"{child.name}: {exc}")
        if errors:
            raise StackError("; ".join(errors))


def _pdeathsig(argv: list[str]) -> list[str]:
    """``argv`` dying with us (SIGTERM when this process goes away, however it ends)."""
    return ["setpriv", "--pdeathsig", "TERM", "--", *argv]


def _start_imageserver(root: Path, pki: Path, peers: Path, trusted: str, deadline: float) -> Child:
    """A Go imageserver as ``nobody`` with its own directories and key, on a loopback port."""
    nobody = pwd.getpwnam("nobody")
    directory = root / "imageserver"
    for sub in ("images", "objects", "log"):
        (directory / sub).mkdir(parents=True, exist_ok=True)
    key = directory / "key.pem"
    key.write_bytes((pki / f"{IMAGESERVER_IDENTITY}.key").read_bytes())
    key.chmod(0o600)
    for path in (directory, *directory.iterdir()):
        os.chown(path, nobody.pw_uid, nobody.pw_gid)
    port = free_port()
    argv = [
        "setpriv",
        f"--reuid={nobody.pw_uid}",
        f"--regid={nobody.pw_gid}",
        "--clear-groups",
        "--pdeathsig",
        "TERM",
        "--",
        str(peers / "imageserver"),
        f"-portNum={port}",
        f"-imageDir={directory / 'images'}",
        f"-objectDir={directory / 'objects'}",
        f"-logDir={directory / 'log'}",
        f"-CAfile={pki / 'CA.pem'}",
        f"-certFile={pki / f'{IMAGESERVER_IDENTITY}.cert'}",
        f"-keyFile={key}",
        f"-srpcTrustedUsers={trusted}",
        "-alsoLogToStderr",
        "-logSubseconds",
    ]
    child = Child(
        "Go imageserver", argv, root / "imageserver.log", env=BASE_ENV, cwd=directory, port=port
    )
    child.wait_for("Service ready", port, deadline)
    return child


def start_go(root: Path, pki: Path, peers: Path, workload: Workload) -> Stack:
    """The Go imageserver, then the Go imaginator storing into it."""
    deadline = time.monotonic() + STARTUP_SECONDS
    root.mkdir(parents=True)
    store = _start_imageserver(root, pki, peers, GO_IDENTITY, deadline)
    children = [store]
    try:
        state = root / "go"
        for sub in ("state", "log", "builds", "tmp"):
            (state / sub).mkdir(parents=True)
        port = free_port()
        argv = _pdeathsig(
            [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "--kill-child=TERM",
                str(peers / "imaginator"),
                f"-portNum={port}",
                f"-stateDir={state / 'state'}",
                f"-logDir={state / 'log'}",
                f"-buildLogDir={state / 'builds'}",
                f"-configurationUrl={workload.go_conf.as_uri()}",
                f"-imageServerHostname={HOST}",
                f"-imageServerPortNum={store.port}",
                f"-CAfile={pki / 'CA.pem'}",
                f"-certFile={pki / f'{GO_IDENTITY}.cert'}",
                f"-keyFile={pki / f'{GO_IDENTITY}.key'}",
                "-imageRebuildInterval=0",
                "-alsoLogToStderr",
                "-logSubseconds",
            ]
        )
        # Its build directories go to $TMPDIR: keep them in the stack's directory.
        env = dict(BASE_ENV, TMPDIR=str(state / "tmp"))
        daemon = Child("Go imaginator", argv, root / "imaginator.log", env=env, cwd=state)
        children.append(daemon)
        daemon.wait_for("received new image streams configuration", port, deadline)
        inner = _children(daemon.pid)
        if len(inner) != 1:
            raise StackError(f"Go imaginator: expected one process under unshare, found {inner}")
        return Stack("Go", port, daemon, inner[0], store_objects(root), children)
    except BaseException:
        for child in reversed(children):
            child.stop()
        raise


def store_objects(root: Path) -> Path:
    return root / "imageserver" / "objects"


def start_ours(root: Path, pki: Path, peers: Path, workload: Workload, backend: str) -> Stack:
    """Our daemon from this repository, on the embedded store or on an imageserver of its own."""
    deadline = time.monotonic() + STARTUP_SECONDS
    root.mkdir(parents=True)
    children: list[Child] = []
    try:
        state = root / "ours"
        port = free_port()
        args = [
            f"-portNum={port}",
            f"-stateDir={state / 'state'}",
            f"-buildLogDir={state / 'builds'}",
            f"-configurationUrl={workload.ours_conf.as_uri()}",
            f"-CAfile={pki / 'CA.pem'}",
            f"-certFile={pki / f'{OURS_IDENTITY}.cert'}",
            f"-keyFile={pki / f'{OURS_IDENTITY}.key'}",
            "-imageRebuildInterval=0",
        ]
        if workload.ours_variables is not None:
            args.append(f"-variablesFile={workload.ours_variables}")
        objects = state / "state" / "store" / "objects"
        if backend == "imageserver":
            store = _start_imageserver(root, pki, peers, OURS_IDENTITY, deadline)
            children.append(store)
            args += [f"-imageServerHostname={HOST}", f"-imageServerPortNum={store.port}"]
            objects = store_objects(root)
        state.mkdir(parents=True)
        env = dict(BASE_ENV, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
        argv = _pdeathsig([sys.executable, "-m", "imaginator.cli", *args])
        daemon = Child("our imaginator", argv, root / "imaginator.log", env=env, cwd=REPO)
        children.append(daemon)
        daemon.wait_for(f"imaginator listening on port {port}", port, deadline)
        return Stack("ours", port, daemon, daemon.pid, objects, children)
    except BaseException:
        for child in reversed(children):
            child.stop()
        raise


# ------------------------------------------------------------------ leftovers


def stray_processes(root: Path) -> list[int]:
    """Processes (other than this one) whose cwd, root or command line is under ``root``.

    Only what this benchmark started can be there: ``root`` is its own temporary
    directory.
    """
    prefix = str(root)
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            places = [os.readlink(entry / "cwd"), os.readlink(entry / "root")]
            places.append((entry / "cmdline").read_bytes().decode(errors="replace"))
        except OSError:
            continue
        if any(prefix in place for place in places):
            found.append(int(entry.name))
    return found


def kill_strays(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def mounts_under(root: Path) -> list[str]:
    """Mount points of this mount namespace under ``root``, deepest first."""
    prefix = str(root).rstrip("/") + "/"
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point.startswith(prefix) or point == str(root):
            points.append(point)
    return sorted(points, key=len, reverse=True)


def detach_mounts(points: list[str]) -> None:
    for point in points:
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)
