"""Tests for imaginator.config.streams: the image streams document and stream variables."""

from __future__ import annotations

import json

import pytest

from imaginator.config.environment import go_path_base, go_path_dir
from imaginator.config.main import ConfigError
from imaginator.config.streams import (
    StreamConfig,
    StreamsDocument,
    build_variables,
    lookup,
    manifest_location,
    parse_streams,
    public_manifest_location,
    stream_environment,
)
from tests.support.vectors import VECTORS

SRC = "image-streams.json"


def parse(document: object, arch: str = "amd64") -> StreamsDocument:
    return parse_streams(json.dumps(document).encode(), SRC, arch)


# ------------------------------------------------------------------ parsing


def test_reference_vector_parses() -> None:
    path = VECTORS / "config-image-streams.json"
    doc = parse_streams(path.read_bytes(), SRC, "amd64")
    assert sorted(doc.streams) == ["apps/broken", "apps/hello", "test/peer-stream"]
    assert doc.streams["apps/hello"] == StreamConfig(
        manifest_url="dir://<peers>/run/manifests", manifest_directory="hello"
    )
    assert doc.patterns == ()


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({}, StreamConfig()),
        (None, StreamConfig()),
        (
            {
                "BuilderGroups": ["devs", "ops"],
                "BuilderUsers": ["alice"],
                "ManifestUrl": "https://git/x.git",
                "ManifestDirectory": "dir/$IMAGE_STREAM_LEAF_NAME",
                "Variables": {"FOO": "bar"},
            },
            StreamConfig(
                builder_groups=("devs", "ops"),
                builder_users=("alice",),
                manifest_url="https://git/x.git",
                manifest_directory="dir/$IMAGE_STREAM_LEAF_NAME",
                variables={"FOO": "bar"},
            ),
        ),
        # Go's encoding/json: field names match case-insensitively, last key wins.
        ({"manifesturl": "a", "MANIFESTURL": "b"}, StreamConfig(manifest_url="b")),
        ({"ManifestUrl": None, "BuilderUsers": None}, StreamConfig()),
        ({"Unknown": 42, "ManifestUrl": "u"}, StreamConfig(manifest_url="u")),
    ],
)
def test_stream_config_fields(config: object, expected: StreamConfig) -> None:
    assert parse({"Streams": {"s": config}}).streams == {"s": expected}


@pytest.mark.parametrize(
    ("text", "streams", "patterns"),
    [
        ("{}", [], []),
        ("null", [], []),
        ('# a comment\n{"Streams": {"a": {}}}', ["a"], []),
        ('{"Streams": {"base/$ARCH": {}}}', ["base/arm64"], []),
        ('{"Streams": {"x/${ARCH}/$OTHER/y": {}}}', ["x/arm64//y"], []),
        ('{"StreamPatterns": {"users/[^/]+/$ARCH": {}}}', [], ["users/[^/]+/arm64"]),
        (
            '{"Streams": {"a": {}, "b": {}}, "StreamPatterns": {"c.*": {}, "d.*": {}}}',
            ["a", "b"],
            ["c.*", "d.*"],
        ),
        ('{"streams": {"lower": {}}}', ["lower"], []),
    ],
)
def test_document_keys(text: str, streams: list[str], patterns: list[str]) -> None:
    doc = parse_streams(text.encode(), SRC, "arm64")
    assert list(doc.streams) == streams
    assert [key for key, _regex, _config in doc.patterns] == patterns


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[]", f"{SRC}: expected an object"),
        ('{"Streams": []}', f"{SRC}: Streams: expected an object"),
        ('{"StreamPatterns": "x"}', f"{SRC}: StreamPatterns: expected an object"),
        ('{"Streams": {"apps/x": 3}}', f"{SRC}: Streams.apps/x: expected an object"),
        (
            '{"Streams": {"apps/x": {"BuilderUsers": "bob"}}}',
            f"{SRC}: Streams.apps/x.BuilderUsers: expected a list of strings",
        ),
        (
            '{"Streams": {"apps/x": {"BuilderGroups": [1]}}}',
            f"{SRC}: Streams.apps/x.BuilderGroups: expected a list of strings",
        ),
        (
            '{"Streams": {"apps/x": {"ManifestUrl": 1}}}',
            f"{SRC}: Streams.apps/x.ManifestUrl: expected a string",
        ),
        (
            '{"Streams": {"apps/x": {"ManifestDirectory": []}}}',
            f"{SRC}: Streams.apps/x.ManifestDirectory: expected a string",
        ),
        (
            '{"Streams": {"apps/x": {"Variables": []}}}',
            f"{SRC}: Streams.apps/x.Variables: expected an object of strings",
        ),
        (
            '{"Streams": {"apps/x": {"Variables": {"A": 1}}}}',
            f"{SRC}: Streams.apps/x.Variables.A: expected a string",
        ),
        (
            '{"StreamPatterns": {"p.*": {"BuilderUsers": {}}}}',
            f"{SRC}: StreamPatterns.p.*.BuilderUsers: expected a list of strings",
        ),
        ('{"Streams": {"a/$ARCH": {}, "a/amd64": {}}}', f"{SRC}: duplicate stream: a/amd64"),
        ('{"Streams": {"a$X": {}, "a": {}}}', f"{SRC}: duplicate stream: a"),
        (
            '{"StreamPatterns": {"p/$ARCH": {}, "p/${ARCH}": {}}}',
            f"{SRC}: duplicate stream pattern: p/amd64",
        ),
        ('{"Streams": {', f"{SRC}: line 1 column 14"),
    ],
)
def test_document_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_streams(text.encode(), SRC, "amd64")
    assert str(info.value).startswith(message)


@pytest.mark.parametrize("key", ["a(", "[z-a]", "x(?=y)", "*"])
def test_bad_pattern_names_key(key: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse({"StreamPatterns": {key: {}}})
    assert str(info.value).startswith(f"{SRC}: StreamPatterns.{key}: ")
    assert json.dumps(key) in str(info.value)


# ------------------------------------------------------------------- lookup

LOOKUP_DOC = {
    "Streams": {"apps/hello": {"ManifestDirectory": "hello"}},
    "StreamPatterns": {
        "users/[^/]+/dev": {"ManifestDirectory": "dev"},
        "users/fred/.*|team/.*": {"ManifestDirectory": "fred"},
        "apps/.*": {"ManifestDirectory": "apps-pattern"},
        "multi/.*": {"ManifestDirectory": "m1"},
        "multi/[a-z]+": {"ManifestDirectory": "m2"},
    },
}


@pytest.mark.parametrize(
    ("name", "directory"),
    [
        ("apps/hello", "hello"),  # Streams before patterns
        ("apps/other", "apps-pattern"),
        ("users/bob/dev", "dev"),
        ("users/bob/dev/x", None),  # anchored at the end
        ("xusers/bob/dev", None),  # anchored at the start
        ("users/bob/dev\n", None),
        ("team/a", "fred"),  # ^(a|b)$ groups the alternation
        ("users/fred/x", "fred"),
        ("bootstrap/bb", None),
        ("no/such", None),
    ],
)
def test_lookup(name: str, directory: str | None) -> None:
    config = lookup(parse(LOOKUP_DOC), name, {"bootstrap/bb", "bootstrap/x"})
    assert (config.manifest_directory if config else None) == directory


def test_lookup_bootstrap_first() -> None:
    assert lookup(parse(LOOKUP_DOC), "apps/hello", {"apps/hello"}) is None


def test_lookup_multiple_patterns() -> None:
    with pytest.raises(ConfigError) as info:
        lookup(parse(LOOKUP_DOC), "multi/abc", ())
    assert str(info.value) == 'multiple stream patterns match: "multi/abc"'


# ---------------------------------------------------------------- variables


@pytest.mark.parametrize(
    ("path", "directory", "leaf"),
    [
        ("users/fred/generic/base/Debian-10/amd64", "users/fred/generic/base/Debian-10", "amd64"),
        ("apps/hello", "apps", "hello"),
        ("single", ".", "single"),
        ("/abs", "/", "abs"),
        ("a//b", "a", "b"),
        ("a/b/", "a/b", "b"),
        ("", ".", "."),
    ],
)
def test_go_path(path: str, directory: str, leaf: str) -> None:
    assert (go_path_dir(path), go_path_base(path)) == (directory, leaf)


@pytest.mark.parametrize(
    ("stream", "variables", "expected"),
    [
        (
            "users/fred/generic/base/Debian-10/amd64",
            {},
            {
                "ARCH": "amd64",
                "IMAGE_STREAM": "users/fred/generic/base/Debian-10/amd64",
                "IMAGE_STREAM_DIRECTORY_NAME": "users/fred/generic/base/Debian-10",
                "IMAGE_STREAM_LEAF_NAME": "amd64",
            },
        ),
        (
            "apps/hello",
            {
                "SELF": "$IMAGE_STREAM",
                "PART": "${IMAGE_STREAM[/1:]}",
                "NOARCH": "x$ARCH",
                "ARCH": "overridden",
                "IMAGE_STREAM_LEAF_NAME": "overridden",
            },
            {
                "SELF": "apps/hello",
                "PART": "hello",
                "NOARCH": "x",  # only IMAGE_STREAM is known while expanding
                "ARCH": "amd64",
                "IMAGE_STREAM": "apps/hello",
                "IMAGE_STREAM_DIRECTORY_NAME": "apps",
                "IMAGE_STREAM_LEAF_NAME": "hello",
            },
        ),
        (
            "top",
            {"X": "$IMAGE_STREAM_LEAF_NAME"},
            {
                "X": "",
                "ARCH": "amd64",
                "IMAGE_STREAM": "top",
                "IMAGE_STREAM_DIRECTORY_NAME": ".",
                "IMAGE_STREAM_LEAF_NAME": "top",
            },
        ),
    ],
)
def test_stream_environment(stream: str, variables: dict, expected: dict) -> None:
    config = StreamConfig(variables=variables)
    assert stream_environment(stream, config, "amd64") == expected


ENV = {"IMAGE_STREAM": "s", "A": "a", "B": "b"}


@pytest.mark.parametrize(
    ("request_variables", "commit", "branch", "expected"),
    [
        (None, "", "", ENV),
        ({}, "", "", ENV),
        ({"A": "x", "B": "", "C": "c", "D": ""}, "", "", {**ENV, "A": "x", "C": "c"}),
        (
            {},
            "abc123",
            "dev",
            {**ENV, "MANIFEST_GIT_COMMIT_ID": "abc123", "REQUESTED_GIT_BRANCH": "dev"},
        ),
        ({}, "", "dev", {**ENV, "REQUESTED_GIT_BRANCH": "dev"}),
        ({}, "abc", "", {**ENV, "MANIFEST_GIT_COMMIT_ID": "abc"}),
    ],
)
def test_build_variables(
    request_variables: dict | None, commit: str, branch: str, expected: dict
) -> None:
    assert build_variables(ENV, request_variables, commit, branch) == expected


def test_build_variables_does_not_mutate() -> None:
    env = dict(ENV)
    build_variables(env, {"A": "z"}, "c", "b")
    assert env == ENV


LOCATION_CONFIG = StreamConfig(
    manifest_url="https://$GIT_USER:$GIT_PASSWORD@git/$ORG/repo.git",
    manifest_directory="$IMAGE_STREAM_DIRECTORY_NAME/$SUB",
    variables={"ORG": "team"},
)


@pytest.mark.parametrize(
    ("request_variables", "secrets", "expected"),
    [
        (None, None, ("https://:@git/team/repo.git", "apps/")),
        (
            {"SUB": "x", "GIT_USER": "req"},
            {"GIT_USER": "secret-user", "GIT_PASSWORD": "pw", "SUB": "no"},
            ("https://req:pw@git/team/repo.git", "apps/x"),
        ),
        # The stream environment comes first, even over secrets.
        (
            {"ORG": "request-org"},
            {"ORG": "secret-org", "IMAGE_STREAM_DIRECTORY_NAME": "no"},
            ("https://:@git/team/repo.git", "apps/"),
        ),
        # A name present in the request shadows the secrets even when empty.
        ({"GIT_PASSWORD": ""}, {"GIT_PASSWORD": "pw"}, ("https://:@git/team/repo.git", "apps/")),
    ],
)
def test_manifest_location(
    request_variables: dict | None, secrets: dict | None, expected: tuple[str, str]
) -> None:
    assert (
        manifest_location("apps/hello", LOCATION_CONFIG, request_variables, secrets, "amd64")
        == expected
    )


def test_public_manifest_location_has_no_secrets() -> None:
    assert public_manifest_location("apps/hello", LOCATION_CONFIG, "amd64") == (
        "https://:@git/team/repo.git",
        "apps/",
    )


def test_public_manifest_location_arch() -> None:
    config = StreamConfig(manifest_url="dir:///m/$ARCH", manifest_directory="$IMAGE_STREAM")
    assert public_manifest_location("a/b", config, "arm64") == ("dir:///m/arm64", "a/b")
