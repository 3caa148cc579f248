"""Normal stream builds (reference §5.2): a manifest applied to a source image.

Fetch the manifest (git through dulwich, or a ``dir://`` tree), read it, unpack
the latest image of its ``SourceImage`` stream, run the manifest's steps in a
``bwrap`` sandbox on that tree, and pack the result. Every step logs what the
Go imaginator logs; errors carry its texts. The working directories are always
removed.

With a source tree cache (``imaginator.pipeline.rootfs``) the build root is an
overlay mount over the source image's cached tree instead of a copy of it; it
is unmounted before the working directories go, however the build ends.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.task import deferLater

from imaginator.config.main import MainConfig
from imaginator.config.manifest import (
    FILES,
    FILES_APPEND,
    POST_CLEANUP_SCRIPTS,
    POST_INSTALL_FILES,
    POST_INSTALL_FILES_APPEND,
    POST_SCRIPTS_FILES,
    PRE_INSTALL_SCRIPTS,
    SCRIPTS,
    TESTS,
    ComputedFile,
    Manifest,
    ManifestError,
    load_manifest,
    merge_computed_files,
    merge_filter,
    mtimes_copy_filter,
    resolve_triggers,
    scripts_in_order,
)
from imaginator.config.streams import (
    StreamConfig,
    build_variables,
    manifest_location,
    stream_environment,
)
from imaginator.goformats.units import format_bytes, format_duration
from imaginator.image.model import ComputedRegularInode, Image
from imaginator.image.scan import TreeCache
from imaginator.image.unpack import UnpackError, materialise
from imaginator.pipeline import rootfs
from imaginator.pipeline.bootstrap import make_work_dir
from imaginator.pipeline.caches import PackageCaches, bind_mounts_for, trim_cache
from imaginator.pipeline.pack import (
    PACKAGER,
    BuildEnv,
    BuildError,
    PackSpec,
    clean_packages,
    compile_filter,
    pack,
)
from imaginator.runtime import mounts, treecopy
from imaginator.runtime.inroot import resolve_in_root
from imaginator.runtime.process import CommandError
from imaginator.runtime.sandbox import BindMount
from imaginator.sources.git import GitFetchError, fetch_manifest
from imaginator.sources.giturls import public_url

SEPARATOR = "=" * 65


class NeedSourceImage(BuildError):
    """The source image is missing or too old: build the source stream first."""

    def __init__(
        self,
        message: str,
        source_image: str,
        git_commit_id: str,
        build_variables: Mapping[str, str],
    ) -> None:
        super().__init__(message)
        self.source_image = source_image
        self.git_commit_id = git_commit_id
        self.build_variables = dict(build_variables)


@dataclass(frozen=True)
class GitInfo:
    branch: str
    commit_id: str
    url: str  # unexpanded: never holds a secret


@dataclass
class NormalBuild:
    """What a normal stream build needs besides the daemon's resources."""

    stream: str
    config: StreamConfig
    main: MainConfig
    arch: str
    git_branch: str = ""
    max_source_age: float = 0.0
    request_variables: Mapping[str, str] = field(default_factory=dict)
    secrets: Mapping[str, str] = field(default_factory=dict)
    tmpdir: str | None = None
    ctime_resolution: float = 0.0
    source_trees: rootfs.SourceTrees | None = None
    package_caches: PackageCaches | None = None


@dataclass
class RootMount:
    """What the build root is mounted from, if it is an overlay: undone by
    ``release_root`` (in that order: unmount, end the lease, remove the
    upper and work directories)."""

    trees: rootfs.SourceTrees | None = None
    tree: rootfs.SourceTree | None = None
    overlay_dir: str | None = None
    mounted: bool = False


# -- fetching the manifest -----------------------------------------------------


def copy_dir_manifest(url: str, directory: str, branch: str, dest: str) -> str:
    """Copy a ``dir://`` manifest tree into ``dest``; returns the copied path."""
    path = url[len("dir://") :]
    if not path.startswith("/"):
        raise BuildError(f"missing leading slash: {path}")
    if branch and branch != "master":
        raise BuildError(f"branch: {branch} is not master")
    source = os.path.normpath(os.path.join(path, directory)) if directory else path
    if not os.path.isdir(source):
        raise BuildError(f"{directory or path} does not exist in repository")
    shutil.copytree(source, dest, symlinks=True, dirs_exist_ok=True)
    return source


async def fetch_manifest_tree(
    env: BuildEnv, request: NormalBuild, dest: str
) -> tuple[GitInfo | None, Mapping[str, str]]:
    """Fetch the stream's manifest into ``dest``; returns the git details and variables."""
    url, directory = manifest_location(
        request.stream,
        request.config,
        request.request_variables,
        request.secrets,
        request.arch,
    )
    if url.startswith("dir://"):
        source = await env.in_thread(copy_dir_manifest, url, directory, request.git_branch, dest)
        env.log.line(f"Copying manifest tree: {source}")
        git = None
    else:
        try:
            result = await env.in_thread(
                fetch_manifest,
                url,
                request.git_branch,
                dest,
                directory=directory,
                log=env.thread_log,
            )
        except GitFetchError as exc:
            raise BuildError(f"error fetching manifest: {exc}") from None
        git = GitInfo(result.branch, result.commit_id, request.config.manifest_url)
    env_vars = stream_environment(request.stream, request.config, request.arch)
    variables = build_variables(
        env_vars,
        request.request_variables,
        commit_id=git.commit_id if git else "",
        requested_branch=request.git_branch,
    )
    return git, variables


# -- the source image ------------------------------------------------------------


def source_spec(manifest: Manifest) -> str:
    spec = manifest.source_image
    if manifest.source_image_git_commit_id:
        spec += f"@gitCommitId:{manifest.source_image_git_commit_id}"
    if manifest.source_image_tags_to_match:
        tags = " ".join(
            f"{key}:[{' '.join(values)}]"
            for key, values in sorted(manifest.source_image_tags_to_match.items())
        )
        spec += f"@tags:map[{tags}]"
    return spec


def computed_files_of(image: Image) -> tuple[ComputedFile, ...]:
    fs = image.file_system
    if fs is None:
        return ()
    return tuple(
        ComputedFile(path, inode.source)
        for path, _inum, inode in fs.walk()
        if isinstance(inode, ComputedRegularInode)
    )


async def unpack_source(
    env: BuildEnv,
    request: NormalBuild,
    manifest: Manifest,
    root: str,
    mount: RootMount | None = None,
) -> tuple[str, Image, dict]:
    """Find, check and unpack the source image; returns name, image and tree cache.

    With a source tree cache (``request.source_trees``) and a ``mount`` to
    record it in, the root becomes an overlay over the image's cached tree;
    otherwise, or if that fails, the image is written into ``root``.
    """
    need = NeedSourceImage
    if not manifest.source_image:
        raise BuildError("error reading manifest file: no SourceImage")
    spec = source_spec(manifest)
    started = time.monotonic()
    name = await env.images.find_latest_image(
        manifest.source_image,
        manifest.source_image_git_commit_id,
        dict(manifest.source_image_tags_to_match) or None,
    )
    image = await env.images.get_image(name) if name else None
    if not name or image is None or image.file_system is None:
        raise need(
            f"no source image: {spec}",
            manifest.source_image,
            manifest.source_image_git_commit_id,
            manifest.source_image_build_variables,
        )
    if request.max_source_age > 0:
        age = env.reactor.seconds() - image.created_on / 1e9
        if age > request.max_source_age:
            raise need(
                f"too old source image: {spec}",
                manifest.source_image,
                manifest.source_image_git_commit_id,
                manifest.source_image_build_variables,
            )
    env.log.line(f"Downloaded {name} in {format_duration(time.monotonic() - started)}")
    cache = None
    if request.source_trees is not None and mount is not None:
        cache = await overlay_root(
            env, request.source_trees, request.stream, request.tmpdir, name, image, root, mount
        )
    if cache is None:
        cache = await _materialise_root(env, image, root)
    env.log.line(f"Source image: {name}")
    await wait_ctime_resolution(env, request)
    return name, image, cache


def _log_copied(env: BuildEnv, image: Image, took: float) -> None:
    fs = image.file_system
    assert fs is not None
    objects = len(fs.object_hashes())
    env.log.line(
        f"Copied {objects} objects ({format_bytes(fs.total_data_bytes)}) in "
        f"{format_duration(took)} ({format_bytes(int(fs.total_data_bytes / max(took, 1e-9)))}/s)"
    )


async def _materialise_root(env: BuildEnv, image: Image, root: str) -> TreeCache:
    try:
        await rootfs.fetch_source_objects(env.images, image, env.log)
        started = time.monotonic()
        cache = await env.in_thread(materialise, image, env.objects, root)
    except (UnpackError, OSError) as exc:
        raise BuildError(f"error unpacking image: {exc}") from None
    took = time.monotonic() - started
    _log_copied(env, image, took)
    env.log.line(f"Unpacked file-system in {format_duration(took)}")
    return cache


async def overlay_root(
    env: BuildEnv,
    trees: rootfs.SourceTrees,
    stream: str,
    tmpdir: str | None,
    name: str,
    image: Image,
    root: str,
    mount: RootMount,
) -> TreeCache | None:
    """Mount an overlay of the cached tree of image ``name`` at ``root`` (the
    overlay's directories go in ``tmpdir``, named after ``stream``) and record
    it in ``mount``; ``None`` (and one line in the log) when that cannot be
    done here."""
    try:
        tree = await trees.acquire(name, image, os.path.dirname(root), env.log)
    except UnpackError as exc:
        raise BuildError(f"error unpacking image: {exc}") from None
    except (mounts.TreeCacheUnavailable, OSError) as exc:
        reason = rootfs.describe(exc)
        env.log.line(f"Source tree cache not used ({reason}): unpacking into the root")
        return None
    mount.trees, mount.tree = trees, tree
    if tree.reused:
        env.log.line(f"Source tree cache: reusing {name}")
    else:
        _log_copied(env, image, tree.duration)
        env.log.line(f"Source tree cache: unpacked {name} in {format_duration(tree.duration)}")
    started = time.monotonic()
    try:
        mount.overlay_dir = await env.in_thread(make_work_dir, stream, ".overlay", tmpdir)
        upper, work = await env.in_thread(_make_layer_dirs, mount.overlay_dir)
        await env.in_thread(mounts.mount_overlay, tree.path, upper, work, root)
    except (mounts.TreeCacheUnavailable, OSError) as exc:
        reason = rootfs.describe(exc)
        env.log.line(f"Overlay root not mounted ({reason}): unpacking into the root")
        await release_root(env, root, mount)
        return None
    mount.mounted = True
    env.log.line(f"Mounted overlay root in {format_duration(time.monotonic() - started)}")
    return tree.tree_cache


def _make_layer_dirs(overlay_dir: str) -> tuple[str, str]:
    upper, work = os.path.join(overlay_dir, "upper"), os.path.join(overlay_dir, "work")
    os.mkdir(upper, 0o755)
    os.mkdir(work, 0o700)
    return upper, work


async def release_root(env: BuildEnv, root: str, mount: RootMount) -> None:
    """Unmount the overlay at ``root`` (lazily if busy), end the tree's lease
    and remove the overlay's directories. Leaves ``mount.mounted`` set if the
    root could not be unmounted (then nothing under it may be removed)."""
    # Also when the mount is not known to have happened (an interrupted
    # mount call may still have made it): unmounting a plain directory is a no-op.
    if mount.mounted or mount.overlay_dir is not None:
        try:
            lazy = await env.in_thread(rootfs.unmount, root)
        except OSError as exc:
            env.log.line(f"Cannot unmount the overlay root: {rootfs.describe(exc)}")
            mount.mounted = True
            return
        mount.mounted = False
        if lazy:
            env.log.line("Overlay root busy: unmounted lazily")
    if mount.tree is not None and mount.trees is not None:
        mount.trees.release(mount.tree)
        mount.tree = None
    if mount.overlay_dir is not None:
        await env.in_thread(shutil.rmtree, mount.overlay_dir, True)
        mount.overlay_dir = None


async def wait_ctime_resolution(env: BuildEnv, request: NormalBuild) -> None:
    """Let the ctime clock tick, so files changed from now on get a new ctime."""
    await deferLater(env.reactor, request.ctime_resolution, lambda: None)
    env.log.line(f"Waited {format_duration(request.ctime_resolution)} (Ctime resolution)")


# -- the manifest's steps ----------------------------------------------------------


@dataclass
class Steps:
    env: BuildEnv
    root: str
    manifest: Manifest
    variables: Mapping[str, str]
    bind_mounts: tuple[BindMount, ...]
    package_caches: PackageCaches | None = None

    async def run(
        self,
        argv: list[str],
        step: str,
        extra_mounts: tuple[BindMount, ...] = (),
        **kwargs: Any,
    ) -> None:
        await self.env.run_in_root(
            self.root,
            argv,
            step=step,
            variables=self.variables,
            bind_mounts=self.bind_mounts + extra_mounts,
            **kwargs,
        )

    async def copy(self, name: str) -> None:
        source = self.manifest.tree(name)
        if source is None:
            self.env.log.line(f"No {name} directory")
            return
        self.env.report.begin(name)
        await self.env.in_thread(
            treecopy.copy_tree, source, self.root, label=name, log=self.env.thread_log
        )

    async def append(self, name: str) -> None:
        source = self.manifest.tree(name)
        if source is None:
            self.env.log.line(f"No {name} directory")
            return
        self.env.report.begin(name)
        await self.env.in_thread(
            treecopy.append_tree, source, self.root, label=name, log=self.env.thread_log
        )

    async def scripts(self, name: str, *, with_bind_mounts: bool = True) -> None:
        log = self.env.log
        source = self.manifest.tree(name)
        if source is None:
            log.line(f"No {name} directory")
            return
        names = scripts_in_order(await self.env.in_thread(os.listdir, source))
        if not names:
            log.line("No scripts to run")
            return
        log.line(f"Running scripts in: {name}")
        started = time.monotonic()
        staged = await self.env.in_thread(treecopy.stage_scripts, source, self.root, names)
        try:
            for script in names:
                self.env.report.begin(f"{name}/{script}")
                log.line(f"Running script: {script}")
                script_started = time.monotonic()
                try:
                    await self.env.run_in_root(
                        self.root,
                        [PACKAGER, "run", f"{staged}/{script}"],
                        step=f"script {script}",
                        variables=self.variables,
                        bind_mounts=self.bind_mounts if with_bind_mounts else (),
                    )
                except CommandError as exc:
                    raise BuildError(f"error running script: {script}: {exc}") from None
                took = format_duration(time.monotonic() - script_started)
                log.line(f"Script: {script} took {took}")
                log.line(SEPARATOR)
        finally:
            await self.env.in_thread(treecopy.remove_staged_scripts, self.root)
        log.line(f"Ran scripts in {format_duration(time.monotonic() - started)}")

    async def packages(self) -> None:
        log = self.env.log
        packages = list(self.manifest.package_list)
        if not packages:
            log.line("No packages to install")
            return
        self.env.report.begin("packages")
        if self.package_caches is None:
            await self._packages(packages, ())
            return
        async with self.package_caches.lease(self.root, log) as cache_mounts:
            await self._packages(packages, cache_mounts)

    async def _packages(self, packages: list[str], cache_mounts: tuple[BindMount, ...]) -> None:
        log = self.env.log
        for label, command in (
            ("Updating package database:", "update"),
            (
                "Upgrading packages:",
                "upgrade",
            ),
        ):
            log.line(label)
            try:
                await self.run([PACKAGER, command], command, cache_mounts)
            except CommandError as exc:
                raise BuildError(f"error installing packages: error {command}ing: {exc}") from None
            if command == "update" and self.package_caches is not None:
                self.env.package_index = await self.package_caches.index(cache_mounts)
        log.line(f"Installing packages: {' '.join(packages)}")
        try:
            await self.run([PACKAGER, "install", *packages], "install", cache_mounts)
        except CommandError as exc:
            raise BuildError(f"error installing packages: error installing: {exc}") from None


async def process_manifest(
    env: BuildEnv,
    request: NormalBuild,
    manifest: Manifest,
    root: str,
    variables: Mapping[str, str],
    bind_mounts: tuple[BindMount, ...],
) -> None:
    """Reference §5.2 step 7, (a) to (p)."""
    log = env.log
    resolv = await env.in_thread(read_host_resolv_conf)
    created = await env.in_thread(
        treecopy.make_bind_mount_points,
        root,
        [mount.target for mount in bind_mounts],
        env.thread_log,
    )
    bind_mounts = await env.in_thread(_resolve_mount_targets, root, bind_mounts)
    steps = Steps(env, root, manifest, variables, bind_mounts, request.package_caches)
    try:
        try:
            await env.run_in_root(
                root,
                [PACKAGER, "copy-in", "/etc/resolv.conf"],
                step="copy-in",
                stdin=resolv,
                bind_mounts=bind_mounts,
            )
        except CommandError as exc:
            raise BuildError(f"error copying in /etc/resolv.conf: {exc}") from None
        log.line()
        await steps.copy(FILES)
        await steps.append(FILES_APPEND)
        await steps.scripts(PRE_INSTALL_SCRIPTS)
        log.line()
        await steps.packages()
        log.line()
        await steps.copy(POST_INSTALL_FILES)
        await steps.append(POST_INSTALL_FILES_APPEND)
        log.line()
        await steps.scripts(SCRIPTS)
        await clean_packages(env, root, bind_mounts=bind_mounts)
        try:
            await steps.run(["/bin/cp", "/dev/null", "/etc/resolv.conf"], "clear resolv.conf")
        except CommandError as exc:
            raise BuildError(f"error clearing /etc/resolv.conf: {exc}") from None
        log.line()
        await steps.copy(POST_SCRIPTS_FILES)
    finally:
        await env.in_thread(treecopy.remove_bind_mount_points, root, created)
    await steps.scripts(POST_CLEANUP_SCRIPTS, with_bind_mounts=False)


def _resolve_mount_targets(root: str, mounts: tuple[BindMount, ...]) -> tuple[BindMount, ...]:
    """Mount where the target really is inside the image (a symlinked mount point
    is followed within the root, never out of it)."""
    resolved = []
    for mount in mounts:
        host = resolve_in_root(root, mount.target)
        relative = os.path.relpath(host, root)
        inside = "/" if relative == "." else "/" + relative
        resolved.append(BindMount(mount.source, inside, mount.writable))
    return tuple(resolved)


def read_host_resolv_conf() -> bytes:
    with open("/etc/resolv.conf", "rb") as handle:
        return handle.read()


# -- the build as a whole ------------------------------------------------------------


async def build_normal(env: BuildEnv, request: NormalBuild) -> Image:
    """Build a normal stream; raises ``BuildError`` (or ``NeedSourceImage``)."""
    env.fetching_manifest()
    manifest_dir = await env.in_thread(make_work_dir, request.stream, ".manifest", request.tmpdir)
    root = None
    mount = RootMount()
    try:
        git, variables = await fetch_manifest_tree(env, request, manifest_dir)
        await env.read_manifest(manifest_dir)
        env.start_deadline()
        bind_mounts = await env.in_thread(bind_mounts_for, request.main, request.stream)
        try:
            manifest = await env.in_thread(load_manifest, manifest_dir, variables)
        except ManifestError as exc:
            raise BuildError(str(exc)) from None
        if manifest.unoptimised_filter_lines:
            env.log.line("The following filter expressions are unoptimised:")
            for line in manifest.unoptimised_filter_lines:
                env.log.line(line)
        root = await env.in_thread(make_work_dir, request.stream, ".root", request.tmpdir)
        env.log.line(f"Created image working directory: {root}")
        env.report.begin("unpack source")
        source_name, source, tree_cache = await unpack_source(env, request, manifest, root, mount)
        started = time.monotonic()
        try:
            await process_manifest(env, request, manifest, root, variables, bind_mounts)
        except (BuildError, treecopy.TreeCopyError) as exc:
            raise BuildError(f"error processing manifest: {exc}") from None
        env.log.line(f"Processed manifest in {format_duration(time.monotonic() - started)}")
        await wait_ctime_resolution(env, request)
        tests = manifest.tree(TESTS)
        if tests is not None:
            env.log.line()
            await env.in_thread(
                treecopy.copy_tree,
                tests,
                root,
                label=TESTS,
                log=env.thread_log,
                dest=f"/tests/{request.stream}",
            )
        image = await pack(
            env,
            PackSpec(
                stream=request.stream,
                root=root,
                scan_filter=compile_filter(manifest.filter_lines, "FilterLines"),
                tree_cache=tree_cache,
                image_filter=merge_filter(
                    source.filter, manifest.image_filter, manifest.filter_add
                ),
                owners=manifest.owners,
                tags=manifest.tags,
                triggers=resolve_triggers(
                    source.triggers, manifest.triggers, manifest.triggers_add
                ),
                mtimes_filter=compile_filter(
                    mtimes_copy_filter(manifest, request.main.mtimes_copy_filter_lines),
                    "MtimesCopyFilterLines",
                ),
                variables=variables,
                computed_files=merge_computed_files(
                    computed_files_of(source), manifest.computed_files, manifest.computed_files_add
                )
                or (),
                source_image=source_name,
            ),
        )
        if git is not None:
            image.build_branch = git.branch
            image.build_commit_id = git.commit_id
            image.build_git_url = public_url(git.url)
        cache = request.main.cache
        if cache and cache.base_directory and cache.mount_point and cache.size_limit > 0:
            host = os.path.join(cache.base_directory, os.path.normpath(request.stream))
            for path, _size in await env.in_thread(trim_cache, host, cache.size_limit):
                env.log.line(f"Deleted: {path}")
        return image
    finally:
        await env.in_thread(shutil.rmtree, manifest_dir, True)
        if root is not None:
            await release_root(env, root, mount)
            if not mount.mounted:  # never remove through a mount still in place
                await env.in_thread(shutil.rmtree, root, True)
