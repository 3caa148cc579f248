"""The image model and its Go JSON form, checked against real Go records."""

from __future__ import annotations

import calendar
import json
import stat

import pytest

from imaginator.image.model import (
    ZERO_HASH,
    Annotation,
    ComputedRegularInode,
    DirectoryInode,
    FileSystem,
    Image,
    ImageFormatError,
    Package,
    RegularInode,
    SpecialInode,
    SymlinkInode,
    dumps_image,
    format_go_time,
    image_from_json,
    image_to_json,
    loads_image,
    parse_go_time,
)
from imaginator.image.triggers import Trigger
from tests.support.vectors import VECTORS


def vector(name: str) -> tuple[dict, str]:
    """The decoded ``Image`` value of a GetImage reply and its exact text."""
    raw = (VECTORS / name).read_text(encoding="utf-8")
    text = raw[len('{"Image":') : raw.rindex(',"InformationDatabaseURL"')]
    return json.loads(raw)["Image"], text


def ns(year, month, day, hour, minute, second, fraction=0) -> int:
    seconds = calendar.timegm((year, month, day, hour, minute, second))
    return seconds * 10**9 + fraction


@pytest.mark.parametrize("name", ["image-bb.json", "image-hello.json"])
def test_go_records_round_trip_byte_for_byte(name):
    value, text = vector(name)
    assert dumps_image(image_from_json(value)) == text


def test_bootstrap_record_fields():
    image = image_from_json(vector("image-bb.json")[0])
    assert image.created_by == "imaginator"
    assert image.created_for == "peer-client"
    assert image.filter is None
    assert image.triggers is None
    assert image.owner_groups is None
    assert image.tags == {}
    assert image.created_on == ns(2026, 11, 27, 10, 53, 19, 44135347)
    assert image.expires_at == ns(2026, 11, 27, 11, 53, 18, 541586300)
    assert image.packages == (Package("busybox", 43008, "1.35"),)
    assert image.build_log == Annotation(
        object=bytes.fromhex(
            "9c9bd798e68e8729826d09f9aeded49e3e5161fb3a38ee9de96a191279b3dea6"
            "6197191d32f3dfecdf52ebdc3502818c3c929fd48bd24490a0f64f93c01a0ead"
        ),
        url="",
    )
    fs = image.file_system
    assert fs.root.mode == stat.S_IFDIR | 0o755
    paths = {path: (inum, inode) for path, inum, inode in fs.walk()}
    assert paths["/dev/null"][1] == SpecialInode(8630, 0, 0, 1795776798, 477508297, 259)
    assert stat.S_ISCHR(paths["/dev/null"][1].mode)
    assert paths["/bin/sh"][1] == SymlinkInode(0, 0, "busybox")
    assert paths["/etc/greeting"][0] == paths["/etc/greeting.hl"][0] == 5390618
    assert paths["/etc/resolv.conf"][1].hash == ZERO_HASH
    assert paths["/var/log"][1] == DirectoryInode([], 16877, 0, 0)
    assert paths["/tmp"][1].mode == stat.S_IFDIR | 0o1777


def test_manifest_record_fields():
    image = image_from_json(vector("image-hello.json")[0])
    assert image.filter == ("/etc/motd\\.local", "/var/cache/hello/.*")
    assert image.triggers == (
        Trigger(match_lines=("/etc/greeting", "/etc/motd"), service="motd-svc", do_reload=True),
    )
    assert image.owner_groups == ("devs",)
    assert image.owner_users == ("alice",)
    assert image.tags == {"Role": "hello"}
    assert image.source_image == "bootstrap/bb/2026-11-27:10:53:19"
    computed = [i for _, _, i in image.file_system.walk() if isinstance(i, ComputedRegularInode)]
    assert len(computed) == 1 and computed[0].source


@pytest.mark.parametrize("name", ["image-bb.json", "image-hello.json"])
def test_recomputed_totals_match_go(name):
    fs = image_from_json(vector(name)[0]).file_system
    expected = (fs.num_regular_inodes, fs.total_data_bytes, fs.directory_count)
    fs.num_regular_inodes = fs.total_data_bytes = fs.directory_count = 0
    fs.recompute_totals()
    assert (fs.num_regular_inodes, fs.total_data_bytes, fs.directory_count) == expected


def test_walk_is_depth_first_with_absolute_paths():
    fs = image_from_json(vector("image-bb.json")[0]).file_system
    paths = [path for path, _, _ in fs.walk()]
    assert paths[:3] == ["/bin", "/bin/busybox", "/bin/cat"]
    assert paths.index("/dev") == paths.index("/bin/true") + 1
    assert paths[-2:] == ["/var", "/var/log"]
    assert fs.paths_by_inode()[5390618] == ["/etc/greeting", "/etc/greeting.hl"]


def test_object_hashes_cover_data_and_build_log_but_not_empty_files():
    image = image_from_json(vector("image-bb.json")[0])
    hashes = image.object_hashes()
    assert image.build_log.object in hashes
    assert ZERO_HASH not in hashes
    assert len(hashes) == 4  # busybox, greeting, generic-packager, build log


# ---------------------------------------------------------------------- times


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0, "0001-01-01T00:00:00Z"),
        (ns(2026, 11, 27, 11, 53, 18, 541586300), "2026-11-27T11:53:18.5415863Z"),
        (ns(2026, 11, 27, 11, 53, 18), "2026-11-27T11:53:18Z"),
        (ns(2026, 1, 2, 3, 4, 5, 1), "2026-01-02T03:04:05.000000001Z"),
        (-1, "1969-12-31T23:59:59.999999999Z"),
    ],
)
def test_go_time_format_and_parse(value, text):
    assert format_go_time(value) == text
    assert parse_go_time(text) == value


def test_parse_go_time_offsets():
    assert parse_go_time("2026-11-27T12:53:18.5+01:00") == ns(2026, 11, 27, 11, 53, 18, 5 * 10**8)
    assert parse_go_time("2026-11-27T09:23:18-02:30") == ns(2026, 11, 27, 11, 53, 18)


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-27T11:53:18",  # naive
        "2026-11-27 11:53:18Z",
        "2026-11-27T11:53:18.1234567890Z",
        "2026-02-30T11:53:18Z",
        "2026-11-27T24:00:00Z",
        "",
    ],
)
def test_parse_go_time_rejects(text):
    with pytest.raises(ValueError):
        parse_go_time(text)


# ---------------------------------------------------------------------- emission


def small_image(**changes) -> Image:
    table = {
        9: RegularInode(0o100644, 1, 2, 3, 4, 5, bytes(range(64))),
        10: DirectoryInode([], 0o40700, 0, 0),
        11: ComputedRegularInode(0o100600, 0, 0, "filegen:6972"),
    }
    root = DirectoryInode([("a", 9), ("c", 11), ("empty", 10)], 0o40755, 0, 0)
    fs = FileSystem(table, root)
    fs.recompute_totals()
    return Image(file_system=fs, **changes)


def test_inode_table_keys_sort_as_strings_like_go():
    out = image_to_json(small_image())
    assert list(out["FileSystem"]["InodeTable"]) == ["10", "11", "9"]


def test_key_order_and_null_conventions():
    out = image_to_json(small_image(filter=(), triggers=None, tags={"b": "2", "a": "1"}))
    assert list(out) == [
        "BuildBranch",
        "BuildCommitId",
        "BuildGitUrl",
        "CreatedBy",
        "CreatedFor",
        "Filter",
        "FileSystem",
        "Triggers",
        "ReleaseNotes",
        "BuildLog",
        "CreatedOn",
        "ExpiresAt",
        "OwnerGroups",
        "OwnerUsers",
        "Packages",
        "SourceImage",
        "Tags",
    ]
    assert out["Filter"] == {"FilterLines": None}
    assert out["Triggers"] is None and out["Packages"] is None and out["OwnerUsers"] is None
    assert list(out["Tags"]) == ["a", "b"]
    fs = out["FileSystem"]
    assert list(fs)[:5] == [
        "InodeTable",
        "NumRegularInodes",
        "TotalDataBytes",
        "DirectoryCount",
        "EntryList",
    ]
    assert fs["InodeTable"]["10"]["EntryList"] is None
    assert list(fs["InodeTable"]["9"]) == [
        "Mode",
        "Uid",
        "Gid",
        "MtimeNanoSeconds",
        "MtimeSeconds",
        "Size",
        "Hash",
    ]
    assert fs["InodeTable"]["9"]["Hash"] == bytes(range(64)).hex()
    assert fs["InodeTable"]["11"] == {
        "Mode": 0o100600,
        "Uid": 0,
        "Gid": 0,
        "Source": "filegen:6972",
    }
    assert (fs["NumRegularInodes"], fs["TotalDataBytes"], fs["DirectoryCount"]) == (1, 5, 2)


def test_strings_are_escaped_like_go():
    text = dumps_image(small_image(build_git_url="a<b>&c\u2028é\n"))
    assert '"BuildGitUrl":"a\\u003cb\\u003e\\u0026c\\u2028é\\n"' in text
    assert loads_image(text).build_git_url == "a<b>&c\u2028é\n"


def test_indented_output_is_go_marshal_indent():
    text = dumps_image(Image(), indent=4)
    assert text.startswith('{\n    "BuildBranch": "",\n')
    assert '\n    "FileSystem": null,\n' in text
    assert text.endswith('\n    "Tags": null\n}')


def test_image_round_trips_through_json():
    image = small_image(
        build_log=Annotation(object=bytes(64), url=""),
        release_notes=Annotation(url="http://notes"),
        packages=(Package("p", 1, "v"),),
        owner_groups=("g",),
        created_on=ns(2026, 1, 1, 0, 0, 0, 120),
    )
    assert loads_image(dumps_image(image)) == image


# ---------------------------------------------------------------------- validation


def bb_with(mutate) -> dict:
    value = json.loads(json.dumps(vector("image-bb.json")[0]))
    mutate(value)
    return value


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda v: v["FileSystem"]["InodeTable"]["5390607"].update(Hash="AB" * 64),
            "image.FileSystem.InodeTable.5390607.Hash: expected 128 lowercase hex digits",
        ),
        (
            lambda v: v["FileSystem"]["InodeTable"]["5390607"].update(Uid="0"),
            "image.FileSystem.InodeTable.5390607.Uid: expected integer, got string",
        ),
        (
            lambda v: v["FileSystem"]["InodeTable"]["5390607"].update(Size=True),
            "Size: expected integer, got boolean",
        ),
        (
            lambda v: v["FileSystem"]["InodeTable"]["5390607"].update(Size=-1),
            "Size: -1 out of range",
        ),
        (lambda v: v.update(CreatedOn="yesterday"), "image.CreatedOn: not an RFC 3339 time"),
        (lambda v: v.update(Packages={}), "image.Packages: expected array, got object"),
        (lambda v: v.update(OwnerGroups=[1]), "image.OwnerGroups[0]: expected string"),
        (lambda v: v.update(Tags={"a": 1}), "image.Tags.a: expected string, got integer"),
        (lambda v: v.update(BuildLog={"Object": "x"}), "image.BuildLog.Object"),
        (
            lambda v: v["FileSystem"]["InodeTable"].pop("5390607"),
            "names unknown inode 5390607",
        ),
        (
            lambda v: v["FileSystem"]["InodeTable"]["5390601"]["EntryList"].append(
                {"Name": "again", "InodeNumber": 5390599}
            ),
            "directory inode 5390599 is hard-linked",
        ),
        (
            lambda v: v["FileSystem"]["InodeTable"].update({"12": {"Mode": 1}}),
            "cannot tell the inode type",
        ),
        (
            lambda v: v["FileSystem"]["InodeTable"].update({"x1": {"Symlink": ""}}),
            "bad inode number 'x1'",
        ),
        (
            lambda v: v.update(Triggers={"Triggers": [{"MatchLines": 3}]}),
            "image.Triggers[0].MatchLines",
        ),
    ],
)
def test_bad_records_are_rejected_with_the_key_path(mutate, message):
    with pytest.raises(ImageFormatError) as info:
        image_from_json(bb_with(mutate))
    assert message in str(info.value)


def test_non_objects_are_rejected():
    with pytest.raises(ImageFormatError, match="image: expected object, got null"):
        image_from_json(None)
    with pytest.raises(ImageFormatError, match="invalid JSON"):
        loads_image("{")


def test_missing_keys_take_go_zero_values():
    image = image_from_json({"FileSystem": {"EntryList": None}})
    assert image.created_on == 0 and image.build_branch == "" and image.tags is None
    assert image.file_system.root.entries == []
