"""The ``imaginator`` command before twistd: help, flag errors, the root check."""

import pytest

from imaginator import cli


def test_refuses_to_run_unless_root(monkeypatch, capsys):
    monkeypatch.setattr(cli.os, "geteuid", lambda: 1000)
    assert cli.main(["-stateDir=/nonexistent"]) == 1
    assert "Must run the Image Builder as root" in capsys.readouterr().err


def test_help_does_not_need_root(monkeypatch, capsys):
    monkeypatch.setattr(cli.os, "geteuid", lambda: 1000)
    assert cli.main(["-h"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Usage: imaginator [flags...]\n")
    assert "  -stateDir string\n" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-portNum=abc"], 'invalid value "abc" for flag -portNum: want an integer'),
        (["-portNum"], "flag needs an argument: -portNum"),
        (["-portnum=1"], "flag provided but not defined: -portnum"),
        (
            ["-imageRebuildInterval=1d"],
            'invalid value "1d" for flag -imageRebuildInterval: want a duration such as 90s,'
            " 1h30m or 0 (units: ns, us, ms, s, m, h)",
        ),
        (
            ["-buildLogQuota=1XB"],
            'invalid value "1XB" for flag -buildLogQuota: want a size such as 4096, 100MiB,'
            " 1G or 500MB",
        ),
        (["start"], 'unexpected argument "start": imaginator takes only flags'),
    ],
)
def test_a_bad_command_line_is_one_line_and_exit_2(monkeypatch, capsys, argv, message):
    # Checked before the root check: any user gets the same answer.
    monkeypatch.setattr(cli.os, "geteuid", lambda: 1000)
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"imaginator: {message}; see imaginator -h\n"
