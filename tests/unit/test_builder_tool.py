"""``builder-tool``: flags, usage and exit codes (``builder_tool``), certificate
choice, and the remote commands' requests and output against a fake SRPC client
(``builder_remote``)."""

from __future__ import annotations

import base64
import datetime
import io
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure

from imaginator.goformats.units import HOUR, MINUTE, SECOND
from imaginator.srpc.framing import SrpcConnectionError, SrpcError
from imaginator.tools import builder_tool
from imaginator.tools.builder_common import END_BANNER, START_BANNER, Io
from imaginator.tools.builder_remote import find_client_certs
from imaginator.tools.builder_tool import (
    FlagError,
    HelpRequested,
    default_values,
    parse_flag_file,
    parse_flags,
    usage_text,
)
from imaginator.tools.certs import make_ca, make_user_cert

# ------------------------------------------------------------------ helpers


class FakeClient:
    """Records calls; answers from ``replies`` (method → reply, or an exception)."""

    def __init__(self, replies: dict[str, Any] | None = None, stream: list | None = None):
        self.replies = replies or {}
        self.stream = stream or []
        self.calls: list[tuple[str, Any]] = []
        self.closed = False
        self.stderr_seen: list[bytes] = []
        self.stderr: io.BytesIO | None = None

    async def call(self, method: str, request: Any) -> Any:
        self.calls.append((method, request))
        reply = self.replies.get(method, {"Error": ""})
        if isinstance(reply, Exception):
            raise reply
        return reply

    async def call_stream(self, method, request, on_message, done=None) -> Any:
        self.calls.append((method, request))
        for message in self.stream:
            if isinstance(message, Exception):
                raise message
            on_message(message)
            if self.stderr is not None:
                self.stderr_seen.append(self.stderr.getvalue())
        return self.stream[-1]

    def close(self) -> Deferred[None]:
        self.closed = True
        return succeed(None)


def drive(work: Callable[[Any], Any]) -> int:
    """Run the tool's coroutine to completion without a reactor (the fakes never wait)."""
    results: list[Any] = []
    Deferred.fromCoroutine(work(None)).addBoth(results.append)
    assert results, "the command waited for something"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


class Tool:
    """``builder-tool`` run in-process with a fake dialer; captures the output."""

    def __init__(self, tmp_path: Path, client: FakeClient | None = None) -> None:
        self.tmp_path = tmp_path
        self.client = client or FakeClient()
        self.dials: list[dict[str, Any]] = []
        self.dial_error: Exception | None = None
        self.environ = {"HOME": str(tmp_path / "home"), "LANG": "C.UTF-8"}

    async def _dial(self, reactor, host, port, **kwargs):
        self.dials.append({"host": host, "port": port, **kwargs})
        if self.dial_error is not None:
            raise self.dial_error
        return self.client

    def __call__(self, *argv: str) -> tuple[int, str, str]:
        out, err = io.BytesIO(), io.BytesIO()
        self.client.stderr = err
        code = builder_tool.run(
            list(argv),
            Io(out, err),
            environ=self.environ,
            flag_dirs=(),
            dial=self._dial,
            run_async=drive,
        )
        return code, out.getvalue().decode(), err.getvalue().decode()


@pytest.fixture
def tool(tmp_path):
    return Tool(tmp_path)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def log_message(text: str) -> dict[str, Any]:
    return {
        "Image": None,
        "ImageName": "",
        "BuildLog": b64(text.encode()),
        "ErrorString": "",
        "NeedSourceImage": False,
        "SourceImage": "",
        "SourceImageBuildVariables": None,
        "SourceImageGitCommitId": "",
    }


def final_message(name: str = "", error: str = "", image: Any = None) -> dict[str, Any]:
    message = log_message("")
    message.update(BuildLog=None, ImageName=name, ErrorString=error, Image=image)
    return message


# ------------------------------------------------------------------ flags


@pytest.mark.parametrize(
    "argv",
    [
        ["-expiresIn=2h", "cmd"],
        ["-expiresIn", "2h", "cmd"],
        ["--expiresIn=2h", "cmd"],
        ["--expiresIn", "2h", "cmd"],
        ["cmd", "-expiresIn=2h"],
    ],
)
def test_go_style_flags(argv):
    values = default_values({"HOME": "/home/u"})
    assert parse_flags(argv, values).args == ["cmd"]
    assert values["expiresIn"] == 2 * HOUR


def test_defaults():
    values = default_values({"HOME": "/home/u"})
    assert values["certDirectory"] == "/home/u/.ssl"
    assert values["disableFor"] == 5 * MINUTE
    assert values["expiresIn"] == HOUR
    assert values["maxSourceAge"] == HOUR
    assert values["maximumBuildDuration"] == 24 * HOUR
    assert values["imaginatorHostname"] == "localhost"
    assert values["imaginatorPortNum"] == 6975
    assert values["imageServerPortNum"] == 6971
    assert values["imageServerHostname"] == ""
    assert values["stateDir"] == "/var/lib/imaginator"
    assert values["srpcDefaultConnectTimeout"] == 15 * SECOND
    assert values["alwaysShowBuildLog"] is False
    assert values["bindMounts"] == ()
    assert values["rawSize"] == 0
    assert values["version"] is False


def test_bools_lists_and_positional_arguments():
    values = default_values({})
    parsed = parse_flags(
        [
            "-alwaysShowBuildLog",
            "-showFetchLog=false",
            "-digraphExcludes=a,b/c",
            "-bindMounts",
            "/x,/y",
            "-rawSize=8GiB",
            "build-image",
            "some/stream",
            "--",
            "-not-a-flag",
        ],
        values,
    )
    assert parsed.args == ["build-image", "some/stream", "-not-a-flag"]
    assert values["alwaysShowBuildLog"] is True
    assert values["showFetchLog"] is False
    assert values["digraphExcludes"] == ("a", "b/c")
    assert values["bindMounts"] == ("/x", "/y")
    assert values["rawSize"] == 8 << 30


def test_a_bare_bool_does_not_take_the_next_argument():
    values = default_values({})
    parsed = parse_flags(["-alwaysShowBuildLog", "false", "build-image", "s"], values)
    assert values["alwaysShowBuildLog"] is True
    assert parsed.args == ["false", "build-image", "s"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-nope"], "flag provided but not defined: -nope"),
        (["-expiresIn"], "flag needs an argument: -expiresIn"),
        (
            ["-expiresIn=soon"],
            'invalid value "soon" for flag -expiresIn: want a duration such as 90s, 1h30m or 0'
            " (units: ns, us, ms, s, m, h)",
        ),
        (
            ["-imaginatorPortNum=-1"],
            'invalid value "-1" for flag -imaginatorPortNum: want a non-negative integer',
        ),
        (
            ["-imaginatorPortNum=x"],
            'invalid value "x" for flag -imaginatorPortNum: want an integer',
        ),
        (
            ["-rawSize=lots"],
            'invalid value "lots" for flag -rawSize: want a size such as 4096, 100MiB, 1G or 500MB',
        ),
        (
            ["-showFetchLog=maybe"],
            'invalid boolean value "maybe" for -showFetchLog: want true or false',
        ),
        (["---x"], "bad flag syntax: ---x"),
        (["-=x"], "bad flag syntax: -=x"),
    ],
)
def test_flag_errors(argv, message):
    with pytest.raises(FlagError) as caught:
        parse_flags(argv, default_values({}))
    assert str(caught.value) == message


@pytest.mark.parametrize("argv", [["-h"], ["-help"], ["get-digraph", "--help=x"]])
def test_help_flags(argv):
    with pytest.raises(HelpRequested):
        parse_flags(argv, default_values({}))


def test_flag_files_system_warns_home_fails_command_line_wins(tmp_path):
    system = tmp_path / "etc"
    system.mkdir()
    (system / "flags.default").write_text("# comment\n; other\n\nexpiresIn = 3h\nbogus=1\n")
    home = tmp_path / "home"
    home.mkdir()
    (home / "flags.default").write_text("imaginatorPortNum=7000\nexpiresIn=4h\n")
    (home / "flags.extra").write_text("imaginatorHostname = buildhost\n")
    client = FakeClient({"Imaginator.GetDependencies": {"Error": ""}})
    tool = Tool(tmp_path, client)
    out, err = io.BytesIO(), io.BytesIO()
    code = builder_tool.run(
        ["-imaginatorPortNum", "7001", "get-dependencies"],
        Io(out, err),
        environ={"HOME": str(tmp_path)},
        flag_dirs=((str(system), False), (str(home), True)),
        dial=tool._dial,
        run_async=drive,
    )
    assert code == 0
    assert err.getvalue().decode() == f"Warning: {system}/flags.default: no such flag -bogus\n"
    assert tool.dials[0]["host"] == "buildhost" and tool.dials[0]["port"] == 7001

    (home / "flags.extra").write_text("expiresIn\n")
    err = io.BytesIO()
    code = builder_tool.run(
        ["get-dependencies"],
        Io(io.BytesIO(), err),
        environ={},
        flag_dirs=((str(home), True),),
        dial=tool._dial,
        run_async=drive,
    )
    assert code == 1
    assert err.getvalue().decode() == (
        f"{home}/flags.extra: bad line, cannot split name from value: expiresIn\n"
    )


def test_flag_file_values_are_checked():
    values = default_values({})
    with pytest.raises(FlagError, match=r"^f: invalid value \"x\" for flag -disableFor"):
        parse_flag_file("disableFor=x\n", "f", values)
    parse_flag_file("  disableFor =  10m \n", "f", values)
    assert values["disableFor"] == 10 * MINUTE


# ------------------------------------------------------------------ usage and exit codes


def test_no_command_is_usage_and_3(tool):
    code, out, err = tool()
    assert (code, out) == (3, "")
    assert err.startswith("Usage: builder-tool [flags...] command [args...]\nCommon flags:\n")
    assert "  -expiresIn duration\n    \tHow long before the image expires" in err
    assert "(default 1h0m0s)" in err
    assert '(default "localhost")' in err
    assert err.endswith("  replace-idle-slaves\n  start-auto-builds\n")
    assert "  build-image stream-name [git-branch]\n" in err
    assert "  process-manifest manifestDir rootDir\n" in err
    home = tool.environ["HOME"]
    certs = "Name of directory containing user SSL certificates"
    assert f'  -certDirectory string\n    \t{certs} (default "{home}/.ssl")\n' in err
    assert (
        "  -alwaysShowBuildLog\n    \tIf true, show build log even for successful builds\n" in err
    )
    assert "  -rawSize value\n    \tSize of RAW file to create\n" in err
    assert "  -version\n    \tPrint version information and exit\n" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["build-imag", "x"], 'unknown command "build-imag"'),
        (["frobnicate"], 'unknown command "frobnicate"'),
        (["-"], 'unknown command "-"'),
        (
            ["-alwaysShowBuildLog", "false", "build-image", "s"],
            'unknown command "false" (a boolean flag takes its value as -alwaysShowBuildLog=false)',
        ),
        (["build-image"], "build-image wants stream-name [git-branch], got no arguments"),
        (
            ["build-image", "a", "b", "c"],
            'build-image wants stream-name [git-branch], got "a" "b" "c"',
        ),
        (["get-dependencies", "extra"], 'get-dependencies wants no arguments, got "extra"'),
        (
            ["process-manifest", "only-one"],
            'process-manifest wants manifestDir rootDir, got "only-one"',
        ),
        (
            ["build-from-manifest", "dir"],
            'build-from-manifest wants manifestDir stream-name, got "dir"',
        ),
        (
            ["build-tree-from-manifest"],
            "build-tree-from-manifest wants manifestDir, got no arguments",
        ),
    ],
)
def test_unknown_command_or_wrong_arguments_is_one_line_and_2(tool, argv, message):
    code, out, err = tool(*argv)
    assert (code, out) == (2, "")
    assert err == f"builder-tool: {message}; see builder-tool -h\n"
    assert tool.dials == []


def test_a_usage_error_comes_before_the_certificates(tmp_path):
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")
    code, _out, err = Tool(tmp_path)(f"-certDirectory={not_a_directory}", "build-imag")
    assert (code, err) == (2, 'builder-tool: unknown command "build-imag"; see builder-tool -h\n')


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-frob", "get-dependencies"], "flag provided but not defined: -frob"),
        (
            ["-imaginatorPortNum=abc", "get-digraph"],
            'invalid value "abc" for flag -imaginatorPortNum: want an integer',
        ),
        (["get-digraph", "-disableFor"], "flag needs an argument: -disableFor"),
    ],
)
def test_bad_flag_is_one_line_and_2(tool, argv, message):
    code, out, err = tool(*argv)
    assert (code, out) == (2, "")
    assert err == f"builder-tool: {message}; see builder-tool -h\n"


def test_help_and_version(tool):
    code, out, err = tool("-h")
    assert (code, out) == (0, "")
    assert err == usage_text(tool.environ)
    assert err.startswith("Usage: builder-tool")
    code, out, err = tool("-version", "get-dependencies")
    assert (code, err) == (0, "")
    assert out.startswith("builder-tool ")
    # As in Go, -version is looked at once every flag has parsed.
    code, out, err = tool("-version", "-nope")
    assert (code, out) == (2, "")
    assert err == "builder-tool: flag provided but not defined: -nope; see builder-tool -h\n"


@pytest.mark.parametrize("expires", ["1m", "4m59s", "1ns"])
def test_minimum_expiration(tool, expires):
    code, out, err = tool(f"-expiresIn={expires}", "build-image", "s")
    assert (code, out, err) == (2, "", "Minimum expiration: 5m0s\n")
    assert tool.dials == []


def test_zero_and_long_expirations_are_sent(tool):
    tool.client.stream = [final_message("s/2026-01-01:00:00:00")]
    assert tool("-expiresIn=0", "build-image", "s")[0] == 0
    assert tool("-expiresIn=5m", "build-image", "s")[0] == 0
    assert [request["ExpiresIn"] for _m, request in tool.client.calls] == [0, 5 * MINUTE]


def test_lang_is_unset_for_commands(tool):
    tool("get-dependencies")
    assert "LANG" not in tool.environ


# ------------------------------------------------------------------ certificates


@pytest.fixture(scope="module")
def ca():
    return make_ca("test CA")


def write_pair(directory: Path, stem: str, ca, name: str, **kw):
    """``<stem>.cert`` and ``<stem>.key``, or ``cert.pem`` and ``key.pem`` for stem ``pem``."""
    cert, key = make_user_cert(*ca, name, **kw)
    directory.mkdir(parents=True, exist_ok=True)
    names = ("cert.pem", "key.pem") if stem == "pem" else (f"{stem}.cert", f"{stem}.key")
    (directory / names[0]).write_bytes(cert)
    (directory / names[1]).write_bytes(key)
    return cert, key


def test_certificates_sorted_admin_then_methods_then_lifetime(tmp_path, ca):
    d = tmp_path / "ssl"
    write_pair(d, "aa-plain", ca, "plain", days=30)
    write_pair(d, "ab-plain-long", ca, "plainlong", days=900)
    write_pair(d, "b-two", ca, "two", methods=["Imaginator.BuildImage", "X.Y"], days=10)
    write_pair(d, "c-three", ca, "three", methods=["A.B", "C.D", "E.F"], days=10)
    write_pair(d, "d-admin", ca, "admin", methods=["*.*"], days=1)
    write_pair(d, "pem", ca, "pem", methods=["Imaginator.*"], days=5)
    # Unusable: expired, not yet valid, mismatched key, key without certificate.
    now = datetime.datetime.now(datetime.UTC)
    write_pair(
        d,
        "e-expired",
        ca,
        "expired",
        methods=["*.*", "A.B"],
        not_before=now - datetime.timedelta(days=10),
        not_after=now - datetime.timedelta(days=1),
    )
    write_pair(
        d,
        "f-future",
        ca,
        "future",
        methods=["*.*"],
        not_before=now + datetime.timedelta(days=1),
        not_after=now + datetime.timedelta(days=10),
    )
    _cert, other_key = make_user_cert(*ca, "other")
    write_pair(d, "g-mismatch", ca, "mismatch", methods=["*.*"])
    (d / "g-mismatch.key").write_bytes(other_key)
    (d / "h-orphan.key").write_bytes(other_key)
    (d / "README").write_text("not a certificate")

    certs = find_client_certs(str(d))
    assert [cert.username for cert in certs] == [
        "admin",
        "three",
        "two",
        "pem",
        "plainlong",
        "plain",
    ]
    assert certs[0].cert_file == str(d / "d-admin.cert")
    assert certs[0].key_file == str(d / "d-admin.key")
    assert certs[3].cert_file == str(d / "cert.pem")


def test_key_pem_without_cert_pem_and_missing_directory(tmp_path, ca):
    d = tmp_path / "ssl"
    _cert, key = make_user_cert(*ca, "x")
    d.mkdir()
    (d / "key.pem").write_bytes(key)
    assert find_client_certs(str(d)) == []
    assert find_client_certs(str(tmp_path / "missing")) == []


def test_best_certificate_is_presented(tmp_path, ca):
    d = tmp_path / "ssl"
    write_pair(d, "user", ca, "user", days=30)
    write_pair(d, "ops", ca, "ops", methods=["Imaginator.*"], days=30)
    tool = Tool(tmp_path)
    assert tool(f"-certDirectory={d}", "get-dependencies")[0] == 0
    cert = tool.dials[0]["cert"]
    assert (cert.username, cert.cert_file) == ("ops", str(d / "ops.cert"))


def test_no_certificate_means_plain(tmp_path):
    tool = Tool(tmp_path)
    assert tool(f"-certDirectory={tmp_path / 'none'}", "get-dependencies")[0] == 0
    assert tool.dials[0]["cert"] is None
    assert tool.dials[0]["method_powers"] is True
    assert tool.dials[0]["timeout"] == 15.0


def test_unreadable_certificate_directory_fails_with_1(tmp_path):
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")
    tool = Tool(tmp_path)
    code, _out, err = tool(f"-certDirectory={not_a_directory}", "get-dependencies")
    assert code == 1
    assert err == f"open {not_a_directory}: not a directory\n"
    assert tool.dials == []


def test_srpc_client_flags_reach_the_dialer(tool):
    tool("-srpcClientDoNotUseMethodPowers", "-srpcDefaultConnectTimeout=2s", "get-dependencies")
    assert tool.dials[0]["method_powers"] is False
    assert tool.dials[0]["timeout"] == 2.0


# ------------------------------------------------------------------ dialing


def test_dial_failure(tool):
    tool.dial_error = SrpcConnectionError("missing certificate")
    code, out, err = tool("-imaginatorHostname=builder", "-imaginatorPortNum=7", "get-digraph")
    assert (code, out) == (1, "")
    assert err == "Error dialing: builder:7: missing certificate\n"


def test_dial_refused_in_go_words(tool):
    from twisted.internet.error import ConnectionRefusedError

    error = SrpcConnectionError("cannot connect to localhost:6975: refused")
    error.__cause__ = ConnectionRefusedError()
    tool.dial_error = error
    _code, _out, err = tool("start-auto-builds")
    assert (
        err
        == "Error dialing: localhost:6975: dial tcp localhost:6975: connect: connection refused\n"
    )


# ------------------------------------------------------------------ build-image


def test_build_image_request_streaming_and_name(tmp_path):
    variables = tmp_path / "vars.json"
    variables.write_text('# secrets\n{\n  // the flavour\n  "FLAVOUR": "small"\n}\n')
    client = FakeClient(
        stream=[
            log_message("Building: a/b for: alice\n"),
            log_message("step one\n"),
            log_message("Uploaded a/b/2026-01-01:00:00:00\n"),
            final_message("a/b/2026-01-01:00:00:00"),
        ]
    )
    tool = Tool(tmp_path, client)
    code, out, err = tool(
        f"-variablesFilename={variables}",
        "-maxSourceAge=30m",
        "build-image",
        "a/b",
        "feature",
    )
    assert (code, out) == (0, "a/b/2026-01-01:00:00:00\n")
    assert err == "Building: a/b for: alice\nstep one\nUploaded a/b/2026-01-01:00:00:00\n"
    # Each chunk is on standard error as soon as its message arrived.
    assert client.stderr_seen == [
        b"Building: a/b for: alice\n",
        b"Building: a/b for: alice\nstep one\n",
        err.encode(),
        err.encode(),
    ]
    method, request = client.calls[0]
    assert method == "Imaginator.BuildImage"
    assert list(request.items()) == [
        ("DisableRecursiveBuild", False),
        ("ExpiresIn", HOUR),
        ("GitBranch", "feature"),
        ("MaxSourceAge", 30 * MINUTE),
        ("MaximumBuildDuration", 24 * HOUR),
        ("ReturnImage", False),
        ("StreamBuildLog", True),
        ("StreamName", "a/b"),
        ("Variables", {"FLAVOUR": "small"}),
    ]
    assert client.closed


def test_build_image_defaults_send_null_variables(tool):
    tool.client.stream = [final_message("s/2026-01-01:00:00:00")]
    tool("build-image", "s")
    request = tool.client.calls[0][1]
    assert request["GitBranch"] == "" and request["Variables"] is None


def test_build_image_failure(tool):
    tool.client.stream = [log_message("compiling\n"), final_message(error="exit status 1")]
    code, out, err = tool("build-image", "s")
    assert (code, out) == (1, "")
    assert err == f"compiling\n{END_BANNER}\nerror building image: exit status 1\n"


def test_build_image_refused_without_a_log_has_no_end_banner(tool):
    tool.client.stream = [final_message(error="unknown stream: no/such")]
    code, out, err = tool("build-image", "no/such")
    assert (code, out, err) == (1, "", "error building image: unknown stream: no/such\n")
    # An empty log chunk is not a log.
    tool.client.stream = [log_message(""), final_message(error="unknown stream: no/such")]
    assert tool("build-image", "no/such") == (1, "", err)
    # With -alwaysShowBuildLog the start banner was printed: the end closes it.
    code, out, err = tool("-alwaysShowBuildLog", "build-image", "no/such")
    assert err == f"{START_BANNER}\n{END_BANNER}\nerror building image: unknown stream: no/such\n"


def test_build_image_always_show_build_log_banners(tool):
    tool.client.stream = [log_message("hello\n"), final_message("s/2026-01-01:00:00:00")]
    code, out, err = tool("-alwaysShowBuildLog", "build-image", "s")
    assert (code, out) == (0, "s/2026-01-01:00:00:00\n")
    assert err == f"{START_BANNER}\nhello\n{END_BANNER}\n"
    tool.client.stream = [log_message("hello\n"), final_message(error="bad")]
    code, out, err = tool("-alwaysShowBuildLog", "build-image", "s")
    assert (code, out) == (1, "")
    assert err == f"{START_BANNER}\nhello\n{END_BANNER}\nerror building image: bad\n"


def test_build_image_refused_call_and_lost_connection(tool):
    tool.client.stream = [SrpcError("access to method denied")]
    code, _out, err = tool("build-image", "s")
    assert code == 1
    assert err == "error building image: access to method denied\n"
    tool.client.stream = [log_message("half\n"), SrpcConnectionError("connection lost")]
    code, _out, err = tool("build-image", "s")
    assert code == 1
    assert err == f"half\n{END_BANNER}\nerror building image: connection lost\n"


def test_build_image_bad_variables_file(tool, tmp_path):
    code, _out, err = tool(f"-variablesFilename={tmp_path / 'nope.json'}", "build-image", "s")
    assert code == 1
    assert (
        err == f"error building image: open {tmp_path / 'nope.json'}: no such file or directory\n"
    )
    (tmp_path / "list.json").write_text("[1]")
    code, _out, err = tool(f"-variablesFilename={tmp_path / 'list.json'}", "build-image", "s")
    assert (
        err
        == f"error building image: {tmp_path / 'list.json'}: expected a JSON object of strings\n"
    )
    assert tool.dials == []


def test_build_image_to_file(tool, tmp_path):
    target = tmp_path / "image.json"
    tool.client.stream = [final_message(image={"CreatedBy": "imaginator"})]
    code, out, _err = tool(f"-imageFilename={target}", "build-image", "s")
    assert (code, out) == (0, "")
    assert json.loads(target.read_text()) == {"CreatedBy": "imaginator"}
    assert tool.client.calls[0][1]["ReturnImage"] is True
    tool.client.stream = [final_message("s/2026-01-01:00:00:00")]
    code, _out, err = tool(f"-imageFilename={target}", "build-image", "s")
    assert code == 1
    assert err == (
        "error building image: image: s/2026-01-01:00:00:00 uploaded, not returned: "
        "upgrade the Imaginator\n"
    )


# ------------------------------------------------------------------ the other remote commands

DEPENDENCIES = {
    "FetchLog": b64(b"fetched\n"),
    "GeneratedAt": "2026-01-02T03:04:05.5Z",
    "LastAttemptAt": "2026-01-02T03:04:05.5Z",
    "LastAttemptError": "",
    "StreamToSource": {"b/x": "a", "a/<y>": "bootstrap/bb"},
    "UnbuildableSources": {"gone": {}},
    "Error": "",
}


def test_get_dependencies_output(tool):
    tool.client.replies["Imaginator.GetDependencies"] = DEPENDENCIES
    code, out, err = tool("get-dependencies")
    assert (code, err) == (0, "")
    assert tool.client.calls == [("Imaginator.GetDependencies", {"MaxAge": 0})]
    assert out == (
        "{\n"
        '    "FetchLog": "ZmV0Y2hlZAo=",\n'
        '    "GeneratedAt": "2026-01-02T03:04:05.5Z",\n'
        '    "LastAttemptAt": "2026-01-02T03:04:05.5Z",\n'
        '    "LastAttemptError": "",\n'
        '    "StreamToSource": {\n'
        '        "a/\\u003cy\\u003e": "bootstrap/bb",\n'
        '        "b/x": "a"\n'
        "    },\n"
        '    "UnbuildableSources": {\n'
        '        "gone": {}\n'
        "    }\n"
        "}\n"
    )


def test_get_dependencies_before_first_computation(tool):
    tool.client.replies["Imaginator.GetDependencies"] = {"Error": ""}
    _code, out, _err = tool("get-dependencies")
    assert json.loads(out) == {
        "FetchLog": None,
        "GeneratedAt": "0001-01-01T00:00:00Z",
        "LastAttemptAt": "0001-01-01T00:00:00Z",
        "LastAttemptError": "",
        "StreamToSource": None,
        "UnbuildableSources": None,
    }


def test_get_digraph(tool):
    reply = {"FetchLog": b64(b"fetch log\n"), "GraphvizDot": b64(b"digraph all {\n}"), "Error": ""}
    tool.client.replies["Imaginator.GetDirectedGraph"] = reply
    code, out, err = tool("-digraphExcludes=a,b", "get-digraph")
    assert (code, out, err) == (0, "digraph all {\n}\n", "")
    assert tool.client.calls[0] == (
        "Imaginator.GetDirectedGraph",
        {"Excludes": ["a", "b"], "Includes": None, "MaxAge": 0},
    )
    reply["GraphvizDot"] = b64(b"digraph all {\n}\n")
    code, out, err = tool("-showFetchLog", "-digraphIncludes=c", "get-digraph")
    assert (code, out, err) == (0, "digraph all {\n}\n", "fetch log\n")
    assert tool.client.calls[1][1] == {"Excludes": None, "Includes": ["c"], "MaxAge": 0}


@pytest.mark.parametrize(
    ("argv", "method", "request_body", "prefix"),
    [
        (
            ["disable-auto-builds"],
            "Imaginator.DisableAutoBuilds",
            {"DisableFor": 5 * MINUTE},
            "error disabling auto builds",
        ),
        (
            ["-disableFor=30m", "disable-build-requests"],
            "Imaginator.DisableBuildRequests",
            {"DisableFor": 30 * MINUTE},
            "error disabling build requests",
        ),
        (
            ["-disableFor=30m", "enable-build-requests"],
            "Imaginator.DisableBuildRequests",
            {"DisableFor": 0},
            "error enabling build requests",
        ),
        (
            ["replace-idle-slaves"],
            "Imaginator.ReplaceIdleSlaves",
            {"ImmediateGetNew": True},
            "error replacing idle slaves",
        ),
        (
            ["-waitForAutoRebuilds", "start-auto-builds"],
            "Imaginator.StartAutoBuilds",
            {"WaitForComplete": True, "WaitToStart": False},
            "error starting auto builds",
        ),
        (
            ["start-auto-builds", "-waitToStartAutoRebuilds"],
            "Imaginator.StartAutoBuilds",
            {"WaitForComplete": False, "WaitToStart": True},
            "error starting auto builds",
        ),
        (
            ["get-dependencies"],
            "Imaginator.GetDependencies",
            {"MaxAge": 0},
            "error getting dependencies",
        ),
        (
            ["get-digraph"],
            "Imaginator.GetDirectedGraph",
            {"Excludes": None, "Includes": None, "MaxAge": 0},
            "error getting directed graph",
        ),
    ],
)
def test_request_reply_commands(tmp_path, argv, method, request_body, prefix):
    tool = Tool(tmp_path, FakeClient({method: {"DisabledUntil": "2026-01-01T00:00:00Z"}}))
    code, out, err = tool(*argv)
    assert (code, err) == (0, "")
    assert tool.client.calls == [(method, request_body)]
    if "get-" not in argv[-1]:
        assert out == ""
    tool = Tool(tmp_path, FakeClient({method: {"Error": "no way"}}))
    assert tool(*argv) == (1, "", f"{prefix}: no way\n")
    tool = Tool(tmp_path, FakeClient({method: SrpcError("access to method denied")}))
    assert tool(*argv) == (1, "", f"{prefix}: access to method denied\n")
    assert tool.client.closed


# ------------------------------------------------------------------ local modes (no build)


def test_local_modes_refuse_remote_imageservers(tool, tmp_path):
    code, out, err = tool("-imageServerHostname=imgsrv", "build-tree-from-manifest", str(tmp_path))
    assert (code, out) == (1, "")
    assert (
        err == "error processing manifest: remote imageservers are not supported: use -stateDir\n"
    )
    code, _out, err = tool("-imageServerHostname=imgsrv", "build-from-manifest", "m", "s")
    assert code == 1 and "remote imageservers are not supported: use -stateDir" in err


def test_build_raw_is_not_available(tool):
    code, _out, err = tool("build-raw-from-manifest", "m", "raw")
    assert code == 1
    assert err.startswith("error building RAW image from manifest: ")


def test_console_script_is_declared():
    setup = (Path(__file__).resolve().parents[2] / "setup.cfg").read_text()
    assert "builder-tool = imaginator.tools.builder_tool:main" in setup


def test_module_runs_as_a_script():
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(repo), "HOME": "/nonexistent"}
    result = subprocess.run(
        [sys.executable, "-m", "imaginator.tools.builder_tool"],
        capture_output=True,
        env=env,
        check=False,
        timeout=60,
    )
    assert result.returncode == 3
    assert result.stderr.startswith(b"Usage: builder-tool")
