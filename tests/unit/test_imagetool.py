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

from imaginator.goformats.goflags import FlagSet
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
from imaginator.tools.imagetool import (
    COMMANDS,
    DEFAULT_STATE_DIR,
    FLAGS,
    main,
    parse_args,
    usage_text,
)
from imaginator.tools.imagetool_base import Arguments

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


COMMAND_LIST = "list, show, get, tar, list-packages, oci, push, sbom, diff"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], f"missing command: want one of {COMMAND_LIST}"),
        (["-json"], f"missing command: want one of {COMMAND_LIST}"),
        (["frobnicate"], f'unknown command "frobnicate": want one of {COMMAND_LIST}'),
        (
            ["-json", "false", "diff", "a", "b"],
            f'unknown command "false": want one of {COMMAND_LIST}'
            " (a boolean flag takes its value as -json=false)",
        ),
        (["show"], "show wants NAME, got no arguments"),
        (["get", "x"], 'get wants NAME DIR, got "x"'),
        (["list", "extra"], 'list wants no arguments, got "extra"'),
        (["show", "a\tb", "c"], 'show wants NAME, got "a\\tb" "c"'),
        # Flags end at the first argument, after the command as before it.
        (["show", "n", "-summary"], 'show wants NAME, got "n" "-summary"'),
        (
            ["show", "-summary", "false", "n"],
            'show wants NAME, got "false" "n" (a boolean flag takes its value as -summary=false)',
        ),
        (["-nope", "list"], "flag provided but not defined: -nope"),
        (["list", "-nope"], "flag provided but not defined: -nope"),
        (["---stateDir=/x", "list"], "bad flag syntax: ---stateDir=/x"),
        (["-=x", "list"], "bad flag syntax: -=x"),
        (["-stateDir"], "flag needs an argument: -stateDir"),
        (["show", "-registryCA"], "flag needs an argument: -registryCA"),
        (
            ["-json=maybe", "diff", "a", "b"],
            'invalid boolean value "maybe" for -json: want true or false',
        ),
        (["-summary=", "list"], 'invalid boolean value "" for -summary: want true or false'),
        (["-stateDir=", "list"], 'invalid value "" for flag -stateDir: want a directory name'),
        (
            ["-certDirectory", "", "list"],
            'invalid value "" for flag -certDirectory: want a directory name',
        ),
        (["-CAfile=", "list"], 'invalid value "" for flag -CAfile: want a file name'),
        (
            ["-imageServerHostname=", "list"],
            'invalid value "" for flag -imageServerHostname: want a host name',
        ),
        (
            ["-imageServerPortNum=x", "list"],
            'invalid value "x" for flag -imageServerPortNum: want an integer',
        ),
        (
            ["-imageServerPortNum=-1", "list"],
            'invalid value "-1" for flag -imageServerPortNum: want a non-negative integer',
        ),
        (
            ["-imageServerPortNum=70000", "list"],
            'invalid value "70000" for flag -imageServerPortNum: '
            "want a port number from 1 to 65535",
        ),
        (
            ["-imageServerPortNum=0", "list"],
            'invalid value "0" for flag -imageServerPortNum: want a port number from 1 to 65535',
        ),
        (
            ["sbom", "-sbomFormat", "swid", "n"],
            'invalid value "swid" for flag -sbomFormat: want spdx or cyclonedx',
        ),
    ],
)
def test_bad_command_lines_get_one_line_and_status_2(capsys, argv, message):
    status, out, err = run(capsys, *argv)
    assert (status, out) == (2, "")
    assert err == f"imagetool: {message}; see imagetool -h\n"


@pytest.mark.parametrize(
    "argv",
    [
        ["-h"],
        ["-help"],
        ["--help"],
        ["--h"],
        ["-stateDir=/x", "-h", "list"],
        ["show", "-h"],
        ["diff", "-json", "--help", "a", "b"],
    ],
)
def test_help(capsys, argv):
    status, out, err = run(capsys, *argv)
    assert (status, err) == (0, "")
    assert out == usage_text()


def test_help_after_an_argument_is_an_argument(capsys):
    status, out, err = run(capsys, "show", "n", "-h")
    assert (status, out) == (2, "")
    assert err == 'imagetool: show wants NAME, got "n" "-h"; see imagetool -h\n'


def test_usage_is_made_from_the_tables():
    text = usage_text()
    assert text.startswith(
        "Usage: imagetool [flags...] command [flags...] [args...]\nCommon flags:\n"
    )
    assert FlagSet(FLAGS).usage() in text  # every flag, as Go's PrintDefaults writes it
    assert "  -stateDir directory\n" in text
    assert '(default "/var/lib/imaginator")' in text
    assert "  -imageServerPortNum uint\n    \tPort number of image server (default 6971)\n" in text
    assert "  -json\n    \tIf true, diff prints JSON\n" in text
    commands = text.split("Commands:\n", 1)[1]
    for name, command in COMMANDS.items():
        assert f"\n  {' '.join((name, *command.args))} " in "\n" + commands
    assert "  list-packages NAME  list the image's packages: name version size\n" in commands
    assert text.endswith(
        "SOURCE_DATE_EPOCH (seconds) clamps every time written by tar, oci, push and sbom.\n"
    )


def test_missing_store(capsys, tmp_path):
    status, out, err = run(capsys, "-stateDir", str(tmp_path / "none"), "list")
    assert (status, out) == (1, "")
    assert err == f"imagetool: no image store at {tmp_path / 'none' / 'store'}\n"
    assert not (tmp_path / "none").exists()


def test_defaults_are_those_of_the_table_and_of_arguments():
    assert parse_args(["list"]) == Arguments(command="list")
    assert {flag.name: flag.default for flag in FLAGS} == {
        "CAfile": "/etc/ssl/CA.pem",
        "certDirectory": "~/.ssl",
        "imageServerHostname": "",
        "imageServerPortNum": "6971",
        "json": "false",
        "registryCA": "",
        "registryCredentials": "",
        "registryPlainHttp": "false",
        "sbomFormat": "spdx",
        "stateDir": DEFAULT_STATE_DIR,
        "summary": "false",
    }
    assert DEFAULT_STATE_DIR == "/var/lib/imaginator"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        # -name=value, -name value, --name=value and --name value are the same.
        (["-stateDir=/x", "show", "n"], {"state_dir": "/x", "args": ["n"]}),
        (["-stateDir", "/x", "show", "n"], {"state_dir": "/x", "args": ["n"]}),
        (["--stateDir=/x", "show", "n"], {"state_dir": "/x", "args": ["n"]}),
        (["--stateDir", "/x", "show", "n"], {"state_dir": "/x", "args": ["n"]}),
        # A value may start with a dash or hold an equals sign.
        (["-stateDir", "-x", "list"], {"state_dir": "-x"}),
        (["-stateDir=a=b", "list"], {"state_dir": "a=b"}),
        # Flags after the command, and the later of two wins.
        (["show", "-summary", "n"], {"summary": True, "args": ["n"]}),
        (["-stateDir=/a", "list", "-stateDir=/b"], {"state_dir": "/b"}),
        (["-json", "diff", "-json=false", "a", "b"], {"json": False}),
        # A bare boolean flag is true; a value only after =, in Go's spellings.
        (["-registryPlainHttp", "list"], {"registry_plain_http": True}),
        (["-registryPlainHttp=true", "list"], {"registry_plain_http": True}),
        (["-registryPlainHttp=T", "list"], {"registry_plain_http": True}),
        (["-registryPlainHttp=1", "list"], {"registry_plain_http": True}),
        (["-registryPlainHttp=false", "list"], {"registry_plain_http": False}),
        (["-registryPlainHttp=F", "list"], {"registry_plain_http": False}),
        (["-registryPlainHttp=0", "list"], {"registry_plain_http": False}),
        # Go's integer literals.
        (["-imageServerPortNum=0x1B59", "list"], {"image_server_port": 7001}),
        (["-imageServerPortNum", "7_001", "list"], {"image_server_port": 7001}),
        (["-imageServerPortNum=65535", "list"], {"image_server_port": 65535}),
        # -- ends the flags, before the command or after it; - is an argument.
        (["--", "list"], {"command": "list"}),
        (["-json", "--", "diff", "a", "b"], {"json": True, "args": ["a", "b"]}),
        (["show", "--", "-summary"], {"summary": False, "args": ["-summary"]}),
        (["tar", "n", "-"], {"args": ["n", "-"]}),
        (["-sbomFormat=cyclonedx", "sbom", "n"], {"sbom_format": "cyclonedx"}),
    ],
)
def test_flag_rules(argv, expected):
    parsed = parse_args(argv)
    for attribute, value in expected.items():
        assert getattr(parsed, attribute) == value, attribute


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
