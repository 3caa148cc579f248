"""Our Go flag rules against Go's own: the Go ``builder-tool`` of ``../shared/peers``.

For each command line, the Go tool either refuses a flag (its first line of
standard error is the message) or accepts every flag and then prints the usage
for the unknown command after them. Our parser must accept and refuse the
same command lines, with the same message up to the reason (where Go says
``parse error`` we say what is wanted). And ``builder-tool -h`` must print each
flag that both tools describe alike exactly as Go does.

Skipped when the peers are absent, failed instead with ``IMAGINATOR_REQUIRE_PEERS=1``.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from imaginator.goformats.goflags import FlagError, FlagSet, FlagSpec
from imaginator.tools.builder_tool import usage_text

REPO = Path(__file__).resolve().parents[2]
GO_TOOL = REPO.parent / "shared" / "peers" / "builder-tool"


@pytest.fixture(scope="module")
def go_tool() -> Path:
    if not os.access(GO_TOOL, os.X_OK):
        reason = f"the Go builder-tool is not at {GO_TOOL}"
        if os.environ.get("IMAGINATOR_REQUIRE_PEERS") == "1":
            pytest.fail(reason + " (IMAGINATOR_REQUIRE_PEERS=1)")
        pytest.skip(reason)
    return GO_TOOL


def run_go(tool: Path, *argv: str, home: Path) -> tuple[int, str]:
    result = subprocess.run(
        [str(tool), *argv],
        capture_output=True,
        env={"HOME": str(home), "PATH": "/usr/bin:/bin"},
        cwd=home,
        timeout=30,
        check=False,
    )
    return result.returncode, result.stderr.decode("utf-8", "replace")


# The Go tool's flags of each kind (the Go tool has an int flag; ours has none).
SPECS = FlagSet(
    [
        FlagSpec("imaginatorPortNum", "uint", "6975", ""),
        FlagSpec("logDebugLevel", "int", "-1", ""),
        FlagSpec("expiresIn", "duration", "1h", ""),
        FlagSpec("showFetchLog", "bool", "false", ""),
        FlagSpec("rawSize", "size", "0", ""),
        FlagSpec("imageFilename", "string", "", ""),
    ]
)

COMMAND_LINES = [
    ["-imaginatorPortNum=7"],
    ["-imaginatorPortNum", "7"],
    ["--imaginatorPortNum=7"],
    ["--imaginatorPortNum", "7"],
    ["-imaginatorPortNum=0x1F"],
    ["-imaginatorPortNum=017"],
    ["-imaginatorPortNum=0b101"],
    ["-imaginatorPortNum=1_000"],
    ["-imaginatorPortNum=1__0"],
    ["-imaginatorPortNum=_1"],
    ["-imaginatorPortNum=08"],
    ["-imaginatorPortNum=abc"],
    ["-imaginatorPortNum=-1"],
    ["-imaginatorPortNum=+1"],
    ["-imaginatorPortNum=18446744073709551615"],
    ["-imaginatorPortNum=18446744073709551616"],
    ["-imaginatorPortNum="],
    ["-logDebugLevel=-5"],
    ["-logDebugLevel=+5"],
    ["-logDebugLevel=-0x10"],
    ["-logDebugLevel=9223372036854775808"],
    ["-logDebugLevel=-9223372036854775808"],
    ["-logDebugLevel=1e3"],
    ["-expiresIn=5400s"],
    ["-expiresIn=1h30m"],  # (Go refuses a positive expiry under 5m before the command)
    ["-expiresIn=1.5h"],
    ["-expiresIn=-5m"],
    ["-expiresIn=0"],
    ["-expiresIn=5"],
    ["-expiresIn=1d"],
    ["-expiresIn=.s"],
    ["-expiresIn=600.s"],
    ["-expiresIn"],
    ["-showFetchLog"],
    ["-showFetchLog=T"],
    ["-showFetchLog=False"],
    ["-showFetchLog=0"],
    ["-showFetchLog=yes"],
    ["-showFetchLog=tRue"],
    ["-showFetchLog", "false"],
    ["-rawSize=100MiB"],
    ["-rawSize=1G"],
    ["-rawSize=4096"],
    ["-rawSize=lots"],
    ["-rawSize=-1"],
    ["-imageFilename=a=b"],
    ["-imageFilename", "-showFetchLog"],
    ["-nope"],
    ["---x"],
    ["-=x"],
    ["--=x"],
    ["-", "-nope"],
    ["--", "-nope"],
    ["x", "-nope"],
]


def first_problem(argv: list[str]) -> str:
    """Our message for ``argv`` up to the reason; empty if every flag is good."""
    try:
        SPECS.parse(argv)
    except FlagError as exc:
        text = str(exc)
        match = re.match(r'(invalid (boolean )?value ".*" for (flag )?-\w+): ', text)
        return match.group(1) if match else text
    return ""


@pytest.mark.parametrize("argv", COMMAND_LINES, ids=" ".join)
def test_the_same_command_lines_are_refused_as_by_go(go_tool, tmp_path, argv):
    code, err = run_go(go_tool, *argv, "no-such-command", home=tmp_path)
    assert code == 2, err
    go_line = err.splitlines()[0]
    if go_line.startswith("Usage: "):
        go_problem = ""
    else:
        match = re.match(r'(invalid (boolean )?value ".*" for (flag )?-\w+): ', go_line)
        go_problem = match.group(1) if match else go_line
    assert first_problem([*argv, "no-such-command"]) == go_problem


def test_help_prints_shared_flags_exactly_as_go(go_tool, tmp_path):
    code, go_usage = run_go(go_tool, "-h", home=tmp_path)
    assert code == 0

    def entries(text: str) -> dict[str, str]:
        found = re.findall(r"^(  -(\w+).*\n    \t.*)$", text, re.MULTILINE)
        return {name: entry for entry, name in found}

    def help_of(entry: str) -> str:
        return re.sub(r" \(default .*\)$", "", entry.split("\t", 1)[1])

    ours = entries(usage_text({"HOME": str(tmp_path)}))
    theirs = entries(go_usage)
    alike = [
        name for name in ours if name in theirs and help_of(ours[name]) == help_of(theirs[name])
    ]
    # Booleans, strings (quoted, with $HOME), uints, durations, sizes and lists.
    for name in ("alwaysShowBuildLog", "certDirectory", "imaginatorPortNum", "expiresIn"):
        assert name in alike
    for name in ("rawSize", "bindMounts", "disableFor", "version", "imaginatorHostname"):
        assert name in alike
    for name in alike:
        assert ours[name] == theirs[name]
