import pytest

from imaginator.config.main import ConfigError
from imaginator.config.variables import REDACTED, make_redactor, parse_variables


def test_json_object():
    data = b'# secrets\n{"GIT_PASSWORD": "s3cret", "MIRROR": "http://m/debian"}\n'
    assert parse_variables(data, "vars") == {"GIT_PASSWORD": "s3cret", "MIRROR": "http://m/debian"}


def test_name_value_lines():
    data = b"# secrets\nGIT_PASSWORD=s3=cret\n\nEMPTY=\n"
    assert parse_variables(data, "vars") == {"GIT_PASSWORD": "s3=cret", "EMPTY": ""}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"NOEQUALS\n", "vars: line 1: expected NAME=Value"),
        (b"1BAD=x\n", "vars: line 1: expected NAME=Value"),
        (b'{"A": 1}', "vars: A: expected a string value"),
        (b"[1]", "vars: line 1: expected NAME=Value"),
        (b"\xff", "vars: not UTF-8 text"),
    ],
)
def test_bad_variables_files_name_the_file_but_not_the_values(data, message):
    with pytest.raises(ConfigError, match=message):
        parse_variables(data, "vars")


def test_errors_never_contain_values():
    with pytest.raises(ConfigError) as info:
        parse_variables(b"GOOD=hunter2\nbad line hunter2\n", "vars")
    assert "hunter2" not in str(info.value)


def test_redactor_removes_every_value_longest_first():
    redact = make_redactor({"A": "pass", "B": "password", "C": ""})
    assert redact("password pass x") == f"{REDACTED} {REDACTED} x"


def test_redactor_without_secrets_is_identity():
    assert make_redactor({})("text") == "text"
