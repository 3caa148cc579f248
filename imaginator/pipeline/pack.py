"""Packing a finished build tree into an image (reference §5.5).

Shared by bootstrap builds and manifest builds: list the packages, clear
``/tmp``, scan the tree into a file-system (storing new objects), copy mtimes
from the stream's previous image and assemble the image record. Publishing
(storing the build log with :func:`attach_build_log`, naming, expiry,
``add_image``) is the builder's job.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from imaginator.config.main import Owners
from imaginator.config.manifest import ComputedFile, expand_tags
from imaginator.goformats.units import format_bytes, format_duration
from imaginator.image.filter import Filter, parse_filter_lines
from imaginator.image.model import (
    Annotation,
    ComputedRegularInode,
    FileSystem,
    Image,
    Package,
    RegularInode,
)
from imaginator.image.mtimes import copy_mtimes
from imaginator.image.scan import ObjectSink, ScanError, TreeCache, scan_tree
from imaginator.image.triggers import Trigger
from imaginator.image.unpack import ObjectFiles
from imaginator.pipeline.report import BuildReport, read_manifest_snapshot
from imaginator.runtime.buildlog import BuildLog
from imaginator.runtime.nosync import PROGRAM_FD, nosync_program
from imaginator.runtime.process import (
    MAX_CAPTURED_OUTPUT,
    CommandError,
    ProcessResult,
    ProcessRunner,
)
from imaginator.runtime.reactors import IReactorTimeAndThreads
from imaginator.runtime.sandbox import BindMount, base_environment, chroot_argv
from imaginator.runtime.treedelete import delete_matching
from imaginator.store.base import ImageStore

_T = TypeVar("_T")

PACKAGER = "/bin/generic-packager"
_NOSYNC_PROGRAM = nosync_program()
TEST_TIMEOUT = 10.0
TEST_OUTPUT_LIMIT = 4096
"""Bytes of a test's output shown in the build log; the rest is never kept in memory."""


class LogObjectStore(Protocol):
    """Where a build log is stored (``ImageStore.add_object``)."""

    async def add_object(self, data: bytes) -> str: ...


class BuildError(Exception):
    """A build failed; the message is what the operator sees as the build's error."""


class LocalObjects(ObjectSink, ObjectFiles, Protocol):
    """The local object store as a build's threads use it: the scanner puts
    objects in, unpacking reads them as files (``LocalImageStore``)."""


@dataclass
class BuildEnv:
    """What one build needs from the daemon: the reactor, threads, processes, store, log."""

    reactor: IReactorTimeAndThreads
    threadpool: ThreadPool
    runner: ProcessRunner
    #: None only for builder-tool's modes that store nothing (process-manifest).
    store: ImageStore | None
    local_store: LocalObjects | None
    log: BuildLog
    deadline_seconds: float = 24 * 3600.0
    deadline: float | None = None
    report: BuildReport = field(default_factory=BuildReport)
    #: Build commands run with the sync calls turned into no-ops (``runtime.nosync``).
    nosync: bool = False
    #: What the package steps' update left in the shared package caches that
    #: roots keep (a digest; ``caches.PackageCaches.index``), for the skip check.
    package_index: str | None = None

    @property
    def images(self) -> ImageStore:
        """The image store (``BuildError`` for a build without one)."""
        if self.store is None:
            raise BuildError("no image store")
        return self.store

    @property
    def objects(self) -> LocalObjects:
        """The local object store (``BuildError`` for a build without one)."""
        if self.local_store is None:
            raise BuildError("no image store")
        return self.local_store

    def start_deadline(self) -> None:
        """Start the build deadline clock (after the manifest fetch, reference §5.1.4)."""
        self.deadline = self.reactor.seconds() + self.deadline_seconds

    async def in_thread(self, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        return await deferToThreadPool(self.reactor, self.threadpool, fn, *args, **kwargs)

    def fetching_manifest(self) -> None:
        """The stage "fetch manifest" starts: keep what the log says until ``read_manifest``."""
        self.report.begin("fetch manifest")
        self.report.fetch_log.start(self.log)

    async def read_manifest(self, directory: str) -> None:
        """Keep a bounded, redacted snapshot of the fetched manifest for the pages."""
        captured = self.report.fetch_log
        text = captured.stop()
        self.report.manifest = await self.in_thread(
            read_manifest_snapshot, directory, text, captured.truncated, self.log.redactor()
        )

    def thread_log(self, text: str) -> None:
        """Log a line from a pool thread (the build log belongs to the reactor thread)."""
        self.reactor.callFromThread(self.log.line, text)

    async def run_in_root(
        self,
        root: str,
        argv: list[str],
        *,
        step: str,
        variables: Mapping[str, str] | None = None,
        capture_stdout: bool = False,
        capture_stderr: bool = False,
        capture_limit: int = MAX_CAPTURED_OUTPUT,
        truncate_capture: bool = False,
        stdin: bytes | None = None,
        bind_mounts: tuple[BindMount, ...] = (),
        deadline: float | None = None,
    ) -> ProcessResult:
        """Run ``argv`` in the sandbox rooted at ``root`` under the build deadline.

        Captured output is bounded by ``capture_limit`` (see
        :meth:`~imaginator.runtime.process.ProcessRunner.run`).
        """
        if deadline is None or (self.deadline is not None and self.deadline < deadline):
            deadline = self.deadline
        seccomp_fd, inputs = self.nosync_inputs()
        return await self.runner.run(
            chroot_argv(root, argv, bind_mounts=bind_mounts, seccomp_fd=seccomp_fd),
            log=self.log,
            env=base_environment(variables, tz=os.environ.get("TZ")),
            stdin=stdin,
            deadline=deadline,
            capture_stdout=capture_stdout,
            capture_stderr=capture_stderr,
            capture_limit=capture_limit,
            truncate_capture=truncate_capture,
            step=step,
            inputs=inputs,
        )

    def nosync_inputs(self) -> tuple[int | None, dict[int, bytes] | None]:
        """(the child's fd of the no-sync filter, the runner's ``inputs``), or Nones."""
        if not self.nosync:
            return None, None
        return PROGRAM_FD, {PROGRAM_FD: _NOSYNC_PROGRAM}


@dataclass
class PackSpec:
    """Everything that goes into an image besides the tree itself."""

    stream: str
    root: str
    scan_filter: Filter | None = None
    tree_cache: TreeCache | None = None
    image_filter: tuple[str, ...] | None = None
    owners: Owners = field(default_factory=Owners)
    tags: Mapping[str, str] = field(default_factory=dict)
    triggers: tuple[Trigger, ...] | None = None
    mtimes_filter: Filter | None = None
    variables: Mapping[str, str] = field(default_factory=dict)
    computed_files: tuple[ComputedFile, ...] = ()
    source_image: str = ""
    #: The tree is the build's own and nothing writes to it again (a finished
    #: bootstrap tree): new contents are linked into the store, not copied.
    link_files: bool = False


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


_TMP_CONTENTS = Filter(("/tmp/.*",))


async def clean_packages(env: BuildEnv, root: str, bind_mounts: tuple = ()) -> None:
    """``generic-packager clean`` then delete what ``show-clean-patterns`` lists."""
    env.report.begin("clean packages")
    env.log.line("\nCleaning packages:")
    started = time.monotonic()
    try:
        await env.run_in_root(root, [PACKAGER, "clean"], step="clean", bind_mounts=bind_mounts)
    except CommandError as exc:
        raise BuildError(f"error cleaning: {exc}") from None
    try:
        result = await env.run_in_root(
            root,
            [PACKAGER, "show-clean-patterns"],
            step="show-clean-patterns",
            capture_stdout=True,
            bind_mounts=bind_mounts,
        )
    except CommandError as exc:
        env.log.line(f"Deep clean failed: {exc}")
    else:
        lines = parse_filter_lines(result.stdout.decode("utf-8", errors="replace"))
        if lines:
            patterns = Filter(tuple(lines))
            for path in await env.in_thread(delete_matching, root, patterns.match):
                env.log.line(f"Deleted: {path}")
    env.log.line(f"Package clean took: {format_duration(time.monotonic() - started)}")


def _rate(nbytes: int, seconds: float) -> str:
    if seconds <= 0:
        return "∞"
    return f"{format_bytes(int(nbytes / seconds))}/s"


async def copy_previous_mtimes(env: BuildEnv, spec: PackSpec, fs: FileSystem) -> None:
    started = time.monotonic()
    name = await env.images.find_latest_image(spec.stream)
    if name is None:
        return
    previous = await env.images.get_image(name)
    if previous is None or previous.file_system is None:
        return
    env.log.line(
        f"Downloaded {name} in {format_duration(time.monotonic() - started)}, "
        "rebuilt pointers in 0s"
    )
    started = time.monotonic()
    await env.in_thread(copy_mtimes, previous.file_system, fs, spec.mtimes_filter)
    env.log.line(f"Copied mtimes in {format_duration(time.monotonic() - started)}")


def splice_computed_files(fs: FileSystem, computed_files: Sequence[ComputedFile]) -> None:
    """Turn each listed regular file into a computed inode (its content is dropped)."""
    if not computed_files:
        return
    paths = fs.paths_by_inode()
    by_path = {path: inum for inum, names in paths.items() for path in names}
    for computed in computed_files:
        inum = by_path.get(computed.filename)
        if inum is None:
            raise BuildError(
                f"error splicing computed files: {computed.filename}: missing from image"
            )
        if len(paths[inum]) > 1:
            raise BuildError(
                f"error splicing computed files: {computed.filename}: "
                f"multiple inodes: {len(paths[inum])}"
            )
        inode = fs.inode_table[inum]
        if not isinstance(inode, RegularInode):
            raise BuildError(
                f"error splicing computed files: {computed.filename}: not a regular file"
            )
        fs.inode_table[inum] = ComputedRegularInode(
            mode=inode.mode, uid=inode.uid, gid=inode.gid, source=computed.source
        )
    fs.recompute_totals()


def find_tests(fs: FileSystem) -> list[str]:
    """Regular files under ``/tests`` with the owner-execute bit: the image's tests."""
    return [
        path
        for path, _inum, inode in fs.walk()
        if path.startswith("/tests/")
        and isinstance(inode, RegularInode)
        and inode.mode & stat.S_IXUSR
    ]


async def _run_test(env: BuildEnv, root: str, path: str) -> tuple[str, str, float]:
    started = time.monotonic()
    limit = env.reactor.seconds() + TEST_TIMEOUT
    try:
        result = await env.run_in_root(
            root,
            [PACKAGER, "run", path],
            step=f"test {path}",
            capture_stdout=True,
            capture_stderr=True,
            capture_limit=TEST_OUTPUT_LIMIT,
            truncate_capture=True,
            deadline=limit,
        )
        output, dropped, error = result.stdout + result.stderr, result.dropped, ""
    except CommandError as exc:
        output, dropped = exc.stdout + exc.stderr, exc.dropped
        timed_out = env.reactor.seconds() >= limit and (
            env.deadline is None or limit < env.deadline
        )
        error = "test timed out" if timed_out else str(exc)
    text = output[:TEST_OUTPUT_LIMIT].decode("utf-8", errors="replace")
    if dropped or len(output) > TEST_OUTPUT_LIMIT:
        text += f"\n[output truncated at {TEST_OUTPUT_LIMIT} bytes]\n"
    return text, error, time.monotonic() - started


async def run_tests(env: BuildEnv, root: str, fs: FileSystem) -> None:
    """Run every test of the image concurrently; any failure fails the build."""
    tests = await env.in_thread(find_tests, fs)
    if not tests:
        return
    env.log.line(f"Running {len(tests)} tests")
    results = await gatherResults(
        [Deferred.fromCoroutine(_run_test(env, root, path)) for path in tests],
        consumeErrors=True,
    )
    failed = 0
    for path, (output, error, took) in zip(tests, results, strict=True):
        env.log.write(output)
        if error:
            failed += 1
            env.log.line(f"error running: {path}: {error}")
        else:
            env.log.line(f"{path} passed in {format_duration(took)}")
        env.log.line()
    if failed:
        raise BuildError(f"{failed} tests failed")


async def pack(env: BuildEnv, spec: PackSpec) -> Image:
    """Turn the tree at ``spec.root`` into an image whose objects are all stored."""
    env.report.begin("list packages")
    packages = await list_packages(env, spec.root)
    await env.in_thread(delete_matching, spec.root, _TMP_CONTENTS.match)
    env.report.begin("scan")
    env.log.line("Scanning file-system and uploading objects")
    try:
        result = await scan_tree(
            spec.root,
            reactor=env.reactor,
            threadpool=env.threadpool,
            store=env.objects,
            scan_filter=spec.scan_filter,
            tree_cache=spec.tree_cache,
            link_files=spec.link_files,
        )
    except ScanError as exc:
        raise BuildError(f"error building file-system: {exc}") from None
    fs = result.file_system
    await env.in_thread(splice_computed_files, fs, spec.computed_files)
    env.log.line(
        f"Skipped {result.objects_skipped} unchanged objects ({format_bytes(result.bytes_skipped)})"
    )
    env.log.line(
        f"Scanned file-system and uploaded {result.objects_added} objects "
        f"({format_bytes(result.bytes_added)}) in {format_duration(result.duration)} "
        f"({_rate(result.bytes_added, result.duration)})"
    )
    env.report.begin("copy mtimes")
    await copy_previous_mtimes(env, spec, fs)
    env.report.begin("tests")
    await run_tests(env, spec.root, fs)
    return Image(
        file_system=fs,
        filter=spec.image_filter,
        owner_groups=tuple(spec.owners.groups) or None,
        owner_users=tuple(spec.owners.users) or None,
        triggers=spec.triggers,
        packages=tuple(packages),
        source_image=spec.source_image,
        tags=expand_tags(spec.tags, spec.variables),
    )


async def attach_build_log(store: LogObjectStore, log: BuildLog, image: Image) -> None:
    """Store the build log as written so far and name it in ``image``.

    Done by whoever publishes the image, right before adding it: a rebuild
    found identical to the latest image publishes nothing and so stores no
    object at all, not even its log.
    """
    log_hash = await store.add_object(log.getvalue())
    image.build_log = Annotation(object=bytes.fromhex(log_hash), url="")


def compile_filter(lines: Sequence[str] | None, what: str) -> Filter | None:
    if not lines:
        return None
    try:
        return Filter(tuple(lines))
    except Exception as exc:
        raise BuildError(f"error compiling {what}: {exc}") from None
