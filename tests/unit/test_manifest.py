"""Tests for imaginator.config.manifest: reading manifest directories, merging with the source."""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

import pytest

import imaginator.config.manifest as manifest_module
from imaginator.config.main import Owners
from imaginator.config.manifest import (
    FILES,
    SCRIPTS,
    TESTS,
    TREE_NAMES,
    ComputedFile,
    Manifest,
    ManifestError,
    expand_tags,
    expand_tags_to_match,
    load_manifest,
    merge_computed_files,
    merge_filter,
    mtimes_copy_filter,
    resolve_triggers,
    scripts_in_order,
)
from imaginator.image.triggers import Trigger
from tests.support.vectors import VECTORS

VECTOR = VECTORS / "config-manifests.txt"

# The trees of config-manifests.txt, exactly: path -> (mode, contents).
HELLO = {
    "computed-files": (0o644, "/etc/computed localhost:6972\n"),
    "filter.add": (0o644, "# extra filter lines\n/var/cache/hello/.*\n/etc/motd\\.local\n"),
    "manifest": (0o644, '{\n    "SourceImage": "bootstrap/bb"\n}\n'),
    "owners.json": (0o644, '{"Groups": ["devs"], "Users": ["alice"]}\n'),
    "tags.json": (0o644, '{"Role":"$IMAGE_STREAM_LEAF_NAME","Empty":"$NOTHING"}\n'),
    "triggers.add": (
        0o644,
        '[\n  {"MatchLines": ["/etc/motd", "/etc/greeting"], "Service": "motd-svc",'
        ' "DoReload": true}\n]\n',
    ),
    "files/etc/computed": (0o644, "placeholder for a computed file\n"),
    "files/etc/motd": (0o644, "Welcome to apps/hello\n"),
    "scripts/10_note": (
        0o755,
        "#!/bin/sh\n"
        'echo "note: $IMAGE_STREAM branch=$REQUESTED_GIT_BRANCH FOO=$FOO" >> /built-by\n'
        'echo "script 10_note ran"\n',
    ),
    "scripts/9_first": (
        0o755,
        "#!/bin/sh\n"
        'echo "first: $IMAGE_STREAM ($IMAGE_STREAM_DIRECTORY_NAME / $IMAGE_STREAM_LEAF_NAME)'
        ' arch=$ARCH" >> /built-by\n',
    ),
    "tests/motd": (0o755, "#!/bin/sh\ntest -f /etc/motd\n"),
}
BROKEN = {
    "manifest": (0o644, '{\n    "SourceImage": "bootstrap/bb"\n}\n'),
    "scripts/1_fail": (0o755, '#!/bin/sh\necho "about to fail in $IMAGE_STREAM"\nexit 1\n'),
}

VARIABLES = {
    "ARCH": "amd64",
    "IMAGE_STREAM": "apps/hello",
    "IMAGE_STREAM_DIRECTORY_NAME": "apps",
    "IMAGE_STREAM_LEAF_NAME": "hello",
}


def write_tree(root: Path, files: dict[str, tuple[int, str] | str]) -> Path:
    """Create ``files`` (path -> contents or (mode, contents)) under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    for name, spec in files.items():
        mode, text = (0o644, spec) if isinstance(spec, str) else spec
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(mode)
    return root


def load(tmp_path: Path, files: dict, variables: dict | None = None) -> Manifest:
    root = write_tree(tmp_path / "m", files)
    return load_manifest(str(root), VARIABLES if variables is None else variables)


def load_error(tmp_path: Path, files: dict) -> str:
    with pytest.raises(ManifestError) as info:
        load(tmp_path, files)
    return str(info.value)


def parse_vector(text: str) -> dict[str, dict[str, tuple[int, str]]]:
    """config-manifests.txt -> {tree: {path: (mode, contents)}}."""
    trees: dict[str, dict[str, tuple[int, str]]] = {}
    sections = re.split(r"^=== (\S+) \((0o[0-7]+)\)\n", text, flags=re.M)
    for i in range(1, len(sections), 3):
        tree, _, path = sections[i].partition("/")
        body = sections[i + 2]
        if i + 3 < len(sections):
            body = body.removesuffix("\n")  # the blank line between sections
        trees.setdefault(tree, {})[path] = (int(sections[i + 1], 8), body)
    return trees


def test_embedded_trees_match_vector() -> None:
    trees = parse_vector(VECTOR.read_text())
    assert trees["hello"] == HELLO
    # The vector file's last section has no trailing newline after its blank line.
    assert {k: (m, t.rstrip("\n")) for k, (m, t) in trees["broken"].items()} == {
        k: (m, t.rstrip("\n")) for k, (m, t) in BROKEN.items()
    }


# ---------------------------------------------------------- the real trees


def test_hello(tmp_path: Path) -> None:
    manifest = load(tmp_path, HELLO)
    root = str(tmp_path / "m")
    assert manifest == Manifest(
        directory=root,
        source_image="bootstrap/bb",
        computed_files=(ComputedFile("/etc/computed", "localhost:6972"),),
        computed_files_add=False,
        image_filter=("/var/cache/hello/.*", "/etc/motd\\.local"),
        filter_add=True,
        unoptimised_filter_lines=("/etc/motd\\.local",),
        triggers=(Trigger(("/etc/motd", "/etc/greeting"), "motd-svc", do_reload=True),),
        triggers_add=True,
        owners=Owners(groups=("devs",), users=("alice",)),
        tags={"Role": "$IMAGE_STREAM_LEAF_NAME", "Empty": "$NOTHING"},
        package_list=(),
        trees=frozenset({FILES, SCRIPTS, TESTS}),
    )
    assert manifest.tree(SCRIPTS) == os.path.join(root, "scripts")
    assert manifest.tree("post-cleanup-scripts") is None
    assert manifest.path("files.append") == os.path.join(root, "files.append")
    assert scripts_in_order(os.listdir(manifest.tree(SCRIPTS))) == ["9_first", "10_note"]
    assert expand_tags(manifest.tags, VARIABLES) == {"Role": "hello"}


def test_hello_resolves_like_the_image_vector(tmp_path: Path) -> None:
    """image-hello.json: filter, triggers and computed files after merging with bootstrap/bb."""
    manifest = load(tmp_path, HELLO)
    assert merge_filter(None, manifest.image_filter, manifest.filter_add) == (
        "/etc/motd\\.local",
        "/var/cache/hello/.*",
    )
    assert resolve_triggers(None, manifest.triggers, manifest.triggers_add) == (
        Trigger(("/etc/greeting", "/etc/motd"), "motd-svc", do_reload=True),
    )
    assert merge_computed_files(None, manifest.computed_files, manifest.computed_files_add) == (
        ComputedFile("/etc/computed", "localhost:6972"),
    )


def test_broken(tmp_path: Path) -> None:
    manifest = load(tmp_path, BROKEN)
    assert manifest == Manifest(
        directory=str(tmp_path / "m"), source_image="bootstrap/bb", trees=frozenset({SCRIPTS})
    )
    assert manifest.computed_files is None
    assert manifest.image_filter is None
    assert manifest.triggers is None
    assert manifest.owners == Owners()
    assert manifest.tags == {}


# --------------------------------------------------------- manifest file


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{}", {}),
        ("null", {}),
        ('# comment\n// comment\n{"SourceImage": "base/$ARCH"}', {"source_image": "base/amd64"}),
        ('{"sourceimage": "a", "Other": [1, 2]}', {"source_image": "a"}),
        (
            '{"SourceImage": "$IMAGE_STREAM_DIRECTORY_NAME/base/$NOPE"}',
            {"source_image": "apps/base/"},
        ),
        (
            '{"SourceImageBuildVariables": {"A": "$IMAGE_STREAM_LEAF_NAME", "B": "x"}}',
            {"source_image_build_variables": {"A": "hello", "B": "x"}},
        ),
        (
            '{"SourceImageGitCommitId": "${IMAGE_STREAM[/0:1]}-branch"}',
            {"source_image_git_commit_id": "apps-branch"},
        ),
        (
            '{"SourceImageTagsToMatch": {"Arch": ["$ARCH", "x86"], "Opt": ["$NOPE", ""],'
            ' "Some": ["$NOPE", "v"], "None": null}}',
            {"source_image_tags_to_match": {"Arch": ("amd64", "x86"), "Some": ("v",)}},
        ),
        (
            '{"FilterLines": ["/tmp/.*", "/var/log/x$"]}',
            {"filter_lines": ("/tmp/.*", "/var/log/x$")},
        ),
        ('{"MtimesCopyFilterLines": []}', {"mtimes_copy_filter_lines": ()}),
        ('{"MtimesCopyFilterLines": ["/a"]}', {"mtimes_copy_filter_lines": ("/a",)}),
        ('{"MtimesCopyAddFilterLines": ["/b"]}', {"mtimes_copy_add_filter_lines": ("/b",)}),
        (
            '{"FilterLines": ["", "/a", null], "MtimesCopyFilterLines": [""]}',
            {"filter_lines": ("/a",), "mtimes_copy_filter_lines": ()},
        ),
    ],
)
def test_manifest_fields(tmp_path: Path, text: str, expected: dict) -> None:
    manifest = load(tmp_path, {"manifest": text})
    assert manifest == Manifest(directory=str(tmp_path / "m"), **expected)


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({}, "error reading manifest file: open {root}/manifest: no such file or directory"),
        ({"manifest/x": "{}"}, "error reading manifest file: open {root}/manifest: is a directory"),
        (
            {"manifest": ""},
            "error reading manifest file: manifest: line 1 column 1: Expecting value",
        ),
        ({"manifest": "{,}"}, "error reading manifest file: manifest: line 1 column 2: "),
        ({"manifest": "[]"}, "error reading manifest file: manifest: expected an object"),
        (
            {"manifest": '{"SourceImage": 1}'},
            "error reading manifest file: manifest: SourceImage: expected a string",
        ),
        (
            {"manifest": '{"SourceImageGitCommitId": true}'},
            "error reading manifest file: manifest: SourceImageGitCommitId: expected a string",
        ),
        (
            {"manifest": '{"SourceImageBuildVariables": ["x"]}'},
            "error reading manifest file: manifest: SourceImageBuildVariables: expected an object",
        ),
        (
            {"manifest": '{"SourceImageBuildVariables": {"A": 1}}'},
            "error reading manifest file: manifest: SourceImageBuildVariables.A: expected a string",
        ),
        (
            {"manifest": '{"SourceImageTagsToMatch": {"K": "v"}}'},
            "error reading manifest file: manifest: SourceImageTagsToMatch.K: "
            "expected a list of strings",
        ),
        (
            {"manifest": '{"FilterLines": "/tmp"}'},
            "error reading manifest file: manifest: FilterLines: expected a list of strings",
        ),
        (
            {"manifest": '{"FilterLines": ["/a(("]}'},
            'error reading manifest file: manifest: FilterLines[0]: bad regular expression "/a(("',
        ),
        (
            {"manifest": '{"MtimesCopyFilterLines": ["/ok", "["]}'},
            "error reading manifest file: manifest: MtimesCopyFilterLines[1]: "
            "bad regular expression",
        ),
        (
            {"manifest": '{"MtimesCopyAddFilterLines": [3]}'},
            "error reading manifest file: manifest: MtimesCopyAddFilterLines: "
            "expected a list of strings",
        ),
    ],
)
def test_manifest_file_errors(tmp_path: Path, files: dict, message: str) -> None:
    assert load_error(tmp_path, files).startswith(message.format(root=tmp_path / "m"))


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("manifest", "error reading manifest file: open {path}: permission denied"),
        ("owners.json", "error reading owners.json: open {path}: permission denied"),
    ],
)
def test_unreadable_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, message: str
) -> None:
    """Read errors other than a missing file are reported as Go prints them."""
    real_open = open

    def deny(path: str, *args: object, **kwargs: object) -> object:
        if os.path.basename(path) == name:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
        return real_open(path, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(manifest_module, "open", deny, raising=False)
    root = write_tree(tmp_path / "m", {"manifest": "{}", "owners.json": "{}"})
    with pytest.raises(ManifestError) as info:
        load_manifest(str(root), VARIABLES)
    assert str(info.value) == message.format(path=root / name)


# -------------------------------------------------------- computed files

CF_A = ComputedFile("/etc/a", "host:1")
CF_B = ComputedFile("/etc/b", "host:2")


@pytest.mark.parametrize(
    ("files", "computed", "add"),
    [
        ({}, None, False),
        ({"computed-files": ""}, (), False),
        ({"computed-files": "# only a comment\n\n"}, (), False),
        ({"computed-files": "/etc/a host:1\n  /etc/b\thost:2  \n"}, (CF_A, CF_B), False),
        ({"computed-files": "# c\n/etc/a   host:1\n\n"}, (CF_A,), False),
        ({"computed-files.json": '[{"Filename": "/etc/a", "Source": "host:1"}]'}, (CF_A,), False),
        ({"computed-files.json": "// c\n[]"}, (), False),
        ({"computed-files.json": "null"}, (), False),
        ({"computed-files.json": '[{"filename": "/etc/b", "source": "host:2"}]'}, (CF_B,), False),
        # The .json spelling is preferred when both are present.
        (
            {
                "computed-files": "/etc/b host:2",
                "computed-files.json": '[{"Filename": "/etc/a", "Source": "host:1"}]',
            },
            (CF_A,),
            False,
        ),
        ({"computed-files.add": "/etc/a host:1"}, (CF_A,), True),
        (
            {"computed-files.add.json": '[{"Filename": "/etc/b", "Source": "host:2"}]'},
            (CF_B,),
            True,
        ),
        (
            {"computed-files.add": "/etc/b host:2", "computed-files.add.json": "[]"},
            (),
            True,
        ),
    ],
)
def test_computed_files(tmp_path: Path, files: dict, computed: tuple | None, add: bool) -> None:
    manifest = load(tmp_path, {"manifest": "{}", **files})
    assert (manifest.computed_files, manifest.computed_files_add) == (computed, add)


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"computed-files": "/etc/a"}, "bad line: /etc/a"),
        ({"computed-files": "/etc/a host:1 extra"}, "bad line: /etc/a host:1 extra"),
        ({"computed-files.add": "/etc/a host:1\nlonely"}, "bad line: lonely"),
        ({"computed-files.json": "{}"}, "computed-files.json: expected a list of objects"),
        ({"computed-files.json": "[1]"}, "computed-files.json: [0]: expected an object"),
        (
            {"computed-files.add.json": '[{"Filename": 1}]'},
            "computed-files.add.json: [0].Filename: expected a string",
        ),
        ({"computed-files.json": "[,]"}, "computed-files.json: line 1 column 2: "),
        (
            {"computed-files": "", "computed-files.add": ""},
            "computed-files and computed-files.add files both present",
        ),
        (
            {"computed-files.json": "[]", "computed-files.add.json": "[]"},
            "computed-files and computed-files.add files both present",
        ),
        (
            {"computed-files.json": "[]", "computed-files.add": ""},
            "computed-files and computed-files.add files both present",
        ),
    ],
)
def test_computed_files_errors(tmp_path: Path, files: dict, message: str) -> None:
    assert load_error(tmp_path, {"manifest": "{}", **files}).startswith(message)


# ------------------------------------------------------------------ filter


@pytest.mark.parametrize(
    ("files", "image_filter", "add", "unoptimised"),
    [
        ({}, None, False, ()),
        ({"filter": ""}, (), False, ()),
        ({"filter": "# nothing\n\n"}, (), False, ()),
        ({"filter": "/etc/fstab\n# c\n\n/var/log/.*\n"}, ("/etc/fstab", "/var/log/.*"), False, ()),
        ({"filter": "/a\r\n/b\r\n"}, ("/a", "/b"), False, ()),
        (
            {"filter.add": "/data(|/.*)$\n/x[0-9]+\n"},
            ("/data(|/.*)$", "/x[0-9]+"),
            True,
            ("/x[0-9]+",),
        ),
        ({"filter.add": "!\n"}, ("!",), True, ()),
    ],
)
def test_image_filter(
    tmp_path: Path, files: dict, image_filter: tuple | None, add: bool, unoptimised: tuple
) -> None:
    manifest = load(tmp_path, {"manifest": "{}", **files})
    assert (manifest.image_filter, manifest.filter_add, manifest.unoptimised_filter_lines) == (
        image_filter,
        add,
        unoptimised,
    )


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"filter": "", "filter.add": ""}, "filter and filter.add files both present"),
        ({"filter": "/ok\n/bad(\n"}, 'error compiling filter: bad regular expression "/bad("'),
        ({"filter.add": "/x[\n"}, 'error compiling filter.add: bad regular expression "/x["'),
    ],
)
def test_image_filter_errors(tmp_path: Path, files: dict, message: str) -> None:
    assert load_error(tmp_path, {"manifest": "{}", **files}).startswith(message)


# ---------------------------------------------------------------- triggers

TRIGGER_JSON = '[{"MatchLines": ["/etc/x"], "Service": "svc", "DoReboot": true}]'


@pytest.mark.parametrize(
    ("files", "triggers", "add"),
    [
        ({}, None, False),
        ({"triggers": TRIGGER_JSON}, (Trigger(("/etc/x",), "svc", do_reboot=True),), False),
        ({"triggers.add": TRIGGER_JSON}, (Trigger(("/etc/x",), "svc", do_reboot=True),), True),
        ({"triggers": "[]"}, (), False),
        ({"triggers": "# c\nnull"}, (), False),
    ],
)
def test_triggers(tmp_path: Path, files: dict, triggers: tuple | None, add: bool) -> None:
    manifest = load(tmp_path, {"manifest": "{}", **files})
    assert (manifest.triggers, manifest.triggers_add) == (triggers, add)


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"triggers": "[]", "triggers.add": "[]"}, "triggers and triggers.add files both present"),
        ({"triggers": "{"}, "error decoding triggers triggers: line 1 column 2"),
        ({"triggers.add": "{}"}, "error decoding triggers triggers.add: "),
        ({"triggers": '[{"Service": 1}]'}, "error decoding triggers triggers: [0].Service"),
        ({"triggers.add": '[{"MatchLines": ["("]}]'}, "error decoding triggers triggers.add: "),
    ],
)
def test_triggers_errors(tmp_path: Path, files: dict, message: str) -> None:
    assert load_error(tmp_path, {"manifest": "{}", **files}).startswith(message)


# ------------------------------------------------- owners, tags, package list


@pytest.mark.parametrize(
    ("text", "owners"),
    [
        ('{"Groups": ["g1", "g2"], "Users": ["u"]}', Owners(("g1", "g2"), ("u",))),
        ('{"Users": ["u"]}', Owners((), ("u",))),
        ("{}", Owners()),
        ("# c\nnull", Owners()),
        ('{"groups": ["g"]}', Owners(("g",), ())),
    ],
)
def test_owners(tmp_path: Path, text: str, owners: Owners) -> None:
    assert load(tmp_path, {"manifest": "{}", "owners.json": text}).owners == owners


@pytest.mark.parametrize(
    ("text", "tags"),
    [
        ("{}", {}),
        ('{"A": "$X", "B": "", "C": "c"}', {"A": "$X", "B": "", "C": "c"}),
        ("// c\nnull", {}),
    ],
)
def test_tags(tmp_path: Path, text: str, tags: dict) -> None:
    assert load(tmp_path, {"manifest": "{}", "tags.json": text}).tags == tags


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"owners.json": "[]"}, "owners.json: expected an object"),
        ({"owners.json": '{"Groups": "g"}'}, "owners.json: Groups: expected a list of strings"),
        ({"owners.json": '{"Users": [1]}'}, "owners.json: Users: expected a list of strings"),
        ({"owners.json": "{"}, "owners.json: line 1 column 2"),
        ({"tags.json": "[]"}, "tags.json: expected an object"),
        ({"tags.json": '{"A": 1}'}, "tags.json: A: expected a string"),
        ({"tags.json": "x"}, "tags.json: line 1 column 1"),
        ({"scripts": "not a directory"}, "scripts is not a directory"),
        ({"filter/x": ""}, "error reading filter: open {root}/filter: is a directory"),
    ],
)
def test_metadata_errors(tmp_path: Path, files: dict, message: str) -> None:
    message = message.format(root=tmp_path / "m")
    assert load_error(tmp_path, {"manifest": "{}", **files}).startswith(message)


@pytest.mark.parametrize(
    ("text", "packages"),
    [
        ("", ()),
        ("vim\n", ("vim",)),
        ("# editors\nvim\n\n  emacs  \n#nano\nless", ("vim", "emacs", "less")),
        ("a\r\nb\r\n", ("a", "b")),
    ],
)
def test_package_list(tmp_path: Path, text: str, packages: tuple) -> None:
    assert load(tmp_path, {"manifest": "{}", "package-list": text}).package_list == packages


def test_all_trees(tmp_path: Path) -> None:
    files = {f"{name}/.keep": "" for name in TREE_NAMES}
    manifest = load(tmp_path, {"manifest": "{}", **files})
    assert manifest.trees == frozenset(TREE_NAMES)
    for name in TREE_NAMES:
        assert manifest.tree(name) == str(tmp_path / "m" / name)


def test_metadata_read_before_manifest(tmp_path: Path) -> None:
    """A conflict is reported even when ``manifest`` is missing (Go's order)."""
    assert load_error(tmp_path, {"filter": "", "filter.add": ""}) == (
        "filter and filter.add files both present"
    )


# ------------------------------------------------------------ pure helpers


@pytest.mark.parametrize(
    ("source", "manifest", "add", "expected"),
    [
        (None, None, False, None),
        (("/s",), None, False, None),
        (("/s",), (), False, ()),
        (("/s",), ("/b", "/a"), False, ("/b", "/a")),
        (None, None, True, None),
        (None, ("/b", "/a"), True, ("/a", "/b")),
        (("/s",), None, True, ("/s",)),
        (("/z", "/a"), ("/m", "/a"), True, ("/a", "/m", "/z")),
        ((), (), True, ()),
    ],
)
def test_merge_filter(
    source: tuple | None, manifest: tuple | None, add: bool, expected: tuple | None
) -> None:
    assert merge_filter(source, manifest, add) == expected


CF_A2 = ComputedFile("/etc/a", "other:9")
CF_C = ComputedFile("/etc/c", "host:3")


@pytest.mark.parametrize(
    ("source", "manifest", "add", "expected"),
    [
        (None, None, False, None),
        ((CF_A,), None, False, None),
        ((CF_A,), (CF_C, CF_B), False, (CF_C, CF_B)),
        (None, None, True, None),
        ((CF_C, CF_A), None, True, (CF_A, CF_C)),
        (None, (CF_C, CF_B), True, (CF_B, CF_C)),
        ((CF_C, CF_A), (CF_A2, CF_B), True, (CF_A2, CF_B, CF_C)),
    ],
)
def test_merge_computed_files(
    source: tuple | None, manifest: tuple | None, add: bool, expected: tuple | None
) -> None:
    assert merge_computed_files(source, manifest, add) == expected


T_OLD = Trigger(("/etc/b",), "svc", high_impact=True)
T_NEW = Trigger(("/etc/a",), "svc", do_reboot=True, sort_name="x")


@pytest.mark.parametrize(
    ("source", "manifest", "add", "expected"),
    [
        ((T_OLD,), None, False, None),
        ((T_OLD,), (T_NEW,), False, (T_NEW,)),
        (None, None, True, None),
        ((T_OLD,), None, True, (T_OLD,)),
        (
            (T_OLD,),
            (T_NEW,),
            True,
            (Trigger(("/etc/a", "/etc/b"), "svc", do_reboot=True, high_impact=True),),
        ),
    ],
)
def test_resolve_triggers(
    source: tuple | None, manifest: tuple | None, add: bool, expected: tuple | None
) -> None:
    assert resolve_triggers(source, manifest, add) == expected


@pytest.mark.parametrize(
    ("replace", "add", "expected"),
    [
        (None, (), ("/g",)),
        (None, ("/x",), ("/g", "/x")),
        (("/r",), ("/x",), ("/r",)),
        ((), ("/x",), ()),
    ],
)
def test_mtimes_copy_filter(replace: tuple | None, add: tuple, expected: tuple) -> None:
    manifest = Manifest(
        directory="/m", mtimes_copy_filter_lines=replace, mtimes_copy_add_filter_lines=add
    )
    assert mtimes_copy_filter(manifest, ["/g"]) == expected


@pytest.mark.parametrize(
    ("tags", "expected"),
    [
        ({}, {}),
        ({"Role": "$IMAGE_STREAM_LEAF_NAME", "Empty": "$NOTHING"}, {"Role": "hello"}),
        ({"Blank": ""}, {"Blank": ""}),
        ({"Lit": "v", "Arch": "x-${ARCH}"}, {"Lit": "v", "Arch": "x-amd64"}),
    ],
)
def test_expand_tags(tags: dict, expected: dict) -> None:
    assert expand_tags(tags, VARIABLES) == expected


@pytest.mark.parametrize(
    ("tags", "expected"),
    [
        ({}, {}),
        ({"K": ("$NOPE",)}, {}),
        ({"K": ()}, {}),
        ({"K": ("$ARCH", "$NOPE", "lit")}, {"K": ("amd64", "lit")}),
    ],
)
def test_expand_tags_to_match(tags: dict, expected: dict) -> None:
    assert expand_tags_to_match(tags, VARIABLES) == expected


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        ([], []),
        (["10_note", "9_first"], ["9_first", "10_note"]),
        ([".hidden", "1_a", ".2_b"], ["1_a"]),
        (["b", "a10", "a9", "a"], ["a", "a9", "a10", "b"]),
        (["02_x", "1_y", "10_z"], ["1_y", "02_x", "10_z"]),
        (["Z", "a", "_"], ["Z", "_", "a"]),  # bytes order otherwise
    ],
)
def test_scripts_in_order(names: list[str], expected: list[str]) -> None:
    assert scripts_in_order(names) == expected
