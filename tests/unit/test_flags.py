import pytest

from imaginator.flags import (
    FLAGS_BY_NAME,
    FlagError,
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
        (["-h"], ["--help"]),
        (["-help"], ["--help"]),
        (["-stateDir=/x", "--", "-portNum=1"], ["--stateDir=/x", "--", "-portNum=1"]),
    ],
)
def test_go_style_arguments_are_normalised(argv, expected):
    assert normalise_argv(argv) == expected


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-noSuchFlag=1"], "flag provided but not defined: -noSuchFlag"),
        (["-portNum"], "flag needs an argument: -portNum"),
        (["-portNum=abc"], "invalid value 'abc' for flag -portNum"),
        (["-imageRebuildInterval=soon"], "invalid value 'soon' for flag -imageRebuildInterval"),
        (["-buildLogQuota=lots"], "invalid value 'lots' for flag -buildLogQuota"),
    ],
)
def test_bad_arguments_are_refused_with_the_flag_named(argv, message):
    with pytest.raises(FlagError, match=message):
        normalise_argv(argv)


def test_flag_values_use_go_syntax():
    assert FLAGS_BY_NAME["imageRebuildInterval"].parse("1h30m") == 5400
    assert FLAGS_BY_NAME["maximumBuildDuration"].parse("90s") == 90
    assert FLAGS_BY_NAME["buildLogQuota"].parse("100MiB") == 100 << 20
    assert FLAGS_BY_NAME["portNum"].parse("6975") == 6975


def test_defaults_match_the_go_imaginator():
    assert FLAGS_BY_NAME["portNum"].default == "6975"
    assert FLAGS_BY_NAME["configurationUrl"].default == "file:///etc/imaginator/conf.json"
    assert FLAGS_BY_NAME["stateDir"].default == "/var/lib/imaginator"
    assert FLAGS_BY_NAME["imageServerHostname"].default == ""
    assert FLAGS_BY_NAME["buildLogDir"].default == "/var/log/imaginator/builds"


def test_help_lists_every_flag_with_its_default():
    text = help_text()
    for name, flag in FLAGS_BY_NAME.items():
        assert f"-{name}" in text
        if flag.default:
            assert repr(flag.default) in text


def test_flag_file_lines():
    text = "# comment\n; also comment\n\nportNum = 7000\n  stateDir=/srv/state  \n"
    assert parse_flag_file(text, "flags.default") == ["--portNum=7000", "--stateDir=/srv/state"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("portNum\n", "flags.extra: line 1: expected name = value"),
        ("port Num = 1\n", "flags.extra: line 1: expected name = value"),
        ("\nbogus = 1\n", "flags.extra: line 2: flag provided but not defined: -bogus"),
        ("portNum = x\n", "flags.extra: line 1: invalid value 'x' for flag -portNum"),
    ],
)
def test_bad_flag_file_lines(text, message):
    with pytest.raises(FlagError, match=message):
        parse_flag_file(text, "flags.extra")
