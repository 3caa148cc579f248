"""The generated /bin/generic-packager script (reference §5.8.1)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from imaginator.config.main import ListCommand, PackagerType
from imaginator.pipeline.packager import generic_packager_script, quote_argument, single_quote

# The two PackagerTypes of vectors/config-imaginator-conf.json.
BB_CONFIG: dict[str, Any] = {
    "CleanCommand": ["true"],
    "CleanPatterns": ["/var/cache/x/.*"],
    "InstallCommand": ["true"],
    "ListCommand": {"ArgList": ["echo", "busybox 1.35 42"], "SizeMultiplier": 1024},
    "RemoveCommand": ["echo", "it's Bob's"],
    "UpdateCommand": ["true"],
    "UpgradeCommand": ["true"],
    "Verbatim": ["export FOO=bar"],
}
DEB_CONFIG: dict[str, Any] = {
    "CleanCommand": ["apt-get", "clean"],
    "InstallCommand": ["apt-get", "-q", "-y", "--no-install-recommends", "install"],
    "ListCommand": {
        "ArgList": [
            "dpkg-query",
            "-f",
            "${binary:Package} ${Version} ${Installed-Size}\n",
            "--show",
        ],
        "SizeMultiplier": 1024,
    },
    "RemoveCommand": [
        "apt-get",
        "-q",
        "--purge",
        "-y",
        "--allow-remove-essential",
        "remove",
    ],
    "UpdateCommand": ["apt-get", "-q", "-y", "update"],
    "UpgradeCommand": [
        "apt-get",
        "-q",
        "-y",
        "-o",
        "Dpkg::Options::=--force-confold",
        "dist-upgrade",
    ],
    "Verbatim": ["export DEBIAN_FRONTEND=noninteractive"],
}

# vectors/generic-packager-bb.sh, the Go daemon's output for "bb", except line 9:
# Go wrote `exec echo 'it's Bob's' "$@"`, which does not parse.
BB_SCRIPT = r"""#! /bin/sh
# Created by imaginator.
export FOO=bar
cmd="$1"; shift
[ "$cmd" = "clean" ] && exec true "$@"
[ "$cmd" = "copy-in" ] && exec cat > "$1"
[ "$cmd" = "install" ] && exec true "$@"
[ "$cmd" = "list" ] && exec echo 'busybox 1.35 42' "$@"
[ "$cmd" = "remove" ] && exec echo 'it'\''s Bob'\''s' "$@"
[ "$cmd" = "run" ] && exec "$@"
if [ "$cmd" = "show-clean-patterns" ]; then
    echo '/var/cache/x/.*'
    exit 0
fi
[ "$cmd" = "show-size-multiplier" ] && exec echo 1024
[ "$cmd" = "update" ] && exec true "$@"
[ "$cmd" = "upgrade" ] && exec true "$@"
echo "Invalid command: $cmd"
exit 2
"""

# Reference §5.8.1, the script for the sample "deb" packager type.
DEB_SCRIPT = r"""#! /bin/sh
# Created by imaginator.
export DEBIAN_FRONTEND=noninteractive
cmd="$1"; shift
[ "$cmd" = "clean" ] && exec apt-get clean "$@"
[ "$cmd" = "copy-in" ] && exec cat > "$1"
[ "$cmd" = "install" ] && exec apt-get -q -y --no-install-recommends install "$@"
[ "$cmd" = "list" ] && exec dpkg-query -f '${binary:Package} ${Version} ${Installed-Size}\n' --show "$@"
[ "$cmd" = "remove" ] && exec apt-get -q --purge -y --allow-remove-essential remove "$@"
[ "$cmd" = "run" ] && exec "$@"
if [ "$cmd" = "show-clean-patterns" ]; then
    exit 0
fi
[ "$cmd" = "show-size-multiplier" ] && exec echo 1024
[ "$cmd" = "update" ] && exec apt-get -q -y update "$@"
[ "$cmd" = "upgrade" ] && exec apt-get -q -y -o Dpkg::Options::=--force-confold dist-upgrade "$@"
echo "Invalid command: $cmd"
exit 2
"""  # noqa: E501


def packager_type(name: str, doc: dict[str, Any]) -> PackagerType:
    """A PackagerType from its conf.json object (the config parser's job, done by hand)."""
    listing = doc.get("ListCommand", {})
    return PackagerType(
        name=name,
        clean_command=tuple(doc.get("CleanCommand", ())),
        clean_patterns=tuple(doc.get("CleanPatterns", ())),
        install_command=tuple(doc.get("InstallCommand", ())),
        list_command=ListCommand(
            tuple(listing.get("ArgList", ())), listing.get("SizeMultiplier", 1)
        ),
        remove_command=tuple(doc.get("RemoveCommand", ())),
        update_command=tuple(doc.get("UpdateCommand", ())),
        upgrade_command=tuple(doc.get("UpgradeCommand", ())),
        verbatim=tuple(doc.get("Verbatim", ())),
    )


def test_bb_script_is_gos_with_the_quoting_fixed() -> None:
    assert generic_packager_script(packager_type("bb", BB_CONFIG)) == BB_SCRIPT


def test_bb_script_differs_from_the_vector_only_in_line_9() -> None:
    go_line_9 = """[ "$cmd" = "remove" ] && exec echo 'it's Bob's' "$@\""""
    ours = generic_packager_script(packager_type("bb", BB_CONFIG)).splitlines()
    go = BB_SCRIPT.splitlines()
    go[8] = go_line_9
    assert [i + 1 for i, (a, b) in enumerate(zip(ours, go, strict=True)) if a != b] == [9]


def test_deb_script_is_the_reference_one() -> None:
    assert generic_packager_script(packager_type("deb", DEB_CONFIG)) == DEB_SCRIPT


def test_empty_commands_are_no_ops_and_multiplier_at_least_one() -> None:
    script = generic_packager_script(
        PackagerType(name="min", list_command=ListCommand((), 0))
    ).splitlines()
    assert script == [
        "#! /bin/sh",
        "# Created by imaginator.",
        'cmd="$1"; shift',
        '[ "$cmd" = "clean" ] && exit 0',
        '[ "$cmd" = "copy-in" ] && exec cat > "$1"',
        '[ "$cmd" = "install" ] && exit 0',
        '[ "$cmd" = "list" ] && exit 0',
        '[ "$cmd" = "remove" ] && exit 0',
        '[ "$cmd" = "run" ] && exec "$@"',
        'if [ "$cmd" = "show-clean-patterns" ]; then',
        "    exit 0",
        "fi",
        '[ "$cmd" = "show-size-multiplier" ] && exec echo 1',
        '[ "$cmd" = "update" ] && exit 0',
        '[ "$cmd" = "upgrade" ] && exit 0',
        'echo "Invalid command: $cmd"',
        "exit 2",
    ]


@pytest.mark.parametrize(
    ("arg", "written"),
    [
        ("apt-get", "apt-get"),
        ("Dpkg::Options::=--force-confold", "Dpkg::Options::=--force-confold"),
        ("$HOME", "$HOME"),
        ("two words", "'two words'"),
        ("fmt ${Version}\n", r"'fmt ${Version}\n'"),
        ("it's Bob's", r"'it'\''s Bob'\''s'"),
        ("line one\nline two", "'line one\nline two'"),
        ("tab\there", "'tab\there'"),
    ],
)
def test_quote_argument(arg: str, written: str) -> None:
    assert quote_argument(arg) == written


def test_single_quote() -> None:
    assert single_quote("") == "''"
    assert single_quote("'") == "''\\'''"


@pytest.mark.parametrize("shell", ["/bin/sh", "/usr/bin/busybox sh"])
def test_generated_bb_script_runs(tmp_path: Path, shell: str) -> None:
    if not os.path.exists(shell.split()[0]):
        pytest.skip(f"no {shell}")
    script = tmp_path / "generic-packager"
    script.write_text(generic_packager_script(packager_type("bb", BB_CONFIG)))
    script.chmod(0o755)
    sh = shell.split()

    def out(*args: str) -> bytes:
        done = subprocess.run(
            [*sh, str(script), *args],
            capture_output=True,
            env={"PATH": "/usr/bin:/bin"},
            check=False,
            timeout=30,
        )
        assert done.stderr == b""
        assert done.returncode == 0, done
        return done.stdout

    assert out("remove") == b"it's Bob's\n"
    assert out("remove", "pkg") == b"it's Bob's pkg\n"
    assert out("show-size-multiplier") == b"1024\n"
    assert out("show-clean-patterns") == b"/var/cache/x/.*\n"
    assert out("list") == b"busybox 1.35 42\n"
    assert out("clean") == b""
    assert out("run", "/bin/sh", "-c", 'echo "$FOO"') == b"bar\n"
    target = tmp_path / "copied"
    subprocess.run(
        [*sh, str(script), "copy-in", str(target)], input=b"data", check=True, timeout=30
    )
    assert target.read_bytes() == b"data"
    bad = subprocess.run([*sh, str(script), "frobnicate"], capture_output=True, timeout=30)
    assert (bad.returncode, bad.stdout) == (2, b"Invalid command: frobnicate\n")
