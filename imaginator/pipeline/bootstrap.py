"""Bootstrap stream builds (reference §5.8): a root tree made from nothing.

The stream's ``BootstrapCommand`` (``debootstrap`` for Debian) runs on the host
tree in its own mount and PID namespaces and fills a fresh directory; then the
generated ``/bin/generic-packager`` is written, ``resolv.conf`` cleared, the
packager's debris cleaned and the tree packed into an image.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping

from imaginator.config.expand import expand
from imaginator.config.main import BootstrapStream, PackagerType
from imaginator.goformats.units import format_duration
from imaginator.image.filter import Filter
from imaginator.image.model import Image
from imaginator.pipeline.caches import PackageCaches
from imaginator.pipeline.pack import (
    PACKAGER,
    BuildEnv,
    BuildError,
    PackSpec,
    clean_packages,
    compile_filter,
    find_tests,
    pack,
)
from imaginator.pipeline.packager import generic_packager_script
from imaginator.runtime.inroot import write_file_in_root
from imaginator.runtime.nosync import launcher_argv
from imaginator.runtime.process import CommandError
from imaginator.runtime.sandbox import base_environment, host_argv


def make_work_dir(stream: str, suffix: str, parent: str | None) -> str:
    """A fresh 0755 temp directory named after the stream (``a/b`` → ``a_b``)."""
    path = tempfile.mkdtemp(prefix=stream.replace("/", "_") + suffix, dir=parent)
    os.chmod(path, 0o755)
    return path


def expand_command(command: tuple[str, ...], variables: Mapping[str, str]) -> list[str]:
    return [expand(arg, variables.get) for arg in command]


def describe_command(argv: list[str]) -> str:
    lines = [f"Running command: {argv[0]} with args:"]
    lines.extend(f"    {arg}" for arg in argv[1:])
    return "\n".join(lines)


def write_packager(root: str, packager: PackagerType) -> None:
    """Write ``/bin/generic-packager`` (replacing any file or link there) with mode 0755."""
    write_file_in_root(root, PACKAGER, generic_packager_script(packager).encode(), 0o755)


async def build_bootstrap(
    env: BuildEnv,
    stream: BootstrapStream,
    packager: PackagerType,
    *,
    variables: Mapping[str, str],
    mtimes_filter: Filter | None,
    tmpdir: str | None = None,
    keep_tree: Callable[[str], bool] | None = None,
    package_caches: PackageCaches | None = None,
) -> Image:
    """Build ``stream`` from scratch; returns the packed (not yet published) image.

    ``variables`` expand the command: the request's variables over the stream's
    ``Variables`` over the variables files (lowest); ``$dir`` is added here. The
    stream's ``Variables`` are also the command's environment (e.g.
    ``SOURCE_DATE_EPOCH`` for reproducible roots). The working directory is
    removed, unless the build succeeded and ``keep_tree(root)`` took it over
    (to keep it as the image's source tree): it is offered only when the image
    has no tests, which run after the scan and could have changed it.
    Before the tree is cleaned, it seeds the empty ``package_caches`` that
    keep their content in roots (apt's lists, which debootstrap leaves).
    """
    env.report.begin("bootstrap command")
    scan_filter = compile_filter(stream.filter_lines, "FilterLines")
    root = await env.in_thread(make_work_dir, stream.name, "", tmpdir)
    kept = False
    try:
        env.log.line(f"Created image working directory: {root}")
        argv = expand_command(stream.bootstrap_command, {**variables, "dir": root})
        if not argv or not argv[0]:
            raise BuildError(f"bootstrap stream {stream.name}: empty BootstrapCommand")
        env.log.line(describe_command(argv))
        started = time.monotonic()
        command = host_argv(argv)
        _fd, inputs = env.nosync_inputs()
        if inputs:
            command = launcher_argv(command)
        try:
            await env.runner.run(
                command,
                log=env.log,
                env=base_environment(stream.variables, tz=os.environ.get("TZ")),
                deadline=env.deadline,
                step="bootstrap",
                inputs=inputs,
            )
        except CommandError as exc:
            raise BuildError(str(exc)) from None
        await env.in_thread(write_packager, root, packager)
        try:
            await env.run_in_root(root, ["/bin/cp", "/dev/null", "/etc/resolv.conf"], step="resolv")
        except CommandError as exc:
            raise BuildError(f"error clearing /etc/resolv.conf: {exc}") from None
        env.log.line(f"\nBuild time: {format_duration(time.monotonic() - started)}")
        if package_caches is not None:
            await package_caches.seed(root, env.log)
        await clean_packages(env, root)
        image = await pack(
            env,
            PackSpec(
                stream=stream.name,
                root=root,
                # Image tests run in the tree after the scan and may write to
                # it: then the store gets copies, else the files themselves.
                link_files=not await env.in_thread(os.path.lexists, os.path.join(root, "tests")),
                scan_filter=scan_filter,
                image_filter=stream.image_filter,
                owners=stream.owners,
                tags=stream.image_tags,
                triggers=stream.image_triggers,
                mtimes_filter=mtimes_filter,
                variables=variables,
            ),
        )
        if keep_tree is not None and image.file_system is not None:
            if not await env.in_thread(find_tests, image.file_system):
                kept = keep_tree(root)
        return image
    finally:
        if not kept:
            await env.in_thread(shutil.rmtree, root, True)
