"""An in-process builder on the real reactor: real processes, bwrap, store, git."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.python.threadpool import ThreadPool

from imaginator.config.main import load_main_config
from imaginator.daemon import ImageServerSettings, assemble_core, start_services
from imaginator.goformats.units import go_arch
from imaginator.lifecycle import DaemonServices
from imaginator.runtime.process import ProcessRunner
from imaginator.runtime.threads import make_thread_pool
from imaginator.scheduler import Builder, BuilderSettings, BuildOptions, BuildResult
from imaginator.sources.documents import fetch_url
from imaginator.sources.streams import StreamsRegistry
from imaginator.sources.variables import BuildVariables
from imaginator.store.local import LocalImageStore
from tests.support.vectors import VECTORS

ARCH = go_arch()


def vector_conf() -> dict[str, Any]:
    """The Go capture's conf.json with its ``bootstrap/bb`` stream and ``bb`` packager."""
    from imaginator.goformats.jsonc import loads

    path = VECTORS / "config-imaginator-conf.json"
    document = loads(path.read_bytes(), str(path))
    document.pop("ImageStreamsUrl", None)
    return document


@dataclass
class Harness:
    """``store`` is the local object store (the embedded store, or the
    imageserver's object cache), ``images`` the image store the builder uses."""

    builder: Builder
    store: LocalImageStore
    streams: StreamsRegistry
    variables: BuildVariables
    pool: ThreadPool
    tmp: Path
    services: DaemonServices
    images: Any = None

    async def build(self, stream: str, requestor: str = "", **options: Any) -> BuildResult:
        variables = options.pop("variables", None)
        options.setdefault("expires_in", 3600.0)
        return await self.builder.build(stream, BuildOptions.make(variables, **options), requestor)

    def stop(self) -> Deferred[None]:
        """Stop everything as the daemon does (builds killed, pool stopped)."""
        return self.services.stopService()

    def objects(self) -> set[str]:
        root = Path(self.store.path) / "objects"
        return {"".join(p.relative_to(root).parts) for p in root.rglob("*") if p.is_file()}


async def make_harness(
    tmp: Path,
    *,
    conf: dict[str, Any] | None = None,
    streams: dict[str, Any] | None = None,
    secrets: str = "",
    plain: str = "",
    max_builds: int = 2,
    tree_cache: bool = False,
    tree_cache_images: int = 4,
    image_server: ImageServerSettings | None = None,
) -> Harness:
    """A builder in ``tmp``; ``tree_cache`` mounts build roots as overlays over
    source trees cached in ``tmp/trees`` (as the daemon does); with
    ``image_server`` the images go to that imageserver."""
    tmp.mkdir(parents=True, exist_ok=True)
    document = dict(conf if conf is not None else vector_conf())
    if streams is not None:
        streams_path = tmp / "image-streams.json"
        streams_path.write_text(json.dumps(streams))
        document["ImageStreamsUrl"] = streams_path.as_uri()
    conf_path = tmp / "conf.json"
    conf_path.write_text(json.dumps(document))
    variables_path = ""
    if secrets:
        (tmp / "variables").write_text(secrets)
        variables_path = str(tmp / "variables")
    plain_path = ""
    if plain:
        (tmp / "plain-variables").write_text(plain)
        plain_path = str(tmp / "plain-variables")
    pool = make_thread_pool("test", 4)
    services = start_services(reactor, pool)

    async def fetch(url: str) -> bytes:
        return await fetch_url(url, reactor=reactor, threadpool=pool)

    config = await load_main_config(conf_path.as_uri(), fetch, ARCH)
    work = tmp / "work"
    work.mkdir(exist_ok=True)
    # The daemon's own assembly, with the test's settings.
    core = await assemble_core(
        services,
        config=config,
        reactor=reactor,
        pool=pool,
        state_dir=str(tmp),
        variables_file=variables_path,
        plain_variables_file=plain_path,
        settings=BuilderSettings(
            maximum_concurrent_builds=max_builds,
            tmpdir=str(work),
            arch=ARCH,
            ctime_resolution=0.01,
            tree_cache_dir=str(tmp / "trees") if tree_cache else None,
            tree_cache_images=tree_cache_images,
            package_cache_dir=str(tmp / "package-cache"),
        ),
        runner=ProcessRunner(reactor),
        image_server=image_server,
    )
    await core.streams.loaded
    return Harness(
        core.builder,
        core.local_store,
        core.streams,
        core.variables,
        pool,
        tmp,
        services,
        core.store,
    )
