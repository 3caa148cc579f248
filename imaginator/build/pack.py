"""Packing a finished build tree into an image (reference §5.5).

Shared by bootstrap builds and manifest builds: list the packages, clear
``/tmp``, scan the tree into a file-system (storing new objects), copy mtimes
from the stream's previous image, store the build log and assemble the image
record. Publishing (naming, expiry, ``add_image``) is the builder's job.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from twisted.internet.threads import deferToThreadPool

from imaginator.build.buildlog import BuildLog
from imaginator.build.process import CommandError, ProcessRunner
from imaginator.build.sandbox import base_environment, chroot_argv
from imaginator.config.expand import expand
from imaginator.config.main import Owners
from imaginator.config.units import format_bytes, format_duration
from imaginator.image.filter import Filter, parse_filter_lines
from imaginator.image.model import Annotation, FileSystem, Image, Package
from imaginator.image.mtimes import copy_mtimes
from imaginator.image.scan import scan_tree
from imaginator.image.triggers import Trigger

PACKAGER = "/bin/generic-packager"


class BuildError(Exception):
    """A build failed; the message is what the operator sees as the build's error."""


@dataclass
class BuildEnv:
    """What one build needs from the daemon: the reactor, threads, processes, store, log."""

    reactor: object
    threadpool: object
    runner: ProcessRunner
    store: object  # AsyncImageStore
    local_store: object  # LocalImageStore, used from threads by the scanner
    log: BuildLog
    deadline: float | None = None
    bind_mounts: tuple = ()

    async def in_thread(self, fn, *args, **kwargs):
        return await deferToThreadPool(self.reactor, self.threadpool, fn, *args, **kwargs)

    async def run_in_root(
        self,
        root: str,
        argv: list[str],
        *,
        step: str,
        variables: Mapping[str, str] | None = None,
        capture_stdout: bool = False,
        capture_stderr: bool = False,
        stdin: bytes | None = None,
        bind_mounts: tuple = (),
    ):
        """Run ``argv`` in the sandbox rooted at ``root`` under the build deadline."""
        return await self.runner.run(
            chroot_argv(root, argv, bind_mounts=bind_mounts),
            log=self.log,
            env=base_environment(variables, tz=os.environ.get("TZ")),
            stdin=stdin,
            deadline=self.deadline,
            capture_stdout=capture_stdout,
            capture_stderr=capture_stderr,
            step=step,
        )


@dataclass
class PackSpec:
    """Everything that goes into an image besides the tree itself."""

    stream: str
    root: str
    scan_filter: Filter | None = None
    tree_cache: dict | None = None
    image_filter: tuple[str, ...] | None = None
    owners: Owners = field(default_factory=Owners)
    tags: Mapping[str, str] = field(default_factory=dict)
    triggers: tuple[Trigger, ...] | None = None
    mtimes_filter: Filter | None = None
    variables: Mapping[str, str] = field(default_factory=dict)


def parse_package_list(output: bytes, multiplier: int) -> list[Package]:
    """Parse ``name version [size]`` lines; duplicate names: the last wins."""
    packages: dict[str, Package] = {}
    for raw in output.decode("utf-8", errors="replace").splitlines():
        fields = raw.split()
        if not fields:
            continue
        if len(fields) < 2:
            raise BuildError(f"malformed line: {raw}")
        size = 0
        if len(fields) > 2:
            try:
                size = int(fields[2])
            except ValueError:
                raise BuildError(f"malformed size: {fields[2]}") from None
        packages[fields[0]] = Package(name=fields[0], size=size * multiplier, version=fields[1])
    return [packages[name] for name in sorted(packages)]


async def list_packages(env: BuildEnv, root: str) -> list[Package]:
    try:
        result = await env.run_in_root(
            root,
            [PACKAGER, "show-size-multiplier"],
            step="show-size-multiplier",
            capture_stdout=True,
            capture_stderr=True,
        )
    except CommandError as exc:
        raise BuildError(f"error listing packages: error getting size multiplier: {exc}") from None
    text = result.stdout.decode("utf-8", errors="replace").strip()
    try:
        multiplier = int(text) if text else 1
    except ValueError:
        raise BuildError(f"error listing packages: bad size multiplier: {text!r}") from None
    try:
        result = await env.run_in_root(
            root, [PACKAGER, "list"], step="list", capture_stdout=True, capture_stderr=True
        )
    except CommandError as exc:
        stderr = exc.stderr.decode("utf-8", errors="replace").strip()
        raise BuildError(f"error listing packages: {exc}: {stderr}") from None
    try:
        return parse_package_list(result.stdout, max(multiplier, 1))
    except BuildError as exc:
        raise BuildError(f"error listing packages: {exc}") from None


def delete_matching(root: str, patterns: Filter) -> list[str]:
    """Delete every path under ``root`` that ``patterns`` matches (directories whole)."""
    deleted = []
    for directory, dirnames, filenames in os.walk(root, topdown=True):
        relative = directory[len(root) :] or "/"
        keep_dirs = []
        for name in dirnames + filenames:
            path = os.path.join(relative, name)
            full = os.path.join(directory, name)
            if not patterns.match(path):
                if name in dirnames:
                    keep_dirs.append(name)
                continue
            if os.path.isdir(full) and not os.path.islink(full):
                shutil.rmtree(full)
            else:
                os.unlink(full)
            deleted.append(path)
        dirnames[:] = keep_dirs
    return deleted


_TMP_CONTENTS = Filter(("/tmp/.*",))


async def clean_packages(env: BuildEnv, root: str) -> None:
    """``generic-packager clean`` then delete what ``show-clean-patterns`` lists."""
    env.log.line("\nCleaning packages:")
    started = time.monotonic()
    try:
        await env.run_in_root(root, [PACKAGER, "clean"], step="clean")
    except CommandError as exc:
        raise BuildError(f"error cleaning: {exc}") from None
    try:
        result = await env.run_in_root(
            root, [PACKAGER, "show-clean-patterns"], step="show-clean-patterns", capture_stdout=True
        )
    except CommandError as exc:
        env.log.line(f"Deep clean failed: {exc}")
    else:
        lines = parse_filter_lines(result.stdout.decode("utf-8", errors="replace"))
        if lines:
            patterns = Filter(tuple(lines))
            for path in await env.in_thread(delete_matching, root, patterns):
                env.log.line(f"Deleted: {path}")
    env.log.line(f"Package clean took: {format_duration(time.monotonic() - started)}")


def _rate(nbytes: int, seconds: float) -> str:
    if seconds <= 0:
        return "∞"
    return f"{format_bytes(int(nbytes / seconds))}/s"


def expand_tags(tags: Mapping[str, str], variables: Mapping[str, str]) -> dict[str, str]:
    """Expand tag values; a tag whose non-empty value expands to empty is dropped."""
    result = {}
    for key, value in tags.items():
        expanded = expand(value, variables.get)
        if value and not expanded:
            continue
        result[key] = expanded
    return result


async def copy_previous_mtimes(env: BuildEnv, spec: PackSpec, fs: FileSystem) -> None:
    started = time.monotonic()
    name = await env.store.find_latest_image(spec.stream)
    if name is None:
        return
    previous = await env.store.get_image(name)
    if previous is None or previous.file_system is None:
        return
    env.log.line(
        f"Downloaded {name} in {format_duration(time.monotonic() - started)}, "
        "rebuilt pointers in 0s"
    )
    started = time.monotonic()
    await env.in_thread(copy_mtimes, previous.file_system, fs, spec.mtimes_filter)
    env.log.line(f"Copied mtimes in {format_duration(time.monotonic() - started)}")


async def pack(env: BuildEnv, spec: PackSpec) -> Image:
    """Turn the tree at ``spec.root`` into an image whose objects are all stored."""
    packages = await list_packages(env, spec.root)
    await env.in_thread(delete_matching, spec.root, _TMP_CONTENTS)
    env.log.line("Scanning file-system and uploading objects")
    result = await scan_tree(
        spec.root,
        reactor=env.reactor,
        threadpool=env.threadpool,
        store=env.local_store,
        scan_filter=spec.scan_filter,
        tree_cache=spec.tree_cache,
    )
    env.log.line(
        f"Skipped {result.objects_skipped} unchanged objects ({format_bytes(result.bytes_skipped)})"
    )
    env.log.line(
        f"Scanned file-system and uploaded {result.objects_added} objects "
        f"({format_bytes(result.bytes_added)}) in {format_duration(result.duration)} "
        f"({_rate(result.bytes_added, result.duration)})"
    )
    await copy_previous_mtimes(env, spec, result.file_system)
    log_hash = await env.store.add_object(env.log.getvalue())
    return Image(
        build_log=Annotation(object=bytes.fromhex(log_hash), url=""),
        file_system=result.file_system,
        filter=spec.image_filter,
        owner_groups=list(spec.owners.groups) or None,
        owner_users=list(spec.owners.users) or None,
        triggers=spec.triggers,
        packages=packages,
        tags=expand_tags(spec.tags, spec.variables),
    )


def compile_filter(lines, what: str) -> Filter | None:
    if not lines:
        return None
    try:
        return Filter(tuple(lines))
    except Exception as exc:
        raise BuildError(f"error compiling {what}: {exc}") from None
