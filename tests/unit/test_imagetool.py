"""``imagetool`` against a store built in a temporary directory."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import stat
import sys
import tarfile

import pytest

from imaginator.image.model import (
    Annotation,
    ComputedRegularInode,
    DirectoryInode,
    FileSystem,
    Image,
    Package,
    RegularInode,
    SpecialInode,
    SymlinkInode,
    image_to_json,
)
from imaginator.image.triggers import Trigger
from imaginator.store.local import LocalImageStore
from imaginator.tools.certs import make_ca, make_user_cert
from imaginator.tools.imagetool import DEFAULT_STATE_DIR, main, parse_args

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (owners, device nodes)")
NAME = "apps/hello/2026-11-27:10:53:19"
OTHER = "bootstrap/bb/2026-11-27:10:53:18"
PASSWD = b"root:x:0:0:root:/root:/bin/sh\n"
SU = b"\x7fELF pretend" * 50
MTIME = (1_700_000_000, 123_456_789)
CREATED_ON = 1_795_776_799_044_135_347


def build_image(store: LocalImageStore) -> Image:
    passwd = bytes.fromhex(store.put_object_bytes(PASSWD))
    su = bytes.fromhex(store.put_object_bytes(SU))
    table = {
        10: DirectoryInode([("computed", 14), ("passwd", 11), ("passwd.hl", 11)], 0o40755),
        11: RegularInode(0o100644, 0, 0, *MTIME, len(PASSWD), passwd),
        12: DirectoryInode([("su", 13)], 0o40755),
        13: RegularInode(0o104755, 0, 0, *MTIME, len(SU), su),
        14: ComputedRegularInode(0o100640, 0, 42, "filegen:6972"),
        15: DirectoryInode([("null", 16), ("sda", 17)], 0o40755),
        16: SpecialInode(0o20666, 0, 0, *MTIME, os.makedev(1, 3)),
        17: SpecialInode(0o60660, 0, 6, 5, 0, os.makedev(8, 0)),
        18: SpecialInode(0o10600, 0, 0, *MTIME, 0),
        19: SymlinkInode(1234, 5678, "etc/passwd"),
        20: RegularInode(0o100600, 1234, 5678, 1, 0, 0, bytes(64)),
        21: DirectoryInode([("empty", 20)], 0o40750, 1234, 5678),
    }
    root = DirectoryInode(
        [("bin", 12), ("data", 21), ("dev", 15), ("etc", 10), ("fifo", 18), ("link", 19)],
        0o40755,
    )
    fs = FileSystem(table, root)
    fs.recompute_totals()
    return Image(
        file_system=fs,
        created_on=CREATED_ON,
        packages=(Package("busybox", 43008, "1.35"), Package("zlib", 100, "1.2")),
        tags={"Role": "hello"},
    )


@pytest.fixture
def state_dir(tmp_path):
    store = LocalImageStore(str(tmp_path / "state" / "store"))
    store.add_image(NAME, build_image(store))
    store.add_image(OTHER, build_image(store))
    return str(tmp_path / "state")


def run(capsys, *argv) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_list(capsys, state_dir):
    assert run(capsys, "-stateDir", state_dir, "list") == (0, f"{NAME}\n{OTHER}\n", "")


def test_show_prints_indented_go_json(capsys, state_dir):
    status, out, err = run(capsys, f"-stateDir={state_dir}", "show", NAME)
    assert (status, err) == (0, "")
    stored = LocalImageStore(os.path.join(state_dir, "store")).get_image(NAME)
    assert json.loads(out) == image_to_json(stored)
    assert out.startswith('{\n    "BuildBranch": "",\n    "BuildCommitId": ""')
    assert '"CreatedOn": "2026-11-27T10:53:19.044135347Z"' in out
    assert out.endswith("}\n")


def test_list_packages(capsys, state_dir):
    status, out, _ = run(capsys, f"--stateDir={state_dir}", "list-packages", NAME)
    assert (status, out) == (0, "busybox 1.35 43008\nzlib 1.2 100\n")


@needs_root
def test_get_materialises_the_tree(capsys, state_dir, tmp_path):
    dest = tmp_path / "out"
    assert run(capsys, "--stateDir", state_dir, "get", NAME, str(dest)) == (0, "", "")
    assert (dest / "etc" / "passwd").read_bytes() == PASSWD
    assert os.lstat(dest / "etc" / "passwd").st_ino == os.lstat(dest / "etc" / "passwd.hl").st_ino
    su = os.lstat(dest / "bin" / "su")
    assert su.st_mode == 0o104755
    assert su.st_mtime_ns == MTIME[0] * 10**9 + MTIME[1]
    assert os.lstat(dest / "dev" / "null").st_rdev == os.makedev(1, 3)
    assert stat.S_ISFIFO(os.lstat(dest / "fifo").st_mode)
    data = os.lstat(dest / "data")
    assert (data.st_mode, data.st_uid, data.st_gid) == (0o40750, 1234, 5678)
    computed = os.lstat(dest / "etc" / "computed")
    assert (computed.st_size, computed.st_mode, computed.st_gid) == (0, 0o100640, 42)
    assert os.readlink(dest / "link") == "etc/passwd"


def check_tarball(data: bytes) -> None:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert list(members) == [
            ".",
            "bin",
            "bin/su",
            "data",
            "data/empty",
            "dev",
            "dev/null",
            "dev/sda",
            "etc",
            "etc/computed",
            "etc/passwd",
            "etc/passwd.hl",
            "fifo",
            "link",
        ]
        su = members["bin/su"]
        assert su.isreg() and su.mode == 0o4755 and su.size == len(SU)
        assert tar.extractfile(su).read() == SU
        assert su.pax_headers["mtime"] == "1700000000.123456789"
        assert tar.extractfile(members["etc/passwd"]).read() == PASSWD
        hard = members["etc/passwd.hl"]
        assert hard.islnk() and hard.linkname == "etc/passwd"
        link = members["link"]
        assert link.issym() and link.linkname == "etc/passwd"
        assert (link.uid, link.gid) == (1234, 5678)
        null = members["dev/null"]
        assert null.ischr() and (null.devmajor, null.devminor) == (1, 3) and null.mode == 0o666
        sda = members["dev/sda"]
        assert sda.isblk() and (sda.devmajor, sda.devminor, sda.gid) == (8, 0, 6)
        assert sda.mtime == 5 and "mtime" not in sda.pax_headers
        assert members["fifo"].isfifo()
        data = members["data"]
        assert data.isdir() and data.mode == 0o750 and (data.uid, data.gid) == (1234, 5678)
        assert data.mtime == CREATED_ON // 10**9
        computed = members["etc/computed"]
        assert computed.isreg() and computed.size == 0 and computed.mode == 0o640
        assert members["data/empty"].size == 0 and members["data/empty"].mode == 0o600
        assert all(m.uname == "" and m.gname == "" for m in members.values())


def test_tar_to_a_file(capsys, state_dir, tmp_path):
    target = tmp_path / "image.tar"
    assert run(capsys, "-stateDir", state_dir, "tar", NAME, str(target)) == (0, "", "")
    check_tarball(target.read_bytes())


def test_tar_to_stdout(capsysbinary, state_dir):
    assert main(["-stateDir", state_dir, "tar", NAME, "-"]) == 0
    out, err = capsysbinary.readouterr()
    assert err == b""
    check_tarball(out)


def test_tar_of_an_image_with_a_missing_object_fails_and_leaves_no_file(
    capsys, state_dir, tmp_path
):
    store = LocalImageStore(os.path.join(state_dir, "store"))
    os.unlink(store.object_path(hashlib.sha512(SU).hexdigest()))
    target = tmp_path / "image.tar"
    status, out, err = run(capsys, "-stateDir", state_dir, "tar", NAME, str(target))
    assert (status, out) == (1, "")
    assert "is not available" in err and err.count("\n") == 1
    assert not target.exists()


@pytest.mark.parametrize("command", [["show"], ["list-packages"], ["get", "DIR"], ["tar", "F"]])
def test_unknown_image(capsys, state_dir, command, tmp_path, monkeypatch):
    args = [command[0], "no/such/2026-01-01:00:00:00", *command[1:]]
    monkeypatch.chdir(tmp_path)
    status, out, err = run(capsys, "-stateDir", state_dir, *args)
    assert (status, out) == (1, "")
    assert err == "imagetool: unknown image: no/such/2026-01-01:00:00:00\n"
    assert not (tmp_path / "F").exists() and not (tmp_path / "DIR").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "missing command"),
        (["frobnicate"], "unknown command: frobnicate"),
        (["show"], "show: expected NAME"),
        (["get", "x"], "get: expected NAME DIR"),
        (["list", "extra"], "list: expected no arguments"),
        (["-nope", "list"], "flag provided but not defined: -nope"),
        (["-stateDir"], "flag needs an argument: -stateDir"),
        (["-stateDir=", "list"], "-stateDir: empty directory name"),
        (
            ["-imageServerPortNum=x", "list"],
            "-imageServerPortNum: expected a port number, got 'x'",
        ),
        (
            ["-imageServerPortNum=70000", "list"],
            "-imageServerPortNum: expected a port number, got '70000'",
        ),
    ],
)
def test_bad_arguments(capsys, argv, message):
    status, out, err = run(capsys, *argv)
    assert (status, out) == (2, "")
    assert err == f"imagetool: {message} (try imagetool -h)\n"


@pytest.mark.parametrize("flag", ["-h", "-help", "--help", "--h"])
def test_help(capsys, flag):
    status, out, err = run(capsys, flag)
    assert (status, err) == (0, "")
    assert out.startswith("Usage: imagetool [flags] <command> [flags] [arguments]")
    assert "-stateDir DIR" in out and "push NAME REF" in out
    assert "list-packages NAME" in out
    assert run(capsys, "show", flag)[0] == 0


def test_missing_store(capsys, tmp_path):
    status, out, err = run(capsys, "-stateDir", str(tmp_path / "none"), "list")
    assert (status, out) == (1, "")
    assert err == f"imagetool: no image store at {tmp_path / 'none' / 'store'}\n"
    assert not (tmp_path / "none").exists()


def test_flag_styles_and_default():
    assert parse_args(["list"]).state_dir == DEFAULT_STATE_DIR == "/var/lib/imaginator"
    for argv in (["-stateDir=/x"], ["-stateDir", "/x"], ["--stateDir=/x"], ["--stateDir", "/x"]):
        parsed = parse_args([*argv, "show", "n"])
        assert (parsed.state_dir, parsed.command, parsed.args) == ("/x", "show", ["n"])
    assert parse_args(["--", "list"]).command == "list"


def test_main_reads_sys_argv(capsys, state_dir, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["imagetool", "-stateDir", state_dir, "list"])
    assert main() == 0
    assert capsys.readouterr().out == f"{NAME}\n{OTHER}\n"


def test_show_summary_is_one_screen(capsys, tmp_path):
    store = LocalImageStore(str(tmp_path / "state" / "store"))
    image = dataclasses.replace(
        build_image(store),
        expires_at=CREATED_ON + 3600 * 10**9,
        created_for="alice",
        source_image=OTHER,
        build_commit_id="c0ffee",
        build_branch="main",
        build_git_url="https://git.example/m.git",
        tags={f"k{i:02d}": f"v{i}" for i in range(10)},
        filter=("/var/log/.*", "/tmp/.*"),
        triggers=(Trigger(("/etc/ssh/.*",), "sshd"), Trigger(("/etc/x",), "cron")),
        build_log=Annotation(object=bytes.fromhex(store.put_object_bytes(b"log\n")), url=""),
    )
    store.add_image(NAME, image)
    status, out, err = run(capsys, f"-stateDir={tmp_path / 'state'}", "show", "-summary", NAME)
    assert (status, err) == (0, "")
    assert out.splitlines() == [
        "Name:      apps/hello/2026-11-27:10:53:19",
        "Stream:    apps/hello",
        "Created:   27 Nov 2026 10:53:19 UTC (by imaginator, for alice)",
        "Expires:   27 Nov 2026 11:53:19 UTC",
        f"Source:    {OTHER}",
        "Commit:    c0ffee (branch main, https://git.example/m.git)",
        "Inodes:    3 regular files, 5 directories, 1 symlinks, 3 devices and fifos, 1 computed",
        f"Size:      {len(PASSWD) + len(SU)} B in 2 distinct objects",
        "Packages:  2",
        "Tags:      k00=v0, k01=v1, k02=v2, k03=v3, k04=v4, k05=v5, k06=v6, k07=v7, … (10 in all)",
        "Filter:    2 lines",
        "Triggers:  2 (cron, sshd)",
        f"Build log: stored (object {image.build_log.object.hex()[:16]}…)",
    ]
    plain = run(capsys, f"-stateDir={tmp_path / 'state'}", "show", NAME)[1]
    assert plain.startswith("{\n")  # without -summary: the record as JSON


def test_imageserver_flags():
    parsed = parse_args(
        ["-imageServerHostname=images", "-imageServerPortNum", "7001", "-CAfile=/ca", "list"]
    )
    assert (parsed.image_server_hostname, parsed.image_server_port) == ("images", 7001)
    assert (parsed.ca_file, parsed.cert_directory) == ("/ca", "~/.ssl")
    defaults = parse_args(["list"])
    assert (defaults.image_server_hostname, defaults.image_server_port) == ("", 6971)
    assert defaults.ca_file == "/etc/ssl/CA.pem"


def test_imageserver_without_a_certificate_or_ca_fails_before_dialing(capsys, tmp_path):
    remote = ["-imageServerHostname=127.0.0.1", "-imageServerPortNum=1"]
    status, out, err = run(capsys, *remote, f"-certDirectory={tmp_path / 'none'}", "list")
    assert (status, out) == (1, "")
    assert err == (
        f"imagetool: -certDirectory={tmp_path / 'none'}: no usable certificate and key "
        "(NAME.cert and NAME.key, or cert.pem and key.pem)\n"
    )
    ca, ca_key = make_ca()
    cert, key = make_user_cert(ca, ca_key, "tool")
    (tmp_path / "tool.cert").write_bytes(cert)
    (tmp_path / "tool.key").write_bytes(key)
    missing = tmp_path / "no-ca.pem"
    status, out, err = run(
        capsys, *remote, f"-certDirectory={tmp_path}", f"-CAfile={missing}", "list"
    )
    assert (status, err) == (1, f"imagetool: -CAfile={missing}: No such file\n")
