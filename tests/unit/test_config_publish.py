"""The ``Publish`` setting of streams: parsing, expansion, and the errors naming the key."""

from __future__ import annotations

import json
from typing import Any

import pytest

from imaginator.config.environment import environment_of
from imaginator.config.main import ConfigError, parse_main_config
from imaginator.config.publish import (
    PublishConfig,
    PublishConfigError,
    PublishTarget,
    parse_publish,
    resolve,
)
from imaginator.config.streams import parse_streams

REGISTRY = "registry.example:5000"
BUSYBOX = {"BootstrapCommand": ["true"], "PackagerType": "bb"}


def main_config(publish: Any, key: str = "bootstrap/$ARCH/bb", **extra: Any) -> Any:
    document = {
        "BootstrapStreams": {key: {**BUSYBOX, "Publish": publish, **extra}},
        "PackagerTypes": {"bb": {}},
    }
    return parse_main_config(json.dumps(document).encode(), "conf.json", "arm64")


def streams(section: str, key: str, publish: Any, **extra: Any) -> Any:
    document = {section: {key: {"ManifestUrl": "dir:///m", "Publish": publish, **extra}}}
    return parse_streams(json.dumps(document), "image-streams.json", "amd64")


# ------------------------------------------------------------------ the value


@pytest.mark.parametrize("value", [None, ""])
def test_absent_or_empty_is_not_published(value: Any) -> None:
    assert parse_publish(value, "X.Publish") is None


def test_string_and_object_forms() -> None:
    assert parse_publish(f"{REGISTRY}/images/a", "P") == PublishConfig(f"{REGISTRY}/images/a")
    parsed = parse_publish(
        # Go's encoding/json: names match case-insensitively, unknown fields are ignored.
        {"reference": f"{REGISTRY}/images/a", "TAGS": ["latest", "$ARCH"], "Comment": 1},
        "P",
    )
    assert parsed == PublishConfig(f"{REGISTRY}/images/a", ("latest", "$ARCH"))


@pytest.mark.parametrize(
    ("value", "path", "message"),
    [
        (5, "P", "expected a registry reference or an object, got 5"),
        ([], "P", "expected a registry reference or an object, got []"),
        ({"Tags": ["x"]}, "P.Reference", "expected a registry reference"),
        ({"Reference": 7}, "P.Reference", "got 7"),
        ({"Reference": "r.example/a", "Tags": "latest"}, "P.Tags", "expected a list of strings"),
        ({"Reference": "r.example/a", "Tags": ["a", 1]}, "P.Tags[1]", "expected a string, got 1"),
    ],
)
def test_bad_values_name_the_key(value: Any, path: str, message: str) -> None:
    with pytest.raises(PublishConfigError) as info:
        parse_publish(value, "P")
    assert info.value.path == path
    assert message in info.value.message
    assert str(info.value).startswith(f"{path}: ")


# ------------------------------------------------------------------ expansion and checks


def test_expansion_uses_the_stream_environment() -> None:
    environment = environment_of("apps/hello/Debian-12/amd64", {"TEAM": "web"}, "amd64")
    config = PublishConfig(
        f"{REGISTRY}/$TEAM/${{IMAGE_STREAM[/0:2]}}-$ARCH",
        ("latest", "$ARCH", "${IMAGE_STREAM_LEAF_NAME}", "latest"),
    )
    target = resolve(config, environment.get, "P")
    assert target == PublishTarget(REGISTRY, "web/apps/hello-amd64", ("latest", "amd64"))
    assert str(target) == f"{REGISTRY}/web/apps/hello-amd64"


def test_the_variables_file_is_not_used() -> None:
    # A secret name is unknown to the stream environment: it expands to nothing.
    environment = environment_of("apps/x", {}, "amd64")
    with pytest.raises(PublishConfigError) as info:
        resolve(PublishConfig("$REGISTRY_HOST/images/x"), environment.get, "P")
    assert info.value.path == "P.Reference"
    assert "the registry's host first" in info.value.message


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ("images/apps-hello", "expected host[:port]/repository (the registry's host first)"),
        ("apps-hello", "expected host[:port]/repository"),
        (f"{REGISTRY}/", "expected host[:port]/repository"),
        (f"{REGISTRY}/images/a:latest", "no tag in the reference (put tags in Tags)"),
        (f"{REGISTRY}/images/a@sha256:{'0' * 64}", "a digest cannot be pushed to"),
        (f"{REGISTRY}/images/Debian-12", "bad repository name 'images/Debian-12'"),
        ("bad_host:5000/images/a", "bad registry host"),
    ],
)
def test_bad_references(reference: str, message: str) -> None:
    with pytest.raises(PublishConfigError) as info:
        resolve(PublishConfig(reference), {}.get, "P")
    assert info.value.path == "P.Reference"
    assert message in info.value.message


def test_the_string_form_names_the_publish_key_itself() -> None:
    config = parse_publish("images/a", "P")
    assert config is not None
    with pytest.raises(PublishConfigError) as info:
        resolve(config, {}.get, "P")
    assert info.value.path == "P"


@pytest.mark.parametrize("tag", ["", "a:b", "a/b", "-x", "x" * 129, "$UNSET"])
def test_bad_tags(tag: str) -> None:
    config = PublishConfig(f"{REGISTRY}/images/a", ("latest", tag))
    with pytest.raises(PublishConfigError) as info:
        resolve(config, {}.get, "P")
    assert info.value.path == "P.Tags[1]"
    assert "bad tag" in info.value.message


def test_localhost_and_ip_registries() -> None:
    for registry in ("localhost", "localhost:5000", "127.0.0.1:5000", "[::1]:5000"):
        target = resolve(PublishConfig(f"{registry}/a/b"), {}.get, "P")
        assert (target.registry, target.repository) == (registry, "a/b")


# ------------------------------------------------------------------ in the documents


def test_bootstrap_stream_in_conf_json() -> None:
    config = main_config({"Reference": f"{REGISTRY}/bootstrap/bb-$ARCH", "Tags": ["latest"]})
    stream = config.bootstrap_streams["bootstrap/arm64/bb"]
    assert stream.publish == PublishConfig(f"{REGISTRY}/bootstrap/bb-$ARCH", ("latest",))
    without = parse_main_config(
        json.dumps({"BootstrapStreams": {"b": BUSYBOX}, "PackagerTypes": {"bb": {}}}).encode(),
        "conf.json",
        "amd64",
    )
    assert without.bootstrap_streams["b"].publish is None


def test_bootstrap_stream_errors_name_file_and_key() -> None:
    with pytest.raises(ConfigError) as info:
        main_config({"Reference": f"{REGISTRY}/Upper"})
    assert str(info.value).startswith(
        "conf.json: BootstrapStreams.bootstrap/$ARCH/bb.Publish.Reference: "
    )
    with pytest.raises(ConfigError) as info:
        main_config({"Reference": f"{REGISTRY}/bb", "Tags": [3]})
    assert str(info.value) == (
        "conf.json: BootstrapStreams.bootstrap/$ARCH/bb.Publish.Tags[0]: expected a string, got 3"
    )


def test_bootstrap_stream_variables_expand_the_reference() -> None:
    # Checked at parse time with the stream's own (plain) variables.
    config = main_config(f"{REGISTRY}/$TEAM/bb", Variables={"TEAM": "ops"})
    assert config.bootstrap_streams["bootstrap/arm64/bb"].publish is not None
    with pytest.raises(ConfigError, match=r"Publish: expected host\[:port\]/repository"):
        main_config("$TEAM/bb", Variables={"TEAM": "ops"})


def test_manifest_stream_in_the_streams_document() -> None:
    document = streams(
        "Streams", "apps/hello/$ARCH", {"Reference": f"{REGISTRY}/apps/hello", "Tags": ["$ARCH"]}
    )
    assert document.streams["apps/hello/amd64"].publish == PublishConfig(
        f"{REGISTRY}/apps/hello", ("$ARCH",)
    )


def test_manifest_stream_errors_name_file_and_key() -> None:
    with pytest.raises(ConfigError) as info:
        streams("Streams", "apps/hello", {"Reference": f"{REGISTRY}/apps/hello", "Tags": ["a:b"]})
    assert str(info.value).startswith("image-streams.json: Streams.apps/hello.Publish.Tags[0]: ")
    with pytest.raises(ConfigError) as info:
        streams("StreamPatterns", "users/.*", {"Reference": 1})
    assert str(info.value).startswith(
        "image-streams.json: StreamPatterns.users/.*.Publish.Reference: "
    )


def test_a_patterns_reference_is_checked_only_for_a_stream() -> None:
    # The stream name in its environment is known only when a stream is published.
    document = streams("StreamPatterns", "users/[a-z]+", f"{REGISTRY}/${{IMAGE_STREAM}}")
    _key, _regex, config = document.patterns[0]
    assert config.publish == PublishConfig(f"{REGISTRY}/${{IMAGE_STREAM}}", reference_key="")
