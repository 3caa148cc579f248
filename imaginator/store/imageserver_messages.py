"""The imageserver's request and reply messages, as GOB schemas and dataclasses.

These are the structs of Dominator's ``proto/imageserver`` and
``proto/objectserver`` that the imaginator exchanges with an imageserver, with
Go's field names, order and types exactly (checked against the bytes the Go
programs send, ``tests/data/gob``). Each dataclass has its schema in
``SCHEMA`` and converts with ``to_gob()`` / ``from_gob(value)``; times are our
integer nanoseconds (0: Go's zero time), durations integer nanoseconds, hashes
64 bytes, images our ``Image`` model.

The SRPC framing around them (method lines, status lines, the raw object
bytes after ``AddObjectRequest`` and ``GetObjectsResponse``) is the client's
business, not this module's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Self

from imaginator.goformats.gob import BOOL, INT64, STRING, TIME, UINT64, Field, Map, Slice, Struct
from imaginator.image.gob import (
    HASH,
    IMAGE,
    image_from_gob,
    image_to_gob,
    time_from_gob,
    time_to_gob,
)
from imaginator.image.model import Image

HASHES = Slice(HASH, "[]hash.Hash")
SIZES = Slice(UINT64, "[]uint64")
#: ``tags.MatchTags``: per key, any of the values; keys AND-ed.
MATCH_TAGS = Map(STRING, Slice(STRING, ""), "MatchTags")


def _struct(name: str, *spec: tuple[str, Any] | tuple[str, Any, bool]) -> Struct:
    return Struct(name, [Field(*item) for item in spec])


class _Message:
    """Conversion shared by the messages: attributes map to Go fields in
    order; ``_TIMES`` name the ``time.Time`` fields (integer nanoseconds here)."""

    SCHEMA: ClassVar[Struct]
    _TIMES: ClassVar[frozenset[str]] = frozenset()
    # Every message is a dataclass: this says so to the type checker (``fields``).
    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]

    def to_gob(self) -> dict[str, Any]:
        value = {}
        for attribute, go_field in zip(fields(self), self.SCHEMA.fields, strict=True):
            item = getattr(self, attribute.name)
            if go_field.name in self._TIMES:
                item = time_to_gob(item)
            elif go_field.type is IMAGE and item is not None:
                item = image_to_gob(item)
            value[go_field.name] = item
        return value

    @classmethod
    def from_gob(cls, value: Mapping[str, Any]) -> Self:
        kwargs = {}
        for attribute, go_field in zip(fields(cls), cls.SCHEMA.fields, strict=True):
            item = value.get(go_field.name, go_field.zero())
            if go_field.name in cls._TIMES:
                item = time_from_gob(item)
            elif go_field.type is IMAGE and item is not None:
                item = image_from_gob(item)
            kwargs[attribute.name] = item
        return cls(**kwargs)


# ------------------------------------------------------------------ ImageServer


@dataclass
class AddImageRequest(_Message):
    image_name: str
    image: Image | None
    SCHEMA = _struct("AddImageRequest", ("ImageName", STRING), ("Image", IMAGE, True))


@dataclass
class AddImageResponse(_Message):
    SCHEMA = _struct("AddImageResponse")


@dataclass
class CheckImageRequest(_Message):
    image_name: str
    SCHEMA = _struct("CheckImageRequest", ("ImageName", STRING))


@dataclass
class CheckImageResponse(_Message):
    image_exists: bool = False
    SCHEMA = _struct("CheckImageResponse", ("ImageExists", BOOL))


@dataclass
class GetImageRequest(_Message):
    image_name: str
    ignore_filesystem: bool = False
    ignore_filesystem_if_expiring: bool = False
    timeout: int = 0  # nanoseconds; over 0: wait that long for the image to appear
    SCHEMA = _struct(
        "GetImageRequest",
        ("ImageName", STRING),
        ("IgnoreFilesystem", BOOL),
        ("IgnoreFilesystemIfExpiring", BOOL),
        ("Timeout", INT64),
    )


@dataclass
class GetImageResponse(_Message):
    image: Image | None = None
    information_database_url: str = ""
    SCHEMA = _struct("GetImageResponse", ("Image", IMAGE, True), ("InformationDatabaseURL", STRING))


@dataclass
class FindLatestImageRequest(_Message):
    directory_name: str
    build_commit_id: str = ""
    ignore_expiring_images: bool = False
    tags_to_match: dict[str, list[str]] | None = None
    SCHEMA = _struct(
        "FindLatestImageRequest",
        ("BuildCommitId", STRING),
        ("DirectoryName", STRING),
        ("IgnoreExpiringImages", BOOL),
        ("TagsToMatch", MATCH_TAGS),
    )

    # Go's field order differs from the order that reads best here.
    def to_gob(self) -> dict[str, Any]:
        return {
            "BuildCommitId": self.build_commit_id,
            "DirectoryName": self.directory_name,
            "IgnoreExpiringImages": self.ignore_expiring_images,
            "TagsToMatch": self.tags_to_match,
        }

    @classmethod
    def from_gob(cls, value: Mapping[str, Any]) -> Self:
        return cls(
            directory_name=value.get("DirectoryName", ""),
            build_commit_id=value.get("BuildCommitId", ""),
            ignore_expiring_images=value.get("IgnoreExpiringImages", False),
            tags_to_match=value.get("TagsToMatch"),
        )


@dataclass
class FindLatestImageResponse(_Message):
    image_name: str = ""
    error: str = ""
    SCHEMA = _struct("FindLatestImageResponse", ("ImageName", STRING), ("Error", STRING))


@dataclass
class ChangeImageExpirationRequest(_Message):
    expires_at: int  # nanoseconds; 0 makes the image permanent
    image_name: str
    SCHEMA = _struct("ChangeImageExpirationRequest", ("ExpiresAt", TIME), ("ImageName", STRING))
    _TIMES = frozenset({"ExpiresAt"})


@dataclass
class ChangeImageExpirationResponse(_Message):
    error: str = ""
    SCHEMA = _struct("ChangeImageExpirationResponse", ("Error", STRING))


@dataclass
class GetImageExpirationRequest(_Message):
    image_name: str
    SCHEMA = _struct("GetImageExpirationRequest", ("ImageName", STRING))


@dataclass
class GetImageExpirationResponse(_Message):
    error: str = ""
    expires_at: int = 0
    SCHEMA = _struct("GetImageExpirationResponse", ("Error", STRING), ("ExpiresAt", TIME))
    _TIMES = frozenset({"ExpiresAt"})


@dataclass
class MakeDirectoryRequest(_Message):
    directory_name: str
    make_all: bool = False
    SCHEMA = _struct("MakeDirectoryRequest", ("DirectoryName", STRING), ("MakeAll", BOOL))


@dataclass
class MakeDirectoryResponse(_Message):
    SCHEMA = _struct("MakeDirectoryResponse")


DIRECTORY_METADATA = _struct("DirectoryMetadata", ("OwnerGroup", STRING))


@dataclass
class Directory(_Message):
    """One message of ``ImageServer.ListDirectories``; an empty name ends the list."""

    name: str = ""
    owner_group: str = ""
    SCHEMA = _struct("Directory", ("Name", STRING), ("Metadata", DIRECTORY_METADATA))

    def to_gob(self) -> dict[str, Any]:
        return {"Name": self.name, "Metadata": {"OwnerGroup": self.owner_group}}

    @classmethod
    def from_gob(cls, value: Mapping[str, Any]) -> Self:
        metadata = value.get("Metadata") or {}
        return cls(name=value.get("Name", ""), owner_group=metadata.get("OwnerGroup", ""))


@dataclass
class DeleteImageRequest(_Message):
    image_name: str
    SCHEMA = _struct("DeleteImageRequest", ("ImageName", STRING))


@dataclass
class DeleteImageResponse(_Message):
    SCHEMA = _struct("DeleteImageResponse")


# ------------------------------------------------------------------ ObjectServer


@dataclass
class CheckObjectsRequest(_Message):
    hashes: list[bytes] = field(default_factory=list)
    SCHEMA = _struct("CheckObjectsRequest", ("Hashes", HASHES))


@dataclass
class CheckObjectsResponse(_Message):
    """``object_sizes[i]`` is 0 when ``hashes[i]`` is not stored."""

    object_sizes: list[int] | None = None
    SCHEMA = _struct("CheckObjectsResponse", ("ObjectSizes", SIZES))


@dataclass
class AddObjectRequest(_Message):
    """Followed on the wire by exactly ``length`` raw bytes; length 0 ends the stream."""

    length: int
    expected_hash: bytes | None = None
    SCHEMA = _struct("AddObjectRequest", ("Length", UINT64), ("ExpectedHash", HASH, True))


@dataclass
class AddObjectResponse(_Message):
    error_string: str = ""
    hash: bytes = bytes(64)
    added: bool = False
    SCHEMA = _struct("AddObjectResponse", ("ErrorString", STRING), ("Hash", HASH), ("Added", BOOL))


@dataclass
class GetObjectsRequest(_Message):
    hashes: list[bytes] = field(default_factory=list)
    exclusive: bool = False
    SCHEMA = _struct("GetObjectsRequest", ("Exclusive", BOOL), ("Hashes", HASHES))

    def to_gob(self) -> dict[str, Any]:
        return {"Exclusive": self.exclusive, "Hashes": list(self.hashes)}

    @classmethod
    def from_gob(cls, value: Mapping[str, Any]) -> Self:
        return cls(hashes=list(value.get("Hashes") or ()), exclusive=value.get("Exclusive", False))


@dataclass
class GetObjectsResponse(_Message):
    """When ``response_string`` is empty, the objects follow raw, back to back."""

    response_string: str = ""
    object_sizes: list[int] | None = None
    SCHEMA = _struct("GetObjectsResponse", ("ResponseString", STRING), ("ObjectSizes", SIZES))
