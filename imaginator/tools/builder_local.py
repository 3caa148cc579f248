"""The local build modes of ``builder-tool`` (reference §3.4), on the embedded store.

``builder-tool`` can build without a daemon, on the machine it runs on:

* :func:`process_manifest_dir` runs a manifest's steps on an existing tree;
* :func:`build_tree_from_manifest` unpacks the newest image of the manifest's
  ``SourceImage`` stream into a new temporary directory, processes the
  manifest there and deletes what the manifest's ``FilterLines`` match;
* :func:`build_from_manifest` is a whole stream build from a manifest
  directory: unpack, process, tests, pack, publish as ``<stream>/<datestamp>``.

Everything here is glue: the steps themselves are those of
:mod:`imaginator.pipeline.manifest_build` and :mod:`imaginator.pipeline.pack`, called with
a :class:`~imaginator.pipeline.pack.BuildEnv` made from :class:`LocalResources`.
A manifest directory given on the command line becomes a ``dir://`` manifest
of a one-off stream, so ``build_from_manifest`` is exactly the daemon's build
of a normal stream. Errors are raised as :class:`BuildError` with the texts
the daemon uses; the caller adds ``error processing manifest: ``.

:func:`run_local` runs one of these modes for the command line: the log goes
to ``./build.log`` (or between the banners to standard error), the result to
standard output, a failure to standard error with the log.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import CancelledError
from twisted.python.threadpool import ThreadPool

from imaginator.config.main import MainConfig
from imaginator.config.manifest import Manifest, ManifestError, load_manifest
from imaginator.config.streams import StreamConfig
from imaginator.goformats.units import SECOND, format_duration, go_arch
from imaginator.image.filter import parse_filter_lines
from imaginator.image.model import Image
from imaginator.image.unpack import UnpackError
from imaginator.pipeline.bootstrap import make_work_dir
from imaginator.pipeline.manifest_build import (
    NormalBuild,
    build_normal,
    process_manifest,
    unpack_source,
)
from imaginator.pipeline.pack import BuildEnv, BuildError, attach_build_log, compile_filter
from imaginator.runtime.buildlog import BuildLog
from imaginator.runtime.ctime import measure_ctime_resolution
from imaginator.runtime.inroot import TreeCopyError
from imaginator.runtime.process import CommandError, ProcessRunner
from imaginator.runtime.reactors import IDaemonReactor, IReactorTimeAndThreads
from imaginator.runtime.sandbox import BindMount
from imaginator.runtime.treedelete import delete_matching
from imaginator.store.base import StoreError
from imaginator.store.local import AsyncImageStore, LocalImageStore
from imaginator.tools.builder_common import (
    BUILD_LOG_FILE,
    END_BANNER,
    PROGRAM,
    START_BANNER,
    Command,
    CommandFailed,
    Io,
    os_reason,
    read_variables,
    write_file,
)

DAY = 24 * 3600.0

# What can go wrong in the steps below besides BuildError; each becomes a BuildError.
_STEP_ERRORS = (
    TreeCopyError,
    ManifestError,
    CommandError,
    UnpackError,
    StoreError,
    OSError,
)


@dataclass
class LocalResources:
    """The reactor, a started thread pool, a process runner and (for the modes
    that need one) the embedded store."""

    reactor: IReactorTimeAndThreads
    threadpool: ThreadPool
    runner: ProcessRunner
    local_store: LocalImageStore | None = None

    @property
    def store(self) -> AsyncImageStore | None:
        if self.local_store is None:
            return None
        return AsyncImageStore(self.local_store, self.reactor, self.threadpool)


@dataclass(frozen=True)
class LocalOptions:
    """The command-line settings the local modes use (durations in seconds).

    ``variables`` come from ``-variablesFilename``; ``ctime_resolution`` None
    means: measure it in ``tmpdir`` (as the daemon does at start-up).
    """

    bind_mounts: tuple[str, ...] = ()
    maximum_build_duration: float = DAY
    variables: Mapping[str, str] = field(default_factory=dict)
    mtimes_copy_filter_lines: tuple[str, ...] = ()
    expires_in: float = 3600.0
    tmpdir: str | None = None
    arch: str = field(default_factory=go_arch)
    ctime_resolution: float | None = None


def make_env(resources: LocalResources, log: BuildLog, options: LocalOptions) -> BuildEnv:
    """A build environment whose deadline clock starts now.

    A maximum build duration under one second means 24 hours, as in the daemon.
    """
    limit = options.maximum_build_duration
    env = BuildEnv(
        reactor=resources.reactor,
        threadpool=resources.threadpool,
        runner=resources.runner,
        store=resources.store,
        local_store=resources.local_store,
        log=log,
        deadline_seconds=limit if limit >= 1 else DAY,
    )
    env.start_deadline()
    return env


def _bind_mounts(options: LocalOptions) -> tuple[BindMount, ...]:
    return tuple(BindMount(path, path) for path in options.bind_mounts if path)


def _one_off_request(
    options: LocalOptions,
    stream: str = "",
    config: StreamConfig | None = None,
    ctime_resolution: float = 0.0,
) -> NormalBuild:
    """The ``NormalBuild`` the pipeline functions take, for a stream that exists
    only for this run (no maximum source age, no secrets)."""
    return NormalBuild(
        stream=stream,
        config=config if config is not None else StreamConfig(),
        main=MainConfig(
            bind_mounts=options.bind_mounts,
            mtimes_copy_filter_lines=options.mtimes_copy_filter_lines,
        ),
        arch=options.arch,
        request_variables=dict(options.variables),
        tmpdir=options.tmpdir,
        ctime_resolution=ctime_resolution,
    )


async def _load_manifest(env: BuildEnv, directory: str, variables: Mapping[str, str]) -> Manifest:
    if not os.path.isdir(directory):
        raise BuildError(f"{directory}: not a directory")
    try:
        return await env.in_thread(load_manifest, directory, dict(variables))
    except ManifestError as exc:
        raise BuildError(str(exc)) from None


def _as_build_error(exc: Exception) -> BuildError:
    if isinstance(exc, OSError) and exc.filename:
        return BuildError(f"{exc.filename}: {exc.strerror or exc}")
    return BuildError(str(exc))


# -- process-manifest ------------------------------------------------------------------


async def process_manifest_dir(
    resources: LocalResources,
    log: BuildLog,
    options: LocalOptions,
    manifest_dir: str,
    root: str,
) -> None:
    """Run the manifest's steps (resolv.conf, files, scripts, packages …) on ``root``.

    Only ``-variablesFilename`` variables reach the scripts; nothing is
    unpacked, filtered or stored.
    """
    env = make_env(resources, log, options)
    root = os.path.abspath(root)
    if not os.path.isdir(root):
        raise BuildError(f"{root}: not a directory")
    manifest = await _load_manifest(env, os.path.abspath(manifest_dir), options.variables)
    await _process(env, options, manifest, root)


async def _process(env: BuildEnv, options: LocalOptions, manifest: Manifest, root: str) -> None:
    started = time.monotonic()
    try:
        await process_manifest(
            env,
            _one_off_request(options),
            manifest,
            root,
            dict(options.variables),
            _bind_mounts(options),
        )
    except BuildError:
        raise
    except _STEP_ERRORS as exc:
        raise _as_build_error(exc) from None
    env.log.line(f"Processed manifest in {format_duration(time.monotonic() - started)}")


# -- build-tree-from-manifest ------------------------------------------------------------


def _delete_filtered(root: str, lines: tuple[str, ...]) -> list[str]:
    scan_filter = compile_filter(lines, "FilterLines")
    if scan_filter is None:
        return []
    return delete_matching(root, scan_filter.match)


async def build_tree_from_manifest(
    resources: LocalResources,
    log: BuildLog,
    options: LocalOptions,
    manifest_dir: str,
) -> str:
    """Unpack the newest ``SourceImage`` image (any age) into a new temporary
    directory, process the manifest there, delete the paths its
    ``FilterLines`` match and return the directory (removed on failure)."""
    if resources.local_store is None:
        raise BuildError("no image store")
    env = make_env(resources, log, options)
    manifest_dir = os.path.abspath(manifest_dir)
    manifest = await _load_manifest(env, manifest_dir, options.variables)
    name = os.path.basename(manifest_dir.rstrip("/")) or "manifest"
    root = await env.in_thread(make_work_dir, name, ".root", options.tmpdir)
    try:
        log.line(f"Created image working directory: {root}")
        request = _one_off_request(options)
        try:
            await unpack_source(env, request, manifest, root)
        except _STEP_ERRORS as exc:
            raise _as_build_error(exc) from None
        await _process(env, options, manifest, root)
        try:
            deleted = await env.in_thread(_delete_filtered, root, manifest.filter_lines)
        except _STEP_ERRORS as exc:
            raise _as_build_error(exc) from None
        for path in deleted:
            log.line(f"Deleted: {path}")
    except Exception:  # a failure, or the run was cancelled (interrupted)
        await env.in_thread(shutil.rmtree, root, True)
        raise
    return root


# -- build-from-manifest -------------------------------------------------------------------


def _manifest_url(manifest_dir: str, scratch: str) -> str:
    """A ``dir://`` URL for ``manifest_dir`` that variable expansion leaves alone.

    Manifest URLs are expanded (``$NAME``), so a directory whose path holds a
    ``$`` is reached through a symbolic link in ``scratch`` instead.
    """
    if "$" not in manifest_dir:
        return f"dir://{manifest_dir}"
    link = os.path.join(scratch, "manifest")
    os.symlink(manifest_dir, link)
    return f"dir://{link}"


async def build_from_manifest(
    resources: LocalResources,
    log: BuildLog,
    options: LocalOptions,
    manifest_dir: str,
    stream: str,
) -> str:
    """Build ``stream`` from the manifest in ``manifest_dir`` and add the image to
    the store as ``<stream>/<datestamp>``, expiring ``options.expires_in`` seconds
    from now (never, if not positive). Returns the image name."""
    store = resources.store
    if store is None:
        raise BuildError("no image store")
    started = time.monotonic()
    env = make_env(resources, log, options)
    manifest_dir = os.path.abspath(manifest_dir)
    if not os.path.isdir(manifest_dir):
        raise BuildError(f"{manifest_dir}: not a directory")
    resolution = options.ctime_resolution
    if resolution is None:
        resolution = await env.in_thread(measure_ctime_resolution, options.tmpdir)
    scratch = await env.in_thread(tempfile.mkdtemp, prefix="builder-tool.", dir=options.tmpdir)
    try:
        url = await env.in_thread(_manifest_url, manifest_dir, scratch)
        request = _one_off_request(
            options,
            stream,
            config=StreamConfig(manifest_url=url),
            ctime_resolution=resolution,
        )
        try:
            image = await build_normal(env, request)
        except BuildError:
            raise
        except _STEP_ERRORS as exc:
            raise _as_build_error(exc) from None
    finally:
        await env.in_thread(shutil.rmtree, scratch, True)
    return await publish(env, store, stream, image, options.expires_in, started)


async def publish(
    env: BuildEnv,
    store: AsyncImageStore,
    stream: str,
    image: Image,
    expires_in: float,
    started_mono: float,
) -> str:
    """Name the image ``<stream>/<datestamp>`` (local time) and add it to the store."""
    upload_started = time.monotonic()
    now = env.reactor.seconds()
    image.expires_at = int((now + expires_in) * 1e9) if expires_in > 0 else 0
    try:
        await attach_build_log(store, env.log, image)
        name = await store.reserve_image_name(stream, now)
        await store.add_image(name, image)
    except (StoreError, OSError) as exc:
        raise BuildError(f"error adding image: {exc}") from None
    finished = time.monotonic()
    env.log.line(
        f"Uploaded {name} in {format_duration(finished - upload_started)}, "
        f"total build duration: {format_duration(finished - started_mono)}"
    )
    return name


# ------------------------------------------------------------------ the commands


@dataclass
class _LocalJob:
    """What a local command works with; the lines it prints go to ``stdout``."""

    values: Mapping[str, Any]
    args: list[str]
    options: LocalOptions
    resources: LocalResources
    log: BuildLog
    stdout: list[str] = field(default_factory=list)


async def cmd_process_manifest(job: _LocalJob) -> None:
    await process_manifest_dir(job.resources, job.log, job.options, job.args[0], job.args[1])


async def cmd_build_tree_from_manifest(job: _LocalJob) -> None:
    root = await build_tree_from_manifest(job.resources, job.log, job.options, job.args[0])
    job.stdout.append(root)


async def cmd_build_from_manifest(job: _LocalJob) -> None:
    name = await build_from_manifest(job.resources, job.log, job.options, job.args[0], job.args[1])
    job.stdout.append(name)


#: The handlers of the local commands, by command name (``builder_tool.COMMANDS``
#: describes them; this module is imported only when one of them runs).
LOCAL_COMMANDS: dict[str, Callable[[_LocalJob], Awaitable[None]]] = {
    "process-manifest": cmd_process_manifest,
    "build-tree-from-manifest": cmd_build_tree_from_manifest,
    "build-from-manifest": cmd_build_from_manifest,
}


def read_mtimes_filter(filename: str) -> tuple[str, ...]:
    """The ``-mtimesCopyFilterFile`` lines, or none without a file."""
    if not filename:
        return ()
    try:
        with open(filename, encoding="utf-8", errors="replace") as handle:
            return tuple(parse_filter_lines(handle.read()))
    except OSError as exc:
        raise CommandFailed(f"open {filename}: {os_reason(exc)}") from None


async def run_local(
    reactor: IDaemonReactor, command: Command, values: Mapping[str, Any], args: list[str], io: Io
) -> int:
    """Run a local mode: the log goes to ``./build.log`` (or, with
    ``-alwaysShowBuildLog``, to standard error between the banners); on failure
    the banners and the log go to standard error."""
    try:
        if command.needs_store and values["imageServerHostname"]:
            raise CommandFailed("remote imageservers are not supported: use -stateDir")
        options = LocalOptions(
            bind_mounts=tuple(values["bindMounts"]),
            maximum_build_duration=values["maximumBuildDuration"] / SECOND,
            variables=read_variables(values["variablesFilename"]) or {},
            mtimes_copy_filter_lines=read_mtimes_filter(values["mtimesCopyFilterFile"]),
            expires_in=values["expiresIn"] / SECOND,
        )
    except CommandFailed as exc:
        io.err(f"{command.prefix}: {exc}\n")
        return 1
    os.umask(0o022)
    always = values["alwaysShowBuildLog"]
    log = BuildLog()
    if always:
        io.err(START_BANNER + "\n")
        log.subscribe(io.err)
    runner = ProcessRunner(reactor)
    pool = ThreadPool(minthreads=0, maxthreads=4, name=PROGRAM)

    def stop_pool() -> None:
        if pool.started:
            pool.stop()

    # Interrupted (the reactor stops before the build ends): kill the build's
    # processes, then let the pool's threads go.
    triggers = [
        reactor.addSystemEventTrigger(
            "before", "shutdown", runner.kill_all, "builder-tool interrupted"
        ),
        reactor.addSystemEventTrigger("during", "shutdown", stop_pool),
    ]
    pool.start()
    try:
        store = None
        if command.needs_store:
            store = LocalImageStore(os.path.join(values["stateDir"], "store"), create=False)
        job = _LocalJob(values, args, options, LocalResources(reactor, pool, runner, store), log)
        await LOCAL_COMMANDS[command.name](job)
    except (BuildError, StoreError, CommandFailed, OSError, CancelledError) as exc:
        if not always:
            io.err(START_BANNER + "\n")
            io.err(log.getvalue())
        io.err(END_BANNER + "\n")
        reason = "interrupted" if isinstance(exc, CancelledError) else str(exc)
        # The pipeline's own errors may already carry the prefix; say it once.
        if reason.startswith(command.prefix + ": "):
            reason = reason[len(command.prefix) + 2 :]
        io.err(f"{command.prefix}: {reason}\n")
        return 1
    finally:
        log.close()
        stop_pool()
        for trigger in triggers:
            try:
                reactor.removeSystemEventTrigger(trigger)
            except (ValueError, KeyError):  # already run: we are being interrupted
                pass
    if always:
        io.err(END_BANNER + "\n")
    else:
        try:
            write_file(BUILD_LOG_FILE, log.getvalue(), 0o444)
        except OSError as exc:
            io.err(f"{command.prefix}: error writing build log: {exc}\n")
            return 1
    for line in job.stdout:
        io.out(f"{line}\n")
    return 0
