"""A manifest directory, read into a typed ``Manifest`` (reference §4).

``load_manifest`` reads every metadata file of a manifest directory (the
``manifest`` JSON, computed files, filter, triggers, owners, tags and the
package list) and notes which of the optional trees and script directories are
present. It is blocking, pure file reading, meant to run in a thread; the build
pipeline does the copying and running.

The order in which files are read, and so which error a manifest with several
problems reports, follows the Go imaginator: computed files, filter, owners,
tags, triggers, then ``manifest``.

The pure helpers ``merge_filter``, ``merge_computed_files``,
``resolve_triggers``, ``mtimes_copy_filter``, ``expand_tags`` and
``scripts_in_order`` combine a manifest with its source image and the main
configuration when the image is packed.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from imaginator.config.expand import expand
from imaginator.config.fields import FieldReader
from imaginator.config.main import ConfigError, Owners
from imaginator.goformats.jsonc import ConfigError as _JsoncError
from imaginator.goformats.jsonc import loads as jsonc_loads
from imaginator.goformats.versionsort import version_key
from imaginator.image.filter import Filter, FilterError, parse_filter_lines
from imaginator.image.triggers import Trigger, TriggersError, merge_triggers, parse_triggers

MANIFEST_FILE = "manifest"
PACKAGE_LIST_FILE = "package-list"
OWNERS_FILE = "owners.json"
TAGS_FILE = "tags.json"

# The optional trees and script directories, in the order a build uses them.
FILES = "files"
FILES_APPEND = "files.append"
PRE_INSTALL_SCRIPTS = "pre-install-scripts"
POST_INSTALL_FILES = "post-install-files"
POST_INSTALL_FILES_APPEND = "post-install-files.append"
SCRIPTS = "scripts"
POST_SCRIPTS_FILES = "post-scripts-files"
POST_CLEANUP_SCRIPTS = "post-cleanup-scripts"
TESTS = "tests"
TREE_NAMES = (
    FILES,
    FILES_APPEND,
    PRE_INSTALL_SCRIPTS,
    POST_INSTALL_FILES,
    POST_INSTALL_FILES_APPEND,
    SCRIPTS,
    POST_SCRIPTS_FILES,
    POST_CLEANUP_SCRIPTS,
    TESTS,
)


class ManifestError(Exception):
    """A manifest directory that cannot be used; the message is the build error."""


@dataclass(frozen=True)
class ComputedFile:
    """A file whose contents a file generator at ``source`` supplies per machine."""

    filename: str
    source: str


@dataclass(frozen=True)
class Manifest:
    """Everything a build needs from a manifest directory except the trees' contents.

    ``source_image*`` are expanded with the build variables. ``None`` for
    ``computed_files``, ``image_filter`` and ``triggers`` means the file is
    absent; the ``*_add`` flags say the ``.add`` form was used (merge with the
    source image's). ``mtimes_copy_filter_lines`` is None when the manifest
    does not replace the global mtimes-copy filter. ``tags`` are raw (see
    ``expand_tags``). ``trees`` names the optional directories present.
    """

    directory: str
    source_image: str = ""
    source_image_build_variables: Mapping[str, str] = field(default_factory=dict)
    source_image_git_commit_id: str = ""
    source_image_tags_to_match: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    filter_lines: tuple[str, ...] = ()
    mtimes_copy_filter_lines: tuple[str, ...] | None = None
    mtimes_copy_add_filter_lines: tuple[str, ...] = ()
    computed_files: tuple[ComputedFile, ...] | None = None
    computed_files_add: bool = False
    image_filter: tuple[str, ...] | None = None
    filter_add: bool = False
    unoptimised_filter_lines: tuple[str, ...] = ()
    triggers: tuple[Trigger, ...] | None = None
    triggers_add: bool = False
    owners: Owners = field(default_factory=Owners)
    tags: Mapping[str, str] = field(default_factory=dict)
    package_list: tuple[str, ...] = ()
    trees: frozenset[str] = frozenset()

    def path(self, name: str) -> str:
        """The path of entry ``name`` of the manifest directory (present or not)."""
        return os.path.join(self.directory, name)

    def tree(self, name: str) -> str | None:
        """The path of optional directory ``name`` (e.g. ``SCRIPTS``), or None if absent."""
        return self.path(name) if name in self.trees else None


# ------------------------------------------------------------ file reading


def _os_error_text(exc: OSError) -> str:
    """An OS error as Go prints it: ``open <path>: no such file or directory``."""
    reason = exc.strerror or str(exc)
    reason = reason[:1].lower() + reason[1:]
    return f"open {exc.filename}: {reason}" if exc.filename else reason


def _read_file(directory: str, name: str) -> bytes | None:
    """The contents of file ``name``, or None if it does not exist."""
    path = os.path.join(directory, name)
    try:
        with open(path, "rb") as stream:
            return stream.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ManifestError(f"error reading {name}: {_os_error_text(exc)}") from None


def _decode_json(data: bytes, name: str) -> Any:
    try:
        return jsonc_loads(data, name)
    except (_JsoncError, ConfigError) as exc:
        raise ManifestError(str(exc)) from None


def _text_lines(data: bytes) -> list[str]:
    """Lines with surrounding blanks removed, blank and ``#`` lines skipped."""
    text = data.decode("utf-8", errors="replace")
    lines = (line.strip() for line in text.split("\n"))
    return [line for line in lines if line and not line.startswith("#")]


# ------------------------------------------------------------ typed fields


_fields = FieldReader(ManifestError)
_get_field = _fields.get
_string = _fields.string
_string_list = _fields.string_list
_string_map = _fields.string_map
_object = _fields.object


def _filter_lines(value: Any, where: str) -> tuple[str, ...] | None:
    """Path expressions, each compiled; empty lines dropped as Go's ``filter.New`` does.

    None when the field is absent or null.
    """
    if value is None:
        return None
    lines = _string_list(value, where)
    for i, line in enumerate(lines):
        if line:
            try:
                Filter((line,))
            except FilterError as exc:
                raise ManifestError(f"{where}[{i}]: {exc}") from None
    return tuple(line for line in lines if line)


# ------------------------------------------------------------ computed files


def parse_computed_files_text(data: bytes) -> tuple[ComputedFile, ...]:
    """``<filename> <source>`` lines; anything but exactly two fields is a bad line."""
    result = []
    for line in _text_lines(data):
        fields = line.split()
        if len(fields) != 2:
            raise ManifestError(f"bad line: {line}")
        result.append(ComputedFile(fields[0], fields[1]))
    return tuple(result)


def parse_computed_files_json(data: bytes, name: str) -> tuple[ComputedFile, ...]:
    """A JSON array of ``{"Filename": …, "Source": …}`` objects."""
    items = _decode_json(data, name)
    if items is None:
        return ()
    if not isinstance(items, list):
        raise ManifestError(f"{name}: expected a list of objects")
    result = []
    for i, item in enumerate(items):
        where = f"{name}: [{i}]"
        obj = _object(item, where)
        result.append(
            ComputedFile(
                filename=_string(_get_field(obj, "Filename"), f"{where}.Filename"),
                source=_string(_get_field(obj, "Source"), f"{where}.Source"),
            )
        )
    return tuple(result)


def _read_computed_files_spelling(directory: str, base: str) -> tuple[ComputedFile, ...] | None:
    """``<base>.json`` if present (preferred), else the text ``<base>``, else None."""
    data = _read_file(directory, base + ".json")
    if data is not None:
        return parse_computed_files_json(data, base + ".json")
    data = _read_file(directory, base)
    return None if data is None else parse_computed_files_text(data)


def read_computed_files(directory: str) -> tuple[tuple[ComputedFile, ...] | None, bool]:
    """``(computed files, add)`` from the four spellings of reference §4.3."""
    plain = _read_computed_files_spelling(directory, "computed-files")
    added = _read_computed_files_spelling(directory, "computed-files.add")
    if plain is not None and added is not None:
        raise ManifestError("computed-files and computed-files.add files both present")
    if added is not None:
        return added, True
    return plain, False


# ------------------------------------------------------- filter and triggers


def read_image_filter(directory: str) -> tuple[tuple[str, ...] | None, bool, tuple[str, ...]]:
    """``(filter lines, add, unoptimised lines)`` from ``filter`` or ``filter.add``.

    No file gives None (a sparse image); an empty ``filter`` gives ``()``.
    """
    plain = _read_file(directory, "filter")
    added = _read_file(directory, "filter.add")
    if plain is not None and added is not None:
        raise ManifestError("filter and filter.add files both present")
    if plain is None and added is None:
        return None, False, ()
    name, data = ("filter", plain) if plain is not None else ("filter.add", added)
    assert data is not None
    lines = tuple(parse_filter_lines(data.decode("utf-8", errors="replace")))
    try:
        compiled = Filter(lines)
    except FilterError as exc:
        raise ManifestError(f"error compiling {name}: {exc}") from None
    return lines, name == "filter.add", tuple(compiled.unoptimised_lines())


def read_triggers(directory: str) -> tuple[tuple[Trigger, ...] | None, bool]:
    """``(triggers, add)`` from ``triggers`` or ``triggers.add``; None if neither."""
    plain = _read_file(directory, "triggers")
    added = _read_file(directory, "triggers.add")
    if plain is not None and added is not None:
        raise ManifestError("triggers and triggers.add files both present")
    if plain is None and added is None:
        return None, False
    name, data = ("triggers", plain) if plain is not None else ("triggers.add", added)
    assert data is not None
    try:
        return parse_triggers(data, name), name == "triggers.add"
    except TriggersError as exc:
        raise ManifestError(str(exc)) from None


# ------------------------------------------------------- owners, tags, lists


def read_owners(directory: str) -> Owners:
    """``owners.json`` as ``Owners``; a missing file means no owners."""
    data = _read_file(directory, OWNERS_FILE)
    if data is None:
        return Owners()
    obj = _object(_decode_json(data, OWNERS_FILE), OWNERS_FILE)
    return Owners(
        groups=_string_list(_get_field(obj, "Groups"), f"{OWNERS_FILE}: Groups"),
        users=_string_list(_get_field(obj, "Users"), f"{OWNERS_FILE}: Users"),
    )


def read_tags(directory: str) -> dict[str, str]:
    """``tags.json`` as raw (unexpanded) tags; a missing file means no tags."""
    data = _read_file(directory, TAGS_FILE)
    if data is None:
        return {}
    obj = _object(_decode_json(data, TAGS_FILE), TAGS_FILE)
    return {key: _string(value, f"{TAGS_FILE}: {key}") for key, value in obj.items()}


def read_package_list(directory: str) -> tuple[str, ...]:
    """``package-list``: one package per line, blank and ``#`` lines skipped."""
    data = _read_file(directory, PACKAGE_LIST_FILE)
    return () if data is None else tuple(_text_lines(data))


def find_trees(directory: str) -> frozenset[str]:
    """Which of ``TREE_NAMES`` are present; one that is not a directory is an error."""
    present = set()
    for name in TREE_NAMES:
        path = os.path.join(directory, name)
        if os.path.isdir(path):
            present.add(name)
        elif os.path.lexists(path):
            raise ManifestError(f"{name} is not a directory")
    return frozenset(present)


# ------------------------------------------------------------ manifest file


@dataclass(frozen=True)
class ManifestFile:
    """The fields of the ``manifest`` JSON file, expanded with the build variables."""

    source_image: str = ""
    source_image_build_variables: Mapping[str, str] = field(default_factory=dict)
    source_image_git_commit_id: str = ""
    source_image_tags_to_match: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    filter_lines: tuple[str, ...] = ()
    mtimes_copy_filter_lines: tuple[str, ...] | None = None
    mtimes_copy_add_filter_lines: tuple[str, ...] = ()


def expand_tags_to_match(
    tags: Mapping[str, tuple[str, ...]], variables: Mapping[str, str]
) -> dict[str, tuple[str, ...]]:
    """Expand each value; empty values are dropped, and keys left without values."""
    result = {}
    for key, values in tags.items():
        expanded = tuple(v for v in (expand(v, variables.get) for v in values) if v)
        if expanded:
            result[key] = expanded
    return result


def _tags_to_match(value: Any, where: str) -> dict[str, tuple[str, ...]]:
    return {
        key: _string_list(item, f"{where}.{key}") for key, item in _object(value, where).items()
    }


def parse_manifest_file(data: bytes, variables: Mapping[str, str]) -> ManifestFile:
    """Decode the ``manifest`` file and expand its ``SourceImage*`` fields.

    Errors are ``ManifestError("manifest: …")``; ``load_manifest`` adds the
    ``error reading manifest file:`` prefix.
    """
    obj = _object(_decode_json(data, MANIFEST_FILE), MANIFEST_FILE)

    def get(name: str) -> tuple[Any, str]:
        return _get_field(obj, name), f"{MANIFEST_FILE}: {name}"

    def expanded(text: str) -> str:
        return expand(text, variables.get)

    build_variables = _string_map(*get("SourceImageBuildVariables"))
    lines = {
        name: _filter_lines(*get(name))
        for name in ("FilterLines", "MtimesCopyFilterLines", "MtimesCopyAddFilterLines")
    }
    return ManifestFile(
        source_image=expanded(_string(*get("SourceImage"))),
        source_image_build_variables={k: expanded(v) for k, v in build_variables.items()},
        source_image_git_commit_id=expanded(_string(*get("SourceImageGitCommitId"))),
        source_image_tags_to_match=expand_tags_to_match(
            _tags_to_match(*get("SourceImageTagsToMatch")), variables
        ),
        filter_lines=lines["FilterLines"] or (),
        mtimes_copy_filter_lines=lines["MtimesCopyFilterLines"],
        mtimes_copy_add_filter_lines=lines["MtimesCopyAddFilterLines"] or (),
    )


def read_manifest_file(directory: str, variables: Mapping[str, str]) -> ManifestFile:
    """The ``manifest`` file; any problem is ``error reading manifest file: …``."""
    path = os.path.join(directory, MANIFEST_FILE)
    try:
        with open(path, "rb") as stream:
            data = stream.read()
    except OSError as exc:
        raise ManifestError(f"error reading manifest file: {_os_error_text(exc)}") from None
    try:
        return parse_manifest_file(data, variables)
    except ManifestError as exc:
        raise ManifestError(f"error reading manifest file: {exc}") from None


def load_manifest(directory: str, variables: Mapping[str, str]) -> Manifest:
    """Read the manifest directory ``directory`` (blocking; run it in a thread).

    ``variables`` are the build variables (reference §3.6) used to expand the
    ``SourceImage*`` fields. Raises ``ManifestError``.
    """
    computed_files, computed_files_add = read_computed_files(directory)
    image_filter, filter_add, unoptimised = read_image_filter(directory)
    owners = read_owners(directory)
    tags = read_tags(directory)
    triggers, triggers_add = read_triggers(directory)
    manifest_file = read_manifest_file(directory, variables)
    return Manifest(
        directory=directory,
        source_image=manifest_file.source_image,
        source_image_build_variables=manifest_file.source_image_build_variables,
        source_image_git_commit_id=manifest_file.source_image_git_commit_id,
        source_image_tags_to_match=manifest_file.source_image_tags_to_match,
        filter_lines=manifest_file.filter_lines,
        mtimes_copy_filter_lines=manifest_file.mtimes_copy_filter_lines,
        mtimes_copy_add_filter_lines=manifest_file.mtimes_copy_add_filter_lines,
        computed_files=computed_files,
        computed_files_add=computed_files_add,
        image_filter=image_filter,
        filter_add=filter_add,
        unoptimised_filter_lines=unoptimised,
        triggers=triggers,
        triggers_add=triggers_add,
        owners=owners,
        tags=tags,
        package_list=read_package_list(directory),
        trees=find_trees(directory),
    )


# ------------------------------------------------------------ pure helpers


def merge_filter(
    source_filter: Iterable[str] | None, manifest_filter: Iterable[str] | None, add: bool
) -> tuple[str, ...] | None:
    """The image filter: the manifest's, or with ``add`` the sorted union with the source's.

    None (a sparse image) only when there is nothing to take it from.
    """
    if not add:
        return None if manifest_filter is None else tuple(manifest_filter)
    if source_filter is None and manifest_filter is None:
        return None
    return tuple(sorted(set(source_filter or ()) | set(manifest_filter or ())))


def merge_computed_files(
    source: Iterable[ComputedFile] | None,
    manifest: Iterable[ComputedFile] | None,
    add: bool,
) -> tuple[ComputedFile, ...] | None:
    """The image's computed files.

    Without ``add`` the manifest's; with it, merged by filename with the
    source image's (the manifest's entry wins) and sorted by filename.
    """
    if not add:
        return None if manifest is None else tuple(manifest)
    if source is None and manifest is None:
        return None
    by_name = {cf.filename: cf for cf in (*(source or ()), *(manifest or ()))}
    return tuple(by_name[name] for name in sorted(by_name))


def resolve_triggers(
    source: tuple[Trigger, ...] | None, manifest: tuple[Trigger, ...] | None, add: bool
) -> tuple[Trigger, ...] | None:
    """The image's triggers: the manifest's, or with ``add`` merged onto the source's."""
    if not add:
        return manifest
    return merge_triggers(source, manifest or ())


def mtimes_copy_filter(manifest: Manifest, global_lines: Iterable[str]) -> tuple[str, ...]:
    """The mtimes-copy filter: the manifest's replacement, else global plus additions."""
    if manifest.mtimes_copy_filter_lines is not None:
        return manifest.mtimes_copy_filter_lines
    return (*global_lines, *manifest.mtimes_copy_add_filter_lines)


def expand_tags(tags: Mapping[str, str], variables: Mapping[str, str]) -> dict[str, str]:
    """Tags with values expanded; a tag whose non-empty value expands to empty is removed."""
    result = {}
    for key, value in tags.items():
        expanded = expand(value, variables.get)
        if expanded or not value:
            result[key] = expanded
    return result


def scripts_in_order(names: Iterable[str]) -> list[str]:
    """Script names in version-string order (``9_x`` before ``10_x``), dot-names skipped."""
    return sorted((n for n in names if not n.startswith(".")), key=version_key)
