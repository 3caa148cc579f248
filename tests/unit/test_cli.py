from imaginator import cli


def test_refuses_to_run_unless_root(monkeypatch, capsys):
    monkeypatch.setattr(cli.os, "geteuid", lambda: 1000)
    assert cli.main(["-stateDir=/nonexistent"]) == 1
    assert "Must run the Image Builder as root" in capsys.readouterr().err


def test_help_does_not_need_root(monkeypatch, capsys):
    monkeypatch.setattr(cli.os, "geteuid", lambda: 1000)
    assert cli.main(["-h"]) == 0
    assert "-stateDir string" in capsys.readouterr().out


def test_bad_flag_exits_2(capsys):
    assert cli.main(["-portNum=x"]) == 2
    assert "invalid value 'x' for flag -portNum" in capsys.readouterr().err
