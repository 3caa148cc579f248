#!/usr/bin/env python3
"""Record the GOB bytes the Go Dominator programs exchange with an imageserver.

Run as root from the repository root (``sudo .venv/bin/python tests/data/gob/record.py``);
it needs the Go peers (``--peers``, default ``../shared/peers``), ``busybox`` and
``.venv/bin/imaginator-certs``. The tests never run it: they read what it wrote.

What it does, all on this machine and on loopback only:

1. starts the Go ``imageserver`` as ``nobody`` with ``-permitInsecureMode`` and no CA
   (so SRPC is plain GOB over ``CONNECT /_goSRPC_/``), with its own image, object
   and log directories under a temporary directory;
2. starts a recording TCP proxy on 127.0.0.2 that forwards to the imageserver on
   127.0.0.1: the Go clients see different local and remote addresses and so do not
   move the connection to a Unix socket (``.LocalUpgradeToUnix``); every connection is
   written to ``<out>/<label>-<n>.c2s`` (client to server) and ``.s2c``;
3. drives the Go ``imagetool`` (no certificates: plain GOB) and the Go ``imaginator``
   (root, with certificates made by ``imaginator-certs``; it falls back to plain GOB
   because the imageserver has no TLS) through the proxy.

Every path of the temporary directory is kept out of the recordings where it
could appear (build logs mention it: see README.md).
"""

from __future__ import annotations

import argparse
import json
import lzma
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
UPSTREAM = "127.0.0.1"
PROXY = "127.0.0.2"
ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C",
    "TZ": "UTC",
}


def free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


class Proxy:
    """A TCP relay that writes each direction of each connection to its own file."""

    def __init__(self, out: Path, upstream_port: int) -> None:
        self.out = out
        self.upstream_port = upstream_port
        self.label = "unlabelled"
        self.counts: dict[str, int] = {}
        self.lock = threading.Lock()
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((PROXY, 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.threads: list[threading.Thread] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                label = self.label
                n = self.counts.get(label, 0) + 1
                self.counts[label] = n
            server = socket.create_connection((UPSTREAM, self.upstream_port))
            base = self.out / f"{label}-{n}"
            for src, dst, suffix in ((client, server, "c2s"), (server, client, "s2c")):
                thread = threading.Thread(
                    target=self._pump, args=(src, dst, Path(f"{base}.{suffix}")), daemon=True
                )
                thread.start()
                self.threads.append(thread)

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket, path: Path) -> None:
        with open(path, "wb") as log:
            while True:
                try:
                    data = src.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    try:
                        dst.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
                    return
                log.write(data)
                log.flush()
                dst.sendall(data)

    def settle(self) -> None:
        """Wait until every connection so far has ended in both directions."""
        for thread in list(self.threads):
            thread.join(30)


class Child:
    def __init__(self, name: str, argv: list[str], log: Path, env: dict[str, str], cwd: Path):
        self.name = name
        self.log = log
        self.handle = open(log, "wb")
        self.process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self.handle,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )

    def wait_for(self, text: str, seconds: float = 60) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited:\n{self.log.read_text()[-2000:]}")
            if text in self.log.read_text(errors="replace"):
                return
            time.sleep(0.2)
        raise RuntimeError(f"{self.name}: no {text!r}:\n{self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        self.handle.close()


def run(argv: list[str], *, status: int = 0, **kwargs) -> subprocess.CompletedProcess:
    print("+", " ".join(argv), flush=True)
    result = subprocess.run(
        argv, capture_output=True, text=True, env=kwargs.pop("env", ENV), **kwargs
    )
    if result.returncode != status:
        raise RuntimeError(
            f"{argv[0]} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        )
    return result


def make_pki(root: Path) -> Path:
    """A CA, certificates for the imageserver and the imaginator, and a user's."""
    pki = root / "pki"
    certs = str(REPO / ".venv" / "bin" / "imaginator-certs")
    ca = [f"-caFile={pki / 'CA.pem'}", f"-caKeyFile={pki / 'CA.key'}"]
    for name in ("imageserver", "imaginator"):
        run([certs, "init", *ca, f"-certFile={pki / name}.cert", f"-keyFile={pki / name}.key"])
    run([certs, "user", "alice", *ca, f"-certDirectory={pki / 'alice'}", "-methods=*.*"])
    (pki / "imageserver.key").chmod(0o644)  # read by nobody; a throw-away key
    return pki


def start_imageserver(root: Path, peers: Path, pki: Path) -> tuple[Child, int]:
    """The imageserver has a certificate but no CA: it permits plain (insecure) SRPC."""
    nobody = pwd.getpwnam("nobody")
    directory = root / "imageserver"
    for sub in ("images", "objects", "log"):
        (directory / sub).mkdir(parents=True)
    for path in (directory, *directory.iterdir()):
        os.chown(path, nobody.pw_uid, nobody.pw_gid)
    port = free_port(UPSTREAM)
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
        f"-CAfile={directory / 'no-CA.pem'}",
        f"-certFile={pki / 'imageserver.cert'}",
        f"-keyFile={pki / 'imageserver.key'}",
        "-permitInsecureMode",
        "-alsoLogToStderr",
    ]
    child = Child("imageserver", argv, root / "imageserver.log", ENV, directory)
    child.wait_for("Service ready")
    return child, port


def make_tree(tree: Path) -> None:
    """A small tree with every kind of inode the image model has."""
    (tree / "etc" / "sub").mkdir(parents=True)
    (tree / "bin").mkdir()
    (tree / "usr" / "bin").mkdir(parents=True)
    (tree / "usr" / "bin" / "caf\u00e9 & <tea>").write_text("odd name\n")
    (tree / "dev").mkdir()
    (tree / "empty-dir").mkdir()
    (tree / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (tree / "etc" / "sub" / "file").write_bytes(bytes(range(256)) * 4)
    (tree / "etc" / "empty").write_bytes(b"")
    (tree / "etc" / "motd").write_text("hello from the GOB recording\n")
    os.link(tree / "etc" / "motd", tree / "etc" / "motd.hardlink")
    (tree / "bin" / "tool").write_text("#!/bin/sh\necho tool\n")
    (tree / "bin" / "tool").chmod(0o4755)
    os.symlink("tool", tree / "bin" / "link")
    os.symlink("/etc/passwd", tree / "etc" / "passwd.link")
    os.mknod(tree / "dev" / "null", 0o20666, os.makedev(1, 3))
    os.mknod(tree / "dev" / "sda", 0o60660, os.makedev(8, 0))
    os.mkfifo(tree / "dev" / "fifo", 0o600)
    os.chown(tree / "etc" / "passwd", 1000, 1001)
    stamp = 1_700_000_000
    for path in sorted(tree.rglob("*"), reverse=True):
        os.utime(
            path, ns=(stamp * 10**9 + 123456789, stamp * 10**9 + 123456789), follow_symlinks=False
        )


def imagetool_phase(root: Path, peers: Path, proxy: Proxy) -> None:
    home = root / "home"
    (home / ".ssl").mkdir(parents=True)
    env = dict(ENV, HOME=str(home))
    base = [
        str(peers / "imagetool"),
        f"-imageServerHostname={PROXY}",
        f"-imageServerPortNum={proxy.port}",
        f"-certDirectory={home / '.ssl'}",
    ]
    tree = root / "tree"
    make_tree(tree)
    files = root / "files"
    files.mkdir()
    (files / "filter").write_text("/tmp/.*\n/var/log/.*\n")
    (files / "triggers").write_text(
        json.dumps(
            [
                {"MatchLines": ["/etc/motd"], "Service": "motd", "DoReload": True},
                {"MatchLines": ["/bin/.*"], "Service": "tools", "HighImpact": True},
            ]
        )
    )
    (files / "build.log").write_text("built for the GOB recording\n")

    def tool(label: str, *args: str, flags: tuple[str, ...] = (), status: int = 0) -> str:
        proxy.label = label
        result = run([*base, *flags, *args], env=env, cwd=root, status=status)
        proxy.settle()
        return result.stdout

    tool("mkdir", "mkdir", "tools")
    tool("mkdir-nested", "mkdir", "tools/nested")
    tool(
        "add",
        "add",
        "tools/tree",
        str(tree),
        str(files / "filter"),
        str(files / "triggers"),
        flags=(f"-buildLog={files / 'build.log'}", "-releaseNotes=https://example.com/notes"),
    )
    tool(
        "add-expiring",
        "add",
        "tools/expiring",
        str(tree),
        str(files / "filter"),
        str(files / "triggers"),
        flags=("-expiresIn=2h",),
    )
    tool("check", "check", "tools/tree")
    tool("check-missing", "check", "tools/no-such-image", status=1)
    tool("show", "show", "tools/tree")
    tool("get", "get", "tools/tree", str(root / "unpacked"))
    tool("find-latest-image", "find-latest-image", "tools")
    tool("listdirs", "listdirs")
    tool("get-image-expiration", "get-image-expiration", "tools/expiring")
    tool(
        "change-image-expiration",
        "change-image-expiration",
        "tools/expiring",
        flags=("-expiresIn=5h",),
    )
    tool("delete", "delete", "tools/expiring")
    tool("copy", "copy", "tools/copy", "tools/tree")
    tool("addi", "addi", "tools/addi", "tools/tree", str(files / "filter"), str(files / "triggers"))
    tool("save-to-file", "save-to-file", "tools/tree", str(root / "saved-image"))
    shutil.copyfile(root / "saved-image", proxy.out / "imagetool-save-to-file.gob")


BOOTSTRAP_BB = (
    "set -e; cd $dir; mkdir -p bin etc var/log tmp proc sys dev; cp /bin/busybox bin/busybox;"
    + "".join(f" ln -s busybox bin/{name};" for name in ("sh", "cp", "cat", "true", "ls", "mkdir"))
    + " echo 'hello from bootstrap/bb' > etc/greeting; ln etc/greeting etc/greeting.hl;"
    " echo bbhost > etc/hostname; echo junk > var/log/junk; echo scratch > tmp/scratch;"
    " mknod -m 666 dev/null c 1 3; chmod 1777 tmp"
)
HELLO_MANIFEST = {
    "manifest": ('{"SourceImage": "bootstrap/bb"}\n', 0o644),
    "computed-files": ("/etc/computed localhost:6972\n", 0o644),
    "filter.add": ("/var/cache/hello/.*\n/etc/motd\\.local\n", 0o644),
    "owners.json": ('{"Groups": ["devs"], "Users": ["alice"]}\n', 0o644),
    "tags.json": ('{"Role":"$IMAGE_STREAM_LEAF_NAME","Empty":"$NOTHING"}\n', 0o644),
    "triggers.add": (
        '[{"MatchLines": ["/etc/motd", "/etc/greeting"],'
        ' "Service": "motd-svc", "DoReload": true}]\n',
        0o644,
    ),
    "files/etc/computed": ("placeholder for a computed file\n", 0o644),
    "files/etc/motd": ("Welcome to apps/hello\n", 0o644),
    "scripts/9_first": ('#!/bin/sh\necho "first: $IMAGE_STREAM arch=$ARCH" >> /built-by\n', 0o755),
    "tests/motd": ("#!/bin/sh\ntest -f /etc/motd\n", 0o755),
}


def imaginator_phase(root: Path, peers: Path, pki: Path, proxy: Proxy) -> None:
    """The Go imaginator builds a bootstrap and a manifest stream into the imageserver."""
    top = root / "imaginator"
    manifests = top / "manifests" / "hello"
    for name, (text, mode) in HELLO_MANIFEST.items():
        path = manifests / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(mode)
    streams = {
        "Streams": {
            "apps/hello": {
                "ManifestUrl": f"dir://{top / 'manifests'}",
                "ManifestDirectory": "hello",
            }
        }
    }
    (top / "image-streams.json").write_text(json.dumps(streams))
    bb = {
        "CleanCommand": ["true"],
        "InstallCommand": ["true"],
        "RemoveCommand": ["true"],
        "UpdateCommand": ["true"],
        "UpgradeCommand": ["true"],
        "ListCommand": {"ArgList": ["echo", "busybox 1.35 42"], "SizeMultiplier": 1024},
    }
    conf = {
        "BootstrapStreams": {
            "bootstrap/bb": {
                "BootstrapCommand": ["/bin/sh", "-c", BOOTSTRAP_BB],
                "FilterLines": ["/etc/hostname", "/var/log/.*"],
                "PackagerType": "bb",
            }
        },
        "PackagerTypes": {"bb": bb},
        "ImageStreamsUrl": (top / "image-streams.json").as_uri(),
    }
    (top / "conf.json").write_text(json.dumps(conf))
    for sub in ("state", "log", "builds", "tmp"):
        (top / sub).mkdir()
    port = free_port(UPSTREAM)
    proxy.label = "imaginator-start"
    argv = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "--kill-child=TERM",
        str(peers / "imaginator"),
        f"-portNum={port}",
        f"-stateDir={top / 'state'}",
        f"-logDir={top / 'log'}",
        f"-buildLogDir={top / 'builds'}",
        f"-configurationUrl={(top / 'conf.json').as_uri()}",
        f"-imageServerHostname={PROXY}",
        f"-imageServerPortNum={proxy.port}",
        f"-CAfile={pki / 'CA.pem'}",
        f"-certFile={pki / 'imaginator.cert'}",
        f"-keyFile={pki / 'imaginator.key'}",
        "-imageRebuildInterval=0",
        "-alsoLogToStderr",
    ]
    daemon = Child(
        "imaginator", argv, root / "imaginator.log", dict(ENV, TMPDIR=str(top / "tmp")), top
    )
    try:
        daemon.wait_for("received new image streams configuration")
        time.sleep(6)  # its directory check runs a few seconds after start
        tool = [
            str(peers / "builder-tool"),
            f"-imaginatorHostname={UPSTREAM}",
            f"-imaginatorPortNum={port}",
            f"-certDirectory={pki / 'alice'}",
        ]
        env = dict(ENV, HOME=str(root / "home"))
        proxy.label = "imaginator-bb"
        run([*tool, "build-image", "bootstrap/bb"], env=env)
        proxy.label = "imaginator-hello"
        run([*tool, "build-image", "apps/hello"], env=env)
        # Not kept: the same calls again (and the 2 MB busybox object once more).
        proxy.label = "unkept-imaginator-return-image"
        run([*tool, f"-imageFilename={root / 'hello.gob'}", "build-image", "apps/hello"], env=env)
        shutil.copyfile(root / "hello.gob", proxy.out / "builder-tool-image.gob")
    finally:
        daemon.stop()
    proxy.settle()


def tidy(out: Path) -> None:
    """Keep the GOB connections only: drop the Go client's refused TLS and
    JSON attempts (404), connections that made no call, and the unkept ones;
    compress streams over 1 MiB (xz)."""
    for c2s in sorted(out.glob("*.c2s")):
        s2c = c2s.with_suffix(".s2c")
        answer = s2c.read_bytes() if s2c.exists() else b""
        no_call = c2s.read_bytes().endswith(b"HTTP/1.0\n\n")
        if answer.startswith(b"HTTP/1.0 404") or no_call or c2s.name.startswith("unkept-"):
            c2s.unlink()
            s2c.unlink(missing_ok=True)
    for path in sorted(out.iterdir()):
        if path.stat().st_size > 1 << 20:
            path.with_name(path.name + ".xz").write_bytes(lzma.compress(path.read_bytes()))
            path.unlink()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=Path, default=REPO.parent / "shared" / "peers")
    parser.add_argument("--out", type=Path, default=HERE / "streams")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("record.py must run as root (the Go imaginator needs it)", file=sys.stderr)
        return 2
    if os.environ.get("GOB_RECORD_NETNS") != "1":
        # Everything runs in a network namespace of its own with only a loopback
        # interface: no Go program can reach anything but its peers here.
        env = dict(os.environ, GOB_RECORD_NETNS="1")
        argv = ["unshare", "--net", "--", sys.executable, str(Path(__file__).resolve())]
        return subprocess.run([*argv, *sys.argv[1:]], env=env).returncode
    run(["ip", "link", "set", "lo", "up"])
    args.out.mkdir(parents=True, exist_ok=True)
    for old in args.out.iterdir():
        old.unlink()
    root = Path(tempfile.mkdtemp(prefix="gob-record-", dir="/var/tmp"))
    root.chmod(0o755)
    children: list[Child] = []
    try:
        pki = make_pki(root)
        server, port = start_imageserver(root, args.peers, pki)
        children.append(server)
        proxy = Proxy(args.out, port)
        imagetool_phase(root, args.peers, proxy)
        imaginator_phase(root, args.peers, pki, proxy)
        tidy(args.out)
    finally:
        for child in reversed(children):
            child.stop()
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
