"""Tests for imaginator.config.main: parsing, validation and loading of conf.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor as _reactor

from imaginator.config.main import (
    BootstrapStream,
    CacheConfig,
    ConfigError,
    FastPaths,
    ListCommand,
    Owners,
    PackageCache,
    QuickLink,
    load_main_config,
    parse_main_config,
)
from imaginator.image.triggers import Trigger
from imaginator.sources.documents import FetchError, fetch_url
from tests.support.vectors import VECTORS

reactor: Any = _reactor

VECTOR = VECTORS / "config-imaginator-conf.json"


def parse(document: Any, arch: str = "amd64") -> Any:
    return parse_main_config(json.dumps(document).encode(), "conf.json", arch)


DEB = {"deb": {"InstallCommand": ["apt-get", "install"]}}


def test_the_go_daemons_configuration() -> None:
    config = parse_main_config(VECTOR.read_bytes(), "conf.json", "amd64")
    assert list(config.bootstrap_streams) == ["bootstrap/Debian-12", "bootstrap/bb"]
    debian = config.bootstrap_streams["bootstrap/Debian-12"]
    assert debian.bootstrap_command == (
        "debootstrap",
        "--variant=minbase",
        "bookworm",
        "$dir",
        "$DEBIAN_MIRROR",
    )
    assert debian.filter_lines == ("/etc/hostname", "/etc/machine-id", "/var/log/.*")
    assert debian.packager_type == "deb"
    deb = config.packager_types["deb"]
    assert deb.list_command.size_multiplier == 1024
    assert deb.list_command.arg_list[2] == "${binary:Package} ${Version} ${Installed-Size}\n"
    assert deb.verbatim == ("export DEBIAN_FRONTEND=noninteractive",)
    assert config.packager_types["bb"].clean_patterns == ("/var/cache/x/.*",)
    assert config.packager_types["bb"].remove_command == ("echo", "it's Bob's")
    assert config.image_streams_url.endswith("/run/imaginator/etc/image-streams.json")
    assert config.cache is None


def test_every_field() -> None:
    text = b"""# main configuration
{
  "BindMounts": ["/etc/resolv.conf", "/opt"],
  // streams built from nothing
  "BootstrapStreams": {
    "bootstrap/Debian-12/$ARCH": {
      "BootstrapCommand": ["debootstrap", "--arch=$ARCH", "bookworm", "$dir", "${ARCH}x"],
      "FilterLines": ["/etc/hostname", "", "/var/log/.*"],
      "ImageFilterUrl": "file:///etc/imaginator/filters/Debian-12",
      "ImageTagsUrl": "file:///etc/imaginator/tags/Debian-12",
      "ImageTriggersUrl": "file:///etc/imaginator/triggers/Debian-12",
      "Owners": {"Groups": ["ops"], "Users": ["fred"]},
      "PackagerType": "deb",
      "Variables": {"MIRROR": "http://mirror.example/debian", "EMPTY": ""},
      "SomethingNew": true
    }
  },
  "Cache": {"BaseDirectory": "/var/cache/imaginator", "MountPoint": "/cache",
            "SizeLimit": 1073741824},
  "ImageStreamsCheckInterval": 300,
  "ImageStreamsToAutoRebuild": ["bootstrap/Debian-12/$ARCH", "base/$ARCH/$OTHER"],
  "ImageStreamsUrl": "file:///etc/imaginator/image-streams.json",
  "MtimesCopyFilterLines": ["/var/lib/.*"],
  "PackagerTypes": {
    "deb": {
      "CleanCommand": ["apt-get", "clean"],
      "CleanPatterns": ["/var/cache/apt/.*"],
      "InstallCommand": ["apt-get", "install"],
      "ListCommand": {"ArgList": ["dpkg-query", "--show"]},
      "RemoveCommand": ["apt-get", "remove"],
      "UpdateCommand": ["apt-get", "update"],
      "UpgradeCommand": ["apt-get", "dist-upgrade"],
      "Verbatim": ["export DEBIAN_FRONTEND=noninteractive"]
    }
  },
  "RelationshipsQuickLinks": [{"Name": "No users", "URL": "?exclude=users"}],
  "SshMetadataFetcher": {"Algorithm": "Ed25519"}
}
"""
    config = parse_main_config(text, "conf.json", "arm64")
    assert config.source == "conf.json"
    assert config.bind_mounts == ("/etc/resolv.conf", "/opt")
    assert config.bootstrap_streams == {
        "bootstrap/Debian-12/arm64": BootstrapStream(
            name="bootstrap/Debian-12/arm64",
            bootstrap_command=("debootstrap", "--arch=arm64", "bookworm", "$dir", "arm64x"),
            filter_lines=("/etc/hostname", "/var/log/.*"),
            image_filter_url="file:///etc/imaginator/filters/Debian-12",
            image_tags_url="file:///etc/imaginator/tags/Debian-12",
            image_triggers_url="file:///etc/imaginator/triggers/Debian-12",
            owners=Owners(groups=("ops",), users=("fred",)),
            packager_type="deb",
            variables={"MIRROR": "http://mirror.example/debian", "EMPTY": ""},
        )
    }
    assert config.cache == CacheConfig("/var/cache/imaginator", "/cache", 1 << 30)
    assert config.image_streams_check_interval == 300
    assert config.image_streams_to_auto_rebuild == (
        "bootstrap/Debian-12/arm64",
        "base/$ARCH/$OTHER",  # opportunistic: $OTHER unknown, left whole
    )
    assert config.image_streams_url == "file:///etc/imaginator/image-streams.json"
    assert config.mtimes_copy_filter_lines == ("/var/lib/.*",)
    deb = config.packager_types["deb"]
    assert deb.name == "deb"
    assert deb.clean_command == ("apt-get", "clean")
    assert deb.clean_patterns == ("/var/cache/apt/.*",)
    assert deb.list_command == ListCommand(("dpkg-query", "--show"), 1)
    assert deb.upgrade_command == ("apt-get", "dist-upgrade")
    assert config.relationships_quick_links == (QuickLink("No users", "?exclude=users"),)


@pytest.mark.parametrize("text", [b"{}", b"null", b"# nothing configured\n{}"])
def test_empty_configuration(text: bytes) -> None:
    config = parse_main_config(text, "conf.json", "amd64")
    assert config.bootstrap_streams == {}
    assert config.packager_types == {}
    assert config.cache is None
    assert config.image_streams_url == ""


@pytest.mark.parametrize(("value", "expected"), [(None, 1), (0, 1), (1, 1), (1024, 1024)])
def test_size_multiplier_defaults_to_one(value: int | None, expected: int) -> None:
    list_command: dict[str, Any] = {"ArgList": ["rpm", "-qa"]}
    if value is not None:
        list_command["SizeMultiplier"] = value
    config = parse({"PackagerTypes": {"rpm": {"ListCommand": list_command}}})
    assert config.packager_types["rpm"].list_command.size_multiplier == expected


def test_stream_names_expand_arch_fully() -> None:
    config = parse(
        {
            "BootstrapStreams": {
                "a/$ARCH": {"PackagerType": "deb"},
                "b/${ARCH}-$UNKNOWN": {"PackagerType": "deb"},
            },
            "PackagerTypes": DEB,
        },
        arch="386",
    )
    assert list(config.bootstrap_streams) == ["a/386", "b/386-"]


ERRORS = [
    ("[]", "conf.json: (top level): expected an object, got []"),
    ('{"BindMounts": "/opt"}', 'conf.json: BindMounts: expected a list of strings, got "/opt"'),
    ('{"BindMounts": ["/opt", 1]}', "conf.json: BindMounts[1]: expected a string, got 1"),
    ('{"ImageStreamsUrl": 5}', "conf.json: ImageStreamsUrl: expected a string, got 5"),
    (
        '{"ImageStreamsCheckInterval": -1}',
        "conf.json: ImageStreamsCheckInterval: expected a non-negative integer, got -1",
    ),
    (
        '{"ImageStreamsCheckInterval": 1.5}',
        "conf.json: ImageStreamsCheckInterval: expected a non-negative integer, got 1.5",
    ),
    (
        '{"ImageStreamsCheckInterval": true}',
        "conf.json: ImageStreamsCheckInterval: expected a non-negative integer, got true",
    ),
    ('{"Cache": []}', "conf.json: Cache: expected an object, got []"),
    (
        '{"BootstrapStreams": {"b": {"PackagerType": "deb", "Variables": ["A=1"]}},'
        ' "PackagerTypes": {"deb": {}}}',
        'conf.json: BootstrapStreams.b.Variables: expected an object, got ["A=1"]',
    ),
    (
        '{"BootstrapStreams": {"b": {"PackagerType": "deb", "Variables": {"A": 1}}},'
        ' "PackagerTypes": {"deb": {}}}',
        "conf.json: BootstrapStreams.b.Variables.A: expected a string, got 1",
    ),
    (
        '{"Cache": {"SizeLimit": "1G"}}',
        'conf.json: Cache.SizeLimit: expected a non-negative integer, got "1G"',
    ),
    ('{"PackagerTypes": []}', "conf.json: PackagerTypes: expected an object, got []"),
    (
        '{"PackagerTypes": {"deb": {"ListCommand": {"SizeMultiplier": "x"}}}}',
        "conf.json: PackagerTypes.deb.ListCommand.SizeMultiplier: expected a non-negative "
        'integer, got "x"',
    ),
    (
        '{"PackagerTypes": {"deb": {"ListCommand": {"ArgList": "dpkg"}}}}',
        'conf.json: PackagerTypes.deb.ListCommand.ArgList: expected a list of strings, got "dpkg"',
    ),
    (
        '{"PackagerTypes": {"deb": {"CleanPatterns": ["/ok", "("]}}}',
        'conf.json: PackagerTypes.deb.CleanPatterns[1]: bad regular expression "(": '
        "missing closing )",
    ),
    (
        '{"PackagerTypes": {"deb": {"Verbatim": [true]}}}',
        "conf.json: PackagerTypes.deb.Verbatim[0]: expected a string, got true",
    ),
    (
        '{"BootstrapStreams": {"bootstrap/Debian-12/$ARCH": {"PackagerType": "foo"}}}',
        'conf.json: BootstrapStreams.bootstrap/Debian-12/$ARCH.PackagerType: packager type "foo"'
        " unknown",
    ),
    (
        '{"BootstrapStreams": {"x": {}}}',
        'conf.json: BootstrapStreams.x.PackagerType: packager type "" unknown',
    ),
    (
        '{"BootstrapStreams": {"x": {"PackagerType": "deb", "FilterLines": ["/a", "/b", "("]}},'
        ' "PackagerTypes": {"deb": {}}}',
        'conf.json: BootstrapStreams.x.FilterLines[2]: bad regular expression "(": '
        "missing closing )",
    ),
    (
        '{"BootstrapStreams": {"x": {"PackagerType": "deb", "BootstrapCommand": "sh"}},'
        ' "PackagerTypes": {"deb": {}}}',
        'conf.json: BootstrapStreams.x.BootstrapCommand: expected a list of strings, got "sh"',
    ),
    (
        '{"BootstrapStreams": {"x": {"PackagerType": "deb", "Owners": {"Users": "fred"}}},'
        ' "PackagerTypes": {"deb": {}}}',
        'conf.json: BootstrapStreams.x.Owners.Users: expected a list of strings, got "fred"',
    ),
    (
        '{"BootstrapStreams": {"b/$ARCH": {"PackagerType": "deb"},'
        ' "b/amd64": {"PackagerType": "deb"}}, "PackagerTypes": {"deb": {}}}',
        "conf.json: BootstrapStreams: duplicate bootstrap stream: b/amd64",
    ),
    (
        '{"RelationshipsQuickLinks": {"Name": "x"}}',
        'conf.json: RelationshipsQuickLinks: expected a list of objects, got {"Name": "x"}',
    ),
    (
        '{"RelationshipsQuickLinks": [{"Name": "x", "URL": 3}]}',
        "conf.json: RelationshipsQuickLinks[0].URL: expected a string, got 3",
    ),
    (
        '{"MtimesCopyFilterLines": ["[z-a]"]}',
        'conf.json: MtimesCopyFilterLines[0]: bad regular expression "[z-a]": bad character range'
        " z-a",
    ),
    ('{\n  "BindMounts": [1,]\n}', "conf.json: line 2 column 20: Expecting value"),
    (
        '{"FastPaths": {"NoFsyncInBuilds": "no"}}',
        'conf.json: FastPaths.NoFsyncInBuilds: expected true or false, got "no"',
    ),
    (
        '{"FastPaths": {"PackageCaches": [{"MountPoint": "var/cache"}]}}',
        "conf.json: FastPaths.PackageCaches[0].MountPoint: expected an absolute path, got"
        ' "var/cache"',
    ),
    (
        '{"FastPaths": {"PackageCaches": [{"MountPoint": "/"}]}}',
        'conf.json: FastPaths.PackageCaches[0].MountPoint: not usable: "/"',
    ),
    (
        '{"FastPaths": {"PackageCaches": [{"MountPoint": "/a/../b"}]}}',
        'conf.json: FastPaths.PackageCaches[0].MountPoint: not usable: "/a/../b"',
    ),
    (
        '{"FastPaths": {"PackageCaches": [{"MountPoint": "/a", "Directory": "rel"}]}}',
        'conf.json: FastPaths.PackageCaches[0].Directory: expected an absolute path, got "rel"',
    ),
    (
        '{"FastPaths": {"PackageCaches": [{"MountPoint": "/a", "KeepInRoot": 1}]}}',
        "conf.json: FastPaths.PackageCaches[0].KeepInRoot: expected true or false, got 1",
    ),
    (
        '{"FastPaths": {"PackageCaches": {"MountPoint": "/a"}}}',
        'conf.json: FastPaths.PackageCaches: expected a list of objects, got {"MountPoint": "/a"}',
    ),
    (
        '{"PackagerTypes": {"deb": {"PendingUpgradesCommand": "apt-get"}}}',
        "conf.json: PackagerTypes.deb.PendingUpgradesCommand: expected a list of strings, got"
        ' "apt-get"',
    ),
]


def test_fast_paths_defaults_and_settings() -> None:
    assert parse({}).fast_paths == FastPaths(
        no_fsync_in_builds=True,
        reuse_bootstrap_trees=True,
        skip_unchanged_builds=False,
        package_caches=(),
    )
    config = parse(
        {
            "FastPaths": {
                "NoFsyncInBuilds": False,
                "ReuseBootstrapTrees": False,
                "SkipUnchangedBuilds": True,
                "PackageCaches": [
                    {"MountPoint": "/var/cache/apt/archives", "SizeLimit": 1000},
                    {"MountPoint": "/var/cache/x", "Directory": "/srv/x", "KeepInRoot": True},
                ],
            },
            "PackagerTypes": {"deb": {"PendingUpgradesCommand": ["sh", "-c", "x"]}},
        }
    )
    assert config.fast_paths == FastPaths(
        no_fsync_in_builds=False,
        reuse_bootstrap_trees=False,
        skip_unchanged_builds=True,
        package_caches=(
            PackageCache("/var/cache/apt/archives", "", 1000),
            PackageCache("/var/cache/x", "/srv/x", 0, keep_in_root=True),
        ),
    )
    assert config.packager_types["deb"].pending_upgrades_command == ("sh", "-c", "x")


@pytest.mark.parametrize(("text", "message"), ERRORS)
def test_errors_name_the_file_and_key_path(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_main_config(text.encode(), "conf.json", "amd64")
    assert str(info.value) == message


# ----------------------------------------------------------------- loading

FILTER = b"# image filter\n/etc/fstab\n\n/tmp(|/.*)$\n"
TAGS = b'// tags\n{"Distribution": "Debian", "Release": "12"}'
TRIGGERS = b'[{"MatchLines": ["/usr/sbin/cron"], "Service": "cron"}]'


def conf(**stream: Any) -> bytes:
    document = {
        "BootstrapStreams": {"b/$ARCH": {"PackagerType": "deb", **stream}},
        "PackagerTypes": DEB,
    }
    return json.dumps(document).encode()


class FakeFetcher:
    """An async fetch over a dict of documents; missing URLs fail like the loader."""

    def __init__(self, documents: dict[str, bytes]) -> None:
        self.documents = documents
        self.fetched: list[str] = []

    async def __call__(self, url: str) -> bytes:
        self.fetched.append(url)
        if url not in self.documents:
            raise FetchError(f"GET {url}: HTTP 404 Not Found")
        return self.documents[url]


@pytest_twisted.ensureDeferred
async def test_load_fetches_the_stream_documents() -> None:
    fetch = FakeFetcher(
        {
            "http://cfg/conf.json": conf(
                ImageFilterUrl="http://cfg/filter",
                ImageTagsUrl="http://cfg/tags",
                ImageTriggersUrl="http://cfg/triggers",
            ),
            "http://cfg/filter": FILTER,
            "http://cfg/tags": TAGS,
            "http://cfg/triggers": TRIGGERS,
        }
    )
    config = await load_main_config("http://cfg/conf.json", fetch, "amd64")
    stream = config.bootstrap_streams["b/amd64"]
    assert stream.image_filter == ("/etc/fstab", "/tmp(|/.*)$")
    assert stream.image_tags == {"Distribution": "Debian", "Release": "12"}
    assert stream.image_triggers == (Trigger(("/usr/sbin/cron",), "cron"),)
    assert config.source == "http://cfg/conf.json"
    assert fetch.fetched == [
        "http://cfg/conf.json",
        "http://cfg/filter",
        "http://cfg/tags",
        "http://cfg/triggers",
    ]


@pytest_twisted.ensureDeferred
async def test_load_without_stream_urls_fetches_only_the_document() -> None:
    fetch = FakeFetcher({"http://cfg/conf.json": conf()})
    config = await load_main_config("http://cfg/conf.json", fetch, "amd64")
    stream = config.bootstrap_streams["b/amd64"]
    assert (stream.image_filter, stream.image_tags, stream.image_triggers) == (None, {}, None)
    assert fetch.fetched == ["http://cfg/conf.json"]


@pytest_twisted.ensureDeferred
async def test_empty_filter_file_is_an_empty_filter() -> None:
    fetch = FakeFetcher({"u": conf(ImageFilterUrl="f"), "f": b"# nothing\n"})
    config = await load_main_config("u", fetch, "amd64")
    assert config.bootstrap_streams["b/amd64"].image_filter == ()


LOAD_ERRORS = [
    (
        {"ImageFilterUrl": "http://cfg/missing"},
        {},
        "conf.json: BootstrapStreams.b/amd64.ImageFilterUrl: http://cfg/missing: "
        "GET http://cfg/missing: HTTP 404 Not Found",
    ),
    (
        {"ImageFilterUrl": "http://cfg/filter"},
        {"http://cfg/filter": b"/ok\n(\n"},
        "conf.json: BootstrapStreams.b/amd64.ImageFilterUrl: http://cfg/filter: "
        'bad regular expression "(": missing closing )',
    ),
    (
        {"ImageTagsUrl": "http://cfg/tags"},
        {"http://cfg/tags": b'["not", "an", "object"]'},
        "conf.json: BootstrapStreams.b/amd64.ImageTagsUrl: http://cfg/tags: "
        'expected a JSON object, got ["not", "an", "object"]',
    ),
    (
        {"ImageTagsUrl": "http://cfg/tags"},
        {"http://cfg/tags": b'{"a": 1}'},
        "conf.json: BootstrapStreams.b/amd64.ImageTagsUrl: http://cfg/tags: a: "
        "expected a string, got 1",
    ),
    (
        {"ImageTagsUrl": "http://cfg/tags"},
        {"http://cfg/tags": b'{"a": }'},
        "conf.json: BootstrapStreams.b/amd64.ImageTagsUrl: http://cfg/tags: "
        "line 1 column 7: Expecting value",
    ),
    (
        {"ImageTriggersUrl": "http://u:pw@cfg/triggers"},
        {"http://u:pw@cfg/triggers": b"[{]"},
        "conf.json: BootstrapStreams.b/amd64.ImageTriggersUrl: error decoding triggers "
        "http://u:***@cfg/triggers: line 1 column 3: "
        "Expecting property name enclosed in double quotes",
    ),
]


@pytest.mark.parametrize(("stream", "documents", "message"), LOAD_ERRORS)
@pytest_twisted.ensureDeferred
async def test_load_errors_name_the_stream_key_and_url(
    stream: dict[str, str], documents: dict[str, bytes], message: str
) -> None:
    fetch = FakeFetcher({"conf.json": conf(**stream), **documents})
    with pytest.raises(ConfigError) as info:
        await load_main_config("conf.json", fetch, "amd64")
    assert str(info.value) == message


@pytest_twisted.ensureDeferred
async def test_load_error_for_the_document_itself_hides_the_password() -> None:
    fetch = FakeFetcher({})
    with pytest.raises(ConfigError) as info:
        await load_main_config("https://u:pw@cfg/conf.json", fetch, "amd64")
    assert str(info.value).startswith(
        "error reading configuration from: https://u:***@cfg/conf.json: "
    )


@pytest_twisted.ensureDeferred
async def test_load_parse_error_names_the_redacted_url() -> None:
    fetch = FakeFetcher({"https://u:pw@cfg/conf.json": b'{"BindMounts": 1}'})
    with pytest.raises(ConfigError) as info:
        await load_main_config("https://u:pw@cfg/conf.json", fetch, "amd64")
    assert str(info.value) == (
        "https://u:***@cfg/conf.json: BindMounts: expected a list of strings, got 1"
    )


@pytest_twisted.ensureDeferred
async def test_load_from_real_files(tmp_path: Path) -> None:
    (tmp_path / "filter").write_bytes(FILTER)
    (tmp_path / "triggers").write_bytes(TRIGGERS)
    (tmp_path / "conf.json").write_bytes(
        conf(ImageFilterUrl=f"file://{tmp_path}/filter", ImageTriggersUrl=f"{tmp_path}/triggers")
    )

    async def fetch(url: str) -> bytes:
        return await fetch_url(url, reactor=reactor, threadpool=reactor.getThreadPool())

    config = await load_main_config(f"file://{tmp_path}/conf.json", fetch, "amd64")
    stream = config.bootstrap_streams["b/amd64"]
    assert stream.image_filter == ("/etc/fstab", "/tmp(|/.*)$")
    assert stream.image_triggers == (Trigger(("/usr/sbin/cron",), "cron"),)


@pytest_twisted.ensureDeferred
async def test_relative_urls_resolve_against_the_configuration_url() -> None:
    fetch = FakeFetcher(
        {
            "file:///etc/im/conf.json": conf(
                ImageFilterUrl="filters/deb", ImageTriggersUrl="/abs/triggers"
            ),
            "file:///etc/im/filters/deb": FILTER,
            "/abs/triggers": TRIGGERS,
        }
    )
    config = await load_main_config("file:///etc/im/conf.json", fetch, "amd64")
    stream = config.bootstrap_streams["b/amd64"]
    assert stream.image_filter_url == "file:///etc/im/filters/deb"
    assert stream.image_triggers_url == "/abs/triggers"
    assert stream.image_filter == ("/etc/fstab", "/tmp(|/.*)$")


@pytest_twisted.ensureDeferred
async def test_the_sample_configuration_loads() -> None:
    from imaginator.sources.documents import fetch_url
    from tests.support.configs import SAMPLE_CONF

    async def fetch(url: str) -> bytes:
        from twisted.python.threadpool import ThreadPool

        pool = ThreadPool(0, 1)
        pool.start()
        try:
            return await fetch_url(url, reactor=reactor, threadpool=pool)
        finally:
            pool.stop()

    config = await load_main_config(SAMPLE_CONF.as_uri(), fetch, "amd64")
    debian = config.bootstrap_streams["bootstrap/Debian-12/amd64"]
    assert debian.bootstrap_command[1] == "--arch=amd64"
    assert "$DEBIAN_MIRROR" in debian.bootstrap_command
    assert "/etc/fstab" in debian.image_filter
    assert debian.image_triggers
    assert config.image_streams_to_auto_rebuild == (
        "bootstrap/busybox",
        "bootstrap/Debian-12/amd64",
        "base/Debian-12/amd64",
        "apps/hello/Debian-12/amd64",
    )
    assert config.image_streams_url == (SAMPLE_CONF.parent / "image-streams.json").as_uri()
