"""The image model's GOB schema against the images the Go programs sent and
the imageserver returned (tests/data/gob)."""

from __future__ import annotations

import dataclasses
import hashlib
import stat

import pytest

from imaginator.goformats.gob import Decoder, Encoder, GobError, GoInterface, GoTime, TypeIds
from imaginator.image.gob import (
    COMPUTED_NAME,
    IMAGE,
    REGULAR_INODE,
    REGULAR_NAME,
    image_from_gob,
    image_to_gob,
    time_to_gob,
)
from imaginator.image.model import (
    ComputedRegularInode,
    DirectoryInode,
    ImageFormatError,
    RegularInode,
    SpecialInode,
    SymlinkInode,
)
from imaginator.store.imageserver_messages import AddImageRequest, GetImageResponse
from tests.support.gobstreams import STREAMS, recorded_calls


def _call(label, method, index=0):
    return [call for call in recorded_calls(label) if call.method == method][index]


def _added(label):
    call = _call(label, "ImageServer.AddImage")
    (value,) = Decoder(AddImageRequest.SCHEMA).feed(call.requests[0].data)
    return AddImageRequest.from_gob(value)


def _got(label, index=0):
    call = _call(label, "ImageServer.GetImage", index)
    (value,) = Decoder(GetImageResponse.SCHEMA).feed(call.responses[0].data)
    return GetImageResponse.from_gob(value).image


def _as_stored(image, returned):
    """What the imageserver changes: it stamps CreatedBy and CreatedOn."""
    return dataclasses.replace(
        image, created_by=returned.created_by, created_on=returned.created_on
    )


def test_the_image_imagetool_added_is_the_image_the_server_returns():
    added = _added("add-1")
    returned = _got("get-1")
    assert added.image_name == "tools/tree"
    assert returned.created_on != 0 and added.image.created_on == 0
    assert _as_stored(added.image, returned) == returned


def test_the_imaginators_bootstrap_image_comes_back_unchanged():
    added = _added("imaginator-bb-3")
    returned = _got("imaginator-hello-3")  # the source image of apps/hello
    assert added.image_name.startswith("bootstrap/bb/")
    assert _as_stored(added.image, returned) == returned
    assert returned.created_for == "alice"
    assert returned.packages and returned.packages[0].name == "busybox"
    assert returned.tags == {} and returned.filter is None
    assert returned.expires_at > returned.created_on > 0


def test_every_inode_kind_and_the_odd_names():
    fs = _added("add-1").image.file_system
    by_path = {path: inode for path, _inum, inode in fs.walk()}
    assert isinstance(by_path["/dev/null"], SpecialInode)
    assert by_path["/dev/null"].rdev == 0x103 and stat.S_ISCHR(by_path["/dev/null"].mode)
    assert stat.S_ISBLK(by_path["/dev/sda"].mode) and stat.S_ISFIFO(by_path["/dev/fifo"].mode)
    assert by_path["/bin/link"] == SymlinkInode(0, 0, "tool")
    assert by_path["/bin/tool"].mode & stat.S_ISUID
    assert isinstance(by_path["/empty-dir"], DirectoryInode) and by_path["/empty-dir"].entries == []
    assert by_path["/etc/empty"].size == 0 and by_path["/etc/empty"].hash == bytes(64)
    odd = by_path["/usr/bin/caf\u00e9 & <tea>"]
    assert isinstance(odd, RegularInode) and odd.size == len("odd name\n")
    paths = fs.paths_by_inode()
    assert sorted(paths[fs.root.entries[3][1]]) == ["/etc"]
    assert any(sorted(p) == ["/etc/motd", "/etc/motd.hardlink"] for p in paths.values())
    assert by_path["/etc/passwd"].uid == 1000 and by_path["/etc/passwd"].gid == 1001
    assert by_path["/etc/motd"].mtime_seconds == 1_700_000_000
    assert by_path["/etc/motd"].mtime_nanoseconds == 123456789


def test_the_objects_uploaded_are_the_hashes_in_the_image():
    calls = recorded_calls("add-1")
    image = _added("add-1").image
    sent = set()
    for call in calls:
        if call.method == "ObjectServer.AddObjects":
            sent |= {hashlib.sha512(raw).digest() for raw in call.raw_sent}
    assert image.object_hashes() <= sent
    assert image.build_log.object in sent
    assert image.release_notes.url == "https://example.com/notes"
    assert image.release_notes.object is None


def test_a_manifest_image_has_its_filter_triggers_owners_tags_and_computed_file():
    image = _added("imaginator-hello-3").image
    assert image.filter == ("/etc/motd\\.local", "/var/cache/hello/.*")
    (trigger,) = image.triggers
    assert trigger.service == "motd-svc" and trigger.do_reload
    assert image.owner_groups == ("devs",) and image.owner_users == ("alice",)
    assert image.tags == {"Role": "hello"}
    assert image.source_image.startswith("bootstrap/bb/")
    by_path = {path: inode for path, _inum, inode in image.file_system.walk()}
    assert by_path["/etc/computed"] == ComputedRegularInode(0o100644, 0, 0, "localhost:6972")


@pytest.mark.parametrize("label", ["add-1", "add-expiring-1", "copy-1", "addi-1"])
def test_through_our_model_and_back_gives_gos_bytes(label):
    """imagetool is a fresh Go process per command, so its type ids start at 64
    and run on across its calls: ours, with one TypeIds for the connection,
    match its bytes exactly, image included."""
    ids = TypeIds()
    from tests.unit.test_imageserver_messages import REQUESTS

    for call in recorded_calls(label):
        message_type = REQUESTS[call.method]
        decoder = Decoder(message_type.SCHEMA)
        encoder = Encoder(ids)
        for message in call.requests:
            (value,) = decoder.feed(message.data)
            ours = message_type.from_gob(value).to_gob()
            if message_type is AddImageRequest:
                ours["Image"] = image_to_gob(image_from_gob(value["Image"]), offset=0)
            assert encoder.encode(message_type.SCHEMA, ours) == message.data, call.method


def test_the_image_file_builder_tool_wrote():
    data = (STREAMS / "builder-tool-image.gob").read_bytes()
    decoder = Decoder(IMAGE)
    (value,) = decoder.feed(data)
    image = image_from_gob(value)
    assert image.tags == {"Role": "hello"} and image.build_log.object is not None
    assert min(decoder.types) == 68  # builder-tool had sent 4 types before the image
    assert Encoder(TypeIds(68)).encode(IMAGE, image_to_gob(image, offset=0)) == data


def test_times_go_in_the_local_zone_unless_told():
    assert time_to_gob(0) == GoTime()
    ns = 1_500_000_000_123_456_789
    sent = time_to_gob(ns, offset=3600)
    assert sent == GoTime(ns // 10**9 + 62_135_596_800, 123_456_789, 3600)
    assert sent.unix_ns == ns
    assert time_to_gob(ns).offset is not None  # the machine's zone, never "UTC" (-1)


def test_an_unknown_inode_type_is_refused():
    value = image_to_gob(_added("add-1").image, offset=0)
    inum = next(iter(value["FileSystem"]["InodeTable"]))
    value["FileSystem"]["InodeTable"][inum] = GoInterface("*filesystem.Bogus", {}, REGULAR_INODE)
    data = Encoder().encode(IMAGE, value)
    with pytest.raises(GobError, match="not registered"):
        Decoder(IMAGE).feed(data)


def test_a_dangling_directory_entry_is_refused():
    value = image_to_gob(_added("add-1").image, offset=0)
    value["FileSystem"]["DirectoryInode"]["EntryList"].append({"Name": "ghost", "InodeNumber": 1})
    (decoded,) = Decoder(IMAGE).feed(Encoder().encode(IMAGE, value))
    with pytest.raises(ImageFormatError, match="ghost"):
        image_from_gob(decoded)


def test_inode_names_match_the_recordings():
    names = set()
    for label in ("add-1", "imaginator-hello-3"):
        call = _call(label, "ImageServer.AddImage")
        (value,) = Decoder().feed(call.requests[0].data)
        names |= {i.name for i in value["Image"]["FileSystem"]["InodeTable"].values()}
    assert REGULAR_NAME in names and COMPUTED_NAME in names
