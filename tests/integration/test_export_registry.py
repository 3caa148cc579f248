"""Images pushed to a real distribution registry (Debian's ``docker-registry``),
pulled back with ``skopeo``, unpacked with ``umoci`` and compared file by file
with ``imagetool get``; TLS with a generated CA, Basic authentication from an
htpasswd file, chunked uploads; and the pushed image run with ``podman``."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import urllib.request
import warnings
from pathlib import Path

import pytest

from imaginator.export.oci import ExportOptions
from imaginator.export.push import push_image
from imaginator.export.registry import Credentials, RegistryClient, parse_reference
from imaginator.store.local import LocalImageStore
from imaginator.tools.certs import make_ca, make_server_cert
from tests.support.export_images import DERIVED, SOURCE, Tree, make_store
from tests.support.registry import need, start_registry

with warnings.catch_warnings():
    # bcrypt hashes for the registry's htpasswd file (the module goes in Python 3.13).
    warnings.simplefilter("ignore", DeprecationWarning)
    import crypt

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (owners, device nodes)")
PASSWORD = "registry-pa55word"
SPDX = "application/spdx+json"


@pytest.fixture
def state(tmp_path):
    make_store(tmp_path / "state" / "store")
    return tmp_path / "state"


@pytest.fixture
def registry(tmp_path):
    running = start_registry(tmp_path / "registry")
    yield running
    running.stop()


def imagetool(
    state: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "imaginator.tools.imagetool", f"-stateDir={state}", *args],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )


def skopeo(*args: str) -> str:
    need("skopeo")
    done = subprocess.run(["skopeo", *args], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def describe(root: Path) -> dict[str, tuple]:
    """Every entry below ``root``: type, mode, owner, content, link target,
    device, file mtime, and the paths that share its inode."""
    links: dict[int, list[str]] = {}
    entries: dict[str, tuple] = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(directory, name)
            relative = "/" + str(path.relative_to(root))
            st = os.lstat(path)
            kind = stat.S_IFMT(st.st_mode)
            fields: tuple = (kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
            if stat.S_ISREG(kind):
                fields += (hashlib.sha256(path.read_bytes()).hexdigest(), st.st_mtime_ns)
            elif stat.S_ISLNK(kind):
                fields = (kind, st.st_uid, st.st_gid, os.readlink(path))
            elif stat.S_ISCHR(kind) or stat.S_ISBLK(kind):
                fields += (st.st_rdev, st.st_mtime_ns)
            if not stat.S_ISDIR(kind):
                links.setdefault(st.st_ino, []).append(relative)
            entries[relative] = fields
    for paths in links.values():
        for path in paths:
            entries[path] += (tuple(sorted(paths)),)
    return entries


def pull_and_unpack(reference: str, tmp_path: Path, label: str, *extra: str) -> Path:
    need("umoci")
    layout = tmp_path / f"pulled-{label}"
    skopeo("copy", *extra, f"docker://{reference}", f"oci:{layout}:{label}")
    rootfs = tmp_path / f"rootfs-{label}"
    done = subprocess.run(
        ["umoci", "raw", "unpack", "--image", f"{layout}:{label}", str(rootfs)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return rootfs


@needs_root
def test_pushed_images_pull_back_file_for_file(state, registry, tmp_path):
    need("skopeo")
    base_ref = f"{registry.address}/imaginator/test:base"
    app_ref = f"{registry.address}/imaginator/test:app"
    pushed = imagetool(state, "push", SOURCE, base_ref)
    assert pushed.returncode == 0, pushed.stderr
    assert registry.requests("POST", "/blobs/uploads/") == 4  # config, layer, empty, SBOM
    pushed = imagetool(state, "push", DERIVED, app_ref)
    assert pushed.returncode == 0, pushed.stderr
    # The source's layer is there already: config, diff layer and SBOM are new.
    assert registry.requests("POST", "/blobs/uploads/") == 4 + 3
    again = imagetool(state, "push", DERIVED, app_ref)
    assert again.returncode == 0, again.stderr
    assert registry.requests("POST", "/blobs/uploads/") == 7  # nothing sent again
    assert "0 blobs sent (0 bytes), 5 already there" in again.stderr

    inspected = json.loads(skopeo("inspect", "--tls-verify=false", f"docker://{app_ref}"))
    assert pushed.stdout == f"{registry.address}/imaginator/test@{inspected['Digest']}\n"
    assert inspected["Labels"] == {"Role": "app", "Team": "ops"}
    base = json.loads(skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{base_ref}"))
    app = json.loads(skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{app_ref}"))
    assert app["layers"][0] == base["layers"][0]  # the layered image shares its source's layer
    assert len(app["layers"]) == 2

    rootfs = pull_and_unpack(app_ref, tmp_path, "app", "--src-tls-verify=false")
    expected = tmp_path / "expected"
    got = imagetool(state, "get", DERIVED, str(expected))
    assert got.returncode == 0, got.stderr
    (expected / "var" / "comp").unlink()  # computed: no content, not in the layers
    pulled, wanted = describe(rootfs), describe(expected)
    assert set(pulled) == set(wanted)
    assert pulled == wanted
    assert "/olddir" not in pulled and "/etc/type/child" not in pulled  # whiteouts applied

    # The SBOM is attached through the referrers tag schema.
    referrers = json.loads(
        skopeo(
            "inspect",
            "--raw",
            "--tls-verify=false",
            f"docker://{registry.address}/imaginator/test:{inspected['Digest'].replace(':', '-')}",
        )
    )
    assert [m["artifactType"] for m in referrers["manifests"]] == [SPDX]
    sbom_manifest = json.loads(
        skopeo(
            "inspect",
            "--raw",
            "--tls-verify=false",
            f"docker://{registry.address}/imaginator/test@{referrers['manifests'][0]['digest']}",
        )
    )
    assert sbom_manifest["subject"]["digest"] == inspected["Digest"]
    url = (
        f"http://{registry.address}/v2/imaginator/test/blobs/{sbom_manifest['layers'][0]['digest']}"
    )
    with urllib.request.urlopen(url, timeout=30) as answer:
        document = json.loads(answer.read())
    assert [p["name"] for p in document["packages"][1:]] == [
        "base-files",
        "hello",
        "less",
        "zlib1g",
    ]


def tls_registry(tmp_path: Path):
    ca, ca_key = make_ca("registry test CA")
    cert, key = make_server_cert(ca, ca_key, ["127.0.0.1"])
    directory = tmp_path / "registry"
    directory.mkdir()
    for name, data in (("ca.crt", ca), ("cert.pem", cert), ("key.pem", key)):
        (directory / name).write_bytes(data)
    hashed = crypt.crypt(PASSWORD, crypt.mksalt(crypt.METHOD_BLOWFISH))
    (directory / "htpasswd").write_text(f"alice:{hashed}\n")
    extra = (
        f"  tls:\n    certificate: {directory / 'cert.pem'}\n    key: {directory / 'key.pem'}\n"
        f"auth:\n  htpasswd:\n    realm: test\n    path: {directory / 'htpasswd'}\n"
    )
    return start_registry(directory, extra), directory


def test_tls_basic_authentication_and_chunked_uploads(state, tmp_path):
    registry, directory = tls_registry(tmp_path)
    try:
        auth = base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
        credentials = tmp_path / "config.json"
        credentials.write_text(json.dumps({"auths": {registry.address: {"auth": auth}}}))
        reference = f"{registry.address}/secure/app:v1"

        # Chunked: every blob bigger than 1 KiB goes in PATCH pieces.
        store = LocalImageStore(str(state / "store"), create=False)
        client = RegistryClient(
            registry.address,
            credentials=Credentials("alice", PASSWORD),
            ca_file=str(directory / "ca.crt"),
            chunk_size=1024,
        )
        result = push_image(
            store, SOURCE, parse_reference(reference), client, options=ExportOptions()
        )
        assert client.requests[("PATCH", "upload")] >= 2
        assert result.blobs_sent == 4
        assert registry.requests("PATCH", "/blobs/uploads/") >= 2
        digest = json.loads(
            skopeo(
                "inspect",
                f"--cert-dir={directory}",
                f"--creds=alice:{PASSWORD}",
                f"docker://{reference}",
            )
        )["Digest"]
        assert digest == result.manifest_digest

        # imagetool with the CA and Docker's config.json.
        pushed = imagetool(
            state,
            f"-registryCA={directory / 'ca.crt'}",
            f"-registryCredentials={credentials}",
            "push",
            DERIVED,
            f"{registry.address}/secure/app:v2",
        )
        assert pushed.returncode == 0, pushed.stderr
        # New: config, diff layer, SBOM; there already: the source layer, the empty config.
        assert "3 blobs sent (" in pushed.stderr and "2 already there" in pushed.stderr

        # Without the CA the certificate is not trusted; a wrong password is refused.
        untrusted = imagetool(state, "push", SOURCE, reference)
        assert untrusted.returncode == 1
        assert "TLS: unable to get local issuer certificate" in untrusted.stderr
        credentials.write_text(json.dumps({"username": "alice", "password": "wrong-" + PASSWORD}))
        refused = imagetool(
            state,
            f"-registryCA={directory / 'ca.crt'}",
            f"-registryCredentials={credentials}",
            "push",
            SOURCE,
            reference,
        )
        assert refused.returncode == 1
        assert "401" in refused.stderr and PASSWORD not in refused.stderr + refused.stdout
    finally:
        registry.stop()


@needs_root
@pytest.mark.slow
def test_podman_runs_the_pushed_image(tmp_path, registry):
    need("podman", "runc")
    store = LocalImageStore(str(tmp_path / "state" / "store"))
    tree = Tree(store)
    tree.dir("/bin")
    busybox = Path(shutil.which("busybox") or "/bin/busybox").read_bytes()
    tree.file("/bin/busybox", busybox, stat.S_IFREG | 0o755)
    tree.symlink("/bin/sh", "busybox")
    tree.file("/hello.txt", b"hello from imaginator\n")
    from imaginator.image.model import Image

    store.add_image("apps/busybox/2026-01-01:00:00:00", Image(file_system=tree.fs(), created_on=1))
    reference = f"{registry.address}/imaginator/busybox:v1"
    pushed = imagetool(tmp_path / "state", "push", "apps/busybox/2026-01-01:00:00:00", reference)
    assert pushed.returncode == 0, pushed.stderr
    # Podman's own storage (its run root must be a short path, so not under
    # tmp_path); runc, because crun cannot set up cgroups on this kind of host;
    # limits lowered to what the sandbox allows.
    scratch = Path(tempfile.mkdtemp(prefix="imaginator-podman-"))
    podman = [
        "podman",
        f"--root={scratch / 'root'}",
        f"--runroot={scratch / 'run'}",
        "--runtime=runc",
        "--cgroup-manager=cgroupfs",
        "--events-backend=file",
    ]
    try:
        done = subprocess.run(
            [
                *podman,
                "run",
                "--rm",
                "--tls-verify=false",
                "--network=none",
                "--ulimit=nofile=1024:1024",
                "--ulimit=nproc=1024:1024",
                reference,
                "/bin/sh",
                "-c",
                "cat /hello.txt",
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout == "hello from imaginator\n"
    finally:
        subprocess.run([*podman, "system", "reset", "--force"], capture_output=True, check=False)
        shutil.rmtree(scratch, ignore_errors=True)
