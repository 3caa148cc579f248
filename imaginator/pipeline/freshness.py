"""Would a rebuild change anything? (``FastPaths.SkipUnchangedBuilds``)

The rebuild cycle builds every listed stream every interval, although most
of the time nothing it depends on has changed. Before an automatic build
this module answers, cheaply, whether a build could come out different from
the stream's latest image; if it could not, the build is skipped and the
latest image is extended, as an identical build would have done.

A build "could not change" when all of this holds, and in every other case
(including any doubt or error) the stream is built:

- the stream was built by this daemon, since it started, with the same
  settings (its configuration, the packager type, the variables files'
  values, the main configuration's ``BindMounts``, ``Cache`` and
  ``MtimesCopyFilterLines``, the request's variables and branch), and that
  build's image is still the stream's latest;
- manifest streams: the manifest's branch is at the commit the latest image
  was built from (a ``dir://`` manifest has no commit: always built), and
  the source image the build would start from is the one the latest image
  was built on;
- when a build would run the package manager (bootstrap streams, and
  manifests with a ``package-list``): the packager's update and its
  ``PendingUpgradesCommand``, run on an overlay of the latest image's tree
  (the source-tree cache; its changes are thrown away), say that an upgrade
  would change nothing. The packager type is the bootstrap stream's at the
  root of the stream's chain of source images.

What is not seen: manifest scripts that fetch from the network or write the
date, files read from ``BindMounts``, and (for bootstrap streams) a change of
the set of packages the bootstrap command installs that an upgrade of the
installed ones would not show. Streams with such builds should not be
rebuilt with ``SkipUnchangedBuilds`` on.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Mapping
from dataclasses import dataclass

from imaginator.config.main import BootstrapStream, MainConfig, PackagerType
from imaginator.config.manifest import ManifestError, load_manifest
from imaginator.config.streams import StreamConfig
from imaginator.image.model import Image
from imaginator.pipeline.bootstrap import make_work_dir
from imaginator.pipeline.caches import PackageCaches
from imaginator.pipeline.manifest_build import (
    NormalBuild,
    RootMount,
    fetch_manifest_tree,
    overlay_root,
    read_host_resolv_conf,
    release_root,
)
from imaginator.pipeline.pack import PACKAGER, BuildEnv, BuildError
from imaginator.pipeline.rootfs import SourceTrees
from imaginator.runtime.process import CommandError

__all__ = ["Freshness", "Unsure", "inputs_digest"]

#: Lines of a pending-upgrades listing copied into the log and the reason.
_SHOWN_LINES = 5
_MAX_CHAIN = 32


class Unsure(Exception):
    """It cannot be told cheaply whether anything changed: build."""


@dataclass(frozen=True)
class _Built:
    image_name: str
    digest: str


def inputs_digest(
    config: BootstrapStream | StreamConfig,
    main: MainConfig,
    *,
    packager: PackagerType | None,
    secrets: Mapping[str, str],
    request: tuple[object, ...],
) -> str:
    """A digest of the settings a build of the stream depends on (held in memory only)."""
    parts = (
        type(config).__name__,
        repr(config),
        repr(packager),
        repr((main.bind_mounts, main.cache, main.mtimes_copy_filter_lines)),
        repr(sorted(secrets.items())),
        repr(request),
    )
    return hashlib.sha256(repr(parts).encode("utf-8", "surrogateescape")).hexdigest()


class Freshness:
    """What this daemon last built of each stream, and the checks against it."""

    def __init__(
        self,
        main: MainConfig,
        trees: SourceTrees | None,
        caches: PackageCaches | None,
        tmpdir: str | None,
    ) -> None:
        self._main = main
        self._trees = trees
        self._caches = caches
        self._tmpdir = tmpdir
        self._built: dict[str, _Built] = {}
        #: Image → a package index with which it has nothing to upgrade.
        self._indexes: dict[str, str] = {}

    def record(
        self, stream: str, image_name: str, digest: str, package_index: str | None = None
    ) -> None:
        """A build with settings ``digest`` ended with ``image_name`` as the latest
        image; its package steps' update saw ``package_index``, with which it
        upgraded everything."""
        self._built[stream] = _Built(image_name, digest)
        if package_index is not None:
            self._indexes[image_name] = package_index

    def forget(self, stream: str) -> None:
        self._built.pop(stream, None)

    async def skip(
        self,
        env: BuildEnv,
        stream: str,
        digest: str,
        request: NormalBuild | None,
        expires_at: int,
    ) -> tuple[str, str] | None:
        """``(latest image, reason)`` when nothing could change (the image is
        extended to ``expires_at``); ``None``, with the reason in the log, when
        the stream is to be built."""
        log = env.log
        try:
            name, reason = await self.unchanged(env, stream, digest, request)
        except Unsure as exc:
            log.line(f"Building, as something may have changed: {exc}")
            return None
        except Exception as exc:  # the check must never stand in the way of a build
            log.line(f"Building, as it cannot be told whether anything changed: {exc}")
            return None
        extended = await env.images.change_image_expiration(name, expires_at)
        log.line(
            f"Skipped: nothing could change ({reason}): kept {name}"
            + (", extended its expiration" if extended else "")
        )
        return name, reason

    async def unchanged(
        self, env: BuildEnv, stream: str, digest: str, request: NormalBuild | None
    ) -> tuple[str, str]:
        """``(latest image, why nothing could change)``; raises :class:`Unsure`
        with the reason a build is needed. ``request`` is the manifest build
        that would run (``None`` for a bootstrap stream)."""
        built = self._built.get(stream)
        if built is None:
            raise Unsure("not built by this daemon since it started")
        if built.digest != digest:
            raise Unsure("its settings changed since its last build")
        latest_name = await env.images.find_latest_image(stream)
        if latest_name != built.image_name:
            raise Unsure(f"its latest image is not {built.image_name}, its last build")
        latest = await env.images.get_image(latest_name)
        if latest is None or latest.file_system is None:
            raise Unsure(f"cannot read {latest_name}")
        if request is None:
            bootstrap = self._main.bootstrap_streams[stream]
            packager = self._main.packager_types.get(bootstrap.packager_type)
            await self._no_pending_upgrades(env, stream, latest_name, latest, packager)
            return latest_name, "same configuration, no pending package upgrades"
        reasons, needs_packages = await self._same_manifest(env, request, latest)
        if needs_packages:
            packager = await self._chain_packager(env, latest)
            await self._no_pending_upgrades(env, stream, latest_name, latest, packager)
            reasons.append("no pending package upgrades")
        return latest_name, ", ".join(reasons)

    # -- manifest streams --------------------------------------------------------------

    async def _same_manifest(
        self, env: BuildEnv, request: NormalBuild, latest: Image
    ) -> tuple[list[str], bool]:
        """Same commit and same source image as ``latest``; whether the build
        would run the package manager."""
        directory = await env.in_thread(make_work_dir, request.stream, ".check", self._tmpdir)
        try:
            git, variables = await fetch_manifest_tree(env, request, directory)
            if git is None:
                raise Unsure("its manifest is a directory, not a commit")
            if git.commit_id != latest.build_commit_id:
                raise Unsure(f"new manifest commit {git.commit_id}")
            try:
                manifest = await env.in_thread(load_manifest, directory, variables)
            except ManifestError as exc:
                raise Unsure(str(exc)) from None
        finally:
            await env.in_thread(shutil.rmtree, directory, True)
        source = await env.images.find_latest_image(
            manifest.source_image,
            manifest.source_image_git_commit_id,
            dict(manifest.source_image_tags_to_match) or None,
        )
        if source is None or source != latest.source_image:
            raise Unsure(f"new source image {source or '(none)'}")
        reasons = [f"same manifest commit {git.commit_id}", f"same source image {source}"]
        return reasons, bool(manifest.package_list)

    async def _chain_packager(self, env: BuildEnv, image: Image) -> PackagerType | None:
        """The packager type of the bootstrap stream at the root of ``image``'s sources."""
        name = image.source_image
        for _ in range(_MAX_CHAIN):
            stream = name.rpartition("/")[0]
            bootstrap = self._main.bootstrap_streams.get(stream)
            if bootstrap is not None:
                return self._main.packager_types.get(bootstrap.packager_type)
            source = await env.images.get_image(name) if name else None
            if source is None or not source.source_image:
                break
            name = source.source_image
        raise Unsure("no bootstrap stream found below its source images")

    # -- the package manager -------------------------------------------------------------

    async def _no_pending_upgrades(
        self,
        env: BuildEnv,
        stream: str,
        name: str,
        image: Image,
        packager: PackagerType | None,
    ) -> None:
        """Run the packager's update and ``PendingUpgradesCommand`` on an
        overlay of ``image``'s tree; :class:`Unsure` unless nothing is pending."""
        if packager is None or not packager.pending_upgrades_command:
            raise Unsure("its packager type has no PendingUpgradesCommand")
        if self._trees is None:
            raise Unsure("no source-tree cache to look at its latest image")
        log = env.log
        log.line(f"Looking for pending package upgrades in {name}:")
        root = await env.in_thread(make_work_dir, stream, ".check", self._tmpdir)
        mount = RootMount()
        try:
            trees, tmpdir = self._trees, self._tmpdir
            if await overlay_root(env, trees, stream, tmpdir, name, image, root, mount) is None:
                raise Unsure("its latest image's tree could not be mounted")
            output = await self._run_check(env, root, packager, name)
        finally:
            await release_root(env, root, mount)
            if not mount.mounted:
                await env.in_thread(shutil.rmtree, root, True)
        if output:
            lines = output.splitlines()
            shown = "; ".join(lines[:_SHOWN_LINES]) + (" …" if len(lines) > _SHOWN_LINES else "")
            raise Unsure(f"{len(lines)} pending package upgrades: {shown}")

    async def _run_check(self, env: BuildEnv, root: str, packager: PackagerType, name: str) -> str:
        resolv = await env.in_thread(read_host_resolv_conf)
        try:
            await env.run_in_root(
                root, [PACKAGER, "copy-in", "/etc/resolv.conf"], step="copy-in", stdin=resolv
            )
            if self._caches is None:
                return await self._update_and_list(env, root, packager, (), name)
            async with self._caches.lease(root, env.log, keep=False) as mounts:
                return await self._update_and_list(env, root, packager, mounts, name)
        except CommandError as exc:
            raise Unsure(f"{exc.step}: {exc}") from None
        except BuildError as exc:
            raise Unsure(str(exc)) from None

    async def _update_and_list(
        self, env: BuildEnv, root: str, packager: PackagerType, mounts: tuple, name: str
    ) -> str:
        """The pending upgrades after an update; none without asking when the
        update left the package index with which ``name`` was last upgraded."""
        await env.run_in_root(root, [PACKAGER, "update"], step="update", bind_mounts=mounts)
        index = await self._caches.index(mounts) if self._caches is not None else None
        if index is not None and self._indexes.get(name) == index:
            env.log.line(f"The package index is the one {name} was upgraded with")
            return ""
        result = await env.run_in_root(
            root,
            list(packager.pending_upgrades_command),
            step="pending upgrades",
            bind_mounts=mounts,
            capture_stdout=True,
        )
        output = result.stdout.decode("utf-8", errors="replace").strip()
        if index is not None and not output:
            self._indexes[name] = index
        return output
