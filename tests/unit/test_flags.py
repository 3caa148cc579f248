"""The daemon's flag table and its translation for twistd (``imaginator.flags``)."""

import pytest

from imaginator import tap
from imaginator.flags import (
    FLAGS,
    FLAGS_BY_NAME,
    FlagError,
    HelpRequested,
    error_line,
    help_text,
    normalise_argv,
    parse_flag_file,
)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["-portNum=6976"], ["--portNum=6976"]),
        (["-portNum", "6976"], ["--portNum=6976"]),
        (["--portNum=6976"], ["--portNum=6976"]),
        (["--portNum", "6976"], ["--portNum=6976"]),
        (["-imageRebuildInterval=1h30m"], ["--imageRebuildInterval=1h30m"]),
        (["-buildLogQuota", "10MiB"], ["--buildLogQuota=10MiB"]),
        (["-permitInsecureMode"], ["--permitInsecureMode=true"]),
        (["-permitInsecureMode=false"], ["--permitInsecureMode=false"]),
        (["-stateDir=/x", "--"], ["--stateDir=/x"]),
        (["-srpcTrustedUsers=a,b", "-portNum=1"], ["--srpcTrustedUsers=a,b", "--portNum=1"]),
    ],
)
def test_go_style_arguments_are_normalised(argv, expected):
    assert normalise_argv(argv) == expected


@pytest.mark.parametrize("argv", [["-h"], ["-help"], ["--help"], ["-portNum=1", "-h"]])
def test_help_is_asked_for(argv):
    with pytest.raises(HelpRequested):
        normalise_argv(argv)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-noSuchFlag=1"], "flag provided but not defined: -noSuchFlag"),
        (["-portNum"], "flag needs an argument: -portNum"),
        (["-portNum=abc"], 'invalid value "abc" for flag -portNum: want an integer'),
        (["-portNum=-1"], 'invalid value "-1" for flag -portNum: want a non-negative integer'),
        (
            ["-imageRebuildInterval=soon"],
            'invalid value "soon" for flag -imageRebuildInterval: want a duration such as 90s,'
            " 1h30m or 0 (units: ns, us, ms, s, m, h)",
        ),
        (
            ["-maximumBuildDuration", "5"],
            'invalid value "5" for flag -maximumBuildDuration: want a duration such as 90s,'
            " 1h30m or 0 (units: ns, us, ms, s, m, h)",
        ),
        (
            ["-buildLogQuota=lots"],
            'invalid value "lots" for flag -buildLogQuota: want a size such as 4096, 100MiB,'
            " 1G or 500MB",
        ),
        (
            ["-permitInsecureMode=yes"],
            'invalid boolean value "yes" for -permitInsecureMode: want true or false',
        ),
        (["---portNum=1"], "bad flag syntax: ---portNum=1"),
        (["-stateDir=/x", "extra"], 'unexpected argument "extra": imaginator takes only flags'),
        (["--", "-portNum=1"], 'unexpected argument "-portNum=1": imaginator takes only flags'),
        (
            ["-permitInsecureMode", "false"],
            'unexpected argument "false": imaginator takes only flags'
            " (a boolean flag takes its value as -permitInsecureMode=false)",
        ),
    ],
)
def test_bad_arguments_are_refused_with_the_flag_named(argv, message):
    with pytest.raises(FlagError) as caught:
        normalise_argv(argv)
    assert str(caught.value) == message


def test_the_error_line_names_the_program_and_the_help():
    try:
        normalise_argv(["-portNum=abc"])
    except FlagError as exc:
        line = error_line(exc)
    assert line == (
        'imaginator: invalid value "abc" for flag -portNum: want an integer; see imaginator -h\n'
    )


def test_flag_values_use_go_syntax():
    assert FLAGS_BY_NAME["imageRebuildInterval"].parse("1h30m") == 5400
    assert FLAGS_BY_NAME["maximumBuildDuration"].parse("90s") == 90
    assert FLAGS_BY_NAME["maximumBuildDuration"].parse("1.5ms") == 0.0015
    assert FLAGS_BY_NAME["buildLogQuota"].parse("100MiB") == 100 << 20
    assert FLAGS_BY_NAME["buildLogQuota"].parse("500MB") == 500 * 10**6
    assert FLAGS_BY_NAME["portNum"].parse("6975") == 6975
    assert FLAGS_BY_NAME["portNum"].parse("0x1b3f") == 6975
    assert FLAGS_BY_NAME["permitInsecureMode"].parse("T") is True
    assert FLAGS_BY_NAME["srpcTrustedUsers"].parse("a, b,,c") == ("a", "b", "c")


def test_defaults_match_the_go_imaginator():
    assert FLAGS_BY_NAME["portNum"].default == "6975"
    assert FLAGS_BY_NAME["configurationUrl"].default == "file:///etc/imaginator/conf.json"
    assert FLAGS_BY_NAME["stateDir"].default == "/var/lib/imaginator"
    assert FLAGS_BY_NAME["imageServerHostname"].default == ""
    assert FLAGS_BY_NAME["buildLogDir"].default == "/var/log/imaginator/builds"
    assert FLAGS_BY_NAME["imageRebuildInterval"].value == 3600


def test_twistd_options_get_the_parsed_defaults_and_values():
    """``tap.Options`` is built from ``FLAGS``: defaults and ``--name=value`` parse alike."""
    options = tap.Options()
    options.parseOptions(normalise_argv(["-portNum", "7000", "-imageRebuildInterval=90s"]))
    assert options["portNum"] == 7000
    assert options["imageRebuildInterval"] == 90
    assert options["maximumBuildDuration"] == 24 * 3600
    assert options["buildLogQuota"] == 100 << 20
    assert options["permitInsecureMode"] is False
    assert options["srpcTrustedGroups"] == ()
    assert {flag.name for flag in FLAGS} <= set(options)


def test_help_lists_every_flag_as_go_does():
    text = help_text()
    assert text.startswith("Usage: imaginator [flags...]\nCommon flags:\n  -CAfile string\n")
    for name in FLAGS_BY_NAME:
        assert f"\n  -{name}" in text
    port = "Port number to allocate and listen on for HTTP/RPC"
    assert f"  -portNum uint\n    \t{port} (default 6975)\n" in text
    assert '(default "/var/lib/imaginator")' in text
    assert "(0 disables the timer) (default 1h0m0s)\n" in text
    assert "Log quota for build log archive directory (default 100MiB)\n" in text
    assert "  -permitInsecureMode\n    \tIf true, serve RPC" in text
    # Zero defaults are not shown, as in Go.
    variables = "A JSON file (or NAME=Value lines) of secret variables for expansion"
    assert f"  -variablesFile string\n    \t{variables}\n" in text


def test_flag_file_lines():
    text = "# comment\n; also comment\n\nportNum = 7000\n  stateDir=/srv/state  \n"
    assert parse_flag_file(text, "flags.default") == ["--portNum=7000", "--stateDir=/srv/state"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("portNum\n", "flags.extra: line 1: expected name = value"),
        ("port Num = 1\n", "flags.extra: line 1: expected name = value"),
        ("\nbogus = 1\n", "flags.extra: line 2: flag provided but not defined: -bogus"),
        (
            "portNum = x\n",
            'flags.extra: line 1: invalid value "x" for flag -portNum: want an integer',
        ),
    ],
)
def test_bad_flag_file_lines(text, message):
    with pytest.raises(FlagError, match=message):
        parse_flag_file(text, "flags.extra")
